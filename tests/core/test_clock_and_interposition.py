"""The checker's hold on a worker it did not write: its time, its round trips, its death.

A probe worker (unchanged code, connecting by itself with ``asyncpg.connect``) records
what time its SQL and its Python see; the checker parks it before each statement, sees
it wait on a lock, and kills it mid-transaction.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import asyncpg
import httpx
import pytest

from pipeline_models.core import (
    Adapter,
    QueueViolation,
    Spec,
    States,
    close_checker,
    machine_for,
)
from pipeline_models.core.interpose import CheckedConnection, CheckedTransport, in_a_thread
from pipeline_models.core.machines import QueueMachine, _Runtime
from pipeline_models.core.observe import Observer
from pipeline_models.core.scheduler import Outcome

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS probe;
CREATE TABLE IF NOT EXISTS probe.jobs (id bigint PRIMARY KEY, state text NOT NULL);
CREATE TABLE IF NOT EXISTS probe.seen (
    worker text, sql_now timestamptz, python_now timestamptz, keyword_now timestamptz
);
"""


async def probe(dsn: str, *, in_a_transaction: bool = False) -> None:
    connection = await asyncpg.connect(dsn)
    while True:
        if in_a_transaction:
            async with connection.transaction():
                await connection.execute("INSERT INTO probe.seen (worker) VALUES ('tx')")
        else:
            await connection.execute(
                "INSERT INTO probe.seen (worker, sql_now, python_now, keyword_now) "
                "VALUES (current_setting('application_name'), now(), $1, CURRENT_TIMESTAMP)",
                datetime.now(UTC),
            )
        await asyncio.sleep(1)


class ProbeAdapter(Adapter):
    spec = Spec("probe.jobs", States(claimable=["queued"], in_progress=["running"]))
    in_a_transaction: ClassVar[bool] = False

    async def setup(self, connection: asyncpg.Connection) -> None:
        await connection.execute(SCHEMA)
        await connection.execute("TRUNCATE probe.jobs, probe.seen")

    async def enqueue(self, connection: asyncpg.Connection, number: int) -> Any:
        return await connection.fetchval(
            "INSERT INTO probe.jobs VALUES ($1, 'queued') RETURNING id", number
        )

    async def run_worker(self, name: str, dsn: str) -> None:
        await probe(dsn, in_a_transaction=self.in_a_transaction)


class TransactionProbe(ProbeAdapter):
    in_a_transaction = True


def seen(machine: QueueMachine) -> list[asyncpg.Record]:
    return machine._run(machine.runtime.monitor.fetch("SELECT * FROM probe.seen"))


def test_a_workers_sql_now_and_python_now_are_the_checkers_time_and_move_with_it() -> None:
    machine = machine_for(ProbeAdapter, drain=False)()
    try:
        start = machine.clock.now()
        report = machine._step("w1")
        assert report is not None
        assert report.outcome is Outcome.PARKED
        assert str(report).startswith("w1 before INSERT INTO probe.seen")
        machine._step("w1")  # the insert, then asleep for a second
        machine.advance_clock(seconds=31)
        machine._step("w1")
        machine._step("w1")
        first, second = seen(machine)
        assert (first["worker"], first["sql_now"], first["python_now"]) == ("w1", start, start)
        later = start + timedelta(seconds=31)
        assert (second["sql_now"], second["python_now"]) == (later, later)
        # What the clock cannot reach is Postgres's own: and the checker says so.
        assert first["keyword_now"] != start
        [slot] = [machine.scheduler.slots["w1"]]
        assert any("CURRENT_TIMESTAMP" in warning for warning in slot.warnings)
    finally:
        machine.teardown()


@pytest.mark.parametrize("landed_before_the_step", [False, True])
def test_a_statement_waiting_on_a_lock_is_reported_blocked_then_finishes(
    landed_before_the_step: bool,
) -> None:
    """Whether the waiting insert lands while the lock holder's ROLLBACK comes back (a
    loaded machine) or in the next step, that step reports the same: the insert done, the
    worker asleep. (CI saw the first order: the step then woke the sleeper, and the
    worker was parked before its next insert.)"""
    machine = machine_for(ProbeAdapter, drain=False)()
    locker = machine._run(machine.runtime.server.connect(application_name="locker"))
    try:
        machine._step("w1")  # parked before its insert
        machine._run(locker.execute("BEGIN; LOCK TABLE probe.seen IN ACCESS EXCLUSIVE MODE"))
        report = machine._step("w1")
        assert report is not None
        assert report.outcome is Outcome.BLOCKED
        assert "INSERT INTO probe.seen" in str(report)
        machine._run(locker.execute("ROLLBACK"))
        if landed_before_the_step:
            machine._run(machine.scheduler.settle())
        report = machine._step("w1")
        assert report is not None
        assert report.outcome is Outcome.IDLE  # its insert done, asleep
        assert len(seen(machine)) == 1
    finally:
        machine._run(locker.close())
        machine.teardown()


def test_a_crash_before_commit_rolls_the_transaction_back() -> None:
    machine = machine_for(TransactionProbe, drain=False)()
    try:
        machine._step("w1")  # parked before its insert
        report = machine._step("w1")  # inserted; parked before COMMIT
        assert report is not None
        assert report.next == "before COMMIT"
        backends = sorted(machine.scheduler.slots["w1"].pids)
        assert backends
        machine.crash_worker(worker="w1")
        assert seen(machine) == []

        async def alive() -> int:
            for _ in range(100):  # termination is a signal: the backend exits soon after
                count = await machine.runtime.monitor.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", backends
                )
                if not count:
                    return 0
                await asyncio.sleep(0.01)
            return int(count)

        assert machine._run(alive()) == 0
    finally:
        machine.teardown()


def test_removing_the_observer_leaves_the_users_table_without_its_trigger() -> None:
    machine = machine_for(ProbeAdapter, drain=False)()
    try:
        monitor = machine.runtime.monitor
        observer = Observer(ProbeAdapter.spec, checker_schema="pm_test_checker")
        triggers = "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'probe.jobs'::regclass"
        before = machine._run(monitor.fetchval(triggers))
        machine._run(observer.install(monitor))
        assert machine._run(monitor.fetchval(triggers)) == before  # the same trigger, renewed
        machine._run(observer.remove(monitor))
        assert machine._run(monitor.fetchval(triggers)) == before - 1
        machine._run(machine.observer.install(monitor))  # put back for the other tests
        machine._run(monitor.execute("DROP SCHEMA pm_test_checker CASCADE"))
    finally:
        machine.teardown()


async def _answer(scope: Any, receive: Any, send: Any) -> None:
    """An in-process service: answers every request with 200."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


class CallingProbe(ProbeAdapter):
    """A worker that calls a service between two statements, through an httpx client
    the adapter builds with the checker's transport around the worker's own."""

    async def run_worker(self, name: str, dsn: str) -> None:
        transport = CheckedTransport(httpx.ASGITransport(app=_answer))
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            connection = await asyncpg.connect(dsn)
            while True:
                await connection.execute("INSERT INTO probe.seen (worker) VALUES ('before')")
                await client.post("/charge")
                await connection.execute("INSERT INTO probe.seen (worker) VALUES ('after')")
                await asyncio.sleep(1)


def test_a_workers_http_call_is_a_round_trip_it_stops_before_and_after() -> None:
    machine = machine_for(CallingProbe, drain=False)()
    try:
        labels = [str(machine._step("w1")) for _ in range(4)]
        assert labels == [
            "w1 before INSERT INTO probe.seen (worker) VALUES ('before')",
            "w1 before POST /charge",
            "w1 after POST /charge",  # its effect is out
            "w1 before INSERT INTO probe.seen (worker) VALUES ('after')",
        ]
    finally:
        machine.teardown()


class PsycopgProbe(ProbeAdapter):
    """The probe on psycopg 3 (async), in a transaction of its own."""

    async def run_worker(self, name: str, dsn: str) -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(dsn) as connection:
            while True:
                async with connection.transaction():
                    await connection.execute(
                        "INSERT INTO probe.seen (worker, sql_now) "
                        "VALUES (current_setting('application_name'), now())"
                    )
                await asyncio.sleep(1)


def test_a_psycopg_worker_is_stopped_before_each_statement_and_commit_and_reads_our_time() -> None:
    machine = machine_for(PsycopgProbe, drain=False)()
    try:
        labels = [str(machine._step("w1")) for _ in range(3)]
        assert labels == [
            "w1 before INSERT INTO probe.seen (worker, sql_now) VALUES (current_setting('appl …",
            "w1 before COMMIT",
            "w1 asleep until 00:00:01",
        ]
        [row] = seen(machine)
        assert (row["worker"], row["sql_now"]) == ("w1", machine.clock.now())
        machine._step("w1")  # wakes: before its next insert
        machine._step("w1")  # inserted, before COMMIT
        machine.crash_worker(worker="w1")
        assert len(seen(machine)) == 1  # the open transaction died with it
    finally:
        machine.teardown()


def sync_probe(dsn: str) -> None:
    """The probe as a sync worker: psycopg 3, time.sleep, run in a thread."""
    import time

    import psycopg

    with psycopg.connect(dsn) as connection:
        while True:
            with connection.transaction():
                connection.execute(
                    "INSERT INTO probe.seen (worker, sql_now, python_now) "
                    "VALUES (current_setting('application_name'), now(), %s)",
                    (datetime.now(UTC),),
                )
            time.sleep(1)


class ThreadProbe(ProbeAdapter):
    async def run_worker(self, name: str, dsn: str) -> None:
        await in_a_thread(sync_probe, dsn)


def test_a_sync_worker_in_a_thread_is_checked_like_any_other() -> None:
    machine = machine_for(ThreadProbe, drain=False)()
    try:
        labels = [str(machine._step("w1")) for _ in range(3)]
        assert labels == [
            "w1 before INSERT INTO probe.seen (worker, sql_now, python_now) VALUES (current_s …",
            "w1 before COMMIT",
            "w1 asleep until 00:00:01",
        ]
        [row] = seen(machine)
        start = machine.clock.now()
        assert (row["worker"], row["sql_now"], row["python_now"]) == ("w1", start, start)
        machine._step("w1")  # its sleep passes: before its next insert
        machine._step("w1")  # inserted, before COMMIT
        machine.crash_worker(worker="w1")
        assert len(seen(machine)) == 1
    finally:
        machine.teardown()


class ExactlyOnceCallingProbe(CallingProbe):
    spec = Spec(
        "probe.jobs", States(claimable=["queued"], in_progress=["running"]), effects="exactly_once"
    )


def test_a_call_made_by_a_worker_that_holds_no_job_is_an_effects_finding() -> None:
    machine = machine_for(ExactlyOnceCallingProbe, drain=False)()
    try:
        machine.step_worker(worker="w1")  # before its insert
        machine.step_worker(worker="w1")  # inserted, before its call
        with pytest.raises(QueueViolation) as raised:
            machine.step_worker(worker="w1")  # the call is answered: no job held
        [finding] = raised.value.findings
        assert finding.invariant == "effects"
        assert finding.observed is not None
        assert finding.observed.startswith("POST /charge by w1")
    finally:
        machine.teardown()


class PooledProbe(ProbeAdapter):
    """The probe through a pool: each insert on a connection the pool has reset."""

    async def run_worker(self, name: str, dsn: str) -> None:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        while True:
            async with pool.acquire() as connection:
                await connection.execute(
                    "INSERT INTO probe.seen (worker, sql_now) "
                    "VALUES (current_setting('application_name'), now())"
                )
            await asyncio.sleep(1)


def test_a_pooled_connection_stays_the_workers_and_on_the_checkers_clock() -> None:
    """asyncpg's pool runs RESET ALL on a connection it takes back: the session's name
    and search_path (the checker's clock) are the pool's own again until renamed."""
    machine = machine_for(PooledProbe, drain=False)()
    try:
        start = machine.clock.now()
        machine.run_worker_until_it_waits(worker="w1")
        machine.advance_clock(seconds=10)
        machine.run_worker_until_it_waits(worker="w1")
        rows = seen(machine)
    finally:
        machine.teardown()
    assert [row["worker"] for row in rows] == ["w1", "w1"]
    assert [row["sql_now"] for row in rows] == [start, start + timedelta(seconds=10)]


async def graceful_probe(dsn: str) -> None:
    """A worker that shuts down gracefully when cancelled: it waits for a job that will
    never end (procrastinate waits for its running job, whose end waits for a pool)."""
    connection = await asyncpg.connect(dsn)
    never = asyncio.Event()
    try:
        while True:
            await connection.execute("INSERT INTO probe.seen (worker) VALUES ('graceful')")
            await asyncio.sleep(1)
    except asyncio.CancelledError:
        await asyncio.create_task(never.wait())  # born after the crash
        raise


class GracefulProbe(ProbeAdapter):
    async def run_worker(self, name: str, dsn: str) -> None:
        await graceful_probe(dsn)


def test_a_crash_stops_a_worker_that_waits_on_after_its_cancellation() -> None:
    machine = machine_for(GracefulProbe, drain=False)()
    machine.scheduler.hang_seconds = 2.0
    try:
        machine._step("w1")
        machine._step("w1")  # asleep
        machine.crash_worker(worker="w1")  # was: SchedulerError, did not stop within 2 s
        assert machine.scheduler.slots["w1"].ended
    finally:
        machine.teardown()


class EndingProbe(ProbeAdapter):
    """Its first workers claim what they find, work a second and die (an exception ends
    their main loop); a worker started later claims and finishes every job."""

    spec = Spec("probe.jobs", States(["queued"], ["running"], ["done"]))

    async def run_worker(self, name: str, dsn: str) -> None:
        connection = await asyncpg.connect(dsn)
        while True:
            await connection.execute(
                "UPDATE probe.jobs SET state = 'running' WHERE state = 'queued'"
            )
            await asyncio.sleep(1)
            if "~" not in name:
                raise RuntimeError(f"{name} dies in its work")
            await connection.execute("UPDATE probe.jobs SET state = 'done' WHERE state = 'running'")


def test_the_drain_restarts_workers_whose_main_loop_ended() -> None:
    machine = machine_for(EndingProbe)()
    try:
        machine.enqueue_job()  # both workers die during the drain, one of them holding it
    finally:
        machine.teardown()
    assert machine.trail.rows["0"]["state"] == "done"


OPENED: list[asyncpg.Connection] = []


class SilentProbe(ProbeAdapter):
    """Opens its connection, then sleeps before its first statement."""

    async def run_worker(self, name: str, dsn: str) -> None:
        OPENED.append(await asyncpg.connect(dsn))
        while True:
            await asyncio.sleep(1)


def test_a_crash_closes_a_connection_its_worker_never_used() -> None:
    """Was: left open, an unclosed-connection warning when collected (which failed a CI
    run at pytest's exit): a connection became the worker's at its first statement."""
    machine = machine_for(SilentProbe, drain=False)()
    try:
        machine._step("w1")
        [connection] = OPENED
        assert not connection.is_closed()
        machine.crash_worker(worker="w1")
        assert connection.is_closed()
    finally:
        OPENED.clear()
        machine.teardown()


def test_closing_the_checker_cuts_every_checked_connection_still_open() -> None:
    """A pool's background reconnect (after a crash cut its connection) opened one that
    nobody closed: an unclosed-connection warning at exit, which fails a pytest run."""
    runtime = _Runtime.get()
    connection = runtime.run(
        asyncpg.connect(runtime.server.url, connection_class=CheckedConnection)
    )
    close_checker()
    assert connection.is_closed()


class PsycopgPoolProbe(ProbeAdapter):
    """The probe on a psycopg_pool pool of four (procrastinate's connector): it uses one
    connection, the pool keeps three spare."""

    async def run_worker(self, name: str, dsn: str) -> None:
        from psycopg_pool import AsyncConnectionPool

        async with AsyncConnectionPool(dsn, min_size=4, open=False) as pool:
            await pool.wait()
            while True:
                async with pool.connection() as connection:
                    await connection.execute("INSERT INTO probe.seen (worker) VALUES ('pool')")
                await asyncio.sleep(1)


def test_a_crash_ends_the_spare_connections_of_a_workers_pool_too() -> None:
    """Was: the three spare connections, never used, were no one's: left open example
    after example (procrastinate's seeded run 4 had 50 idle backends by its 86th example),
    until the server refused connections and the findings stopped replaying."""
    machine = machine_for(PsycopgPoolProbe, drain=False)()
    try:
        machine._step("w1")  # its pool open, before its first insert
        pids = sorted(machine.scheduler.slots["w1"].pids)
        assert len(pids) == 4
        machine.crash_worker(worker="w1")
        left = machine._run(
            machine.runtime.monitor.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids
            )
        )
        assert left == 0
    finally:
        machine.teardown()

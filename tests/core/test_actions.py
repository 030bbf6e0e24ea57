"""An adapter's actions: what a system's other users do, drawn as rules of the machine.

An action runs as an actor of its own, round trip by round trip: its writes are told
apart from the workers', a statement that waits on a lock does not hang the program,
and what it returns is reported with the queue's findings.
"""

from __future__ import annotations

from typing import Any, ClassVar

import asyncpg
import pytest
from hypothesis import find
from hypothesis import strategies as st

from pipeline_models.core import Finding, QueueViolation, SpecError, action, machine_for
from pipeline_models.core.holders import Move
from pipeline_models.core.machines import _Runtime
from pipeline_models.core.report import run
from pipeline_models.examples.guide.adapter import FixedGuideAdapter
from pipeline_models.examples.heartbeat.adapter import HeartbeatAdapter


class WithActions(HeartbeatAdapter):
    @action(number=st.integers(0, 3))
    async def operator_edits_a_job(self, number: int) -> None:
        connection = await asyncpg.connect(self.dsn)
        try:
            await connection.execute(
                "UPDATE beats.jobs SET payload = payload || ' (edited)' WHERE id = $1",
                number + 1,
            )
        finally:
            await connection.close()

    @action()
    async def ask_the_api(self) -> list[Finding]:
        return [Finding("api", "the API answered 500", None, "200", "500")]


def test_the_search_draws_actions_and_the_program_names_them() -> None:
    report = run(machine_for(WithActions), profile="ci", seed=1, max_examples=5)
    assert not report.ok
    assert "state.ask_the_api()" in report.render()
    assert "actions drawn: ask_the_api, operator_edits_a_job\n" in report.render()


def test_an_actions_findings_are_reported_after_the_queues() -> None:
    machine = machine_for(WithActions, drain=False)()
    try:
        with pytest.raises(QueueViolation) as raised:
            machine.ask_the_api()
    finally:
        machine.teardown()
    assert [finding.invariant for finding in raised.value.findings] == ["api"]


def _lock_job_one(machine: Any) -> asyncpg.Connection:
    locker = machine._run(machine.runtime.server.connect(application_name="locker"))
    machine._run(locker.execute("BEGIN"))
    machine._run(locker.execute("SELECT 1 FROM beats.jobs WHERE id = 1 FOR UPDATE"))
    return locker


def test_an_action_waiting_on_a_row_lock_finishes_once_the_lock_is_released() -> None:
    machine = machine_for(WithActions, drain=False)()
    locker = None
    try:
        machine.enqueue_job()
        locker = _lock_job_one(machine)
        machine.operator_edits_a_job(number=0)  # waits: the program goes on
        assert list(machine.pending) == ["operator_edits_a_job #1"]
        assert machine.trail.rows["1"]["payload"] == "job 0"
        machine._run(locker.execute("ROLLBACK"))
        machine.enqueue_job()  # any rule: the action goes on before the checks
        assert not machine.pending
        assert machine.trail.rows["1"]["payload"] == "job 0 (edited)"
        [write] = [e for e in machine.holders.events if e.change.operation == "UPDATE"]
        assert (write.actor, write.move) == ("operator_edits_a_job #1", Move.OTHER)
    finally:
        if locker is not None:
            machine._run(locker.close())
        machine.teardown()


def test_an_action_still_waiting_when_the_workers_are_done_is_a_liveness_finding() -> None:
    machine = machine_for(WithActions)()
    locker = None
    try:
        machine.enqueue_job()
        locker = _lock_job_one(machine)
        machine.operator_edits_a_job(number=0)
        machine.judge.enqueued.clear()  # no job to drain (the locked one would stay)
        with pytest.raises(QueueViolation) as raised:
            machine.teardown()
    finally:
        if locker is not None:
            machine._run(locker.close())
    [finding] = raised.value.findings
    assert finding.invariant == "liveness"
    assert "operator_edits_a_job #1 still waited on a lock" in finding.message


def test_an_action_may_not_shadow_a_rule_of_the_machine() -> None:
    class Shadowing(HeartbeatAdapter):
        @action()
        async def crash_worker(self) -> None:
            return None

    with pytest.raises(SpecError, match=r"Shadowing\.crash_worker"):
        machine_for(Shadowing)


@pytest.mark.parametrize("steps", [(0,), (1.5,), (-3, 10)])
def test_an_adapters_clock_steps_are_whole_seconds(steps: tuple[Any, ...]) -> None:
    class Stepping(HeartbeatAdapter):
        clock_steps = steps

    with pytest.raises(SpecError, match=r"Stepping\.clock_steps: whole seconds"):
        machine_for(Stepping)


def test_an_adapters_clock_steps_are_drawn_beside_the_specs() -> None:
    """Half the draws around the spec's timeout, half the adapter's own durations: the
    spec's hold expiry stays one rule away however many steps the adapter adds."""

    class Stepping(HeartbeatAdapter):
        clock_steps = (7, 4, 7)

    rule = machine_for(Stepping).advance_clock.hypothesis_stateful_rule
    drawn = {find(rule.arguments["seconds"], lambda s, n=n: s == n) for n in (4, 7)}
    assert drawn == {4, 7}


def test_an_adapters_teardown_runs_before_the_checker_closes() -> None:
    closed: list[bool] = []

    class Recording(HeartbeatAdapter):
        async def teardown(self, connection: asyncpg.Connection) -> None:
            closed.append(await connection.fetchval("SELECT true"))  # still connected

    machine_for(Recording, drain=False)().teardown()
    _Runtime.close()
    assert closed == [True]


class LateNotices(FixedGuideAdapter):
    """A provider's notices arrive once every job is done; ``reopens``: the bug of a
    notice applied without checking that its job still waits for it."""

    reopens = False
    seen: ClassVar[list[list[str]]] = []

    async def arrive_late(self) -> None:
        connection = await asyncpg.connect(self.dsn)
        try:
            states = await connection.fetch("SELECT state FROM guide.jobs ORDER BY id")
            type(self).seen.append([row["state"] for row in states])
            if self.reopens:
                await connection.execute("UPDATE guide.jobs SET state = 'queued'")
        finally:
            await connection.close()


@pytest.mark.parametrize("reopens", [False, True])
def test_what_arrives_late_comes_once_every_job_is_done_and_must_change_nothing(
    reopens: bool,
) -> None:
    adapter = type("Late", (LateNotices,), {"reopens": reopens, "seen": []})
    machine = machine_for(adapter)()
    machine.enqueue_job()
    machine.enqueue_job()
    if reopens:
        with pytest.raises(QueueViolation) as raised:
            machine.teardown()  # the drain
        first = raised.value.findings[0]
        assert (first.invariant, first.observed) == (
            "transitions",
            "done → queued by arrive_late #1",
        )
    else:
        machine.teardown()
    assert adapter.seen == [["done", "done"]]

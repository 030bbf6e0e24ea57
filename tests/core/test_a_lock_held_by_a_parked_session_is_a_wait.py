"""A statement waiting on a lock that its own worker's other session holds, parked
before its COMMIT, is blocked: the scheduler says so at once and does not wait for it.

procrastinate's worker runs a job's status write and its stalled-job recipe on two
pooled connections: the recipe's retry waited on the row the finish had just locked,
whose COMMIT the scheduler held. The scheduler counted every session of a worker with a
statement on its way as moving, so the retry was "about to come back" for 30 s, and a
seeded run ended in a SchedulerError that shrank for minutes (no report at 900 s).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from pipeline_models.core import machine_for
from pipeline_models.core.machines import _Runtime
from pipeline_models.core.scheduler import Outcome
from tests.core.test_clock_and_interposition import ProbeAdapter


class TwoSessions(ProbeAdapter):
    async def run_worker(self, name: str, dsn: str) -> Any:
        first = await asyncpg.connect(dsn)
        second = await asyncpg.connect(dsn)
        async with first.transaction():
            await first.execute("UPDATE probe.jobs SET state = 'running'")
            # Its own first session holds the row until this transaction ends: a
            # self-deadlock the lock manager cannot see.
            await second.execute("UPDATE probe.jobs SET state = 'queued'")


def test_a_statement_waiting_on_its_workers_parked_session_is_blocked_at_once() -> None:
    machine = machine_for(TwoSessions, drain=False)()
    machine.scheduler.hang_seconds = 5  # the old wait: a SchedulerError after this long
    try:
        machine.enqueue_job()
        outcomes = []
        for _ in range(8):
            report = machine._step("w1")
            assert report is not None
            outcomes.append(report.outcome)
            if report.outcome is not Outcome.PARKED:
                break
        assert outcomes[-1] is Outcome.BLOCKED, outcomes
        [flight] = machine.scheduler.slots["w1"].in_flight
        assert flight.label.startswith("UPDATE probe.jobs SET state = 'queued'")
    finally:
        machine.teardown()
        _Runtime.close()  # not left current for another module's asyncio.run()

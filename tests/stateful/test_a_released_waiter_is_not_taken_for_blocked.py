"""A request released from its lock wait is seen through to its end, however slow.

Postgres's lock manager grants a waiter the lock the moment its holder lets go, but the
waiter itself clears ``pg_stat_activity.wait_event_type`` only when it next runs. The
scheduler once read that column, so on a loaded machine a request already on its way
could still read 'Lock': it was reported blocked and left running behind the next rule's
back, and whether it had landed by the next check was a matter of timing (a program that
did not replay: Hypothesis's "inconsistent data generation"). Here the waiter's backend
is stopped (SIGSTOP) while its holder lets go, so its wait event stays 'Lock' for 0.3 s:
the scheduler must wait for the request, not take it for blocked.
"""

from __future__ import annotations

import asyncio

from pipeline_models.database import Database
from pipeline_models.scheduler import CheckpointScheduler
from tests.slow_backends import require_local_backend, stopped_for

API = "pipeline-models api (released waiter test)"
LOCK = 0x5C4EE


async def _released_while_its_backend_is_stopped(database: Database) -> None:
    scheduler = CheckpointScheduler(database)
    await scheduler.start()
    holder = await database.connect(application_name="lock holder")
    request = await database.connect(application_name=API)
    try:
        require_local_backend(request.get_server_pid())
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK)
        done, _ = await scheduler.run_in_background(
            "waiter", lambda: request.fetchval("SELECT pg_advisory_lock($1)", LOCK),
            application_name=API,
        )  # fmt: skip
        assert not done, "a request waiting on a held lock must be reported blocked"
        with stopped_for(request.get_server_pid(), 0.3):
            await holder.execute("SELECT pg_advisory_unlock($1)", LOCK)
            event = await holder.fetchval(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1",
                request.get_server_pid(),
            )
            assert event == "Lock", "the stopped waiter no longer shows its old wait event"
            await scheduler.settle_all()
        finished = await scheduler.settle_background()
        assert [label for label, _ in finished] == ["waiter"], (
            "the released request was taken for blocked and left running after settle_all"
        )
    finally:
        for connection in (holder, request):
            await connection.close()
        await scheduler.close()


def test_a_released_request_is_not_taken_for_blocked_while_its_backend_lags(
    pipeline_database: Database,
) -> None:
    asyncio.run(_released_while_its_backend_is_stopped(pipeline_database))

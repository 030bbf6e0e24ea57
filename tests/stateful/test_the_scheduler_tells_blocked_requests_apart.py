"""Requests that share an application_name are told apart when one of them is blocked.

The API's requests all connect as "pipeline-models api". The scheduler once judged a
request blocked when *any* backend of that name waited on a lock, so a request that
merely took longer than one poll, while an earlier request was blocked, was left running
in the background, racing the next rule: a program that did not replay the same way
(Hypothesis's "inconsistent data generation" in the reference's control runs).
"""

from __future__ import annotations

import asyncio

from pipeline_models.database import Database
from pipeline_models.scheduler import CheckpointScheduler

API = "pipeline-models api (test)"
LOCK = 0x5C4ED


async def _two_requests_one_blocked(database: Database) -> None:
    scheduler = CheckpointScheduler(database)
    await scheduler.start()
    holder = await database.connect(application_name="lock holder")
    first = await database.connect(application_name=API)
    second = await database.connect(application_name=API)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK)
        done, _ = await scheduler.run_in_background(
            "blocked", lambda: first.fetchval("SELECT pg_advisory_lock($1)", LOCK),
            application_name=API,
        )  # fmt: skip
        assert not done, "a request waiting on a held lock must be reported blocked"

        # Longer than many polls, never waiting on a lock: it must be seen through.
        done, value = await scheduler.run_in_background(
            "slow", lambda: second.fetchval("SELECT pg_sleep(0.2) IS NULL"), application_name=API
        )
        assert done, "a slow request was taken for the blocked one that shares its name"
        assert value is False

        await holder.execute("SELECT pg_advisory_unlock($1)", LOCK)
        await scheduler.settle_all()
        for _ in range(100):
            finished = await scheduler.settle_background()
            if finished:
                break
            await asyncio.sleep(0.01)
        assert [label for label, _ in finished] == ["blocked"]
    finally:
        for connection in (holder, first, second):
            await connection.close()
        await scheduler.close()


def test_a_slow_request_is_not_taken_for_a_blocked_one_of_the_same_name(
    pipeline_database: Database,
) -> None:
    asyncio.run(_two_requests_one_blocked(pipeline_database))

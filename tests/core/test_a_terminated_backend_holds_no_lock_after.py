"""A crash releases the dead worker's row locks before the next rule runs.

``pg_terminate_backend`` only signals the backend; its locks go when its process exits,
a few milliseconds later on a busy machine. A scheduler that moved on at once let the
next step wait on a dead worker's lock, but only under load: a program that failed and
then did not replay (the reference's control rounds went flaky that way). Both
schedulers terminate with :func:`terminate`, which waits for the process to be gone.
"""

from __future__ import annotations

import asyncio

import asyncpg

from pipeline_models.core.scheduler import terminate
from pipeline_models.database import Database


async def _locks_left(url: str, rounds: int) -> int:
    admin = await asyncpg.connect(url)
    left = 0
    try:
        await admin.execute(
            "CREATE TABLE IF NOT EXISTS pm_terminated (id int PRIMARY KEY);"
            "INSERT INTO pm_terminated VALUES (1) ON CONFLICT DO NOTHING"
        )
        for _ in range(rounds):
            victim = await asyncpg.connect(url)
            await victim.execute("BEGIN; SELECT * FROM pm_terminated WHERE id = 1 FOR UPDATE")
            await terminate(admin, [victim.get_server_pid()])
            victim.terminate()
            try:
                async with admin.transaction():
                    await admin.execute(
                        "SELECT * FROM pm_terminated WHERE id = 1 FOR UPDATE NOWAIT"
                    )
            except asyncpg.LockNotAvailableError:
                left += 1
        await admin.execute("DROP TABLE pm_terminated")
    finally:
        await admin.close()
    return left


def test_after_terminate_the_backends_row_locks_are_free(pipeline_database: Database) -> None:
    assert asyncio.run(_locks_left(pipeline_database.url, rounds=30)) == 0

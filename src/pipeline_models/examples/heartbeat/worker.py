"""A worker that beats while it works, and deletes a job once done.

A job is claimed with a fresh token; every few seconds of work its holder writes a
heartbeat; a job whose heartbeat is 30 s old is put back (its attempt counted, failed
after three). Writes carry the claim's token, so a worker whose job was put back and
taken by another writes nothing more. ``fence_completion=False`` plants the bug of a
completion that deletes the job by id alone.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

MAX_ATTEMPTS = 3
PARTS = 2  # pieces of work per job, a heartbeat after each


async def run(dsn: str, *, poll_seconds: float = 1.0, fence_completion: bool = True) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        while True:
            job = await claim(connection)
            if job is None:
                await asyncio.sleep(poll_seconds)
                continue
            for _ in range(PARTS):
                await asyncio.sleep(5)  # the work takes time
                if not await beat(connection, job):
                    break  # put back and taken by another: drop it
            else:
                await finish(connection, job, fenced=fence_completion)
    finally:
        await connection.close()


async def claim(connection: asyncpg.Connection) -> Any:
    await connection.execute(
        "UPDATE beats.jobs SET attempts = attempts + 1, claim_token = NULL, "
        "last_error = 'heartbeat lost', "
        "state = CASE WHEN attempts + 1 >= $1 THEN 'failed' ELSE 'queued' END "
        "WHERE state = 'running' AND heartbeat_at < now() - interval '30 seconds'",
        MAX_ATTEMPTS,
    )
    return await connection.fetchrow(
        "UPDATE beats.jobs SET state = 'running', claim_token = gen_random_uuid(), "
        "heartbeat_at = now() "
        "WHERE id = (SELECT id FROM beats.jobs WHERE state = 'queued' ORDER BY id LIMIT 1 "
        "FOR UPDATE SKIP LOCKED) RETURNING id, claim_token"
    )


async def beat(connection: asyncpg.Connection, job: Any) -> bool:
    status = await connection.execute(
        "UPDATE beats.jobs SET heartbeat_at = now() WHERE id = $1 AND claim_token = $2",
        job["id"],
        job["claim_token"],
    )
    return bool(status == "UPDATE 1")


async def finish(connection: asyncpg.Connection, job: Any, *, fenced: bool) -> None:
    if fenced:
        await connection.execute(
            "DELETE FROM beats.jobs WHERE id = $1 AND claim_token = $2",
            job["id"],
            job["claim_token"],
        )
    else:
        await connection.execute("DELETE FROM beats.jobs WHERE id = $1", job["id"])

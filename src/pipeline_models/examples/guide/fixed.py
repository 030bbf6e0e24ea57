"""The guide's worker after the checker's three findings (see docs/own-worker.md).

* double claim: the claim is one statement that locks the row it takes
  (``FOR UPDATE SKIP LOCKED``), so two workers never take the same job;
* zombie write: completion and failure are fenced by the claim's own mark
  (``started_at``): a worker whose job was put back and taken by another writes nothing;
* endless crash loop: putting a stalled job back counts the attempt, and a job that
  ran out of attempts fails instead of going back.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

MAX_ATTEMPTS = 3


async def run(dsn: str, *, poll_seconds: float = 1.0) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        while True:
            job = await claim(connection)
            if job is None:
                await asyncio.sleep(poll_seconds)
                continue
            try:
                result = await handle(job["payload"])
            except Exception as error:
                await fail(connection, job, error)
            else:
                await complete(connection, job, result)
    finally:
        await connection.close()


async def handle(payload: str) -> str:
    await asyncio.sleep(1)  # the work takes a second
    return payload.upper()


async def claim(connection: asyncpg.Connection) -> Any:
    # Jobs whose worker died go back in the queue, the lost attempt counted.
    await connection.execute(
        "UPDATE guide.jobs SET attempts = attempts + 1, last_error = 'its worker stalled', "
        "state = CASE WHEN attempts + 1 >= $1 THEN 'failed' ELSE 'queued' END "
        "WHERE state = 'running' AND started_at < now() - interval '30 seconds'",
        MAX_ATTEMPTS,
    )
    return await connection.fetchrow(
        "UPDATE guide.jobs SET state = 'running', started_at = now() "
        "WHERE id = (SELECT id FROM guide.jobs WHERE state = 'queued' ORDER BY id LIMIT 1 "
        "FOR UPDATE SKIP LOCKED) RETURNING id, payload, attempts, started_at"
    )


async def complete(connection: asyncpg.Connection, job: Any, result: str) -> None:
    await connection.execute(
        "UPDATE guide.jobs SET state = 'done', result = $3, finished_at = now() "
        "WHERE id = $1 AND state = 'running' AND started_at = $2",
        job["id"],
        job["started_at"],
        result,
    )


async def fail(connection: asyncpg.Connection, job: Any, error: Exception) -> None:
    attempts = job["attempts"] + 1
    await connection.execute(
        "UPDATE guide.jobs SET state = $3, attempts = $4, last_error = $5 "
        "WHERE id = $1 AND state = 'running' AND started_at = $2",
        job["id"],
        job["started_at"],
        "failed" if attempts >= MAX_ATTEMPTS else "queued",
        attempts,
        str(error),
    )

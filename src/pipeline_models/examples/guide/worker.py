"""A job worker as a team writes it: asyncpg, one connection in autocommit, no lease.

Its example tests pass: a job is claimed, handled and marked done; a failure is
retried three times; jobs whose worker died are put back in the queue after 30 s.
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
    # Jobs whose worker died are put back in the queue.
    await connection.execute(
        "UPDATE guide.jobs SET state = 'queued' "
        "WHERE state = 'running' AND started_at < now() - interval '30 seconds'"
    )
    job = await connection.fetchrow(
        "SELECT id, payload, attempts FROM guide.jobs WHERE state = 'queued' ORDER BY id LIMIT 1"
    )
    if job is not None:
        await connection.execute(
            "UPDATE guide.jobs SET state = 'running', started_at = now() WHERE id = $1", job["id"]
        )
    return job


async def complete(connection: asyncpg.Connection, job: Any, result: str) -> None:
    await connection.execute(
        "UPDATE guide.jobs SET state = 'done', result = $2, finished_at = now() WHERE id = $1",
        job["id"],
        result,
    )


async def fail(connection: asyncpg.Connection, job: Any, error: Exception) -> None:
    attempts = job["attempts"] + 1
    await connection.execute(
        "UPDATE guide.jobs SET state = $2, attempts = $3, last_error = $4 WHERE id = $1",
        job["id"],
        "failed" if attempts >= MAX_ATTEMPTS else "queued",
        attempts,
        str(error),
    )

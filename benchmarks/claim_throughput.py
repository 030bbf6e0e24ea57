"""Claim transactions per second on one connection, against a bare SKIP LOCKED loop.

    python benchmarks/claim_throughput.py [--jobs 5000] [--rounds 5]

The bare loop is the least a claim can be: BEGIN; SELECT ... FOR UPDATE SKIP LOCKED
LIMIT 1; UPDATE ... SET state = 'working'; COMMIT. The worker's claim (named query
``claim_job``) also reclaims expired leases, counts retries, and returns the document's
fields in the same statement. Both run in the same process, on the same table, in
alternating rounds; the figure is the median round. Target: at least 70% of bare.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import UTC, datetime, timedelta

import asyncpg
from common import database, describe_machine

from pipeline_models.queries import QUERIES

NOW = datetime(2026, 1, 1, tzinfo=UTC)

BARE_SELECT = """
SELECT job_id FROM upload_jobs
WHERE state = 'queued' AND next_attempt_at <= $1
ORDER BY next_attempt_at, job_seq
LIMIT 1
FOR UPDATE SKIP LOCKED
"""
BARE_UPDATE = """
UPDATE upload_jobs SET state = 'working', owner = $2, lease_expires_at = $3, updated_at = $4
WHERE job_id = $1
"""

SEED_DOCUMENTS = """
INSERT INTO documents (document_id, user_id, filename, declared_type, file_sha256,
                       size_bytes, raw_blob_key, created_at, updated_at)
SELECT gen_random_uuid(), '00000000-0000-0000-0000-000000000001', 'd' || i || '.md',
       'text/markdown', md5(i::text), 10, 'raw/x/' || i, $2, $2
FROM generate_series(1, $1::int) AS i
"""
SEED_JOBS = """
INSERT INTO upload_jobs (job_id, document_id, user_id, stage, state, next_attempt_at,
                         correlation_id, created_at, updated_at)
SELECT gen_random_uuid(), document_id, user_id, 'queued', 'queued',
       $1::timestamptz - (row_number() OVER (ORDER BY document_id)) * interval '1 ms',
       'c', $1, $1
FROM documents
"""


async def requeue_all(connection: asyncpg.Connection) -> None:
    await connection.execute(
        "UPDATE upload_jobs SET state = 'queued', owner = NULL, lease_expires_at = NULL"
    )
    await connection.execute("VACUUM ANALYZE upload_jobs")


async def bare_round(connection: asyncpg.Connection, claims: int) -> float:
    started = time.perf_counter()
    lease = NOW + timedelta(seconds=30)
    for _ in range(claims):
        async with connection.transaction():
            job_id = await connection.fetchval(BARE_SELECT, NOW)
            await connection.execute(BARE_UPDATE, job_id, "bare", lease, NOW)
    return claims / (time.perf_counter() - started)


async def worker_round(connection: asyncpg.Connection, claims: int) -> float:
    started = time.perf_counter()
    claim = QUERIES["claim_job"].sql
    lease = NOW + timedelta(seconds=30)
    for _ in range(claims):
        row = await connection.fetchrow(claim, "worker", NOW, lease, 3)
        assert row is not None
    return claims / (time.perf_counter() - started)


async def main(jobs: int, rounds: int) -> None:
    with database() as db:
        await db.ensure_schema()
        connection = await db.connect()
        try:
            await db.reset(connection)
            await connection.execute("SELECT 1")  # warm the connection
            await connection.execute(SEED_DOCUMENTS, jobs, NOW)
            await connection.execute(SEED_JOBS, NOW)
            bare, worker = [], []
            for _ in range(rounds):
                await requeue_all(connection)
                bare.append(await bare_round(connection, jobs))
                await requeue_all(connection)
                worker.append(await worker_round(connection, jobs))
            await db.reset(connection)
        finally:
            await connection.close()
        b, w = statistics.median(bare), statistics.median(worker)
        print(f"claim throughput on one connection ({describe_machine(db)})")
        print(f"  {jobs} claims per round, {rounds} rounds each, median round:")
        print(f"  bare SKIP LOCKED loop (4 round trips):   {b:8.0f} claims/s")
        print(f"  worker claim_job (1 statement):          {w:8.0f} claims/s")
        print(f"  worker / bare: {w / b:.0%}  (target: at least 70%)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.jobs, arguments.rounds))

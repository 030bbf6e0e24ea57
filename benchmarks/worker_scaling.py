"""End-to-end documents per second with 1, 2 and 4 workers against slow fakes.

    python benchmarks/worker_scaling.py [--documents 40] [--rounds 3]

The fakes answer every parser request after 50 ms and every embeddings request after
20 ms, as remote services would; workers are asyncio tasks in one process, each with
its own connection. Target: 4 workers at least 3x the throughput of 1.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid

from common import database, describe_machine

from pipeline_models.database import Database
from pipeline_models.documents import sample_documents
from pipeline_models.fakes import FaultPlan
from pipeline_models.pipeline.config import WorkerConfig
from pipeline_models.pipeline.reference import ReferencePipeline
from pipeline_models.tables import format_table

PARSER_LATENCY = 0.050
EMBEDDINGS_LATENCY = 0.020


async def one_run(db: Database, documents: int, workers: int) -> float:
    config = WorkerConfig(parser_poll_seconds=0.05, idle_seconds=0.01)
    connection = await db.connect()
    try:
        await db.reset(connection)
        with tempfile.TemporaryDirectory() as blobs:
            async with ReferencePipeline.with_fakes(
                db,
                storage_root=blobs,
                config=config,
                parser_faults=FaultPlan(latency=PARSER_LATENCY),
                embeddings_faults=FaultPlan(latency=EMBEDDINGS_LATENCY),
            ) as pipeline:
                for document in sample_documents(documents, seed=5, corrupt_ratio=0):
                    await pipeline.upload(connection, user_id=uuid.UUID(int=1), document=document)
                started = time.perf_counter()
                await pipeline.run_workers(workers, timeout=600)
                elapsed = time.perf_counter() - started
        done = await connection.fetchval("SELECT count(*) FROM upload_jobs WHERE state = 'done'")
        assert done == documents, f"only {done} of {documents} documents done"
    finally:
        await connection.close()
    return documents / elapsed


async def main(documents: int, rounds: int) -> None:
    with database() as db:
        await db.ensure_schema()
        rates = {}
        for workers in (1, 2, 4):
            rates[workers] = statistics.median(
                [await one_run(db, documents, workers) for _ in range(rounds)]
            )
        print(
            f"end-to-end throughput ({describe_machine(db)}); {documents} documents, "
            f"parser {PARSER_LATENCY * 1000:.0f} ms, embeddings {EMBEDDINGS_LATENCY * 1000:.0f} ms"
            f" per request; median of {rounds} runs"
        )
        rows = [[w, rate, rate / rates[1]] for w, rate in rates.items()]
        print(format_table(["workers", "documents/s", "speed-up"], rows))
        print(f"1 -> 4 workers: {rates[4] / rates[1]:.2f}x  (target: at least 3x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.documents, arguments.rounds))

"""Per-test (and per-example) isolation: the cost of each reset strategy.

    python benchmarks/reset_cost.py [--repeat 200]

DELETE and TRUNCATE empty the pipeline's tables in place; a template clone drops the
working database and recreates it from a template (and must reconnect). Each is timed
on empty tables and after a small pipeline run (the states tests and examples leave).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid

import asyncpg
from common import database, describe_machine, median_ms, p95_ms

from pipeline_models.clock import ManualClock
from pipeline_models.database import Database, ResetStrategy
from pipeline_models.documents import sample_documents
from pipeline_models.pipeline.config import WorkerConfig
from pipeline_models.pipeline.reference import ReferencePipeline
from pipeline_models.tables import format_table


async def fill(db: Database, connection: asyncpg.Connection, documents: int) -> None:
    """A small finished run: what one test or one example typically leaves behind."""
    if documents == 0:
        return
    config = WorkerConfig(embed_dimensions=64, chunk_batch_size=4, embed_batch_size=4)
    with tempfile.TemporaryDirectory() as blobs:
        async with ReferencePipeline.with_fakes(
            db, storage_root=blobs, clock=ManualClock(), config=config
        ) as pipeline:
            for document in sample_documents(documents, seed=1):
                await pipeline.upload(connection, user_id=uuid.UUID(int=1), document=document)
            worker = pipeline.worker()
            await worker.start()
            await pipeline.drain([worker])
            await worker.close()


async def in_place(
    db: Database, strategy: ResetStrategy, documents: int, repeat: int
) -> list[float]:
    connection = await db.connect()
    timings = []
    try:
        for _ in range(repeat):
            await fill(db, connection, documents)
            started = time.perf_counter()
            await db.reset(connection, strategy)
            timings.append(time.perf_counter() - started)
    finally:
        await connection.close()
    return timings


async def template_clone(db: Database, documents: int, repeat: int) -> list[float]:
    """DROP the working database and CREATE it again from a template, then reconnect."""
    admin = await db.connect()
    template, work = "pm_bench_template", "pm_bench_work"
    base_url = db.url
    try:
        for name in (work, template):
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{template}"')
        template_db = Database(_with_database(base_url, template), schema=db.schema)
        await template_db.ensure_schema()
        await admin.execute(f'CREATE DATABASE "{work}" TEMPLATE "{template}"')
        work_db = Database(_with_database(base_url, work), schema=db.schema)
        timings = []
        for _ in range(repeat):
            connection = await work_db.connect()
            await fill(work_db, connection, documents)
            await connection.close()
            started = time.perf_counter()
            await admin.execute(f'DROP DATABASE "{work}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{work}" TEMPLATE "{template}"')
            connection = await work_db.connect()
            timings.append(time.perf_counter() - started)
            await connection.close()
        for name in (work, template):
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    return timings


def _with_database(url: str, name: str) -> str:
    head, _, query = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{query}" if query else "")


async def main(repeat: int) -> None:
    with database() as db:
        await db.ensure_schema()
        print(f"reset cost per strategy ({describe_machine(db)}; {repeat} resets each)")
        rows = []
        for documents in (0, 5):
            state = "empty" if documents == 0 else f"after {documents} documents"
            count = repeat if documents == 0 else max(10, repeat // 10)
            for strategy in ResetStrategy:
                timings = await in_place(db, strategy, documents, count)
                rows.append([strategy.value, state, median_ms(timings), p95_ms(timings)])
            timings = await template_clone(db, documents, max(5, count // 10))
            rows.append(["template clone", state, median_ms(timings), p95_ms(timings)])
        print(format_table(["strategy", "state", "median ms", "p95 ms"], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    asyncio.run(main(parser.parse_args().repeat))

"""The checker core's speed on a worker it did not write, against the database's limit.

    python benchmarks/core_throughput.py [--repeat 5] [--worker guide|reference]

Runs the queue machine over a worker it did not write, in the ci profile (derandomized:
every run the same programs) after a warm-up, and prints examples/s, rules/s and worker
round trips/s; then, in the same run, how many of that worker's own claim statements one
connection can make per second: each round trip the checker lets a worker make costs at
least one such statement, plus the check after it. The workers: the guide's fixed one
(docs/own-worker.md), or the reference pipeline through its adapter
(pipeline_models.pipeline.adapter: BaseWorker unchanged, with its fake services).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from common import database, describe_machine

from pipeline_models.core import machine_for, use_server
from pipeline_models.core.machines import STATISTICS
from pipeline_models.core.report import run
from pipeline_models.database import Database
from pipeline_models.examples.guide.adapter import HERE, FixedGuideAdapter
from pipeline_models.pipeline.adapter import ReferenceAdapter

CLAIM = (
    "UPDATE guide.jobs SET state = 'running', started_at = now() "
    "WHERE id = (SELECT id FROM guide.jobs WHERE state = 'queued' ORDER BY id LIMIT 1 "
    "FOR UPDATE SKIP LOCKED) RETURNING id"
)


async def claim_ceiling(url: str, jobs: int = 3000) -> float:
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        await connection.execute((HERE / "schema.sql").read_text())
        await connection.execute("TRUNCATE guide.jobs RESTART IDENTITY")
        await connection.execute(
            "INSERT INTO guide.jobs (payload) SELECT 'job ' || n FROM generate_series(1, $1) n",
            jobs,
        )
        started = time.perf_counter()
        for _ in range(jobs):
            await connection.fetchval(CLAIM)
        rate = jobs / (time.perf_counter() - started)
        await connection.execute("TRUNCATE guide.jobs RESTART IDENTITY")
    finally:
        await connection.close()
    return rate


async def reference_claim_ceiling(url: str, jobs: int = 3000) -> float:
    """The reference's own claim statement (claim_job), one connection, in the schema
    its adapter checks (see benchmarks/claim_throughput.py for the same against a bare
    SKIP LOCKED loop)."""
    from claim_throughput import NOW, SEED_DOCUMENTS, SEED_JOBS, requeue_all, worker_round

    reference = Database(url, schema=ReferenceAdapter.schema)
    await reference.ensure_schema()
    connection = await reference.connect()
    try:
        await reference.reset(connection)
        await connection.execute(SEED_DOCUMENTS, jobs, NOW)
        await connection.execute(SEED_JOBS, NOW)
        await requeue_all(connection)
        rate = await worker_round(connection, jobs)
        await reference.reset(connection)
    finally:
        await connection.close()
    return rate


WORKERS = {
    "guide": ("the guide's fixed worker", FixedGuideAdapter, claim_ceiling),
    "reference": ("the reference pipeline (adapter)", ReferenceAdapter, reference_claim_ceiling),
}


def main(repeat: int, worker: str) -> None:
    title, adapter, ceiling_of = WORKERS[worker]
    with database() as db:
        use_server(db.url)
        machine = machine_for(adapter)
        run(machine, profile="ci", max_examples=3)  # warm-up: imports, first connections
        runs = []
        for _ in range(repeat):
            before = (
                STATISTICS.examples,
                STATISTICS.rules,
                STATISTICS.steps,
                STATISTICS.drain_steps,
            )
            report = run(machine, profile="ci", rounds=1)
            after = (
                STATISTICS.examples,
                STATISTICS.rules,
                STATISTICS.steps,
                STATISTICS.drain_steps,
            )
            examples, rules, steps, drain = (b - a for a, b in zip(before, after, strict=True))
            runs.append((report.seconds, examples, rules, steps + drain, report.ok))
        ceiling = asyncio.run(ceiling_of(db.url))
        seconds = sorted(r[0] for r in runs)
        median = statistics.median(seconds)
        _, examples, rules, steps, _ = runs[0]
        print(f"checker core on {title}, profile ci ({describe_machine(db)})")
        print(f"  {examples} examples, {rules} checks, {steps} worker round trips per run")
        print(
            f"  {repeat} runs: median {median:.2f} s (fastest {seconds[0]:.2f}, "
            f"slowest {seconds[-1]:.2f})"
        )
        print(
            f"  median: examples/s {examples / median:.1f}, checks/s {rules / median:.0f}, "
            f"round trips/s {steps / median:.0f}"
        )
        print(f"  same run, one connection: {ceiling:.0f} of the worker's claims/s")
        print(f"  result: {'OK' if all(r[4] for r in runs) else 'FAILED'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="measured runs (median)")
    parser.add_argument("--worker", choices=sorted(WORKERS), default="guide")
    arguments = parser.parse_args()
    main(arguments.repeat, arguments.worker)

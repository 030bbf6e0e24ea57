"""The checker's speed in the ci profile, against the database's own limit.

    python benchmarks/checker_throughput.py [--profile ci]

Runs the pipeline machine (every invariant after every rule, a drain with the liveness
check at the end of every example) and prints examples/s, rules/s and worker steps/s,
the per-example reset cost, and, in the same run, the claim transactions per second one
connection can do (the ceiling of a checker that takes at least one transaction a step).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from claim_throughput import NOW, SEED_DOCUMENTS, SEED_JOBS, bare_round, requeue_all
from common import database, describe_machine

from pipeline_models.check import run_check
from pipeline_models.history import AUDIT_TABLE


async def reset_cost(db: object, repeat: int = 200) -> float:
    connection = await db.connect()  # type: ignore[attr-defined]
    try:
        timings = []
        for _ in range(repeat):
            started = time.perf_counter()
            await db.reset(connection)  # type: ignore[attr-defined]
            timings.append(time.perf_counter() - started)
    finally:
        await connection.close()
    return statistics.median(timings) * 1000


async def claim_ceiling(db: object, jobs: int = 3000) -> float:
    connection = await db.connect()  # type: ignore[attr-defined]
    try:
        await db.reset(connection)  # type: ignore[attr-defined]
        await connection.execute(SEED_DOCUMENTS, jobs, NOW)
        await connection.execute(SEED_JOBS, NOW)
        await requeue_all(connection)
        rate = await bare_round(connection, jobs)
        await db.reset(connection)  # type: ignore[attr-defined]
    finally:
        await connection.close()
    return rate


def main(profile: str) -> None:
    with database() as db:
        report = run_check(db, profile=profile)
        db.extra_tables = (
            (*db.extra_tables, AUDIT_TABLE)
            if AUDIT_TABLE not in db.extra_tables
            else db.extra_tables
        )
        reset_ms = asyncio.run(reset_cost(db))
        ceiling = asyncio.run(claim_ceiling(db))
        stats = report.statistics
        steps = stats.steps + stats.drain_steps
        seconds = report.seconds
        print(f"checker throughput, profile {profile} ({describe_machine(db)})")
        print(f"  {stats.examples} examples, {stats.rules} rules, {steps} worker steps")
        print(f"  in {seconds:.1f} s")
        print(
            f"  examples/s {stats.examples / seconds:.1f}, rules/s {stats.rules / seconds:.0f}, "
            f"worker steps/s {steps / seconds:.0f}"
        )
        print(f"  per-example reset (DELETE, with the audit table): {reset_ms:.2f} ms median")
        print(f"  same run, one connection: {ceiling:.0f} bare claim transactions/s")
        print(f"  result: {'OK' if report.ok else 'FAILED'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="ci")
    main(parser.parse_args().profile)

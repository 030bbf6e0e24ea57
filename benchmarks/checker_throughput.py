"""The checker's speed in the ci profile, against the database's own limit.

    python benchmarks/checker_throughput.py [--profile ci] [--repeat 5]

After a short warm-up run, runs the pipeline machine (every invariant after every rule,
a drain with the liveness check at the end of every example) and prints examples/s,
rules/s and worker steps/s, the per-example reset cost, and, in the same run, the claim
transactions per second one connection can do (the ceiling of a checker that takes at
least one transaction a step).
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


def main(profile: str, repeat: int) -> None:
    with database() as db:
        # Warm up first (imports, the first connections, the API app): the figures are
        # the checker's steady state, as in a test session or a fuzz run.
        run_check(db, profile=profile, max_examples=3)
        # The same derandomized run several times: the programs are identical, only the
        # machine's noise differs; the median is the figure.
        reports = [run_check(db, profile=profile) for _ in range(repeat)]
        db.extra_tables = (
            (*db.extra_tables, AUDIT_TABLE)
            if AUDIT_TABLE not in db.extra_tables
            else db.extra_tables
        )
        reset_ms = asyncio.run(reset_cost(db))
        ceiling = asyncio.run(claim_ceiling(db))
        report = reports[0]
        stats = report.statistics
        steps = stats.steps + stats.drain_steps
        seconds = sorted(r.seconds for r in reports)
        median = statistics.median(seconds)
        print(f"checker throughput, profile {profile} ({describe_machine(db)})")
        print(f"  {stats.examples} examples, {stats.rules} rules, {steps} worker steps per run")
        print(
            f"  {repeat} runs: median {median:.2f} s (fastest {seconds[0]:.2f}, "
            f"slowest {seconds[-1]:.2f})"
        )
        print(
            f"  median: examples/s {stats.examples / median:.1f}, "
            f"rules/s {stats.rules / median:.0f}, worker steps/s {steps / median:.0f}"
        )
        print(f"  per-example reset (DELETE, with the audit table): {reset_ms:.2f} ms median")
        print(f"  same run, one connection: {ceiling:.0f} bare claim transactions/s")
        print(f"  result: {'OK' if all(r.ok for r in reports) else 'FAILED'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="ci")
    parser.add_argument("--repeat", type=int, default=5, help="measured runs (median)")
    arguments = parser.parse_args()
    main(arguments.profile, arguments.repeat)

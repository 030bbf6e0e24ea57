"""What the benchmarks share: a database to run on, and figures people can read."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence

from pipeline_models.database import Database


def database() -> Database:
    """DATABASE_URL if set, else a fresh embedded Postgres (stopped at exit)."""
    return Database.from_environment(schema=os.environ.get("BENCH_SCHEMA", "pm_bench"))


def describe_machine(db: Database) -> str:
    python = f"{platform.python_implementation()} {platform.python_version()}"
    return f"{python}, {os.cpu_count()} cores, {db.display_url}"


def median_ms(seconds: Sequence[float]) -> float:
    return statistics.median(seconds) * 1000


def p95_ms(seconds: Sequence[float]) -> float:
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1000

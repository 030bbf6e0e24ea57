"""What one whole-database outage (the pipeline machine's ``whole_database_outage``) costs.

    python benchmarks/outage_cost.py [--repeat 10]

Each round opens the sessions an example typically has (a monitor that survives where
it can, and six more), commits a row, and takes the database away and back with
``Database.outage``: on the embedded server this process starts, a checkpoint and an
immediate stop and start; with ``DATABASE_URL`` set, those sessions ended. The row must
still be there after every round.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from common import database, describe_machine, median_ms, p95_ms

from pipeline_models.database import Database


async def measure(db: Database, repeat: int) -> tuple[str, list[float], int]:
    monitor = await db.connect(application_name="outage monitor")
    await monitor.execute("CREATE TABLE IF NOT EXISTS outage_probe (round int)")
    await monitor.execute("DELETE FROM outage_probe")
    seconds: list[float] = []
    how = ""
    try:
        for round_ in range(repeat):
            others = [await db.connect(application_name=f"outage {n}") for n in range(6)]
            await others[0].execute("INSERT INTO outage_probe VALUES ($1)", round_)
            started = time.perf_counter()
            outage = await db.outage(monitor)
            seconds.append(time.perf_counter() - started)
            how = outage.how
            assert all(other.is_closed() for other in others)
            if monitor.is_closed():
                monitor = await db.connect(application_name="outage monitor")
            kept = await monitor.fetchval("SELECT count(*) FROM outage_probe")
            assert kept == round_ + 1, f"round {round_}: {kept} rows kept of {round_ + 1}"
        await monitor.execute("DROP TABLE outage_probe")
    finally:
        await monitor.close()
    return how, seconds, repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    arguments = parser.parse_args()
    with database() as db:
        asyncio.run(db.ensure_schema())
        how, seconds, repeat = asyncio.run(measure(db, arguments.repeat))
        print(describe_machine(db))
        print(
            f"{how}, {repeat} outages, every committed row kept: median "
            f"{median_ms(seconds):.0f} ms, p95 {p95_ms(seconds):.0f} ms, "
            f"max {max(seconds) * 1000:.0f} ms (mean {statistics.mean(seconds) * 1000:.0f} ms)"
        )


if __name__ == "__main__":
    main()

"""Examples per second of a fuzz session (HypoFuzz, the fuzz profile), 1 and 2 processes.

    python benchmarks/fuzz_throughput.py [--minutes 2] [--processes 1,2] [--machine pipeline]

Each session runs on the reference pipeline (nothing to find), in a scratch directory
with its own example database, for the same time budget; examples/s is counted over the
whole session, HypoFuzz's start and each worker's embedded Postgres included. Prints one
line per process count, and the speed-up.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from pipeline_models.fuzz import FuzzOptions, run_fuzz


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--machine", action="append", choices=["pipeline", "queue"])
    arguments = parser.parse_args()
    machines = tuple(arguments.machine or ["pipeline"])
    print(
        f"fuzz throughput: {', '.join(machines)} machine(s), {arguments.minutes:g} min per "
        f"session, {os.cpu_count()} cores, embedded Postgres per process"
    )
    rates: dict[int, float] = {}
    for processes in (int(n) for n in arguments.processes.split(",")):
        with tempfile.TemporaryDirectory(prefix="pm-fuzz-bench-") as scratch:
            report = run_fuzz(
                FuzzOptions(
                    minutes=arguments.minutes,
                    processes=processes,
                    machines=machines,
                    example_database=str(Path(scratch) / "examples"),
                    directory=Path(scratch) / ".pipeline-models",
                    repro_directory=None,
                )
            )
        rate = report.counts.examples / report.seconds
        rates[processes] = rate
        print(
            f"  {processes} process(es): {report.counts.examples} examples in "
            f"{report.seconds:.0f} s = {rate:.2f} examples/s, "
            f"{report.steps / report.seconds:.0f} worker steps/s, "
            f"{report.counts.rules / report.seconds:.0f} rules/s, "
            f"HypoFuzz restarted {report.restarts} times, "
            f"{'no failure' if report.ok else 'FAILED'}"
        )
    if 1 in rates and len(rates) > 1:
        best = max(rates)
        print(f"  speed-up 1 -> {best} processes: {rates[best] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()

"""Run the checker and the two baselines against every mutant, in parallel processes.

Each mutant is planted in its own scratch copy of the package and run by
:mod:`pipeline_models.mutants.child` with that copy first on ``PYTHONPATH``; processes
share one Postgres server (the embedded one unless ``DATABASE_URL`` is set), each in its
own schema, so they never share rows.
"""

from __future__ import annotations

import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline_models.mutants import Mutant
from pipeline_models.mutants.child import SIDES, SideResult
from pipeline_models.tables import format_table

SIDE_TITLES = {
    "checker": "checker",
    "coarse": "whole steps",
    "examples": "example suite",
}


@dataclass
class MutantReport:
    """Every side's result against one mutant (or against the reference, ``mutant=None``)."""

    name: str
    kind: str
    bug: str
    seen: str
    sides: dict[str, SideResult] = field(default_factory=dict)
    error: str | None = None  # the child process failed (not the same as a kill)

    def killed_by(self, side: str) -> bool:
        result = self.sides.get(side)
        return result is not None and result.killed


@dataclass(frozen=True)
class RunOptions:
    database_url: str
    sides: Sequence[str] = SIDES
    max_examples: int = 300  # per round
    rounds: int = 4  # the derandomized ci run, then further seeds until a kill
    shrink_seconds: float = 30.0
    timeout_seconds: float = 900.0


def _child(
    options: RunOptions,
    *,
    schema: str,
    layer: str,
    pythonpath: Path | None,
    seed: int | None = None,
    sides: Sequence[str] | None = None,
) -> tuple[list[SideResult], str | None]:
    command = [
        sys.executable,
        "-m",
        "pipeline_models.mutants.child",
        "--layer",
        layer,
        "--sides",
        ",".join(sides or options.sides),
        "--database-url",
        options.database_url,
        "--schema",
        schema,
        "--max-examples",
        str(options.max_examples),
        "--rounds",
        str(1 if seed is not None else options.rounds),
        "--shrink-seconds",
        str(options.shrink_seconds),
    ]
    if seed is not None:
        command += ["--seed", str(seed)]
    environment = dict(os.environ)
    if pythonpath is not None:
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(pythonpath), *filter(None, [environment.get("PYTHONPATH")])]
        )
    try:
        finished = subprocess.run(
            command,
            env=environment,
            capture_output=True,
            text=True,
            timeout=options.timeout_seconds,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return [], f"no result within {options.timeout_seconds:.0f} s"
    lines = finished.stdout.strip().splitlines()
    if finished.returncode != 0 or not lines:
        tail = (finished.stderr.strip().splitlines() or ["no output"])[-1]
        return [], f"the child process failed (exit {finished.returncode}): {tail}"
    return [SideResult(**result) for result in json.loads(lines[-1])], None


def _schema_slots(jobs: int) -> queue.Queue[str]:
    """One schema per parallel process: processes never share rows."""
    schemas: queue.Queue[str] = queue.Queue()
    for slot in range(jobs):
        schemas.put(f"pm_mutants_{slot}")
    return schemas


def run_mutants(
    mutants: Sequence[Mutant],
    options: RunOptions,
    *,
    jobs: int = 2,
    on_result: Callable[[MutantReport], None] | None = None,
) -> list[MutantReport]:
    """Every mutant against every side, ``jobs`` processes at a time; in catalog order."""
    schemas = _schema_slots(jobs)

    def run_one(mutant: Mutant) -> MutantReport:
        schema = schemas.get()
        try:
            with tempfile.TemporaryDirectory(prefix=f"pm-mutant-{mutant.name}-") as scratch:
                root = mutant.plant(Path(scratch))
                results, error = _child(
                    options, schema=schema, layer=mutant.machine, pythonpath=root
                )
        finally:
            schemas.put(schema)
        report = MutantReport(
            mutant.name,
            mutant.kind,
            mutant.bug,
            mutant.seen,
            {result.side: result for result in results},
            error,
        )
        if on_result is not None:
            on_result(report)
        return report

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(run_one, mutants))


def run_reference(
    seeds: Sequence[int], options: RunOptions, *, jobs: int = 2
) -> list[MutantReport]:
    """The unchanged pipeline, once per seed, with random generation: every run must pass."""
    schemas = _schema_slots(jobs)

    def run_one(seed: int) -> MutantReport:
        schema = schemas.get()
        try:
            results, error = _child(
                options, schema=schema, layer="pipeline", pythonpath=None, seed=seed,
                sides=["checker"],
            )  # fmt: skip
        finally:
            schemas.put(schema)
        return MutantReport(
            f"reference (seed {seed})",
            "reference",
            "none",
            "",
            {result.side: result for result in results},
            error,
        )

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(run_one, seeds))


def _cell(result: SideResult | None) -> str:
    if result is None:
        return "-"
    if not result.killed:
        return f"survived ({result.examples} ex.)" if result.side != "examples" else "missed"
    if result.side == "examples":
        return f"caught by {len(result.fired)}"
    kill = f"{result.seconds_to_kill:.1f} s" if result.seconds_to_kill is not None else "?"
    return f"killed in {kill}"


def summary(reports: Sequence[MutantReport], sides: Sequence[str]) -> dict[str, Any]:
    """Kill counts per side, and the checker's time-to-kill and program-length figures."""
    figures: dict[str, Any] = {"mutants": len(reports)}
    for side in sides:
        figures[f"killed_{side}"] = sum(report.killed_by(side) for report in reports)
    checker = [r.sides["checker"] for r in reports if r.killed_by("checker")]
    kills = [result.seconds_to_kill for result in checker if result.seconds_to_kill is not None]
    programs = [len(result.program) for result in checker if result.program]
    if kills:
        figures["kill_seconds_median"] = statistics.median(kills)
        figures["kill_seconds_max"] = max(kills)
    if programs:
        figures["program_length_median"] = statistics.median(programs)
        figures["program_length_max"] = max(programs)
    if checker:
        figures["with_shrinking_seconds_median"] = statistics.median(r.seconds for r in checker)
    return figures


def format_report(reports: Sequence[MutantReport], sides: Sequence[str]) -> str:
    headers = ["mutant", "kind"]
    for side in sides:
        headers.append(SIDE_TITLES[side])
    if "checker" in sides:
        headers += ["rules", "fired"]
    rows = []
    for report in reports:
        row = [report.name, report.kind]
        for side in sides:
            row.append((report.error and "ERROR") or _cell(report.sides.get(side)))
        if "checker" in sides:
            checker = report.sides.get("checker")
            row.append(str(len(checker.program)) if checker and checker.killed else "")
            row.append(", ".join(checker.fired) if checker and checker.killed else "")
        rows.append(row)
    lines = [format_table(headers, rows), ""]
    figures = summary(reports, sides)
    counts = ", ".join(
        f"{SIDE_TITLES[side]} {figures[f'killed_{side}']}/{figures['mutants']}" for side in sides
    )
    lines.append(f"killed: {counts}")
    if "kill_seconds_median" in figures:
        lines.append(
            f"checker: time to kill median {figures['kill_seconds_median']:.1f} s, max "
            f"{figures['kill_seconds_max']:.1f} s (to the first failing example); shrunk "
            f"program median {figures.get('program_length_median', 0):g} rules, max "
            f"{figures.get('program_length_max', 0)}; with shrinking, median "
            f"{figures['with_shrinking_seconds_median']:.1f} s"
        )
    for report in reports:
        if report.error:
            lines.append(f"ERROR {report.name}: {report.error}")
    return "\n".join(lines)


def to_json(reports: Sequence[MutantReport], sides: Sequence[str]) -> str:
    return json.dumps(
        {
            "summary": summary(reports, sides),
            "mutants": [asdict(report) for report in reports],
        },
        indent=2,
    )


__all__ = [
    "MutantReport",
    "RunOptions",
    "format_report",
    "run_mutants",
    "run_reference",
    "summary",
    "to_json",
]

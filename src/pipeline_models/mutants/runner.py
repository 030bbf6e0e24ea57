"""Run the checker and the two baselines against every mutant, in parallel processes.

Each mutant is planted in its own scratch copy of the package and run by
:mod:`pipeline_models.mutants.child` with that copy first on ``PYTHONPATH``; processes
share one Postgres server (the embedded one unless ``DATABASE_URL`` is set), each in its
own schema, so they never share rows.

A kill means something only beside a control: :func:`run_control` runs the unmodified
package (:data:`~pipeline_models.mutants.UNMODIFIED`, copied and run exactly as a
mutant is) on the very same schedule, every round of it, and :func:`control_failures`
lists each round it failed. A mutant's failure counts as a kill only in a round the
control passed; ``pipeline-models mutants`` runs the control first and counts nothing
if it failed anywhere.
"""

from __future__ import annotations

import json
import os
import queue
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline_models.mutants import UNMODIFIED, Mutant
from pipeline_models.mutants.child import FLAKY, SIDES, SideResult, round_seeds
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
    invariant: str | None = None  # the invariant the catalog names as closest to the bug

    @property
    def first_as_named(self) -> bool | None:
        """Whether the checker's kill reported the named invariant first (None: no name,
        or no kill)."""
        checker = self.sides.get("checker")
        if self.invariant is None or checker is None or not checker.killed:
            return None
        return bool(checker.fired) and checker.fired[0] == self.invariant

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
    round_timeout_seconds: float = 900.0  # a round that takes longer is a hang
    # None: each mutant on the machine the catalog names; "core": every mutant, and the
    # control, checked by the core's queue machine through the reference's adapter.
    layer: str | None = None
    # With layer "core": the adapter (MODULE:NAME) that checks a third-party system;
    # None: the reference's (pipeline_models.pipeline.adapter).
    adapter: str | None = None

    @property
    def timeout_seconds(self) -> float:
        """A child's whole budget: every round, each side, and its shrinking."""
        return (self.round_timeout_seconds * self.rounds + self.shrink_seconds) * len(self.sides)


def _child(
    options: RunOptions,
    *,
    schema: str,
    layer: str,
    pythonpath: Path | None,
    sides: Sequence[str] | None = None,
    every_round: bool = False,
    seed: int | None = None,
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
        str(options.rounds),
        "--shrink-seconds",
        str(options.shrink_seconds),
    ]
    if every_round:
        command.append("--every-round")
    if seed is not None:
        command += ["--seed", str(seed)]
    if options.adapter:
        command += ["--adapter", options.adapter]
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
    """One schema per parallel process: processes never share rows, nor do two runs on
    one server (a second run's control must not reset the first one's tables)."""
    schemas: queue.Queue[str] = queue.Queue()
    for slot in range(jobs):
        schemas.put(f"pm_mutants_{os.getpid()}_{slot}")
    return schemas


def _planted_run(
    system: Mutant,
    options: RunOptions,
    schemas: queue.Queue[str],
    *,
    layer: str,
    sides: Sequence[str],
    every_round: bool,
    seed: int | None = None,
) -> tuple[list[SideResult], str | None]:
    """Plant ``system`` in a scratch copy and run its child there, in a free schema."""
    schema = schemas.get()
    try:
        with tempfile.TemporaryDirectory(
            prefix=f"pm-mutant-{re.sub(r'[^A-Za-z0-9_.-]', '_', system.name)}-"
        ) as scratch:
            root = system.plant(Path(scratch))
            return _child(
                options,
                schema=schema,
                layer=layer,
                pythonpath=root,
                sides=sides,
                every_round=every_round,
                seed=seed,
            )
    finally:
        schemas.put(schema)


def run_mutants(
    mutants: Sequence[Mutant],
    options: RunOptions,
    *,
    jobs: int = 2,
    on_result: Callable[[MutantReport], None] | None = None,
) -> list[MutantReport]:
    """Every mutant against every side, ``jobs`` processes at a time; in catalog order.

    Kills count only beside a control that passed the same schedule: see
    :func:`run_control`."""
    schemas = _schema_slots(jobs)

    def run_one(mutant: Mutant) -> MutantReport:
        results, error = _planted_run(
            mutant,
            options,
            schemas,
            layer=options.layer or mutant.machine,
            sides=options.sides,
            every_round=False,
        )
        report = MutantReport(
            mutant.name,
            mutant.kind,
            mutant.bug,
            mutant.seen,
            {result.side: result for result in results},
            error,
            mutant.closest(options.layer),
        )
        if on_result is not None:
            on_result(report)
        return report

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(run_one, mutants))


def control_tasks(
    layers: Sequence[str], sides: Sequence[str], rounds: int = 1
) -> list[tuple[str, str, int | None]]:
    """The control's parts: one process per layer, side and round (each round is a
    search of its own seed, so ``-j`` runs them side by side), the example suite (which
    does not depend on the layer, and has no rounds) once.

    >>> control_tasks(["pipeline", "queue"], ["checker", "examples"], rounds=2)
    [('pipeline', 'checker', 1), ('pipeline', 'checker', 2), ('pipeline', 'examples', None), \
('queue', 'checker', 1), ('queue', 'checker', 2)]
    """
    return [
        (layer, side, number)
        for layer in layers
        for side in sides
        if side != "examples" or layer == layers[0]
        for number in ([None] if side == "examples" else range(1, rounds + 1))
    ]


def campaign_layers(mutants: Sequence[Mutant]) -> list[str]:
    """The layers the mutants use (both when there are none), the pipeline first."""
    return sorted({m.machine for m in mutants} or {"pipeline", "queue"}, key="pipeline".__ne__)


def run_control(
    layers: Sequence[str],
    options: RunOptions,
    *,
    jobs: int = 2,
    system: Mutant = UNMODIFIED,
    on_result: Callable[[MutantReport], None] | None = None,
) -> list[MutantReport]:
    """The control: ``system`` (the unmodified package) on the mutants' very schedule,
    every round run to its end, each round a process of its own (:func:`control_tasks`),
    the rounds of one layer and side then put together as one report. ``system`` is a
    parameter so that a test can hand the runner a control that fails. ``on_result``
    hears of each part as soon as it is done."""
    schemas = _schema_slots(jobs)
    tasks = control_tasks(layers, options.sides, options.rounds)
    seeds = round_seeds(options.rounds)
    one_round = replace(options, rounds=1)

    def run_one(task: tuple[str, str, int | None]) -> MutantReport:
        layer, side, number = task
        results, error = _planted_run(
            system,
            options if number is None else one_round,
            schemas,
            layer=layer,
            sides=[side],
            every_round=True,
            seed=None if number is None else seeds[number - 1],
        )
        for result in results:  # the child numbers its only round 1
            for found in result.rounds:
                found.round = number or found.round
            if result.killed_in_round is not None and number is not None:
                result.killed_in_round = number
        report = MutantReport(
            f"{system.name}, {layer} layer, {SIDE_TITLES[side]}",
            system.kind,
            system.bug,
            system.seen,
            {result.side: result for result in results},
            error,
        )
        if on_result is not None:
            on_result(report)
        return report

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        parts = list(pool.map(run_one, tasks))
    merged: dict[str, MutantReport] = {}
    for part in parts:  # in task order: a layer and side's rounds in order
        whole = merged.setdefault(part.name, part)
        if whole is not part:
            whole.error = "; ".join(filter(None, [whole.error, part.error])) or None
            for side, result in part.sides.items():
                whole.sides[side] = (
                    _rounds_together(whole.sides[side], result) if side in whole.sides else result
                )
    return list(merged.values())


def _rounds_together(first: SideResult, then: SideResult) -> SideResult:
    """One side's result over the rounds of ``first`` and then those of ``then``: its
    examples and seconds added up (the time the rounds took one after the other), its
    failure the first round's that failed."""
    failed = first if first.killed else then
    return replace(
        failed,
        seconds=first.seconds + then.seconds,
        examples=first.examples + then.examples,
        rounds=first.rounds + then.rounds,
    )


def control_failures(control: Sequence[MutantReport]) -> list[str]:
    """Every round (or example suite) the control failed, or could not run: each one a
    false alarm of the checker or a bug of the reference, and a reason to count nothing."""
    failures = []
    for report in control:
        if report.error:
            failures.append(f"{report.name}: did not run: {report.error}")
        for result in report.sides.values():
            if result.side == "examples" and result.killed:
                failures.append(
                    f"{report.name}: scenarios {', '.join(result.fired)} failed: {result.detail}"
                )
            for failed in result.failed_rounds:
                what = FLAKY if failed.flaky else ", ".join(failed.fired)
                failures.append(
                    f"{report.name}: round {failed.round} ({_schedule_name(failed.seed)}) "
                    f"failed after {failed.examples} examples [{what}]: {failed.detail}"
                )
    return failures


@dataclass
class Campaign:
    """A whole mutant run: the control first, then the mutants, only if it passed."""

    options: RunOptions
    control: list[MutantReport]
    failures: list[str]  # the control's failed rounds: any one, and nothing is counted
    mutants: list[MutantReport]

    @property
    def counted(self) -> bool:
        return not self.failures


def run_campaign(
    mutants: Sequence[Mutant],
    options: RunOptions,
    *,
    jobs: int = 2,
    control_system: Mutant = UNMODIFIED,
    on_result: Callable[[MutantReport], None] | None = None,
    on_control: Callable[[MutantReport], None] | None = None,
) -> Campaign:
    """Run the control on every layer the mutants use (both when there are none), then,
    only if it passed every round, the mutants: a kill in a round the control failed
    would be the checker's false alarm counted as a kill. ``on_control`` and
    ``on_result`` hear of each part of the control, and of each mutant, once done."""
    layers = [options.layer] if options.layer else campaign_layers(mutants)
    control = run_control(layers, options, jobs=jobs, system=control_system, on_result=on_control)
    failures = control_failures(control)
    reports = [] if failures else run_mutants(mutants, options, jobs=jobs, on_result=on_result)
    return Campaign(options, control, failures, reports)


def _schedule_name(seed: int | None) -> str:
    return "derandomized ci" if seed is None else f"seed {seed}"


def describe_schedule(options: RunOptions) -> str:
    """The schedule every system runs, in words.

    >>> describe_schedule(RunOptions("postgresql://x", rounds=3, max_examples=300))
    '3 rounds of up to 300 examples (derandomized ci, seed 1, seed 2)'
    """
    seeds = ", ".join(_schedule_name(seed) for seed in round_seeds(options.rounds))
    return f"{options.rounds} rounds of up to {options.max_examples} examples ({seeds})"


def format_control(control: Sequence[MutantReport], options: RunOptions) -> str:
    """One line per control run: what it passed, or which rounds it failed."""
    lines = [f"control: the unmodified package on the same schedule, {describe_schedule(options)}"]
    for report in control:
        if report.error:
            lines.append(f"  {report.name}: ERROR {report.error}")
        for result in report.sides.values():
            if result.side == "examples":
                verdict = (
                    f"FAILED {', '.join(result.fired)}"
                    if result.killed
                    else f"passed all {result.examples} scenarios"
                )
            elif result.failed_rounds:
                failed = ", ".join(str(r.round) for r in result.failed_rounds)
                verdict = f"FAILED round {failed} of {len(result.rounds)}"
            else:
                verdict = (
                    f"passed all {len(result.rounds)} rounds "
                    f"({result.examples} examples, {result.seconds:.0f} s)"
                )
            lines.append(f"  {report.name}: {verdict}")
    return "\n".join(lines)


def _cell(result: SideResult | None) -> str:
    if result is None:
        return "-"
    if not result.killed:
        if result.side == "examples":
            return "missed"
        flaky = sum(r.flaky for r in result.rounds)
        return f"survived ({result.examples} ex.)" + (f", {flaky} flaky" if flaky else "")
    if result.side == "examples":
        return f"caught by {len(result.fired)}"
    kill = f"{result.seconds_to_kill:.1f} s" if result.seconds_to_kill is not None else "?"
    return f"killed in {kill}, round {result.killed_in_round}"


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
    named = [r.first_as_named for r in reports if r.first_as_named is not None]
    if named:
        figures["first_as_named"] = sum(named)
        figures["named_kills"] = len(named)
    return figures


def format_report(reports: Sequence[MutantReport], sides: Sequence[str]) -> str:
    headers = ["mutant", "kind"]
    for side in sides:
        headers.append(SIDE_TITLES[side])
    named = any(report.invariant for report in reports)
    if "checker" in sides:
        headers += ["rules", "fired"] + (["named"] if named else [])
    rows = []
    for report in reports:
        row = [report.name, report.kind]
        for side in sides:
            row.append((report.error and "ERROR") or _cell(report.sides.get(side)))
        if "checker" in sides:
            checker = report.sides.get("checker")
            row.append(str(len(checker.program)) if checker and checker.killed else "")
            row.append(", ".join(checker.fired) if checker and checker.killed else "")
            if named:
                mark = {True: "", False: " (not first)", None: ""}[report.first_as_named]
                row.append(f"{report.invariant or ''}{mark}")
        rows.append(row)
    lines = [format_table(headers, rows), ""]
    figures = summary(reports, sides)
    counts = ", ".join(
        f"{SIDE_TITLES[side]} {figures[f'killed_{side}']}/{figures['mutants']}" for side in sides
    )
    lines.append(f"killed: {counts} (each kill in a round the control passed)")
    if "kill_seconds_median" in figures:
        lines.append(
            f"checker: time to kill median {figures['kill_seconds_median']:.1f} s, max "
            f"{figures['kill_seconds_max']:.1f} s (to the first failing example); shrunk "
            f"program median {figures.get('program_length_median', 0):g} rules, max "
            f"{figures.get('program_length_max', 0)}; with shrinking, median "
            f"{figures['with_shrinking_seconds_median']:.1f} s"
        )
    if "named_kills" in figures:
        lines.append(
            f"first reported invariant is the named one: {figures['first_as_named']}/"
            f"{figures['named_kills']} kills"
        )
    for report in reports:
        if report.error:
            lines.append(f"ERROR {report.name}: {report.error}")
    return "\n".join(lines)


def to_json(
    reports: Sequence[MutantReport],
    sides: Sequence[str],
    *,
    control: Sequence[MutantReport] = (),
    options: RunOptions | None = None,
) -> str:
    return json.dumps(
        {
            "schedule": describe_schedule(options) if options is not None else None,
            "control": [asdict(report) for report in control],
            "control_failures": control_failures(control),
            "summary": summary(reports, sides),
            "mutants": [asdict(report) for report in reports],
        },
        indent=2,
    )


__all__ = [
    "Campaign",
    "MutantReport",
    "RunOptions",
    "campaign_layers",
    "control_failures",
    "control_tasks",
    "describe_schedule",
    "format_control",
    "format_report",
    "run_campaign",
    "run_control",
    "run_mutants",
    "summary",
    "to_json",
]

"""``pipeline-models check``: run the state machines and report what they explored.

Prints examples, rules, worker steps and steps per second, which invariants were
checked, which lifecycle transitions were covered out of those the machine's rules make
(any other transition seen is named too), and any failure as the shrunk program
Hypothesis found. Each machine says what it checks (``checked_invariants()``,
``TRANSITIONS``): the queue machine's report names neither billing nor webhooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from hypothesis import seed as hypothesis_seed
from hypothesis.stateful import run_state_machine_as_test

from pipeline_models import machines
from pipeline_models.database import Database
from pipeline_models.interrupts import Interrupted, search_so_far
from pipeline_models.profiles import machine_settings, register_profiles
from pipeline_models.reach import BranchReport, Measure
from pipeline_models.report import transition_lines

MACHINES: dict[str, type[machines.QueueMachine]] = {
    "pipeline": machines.PipelineMachine,
    "queue": machines.QueueMachine,
}


@dataclass
class CheckReport:
    machine: str
    profile: str
    database: str
    seed: int | None = None
    seconds: float = 0.0
    statistics: machines.RunStatistics = field(default_factory=machines.RunStatistics)
    failure: str | None = None
    program: list[str] = field(default_factory=list)
    interrupted: bool = False  # by Ctrl-C: the statistics are those of the search so far
    reach: BranchReport | None = None  # with coverage: what of the pipeline the run reached

    @property
    def ok(self) -> bool:
        return self.failure is None

    def render(self) -> str:
        stats = self.statistics
        steps = stats.steps + stats.drain_steps
        rate = steps / self.seconds if self.seconds else 0.0
        # What this machine checks, and nothing it does not: the queue machine neither
        # judges billing nor makes webhooks.
        searched = MACHINES[self.machine]
        covered = [kind for kind in searched.TRANSITIONS if stats.transitions[kind]]
        seeded = "" if self.seed is None else f", seed {self.seed}"
        lines = [
            f"pipeline-models check: {self.machine} machine, profile {self.profile}{seeded}, "
            f"{self.database}",
            f"{stats.examples} examples, {stats.rules} rules, {steps} worker steps "
            f"({stats.steps} in rules, {stats.drain_steps} in drains) in {self.seconds:.1f} s:"
            f" {rate:.0f} steps/s, {stats.rules / self.seconds if self.seconds else 0:.0f}"
            " rules/s",
            f"invariants checked after every rule ({stats.checks} checks): "
            f"{', '.join(searched.checked_invariants())}; liveness at every drain",
            "",
            f"transitions covered: {len(covered)} of {len(searched.TRANSITIONS)}",
            *transition_lines(
                stats.transitions, searched.TRANSITIONS, drained=machines.DRAIN_TRANSITIONS
            ),
            "",
        ]
        if self.interrupted:
            again = "check again" if self.seed is None else f"check --seed {self.seed} again"
            lines.append(search_so_far(stats.examples, stats.failures, again=again))
        elif self.ok:
            lines.append("OK: no invariant failed")
        else:
            lines.append("FAILED, shrunk to:")
            lines.extend(f"    {line}" for line in self.program)
            lines.append("")
            lines.append(self.failure or "")
        if self.reach is not None:
            lines.append("")
            lines.append(self.reach.render())
        return "\n".join(lines)


def _program(error: BaseException) -> list[str]:
    notes = "\n".join(getattr(error, "__notes__", []))
    return [
        line.rstrip()
        for line in notes.splitlines()
        if line.strip().startswith("state") and "database_agrees_with_the_model" not in line
    ]


def _seeded(machine: type[machines.QueueMachine], seed: int) -> type[machines.QueueMachine]:
    """``machine`` searching from ``seed``: a subclass of the same name and module, so
    that Hypothesis files its examples under the machine's own key."""
    subclass = type(machine.__name__, (machine,), {"__module__": machine.__module__})
    return hypothesis_seed(seed)(subclass)


def run_check(
    database: Database,
    *,
    machine: str = "pipeline",
    profile: str = "dev",
    max_examples: int | None = None,
    seed: int | None = None,
    coverage: bool = False,
    measure: Measure | None = None,
) -> CheckReport:
    """Run ``machine`` with ``profile`` against ``database``; the report.

    With ``seed`` the search starts from it, and without the example database: the same
    seed runs the same examples again (examples saved by other runs would come first).
    Ctrl-C ends the search: :class:`~pipeline_models.interrupts.Interrupted` then carries
    the report of what it did until then. With ``coverage`` the report says which
    branches of the pipeline's code, and which of its named queries, the run reached
    (:mod:`pipeline_models.reach`); ``measure``, one already started, measures
    instead (the command starts it before it imports the pipeline).
    """
    register_profiles()
    asyncio.run(database.ensure_schema())
    machines.use_database(database)
    machines.STATISTICS.__init__()  # type: ignore[misc]
    overrides: dict[str, Any] = {} if max_examples is None else {"max_examples": max_examples}
    searched = MACHINES[machine]
    if seed is not None:
        overrides.update(derandomize=False, database=None)
        searched = _seeded(searched, seed)
    settings = machine_settings(profile, report_multiple_bugs=False, **overrides)
    report = CheckReport(machine, profile, database.display_url, seed=seed)
    # The machines crash workers and cut their connections on purpose; the workers'
    # warnings about it are the plan, not news.
    worker_log = logging.getLogger("pipeline_models.worker")
    level = worker_log.level
    worker_log.setLevel(logging.ERROR)
    if measure is None and coverage:
        measure = Measure()
    started = time.perf_counter()
    try:
        with measure.start() if measure is not None else contextlib.nullcontext():
            run_state_machine_as_test(searched, settings=settings)
    except KeyboardInterrupt:
        report.interrupted = True
    except Exception as error:
        report.failure = f"{type(error).__name__}: {error}"
        report.program = _program(error)
    finally:
        worker_log.setLevel(level)
    if measure is not None:
        report.reach = measure.report
    report.seconds = time.perf_counter() - started
    report.statistics = machines.STATISTICS
    if report.interrupted:
        raise Interrupted(report)
    return report


__all__ = ["MACHINES", "CheckReport", "run_check"]

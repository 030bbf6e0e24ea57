"""Run a queue machine and report every distinct finding with its shrunk program.

Hypothesis reports distinct causes as distinct failures (the core raises one exception
class per first invariant); each comes back here as a :class:`Report` entry with its
findings, in causal order, and its program: the rules as Hypothesis shrank them, and
the round trips they made (``w1 before UPDATE …``), so that it reads as a story.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from typing import Any

from hypothesis import seed as hypothesis_seed
from hypothesis.stateful import run_state_machine_as_test

from pipeline_models.core.adapter import Adapter
from pipeline_models.core.invariants import QueueViolation
from pipeline_models.core.machines import STATISTICS, QueueMachine, queue_settings
from pipeline_models.core.spec import Spec, SpecError
from pipeline_models.shrinking import shrink_limit


@dataclass
class Failure:
    """One distinct finding: what failed (the cause first) and the program that shows it."""

    kind: str  # the exception class: MutualExclusionViolated, ...
    lines: list[str]  # every violation at the failing step, the cause first
    rules: list[str]  # the shrunk program's rules
    story: list[str]  # the rules with the round trips they made, in order

    @property
    def invariant(self) -> str:
        return self.lines[0].split("]", 1)[0].lstrip("[") if self.lines else self.kind


@dataclass
class Report:
    machine: str
    profile: str
    examples: int = 0
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    invariants: tuple[str, ...] = ()  # what the machine judged (its INVARIANTS)
    own_checks: bool = False  # the adapter judges its own invariants after each drain
    own_step_checks: bool = False  # ... and after every step (findings_after_each_step)
    actions: tuple[str, ...] = ()  # the adapter's actions the machine draws

    @property
    def ok(self) -> bool:
        return not self.failures

    def render(self) -> str:
        lines = [
            f"pipeline-models check: {self.machine}, profile {self.profile}",
            f"{self.examples} examples in {self.seconds:.1f} s",
        ]
        if self.invariants:
            judged = [name for name in self.invariants if name != "liveness"]
            drained = "; liveness at every drain" if "liveness" in self.invariants else ""
            if drained and self.own_checks:
                drained += ", then the adapter's own (findings_at_end)"
            if self.own_step_checks:
                judged.append("the adapter's own after every step (findings_after_each_step)")
            lines.append(f"invariants checked: {', '.join(judged)}{drained}")
        if self.actions:
            lines.append(f"actions drawn: {', '.join(self.actions)}")
        lines += [f"warning: {warning}" for warning in self.warnings]
        if self.ok:
            lines += ["", "OK: no invariant failed"]
            return "\n".join(lines)
        lines += ["", f"{len(self.failures)} distinct finding(s):"]
        for number, failure in enumerate(self.failures, start=1):
            lines += ["", f"{number}. {failure.lines[0]}"]
            lines += [f"   also: {line}" for line in failure.lines[1:]]
            lines += [f"   program ({len(failure.rules)} rules):"]
            lines += [f"     {step}" for step in failure.story]
        return "\n".join(lines)


def run(
    machine: type[QueueMachine],
    *,
    profile: str = "dev",
    seed: int | None = None,
    max_examples: int | None = None,
    rounds: int = 3,
    shrink_seconds: float = 60,
) -> Report:
    """Search with ``machine`` and report every distinct finding.

    Hypothesis keeps looking for other bugs for only ten seconds after its first, and a
    bug that fires early in most programs (a lockless claim) hides the rest. So the
    search goes on in ``rounds``: each next round starts from the next seed and
    discards the examples whose first finding is a cause already reported, until a
    round finds nothing new. Each finding is shrunk for at most ``shrink_seconds``
    (Hypothesis's own bound is an engine constant, not a setting)."""
    report = Report(
        machine.__name__,
        profile,
        invariants=machine.INVARIANTS,
        own_checks=machine.ADAPTER.findings_at_end is not Adapter.findings_at_end,
        own_step_checks=(
            machine.ADAPTER.findings_after_each_step is not Adapter.findings_after_each_step
        ),
        actions=machine.ACTIONS,
    )
    before = STATISTICS.examples
    started = time.perf_counter()
    known: dict[str, Failure] = {}
    said: list[str] = []  # what the search had to say besides its findings
    for index in range(rounds):
        round_seed = (seed or 0) + index if seed is not None or index else None
        searched = type(
            machine.__name__,
            (machine,),
            {
                "KNOWN": frozenset(known),
                "SKIP_DRAINS_ONCE_FAILED": True,
                "__module__": machine.__module__,
            },
        )
        found = _search(searched, profile, round_seed, max_examples, shrink_seconds, said)
        new = [failure for failure in found if failure.invariant not in known]
        for failure in new:
            known[failure.invariant] = failure
        if not new:
            break
    report.failures = list(known.values())
    report.seconds = time.perf_counter() - started
    report.examples = STATISTICS.examples - before
    report.warnings = list(STATISTICS.warnings) + said
    return report


def _search(
    machine: type[QueueMachine],
    profile: str,
    seed: int | None,
    max_examples: int | None,
    shrink_seconds: float,
    said: list[str],
) -> list[Failure]:
    overrides: dict[str, Any] = {}
    if max_examples is not None:
        overrides["max_examples"] = max_examples
    if seed is not None:
        overrides["derandomize"] = False
        hypothesis_seed(seed)(machine)
    try:
        with shrink_limit(shrink_seconds, said):
            run_state_machine_as_test(machine, settings=queue_settings(profile, **overrides))
    except Exception as error:  # every failure is a finding to report
        errors = list(error.exceptions) if isinstance(error, ExceptionGroup) else [error]
        return [_failure(found) for found in errors]
    return []


def _failure(error: BaseException) -> Failure:
    # Hypothesis prints a rule once it has run, after the notes the rule made: put each
    # rule first, then the round trips it made.
    story: list[str] = []
    made: list[str] = []
    for note in (note.strip() for note in getattr(error, "__notes__", [])):
        if note.startswith(("state.", "state = ")):
            if note.startswith("state.") and note != "state.teardown()":
                story += [note, *(f"  {step}" for step in made)]
            elif note == "state.teardown()":
                story += ["the drain", *(f"  {step}" for step in made)] if made else []
            made = []
        elif note.startswith(("w", "warning")):
            made.append(note)
    rules = [step for step in story if step.startswith("state.")]
    if isinstance(error, QueueViolation):
        lines = [str(finding) for finding in error.findings]
    else:
        lines = [f"{type(error).__name__}: {error}".splitlines()[0]]
    return Failure(type(error).__name__, lines, rules, story)


def load_adapter(reference: str, *, spec: str | None = None) -> type[Adapter]:
    """``module:Name`` as an adapter class; ``spec``, a TOML file that replaces its spec."""
    module_name, _, name = reference.partition(":")
    if not module_name or not name:
        raise SpecError(f"--adapter {reference!r}: write it as module:Name")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SpecError(f"--adapter {reference!r}: cannot import {module_name}: {error}") from None
    adapter = getattr(module, name, None)
    if not isinstance(adapter, type) or not issubclass(adapter, Adapter):
        raise SpecError(
            f"--adapter {reference!r}: {name} in {module_name} is not an "
            "pipeline_models.core.Adapter subclass"
        )
    if spec is not None:
        adapter = type(adapter.__name__, (adapter,), {"spec": Spec.from_toml(spec)})
    if getattr(adapter, "spec", None) is None:
        raise SpecError(f"{name} has no spec: set its spec attribute, or pass --spec FILE")
    return adapter


__all__ = ["Failure", "Report", "load_adapter", "run"]

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

from hypothesis import HealthCheck, Phase, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.internal.conjecture import engine
from hypothesis.stateful import run_state_machine_as_test

from pipeline_models.core.adapter import Adapter
from pipeline_models.core.invariants import QueueViolation
from pipeline_models.core.machines import STATISTICS, QueueMachine
from pipeline_models.core.spec import Spec, SpecError

PROFILES: dict[str, dict[str, Any]] = {
    "ci": {"max_examples": 50, "derandomize": True},
    "dev": {"max_examples": 100, "derandomize": False},
    "fuzz": {"max_examples": 5_000, "derandomize": False},
}


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

    @property
    def ok(self) -> bool:
        return not self.failures

    def render(self) -> str:
        lines = [
            f"pipeline-models check: {self.machine}, profile {self.profile}",
            f"{self.examples} examples in {self.seconds:.1f} s",
        ]
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


def machine_settings(profile: str, **overrides: Any) -> settings:
    if profile not in PROFILES:
        raise ValueError(f"no profile {profile!r}; the profiles are {', '.join(PROFILES)}")
    values: dict[str, Any] = {
        "stateful_step_count": 50,
        "deadline": None,
        "database": None,
        "suppress_health_check": list(HealthCheck),
        "phases": [phase for phase in Phase if phase is not Phase.explain],
        **PROFILES[profile],
        **overrides,
    }
    return settings(**values)


def run(
    machine: type[QueueMachine],
    *,
    profile: str = "dev",
    seed: int | None = None,
    max_examples: int | None = None,
    shrink_seconds: float = 60,
) -> Report:
    """Search with ``machine`` and report every distinct finding, each shrunk for at most
    ``shrink_seconds`` (Hypothesis's own bound is an engine constant, not a setting)."""
    overrides: dict[str, Any] = {}
    if max_examples is not None:
        overrides["max_examples"] = max_examples
    if seed is not None:
        overrides["derandomize"] = False
        machine = type(machine.__name__, (machine,), {"__module__": machine.__module__})
        hypothesis_seed(seed)(machine)
    report = Report(machine.__name__, profile)
    before = STATISTICS.examples
    started = time.perf_counter()
    shrinking = engine.MAX_SHRINKING_SECONDS
    engine.MAX_SHRINKING_SECONDS = int(shrink_seconds)
    try:
        run_state_machine_as_test(machine, settings=machine_settings(profile, **overrides))
    except Exception as error:  # every failure is a finding to report
        errors = list(error.exceptions) if isinstance(error, ExceptionGroup) else [error]
        report.failures.extend(_failure(found) for found in errors)
    finally:
        engine.MAX_SHRINKING_SECONDS = shrinking
    report.seconds = time.perf_counter() - started
    report.examples = STATISTICS.examples - before
    report.warnings = list(STATISTICS.warnings)
    return report


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


__all__ = ["PROFILES", "Failure", "Report", "load_adapter", "machine_settings", "run"]

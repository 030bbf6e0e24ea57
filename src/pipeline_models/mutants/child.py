"""One mutant, in its own process, on every side of the comparison; prints JSON.

Run by :mod:`pipeline_models.mutants.runner` with the mutant's scratch copy first on
``PYTHONPATH``, so ``import pipeline_models`` here is the buggy pipeline::

    PYTHONPATH=/tmp/scratch python -m pipeline_models.mutants.child \\
        --mutant claim-before-due --database-url ... --schema pm_mutants_0

The sides:

* ``checker``: the mutant's machine (queue or pipeline layer) in the ci profile, every
  checkpoint a place to interleave; stops at the first failure, then shrinks it;
* ``coarse``: the same machine with each step run whole (checkpoints off), so workers
  interleave only between whole steps;
* ``examples``: the example-based suite (:mod:`pipeline_models.mutants.examples`).

The search runs in rounds (``--rounds``): the derandomized ci profile first, then
random generation from seed 1, 2, ... (``--seed`` moves the first round to that seed).
A mutant's search stops at its first reproducible failure; with ``--every-round`` (the
control run of the unmodified package) every round runs to the end, so the runner
knows which rounds the reference passed. A failure Hypothesis could not reproduce
(``Flaky``) is recorded for its round and never counts as a kill.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Flaky, UnsatisfiedAssumption
from hypothesis.stateful import run_state_machine_as_test

from pipeline_models import machines
from pipeline_models.core.invariants import QueueViolation
from pipeline_models.database import Database
from pipeline_models.drivers import CHECK_CONFIG, QueueDriver, ReferenceDriver
from pipeline_models.invariants import InvariantViolation
from pipeline_models.profiles import machine_settings

SIDES = ("checker", "coarse", "examples")


FLAKY = "flaky (not reproducible)"


@dataclass
class RoundResult:
    """One round of the search: its seed (None: the derandomized ci round) and outcome."""

    round: int  # 1-based
    seed: int | None
    failed: bool
    examples: int
    seconds: float
    flaky: bool = False  # failed, but Hypothesis could not reproduce the failure
    fired: list[str] = field(default_factory=list)
    detail: str | None = None


@dataclass
class SideResult:
    """How one side did against one mutant."""

    side: str
    killed: bool  # a reproducible failure (flaky ones are recorded in rounds, never kills)
    seconds: float  # the whole side, shrinking included
    seconds_to_kill: float | None = None  # to the first failing example
    examples_to_kill: int | None = None
    examples: int = 0
    program: list[str] = field(default_factory=list)  # the shrunk program's rules
    fired: list[str] = field(default_factory=list)  # invariants, or what else failed
    detail: str | None = None  # the failure's first line
    killed_in_round: int | None = None  # 1-based; None for the example suite
    rounds: list[RoundResult] = field(default_factory=list)  # the search's rounds, in order

    def __post_init__(self) -> None:
        # Read back from JSON, the rounds are dicts.
        self.rounds = [r if isinstance(r, RoundResult) else RoundResult(**r) for r in self.rounds]

    @property
    def failed_rounds(self) -> list[RoundResult]:
        return [result for result in self.rounds if result.failed]


def _fired(error: BaseException) -> tuple[list[str], str]:
    """What the failure was: invariant names, or the rule's broken promise."""
    if isinstance(error, InvariantViolation):
        # In the order the checker reported them (its invariants' order: the cause first).
        names = list(dict.fromkeys(violation.invariant for violation in error.violations))
        return names, str(error.violations[0])
    if isinstance(error, QueueViolation):
        # The core's findings, the cause first.
        ordered = list(dict.fromkeys(finding.invariant for finding in error.findings))
        return ordered, str(error.findings[0])
    if isinstance(error, Flaky):
        # A FlakyFailure carries what the first run raised: the lead to follow.
        inner = getattr(error, "exceptions", ())
        first = (
            f"; the first run raised {type(inner[0]).__name__}: "
            f"{(str(inner[0]).splitlines() or [''])[0]}"
            if inner
            else ""
        )
        return [FLAKY], str(error).splitlines()[0] + first
    if isinstance(error, AssertionError):
        return ["api contract"], (str(error).splitlines() or [""])[0]
    return [f"error: {type(error).__name__}"], (str(error).splitlines() or [""])[0]


def _failure(error: BaseException | None) -> BaseException | None:
    """``error`` if it is a failure of the example, not Hypothesis's control flow."""
    if isinstance(error, Exception) and not isinstance(error, UnsatisfiedAssumption):
        return error
    return None


def _program(error: BaseException) -> list[str]:
    notes = "\n".join(getattr(error, "__notes__", []))
    return [
        line.strip()
        for line in notes.splitlines()
        if line.strip().startswith("state.")
        and "database_agrees_with_the_model" not in line
        and "teardown()" not in line
    ]


ADAPTER: str | None = None  # --adapter MODULE:NAME: a third-party system's, on the core


def _machine(layer: str, *, whole_steps: bool, schema: str, drain: bool = True) -> type[Any]:
    if layer == "core":
        from pipeline_models.core import machine_for
        from pipeline_models.pipeline.adapter import ReferenceAdapter

        if ADAPTER is not None:
            import importlib

            module, _, name = ADAPTER.partition(":")
            return machine_for(getattr(importlib.import_module(module), name))
        return machine_for(ReferenceAdapter.in_schema(schema))
    base: type[machines.QueueMachine] = (
        machines.QueueMachine if layer == "queue" else machines.PipelineMachine
    )

    class Mutant(base):  # type: ignore[valid-type,misc]
        DRAIN = drain

        def make_driver(self) -> QueueDriver:
            return ReferenceDriver(
                machines._Database.get(), config=CHECK_CONFIG, whole_steps=whole_steps
            )

    Mutant.__name__ = base.__name__
    return Mutant


def round_seeds(rounds: int, first_seed: int | None = None) -> list[int | None]:
    """The schedule: the seed of each round (None: the derandomized ci round).

    >>> round_seeds(3)
    [None, 1, 2]
    >>> round_seeds(2, first_seed=7)
    [7, 8]
    """
    first = first_seed or 0
    return [first_seed if index == 0 else first + index for index in range(rounds)]


def _statistics(layer: str) -> Any:
    """The machines' counters of ``layer`` (the core keeps its own)."""
    if layer == "core":
        from pipeline_models.core.machines import STATISTICS

        return STATISTICS
    return machines.STATISTICS


def run_machine(
    layer: str,
    *,
    whole_steps: bool,
    schema: str,
    max_examples: int,
    seed: int | None,
    rounds: int = 1,
    every_round: bool = False,
) -> SideResult:
    """Search in up to ``rounds`` rounds of ``max_examples`` examples (see
    :func:`round_seeds`), stop at the first reproducible failure and shrink it; with
    ``every_round``, run every round whatever happens (the control run). One fixed
    sequence of programs finds a bug, or not, by the luck of its draw (a bug found in
    the first examples of a 3,000-example run can go unfound in a 1,000-example run);
    several short sequences are a fairer trial than one long one.

    Once the first failure is known to fire before the drain, the drains stop (half of
    every shrinking attempt's time, and no part of the failure being shrunk). The time
    to kill is to the first failure, from the start of the first round."""
    side = "coarse" if whole_steps else "checker"
    started = time.perf_counter()
    examples = 0
    kill: SideResult | None = None
    results: list[RoundResult] = []
    for index, round_seed in enumerate(round_seeds(rounds, seed), start=1):
        round_started = time.perf_counter()
        result = _search(layer, whole_steps, schema, max_examples, round_seed, started, examples)
        flaky = result.killed and FLAKY in result.fired
        results.append(
            RoundResult(
                index,
                round_seed,
                result.killed,
                result.examples - examples,
                time.perf_counter() - round_started,
                flaky=flaky,
                fired=result.fired,
                detail=result.detail,
            )
        )
        examples = result.examples
        if result.killed and not flaky and kill is None:
            kill = result
            kill.killed_in_round = index
            if not every_round:
                break
    if kill is not None:
        kill.rounds = results
        kill.examples = examples
        kill.seconds = time.perf_counter() - started
        return kill
    return SideResult(side, False, time.perf_counter() - started, examples=examples, rounds=results)


def _search(
    layer: str,
    whole_steps: bool,
    schema: str,
    max_examples: int,
    seed: int | None,
    started: float,
    examples_before: int,
) -> SideResult:
    side = "coarse" if whole_steps else "checker"
    machine = _machine(layer, whole_steps=whole_steps, schema=schema)
    statistics = _statistics(layer)
    first: dict[str, Any] = {}
    teardown = machine.teardown

    def timed_teardown(self: Any) -> None:
        # Teardown runs in the rule's exception handler when a rule failed. Hypothesis's
        # own StopTest (an example cut short: its choices ran out, or it was rejected)
        # is no failure: taken for one, it switched the drains off for the rest of the
        # search after the first such example, and with them every liveness check.
        before_drain = _failure(sys.exception())
        raised = before_drain
        try:
            teardown(self)
        except BaseException as error:
            raised = raised or _failure(error)  # the drain failed
            raise
        finally:
            if raised is not None and not first:
                first["seconds"] = time.perf_counter() - started
                first["examples"] = examples_before + statistics.examples
                # What the first failing example raised: a failure that does not
                # replay (Hypothesis's "inconsistent data generation") carries no
                # trace of it, and it is the lead to follow.
                first["raised"] = (
                    f"{type(raised).__name__}: {(str(raised).splitlines() or [''])[0]}"
                )
                # The whole story on stderr (the runner keeps only its last line), for
                # whoever runs this child by hand to chase a failure that did not replay.
                traceback.print_exception(raised, file=sys.stderr)
                if before_drain is not None:
                    machine.DRAIN = False

    machine.teardown = timed_teardown
    overrides: dict[str, Any] = {"max_examples": max_examples, "report_multiple_bugs": False}
    if seed is not None:
        # Random generation from the seed; no example database, so no round (and no
        # earlier run) replays another's failures.
        overrides.update(derandomize=False, database=None)
        hypothesis_seed(seed)(machine)
    statistics.__init__()
    try:
        run_state_machine_as_test(machine, settings=machine_settings("ci", **overrides))
    except Exception as error:
        fired, detail = _fired(error)
        if FLAKY in fired and "first run raised" not in detail and "raised" in first:
            detail += f"; the first failing example raised {first['raised']}"
        return SideResult(
            side,
            True,
            time.perf_counter() - started,
            first.get("seconds"),
            first.get("examples"),
            examples_before + statistics.examples,
            _program(error),
            fired,
            detail,
        )
    return SideResult(
        side,
        False,
        time.perf_counter() - started,
        examples=examples_before + statistics.examples,
    )


def run_examples_side(database: Database) -> SideResult:
    from pipeline_models.mutants.examples import run_examples

    started = time.perf_counter()
    results = asyncio.run(run_examples(database))
    failed = [result for result in results if not result.passed]
    elapsed = 0.0
    to_kill = None
    for result in results:
        elapsed += result.seconds
        if not result.passed:
            to_kill = elapsed
            break
    return SideResult(
        "examples",
        bool(failed),
        time.perf_counter() - started,
        to_kill,
        examples=len(results),
        fired=[result.name for result in failed],
        detail=failed[0].message if failed else None,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", choices=["queue", "pipeline", "core"], default="pipeline")
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--max-examples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--every-round",
        action="store_true",
        help="run every round, even after a failure (the control run of the reference)",
    )
    parser.add_argument(
        "--shrink-seconds",
        type=float,
        default=None,
        help="stop shrinking after this long (the report shows the shortest program found)",
    )
    parser.add_argument(
        "--adapter",
        default=None,
        help="with --layer core: the adapter (MODULE:NAME) of the system the mutant is in",
    )
    arguments = parser.parse_args(argv)
    global ADAPTER
    ADAPTER = arguments.adapter
    if arguments.shrink_seconds is not None:
        # Hypothesis's own bound (300 s) is an engine constant, not a setting.
        from hypothesis.internal.conjecture import engine

        engine.MAX_SHRINKING_SECONDS = arguments.shrink_seconds
    # Crashes and cut connections are the machines' plan; the workers' warnings are noise.
    logging.getLogger("pipeline_models.worker").setLevel(logging.CRITICAL)
    database = Database(arguments.database_url, schema=arguments.schema)
    asyncio.run(database.ensure_schema())
    machines.use_database(database)
    if arguments.layer == "core":
        from pipeline_models.core.machines import use_server

        use_server(arguments.database_url)
    results = []
    for side in arguments.sides.split(","):
        if side == "examples":
            results.append(run_examples_side(database))
        else:
            results.append(
                run_machine(
                    arguments.layer,
                    whole_steps=side == "coarse",
                    schema=arguments.schema,
                    max_examples=arguments.max_examples,
                    seed=arguments.seed,
                    rounds=arguments.rounds,
                    every_round=arguments.every_round,
                )
            )
    # The schema is this process's alone (named by the runner's pid): leave nothing behind.
    asyncio.run(database.drop_schema())
    print(json.dumps([asdict(result) for result in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

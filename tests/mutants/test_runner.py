"""The mutant runner is honest: a kill counts only beside a control that passed.

Each test runs real child processes on the session's database, with a schedule small
enough to take seconds: two rounds of a few examples on the queue layer.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from hypothesis.errors import StopTest, UnsatisfiedAssumption

from pipeline_models.database import Database
from pipeline_models.invariants import InvariantViolation, Violation
from pipeline_models.mutants import Edit, Mutant
from pipeline_models.mutants.child import _failure, _fired
from pipeline_models.mutants.runner import (
    RunOptions,
    _schema_slots,
    control_failures,
    format_report,
    run_campaign,
    run_mutants,
)

NO_EDITS = Mutant("no-edits", "control", "none", "", edits=(), machine="queue")
# A control that is broken on purpose: its claim never takes a due job, so the first
# example's drain leaves every job queued (liveness).
NEVER_CLAIMS = Mutant(
    "never-claims",
    "claims",
    "the claim never takes a due job",
    "",
    [
        Edit(
            "sql/queries.sql",
            "      AND held_for IS NULL\n",
            "      AND held_for IS NULL AND false\n",
        )
    ],
    machine="queue",
)


@pytest.fixture
def options(pipeline_database: Database) -> RunOptions:
    return RunOptions(
        pipeline_database.url, sides=["checker"], max_examples=2, rounds=2, shrink_seconds=5
    )


def test_a_mutant_with_no_edits_survives_every_round_and_is_never_counted_killed(
    options: RunOptions,
) -> None:
    [report] = run_mutants([NO_EDITS], options, jobs=1)
    assert report.error is None
    checker = report.sides["checker"]
    assert not checker.killed
    assert checker.killed_in_round is None
    assert [(r.round, r.seed, r.failed) for r in checker.rounds] == [
        (1, None, False),
        (2, 1, False),
    ]
    assert "survived" in format_report([report], ["checker"])


def test_a_campaign_whose_control_fails_a_round_counts_no_kill(options: RunOptions) -> None:
    campaign = run_campaign([NEVER_CLAIMS], options, jobs=1, control_system=NEVER_CLAIMS)
    assert not campaign.counted
    assert campaign.mutants == []  # the mutants did not even run
    assert campaign.failures
    assert "round 1 (derandomized ci)" in campaign.failures[0]
    assert "liveness" in campaign.failures[0]
    # Every round of the control ran (each in a process of its own, on its own seed),
    # not only up to its first failure, and the rounds are reported as one control.
    [control] = campaign.control
    checker = control.sides["checker"]
    assert [(r.round, r.seed, r.failed) for r in checker.rounds] == [(1, None, True), (2, 1, True)]
    assert checker.killed_in_round == 1
    assert checker.examples == sum(r.examples for r in checker.rounds)


def test_the_same_bug_counts_as_a_kill_beside_a_control_that_passed(options: RunOptions) -> None:
    campaign = run_campaign([NEVER_CLAIMS], options, jobs=1)
    assert campaign.counted, control_failures(campaign.control)
    [report] = campaign.mutants
    checker = report.sides["checker"]
    assert checker.killed
    assert checker.killed_in_round == 1
    assert "liveness" in checker.fired


def test_two_runs_on_one_server_never_share_a_schema_and_leave_none_behind(
    options: RunOptions, pipeline_database: Database
) -> None:
    """Two campaigns on one DATABASE_URL (two CI jobs, a developer beside CI) once used
    the same schema names, so one's resets emptied the other's tables mid-example."""
    slots = _schema_slots(2)
    names = [slots.get(), slots.get()]
    assert len(set(names)) == 2
    assert all(str(os.getpid()) in name for name in names)

    async def schemas() -> set[str]:
        connection = await pipeline_database.connect()
        try:
            rows = await connection.fetch(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'pm_mutants_%'"
            )
            return {row["nspname"] for row in rows}
        finally:
            await connection.close()

    before = asyncio.run(schemas())
    run_mutants([NO_EDITS], options, jobs=1)
    assert asyncio.run(schemas()) == before


def test_hypothesis_cutting_an_example_short_is_not_the_first_failure() -> None:
    # Taken for one, it switched the drains (and liveness) off for the rest of a search.
    assert _failure(StopTest(12)) is None
    assert _failure(UnsatisfiedAssumption()) is None
    assert _failure(KeyboardInterrupt()) is None
    error = AssertionError("an invariant")
    assert _failure(error) is error


def test_a_kill_says_whether_it_reported_the_named_invariant_first() -> None:
    from pipeline_models.mutants.child import SideResult
    from pipeline_models.mutants.runner import MutantReport

    def report(name: str, fired: list[str], named: str) -> MutantReport:
        side = SideResult("checker", True, 3.0, 1.0, 4, 4, ["state.enqueue_job()"], fired)
        return MutantReport(name, named, "bug", "", {"checker": side}, invariant=named)

    first = report("as-named", ["fencing", "transitions"], "fencing")
    second = report("other-first", ["transitions", "fencing"], "fencing")
    assert (first.first_as_named, second.first_as_named) == (True, False)
    table = format_report([first, second], ["checker"])
    assert "fencing (not first)" in table
    assert "first reported invariant is the named one: 1/2 kills" in table


def test_a_kill_lists_the_invariants_in_the_order_the_checker_reported_them() -> None:
    """The first one is the cause the report compares with the catalog's name: the
    checker's causal order, not the alphabet's."""
    error = InvariantViolation(
        [Violation("progress", "a"), Violation("buffers", "b"), Violation("progress", "c")]
    )
    assert _fired(error)[0] == ["progress", "buffers"]

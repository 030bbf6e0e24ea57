"""Deliberate bugs in the worker are caught.

Bugs that an interleaving of whole statements can expose are found by the machines, with
a short shrunk program. A claim without SKIP LOCKED (or without any row lock) is found
the same way: the machine holds a job's row lock in another session, as a claimer
half-way through would, and a claim that waits on it is reported. The double claim such
a claim makes is a race of two single statements, which only the scheduler's concurrent
mode (ordered by the database, not by Hypothesis) shows. (The full catalog of realistic
bugs is ``pipeline-models mutants``.)
"""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest
from hypothesis.stateful import run_state_machine_as_test

from pipeline_models.database import Database
from pipeline_models.documents import markdown_document
from pipeline_models.drivers import CHECK_CONFIG, QueueDriver, ReferenceDriver
from pipeline_models.examples.zombie_write import WITHOUT_OWNER_CHECK
from pipeline_models.invariants import InvariantViolation, Violation, check
from pipeline_models.machines import PipelineMachine, QueueMachine, _Database
from pipeline_models.pipeline import stages
from pipeline_models.profiles import machine_settings
from pipeline_models.queries import QUERIES, Queries

NO_ROW_LOCK = QUERIES.replace(
    claim_job=QUERIES["claim_job"].sql.replace("FOR UPDATE SKIP LOCKED", "")
)
NO_SKIP_LOCKED = QUERIES.replace(
    claim_job=QUERIES["claim_job"].sql.replace("FOR UPDATE SKIP LOCKED", "FOR UPDATE")
)
# The completion's fence, and the move, without the owner and lease check (the
# README's failure, read end to end, plants the same).
NO_OWNER_CHECK = WITHOUT_OWNER_CHECK


def _program(error: BaseException) -> list[str]:
    """The rules of the shrunk program Hypothesis attached to the failure."""
    notes = "\n".join(getattr(error, "__notes__", []))
    return [
        line.strip()
        for line in notes.splitlines()
        if line.strip().startswith("state.") and "database_agrees_with_the_model" not in line
    ]


def _catch(machine: type, *, examples: int = 200) -> tuple[InvariantViolation, list[str]]:
    settings = machine_settings("ci", max_examples=examples, report_multiple_bugs=False)
    with pytest.raises(InvariantViolation) as raised:
        run_state_machine_as_test(machine, settings=settings)
    return raised.value, _program(raised.value)


class OwnerCheckMutant(QueueMachine):
    def make_driver(self) -> QueueDriver:
        return ReferenceDriver(_Database.get(), config=CHECK_CONFIG, queries=NO_OWNER_CHECK)


def _zombie_program(machine: QueueMachine) -> None:
    """The story the search finds for this bug, replayed as a program: w1 calls the
    parser and stalls; its lease expires; w2 takes the job over; w1 wakes and commits."""
    machine.enqueue_first_job()
    machine.run_worker(worker="w1", checkpoints=4)  # queued -> job_validated
    machine.database_agrees_with_the_model()
    machine.run_worker(worker="w1", checkpoints=3)  # claimed, before_call, after_call
    machine.database_agrees_with_the_model()
    machine.advance_clock(seconds=31)
    machine.step_worker(worker="w2")  # reclaims the expired lease
    machine.database_agrees_with_the_model()
    machine.run_worker(worker="w1", checkpoints=2)  # the zombie commits
    machine.database_agrees_with_the_model()


def test_a_completion_that_skips_the_lease_owner_check_is_caught() -> None:
    machine = OwnerCheckMutant()
    try:
        with pytest.raises(InvariantViolation) as raised:
            _zombie_program(machine)
    finally:
        machine.teardown()
    assert "fencing" in {v.invariant for v in raised.value.violations}
    assert "w1" in str(raised.value)


def test_the_reference_passes_the_zombie_program() -> None:
    machine = QueueMachine()
    try:
        _zombie_program(machine)
    finally:
        machine.teardown()


class NoSkipLockedMutant(QueueMachine):
    def make_driver(self) -> QueueDriver:
        return ReferenceDriver(_Database.get(), config=CHECK_CONFIG, queries=NO_SKIP_LOCKED)


@pytest.mark.slow  # 50 s of search and shrinking; CI's mutant step kills this bug too
def test_a_claim_without_skip_locked_is_caught_with_a_short_program() -> None:
    violation, program = _catch(NoSkipLockedMutant, examples=100)
    assert {v.invariant for v in violation.violations} == {"claims_skip_locks"}
    assert any(line.startswith("state.hold_a_job_row_lock(") for line in program), program
    assert 0 < len(program) <= 6, program


def test_random_chunk_ids_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # uuid4-style ids, drawn from a generator reseeded with every example: as random as
    # uuid4 to the pipeline, yet the same in a replay, which Hypothesis needs to shrink.
    ids = random.Random()
    monkeypatch.setattr(stages, "chunk_id", lambda *_: uuid.UUID(int=ids.getrandbits(128)))

    class Mutant(PipelineMachine):
        def __init__(self) -> None:
            ids.seed(0)
            super().__init__()

    violation, program = _catch(Mutant, examples=50)
    # Buffers if a rule stepped through chunking; the final rows if only the drain did.
    assert {v.invariant for v in violation.violations} & {"buffers", "finalize"}
    assert 0 < len(program) <= 12, program


async def _race_claims(database: Database, queries: Queries, rounds: int) -> list[Violation]:
    """Three workers, many due jobs, every worker's next step started at the same instant.
    The clock stands still: leases never run out, so every double claim is the race's."""
    driver = ReferenceDriver(database, config=CHECK_CONFIG, queries=queries, seconds_per_step=0)
    await driver.setup()
    try:
        names = ["r1", "r2", "r3"]
        for name in names:
            await driver.start_worker(name)
        for index in range(16):
            await driver.upload(uuid.UUID(int=1), markdown_document(f"# Race {index}\n\ntext"))
        for _ in range(rounds):
            await driver.step_together(names)
            violations = check(await driver.observe(), driver.expectations())
            if violations:
                return violations
        return []
    finally:
        await driver.teardown()


def test_a_claim_without_its_row_lock_double_claims_under_real_concurrency(
    pipeline_database: Database,
) -> None:
    # Stops at the first double claim: usually within a few rounds, later under load.
    violations = asyncio.run(_race_claims(pipeline_database, NO_ROW_LOCK, rounds=600))
    assert violations, "three racing claimers never took the same job"
    assert {v.invariant for v in violations} & {"transitions", "fencing"}


def test_the_reference_claim_survives_the_same_race(pipeline_database: Database) -> None:
    assert asyncio.run(_race_claims(pipeline_database, QUERIES, rounds=200)) == []


# The reference itself had this bug until the hold_a_job_row_lock rule found it: the fence
# saw a live lease, then waited for the row lock another session held, and the lease ran
# out meanwhile; the move then committed with no lease. The moves now check the lease at
# their own time.
MOVES_TRUST_THE_FENCE = QUERIES.replace(
    advance_job=QUERIES["advance_job"].sql.replace(" AND lease_expires_at > $3", "")
)


class StaleFenceMutant(QueueMachine):
    def make_driver(self) -> QueueDriver:
        return ReferenceDriver(_Database.get(), config=CHECK_CONFIG, queries=MOVES_TRUST_THE_FENCE)


def _fence_waits_past_the_lease(machine: QueueMachine) -> None:
    """The shrunk program the search found: w1's fence waits on a held row lock, time
    passes the lease, the lock goes, w1's commit goes through. (The invariants run after
    every rule, as in the machine.)"""
    rules = [
        machine.enqueue_first_job,
        lambda: machine.step_worker(worker="w1"),  # claimed: lease until t+30
        lambda: machine.hold_a_job_row_lock(pick=0),
        lambda: machine.advance_clock(seconds=10),
        lambda: machine.step_worker(worker="w1"),  # validated; its fence waits on the lock
        lambda: machine.advance_clock(seconds=31),
        machine.release_the_job_row_lock,  # the fence gets the row; the lease is over
        lambda: machine.run_worker(worker="w1", checkpoints=2),
    ]
    for rule in rules:
        rule()
        machine.database_agrees_with_the_model()


def test_a_move_after_a_fence_that_waited_past_the_lease_is_caught() -> None:
    machine = StaleFenceMutant()
    try:
        with pytest.raises(InvariantViolation) as raised:
            _fence_waits_past_the_lease(machine)
    finally:
        machine.teardown()
    assert "fencing" in {v.invariant for v in raised.value.violations}


def test_the_reference_commits_nothing_after_its_lease_ran_out_waiting() -> None:
    machine = QueueMachine()
    try:
        _fence_waits_past_the_lease(machine)
    finally:
        machine.teardown()

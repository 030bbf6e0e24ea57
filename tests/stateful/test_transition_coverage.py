"""Across the run, every allowed transition of the lifecycle was exercised at least once.

The machines' random search covers most of them; two need a precise sequence that a
short random program rarely strings together, so they also run as explicit programs:
a lease renewed because time passed between the claim and the service call, and an
operator's retry of a dead letter. A budget hold and its release need a cap below the
next call and then a raise, so they run as a program too.
"""

from __future__ import annotations

from decimal import Decimal

from pipeline_models.documents import corrupt_pdf, markdown_document
from pipeline_models.lifecycle import TransitionKind
from pipeline_models.machines import ALICE, STATISTICS, PipelineMachine


def test_a_lease_is_renewed_when_time_passed_before_the_call() -> None:
    machine = PipelineMachine()
    try:
        machine.upload_document(user=ALICE, document=markdown_document("# Renew\n\n" + "w " * 60))
        machine.run_worker(worker="w1", checkpoints=5)  # queued -> job_validated, claimed
        machine.database_agrees_with_the_model()
        machine.advance_clock(seconds=10)
        machine.step_worker(worker="w1")  # renews the lease, parks before the call
        machine.database_agrees_with_the_model()
    finally:
        machine.teardown()
    assert STATISTICS.transitions[TransitionKind.RENEW]


def test_an_operator_retries_a_dead_letter() -> None:
    machine = PipelineMachine()
    try:
        machine.upload_document(user=ALICE, document=corrupt_pdf(3))
        for _ in range(4):
            machine.run_worker(worker="w1", checkpoints=12)
            machine.database_agrees_with_the_model()
        machine.retry_a_dead_letter_as_operator(pick=0)
        machine.database_agrees_with_the_model()
    finally:
        machine.teardown()
    assert STATISTICS.transitions[TransitionKind.OPERATOR_RETRY]


def test_a_budget_holds_a_job_and_raising_it_releases_the_job() -> None:
    machine = PipelineMachine()
    try:
        machine.cap_the_spending(limit=Decimal(0))
        machine.database_agrees_with_the_model()
        machine.upload_document(user=ALICE, document=markdown_document("# Held\n\n" + "c " * 50))
        machine.database_agrees_with_the_model()
        holds = STATISTICS.transitions[TransitionKind.HOLD]
        for _ in range(3):
            machine.run_worker(worker="w1", checkpoints=6)
            machine.database_agrees_with_the_model()
        assert STATISTICS.transitions[TransitionKind.HOLD] > holds
        machine.cap_the_spending(limit=Decimal(1))
        machine.database_agrees_with_the_model()
        machine.run_worker(worker="w1", checkpoints=4)
        machine.database_agrees_with_the_model()
    finally:
        machine.teardown()  # the drain: the released job finishes
    assert STATISTICS.transitions[TransitionKind.RELEASE]


def test_every_allowed_transition_was_exercised_during_the_run() -> None:
    missing = STATISTICS.uncovered()
    assert not missing, f"never observed: {', '.join(missing)} ({dict(STATISTICS.transitions)})"

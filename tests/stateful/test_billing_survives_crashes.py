"""A crash mid-call neither leaks the budget nor drops money from the record.

Explicit programs of the pipeline machine (the invariants, ``billing`` among them, run
after every rule): a worker killed right after the parser took a document leaves its
call in flight; the claim that takes the job over settles it at its estimate, so the
budget's reservation ends there, and the repeated parse is a second call on the ledger.
"""

from __future__ import annotations

from decimal import Decimal

from pipeline_models.documents import markdown_document
from pipeline_models.drivers import ReferenceDriver
from pipeline_models.machines import ALICE, PipelineMachine
from pipeline_models.pipeline.budget import BudgetState
from pipeline_models.pipeline.checkpoints import Checkpoint
from pipeline_models.snapshot import BilledCallRow

DOCUMENT = markdown_document("# Crash\n\n" + "A paragraph that costs money. " * 40)


def parser_calls(driver: ReferenceDriver, machine: PipelineMachine) -> list[BilledCallRow]:
    snapshot = machine._run(driver.snapshot())
    return [call for call in snapshot.billed_calls if call.service == "parser"]


async def budget_of(driver: ReferenceDriver) -> BudgetState:
    assert driver.pipeline is not None
    assert driver.pipeline.budget is not None
    state = await driver.pipeline.budget.state(driver.monitor)
    assert state is not None
    return state


def test_a_worker_killed_mid_call_leaves_its_call_to_the_next_owner_to_settle() -> None:
    machine = PipelineMachine()
    try:
        driver = machine.driver
        assert isinstance(driver, ReferenceDriver)
        machine.cap_the_spending(limit=Decimal(1))
        machine.upload_document(user=ALICE, document=DOCUMENT)
        machine.database_agrees_with_the_model()
        machine.run_worker_until(worker="w1", checkpoint=Checkpoint.AFTER_CALL.value)
        machine.crash_worker(worker="w1")  # the parser has the document; w1 is gone
        machine.database_agrees_with_the_model()
        [in_flight] = parser_calls(driver, machine)
        assert in_flight.outcome == "in_flight"
        budget = machine._run(budget_of(driver))
        assert budget.reserved_usd == in_flight.estimated_usd

        machine.advance_clock(seconds=61)  # past w1's lease
        machine.run_worker(worker="w2", checkpoints=12)  # reclaims, parses again, polls
        machine.database_agrees_with_the_model()

        first, second = parser_calls(driver, machine)
        assert (first.call_id, first.outcome) == (in_flight.call_id, "unconfirmed")
        assert first.cost_usd == first.estimated_usd  # it may have been billed
        assert second.outcome in ("counting", "billed")
        assert driver.pipeline is not None
        assert driver.pipeline.fakes is not None
        assert driver.pipeline.fakes.parser.uploads == 2
        assert machine._run(budget_of(driver)).reserved_usd == 0
    finally:
        machine.teardown()


def test_a_call_cut_short_by_a_stop_is_settled_by_the_release() -> None:
    machine = PipelineMachine()
    try:
        driver = machine.driver
        assert isinstance(driver, ReferenceDriver)
        machine.upload_document(user=ALICE, document=DOCUMENT)
        machine.run_worker_until(worker="w1", checkpoint=Checkpoint.AFTER_CALL.value)
        name = machine.worker_name("w1")
        worker = driver.scheduler.slots[name].worker  # type: ignore[union-attr]
        assert worker.current_job is not None
        machine._run(worker.release_current_job())
        [call] = parser_calls(driver, machine)
        assert (call.outcome, call.cost_usd) == ("unconfirmed", call.estimated_usd)
    finally:
        machine.teardown()

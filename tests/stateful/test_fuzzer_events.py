"""What the machines report with ``hypothesis.event``: the fuzzer's signal of new
behaviour (HypoFuzz counts each distinct event as a behaviour), and the report's counts.
"""

from __future__ import annotations

from pipeline_models.documents import markdown_document
from pipeline_models.drivers import WebhookKind
from pipeline_models.fakes import Fault, FaultPlan
from pipeline_models.machines import ALICE, STATISTICS, PipelineMachine


def test_edges_crashes_at_checkpoints_faults_and_webhooks_are_events() -> None:
    before = STATISTICS.events.copy()
    machine = PipelineMachine()
    try:
        machine.upload_document(user=ALICE, document=markdown_document("# Events\n\n" + "w " * 40))
        machine.database_agrees_with_the_model()
        machine.put_faults_on_the_parser(plan=FaultPlan([Fault.server_error(status=503), None]))
        machine.put_faults_on_the_embeddings(plan=FaultPlan([Fault.wrong_dimension()]))
        machine.run_worker(worker="w1", checkpoints=5)  # validated, then claimed again
        machine.database_agrees_with_the_model()
        machine.crash_worker(worker="w1")
        machine.database_agrees_with_the_model()
        machine.deliver_a_forged_webhook(kind=WebhookKind.TAMPERED)
        machine.deliver_a_webhook_twice()
    finally:
        machine.teardown()
    seen = STATISTICS.events - before
    assert seen["edge queued/queued -> queued/working"] >= 1, seen
    assert seen["edge queued/working -> job_validated/queued"] >= 1, seen
    assert seen["crash at claimed"] == 1, seen
    assert seen["parser fault server_error"] == 1, seen
    assert seen["parser fault none"] == 1, seen
    assert seen["embeddings fault wrong_dimension"] == 1, seen
    assert not any(name.startswith("forbidden edge") for name in seen), seen

"""A worker that pauses past its lease just before its embeddings call wastes one batch.

The story the search found on the unmodified pipeline (issue 13): w1 renews its lease
and parks right before it sends a batch to the embeddings service; the pause outlasts
the lease; w2 takes the job over, embeds the same batch and commits it; then w1's
request goes out. No worker can rule this out: a pause can fall between its last lease
check and its request. What the pipeline guarantees instead, and the checker holds it
to: the zombie commits nothing (fencing); the take-over settles the zombie's call at
its estimate, and its late answer corrects it (billing); the waste is that one batch,
counted against the take-over (cost). A worker that still holds its job never pays for
a committed chunk again.
"""

from __future__ import annotations

from collections import Counter

from pipeline_models.documents import markdown_document
from pipeline_models.drivers import CHECK_CONFIG, ReferenceDriver
from pipeline_models.lifecycle import Stage
from pipeline_models.machines import ALICE, PipelineMachine
from pipeline_models.pipeline.checkpoints import Checkpoint
from pipeline_models.scheduler import Outcome
from pipeline_models.snapshot import BilledCallRow

DOCUMENT = markdown_document(
    "# Zombie\n\n"
    + "\n\n".join(f"Paragraph {n} about embeddings and leases, long enough." for n in range(8))
)


def embeddings_calls_by(machine: PipelineMachine, caller: str) -> list[BilledCallRow]:
    snapshot = machine._run(machine.driver.snapshot())
    return [c for c in snapshot.billed_calls if c.service == "embeddings" and c.caller == caller]


def _run_to_embedding(machine: PipelineMachine) -> None:
    """w1 takes the document through whole steps until its job waits at embedding."""
    for _ in range(20):
        [job] = machine._run(machine.driver.snapshot()).jobs.values()
        if job.stage is Stage.EMBEDDING:
            return
        machine.run_whole_steps(worker="w1", steps=1)
        machine.database_agrees_with_the_model()
        machine.deliver_parser_webhooks()
        machine.database_agrees_with_the_model()
    raise AssertionError("the document never reached embedding")


def test_a_worker_paused_past_its_lease_before_its_call_wastes_one_batch_and_commits_nothing() -> (
    None
):
    machine = PipelineMachine()
    try:
        driver = machine.driver
        assert isinstance(driver, ReferenceDriver)
        machine.upload_document(user=ALICE, document=DOCUMENT)
        machine.database_agrees_with_the_model()
        _run_to_embedding(machine)
        report = machine._step("w1")  # claims
        assert report is not None
        assert report.checkpoint is Checkpoint.CLAIMED
        machine.database_agrees_with_the_model()
        report = machine._step("w1")  # renews its lease, parks just before the request
        assert report is not None
        assert report.checkpoint is Checkpoint.BEFORE_CALL
        machine.database_agrees_with_the_model()
        machine.advance_clock(seconds=61)  # the pause outlasts the lease
        machine.database_agrees_with_the_model()
        machine.run_whole_steps(worker="w2", steps=1)  # takes over, embeds, commits
        machine.database_agrees_with_the_model()
        [taken_over] = embeddings_calls_by(machine, "w1")
        assert taken_over.outcome == "unconfirmed"  # settled at its estimate by the take-over
        late = machine._step("w1")  # the request goes out now
        machine.database_agrees_with_the_model()
        assert late is not None
        assert late.checkpoint is Checkpoint.AFTER_CALL
        finished = machine._step("w1")  # and its commit is fenced off
        machine.database_agrees_with_the_model()
        assert finished is not None
        assert finished.outcome is Outcome.FINISHED
        assert finished.result is not None
        assert finished.result.action.value == "lease_lost"

        assert driver.pipeline is not None
        assert driver.pipeline.fakes is not None
        [texts] = driver.pipeline.fakes.embeddings.texts_by_user.values()
        repeated = [text for text, sent in Counter(texts).items() if sent > 1]
        assert len(repeated) == CHECK_CONFIG.embed_batch_size  # one batch, paid twice
        [late_call] = embeddings_calls_by(machine, "w1")
        assert late_call.outcome == "billed"  # its late answer corrected the estimate
    finally:
        machine.teardown()  # the drain: every document still ends as the model predicts

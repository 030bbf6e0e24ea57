"""A forged webhook needs no genuine delivery to have succeeded first.

An attacker copies any webhook it has seen, queued or delivered. The forgery rule used
to copy only delivered ones, so in a program where no delivery had succeeded yet it
sent nothing, and a pipeline that skipped the signature check survived CI's
derandomized round (issue 13). The forgery is sent once, outside the parser's outbox:
the genuine webhook stays queued and is still delivered afterwards.
"""

from __future__ import annotations

import pytest

from pipeline_models.documents import markdown_document
from pipeline_models.drivers import ReferenceDriver, WebhookKind
from pipeline_models.machines import ALICE, FORGERIES, STATISTICS, PipelineMachine


@pytest.mark.parametrize("kind", [WebhookKind.TAMPERED, WebhookKind.STALE])
def test_a_forgery_of_a_queued_webhook_is_sent_rejected_and_leaves_the_genuine_one(
    kind: WebhookKind,
) -> None:
    machine = PipelineMachine()
    try:
        driver = machine.driver
        assert isinstance(driver, ReferenceDriver)
        fakes = driver._pipeline.fakes
        assert fakes is not None
        machine.upload_document(user=ALICE, document=markdown_document("# Forged\n\n" + "w " * 40))
        machine.database_agrees_with_the_model()
        for _ in range(10):
            if fakes.parser.outbox:
                break
            machine.run_whole_steps(worker="w1", steps=1)
            machine.database_agrees_with_the_model()
        queued = list(fakes.parser.outbox)
        assert queued, "no webhook queued"
        assert not fakes.parser.delivered

        before = STATISTICS.events.copy()
        machine.deliver_a_forged_webhook(kind=kind)  # asserts the API answered 401
        assert (STATISTICS.events - before)[f"webhook {kind} 401"] == 1
        assert fakes.parser.outbox == queued
        assert not fakes.parser.delivered

        machine.deliver_parser_webhooks()  # the genuine one is still delivered
        machine.database_agrees_with_the_model()
        assert [d.body for d in fakes.parser.delivered] == [d.body for d in queued]
    finally:
        machine.teardown()


@pytest.mark.parametrize("kind", FORGERIES, ids=str)
def test_every_forgery_is_refused(kind: WebhookKind) -> None:
    """Each way of forging a webhook (a changed body, a timestamp out of the window either
    way, each broken signature header) reaches the API and is refused (401)."""
    machine = PipelineMachine()
    try:
        driver = machine.driver
        assert isinstance(driver, ReferenceDriver)
        fakes = driver._pipeline.fakes
        assert fakes is not None
        machine.upload_document(user=ALICE, document=markdown_document("# Forged\n\n" + "w " * 40))
        for _ in range(10):
            if fakes.parser.outbox:
                break
            machine.run_whole_steps(worker="w1", steps=1)
        assert fakes.parser.outbox, "no webhook queued"
        before = STATISTICS.events.copy()
        machine.deliver_a_forged_webhook(kind=kind)  # asserts the API answered 401
        assert (STATISTICS.events - before)[f"webhook {kind} 401"] == 1
        machine.database_agrees_with_the_model()
    finally:
        machine.teardown()

"""The fake parser's signed webhooks, delivered to a receiver that verifies them.

In process the receiver is a small Starlette app behind httpx.ASGITransport; once, both
the served fake parser and the receiver listen on loopback sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline_models.clock import Clock, ManualClock, SystemClock
from pipeline_models.fakes import (
    DeliveryResult,
    WebhookDelivery,
    create_parser_app,
    parser_http_client,
    served_fakes,
)
from pipeline_models.pipeline.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    ParserWebhook,
    Rejection,
    WebhookRejected,
    WebhookSecrets,
    verify,
)

pytestmark = pytest.mark.anyio

UPLOAD = "/api/v1/parsing/upload"
HOOK_URL = "http://api.test/hooks/parser"
SECRETS = WebhookSecrets(("whsec-new", "whsec-old"))


class Receiver:
    """The receiving end: verifies each webhook as the pipeline's API must.

    ``script`` holds status codes to answer, in order, before behaving normally.
    ``fetch_from``, when set, is a client of the parser: on a SUCCESS webhook the
    receiver fetches the result there before answering, as a real receiver would.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        secrets: WebhookSecrets = SECRETS,
        script: list[int] | None = None,
        fetch_from: httpx.AsyncClient | None = None,
    ) -> None:
        self.clock = clock
        self.secrets = secrets
        self.script = list(script or [])
        self.fetch_from = fetch_from
        self.accepted: list[ParserWebhook] = []
        self.rejected: list[Rejection] = []
        self.results: list[int] = []
        self.app = Starlette(routes=[Route("/hooks/parser", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        if self.script:
            return JSONResponse({"detail": "scripted"}, status_code=self.script.pop(0))
        body = await request.body()
        try:
            verify(request.headers, body, secrets=self.secrets, now=self.clock.now())
            webhook = ParserWebhook.from_json(body)
        except WebhookRejected as rejected:
            self.rejected.append(rejected.code)
            return JSONResponse({"detail": rejected.reason}, status_code=401)
        if self.fetch_from is not None and webhook.status == "SUCCESS":
            result = await self.fetch_from.get(
                f"/api/v1/parsing/job/{webhook.job_id}/result/markdown"
            )
            self.results.append(result.status_code)
        self.accepted.append(webhook)
        return JSONResponse({"accepted": webhook.job_id})

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app))


async def upload(client: httpx.AsyncClient, data: bytes = b"# A", **form: str) -> str:
    response = await client.post(UPLOAD, files={"file": ("a.md", data)}, data=form)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def test_an_upload_with_a_webhook_url_queues_one_signed_delivery_and_one_without_none(
    clock: ManualClock,
) -> None:
    app = create_parser_app(webhook_secrets=SECRETS, clock=clock)
    fake = app.state.fake
    async with parser_http_client(app) as client:
        await upload(client)
        assert fake.outbox == []
        succeeded = await upload(client, webhook_url=HOOK_URL)
        failed = await upload(client, b"\x00binary", webhook_url=HOOK_URL)
    good, bad = fake.outbox
    assert (good.url, good.attempts, good.headers["Content-Type"]) == (
        HOOK_URL,
        0,
        "application/json",
    )
    assert good.webhook == ParserWebhook(job_id=succeeded, status="SUCCESS")
    assert bad.webhook.job_id == failed
    assert bad.webhook.status == "ERROR"
    assert bad.webhook.error_message == fake.jobs[failed].error_message
    signed_at = int(clock.now().timestamp())
    for delivery in (good, bad):
        assert verify(delivery.headers, delivery.body, secrets=SECRETS, now=clock.now()) == (
            signed_at
        )
        # Signed with both secrets, so a receiver that knows only one accepts it.
        assert delivery.headers[SIGNATURE_HEADER].count("v1=") == 2
        verify(delivery.headers, delivery.body, secrets=["whsec-old"], now=clock.now())
    assert fake.stats()["webhooks"] == {"queued": 2, "delivered": 0, "attempts": 0}


async def test_a_queued_webhook_is_delivered_to_a_receiver_that_verifies_it(
    clock: ManualClock,
) -> None:
    receiver = Receiver(clock)
    async with receiver.client() as hooks:
        app = create_parser_app(webhook_secrets=SECRETS, webhook_client=hooks, clock=clock)
        fake = app.state.fake
        async with parser_http_client(app) as client:
            job_id = await upload(client, webhook_url=HOOK_URL)
        delivery = fake.outbox[0]
        results = await fake.deliver_webhooks()
        assert await fake.deliver_webhooks() == []
    assert results == [DeliveryResult(delivery, attempt=1, status_code=200)]
    assert results[0].delivered
    assert not results[0].retryable
    assert receiver.accepted == [ParserWebhook(job_id=job_id, status="SUCCESS")]
    assert (fake.outbox, fake.delivered, fake.delivery_results) == ([], [delivery], results)


async def test_a_503_keeps_the_delivery_queued_with_its_attempts_counted_until_a_retry_lands(
    clock: ManualClock,
) -> None:
    receiver = Receiver(clock, script=[503, 503])
    async with receiver.client() as hooks:
        app = create_parser_app(webhook_secrets=SECRETS, webhook_client=hooks, clock=clock)
        fake = app.state.fake
        async with parser_http_client(app) as client:
            await upload(client, webhook_url=HOOK_URL)
        delivery = fake.outbox[0]
        first = await fake.deliver_webhooks()
        second = await fake.deliver_webhooks()
        assert (fake.outbox, delivery.attempts, receiver.accepted) == ([delivery], 2, [])
        clock.advance(60)  # a later retry, still inside the receiver's window
        third = await fake.deliver_webhooks()
    assert [r.status_code for r in first + second + third] == [503, 503, 200]
    assert [r.attempt for r in first + second + third] == [1, 2, 3]
    assert first[0].retryable
    assert third[0].delivered
    assert (fake.outbox, fake.delivered, delivery.attempts) == ([], [delivery], 3)
    assert len(receiver.accepted) == 1


async def test_a_transport_error_is_recorded_and_the_delivery_stays_queued(
    clock: ManualClock,
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as hooks:
        app = create_parser_app(webhook_secrets=SECRETS, webhook_client=hooks, clock=clock)
        fake = app.state.fake
        async with parser_http_client(app) as client:
            await upload(client, webhook_url=HOOK_URL)
        [result] = await fake.deliver_webhooks()
    assert (result.status_code, result.error) == (None, "ConnectError: connection refused")
    assert result.retryable
    assert fake.outbox == [result.delivery]
    assert fake.delivered == []


async def test_a_receiver_that_raises_in_process_is_an_attempt_without_an_answer(
    clock: ManualClock,
) -> None:
    async def crash(request: Request) -> Response:
        raise RuntimeError("receiver bug")

    broken = Starlette(routes=[Route("/hooks/parser", crash, methods=["POST"])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=broken)) as hooks:
        app = create_parser_app(webhook_secrets=SECRETS, webhook_client=hooks, clock=clock)
        async with parser_http_client(app) as client:
            await upload(client, webhook_url=HOOK_URL)
        [result] = await app.state.fake.deliver_webhooks()
    assert result.error == "RuntimeError: receiver bug"
    assert app.state.fake.outbox == [result.delivery]


async def test_a_retry_resends_the_original_signature_so_a_late_one_is_rejected_as_stale(
    clock: ManualClock,
) -> None:
    receiver = Receiver(clock, script=[503])
    async with receiver.client() as hooks:
        app = create_parser_app(webhook_secrets=SECRETS, webhook_client=hooks, clock=clock)
        fake = app.state.fake
        async with parser_http_client(app) as client:
            await upload(client, webhook_url=HOOK_URL)
        await fake.deliver_webhooks()
        clock.advance(301)
        [late] = await fake.deliver_webhooks()
    # The receiver's 401 is final: no retry would make the same bytes fresh again.
    assert (late.status_code, late.retryable) == (401, False)
    assert receiver.rejected == [Rejection.STALE_TIMESTAMP]
    assert (fake.outbox, fake.delivered) == ([], [late.delivery])


async def test_a_delivered_webhook_can_be_delivered_twice(clock: ManualClock) -> None:
    receiver = Receiver(clock)
    async with receiver.client() as hooks:
        app = create_parser_app(webhook_secrets=SECRETS, webhook_client=hooks, clock=clock)
        fake = app.state.fake
        async with parser_http_client(app) as client:
            job_id = await upload(client, webhook_url=HOOK_URL)
        [first] = await fake.deliver_webhooks()
        again = await fake.redeliver(fake.delivered[0])
    assert (first.status_code, again.status_code, again.attempt) == (200, 200, 2)
    assert receiver.accepted == [ParserWebhook(job_id=job_id, status="SUCCESS")] * 2
    assert fake.delivered == [first.delivery]  # one delivery, sent twice
    assert fake.delivery_results == [first, again]
    assert fake.stats()["webhooks"] == {"queued": 0, "delivered": 1, "attempts": 2}


async def test_a_tampered_copy_of_a_delivery_is_rejected_by_the_receiver(
    clock: ManualClock,
) -> None:
    receiver = Receiver(clock)
    async with receiver.client() as hooks:
        app = create_parser_app(webhook_secrets=SECRETS, webhook_client=hooks, clock=clock)
        fake = app.state.fake
        async with parser_http_client(app) as client:
            await upload(client, b"\x00binary", webhook_url=HOOK_URL)
        original = fake.outbox[0]
        forged_body = ParserWebhook(job_id=original.webhook.job_id, status="SUCCESS").to_json()
        forged = dataclasses.replace(original, body=forged_body, attempts=0)
        result = await fake.redeliver(forged)
    assert (result.status_code, receiver.rejected) == (401, [Rejection.SIGNATURE_MISMATCH])
    assert fake.outbox == [original]  # the genuine one is still due


async def test_without_secrets_a_webhook_carries_no_signature_and_is_rejected(
    clock: ManualClock,
) -> None:
    receiver = Receiver(clock)
    async with receiver.client() as hooks:
        app = create_parser_app(webhook_client=hooks, clock=clock)
        async with parser_http_client(app) as client:
            await upload(client, webhook_url=HOOK_URL)
        delivery = app.state.fake.outbox[0]
        [result] = await app.state.fake.deliver_webhooks()
    assert TIMESTAMP_HEADER in delivery.headers
    assert SIGNATURE_HEADER not in delivery.headers
    assert (result.status_code, receiver.rejected) == (401, [Rejection.MISSING_HEADER])


async def test_auto_delivery_completes_before_an_in_process_upload_returns(
    clock: ManualClock,
) -> None:
    receiver = Receiver(clock)
    async with receiver.client() as hooks:
        app = create_parser_app(
            webhook_secrets=SECRETS,
            webhook_client=hooks,
            auto_deliver_webhooks=True,
            clock=clock,
            pending_polls=3,
        )
        async with parser_http_client(app) as client:
            receiver.fetch_from = client
            job_id = await upload(client, webhook_url=HOOK_URL)
            assert receiver.accepted == [ParserWebhook(job_id=job_id, status="SUCCESS")]
            await upload(client)  # no webhook_url: nothing to deliver
            status = (await client.get(f"/api/v1/parsing/job/{job_id}")).json()["status"]
    fake = app.state.fake
    assert (fake.outbox, len(fake.delivered), len(fake.delivery_results)) == ([], 1, 1)
    # The job was done for the receiver that fetched its result on the webhook, and is
    # done for pollers from then on, though none of its three pending polls was used.
    assert receiver.results == [200]
    assert (status, fake.jobs[job_id].polls) == ("SUCCESS", 0)


async def test_a_failed_auto_delivery_stays_queued_for_deliver_webhooks(
    clock: ManualClock,
) -> None:
    receiver = Receiver(clock, script=[502])
    async with receiver.client() as hooks:
        app = create_parser_app(
            webhook_secrets=SECRETS, webhook_client=hooks, auto_deliver_webhooks=True, clock=clock
        )
        fake = app.state.fake
        async with parser_http_client(app) as client:
            await upload(client, webhook_url=HOOK_URL)
        assert [r.status_code for r in fake.delivery_results] == [502]
        assert len(fake.outbox) == 1
        [retry] = await fake.deliver_webhooks()
    assert (retry.status_code, retry.attempt, fake.outbox) == (200, 2, [])


async def test_a_delivery_in_flight_is_not_sent_again_by_a_concurrent_batch(
    clock: ManualClock,
) -> None:
    app_holder: list[Starlette] = []
    nested: list[list[DeliveryResult]] = []

    async def hook(request: Request) -> Response:
        # While this delivery awaits its answer, another batch starts.
        nested.append(await app_holder[0].state.fake.deliver_webhooks())
        return Response(status_code=204)

    receiver = Starlette(routes=[Route("/hooks/parser", hook, methods=["POST"])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=receiver)) as hooks:
        app = create_parser_app(webhook_secrets=SECRETS, webhook_client=hooks, clock=clock)
        app_holder.append(app)
        async with parser_http_client(app) as client:
            await upload(client, webhook_url=HOOK_URL)
        [result] = await app.state.fake.deliver_webhooks()
    assert (nested, result.status_code, result.delivery.attempts) == ([[]], 204, 1)


async def test_the_admin_endpoint_delivers_the_queue_and_stats_count_it(
    clock: ManualClock,
) -> None:
    receiver = Receiver(clock)
    async with receiver.client() as hooks:
        app = create_parser_app(
            webhook_secrets=SECRETS, webhook_client=hooks, clock=clock, api_key="k"
        )
        async with parser_http_client(app, headers={"Authorization": "Bearer k"}) as client:
            await upload(client, webhook_url=HOOK_URL)
            async with parser_http_client(app) as admin:  # admin routes need no key
                response = await admin.post("/_fake/webhooks/deliver")
                stats = (await admin.get("/_fake/stats")).json()
    assert response.status_code == 200
    assert response.json() == {
        "results": [
            {
                "url": HOOK_URL,
                "attempt": 1,
                "status_code": 200,
                "error": None,
                "delivered": True,
                "retryable": False,
            }
        ]
    }
    assert stats["webhooks"] == {"queued": 0, "delivered": 1, "attempts": 1}
    assert "upload" in stats["requests"]
    assert "fake_webhooks" not in stats["requests"]


@pytest.mark.parametrize("url", ["not a url", "/hooks/parser", "ftp://api.test/hook", "http://"])
async def test_a_webhook_url_that_is_not_an_absolute_http_url_is_a_400(url: str) -> None:
    app = create_parser_app()
    async with parser_http_client(app) as client:
        response = await client.post(
            UPLOAD, files={"file": ("a.md", b"# A")}, data={"webhook_url": url}
        )
    assert response.status_code == 400
    assert "absolute http(s) URL" in response.json()["detail"]
    assert app.state.fake.uploads == 0


async def test_an_empty_webhook_url_means_no_webhook() -> None:
    app = create_parser_app(webhook_secrets=["k"])
    async with parser_http_client(app) as client:
        job_id = await upload(client, webhook_url="")
    assert app.state.fake.jobs[job_id].webhook_url is None
    assert app.state.fake.outbox == []


def test_webhook_options_are_checked_when_the_app_is_built() -> None:
    with pytest.raises(TypeError, match="not a single string"):
        create_parser_app(webhook_secrets="whsec-new,whsec-old")
    with pytest.raises(ValueError, match="secret #2 is empty"):
        create_parser_app(webhook_secrets=["whsec-new", ""])
    with pytest.raises(TypeError, match="auto_deliver_webhooks must be a bool"):
        create_parser_app(auto_deliver_webhooks="yes")  # type: ignore[arg-type]
    fake = create_parser_app(webhook_secrets=["whsec-new"]).state.fake
    assert "whsec-new" not in repr(fake.webhook_secrets)
    job = fake.submit(b"# A", filename="a.md", webhook_url=None)
    with pytest.raises(ValueError, match="without a webhook_url"):
        fake.webhook_for(job)


class _Server(uvicorn.Server):
    # The test's event loop owns the signals; uvicorn must not install its own handlers.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve_on_loopback(app: Starlette) -> AsyncIterator[str]:
    sock = socket.create_server(("127.0.0.1", 0))
    options: dict[str, Any] = {"lifespan": "off", "log_config": None, "http": "h11", "ws": "none"}
    server = _Server(uvicorn.Config(app, **options))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="serve-webhook-receiver")
    try:
        while not server.started:
            assert not task.done(), "the receiver stopped during startup"
            await asyncio.sleep(0.005)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def test_served_fakes_deliver_signed_webhooks_over_loopback_sockets() -> None:
    # The served parser signs with the system clock, so the receiver verifies with it.
    receiver = Receiver(SystemClock())
    async with (
        serve_on_loopback(receiver.app) as receiver_url,
        served_fakes(webhook_secrets=SECRETS, auto_deliver_webhooks=True) as endpoints,
        httpx.AsyncClient(base_url=endpoints.parser) as client,
    ):
        job_id = await upload(client, webhook_url=f"{receiver_url}/hooks/parser")
        # Over sockets the response comes first; the background delivery follows, and
        # the fake books it once the receiver's answer is back.
        fake = endpoints.parser_app.state.fake
        async with asyncio.timeout(10):
            while not fake.delivery_results:
                await asyncio.sleep(0.01)
        stats = (await client.get("/_fake/stats")).json()
    assert receiver.accepted == [ParserWebhook(job_id=job_id, status="SUCCESS")]
    assert receiver.rejected == []
    assert stats["webhooks"] == {"queued": 0, "delivered": 1, "attempts": 1}


def test_two_deliveries_of_the_same_bytes_are_two_deliveries() -> None:
    headers = {"Content-Type": "application/json"}
    delivery = WebhookDelivery(url=HOOK_URL, headers=headers, body=b"{}")
    assert (delivery.url, delivery.body, delivery.attempts) == (HOOK_URL, b"{}", 0)
    assert delivery == delivery
    assert delivery != WebhookDelivery(url=HOOK_URL, headers=dict(headers), body=b"{}")

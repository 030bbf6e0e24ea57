"""A fake LlamaParse (v1 REST subset) as an ASGI app: deterministic, with fault injection.

Endpoints (fault endpoint names in brackets):

- ``POST /api/v1/parsing/upload`` [upload]: multipart field ``file`` (and an optional
  form field ``webhook_url``, an absolute http(s) URL) -> ``{"id", "status": "PENDING"}``.
  The file is parsed at once (:func:`~pipeline_models.fakes.parsing.parse_document`).
- ``GET /api/v1/parsing/job/{id}`` [status] -> ``{"id", "status"}``, plus
  ``"error_message"`` when the status is ``ERROR``. The first ``pending_polls`` polls of
  each job answer ``PENDING``; a poll answered by a fault does not count.
- ``GET /api/v1/parsing/job/{id}/result/markdown`` [result] ->
  ``{"markdown", "job_metadata": {"job_pages", "credits_used"}}``.
- ``GET /api/v1/parsing/job/{id}/result/raw/markdown`` [result] -> the markdown as
  ``text/markdown; charset=utf-8``, streamed in 64 KiB pieces.

A result asked for before the job is done, or of a failed job, is a 400; an unknown job
is a 404; a missing or wrong bearer token (when ``api_key`` is set) is a 401; a file
over ``max_file_bytes`` is a 413. Errors are ``{"detail": message}`` as in LlamaParse.
Pages are billed at upload, once per successfully parsed job (one credit a page).

Webhooks. A job uploaded with a ``webhook_url`` is finished at submission, so its
webhook is due at once: the upload queues a :class:`WebhookDelivery` in
``fake.outbox``, a POST of a :class:`~pipeline_models.pipeline.webhooks.ParserWebhook`
signed with every secret in ``webhook_secrets`` at the app's clock's time (see
:mod:`pipeline_models.pipeline.webhooks`). Nothing is sent until asked:

- ``await fake.deliver_webhooks()`` (or ``POST /_fake/webhooks/deliver``) sends every
  queued delivery once. An answer of 2xx, or a 4xx other than 408 and 429, is final and
  moves the delivery to ``fake.delivered``; a 5xx, 408, 429, transport error or an
  exception raised by an in-process receiver leaves it queued for the next call, its
  ``attempts`` counted. Every attempt is in ``fake.delivery_results``.
- ``await fake.redeliver(delivery)`` sends one delivery once more, whatever its state:
  a duplicate of a delivered one, or one the test built (tampered, stale).
- With ``auto_deliver_webhooks=True`` the upload's own delivery is attempted once in a
  Starlette background task, after the upload response has been sent. In process
  (``httpx.ASGITransport`` runs the app to the end) the upload call returns only after
  that attempt; over sockets the client may see the response first. A failed
  background attempt stays queued for :meth:`ParserFake.deliver_webhooks`.

Retries resend the delivery's bytes as signed at submission, so a delivery that waits
past the receiver's tolerance is rejected as stale, exactly as a replay would be.
A poller sees a job as done once its webhook has been sent (``pending_polls`` only
delays pollers): a receiver that fetches the result on the webhook must find it.

>>> app = create_parser_app(pending_polls=1, api_key="secret")
>>> app.state.fake.uploads
0
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pipeline_models.clock import Clock, SystemClock
from pipeline_models.fakes.faults import (
    FakeService,
    FakeServiceApp,
    Fault,
    FaultKind,
    FaultPlan,
    retry_after_header,
)
from pipeline_models.fakes.parsing import ParsedDocument, ParseFailure, parse_document
from pipeline_models.pipeline.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    ParserWebhook,
    WebhookRejected,
    WebhookSecrets,
    sign,
)

PARSER_JOB_NAMESPACE = uuid.UUID("2f0c7d1e-5b8a-4f43-9a51-6a0d1f3c8e27")
"""uuid5 namespace of parser job ids: ``uuid5(ns, f"{sha256}:{submission}")``."""

RAW_CHUNK_BYTES = 64 * 1024
"""The raw markdown endpoint streams the body in pieces of this size."""

WEBHOOK_TIMEOUT_SECONDS = 10.0
"""Timeout of the httpx client the fake builds when it is given none to deliver with."""

JobStatus = Literal["PENDING", "SUCCESS", "ERROR"]

logger = logging.getLogger("pipeline_models.fakes")


@dataclass
class ParserJob:
    """One submitted file and what the parser made of it."""

    id: str
    filename: str
    sha256: str
    size: int
    submission: int
    webhook_url: str | None
    result: ParsedDocument | None
    error_message: str | None
    pending_polls: int
    polls: int = 0
    announced: bool = False

    @property
    def done(self) -> bool:
        """Whether the job has answered all its PENDING polls, or sent its webhook."""
        return self.announced or self.polls >= self.pending_polls

    @property
    def status(self) -> JobStatus:
        """What the next status poll would report (without counting as a poll)."""
        if not self.done:
            return "PENDING"
        return "SUCCESS" if self.result is not None else "ERROR"

    def to_json(self) -> dict[str, Any]:
        """The status endpoint's answer for this job."""
        body: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.status == "ERROR":
            body["error_message"] = self.error_message
        return body


# Identity, not value: the same bytes queued for two jobs, or sent twice, are two things.
@dataclass(eq=False)
class WebhookDelivery:
    """One signed webhook POST: where it goes, its headers and body, and how many times
    it has been sent. ``headers`` hold the signature headers and the content type.

    >>> fake = create_parser_app(webhook_secrets=["k"]).state.fake
    >>> job = fake.submit(b"# A", filename="a.md", webhook_url="http://api.test/hook")
    >>> delivery = fake.outbox[0]
    >>> delivery.url, delivery.webhook.job_id == job.id, delivery.attempts
    ('http://api.test/hook', True, 0)
    """

    url: str
    headers: dict[str, str]
    body: bytes
    attempts: int = 0

    @property
    def webhook(self) -> ParserWebhook:
        """The payload, read back (:class:`WebhookRejected` if the body was tampered with
        beyond reading)."""
        return ParserWebhook.from_json(self.body)

    def forged(self, how: Forgery, *, secret: str, now: float) -> WebhookDelivery:
        """What an attacker makes of this genuine delivery: its body changed after
        signing (``tampered``), or signed again with ``secret`` 301 s before ``now`` (unix
        seconds), outside the receiver's replay window (``stale``), or as far ahead
        (``future``); or its headers broken: the signature or the timestamp left out
        (``unsigned``, ``undated``), a timestamp that is no number (``bad_timestamp``), a
        signature entry with no ``=`` (``bad_signature``), a v1 entry that is not hex
        (``not_hex``), or only entries of another scheme (``other_scheme``). A forgery
        needs no delivery to have succeeded first."""
        if how == "tampered":
            return replace(self, body=self.body + b" ", attempts=0)
        if how in ("stale", "future"):
            at = int(now) + (301 if how == "future" else -301)
            headers = {**self.headers, **sign(self.body, secrets=(secret,), timestamp=at)}
            return replace(self, headers=headers, attempts=0)
        broken = {
            "unsigned": (SIGNATURE_HEADER, None),
            "undated": (TIMESTAMP_HEADER, None),
            "bad_timestamp": (TIMESTAMP_HEADER, "soon"),
            "bad_signature": (SIGNATURE_HEADER, "v1"),
            "not_hex": (SIGNATURE_HEADER, "v1=" + "z" * 64),
            "other_scheme": (SIGNATURE_HEADER, "v0=" + "0" * 64),
        }
        name, value = broken[how]
        headers = {k: v for k, v in self.headers.items() if k.lower() != name.lower()}
        if value is not None:
            headers[name] = value
        return replace(self, headers=headers, attempts=0)


Forgery = Literal[
    "tampered",
    "stale",
    "future",
    "unsigned",
    "undated",
    "bad_timestamp",
    "bad_signature",
    "not_hex",
    "other_scheme",
]


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one attempt to send a :class:`WebhookDelivery`: the receiver's
    status code, or the error (``"ConnectError: ..."``) when there was no answer."""

    delivery: WebhookDelivery
    attempt: int
    """1 for a delivery's first attempt, 2 for its second, ..."""
    status_code: int | None = None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        """The receiver accepted the webhook (2xx)."""
        return self.status_code is not None and 200 <= self.status_code <= 299

    @property
    def retryable(self) -> bool:
        """No final answer: no response, a 5xx, a 408 or a 429. The delivery stays queued."""
        if self.status_code is None:
            return True
        return self.status_code >= 500 or self.status_code in (408, 429)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (``POST /_fake/webhooks/deliver`` answers a list of them)."""
        return {
            "url": self.delivery.url,
            "attempt": self.attempt,
            "status_code": self.status_code,
            "error": self.error,
            "delivered": self.delivered,
            "retryable": self.retryable,
        }


AUTO_RETRY_ATTEMPTS = 10
"""Attempts an auto-delivered webhook gets before the fake gives up on it."""
AUTO_RETRY_FIRST_DELAY = 0.05
AUTO_RETRY_MAX_DELAY = 2.0


def _worth_retrying(result: DeliveryResult) -> bool:
    # 404: the receiver does not know the job yet (it raced the submitter's commit).
    return result.retryable or result.status_code == 404


class ParserFake(FakeService):
    """The parser's state, at ``app.state.fake``: jobs, counters, the fault plan and the
    webhooks (``outbox`` queued, ``delivered`` answered finally, ``delivery_results``
    every attempt). See the module docstring for delivery."""

    name = "parser"

    def __init__(
        self,
        *,
        faults: FaultPlan | None,
        pending_polls: int,
        webhook_secrets: WebhookSecrets | None = None,
        webhook_client: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(faults)
        self.pending_polls = pending_polls
        self.jobs: dict[str, ParserJob] = {}
        self.uploads = 0
        self.pages_billed = 0
        self.webhook_secrets = webhook_secrets
        self.webhook_client = webhook_client
        self.clock: Clock = SystemClock() if clock is None else clock
        self.outbox: list[WebhookDelivery] = []
        self.delivered: list[WebhookDelivery] = []
        self.delivery_results: list[DeliveryResult] = []
        # Sends awaiting their answer, by id() of the delivery (a duplicate delivery may
        # be in flight twice): a deliver_webhooks() call that runs meanwhile, say while a
        # background delivery is out, must not send those again.
        self._in_flight: Counter[int] = Counter()
        self._background: set[asyncio.Task[None]] = set()

    def submit(self, data: bytes, *, filename: str, webhook_url: str | None) -> ParserJob:
        """Create a job for ``data``, parsing it now; the id is deterministic."""
        self.uploads += 1
        sha256 = hashlib.sha256(data).hexdigest()
        job_id = str(uuid.uuid5(PARSER_JOB_NAMESPACE, f"{sha256}:{self.uploads}"))
        try:
            result: ParsedDocument | None = parse_document(data, filename=filename)
            error_message = None
        except ParseFailure as failure:
            result, error_message = None, failure.reason
        if result is not None:
            self.pages_billed += result.pages
        job = ParserJob(
            id=job_id,
            filename=filename,
            sha256=sha256,
            size=len(data),
            submission=self.uploads,
            webhook_url=webhook_url,
            result=result,
            error_message=error_message,
            pending_polls=self.pending_polls,
        )
        self.jobs[job_id] = job
        if webhook_url is not None:
            self.outbox.append(self.webhook_for(job))
        return job

    def webhook_for(self, job: ParserJob) -> WebhookDelivery:
        """Build (not queue) the delivery announcing ``job``'s outcome to its webhook URL,
        signed with every webhook secret at the clock's current second. Without secrets
        it carries only the timestamp, and a verifying receiver rejects it.

        >>> fake = create_parser_app(webhook_secrets=["k"]).state.fake
        >>> job = fake.submit(b"\\x00", filename="blob.bin", webhook_url="http://api.test/h")
        >>> fake.webhook_for(job).webhook.status
        'ERROR'
        """
        if job.webhook_url is None:
            raise ValueError(f"parser job {job.id} was uploaded without a webhook_url")
        if job.result is not None:
            payload = ParserWebhook(job_id=job.id, status="SUCCESS")
        else:
            payload = ParserWebhook(job_id=job.id, status="ERROR", error_message=job.error_message)
        body = payload.to_json()
        timestamp = int(self.clock.now().timestamp())
        headers = {"Content-Type": "application/json"}
        if self.webhook_secrets is not None:
            headers.update(sign(body, secrets=self.webhook_secrets, timestamp=timestamp))
        else:
            headers[TIMESTAMP_HEADER] = str(timestamp)
        return WebhookDelivery(url=job.webhook_url, headers=headers, body=body)

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[httpx.AsyncClient]:
        if self.webhook_client is not None:
            yield self.webhook_client
            return
        async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_SECONDS) as client:
            yield client

    def _announce(self, delivery: WebhookDelivery) -> None:
        # From the moment a webhook goes out, pollers must agree with it: a receiver that
        # fetches the result on the webhook must not be told the job is still PENDING.
        with contextlib.suppress(WebhookRejected):
            job = self.jobs.get(delivery.webhook.job_id)
            if job is not None:
                job.announced = True

    async def _attempt(
        self, delivery: WebhookDelivery, client: httpx.AsyncClient, *, keep_not_found: bool = False
    ) -> DeliveryResult:
        delivery.attempts += 1
        attempt = delivery.attempts
        self._announce(delivery)
        self._in_flight[id(delivery)] += 1
        try:
            response = await client.post(
                delivery.url, content=delivery.body, headers=delivery.headers
            )
        except httpx.TransportError as error:
            result = DeliveryResult(delivery, attempt, error=f"{type(error).__name__}: {error}")
        except Exception as error:
            # An in-process receiver (ASGITransport) raises its own exceptions; a real
            # sender would have seen a 500, so the delivery stays queued, but say why.
            logger.warning("webhook receiver at %s raised", delivery.url, exc_info=True)
            result = DeliveryResult(delivery, attempt, error=f"{type(error).__name__}: {error}")
        else:
            result = DeliveryResult(delivery, attempt, status_code=response.status_code)
        finally:
            self._in_flight[id(delivery)] -= 1
            if not self._in_flight[id(delivery)]:
                del self._in_flight[id(delivery)]
        self.delivery_results.append(result)
        logger.info(
            "webhook delivery to %s, attempt %d: %s",
            delivery.url,
            attempt,
            result.error or result.status_code,
        )
        if not result.retryable and not (keep_not_found and result.status_code == 404):
            self.outbox = [queued for queued in self.outbox if queued is not delivery]
            if not any(done is delivery for done in self.delivered):
                self.delivered.append(delivery)
        return result

    async def deliver_webhooks(self) -> list[DeliveryResult]:
        """Send every queued delivery once, in order; the outcome of each attempt.

        Final answers leave the outbox; deliveries without one stay queued. Uses
        ``webhook_client`` (from :func:`create_parser_app`), else a fresh
        ``httpx.AsyncClient``.
        """
        due = [queued for queued in self.outbox if id(queued) not in self._in_flight]
        if not due:
            return []
        async with self._client() as client:
            return [await self._attempt(delivery, client) for delivery in due]

    async def redeliver(self, delivery: WebhookDelivery) -> DeliveryResult:
        """Send ``delivery`` once more, now: a duplicate of a delivered webhook, a queued
        one out of turn, or one the test built (a tampered body, a stale timestamp).
        Bookkept as any attempt (a final answer takes a queued delivery out of the outbox).
        """
        async with self._client() as client:
            return await self._attempt(delivery, client)

    async def send_forgery(self, forgery: WebhookDelivery) -> DeliveryResult:
        """POST a delivery the test built (a tampered body, a stale timestamp) once, as
        an attacker would: it is not a delivery of ours, so it joins neither the outbox
        nor ``delivered`` (a later duplicate must resend the genuine webhook)."""
        async with self._client() as client:
            try:
                response = await client.post(
                    forgery.url, content=forgery.body, headers=forgery.headers
                )
            except httpx.TransportError as error:
                return DeliveryResult(forgery, 1, error=f"{type(error).__name__}: {error}")
        return DeliveryResult(forgery, 1, status_code=response.status_code)

    async def _deliver_in_background(self, delivery: WebhookDelivery) -> None:
        queued = any(item is delivery for item in self.outbox)
        if queued and id(delivery) not in self._in_flight:
            async with self._client() as client:
                result = await self._attempt(delivery, client, keep_not_found=True)
            if _worth_retrying(result):
                # Like a real sender, keep trying for a while, without holding up the
                # upload's response: the receiver may not know the job yet (its worker
                # records the parser job id only after this upload returns).
                retry = asyncio.create_task(self._retry_in_background(delivery))
                self._background.add(retry)
                retry.add_done_callback(self._background.discard)

    async def _retry_in_background(self, delivery: WebhookDelivery) -> None:
        delay = AUTO_RETRY_FIRST_DELAY
        while delivery.attempts < AUTO_RETRY_ATTEMPTS:
            await asyncio.sleep(delay)
            delay = min(delay * 2, AUTO_RETRY_MAX_DELAY)
            if not any(item is delivery for item in self.outbox):
                return
            async with self._client() as client:
                result = await self._attempt(delivery, client, keep_not_found=True)
            if not _worth_retrying(result):
                return
        # Out of attempts: what is left is a final failure, as a real sender gives up.
        self.outbox = [queued for queued in self.outbox if queued is not delivery]
        if not any(done is delivery for done in self.delivered):
            self.delivered.append(delivery)

    def stats(self) -> dict[str, Any]:
        return {
            **super().stats(),
            "uploads": self.uploads,
            "pages_billed": self.pages_billed,
            "jobs": {job.id: job.status for job in self.jobs.values()},
            "webhooks": {
                "queued": len(self.outbox),
                "delivered": len(self.delivered),
                "attempts": len(self.delivery_results),
            },
        }


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _fault_response(fault: Fault) -> Response:
    status = fault.status or 500
    if fault.kind is FaultKind.RATE_LIMIT:
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = retry_after_header(
                fault.retry_after, as_date=fault.retry_after_date
            )
        return _error(status, "Rate limit exceeded, retry later", headers)
    if fault.kind is FaultKind.SERVER_ERROR:
        return _error(status, "Internal error in the parsing service (injected)")
    return _error(status, f"Request rejected with status {status} (injected permanent error)")


def _is_absolute_http_url(value: str) -> bool:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        return False
    return url.scheme in ("http", "https") and bool(url.host)


def create_parser_app(
    *,
    faults: FaultPlan | None = None,
    pending_polls: int = 0,
    api_key: str | None = None,
    max_file_bytes: int = 50 * 2**20,
    webhook_secrets: Sequence[str] = (),
    webhook_client: httpx.AsyncClient | None = None,
    auto_deliver_webhooks: bool = False,
    clock: Clock | None = None,
) -> Starlette:
    """Build a fake parser app. See the module docstring for the endpoints and webhooks.

    ``faults`` is the initial plan (healthy if ``None``; replace it through
    ``app.state.fake.faults`` or ``PUT /_fake/faults``). ``pending_polls`` status polls
    of each job answer PENDING before the real status. With ``api_key`` set, requests
    need ``Authorization: Bearer <api_key>``.

    Webhooks are signed with every secret in ``webhook_secrets`` (current first, as in
    :class:`~pipeline_models.pipeline.webhooks.WebhookSecrets`), timestamped by
    ``clock`` (the system clock if ``None``), and sent through ``webhook_client`` (a
    fresh ``httpx.AsyncClient`` per batch if ``None``). With ``auto_deliver_webhooks``
    each upload's webhook is attempted once right after the upload is answered.

    Example (inside a coroutine)::

        app = create_parser_app(faults=FaultPlan([Fault.server_error()], endpoints=["upload"]))
        async with parser_http_client(app) as client:
            upload = {"file": ("a.md", b"# A")}
            first = await client.post("/api/v1/parsing/upload", files=upload)
            second = await client.post("/api/v1/parsing/upload", files=upload)
        assert (first.status_code, second.status_code) == (503, 200)
    """
    if isinstance(pending_polls, bool) or not isinstance(pending_polls, int) or pending_polls < 0:
        raise ValueError(f"pending_polls must be an int >= 0, got {pending_polls!r}")
    if (
        isinstance(max_file_bytes, bool)
        or not isinstance(max_file_bytes, int)
        or max_file_bytes < 1
    ):
        raise ValueError(f"max_file_bytes must be an int >= 1, got {max_file_bytes!r}")
    if isinstance(webhook_secrets, str):
        raise TypeError(
            "webhook_secrets must be a sequence of secrets such as [current, previous], "
            "not a single string"
        )
    if not isinstance(auto_deliver_webhooks, bool):
        raise TypeError(f"auto_deliver_webhooks must be a bool, got {auto_deliver_webhooks!r}")
    fake = ParserFake(
        faults=faults,
        pending_polls=pending_polls,
        webhook_secrets=WebhookSecrets(tuple(webhook_secrets)) if webhook_secrets else None,
        webhook_client=webhook_client,
        clock=clock,
    )

    def unauthorised(request: Request) -> Response | None:
        if api_key is None or request.headers.get("authorization") == f"Bearer {api_key}":
            return None
        return _error(401, "Invalid authentication credentials", {"WWW-Authenticate": "Bearer"})

    def lookup(request: Request) -> ParserJob | Response:
        job_id = request.path_params["job_id"]
        job = fake.jobs.get(job_id)
        return job if job is not None else _error(404, f"Job {job_id} not found")

    def finished(request: Request) -> ParsedDocument | Response:
        job = lookup(request)
        if isinstance(job, Response):
            return job
        if not job.done:
            return _error(400, f"Job {job.id} is still PENDING; poll its status first")
        if job.result is None:
            return _error(400, f"Job {job.id} failed: {job.error_message}")
        return job.result

    async def upload(request: Request) -> Response:
        if (denied := unauthorised(request)) is not None:
            return denied
        async with request.form(max_files=1, max_fields=10) as form:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                return _error(400, "The multipart form needs a file in the field 'file'")
            size = file.size if file.size is not None else 0
            if size > max_file_bytes:
                return _error(413, f"File is {size} bytes; the limit is {max_file_bytes} bytes")
            webhook_url = form.get("webhook_url")
            if not isinstance(webhook_url, str) or not webhook_url:
                webhook_url = None
            elif not _is_absolute_http_url(webhook_url):
                return _error(
                    400, f"webhook_url must be an absolute http(s) URL, got {webhook_url!r}"
                )
            data = await file.read()
            job = fake.submit(data, filename=file.filename or "upload", webhook_url=webhook_url)
        background = None
        if auto_deliver_webhooks and job.webhook_url is not None:
            # submit() queued this job's delivery last, and nothing ran since.
            background = BackgroundTask(fake._deliver_in_background, fake.outbox[-1])
        # Like LlamaParse, the upload answers PENDING even when the result is ready.
        return JSONResponse({"id": job.id, "status": "PENDING"}, background=background)

    async def deliver(request: Request) -> Response:
        results = await fake.deliver_webhooks()
        return JSONResponse({"results": [result.to_json() for result in results]})

    async def status(request: Request) -> Response:
        if (denied := unauthorised(request)) is not None:
            return denied
        job = lookup(request)
        if isinstance(job, Response):
            return job
        if not job.done:
            job.polls += 1
            return JSONResponse({"id": job.id, "status": "PENDING"})
        return JSONResponse(job.to_json())

    async def result(request: Request) -> Response:
        if (denied := unauthorised(request)) is not None:
            return denied
        parsed = finished(request)
        if isinstance(parsed, Response):
            return parsed
        metadata = {"job_pages": parsed.pages, "credits_used": parsed.pages}
        return JSONResponse({"markdown": parsed.markdown, "job_metadata": metadata})

    async def raw_result(request: Request) -> Response:
        if (denied := unauthorised(request)) is not None:
            return denied
        parsed = finished(request)
        if isinstance(parsed, Response):
            return parsed
        body = parsed.markdown.encode("utf-8", "surrogatepass")

        async def pieces() -> AsyncIterator[bytes]:
            for start in range(0, len(body), RAW_CHUNK_BYTES):
                yield body[start : start + RAW_CHUNK_BYTES]

        return StreamingResponse(
            pieces(),
            media_type="text/markdown; charset=utf-8",
            headers={"Content-Length": str(len(body))},
        )

    routes = [
        Route("/api/v1/parsing/upload", upload, methods=["POST"], name="upload"),
        Route("/api/v1/parsing/job/{job_id}", status, methods=["GET"], name="status"),
        Route(
            "/api/v1/parsing/job/{job_id}/result/markdown",
            result,
            methods=["GET"],
            name="result",
        ),
        Route(
            "/api/v1/parsing/job/{job_id}/result/raw/markdown",
            raw_result,
            methods=["GET"],
            name="raw_result",
        ),
        # Admin, like /_fake/faults: no auth, no faults (its name is no fault endpoint).
        Route("/_fake/webhooks/deliver", deliver, methods=["POST"], name="fake_webhooks"),
    ]
    return FakeServiceApp(
        routes=routes,
        service=fake,
        endpoint_names={
            "upload": "upload",
            "status": "status",
            "result": "result",
            "raw_result": "result",
        },
        error_response=_fault_response,
    )


__all__ = [
    "PARSER_JOB_NAMESPACE",
    "RAW_CHUNK_BYTES",
    "WEBHOOK_TIMEOUT_SECONDS",
    "DeliveryResult",
    "JobStatus",
    "ParserFake",
    "ParserJob",
    "WebhookDelivery",
    "create_parser_app",
]

"""How a state machine drives a system under test: the Driver protocol and the reference.

The machines in :mod:`pipeline_models.machines` never touch a worker, an HTTP client or
a table directly: they ask a driver. :class:`ReferenceDriver` drives the reference
pipeline (its BaseWorkers under the checkpoint scheduler, its upload API in process, its
fakes). To check another worker, write a driver that starts *your* workers; see
``docs/drivers.md`` for a worked example.

Two layers, one door: :class:`QueueDriver` is what the job-queue machine needs (workers,
steps, crashes, time, observation); :class:`PipelineDriver` adds what the document
pipeline machine needs (uploads, faults, webhooks, operator retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Protocol, runtime_checkable

import asyncpg
import httpx
from fastapi import FastAPI

from pipeline_models.clock import ManualClock
from pipeline_models.database import Database, Outage
from pipeline_models.documents import Document, markdown_document
from pipeline_models.fakes import FaultPlan, WebhookDelivery
from pipeline_models.history import AUDIT_TABLE, History, install_audit
from pipeline_models.invariants import Expectations, Observation, TextsSent
from pipeline_models.lifecycle import Stage, State
from pipeline_models.metrics import PipelineMetrics
from pipeline_models.model import ExpectedOutcome, expected_outcome
from pipeline_models.pipeline.api import ApiRuntime, ApiSettings, create_api
from pipeline_models.pipeline.auth import TokenIssuer
from pipeline_models.pipeline.budget import Budget
from pipeline_models.pipeline.checkpoints import Checkpoint
from pipeline_models.pipeline.chunking import Chunker
from pipeline_models.pipeline.config import WorkerConfig
from pipeline_models.pipeline.costs import Usage
from pipeline_models.pipeline.reference import ReferencePipeline
from pipeline_models.pipeline.retry import RetryPolicy
from pipeline_models.pipeline.services import EMBEDDINGS, PARSER
from pipeline_models.pipeline.worker import StageHandler
from pipeline_models.queries import QUERIES, Queries
from pipeline_models.scheduler import CheckpointScheduler, Outcome, StepReport
from pipeline_models.snapshot import CHECKER_QUERIES, Snapshot, take_snapshot
from pipeline_models.spares import SpareConnections

# Small everything: a document of a few hundred characters spans several chunks and
# batches, so every stage repeats within a short program.
CHECK_CONFIG = WorkerConfig(
    embed_dimensions=8,
    chunk_batch_size=2,
    embed_batch_size=2,
    chunker=Chunker(min_chars=40, max_chars=120),
    lease_seconds=30.0,
    parser_poll_seconds=2.0,
    # Two retries: a job reaches its limit (and the dead-letter, and the operator retry)
    # within a short program.
    retry=RetryPolicy(limit=2),
    # A limit a program can reach: uploads of 2,048 bytes, one fewer and one more are
    # drawn on purpose (the API takes them; the worker refuses the larger one).
    max_upload_bytes=2048,
    # A circuit one document's failures can open: its attempts (the retry limit and one)
    # are the threshold. At the default five, a circuit opened only when two documents
    # failed back to back with no success between, which no program did.
    circuit_failure_threshold=3,
)
API_ACTOR = "pipeline-models api"
OPERATOR_ACTOR = "pipeline-models operator"
# The cap the operator lifts the budget to before the drain: more than any program spends.
DRAIN_BUDGET_USD = Decimal(1000)
_TOKEN_SECRET = "pipeline-models-checker-token-secret-0123456789"
_WEBHOOK_SECRET = "pipeline-models-checker-webhook-secret"
_QUEUE_USER = uuid.UUID("00000000-0000-4000-8000-00000000c0de")
# The API's own limit, above the worker's: an upload between the two is taken and then
# refused by the worker; one above it is refused by the API (413), by its body or, past
# the multipart allowance, by its Content-Length alone.
API_MAX_UPLOAD_BYTES = 2 * CHECK_CONFIG.max_upload_bytes
# The one user whose token may change the budget through the API (PUT /operator/budget).
OPERATOR_USER = uuid.UUID("00000000-0000-4000-8000-0000000000ff")
# Databases and schemas whose audit trigger this process installed already (it is
# idempotent, but DDL per example would cost more than the example).
_AUDITED: set[tuple[str, str]] = set()
# The blobs of an example live only as long as the example: memory is the place for them.
_SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


@dataclass
class _Shared:
    """What examples running in the same event loop share: idle connections (a new one
    costs ~3 ms and an example opens six) and the API app (building it costs ~20 ms)."""

    loop: asyncio.AbstractEventLoop
    spares: SpareConnections
    app: FastAPI | None = None
    api_client: httpx.AsyncClient | None = None

    async def close(self) -> None:
        if self.api_client is not None:
            await self.api_client.aclose()
        if self.app is not None:
            await self.app.state.runtime.close()
        await self.spares.close()


_SHARED: dict[tuple[str, str], _Shared] = {}
# Loops whose owner closes what is kept in them (release_shared); in any other loop a
# driver keeps nothing beyond its teardown.
_KEEPING_LOOPS: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def keep_between_examples(loop: asyncio.AbstractEventLoop) -> None:
    """Let drivers running in ``loop`` keep connections and the API app from one example
    to the next; the loop's owner calls :func:`release_shared` before closing it."""
    _KEEPING_LOOPS.add(loop)


def _shared_for(database: Database) -> _Shared | None:
    loop = asyncio.get_running_loop()
    if loop not in _KEEPING_LOOPS:
        return None
    key = (database.url, database.schema)
    shared = _SHARED.get(key)
    if shared is None or shared.loop is not loop:
        shared = _SHARED[key] = _Shared(loop, SpareConnections(database))
    return shared


async def release_shared() -> None:
    """Close what the drivers keep between examples in the running loop (at the end of
    a run; the machines do it when their event loop closes)."""
    loop = asyncio.get_running_loop()
    for key, shared in list(_SHARED.items()):
        if shared.loop is loop:
            del _SHARED[key]
            await shared.close()


NO_RESPONSE = 599  # an upload whose API process died before answering


class _UploadCut(Exception):
    """The API process dies here (raised from the upload's checkpoint)."""


class WebhookKind(StrEnum):
    QUEUED = "queued"  # send what the parser has queued
    DUPLICATE = "duplicate"  # send an already delivered webhook again
    TAMPERED = "tampered"  # a delivered webhook with its body changed after signing
    STALE = "stale"  # a genuine webhook signed outside the replay window
    FUTURE = "future"  # signed as far ahead of the receiver's clock
    UNSIGNED = "unsigned"  # no signature header
    UNDATED = "undated"  # no timestamp header
    BAD_TIMESTAMP = "bad_timestamp"  # a timestamp that is no number
    BAD_SIGNATURE = "bad_signature"  # a signature entry with no "="
    NOT_HEX = "not_hex"  # a v1 signature that is not hex
    OTHER_SCHEME = "other_scheme"  # only another scheme's signature


@dataclass(frozen=True)
class UploadOutcome:
    status: int
    document_id: uuid.UUID | None = None
    job_id: uuid.UUID | None = None
    created: bool = False

    @property
    def accepted(self) -> bool:
        return self.status in (200, 201)


@runtime_checkable
class QueueDriver(Protocol):
    """What the job-queue machine needs from a system under test."""

    clock: ManualClock

    async def setup(self) -> None: ...

    async def teardown(self) -> None: ...

    async def enqueue(self) -> uuid.UUID | None: ...

    async def start_worker(self, name: str) -> None: ...

    async def step(self, name: str) -> StepReport: ...

    async def step_whole(self, name: str) -> StepReport: ...

    async def step_together(self, names: Sequence[str]) -> list[StepReport]: ...

    async def crash(self, name: str) -> None: ...

    async def drop_connection(self, name: str) -> None: ...

    async def observe(self) -> Observation: ...

    async def snapshot(self) -> Snapshot: ...

    def expectations(self) -> Expectations: ...

    async def drain(self) -> tuple[Snapshot, bool]: ...

    async def hold_job_lock(self, pick: int) -> uuid.UUID | None: ...

    async def release_job_lock(self) -> None: ...


@runtime_checkable
class PipelineDriver(QueueDriver, Protocol):
    """What the document-pipeline machine needs on top of the queue layer."""

    async def upload(
        self, user: uuid.UUID, document: Document, *, cut_at: str | None = None
    ) -> UploadOutcome: ...

    async def read_job(self, user: uuid.UUID, job_id: uuid.UUID) -> int: ...

    async def call_api(
        self,
        method: str,
        path: str,
        *,
        user: uuid.UUID | None,
        ttl_seconds: int | None = None,
        json: object = None,
    ) -> int: ...

    async def operator_retry(self, user: uuid.UUID, job_id: uuid.UUID) -> int: ...

    def set_faults(self, service: str, plan: FaultPlan) -> None: ...

    async def raise_budget(self, limit_usd: Decimal) -> None: ...

    async def deliver_webhooks(self, kind: WebhookKind) -> list[int]: ...

    async def outage(self) -> Outage: ...


class ReferenceDriver:
    """Drives the reference pipeline: BaseWorkers, the upload API and the fakes, in one
    event loop, with time on a :class:`ManualClock`."""

    def __init__(
        self,
        database: Database,
        *,
        config: WorkerConfig = CHECK_CONFIG,
        queries: Queries = QUERIES,
        stages: Mapping[Stage, StageHandler] | None = None,
        whole_steps: bool = False,
        seconds_per_step: float = 1.0,
    ) -> None:
        """``queries`` and ``stages`` replace the reference worker's (a mutant's bug).
        ``whole_steps``: every ``step`` runs a worker through its whole step, checkpoints
        off (the coarse baseline: interleavings only between whole steps).
        ``seconds_per_step``: the clock moves this much after every step of a worker, as
        work takes time: a lease taken at a claim runs down while the job is worked on,
        and backoffs pass while other jobs move."""
        self.database = database
        self.whole_steps = whole_steps
        self.seconds_per_step = seconds_per_step
        self.queries = queries
        self.stages = stages
        if AUDIT_TABLE not in database.extra_tables:
            database.extra_tables = (*database.extra_tables, AUDIT_TABLE)
        self.config = config
        self.clock = ManualClock()
        self.history = History()
        self.outcomes: dict[uuid.UUID, ExpectedOutcome] = {}
        self.owners: dict[uuid.UUID, uuid.UUID] = {}  # job -> user
        self.workers: set[str] = set()
        self.tokens = TokenIssuer(_TOKEN_SECRET, clock=self.clock, ttl_seconds=10**9)
        self._blobs = Path(tempfile.mkdtemp(prefix="pipeline-models-check-", dir=_SCRATCH))
        self._monitor: asyncpg.Connection | None = None
        self.pipeline: ReferencePipeline | None = None
        self.scheduler: CheckpointScheduler | None = None
        self._api_client: httpx.AsyncClient | None = None
        self._spares: SpareConnections | None = None
        self._own: _Shared | None = None
        self._enqueued = 0
        self.drain_steps = 0
        self._lock_holder: asyncpg.Connection | None = None
        self._held_job: uuid.UUID | None = None
        self._waiting_claims: dict[str, uuid.UUID | None] = {}
        self._calls_started: dict[str, tuple[uuid.UUID, datetime]] = {}
        self._texts_seen: dict[str, int] = {}
        self._texts_sent: list[TextsSent] = []

    # -- lifecycle -------------------------------------------------------------------

    async def setup(self) -> None:
        shared = _shared_for(self.database)
        if shared is None:  # nothing outlives this example: it is closed in teardown
            shared = self._own = _Shared(
                asyncio.get_running_loop(), SpareConnections(self.database)
            )
        self._spares = shared.spares
        self._monitor = await shared.spares.take("pipeline-models checker")
        audited = (self.database.url, self.database.schema)
        if audited not in _AUDITED:
            await install_audit(self._monitor)
            _AUDITED.add(audited)
        await self.database.reset(self._monitor)
        pipeline = ReferencePipeline.with_fakes(
            self.database,
            storage_root=self._blobs,
            clock=self.clock,
            config=self.config,
            webhook_url="http://api.check/webhooks/parser",
            webhook_secrets=(_WEBHOOK_SECRET,),
            # Capped only once a rule sets a limit: a budget without its row caps nothing.
            budget=Budget(),
            # Counted as in production: the workers' and the API's metrics code runs too.
            metrics=PipelineMetrics(),
        )
        if shared.app is None:
            shared.app = create_api(
                pipeline,
                ApiSettings(
                    token_secret=_TOKEN_SECRET,
                    webhook_secrets=(_WEBHOOK_SECRET,),
                    operators=frozenset({OPERATOR_USER}),
                    max_upload_bytes=API_MAX_UPLOAD_BYTES,
                ),
            )
            shared.api_client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=shared.app), base_url="http://api.check"
            )
        else:
            shared.app.state.runtime.use(pipeline)
        self._api_client = shared.api_client
        assert pipeline.fakes is not None
        pipeline.fakes.parser.webhook_client = self._api_client
        self.pipeline = pipeline
        self.scheduler = CheckpointScheduler(self.database, spares=shared.spares)
        await self.scheduler.start()

    async def teardown(self) -> None:
        if self._lock_holder is not None:
            # Cut, not rolled back: a worker may be waiting on its lock right now.
            self._lock_holder.terminate()
            self._lock_holder = None
        if self.scheduler is not None:
            await self.scheduler.close()
        if self.pipeline is not None:
            await self.pipeline.aclose()
        if self._spares is not None:
            self._spares.give(self._monitor)
        elif self._monitor is not None:
            await self._monitor.close()
        self._monitor = None
        if self._own is not None:
            await self._own.close()
            self._own = None
        shutil.rmtree(self._blobs, ignore_errors=True)

    @property
    def _pipeline(self) -> ReferencePipeline:
        if self.pipeline is None:
            raise RuntimeError("the driver is not set up: await setup() first")
        return self.pipeline

    @property
    def _scheduler(self) -> CheckpointScheduler:
        if self.scheduler is None:
            raise RuntimeError("the driver is not set up: await setup() first")
        return self.scheduler

    @property
    def monitor(self) -> asyncpg.Connection:
        if self._monitor is None:
            raise RuntimeError("the driver is not set up: await setup() first")
        return self._monitor

    # -- workers and time ------------------------------------------------------------

    async def start_worker(self, name: str) -> None:
        worker = self._pipeline.worker(name=name, queries=self.queries, stages=self.stages)
        self.workers.add(name)
        self._scheduler.add(worker)

    async def step(self, name: str) -> StepReport:
        if self.whole_steps:
            return await self.step_whole(name)
        continued = self._scheduler.mid_step(name)
        report = self._note_waiting_claim(await self._scheduler.step(name))
        self._collect_texts(name, continued=continued)
        if report.checkpoint is Checkpoint.BEFORE_CALL and report.job_id is not None:
            self._calls_started[name] = (report.job_id, self.clock.now())
        self.clock.advance(self.seconds_per_step)
        return report

    async def step_whole(self, name: str) -> StepReport:
        """Run ``name`` through one whole step (claim to commit), blocked or not."""
        continued = self._scheduler.mid_step(name)
        report = self._note_waiting_claim(await self._scheduler.step_whole(name))
        self._collect_texts(name, continued=continued)
        self.clock.advance(self.seconds_per_step)
        return report

    async def step_together(self, names: Sequence[str]) -> list[StepReport]:
        reports = await self._scheduler.step_together(names)
        self._collect_texts(None)  # who sent what cannot be told apart
        self.clock.advance(self.seconds_per_step)
        return [self._note_waiting_claim(report) for report in reports]

    def _note_waiting_claim(self, report: StepReport) -> StepReport:
        if report.outcome is Outcome.BLOCKED and report.in_claim:
            self._waiting_claims[report.worker] = self._held_job
        return report

    async def hold_job_lock(self, pick: int) -> uuid.UUID | None:
        """Another session takes a job's row lock and keeps it (a claimer mid-transaction,
        an operator's query): the ``pick``-th job nobody holds, in insertion order. One at
        a time; None if every job is held or there is none."""
        if self._held_job is not None:
            return self._held_job
        if self._lock_holder is None:
            assert self._spares is not None
            self._lock_holder = await self._spares.take("pipeline-models lock holder")
        holder = self._lock_holder
        rows = await holder.fetch(CHECKER_QUERIES["job_ids_in_order"].sql)
        jobs: list[uuid.UUID] = [row["job_id"] for row in rows]
        await holder.execute("BEGIN")
        for offset in range(len(jobs)):
            job_id = jobs[(pick + offset) % len(jobs)]
            if await holder.fetchval(CHECKER_QUERIES["lock_job_if_free"].sql, job_id):
                self._held_job = job_id
                return job_id
        await holder.execute("ROLLBACK")
        return None

    async def release_job_lock(self) -> None:
        if self._held_job is None or self._lock_holder is None:
            return
        await self._lock_holder.execute("ROLLBACK")
        self._held_job = None
        # Whoever waited on the lock moves now: to its next checkpoint, before the next rule.
        await self._scheduler.settle_all()
        self._collect_texts(None)

    async def crash(self, name: str) -> None:
        await self._scheduler.crash(name)

    async def outage(self) -> Outage:
        """The whole database goes away and comes back (:meth:`Database.outage`): every
        session of the pipeline and of the checker is lost, open transactions with them.
        Workers, the API and requests in flight find out by themselves; the checker's
        own sessions are replaced here, and the lock it held is gone with its session."""
        outage = await self.database.outage(self._monitor)
        spares = self._spares
        assert spares is not None
        if self._monitor is None or self._monitor.is_closed():
            self._monitor = await spares.take("pipeline-models checker")
        if self._lock_holder is not None and self._lock_holder.is_closed():
            self._lock_holder, self._held_job = None, None
        await self._scheduler.reconnect()
        self._collect_texts(None)
        return outage

    async def drop_connection(self, name: str) -> None:
        await self._scheduler.drop_connection(name)

    async def raise_budget(self, limit_usd: Decimal) -> None:
        """The operator sets the spending cap to ``limit_usd`` (never lowering one), as
        ``PUT /operator/budget`` does: raising it releases the jobs held for it."""
        budget = self._pipeline.budget
        assert budget is not None
        state = await budget.state(self.monitor)
        if state is not None and state.limit_usd >= limit_usd:
            return
        spares = self._spares
        assert spares is not None

        async def operate() -> int:
            # Its own session, in the background: releasing the held jobs waits on the row
            # lock of any parked worker that is holding one of them.
            connection = await spares.take(OPERATOR_ACTOR)
            try:
                _, released = await budget.set_limit(connection, limit_usd, self.clock.now())
            finally:
                spares.give(connection)
            return released

        await self._scheduler.run_in_background(
            f"budget {limit_usd}", operate, application_name=OPERATOR_ACTOR
        )

    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    # -- the outside world -----------------------------------------------------------

    def _auth(self, user: uuid.UUID) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens.issue(user)}"}

    @property
    def api(self) -> httpx.AsyncClient:
        if self._api_client is None:
            raise RuntimeError("the driver is not set up: await setup() first")
        return self._api_client

    async def enqueue(self) -> uuid.UUID | None:
        """One more job: a small, fresh markdown document from a queue-layer user."""
        self._enqueued += 1
        text = f"# Job {self._enqueued}\n\n" + "A queued job's document. " * 12
        return (await self.upload(_QUEUE_USER, markdown_document(text))).job_id

    async def upload(
        self, user: uuid.UUID, document: Document, *, cut_at: str | None = None
    ) -> UploadOutcome:
        """Upload through the API. Status 0: the request waits on a row lock a parked
        worker holds (re-uploading bytes whose document a worker is updating); it
        completes, and is recorded, as soon as that worker commits or dies.

        ``cut_at``: the API process dies at that point of the upload ("blob_stored",
        "document_inserted"); the client gets no answer (status 599).
        """
        runtime = self._api_runtime

        async def cut(point: str, _: asyncpg.Connection) -> None:
            if point == cut_at:
                raise _UploadCut(point)

        async def send() -> UploadOutcome:
            runtime.upload_checkpoint = cut if cut_at is not None else None
            try:
                response = await self.api.post(
                    "/upload",
                    headers=self._auth(user),
                    files={"file": (document.filename, document.data, document.content_type)},
                )
            except _UploadCut:
                return UploadOutcome(NO_RESPONSE)
            finally:
                runtime.upload_checkpoint = None
            if response.status_code not in (200, 201):
                return UploadOutcome(response.status_code)
            body = response.json()
            document_id, job_id = uuid.UUID(body["document_id"]), uuid.UUID(body["job_id"])
            if document_id not in self.outcomes:
                self.outcomes[document_id] = expected_outcome(
                    document_id, document, config=self.config
                )
            self.owners[job_id] = user
            return UploadOutcome(response.status_code, document_id, job_id, body["created"])

        done, outcome = await self._scheduler.run_in_background(
            "upload", send, application_name=API_ACTOR
        )
        return outcome if done else UploadOutcome(0)

    @property
    def _api_runtime(self) -> ApiRuntime:
        app = self.api._transport.app  # type: ignore[attr-defined]
        runtime: ApiRuntime = app.state.runtime
        return runtime

    async def call_api(
        self,
        method: str,
        path: str,
        *,
        user: uuid.UUID | None,
        ttl_seconds: int | None = None,
        json: object = None,
    ) -> int:
        """One request that reads or is refused (it must write nothing: it is not run as
        an actor), as ``user`` (None: without a token; ``ttl_seconds``: a token that lives
        that long); its status code."""
        headers = (
            {}
            if user is None
            else {"Authorization": f"Bearer {self.tokens.issue(user, ttl_seconds=ttl_seconds)}"}
        )
        response = await self.api.request(method, path, headers=headers, json=json)
        return response.status_code

    def circuit_failures(self) -> int:
        """The longest run of failures a service's circuit breaker counts now."""
        breakers = self._pipeline.breakers.values()
        return max((breaker.consecutive_failures for breaker in breakers), default=0)

    def circuits_open(self) -> list[str]:
        """The services whose circuit is open or half open now."""
        return sorted(
            name
            for name, breaker in self._pipeline.breakers.items()
            if breaker.opened_at is not None
        )

    async def read_job(self, user: uuid.UUID, job_id: uuid.UUID) -> int:
        """GET /jobs/{job_id} as ``user``: the status code (404 for anyone but its owner)."""
        response = await self.api.get(f"/jobs/{job_id}", headers=self._auth(user))
        return response.status_code

    async def operator_retry(self, user: uuid.UUID, job_id: uuid.UUID) -> int:
        async def retry() -> int:
            response = await self.api.post(f"/jobs/{job_id}/retry", headers=self._auth(user))
            return response.status_code

        done, status = await self._scheduler.run_in_background(
            f"retry {job_id}", retry, application_name=API_ACTOR
        )
        return int(status) if done else 0

    def set_faults(self, service: str, plan: FaultPlan) -> None:
        fakes = self._pipeline.fakes
        assert fakes is not None
        target = fakes.parser if service == "parser" else fakes.embeddings
        target.faults = plan

    async def deliver_webhooks(self, kind: WebhookKind) -> list[int]:
        """Send parser webhooks; the receiving API's status codes (0: blocked on a lock)."""
        fakes = self._pipeline.fakes
        assert fakes is not None
        parser = fakes.parser
        statuses: list[int] = []

        def send(delivery: WebhookDelivery) -> Callable[[], Awaitable[int]]:
            async def deliver() -> int:
                result = await parser.redeliver(delivery)
                return int(result.status_code or 0)

            return deliver

        if kind is WebhookKind.QUEUED:
            for delivery in list(parser.outbox):
                statuses.append(await self._send(send(delivery)))
            return statuses
        if kind is WebhookKind.DUPLICATE:
            if parser.delivered:
                statuses.append(await self._send(send(parser.delivered[-1])))
            return statuses
        # A forgery copies a genuine webhook, delivered or still queued: the attacker
        # needs no delivery to have succeeded first, so neither does the search.
        genuine = [*parser.delivered, *parser.outbox]
        if not genuine:
            return statuses
        forgery = genuine[-1].forged(
            kind.value,
            secret=_WEBHOOK_SECRET,
            now=self.clock.now().timestamp(),
        )

        async def forge() -> int:
            result = await parser.send_forgery(forgery)
            return int(result.status_code or 0)

        statuses.append(await self._send(forge))
        return statuses

    async def _send(self, operation: Callable[[], Awaitable[int]]) -> int:
        done, status = await self._scheduler.run_in_background(
            "webhook", operation, application_name=API_ACTOR
        )
        return int(status) if done else 0

    # -- observation -----------------------------------------------------------------

    def _blob_keys(self) -> frozenset[str]:
        """The raw blobs on disk (``raw/<user>/<sha256>``; dot-files are partial writes)."""
        keys: set[str] = set()
        with contextlib.suppress(FileNotFoundError), os.scandir(self._blobs / "raw") as users:
            for user in users:
                with os.scandir(user.path) as files:
                    keys.update(
                        f"raw/{user.name}/{blob.name}"
                        for blob in files
                        if not blob.name.startswith(".")
                    )
        return frozenset(keys)

    async def observe(self) -> Observation:
        await self._scheduler.settle_background()
        snapshot, new = await self.history.observe(self.monitor)
        fakes = self._pipeline.fakes
        assert fakes is not None
        inputs = {uuid.UUID(user): count for user, count in fakes.embeddings.inputs_by_user.items()}
        return Observation(
            snapshot=snapshot,
            changes=tuple(new),
            history=tuple(self.history.changes),
            blobs=self._blob_keys(),
            embedding_inputs=inputs,
            waiting_claims=self._take_waiting_claims(),
            calls_started=self._take_calls_started(),
            embedded_texts=self._take_embedded_texts(),
            services_billed={
                PARSER: Usage(pages=fakes.parser.pages_billed),
                EMBEDDINGS: Usage(tokens=fakes.embeddings.tokens_billed),
            },
        )

    def _collect_texts(self, sender: str | None, *, continued: bool = False) -> None:
        """Attribute the texts the embeddings service answered since the last collection
        to ``sender``, the worker just stepped (the service tags each request with its
        document id, never with a worker)."""
        fakes = self._pipeline.fakes
        assert fakes is not None
        for user, texts in fakes.embeddings.texts_by_user.items():
            seen = self._texts_seen.get(user, 0)
            if len(texts) > seen:
                self._texts_sent.append(
                    TextsSent(uuid.UUID(user), tuple(texts[seen:]), sender, continued)
                )
                self._texts_seen[user] = len(texts)

    def _take_embedded_texts(self) -> tuple[TextsSent, ...]:
        self._collect_texts(None)
        sent, self._texts_sent = tuple(self._texts_sent), []
        return sent

    def _take_calls_started(self) -> dict[str, tuple[uuid.UUID, datetime]]:
        started, self._calls_started = self._calls_started, {}
        return started

    def _take_waiting_claims(self) -> dict[str, uuid.UUID | None]:
        waiting, self._waiting_claims = self._waiting_claims, {}
        return waiting

    async def snapshot(self) -> Snapshot:
        """The tables now, without consuming the audit trail (rules may look; only the
        invariant check reads what changed)."""
        return await take_snapshot(self.monitor)

    def expectations(self) -> Expectations:
        return Expectations(
            outcomes=dict(self.outcomes), workers=frozenset(self.workers), config=self.config
        )

    async def drain(self, *, max_rounds: int = 2000) -> tuple[Snapshot, bool]:
        """Heal every fault, then run the workers until no job is live.

        Jobs dead-lettered by the faults this run injected get one operator retry each,
        with the faults healed; after that every job must end as the model predicts.
        Returns the final snapshot and whether the jobs settled within ``max_rounds``.
        """
        await self.release_job_lock()
        self.set_faults("parser", FaultPlan.healthy())
        self.set_faults("embeddings", FaultPlan.healthy())
        # The operator lifts the spending cap, releasing the jobs held for it.
        await self.raise_budget(DRAIN_BUDGET_USD)
        live = [n for n, slot in self._scheduler.slots.items() if not slot.crashed]
        if not live:  # every worker crashed: a new one drains
            await self.start_worker("drainer")
            live.append("drainer")
        if not await self._run_until_settled(live, max_rounds):
            return await take_snapshot(self.monitor), False
        retried = False
        for job in (await take_snapshot(self.monitor)).jobs.values():
            outcome = self.outcomes.get(job.document_id)
            unexpected = outcome is not None and (outcome.state, outcome.stage) != (
                job.state,
                job.stage,
            )
            if job.state is State.DEADLETTER and unexpected:
                await self.operator_retry(self.owners[job.job_id], job.job_id)
                retried = True
        settled = not retried or await self._run_until_settled(live, max_rounds)
        return await take_snapshot(self.monitor), settled

    async def _run_until_settled(self, names: Iterable[str], max_rounds: int) -> bool:
        names = list(names)
        for _ in range(max_rounds):
            progressed = False
            for name in names:
                continued = self._scheduler.mid_step(name)
                report = await self._scheduler.run_whole_step(name)
                self._collect_texts(name, continued=continued)
                self.drain_steps += 1
                if report.outcome not in (Outcome.IDLE, Outcome.BLOCKED):
                    progressed = True
            await self.deliver_webhooks(WebhookKind.QUEUED)
            await self._scheduler.settle_background()
            if progressed:
                continue
            if self._scheduler.background:
                # An operator's or the API's request still runs or waits on a lock: let it
                # land or block (a fact, not a millisecond's nap whose count would vary).
                await self._scheduler.settle_all()
                continue
            if not await self.monitor.fetchval(QUERIES["count_live_jobs"].sql):
                return True
            due = await self.monitor.fetchval(QUERIES["next_due_at"].sql)
            if due is not None and due > self.clock.now():
                self.clock.set(due)
        return False


__all__ = [
    "API_ACTOR",
    "CHECK_CONFIG",
    "PipelineDriver",
    "QueueDriver",
    "ReferenceDriver",
    "UploadOutcome",
    "WebhookKind",
    "keep_between_examples",
    "release_shared",
]

"""The reference pipeline as a client of the checker core, like any team's worker.

:class:`ReferenceAdapter` tells the core what it needs and nothing more: the job
table's spec (:func:`reference_spec`: nine stages, a lease, a retry count, a due time),
how to empty the tables, how to upload a document (as the upload API does), and how to
run one worker (``BaseWorker.run``, unchanged and without its checkpoint hook: the core
pauses it at each statement, each COMMIT and around each call to the parser and the
embeddings service, which it reaches through :class:`CheckedTransport`).

Check it as a queue::

    TestReference = machine_for(ReferenceAdapter).TestCase

or from the command line: ``pipeline-models check --adapter
pipeline_models.pipeline.adapter:ReferenceAdapter``.

Besides enqueueing, the machine draws the pipeline's other users as the adapter's
actions: documents of every kind and size uploaded through the upload path, the same
bytes uploaded again (by their owner or by another user), an upload cut short by the
API process dying, fault plans put on the parser and the embeddings service, the
parser's webhooks (delivered, delivered twice, forged), a user reading another's job,
an operator retrying a job, and an operator capping the spending. The API runs in
process (one app per schema, pointed at each example's pipeline); its statements are
the action's round trips.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import re
import shutil
import tempfile
import time
import uuid
from decimal import Decimal
from typing import Any, ClassVar, Literal

import asyncpg
import httpx
import httpx2
from hypothesis import strategies as st

from pipeline_models.clock import SystemClock
from pipeline_models.core import Adapter, Attempts, Holder, Spec, States, action
from pipeline_models.core.interpose import ACTOR, CheckedTransport
from pipeline_models.core.invariants import Finding
from pipeline_models.database import Database
from pipeline_models.documents import Document, markdown_document
from pipeline_models.drivers import CHECK_CONFIG
from pipeline_models.fakes import (
    FaultPlan,
    FaultTransport,
    create_embeddings_app,
    create_parser_app,
)
from pipeline_models.invariants import Expectations, Observation, check
from pipeline_models.lifecycle import STAGES, State
from pipeline_models.model import (
    ExpectedOutcome,
    discrepancies,
    expected_outcome,
    expected_outcomes,
)
from pipeline_models.pipeline.api import ApiSettings, create_api
from pipeline_models.pipeline.auth import TokenIssuer
from pipeline_models.pipeline.budget import Budget
from pipeline_models.pipeline.config import WorkerConfig
from pipeline_models.pipeline.costs import Usage
from pipeline_models.pipeline.inputs import (
    BOUNDARY_DOCUMENTS,
    BUDGET_LIMITS_USD,
    CLOCK_EDGES,
    EMBEDDINGS_FAULT_PLANS,
    PARSER_FAULT_PLANS,
    UPLOADS,
)
from pipeline_models.pipeline.reference import (
    FAKE_API_KEY,
    SERVICE_TIMEOUT,
    Fakes,
    ReferencePipeline,
    build_services,
)
from pipeline_models.pipeline.services import EMBEDDINGS, PARSER
from pipeline_models.pipeline.storage import LocalDirectoryStorage
from pipeline_models.pipeline.uploads import (
    Upload,
    UploadRejectedError,
    check_upload,
)
from pipeline_models.queries import QUERIES, Queries
from pipeline_models.snapshot import CHECKER_QUERIES, Snapshot, snapshot_from_row

SCHEMA = "pm_reference"
LEASE_SECONDS = int(CHECK_CONFIG.lease_seconds)
RETRY_LIMIT = CHECK_CONFIG.retry.limit


def reference_spec(schema: str = SCHEMA) -> Spec:
    """The reference's job table as the checker needs to know it, in ``schema``."""
    return Spec(
        table=f"{schema}.upload_jobs",
        id="job_id",
        states=States(
            claimable=[State.QUEUED.value, State.RETRYABLE.value],
            in_progress=[State.WORKING.value],
            succeeded=[State.DONE.value],
            failed=[State.DEADLETTER.value],
        ),
        # The worker fences every write by owner and by a live lease at the time it read
        # before the write: paused in between, it can renew a lease that ran out and then
        # release or advance the job while nobody took it (checked with ends="expiry",
        # the core reports that release as a zombie's write). No second worker can hold
        # the job meanwhile: a take-over changes the owner, and the late write then fails.
        # So a hold ends at a take-over.
        # Its lease is renewed before every call to a service.
        holder=Holder(
            "lease",
            column="lease_expires_at",
            timeout_seconds=LEASE_SECONDS,
            ends="takeover",
            renews_before_calls=True,
        ),
        # Each transient failure and each take-over of an expired lease adds one; a job that
        # fails again with its retries spent is dead-lettered. Progress (the next stage, a
        # batch written) gives the job a fresh budget.
        attempts=Attempts(
            "retry_count",
            limit=RETRY_LIMIT,
            resets_on=["stage", "chunk_cursor", "embeddings_done", "parser_job_id"],
            # Each counted failure waits out a backoff (or the service's Retry-After).
            backs_off=True,
        ),
        due="next_attempt_at",
        # An operator's retry queues a dead letter again (POST /jobs/{id}/retry).
        extra_moves=[(State.DEADLETTER.value, State.QUEUED.value)],
        stage="stage",
        stages=[stage.value for stage in STAGES],
        finished="kept",
        # The claim takes the first due job nobody has locked (FOR UPDATE SKIP LOCKED).
        skips_locked=True,
    )


_DOCUMENT = re.compile(r"document ([0-9a-f-]{36})\b")

# The queue's jobs are one user's; actions upload as either of two users.
_USER = uuid.UUID(int=1)
_OTHER_USER = uuid.UUID(int=2)
_OPERATOR = uuid.UUID(int=9)
_CUT_POINTS = ("blob_stored", "document_inserted")
_TOKEN_SECRET = "pipeline-models-core-token-secret"
_WEBHOOK_SECRET = "pipeline-models-core-webhook-secret"
_API_URL = "http://api.check"
DRAIN_BUDGET_USD = Decimal(1000)
MAX_UPLOAD_BYTES = ApiSettings.max_upload_bytes  # the API's default limit
# The old layer's invariants that read only the tables and the services' bills, judged
# after every step (the rest read its own audit trail; the core's queue invariants
# stand in for them).
STEP_INVARIANTS = ("buffers", "progress", "finalize", "billing")


class _ApiDied(Exception):
    """The API process dies at a point of an upload (raised from its checkpoint)."""


class ReferenceAdapter(Adapter):
    """The reference pipeline's workers, checked through the core's interposition."""

    spec: ClassVar[Spec] = reference_spec()
    schema: ClassVar[str] = SCHEMA
    # The pipeline layer's small configuration (batches of two, two retries, a circuit
    # one document's failures can open), so that a program of a few rules reaches every
    # batch boundary and limit; polling every half second.
    config: ClassVar[WorkerConfig] = dataclasses.replace(CHECK_CONFIG, idle_seconds=0.5)
    # Work takes time: a lease taken at the claim runs down while the worker works (a
    # worker that never renews it loses its job mid-stage, as in production).
    seconds_per_round_trip: ClassVar[float] = 1.0
    # BaseWorker.run reconnects when its connection is lost (DatabaseUnavailableError).
    reconnects: ClassVar[bool] = True
    # The instants its backoffs, the circuit's pause, the poll and a webhook's replay
    # window run out (and the last second they have not).
    clock_steps: ClassVar[tuple[int, ...]] = CLOCK_EDGES
    quiet_loggers: ClassVar[tuple[str, ...]] = ("pipeline_models.worker",)
    # The worker's SQL (a test plants a bug by changing it, as a mutant does in a copy).
    queries: ClassVar[Queries] = QUERIES

    @classmethod
    def in_schema(cls, schema: str) -> type[ReferenceAdapter]:
        """The same adapter on the pipeline's tables in ``schema`` (runs side by side on
        one server each take their own)."""
        return type(cls.__name__, (cls,), {"spec": reference_spec(schema), "schema": schema})

    def __init__(self) -> None:
        self._pipeline: ReferencePipeline | None = None
        self._database: Database | None = None
        self._uploads: dict[uuid.UUID, Document] = {}  # this example's, by document id
        self._expected: dict[uuid.UUID, ExpectedOutcome] = {}  # the model's, as they are needed
        # What the last step's check saw: the embeddings requests, each job's progress.
        self._senders = _Senders()
        self._requests_seen = 0
        self._embedded: dict[uuid.UUID, int] = {}
        # The actions' uploads, as sent: (user, document, its answer once answered).
        self._sent: list[list[Any]] = []
        self._jobs: list[tuple[uuid.UUID, uuid.UUID]] = []  # (job, its user), in upload order
        self._cap: Decimal | None = None
        self._tokens = TokenIssuer(_TOKEN_SECRET, clock=SystemClock(), ttl_seconds=10**9)

    # -- the three verbs ---------------------------------------------------------------

    async def setup(self, connection: asyncpg.Connection) -> None:
        database = self._database_at(self.dsn)
        if not _SCHEMAS_READY.get((database.url, self.schema)):
            await database.ensure_schema()
            _SCHEMAS_READY[(database.url, self.schema)] = True
        async with connection.transaction():
            await _search_schema_first(connection, self.schema)
            await database.reset(connection)

    async def enqueue(self, connection: asyncpg.Connection, number: int) -> Any:
        pipeline = self._pipeline_at(self.dsn)
        document = markdown_document(
            f"# Document {number}\n\nThe body of document {number}, short and plain.\n",
            filename=f"document-{number}.md",
        )
        async with connection.transaction():
            await _search_schema_last(connection, self.schema)
            upload = await pipeline.upload(connection, user_id=_USER, document=document)
        self._uploads[upload.document_id] = document
        self._jobs.append((upload.job_id, _USER))
        return upload.job_id

    async def run_worker(self, name: str, dsn: str) -> None:
        worker = self._pipeline_at(dsn).worker(name=name, queries=self.queries)
        try:
            await worker.run()
        finally:
            await worker.close()

    async def findings_after_each_step(self, connection: asyncpg.Connection) -> list[Finding]:
        """The document extension between any two round trips (the old layer's checks
        after every rule): the buffers hold a prefix of the planned chunks and their
        vectors, a live job's counters equal its buffers' rows, final rows only for a done
        job and exactly the model's, the ledger adds up to the budget and to what the
        services billed, and committed vectors are not paid for again (cost). Only
        documents whose upload was answered are held to the model (one on its way is not
        known yet)."""
        async with connection.transaction():
            await _search_schema_first(connection, self.schema)
            snapshot = await self._snapshot(connection)
        for document_id, document in self._uploads.items():
            if document_id not in self._expected:
                self._expected[document_id] = expected_outcome(
                    document_id, document, config=self.config
                )
        fakes = self._fakes()
        observation = Observation(
            snapshot,
            changes=(),
            history=(),
            blobs=frozenset(),
            embedding_inputs={},
            services_billed={
                PARSER: Usage(pages=fakes.parser.pages_billed),
                EMBEDDINGS: Usage(tokens=fakes.embeddings.tokens_billed),
            },
        )
        expectations = Expectations(self._expected, frozenset(), self.config)
        return self._committed_vectors_paid_again(snapshot) + [
            Finding(
                violation.invariant,
                violation.message
                + ("" if violation.document_id is None else f" (document {violation.document_id})"),
                None if violation.job_id is None else str(violation.job_id),
                violation.expected,
                violation.observed,
            )
            for violation in check(observation, expectations, names=STEP_INVARIANTS)
            if violation.document_id is None or violation.document_id in self._expected
        ]

    def _committed_vectors_paid_again(self, snapshot: Snapshot) -> list[Finding]:
        """Cost: chunks whose vectors the job had already committed (below its
        ``embeddings_done`` at the last step and now) sent to the embeddings service
        again by the worker that holds the job, or more than one batch of them by anyone.
        A crash repeats only the batch in flight, which was not committed; a worker that
        lost its lease while it paused before its request may send that one batch after
        the new holder committed it. A worker that starts a document's embedding again
        from the first chunk pays for every batch twice."""
        found = []
        batch = self.config.embed_batch_size
        requests, self._requests_seen = (
            self._senders.sent[self._requests_seen :],
            len(self._senders.sent),
        )
        for sender, user, texts in requests:
            document_id = uuid.UUID(user)
            expected = self._expected.get(document_id)
            job = next(iter(snapshot.jobs_of(document_id)), None)
            if expected is None or job is None:
                continue
            done = min(self._embedded.get(document_id, 0), job.embeddings_done)
            # A text may repeat within a document: committed only if every chunk
            # carrying it is below the mark.
            last: dict[str, int] = {}
            for chunk in expected.chunks:
                last[chunk.text] = max(chunk.ordinal, last.get(chunk.text, -1))
            again = sorted({last[text] for text in texts if last.get(text, done) < done})
            holds = job.state is State.WORKING and job.owner == sender
            if again and (holds or len(again) > batch):
                found.append(
                    Finding(
                        "cost",
                        "chunks whose vectors were already committed were paid for again "
                        f"(document {document_id})",
                        str(job.job_id),
                        f"only chunks from ordinal {done} on (embeddings_done {done})",
                        f"{sender or 'a worker'}{' (holding the job)' if holds else ''} "
                        f"sent ordinals {again} again",
                    )
                )
        self._embedded = {job.document_id: job.embeddings_done for job in snapshot.jobs.values()}
        return found

    async def findings_at_end(self, connection: asyncpg.Connection) -> list[Finding]:
        """The document extension: once every job has finished, each document whose job
        succeeded holds exactly the chunks and vectors the model predicts for its text
        (no chunk lost or doubled, no buffer row left, the document complete), and each
        dead-lettered job says why. (A job may be dead-lettered by a crash loop the
        program made, so only a succeeded job is held to the prediction.)"""
        async with connection.transaction():
            await _search_schema_first(connection, self.schema)
            snapshot = await self._snapshot(connection)
        expected = expected_outcomes(list(self._uploads.items()), config=self.config)
        succeeded = {
            str(document_id)
            for document_id in expected
            if [job.state for job in snapshot.jobs_of(document_id)] == [State.DONE]
        }
        found = [
            Finding(
                "documents",
                "a document has no job: nothing will ever process it",
                None,
                "every stored document with its job",
                f"document {document_id} ({document.status}), no job",
            )
            for document_id, document in snapshot.documents.items()
            if not snapshot.jobs_of(document_id)
        ]
        for problem in discrepancies(expected, snapshot):
            named = _DOCUMENT.match(problem)
            document = named.group(1) if named else None
            if document in succeeded or "without last_error" in problem:
                found.append(Finding("documents", problem, _job_of(snapshot, document)))
        return found

    async def teardown(self, connection: asyncpg.Connection) -> None:
        """The in-process API's pool and client go before the server does."""
        api = _APIS.pop(self._api_key, None)
        if api is not None:
            app, client = api
            await app.state.runtime.close()
            await client.aclose()

    # -- the pipeline's other users -------------------------------------------------------

    async def heal(self) -> None:
        """When the drain gets no further: both services heal and the operator lifts any
        cap above what a program can spend (a job held for the budget is then released)."""
        fakes = self._fakes()
        fakes.parser.faults = FaultPlan.healthy()
        fakes.embeddings.faults = FaultPlan.healthy()
        if self._cap is not None:
            await self.cap_the_spending(DRAIN_BUDGET_USD)

    async def arrive_late(self) -> None:
        """Once every job is finished, the parser announces each of its jobs' outcomes
        once more, signed as it sends them (at-least-once delivery: a notice may come
        again, long after the poller moved the job on). Each must change nothing."""
        parser = self._fakes().parser
        for job in list(parser.jobs.values()):
            if job.webhook_url is not None:
                await parser.redeliver(parser.webhook_for(job))

    @action(plan=PARSER_FAULT_PLANS)
    async def put_faults_on_the_parser(self, plan: FaultPlan) -> None:
        """The parser answers its next requests as ``plan`` says, then heals."""
        self._pipeline_at(self.dsn).fakes.parser.faults = plan  # type: ignore[union-attr]

    @action(plan=EMBEDDINGS_FAULT_PLANS)
    async def put_faults_on_the_embeddings(self, plan: FaultPlan) -> None:
        """The embeddings service answers its next requests as ``plan`` says."""
        self._pipeline_at(self.dsn).fakes.embeddings.faults = plan  # type: ignore[union-attr]

    @action(
        interleaved=True,
        document=st.one_of(UPLOADS, BOUNDARY_DOCUMENTS),
        by_the_other_user=st.booleans(),
    )
    async def upload_a_document(self, document: Document, by_the_other_user: bool) -> None:
        """A document of any kind and size (the queue's own are small markdown), or one at
        an edge: exactly a batch of chunks (or one more, or one fewer), no text, no byte,
        one byte, a word a chunk long, the size limit's bytes."""
        user = _OTHER_USER if by_the_other_user else _USER
        sent = [user, document, None]
        self._sent.append(sent)
        sent[2] = await self._upload(user, document)
        if sent[2] is None:  # refused at the door: nothing to send again
            self._sent.remove(sent)

    @action(interleaved=True, pick=st.integers(0, 7), by_the_other_user=st.booleans())
    async def upload_the_same_bytes_again(
        self, pick: int, by_the_other_user: bool
    ) -> list[Finding]:
        """A document uploaded before (or on its way: started, not answered yet) is sent
        again: by its owner it is the same document (no second job); by another user it
        is that user's own."""
        if not self._sent:
            return []
        sent = self._sent[pick % len(self._sent)]
        user, document, _ = sent
        again_by = (_OTHER_USER if user == _USER else _USER) if by_the_other_user else user
        again = await self._upload(again_by, document)
        first = sent[2]
        if again is None or first is None:  # the first still on its way: no answer to compare
            return []
        same = again.document_id == first.document_id
        if again_by == user and (again.created or not same):
            return [
                Finding(
                    "uploads",
                    "the same bytes from the same user made a second document",
                    str(again.job_id),
                    f"document {first.document_id}, not created again",
                    f"document {again.document_id} (created: {again.created})",
                )
            ]
        if again_by != user and same:
            return [
                Finding(
                    "uploads",
                    "another user's upload of the same bytes was given the first user's document",
                    str(again.job_id),
                    "a document of the second user's own",
                    f"document {again.document_id}, the first user's",
                )
            ]
        return []

    @action(point=st.sampled_from(_CUT_POINTS))
    async def upload_cut_short(self, point: str) -> None:
        """The API process dies at ``point`` of an upload: the client hears nothing."""
        number = len(self._sent) + 100
        document = markdown_document(
            f"# Cut {number}\n\nAn upload whose API process died, {point}.\n",
            filename=f"cut-{number}.md",
        )

        async def die(reached: str, _: asyncpg.Connection) -> None:
            if reached == point:
                raise _ApiDied(reached)

        try:
            await self._upload(_USER, document, checkpoint=die)
        except _ApiDied:
            return

    async def _upload(
        self, user: uuid.UUID, document: Document, *, checkpoint: Any = None
    ) -> Upload | None:
        """Upload as the API does, on a connection of the action's own (None: refused)."""
        pipeline = self._pipeline_at(self.dsn)
        try:
            check_upload(
                document.data,
                filename=document.filename,
                declared_type=document.content_type,
                max_bytes=MAX_UPLOAD_BYTES,
            )
        except UploadRejectedError:
            return None  # refused at the door, as the API does: nothing stored
        connection = await pipeline.database.connect(application_name="pipeline-models api")
        try:
            upload = await pipeline.upload(
                connection,
                user_id=user,
                document=document,
                queries=self.queries,
                checkpoint=checkpoint,
            )
        finally:
            await connection.close()
        self._uploads[upload.document_id] = document
        if upload.created:
            self._jobs.append((upload.job_id, user))
        return upload

    @action(interleaved=True)
    async def deliver_parser_webhooks(self) -> None:
        """The parser sends the webhooks it has queued (each job parsed, or failed)."""
        parser = self._fakes().parser
        for delivery in list(parser.outbox):
            await parser.redeliver(delivery)

    @action()
    async def deliver_a_webhook_twice(self) -> None:
        """The parser announces its last delivered webhook's job again, signed as it sends
        it (at-least-once delivery; the same bytes resent past the receiver's replay window
        would only be rejected as stale)."""
        parser = self._fakes().parser
        if parser.delivered:
            job = parser.jobs.get(parser.delivered[-1].webhook.job_id)
            if job is not None:
                await parser.redeliver(parser.webhook_for(job))

    @action(how=st.sampled_from(["tampered", "stale"]))
    async def deliver_a_forged_webhook(self, how: Literal["tampered", "stale"]) -> list[Finding]:
        """An attacker sends a genuine webhook changed after signing, or replayed late."""
        parser = self._fakes().parser
        genuine = [*parser.delivered, *parser.outbox]
        if not genuine:
            return []
        forgery = genuine[-1].forged(how, secret=_WEBHOOK_SECRET, now=time.time())
        status = (await parser.send_forgery(forgery)).status_code
        return self._answer(None, f"a {how} webhook", status, {401})

    @action(pick=st.integers(0, 7))
    async def look_at_a_job_as_the_other_user(self, pick: int) -> list[Finding]:
        """A user asks for a job that is another user's: it must not exist for them."""
        if not self._jobs:
            return []
        job, owner = self._jobs[pick % len(self._jobs)]
        stranger = _OTHER_USER if owner == _USER else _USER
        response = await self._api().get(f"/jobs/{job}", headers=self._auth(stranger))
        return self._answer(job, "another user's job", response.status_code, {404})

    @action(pick=st.integers(0, 7))
    async def retry_a_job_as_operator(self, pick: int) -> list[Finding]:
        """The job's owner asks to retry it: a dead letter is queued again (200), any
        other job is refused (409)."""
        if not self._jobs:
            return []
        job, owner = self._jobs[pick % len(self._jobs)]
        seen = await self._api().get(f"/jobs/{job}", headers=self._auth(owner))
        dead = seen.status_code == 200 and seen.json().get("state") == State.DEADLETTER.value
        response = await self._api().post(f"/jobs/{job}/retry", headers=self._auth(owner))
        what = f"a retry of a {'dead-lettered' if dead else 'live or done'} job"
        return self._answer(job, what, response.status_code, {200} if dead else {409})

    @action(limit=st.sampled_from(BUDGET_LIMITS_USD))
    async def cap_the_spending(self, limit: Decimal) -> list[Finding]:
        """The operator caps the spending, or raises the cap (never lowers it): a cap
        below the next call's estimate holds its job, a raise releases it."""
        if self._cap is not None and limit <= self._cap:
            return []
        self._cap = limit
        response = await self._api().put(
            "/operator/budget", json={"max_cost_usd": str(limit)}, headers=self._auth(_OPERATOR)
        )
        return self._answer(None, "the operator's cap", response.status_code, {200})

    def _answer(
        self, job: uuid.UUID | None, what: str, status: int | None, expected: set[int]
    ) -> list[Finding]:
        if status in expected:
            return []
        return [
            Finding(
                "api",
                f"{what} was answered {status}",
                None if job is None else str(job),
                " or ".join(str(code) for code in sorted(expected)),
                str(status),
            )
        ]

    def _auth(self, user: uuid.UUID) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._tokens.issue(user)}"}

    def _fakes(self) -> Fakes:
        fakes = self._pipeline_at(self.dsn).fakes
        assert fakes is not None
        return fakes

    def _api(self) -> httpx.AsyncClient:
        self._pipeline_at(self.dsn)
        return _APIS[self._api_key][1]

    # -- one pipeline per example, shared by its workers --------------------------------

    def _database_at(self, url: str) -> Database:
        """One per schema and process: the in-process API keeps its database (and its
        pool) from example to example."""
        if self._database is None:
            key = (url, self.schema)
            if key not in _DATABASES:
                _DATABASES[key] = Database(url, schema=self.schema)
            self._database = _DATABASES[key]
        return self._database

    def _pipeline_at(self, url: str) -> ReferencePipeline:
        """The pipeline every worker of this example shares: one parser and one
        embeddings service (a job parsed by one worker is polled by its successor)."""
        if self._pipeline is None:
            fakes = Fakes(
                create_parser_app(api_key=FAKE_API_KEY, webhook_secrets=(_WEBHOOK_SECRET,)),
                create_embeddings_app(api_key=FAKE_API_KEY),
            )
            services = build_services(
                self.config,
                parser_http=httpx.AsyncClient(
                    transport=CheckedTransport(
                        FaultTransport(httpx.ASGITransport(app=fakes.parser_app))
                    ),
                    base_url="http://parser.fake",
                    timeout=SERVICE_TIMEOUT,
                ),
                parser_key=FAKE_API_KEY,
                embeddings_http=httpx2.AsyncClient(
                    transport=CheckedTransport(
                        self._senders.wrap(
                            FaultTransport(httpx2.ASGITransport(app=fakes.embeddings_app))
                        )
                    ),
                    base_url="http://embeddings.fake",
                    timeout=30.0,
                ),
                embeddings_url="http://embeddings.fake/v1",
                embeddings_key=FAKE_API_KEY,
                webhook_url=f"{_API_URL}/webhooks/parser",
            )
            self._pipeline = ReferencePipeline(
                self._database_at(url),
                LocalDirectoryStorage(_blob_root()),
                services,
                # The wall clock: while checking, the core's clock is what it reads.
                clock=SystemClock(),
                config=self.config,
                fakes=fakes,
                # Capped only once an operator sets a limit.
                budget=Budget(),
            )
            fakes.parser.webhook_client = self._api_for(self._pipeline)
        return self._pipeline

    async def _snapshot(self, connection: asyncpg.Connection) -> Snapshot:
        """Every pipeline table of this adapter's schema at one instant. The statement is
        named for the schema: its result is rows of that schema's tables, and a cached
        statement read under another schema's search path would fail as changed."""
        sql = f"-- {self.schema}\n{CHECKER_QUERIES['snapshot_all'].sql}"
        return snapshot_from_row(await connection.fetchrow(sql))

    @property
    def _api_key(self) -> tuple[str, str, int]:
        return (self.dsn, self.schema, id(self.queries))

    def _api_for(self, pipeline: ReferencePipeline) -> httpx.AsyncClient:
        """The in-process API serving ``pipeline`` with the worker's SQL (built once per
        schema and SQL: ~20 ms)."""
        key = self._api_key
        if key in _APIS:
            app, client = _APIS[key]
            app.state.runtime.use(pipeline)
            return client
        settings = ApiSettings(
            token_secret=_TOKEN_SECRET,
            webhook_secrets=(_WEBHOOK_SECRET,),
            operators=frozenset({_OPERATOR}),
        )
        app = create_api(pipeline, settings, queries=self.queries)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=_API_URL)
        _APIS[key] = (app, client)
        return client


class _Senders(httpx.AsyncBaseTransport, httpx2.AsyncBaseTransport):
    """Who sent each embeddings request that was answered: the checker's actor (the
    worker the scheduler was running), the request's user tag (the pipeline sends its
    document id) and its texts."""

    def __init__(self) -> None:
        self.sent: list[tuple[str | None, str, list[str]]] = []
        self.inner: Any = None

    def wrap(self, inner: Any) -> _Senders:
        self.inner = inner
        return self

    async def handle_async_request(self, request: Any) -> Any:
        response = await self.inner.handle_async_request(request)
        if request.url.path.endswith("/embeddings") and response.status_code == 200:
            body = json.loads(await request.aread())
            texts = body.get("input")
            if isinstance(body.get("user"), str) and isinstance(texts, list):
                actor = ACTOR.get()
                self.sent.append((actor.name if actor else None, body["user"], texts))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


_SCHEMAS_READY: dict[tuple[str, str], bool] = {}  # by database and schema
_DATABASES: dict[tuple[str, str], Database] = {}
_APIS: dict[tuple[str, str, int], tuple[Any, httpx.AsyncClient]] = {}
_BLOBS: list[str] = []


def _blob_root() -> str:
    """One directory for every example's blobs (a blob's key is its content's hash, so
    examples share them safely), removed when the process ends."""
    if not _BLOBS:
        _BLOBS.append(tempfile.mkdtemp(prefix="pipeline-models-reference-"))
        atexit.register(shutil.rmtree, _BLOBS[0], True)
    return _BLOBS[0]


def _job_of(snapshot: Snapshot, document: str | None) -> str | None:
    if document is None:
        return None
    jobs = snapshot.jobs_of(uuid.UUID(document))
    return str(jobs[0].job_id) if jobs else None


async def _search_schema_first(connection: asyncpg.Connection, schema: str) -> None:
    """For one transaction of the checker's connection: the reference schema first (a
    reset names its tables unqualified and restarts identities in current_schema())."""
    await connection.execute(
        "SELECT set_config('search_path', $1 || ', ' || current_setting('search_path'), true)",
        f'"{schema}"',
    )


async def _search_schema_last(connection: asyncpg.Connection, schema: str) -> None:
    """For one transaction: the reference's tables visible, the checker's clock schema
    still first (an upload's SQL ``now()`` is the checker's time)."""
    await connection.execute(
        "SELECT set_config('search_path', current_setting('search_path') || ', ' || $1, true)",
        f'"{schema}"',
    )


__all__ = ["SCHEMA", "ReferenceAdapter", "reference_spec"]

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
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
import uuid
from typing import Any, ClassVar

import asyncpg
import httpx
import httpx2

from pipeline_models.clock import SystemClock
from pipeline_models.core import Adapter, Attempts, Holder, Spec, States
from pipeline_models.core.interpose import CheckedTransport
from pipeline_models.core.invariants import Finding
from pipeline_models.database import Database
from pipeline_models.documents import Document, markdown_document
from pipeline_models.fakes import FaultTransport, create_embeddings_app, create_parser_app
from pipeline_models.lifecycle import STAGES, State
from pipeline_models.model import discrepancies, expected_outcomes
from pipeline_models.pipeline.config import WorkerConfig
from pipeline_models.pipeline.reference import (
    FAKE_API_KEY,
    SERVICE_TIMEOUT,
    Fakes,
    ReferencePipeline,
    build_services,
)
from pipeline_models.pipeline.retry import RetryPolicy
from pipeline_models.pipeline.storage import LocalDirectoryStorage
from pipeline_models.queries import QUERIES, Queries
from pipeline_models.snapshot import Snapshot, take_snapshot

SCHEMA = "pm_reference"
LEASE_SECONDS = 30
RETRY_LIMIT = RetryPolicy().limit


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
        holder=Holder(
            "lease", column="lease_expires_at", timeout_seconds=LEASE_SECONDS, ends="takeover"
        ),
        # Each transient failure and each take-over of an expired lease adds one; a job that
        # fails again with its retries spent is dead-lettered. Progress (the next stage, a
        # batch written) gives the job a fresh budget.
        attempts=Attempts(
            "retry_count",
            limit=RETRY_LIMIT,
            resets_on=["stage", "chunk_cursor", "embeddings_done", "parser_job_id"],
        ),
        due="next_attempt_at",
        stage="stage",
        stages=[stage.value for stage in STAGES],
        finished="kept",
    )


_DOCUMENT = re.compile(r"document ([0-9a-f-]{36})\b")

# One user uploads every document: the queue layer does not look at ownership.
_USER = uuid.UUID(int=1)


class ReferenceAdapter(Adapter):
    """The reference pipeline's workers, checked through the core's interposition."""

    spec: ClassVar[Spec] = reference_spec()
    schema: ClassVar[str] = SCHEMA
    config: ClassVar[WorkerConfig] = WorkerConfig(lease_seconds=LEASE_SECONDS, idle_seconds=0.5)
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

    # -- the three verbs ---------------------------------------------------------------

    async def setup(self, connection: asyncpg.Connection) -> None:
        database = self._database_at(self.dsn)
        if not _SCHEMAS_READY.get(database.url):
            await database.ensure_schema()
            _SCHEMAS_READY[database.url] = True
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
        return upload.job_id

    async def run_worker(self, name: str, dsn: str) -> None:
        worker = self._pipeline_at(dsn).worker(name=name, queries=self.queries)
        try:
            await worker.run()
        finally:
            await worker.close()

    async def findings_at_end(self, connection: asyncpg.Connection) -> list[Finding]:
        """The document extension: once every job has finished, each document whose job
        succeeded holds exactly the chunks and vectors the model predicts for its text
        (no chunk lost or doubled, no buffer row left, the document complete), and each
        dead-lettered job says why. (A job may be dead-lettered by a crash loop the
        program made, so only a succeeded job is held to the prediction.)"""
        async with connection.transaction():
            await _search_schema_first(connection, self.schema)
            snapshot = await take_snapshot(connection)
        expected = expected_outcomes(list(self._uploads.items()), config=self.config)
        succeeded = {
            str(document_id)
            for document_id in expected
            if [job.state for job in snapshot.jobs_of(document_id)] == [State.DONE]
        }
        found = []
        for problem in discrepancies(expected, snapshot):
            named = _DOCUMENT.match(problem)
            document = named.group(1) if named else None
            if document in succeeded or "without last_error" in problem:
                found.append(Finding("documents", problem, _job_of(snapshot, document)))
        return found

    # -- one pipeline per example, shared by its workers --------------------------------

    def _database_at(self, url: str) -> Database:
        if self._database is None:
            self._database = Database(url, schema=self.schema)
        return self._database

    def _pipeline_at(self, url: str) -> ReferencePipeline:
        """The pipeline every worker of this example shares: one parser and one
        embeddings service (a job parsed by one worker is polled by its successor)."""
        if self._pipeline is None:
            fakes = Fakes(
                create_parser_app(api_key=FAKE_API_KEY),
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
                        FaultTransport(httpx2.ASGITransport(app=fakes.embeddings_app))
                    ),
                    base_url="http://embeddings.fake",
                    timeout=30.0,
                ),
                embeddings_url="http://embeddings.fake/v1",
                embeddings_key=FAKE_API_KEY,
            )
            self._pipeline = ReferencePipeline(
                self._database_at(url),
                LocalDirectoryStorage(_blob_root()),
                services,
                # The wall clock: while checking, the core's clock is what it reads.
                clock=SystemClock(),
                config=self.config,
                fakes=fakes,
            )
        return self._pipeline


_SCHEMAS_READY: dict[str, bool] = {}
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

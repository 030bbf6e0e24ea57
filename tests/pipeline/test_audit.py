"""The checker's audit trail on a real Postgres, and the invariants read through it.

The trigger in ``sql/audit.sql`` records every committed change of a job row; the
transition and fencing invariants read only that. These tests show what it records (and
what it does not: a rolled-back change), that a bad change made by raw SQL is caught
through a real snapshot and history, and that the reference worker, crash included,
passes every invariant after every step.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from pipeline_models.clock import ManualClock
from pipeline_models.database import Database
from pipeline_models.documents import corrupt_pdf, markdown_document
from pipeline_models.errors import DatabaseUnavailableError
from pipeline_models.history import AUDIT_TABLE, History, JobChange, install_audit
from pipeline_models.invariants import (
    Expectations,
    Observation,
    assert_invariants,
    check,
    liveness,
)
from pipeline_models.lifecycle import Stage, TransitionKind
from pipeline_models.model import ExpectedOutcome, expected_outcome
from pipeline_models.pipeline.checkpoints import Checkpoint
from pipeline_models.pipeline.chunking import Chunker
from pipeline_models.pipeline.config import WorkerConfig
from pipeline_models.pipeline.worker import BaseWorker, ClaimedJob, StepAction
from pipeline_models.queries import QUERIES
from pipeline_models.snapshot import take_snapshot
from tests.conftest import PipelineFactory

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=30)
ALICE = uuid.UUID(int=0xA11CE)
API = "pipeline-models api"
WORKERS = frozenset({"worker-1", "worker-2"})
# Small chunks, batches and vectors: a short document takes several claims per stage.
CONFIG = WorkerConfig(
    embed_dimensions=8,
    chunk_batch_size=2,
    embed_batch_size=2,
    chunker=Chunker(min_chars=40, max_chars=120),
    parser_poll_seconds=0.01,
    idle_seconds=0.01,
)
TEXT = "\n\n".join(
    f"## Part {n}\n\nParagraph {n} says something about audits, leases and fences."
    for n in range(1, 6)
)


@pytest.fixture
async def audited(db: asyncpg.Connection, clean_pipeline_database: Database) -> asyncpg.Connection:
    """The emptied database with the audit trigger installed and its trail empty too."""
    await install_audit(db)
    # Resets must empty the audit table as well (its ids restart), or one test's trail
    # would show in the next.
    if AUDIT_TABLE not in clean_pipeline_database.extra_tables:
        clean_pipeline_database.extra_tables = (
            *clean_pipeline_database.extra_tables,
            AUDIT_TABLE,
        )
    await clean_pipeline_database.reset(db)
    return db


async def connect_as(database: Database, name: str) -> asyncpg.Connection:
    return await database.connect(application_name=name)


async def insert_upload(connection: asyncpg.Connection, at: datetime = T0) -> uuid.UUID:
    """A document and its job, inserted with the upload's own queries; the job id."""
    document_id, job_id = uuid.uuid4(), uuid.uuid4()
    sha = uuid.uuid4().hex
    async with connection.transaction():
        await connection.execute(
            QUERIES["insert_document"].sql,
            document_id,
            ALICE,
            "a.md",
            "text/markdown",
            sha,
            1,
            f"raw/{ALICE}/{sha}",
            at,
        )
        await connection.execute(QUERIES["insert_job"].sql, job_id, document_id, ALICE, "c", at)
    return job_id


async def test_the_trigger_records_inserts_updates_and_deletes_with_actor_and_time(
    audited: asyncpg.Connection, clean_pipeline_database: Database
) -> None:
    api = await connect_as(clean_pipeline_database, API)
    worker = await connect_as(clean_pipeline_database, "worker-1")
    try:
        job_id = await insert_upload(api)
        claimed_at = T0 + timedelta(seconds=5)
        claim = await worker.fetchrow(
            QUERIES["claim_job"].sql, "worker-1", claimed_at, claimed_at + LEASE, 3
        )
        assert claim is not None
        assert claim["job_id"] == job_id
        await audited.execute("DELETE FROM upload_jobs WHERE job_id = $1", job_id)
    finally:
        await api.close()
        await worker.close()

    history = History()
    created, claimed, deleted = await history.refresh(audited)
    assert [c.audit_id for c in history.changes] == [1, 2, 3]
    assert (created.operation, created.actor, created.at) == ("INSERT", API, T0)
    assert (created.old, created.new_stage, created.new_state) == (None, "queued", "queued")
    assert created.kind is TransitionKind.CREATE
    assert (claimed.operation, claimed.actor, claimed.at) == ("UPDATE", "worker-1", claimed_at)
    assert (claimed.old_state, claimed.new_state) == ("queued", "working")
    assert (claimed.old_owner, claimed.new_owner) == (None, "worker-1")
    assert claimed.new_lease_expires_at == claimed_at + LEASE
    assert claimed.kind is TransitionKind.CLAIM
    # A delete is recorded with the row as it was; its time is the row's last update.
    assert (deleted.operation, deleted.actor, deleted.at) == ("DELETE", "test", claimed_at)
    assert (deleted.old_state, deleted.old_owner, deleted.new) == ("working", "worker-1", None)
    assert deleted.kind is None
    assert await history.refresh(audited) == []

    observation = Observation(
        await take_snapshot(audited), history.changes, history.changes, frozenset(), {}
    )
    found = check(
        observation, Expectations({}, WORKERS, WorkerConfig()), names=["transitions", "fencing"]
    )
    assert [(v.invariant, v.job_id, v.observed) for v in found] == [
        ("transitions", job_id, "DELETE")
    ]


async def test_a_stage_skipped_by_raw_sql_is_caught_by_transitions(
    make_pipeline: PipelineFactory, audited: asyncpg.Connection, tmp_path: Path
) -> None:
    document = markdown_document(TEXT)
    pipeline = make_pipeline(config=CONFIG)
    upload = await pipeline.upload(audited, user_id=ALICE, document=document)
    history = History()
    await history.refresh(audited)
    expectations = Expectations(
        {upload.document_id: expected_outcome(upload.document_id, document, config=CONFIG)},
        WORKERS,
        CONFIG,
    )
    blobs = blob_keys(tmp_path / "blobs")

    async def observe() -> Observation:
        new = await history.refresh(audited)
        return Observation(await take_snapshot(audited), new, history.changes, blobs, {})

    assert check(await observe(), expectations) == []
    await audited.execute(
        "UPDATE upload_jobs SET stage = 'parsing' WHERE job_id = $1", upload.job_id
    )
    found = check(await observe(), expectations)
    assert len(found) == 1
    (violation,) = found
    assert violation.invariant == "transitions"
    assert (violation.job_id, violation.document_id) == (upload.job_id, upload.document_id)
    assert "(queued, queued) -> (parsing, queued) by 'test'" in violation.message
    assert violation.observed == "(parsing, queued)"
    # From (queued, queued) the only way on is a claim.
    assert violation.expected == "one of (queued, working)"


async def test_a_rolled_back_transaction_leaves_no_audit_row(
    audited: asyncpg.Connection, clean_pipeline_database: Database
) -> None:
    job_id = await insert_upload(audited)
    history = History()
    assert len(await history.refresh(audited)) == 1

    transaction = audited.transaction()
    await transaction.start()
    await audited.execute(
        "UPDATE upload_jobs SET stage = 'embedded', state = 'done' WHERE job_id = $1", job_id
    )
    # The trigger wrote its row inside the transaction; the rollback takes it away.
    assert await audited.fetchval(f"SELECT count(*) FROM {AUDIT_TABLE}") == 2
    await transaction.rollback()
    assert await history.refresh(audited) == []

    # A worker whose backend dies inside its transaction commits nothing either.
    worker = await connect_as(clean_pipeline_database, "worker-1")
    await worker.execute("BEGIN")
    claimed = await worker.fetchrow(
        QUERIES["claim_job"].sql, "worker-1", T0, T0 + LEASE, CONFIG.retry.limit
    )
    assert claimed is not None
    await audited.execute("SELECT pg_terminate_backend($1)", worker.get_server_pid())
    worker.terminate()
    assert await history.refresh(audited) == []
    assert await audited.fetchval(f"SELECT count(*) FROM {AUDIT_TABLE}") == 1


async def test_a_row_committed_after_rows_with_higher_ids_is_still_read(
    audited: asyncpg.Connection, clean_pipeline_database: Database
) -> None:
    # A worker parked before its commit holds an audit row with a low id; others commit
    # rows with higher ids meanwhile. Paging by id would skip the late row for good.
    first, second = await insert_upload(audited), await insert_upload(audited)
    history = History()
    assert len(await history.refresh(audited)) == 2
    slow = await connect_as(clean_pipeline_database, "worker-slow")
    try:
        await slow.execute("BEGIN")
        await slow.execute("UPDATE upload_jobs SET retry_count = 1 WHERE job_id = $1", first)
        await audited.execute("UPDATE upload_jobs SET retry_count = 1 WHERE job_id = $1", second)
        [fast] = await history.refresh(audited)
        assert (fast.job_id, fast.actor) == (second, "test")
        await slow.execute("COMMIT")
    finally:
        await slow.close()
    [late] = await history.refresh(audited)
    assert (late.job_id, late.actor) == (first, "worker-slow")
    assert late.audit_id < fast.audit_id
    assert await history.refresh(audited) == []


async def test_the_reference_worker_keeps_every_invariant_through_a_crash(
    make_pipeline: PipelineFactory, audited: asyncpg.Connection, clock: ManualClock, tmp_path: Path
) -> None:
    """Two documents, two workers, and one crash after an embedding call: worker-1's
    backend is terminated after its second batch came back, it reconnects, its lease
    expires, and it takes its own job back. Every invariant holds after every step, and
    the documents end as predicted."""
    pipeline = make_pipeline(config=CONFIG)
    documents = {"text": markdown_document(TEXT), "corrupt": corrupt_pdf(3)}
    outcomes: dict[uuid.UUID, ExpectedOutcome] = {}
    for document in documents.values():
        upload = await pipeline.upload(audited, user_id=ALICE, document=document)
        outcomes[upload.document_id] = expected_outcome(upload.document_id, document, config=CONFIG)
    expectations = Expectations(outcomes, WORKERS, CONFIG)
    history = History()
    crashes = 0

    async def crash_once(worker: str, checkpoint: Checkpoint, job: ClaimedJob | None) -> None:
        nonlocal crashes
        if (
            checkpoint is Checkpoint.AFTER_CALL
            and job is not None
            and job.stage is Stage.EMBEDDING
            and job.embeddings_done > 0
            and not crashes
        ):
            crashes += 1
            await audited.execute("SELECT pg_terminate_backend($1)", await first.backend_pid())

    async def observe() -> Observation:
        new = await history.refresh(audited)
        assert pipeline.fakes is not None
        inputs = pipeline.fakes.embeddings.inputs_by_user
        return Observation(
            snapshot=await take_snapshot(audited),
            changes=new,
            history=tuple(history.changes),
            blobs=blob_keys(tmp_path / "blobs"),
            embedding_inputs={uuid.UUID(user): count for user, count in inputs.items()},
        )

    first = pipeline.worker(name="worker-1", checkpoints=crash_once)
    second = pipeline.worker(name="worker-2")
    await first.start()
    await second.start()
    try:
        for _ in range(200):
            progressed = await step_and_check(first, observe, expectations, clock)
            progressed |= await step_and_check(second, observe, expectations, clock)
            if not await audited.fetchval(QUERIES["count_live_jobs"].sql):
                break
            if not progressed:
                due = await audited.fetchval(QUERIES["next_due_at"].sql)
                clock.set(max(due, clock.now()))
        else:
            raise AssertionError("the jobs did not finish in 200 rounds")
    finally:
        await first.close()
        await second.close()

    final = await observe()
    assert liveness(final.snapshot, expectations) == []
    assert crashes == 1
    assert any(is_own_reclaim(change) for change in history.changes)
    (text_id,) = (d for d, o in outcomes.items() if o.chunks)
    # The crash cost one repeated batch, no more.
    planned = len(outcomes[text_id].chunks)
    assert planned < final.embedding_inputs[text_id] <= planned + CONFIG.embed_batch_size


async def step_and_check(
    worker: BaseWorker,
    observe: Callable[[], Awaitable[Observation]],
    expectations: Expectations,
    clock: ManualClock,
) -> bool:
    """One step of ``worker`` (a crashed one reconnects and, once its lease is gone,
    claims again at once), with every invariant checked after it; whether it did work."""
    try:
        result = await worker.run_once()
    except DatabaseUnavailableError:
        assert_invariants(await observe(), expectations)
        clock.advance(CONFIG.lease_seconds + 1)
        await worker.start()
        result = await worker.run_once()
    assert_invariants(await observe(), expectations)
    return result.action is not StepAction.IDLE


def is_own_reclaim(change: JobChange) -> bool:
    return (
        change.old_state == change.new_state == "working"
        and change.old_owner == change.new_owner == change.actor
        and change.new_retry_count == (change.old_retry_count or 0) + 1
    )


def blob_keys(root: Path) -> frozenset[str]:
    """The keys of the raw blobs stored under ``root``."""
    keys: set[str] = set()
    for directory, _, files in os.walk(root / "raw"):
        keys.update(str(Path(directory, name).relative_to(root)) for name in files)
    return frozenset(keys)

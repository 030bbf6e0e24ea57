"""The reference BaseWorker end to end, on a real Postgres and the in-process fakes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

import asyncpg
import pytest

from pipeline_models.clock import ManualClock, SystemClock
from pipeline_models.documents import (
    Document,
    empty_document,
    large_markdown_document,
    markdown_document,
    pdf_document,
    sample_documents,
    text_document,
    undecodable_text,
)
from pipeline_models.errors import DatabaseUnavailableError
from pipeline_models.fakes import Fault, FaultPlan
from pipeline_models.lifecycle import Stage, State
from pipeline_models.model import discrepancies, expected_outcomes
from pipeline_models.pipeline.checkpoints import Checkpoint
from pipeline_models.pipeline.reference import ReferencePipeline
from pipeline_models.pipeline.worker import BaseWorker, ClaimedJob, StepAction
from pipeline_models.snapshot import take_snapshot
from tests.conftest import TEST_CONFIG, PipelineFactory

pytestmark = pytest.mark.anyio

ALICE = uuid.UUID(int=1)
BOB = uuid.UUID(int=2)


async def upload_all(
    pipeline: ReferencePipeline,
    db: asyncpg.Connection,
    documents: Sequence[Document],
    users: Sequence[uuid.UUID] = (ALICE,),
) -> list[tuple[uuid.UUID, Document]]:
    accepted = []
    for index, document in enumerate(documents):
        upload = await pipeline.upload(db, user_id=users[index % len(users)], document=document)
        accepted.append((upload.document_id, document))
    return accepted


async def assert_ended_as_predicted(
    db: asyncpg.Connection, pipeline: ReferencePipeline, accepted: list[tuple[uuid.UUID, Document]]
) -> None:
    snapshot = await take_snapshot(db)
    assert discrepancies(expected_outcomes(accepted, config=pipeline.config), snapshot) == []


async def started(*workers: BaseWorker) -> list[BaseWorker]:
    for worker in workers:
        await worker.start()
    return list(workers)


async def job_row(db: asyncpg.Connection) -> asyncpg.Record:
    rows = await db.fetch("SELECT * FROM upload_jobs")
    assert len(rows) == 1
    return rows[0]


async def step_until(worker: BaseWorker, db: asyncpg.Connection, stage: Stage) -> None:
    """Run one worker until the single job reaches ``stage``."""
    for _ in range(50):
        if (await job_row(db))["stage"] == stage.value:
            return
        result = await worker.run_once()
        assert result.action is not StepAction.IDLE, f"stuck before {stage}"
    raise AssertionError(f"never reached {stage}")


async def run_until_crash(worker: BaseWorker, steps: int = 200) -> None:
    for _ in range(steps):
        await worker.run_once()


class Pauser:
    """A checkpoint hook that parks one worker at one checkpoint of one stage."""

    def __init__(self, worker: str, checkpoint: Checkpoint, stage: Stage) -> None:
        self.target = (worker, checkpoint, stage)
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, worker: str, checkpoint: Checkpoint, job: ClaimedJob | None) -> None:
        if job is not None and (worker, checkpoint, job.stage) == self.target:
            self.reached.set()
            await self.release.wait()


async def test_twenty_mixed_documents_with_four_workers_end_exactly_as_predicted(
    make_pipeline: PipelineFactory, db: asyncpg.Connection
) -> None:
    pipeline = make_pipeline(clock=SystemClock(), pending_polls=1)
    documents = [*sample_documents(19, seed=7), large_markdown_document(60_000, seed=7)]
    accepted = await upload_all(pipeline, db, documents, users=(ALICE, BOB))
    workers = await pipeline.run_workers(4, timeout=120)
    await assert_ended_as_predicted(db, pipeline, accepted)
    # All four took part: the work was shared, not done by one of them.
    assert all(w.stats["advanced"] > 0 for w in workers)
    states = {r["state"] for r in await db.fetch("SELECT state FROM upload_jobs")}
    assert states == {"done", "deadletter"}


async def test_the_same_bytes_from_the_same_user_are_one_document_and_one_job(
    pipeline: ReferencePipeline, db: asyncpg.Connection
) -> None:
    document = markdown_document("# Same\n\nbytes")
    first = await pipeline.upload(db, user_id=ALICE, document=document)
    again = await pipeline.upload(db, user_id=ALICE, document=document)
    other = await pipeline.upload(db, user_id=BOB, document=document)
    assert (again.document_id, again.job_id, again.created) == (
        first.document_id,
        first.job_id,
        False,
    )
    assert other.created
    assert other.document_id != first.document_id
    assert await db.fetchval("SELECT count(*) FROM upload_jobs") == 2


async def test_concurrent_identical_uploads_create_one_document_and_one_job(
    pipeline: ReferencePipeline, db: asyncpg.Connection
) -> None:
    document = text_document("raced " * 100)
    connections = [await pipeline.database.connect() for _ in range(6)]
    try:
        uploads = await asyncio.gather(
            *(pipeline.upload(c, user_id=ALICE, document=document) for c in connections)
        )
    finally:
        for connection in connections:
            await connection.close()
    assert len({(u.document_id, u.job_id) for u in uploads}) == 1
    assert sum(u.created for u in uploads) == 1
    assert await db.fetchval("SELECT count(*) FROM documents") == 1
    assert await db.fetchval("SELECT count(*) FROM upload_jobs") == 1


async def test_a_parser_5xx_burst_is_retried_with_backoff_until_it_recovers(
    make_pipeline: PipelineFactory, db: asyncpg.Connection, clock: ManualClock
) -> None:
    burst = FaultPlan([Fault.server_error(503), Fault.server_error(502)], endpoints=["upload"])
    pipeline = make_pipeline(parser_faults=burst)
    accepted = await upload_all(pipeline, db, [markdown_document("# Parse me\n\nplease")])
    (worker,) = await started(pipeline.worker(name="w"))

    await step_until(worker, db, Stage.JOB_VALIDATED)
    for retry, backoff in ((1, 3), (2, 6)):
        result = await worker.run_once()
        assert result.action is StepAction.RETRY_SCHEDULED
        job = await job_row(db)
        assert (job["state"], job["retry_count"]) == ("retryable", retry)
        assert job["next_attempt_at"] == clock.now() + timedelta(seconds=backoff)
        assert "HTTP 50" in job["last_error"]
        clock.advance(backoff - 1)
        assert (await worker.run_once()).action is StepAction.IDLE  # not due yet
        clock.advance(1)
    assert (await worker.run_once()).action is StepAction.ADVANCED
    assert (await job_row(db))["retry_count"] == 0  # progress resets the budget
    await pipeline.drain([worker])
    await assert_ended_as_predicted(db, pipeline, accepted)
    await worker.close()


async def test_retry_after_is_honoured_when_longer_than_the_backoff(
    make_pipeline: PipelineFactory, db: asyncpg.Connection, clock: ManualClock
) -> None:
    throttled = FaultPlan([Fault.rate_limit(retry_after=42)])
    pipeline = make_pipeline(embeddings_faults=throttled)
    accepted = await upload_all(pipeline, db, [markdown_document("# Rate\n\nlimited")])
    (worker,) = await started(pipeline.worker(name="w"))
    await step_until(worker, db, Stage.EMBEDDING)
    assert (await worker.run_once()).action is StepAction.RETRY_SCHEDULED
    job = await job_row(db)
    assert job["next_attempt_at"] == clock.now() + timedelta(seconds=42)
    clock.advance(41)
    assert (await worker.run_once()).action is StepAction.IDLE
    clock.advance(1)
    await pipeline.drain([worker])
    await assert_ended_as_predicted(db, pipeline, accepted)
    await worker.close()


async def test_a_permanent_error_dead_letters_with_last_error_and_nothing_final(
    make_pipeline: PipelineFactory, db: asyncpg.Connection, clock: ManualClock
) -> None:
    pipeline = make_pipeline(embeddings_faults=FaultPlan([Fault.permanent(400)]))
    await upload_all(pipeline, db, [markdown_document("# Refused\n\nby the service")])
    (worker,) = await started(pipeline.worker(name="w"))
    await pipeline.drain([worker])
    job = await job_row(db)
    assert (job["stage"], job["state"], job["retry_count"]) == ("embedding", "deadletter", 0)
    assert "HTTP 400" in job["last_error"]
    assert await db.fetchval("SELECT status FROM documents") == "failed"
    assert await db.fetchval("SELECT count(*) FROM document_chunks") == 0
    await worker.close()


async def test_retries_are_limited_then_the_job_is_dead_lettered(
    make_pipeline: PipelineFactory, db: asyncpg.Connection, clock: ManualClock
) -> None:
    down = FaultPlan([Fault.server_error()], endpoints=["upload"], repeat=True)
    pipeline = make_pipeline(parser_faults=down)
    await upload_all(pipeline, db, [markdown_document("# Never\n\nparsed")])
    (worker,) = await started(pipeline.worker(name="w"))
    results = await pipeline.drain([worker])
    failures = [r.action for r in results if r.stage is Stage.JOB_VALIDATED]
    limit = pipeline.config.retry.limit
    assert failures == [StepAction.RETRY_SCHEDULED] * limit + [StepAction.DEADLETTERED]
    job = await job_row(db)
    assert (job["state"], job["retry_count"]) == ("deadletter", limit)
    assert f"retries exhausted ({limit} of {limit})" in job["last_error"]
    await worker.close()


async def test_an_open_circuit_defers_jobs_without_spending_their_retries(
    make_pipeline: PipelineFactory, db: asyncpg.Connection, clock: ManualClock
) -> None:
    config = replace(TEST_CONFIG, circuit_failure_threshold=2, circuit_reset_seconds=60)
    outage = FaultPlan([Fault.server_error(), Fault.server_error()], endpoints=["embeddings"])
    pipeline = make_pipeline(config=config, embeddings_faults=outage)
    accepted = await upload_all(
        pipeline, db, [markdown_document("# One\n\nfirst"), markdown_document("# Two\n\nsecond")]
    )
    (worker,) = await started(pipeline.worker(name="w"))
    results = await pipeline.drain([worker])
    actions = [r.action for r in results if r.stage is Stage.EMBEDDING]
    assert actions.count(StepAction.RETRY_SCHEDULED) == 2
    assert StepAction.DEFERRED in actions
    # Deferred attempts sent no request: the service saw the two failures, then the
    # half-open trial and the rest.
    assert pipeline.fakes is not None
    assert pipeline.fakes.embeddings.requests["embeddings"] == 2 + 2
    await assert_ended_as_predicted(db, pipeline, accepted)
    await worker.close()


async def test_a_worker_whose_backend_is_terminated_mid_stage_loses_nothing(
    make_pipeline: PipelineFactory, db: asyncpg.Connection, clock: ManualClock
) -> None:
    pipeline = make_pipeline()
    accepted = await upload_all(pipeline, db, [large_markdown_document(20_000, seed=1)])

    async def terminate_mid_chunking(
        worker: str, checkpoint: Checkpoint, job: ClaimedJob | None
    ) -> None:
        mid_chunking = job is not None and job.stage is Stage.CHUNKING and job.chunks_done > 0
        if (worker, checkpoint) == ("doomed", Checkpoint.BEFORE_COMMIT) and mid_chunking:
            await db.execute("SELECT pg_terminate_backend($1)", await doomed.backend_pid())

    doomed, survivor = await started(
        pipeline.worker(name="doomed", checkpoints=terminate_mid_chunking),
        pipeline.worker(name="survivor"),
    )
    with pytest.raises(DatabaseUnavailableError):
        await run_until_crash(doomed)
    job = await job_row(db)
    assert (job["stage"], job["state"], job["owner"]) == ("chunking", "working", "doomed")
    buffered = await db.fetchval("SELECT count(*) FROM document_chunk_buffer")
    assert buffered == job["chunks_done"]  # the killed batch rolled back entirely

    assert (await survivor.run_once()).action is StepAction.IDLE  # the lease still holds
    clock.advance(pipeline.config.lease_seconds)
    await survivor.run_once()
    job = await job_row(db)
    assert job["retry_count"] in (0, 1)
    assert "lease of doomed expired" in job["last_error"]
    await pipeline.drain([survivor])
    await assert_ended_as_predicted(db, pipeline, accepted)
    await survivor.close()


async def test_a_zombie_whose_lease_moved_cannot_commit_its_stage(
    make_pipeline: PipelineFactory, db: asyncpg.Connection, clock: ManualClock
) -> None:
    pipeline = make_pipeline()
    accepted = await upload_all(pipeline, db, [markdown_document("# Zombie\n\nfencing")])
    pauser = Pauser("zombie", Checkpoint.AFTER_CALL, Stage.JOB_VALIDATED)
    zombie, live = await started(
        pipeline.worker(name="zombie", checkpoints=pauser), pipeline.worker(name="live")
    )
    await step_until(live, db, Stage.JOB_VALIDATED)
    zombie_step = asyncio.create_task(zombie.run_once())
    await pauser.reached.wait()  # the zombie submitted to the parser, then stalled
    clock.advance(pipeline.config.lease_seconds)
    assert (await live.run_once()).action is StepAction.ADVANCED  # took over, submitted
    pauser.release.set()
    assert (await zombie_step).action is StepAction.LEASE_LOST
    job = await job_row(db)
    assert (job["stage"], job["state"]) == ("parsing", "queued")
    completed = await db.fetchval(
        "SELECT count(*) FROM events WHERE action = 'stage_completed' AND stage = 'job_validated'"
    )
    assert completed == 1
    await pipeline.drain([live])
    await assert_ended_as_predicted(db, pipeline, accepted)
    for worker in (zombie, live):
        await worker.close()


async def test_a_crash_after_an_embedding_call_repeats_that_batch_only(
    make_pipeline: PipelineFactory, db: asyncpg.Connection, clock: ManualClock
) -> None:
    pipeline = make_pipeline()
    accepted = await upload_all(pipeline, db, [large_markdown_document(30_000, seed=2)])
    crashed = False

    async def crash_once(worker: str, checkpoint: Checkpoint, job: ClaimedJob | None) -> None:
        nonlocal crashed
        mid_embedding = job is not None and job.stage is Stage.EMBEDDING and job.embeddings_done > 0
        if checkpoint is Checkpoint.AFTER_CALL and mid_embedding and not crashed:
            crashed = True
            await db.execute("SELECT pg_terminate_backend($1)", await first.backend_pid())

    first, second = await started(
        pipeline.worker(name="first", checkpoints=crash_once), pipeline.worker(name="second")
    )
    with pytest.raises(DatabaseUnavailableError):
        await run_until_crash(first)
    await pipeline.drain([second])
    await assert_ended_as_predicted(db, pipeline, accepted)
    assert pipeline.fakes is not None
    embedded = pipeline.fakes.embeddings.embedded_texts
    chunks = await db.fetchval("SELECT count(*) FROM document_chunks")
    batch = pipeline.config.embed_batch_size
    assert sum(embedded.values()) <= chunks + batch
    assert max(embedded.values()) == 2  # exactly one batch was embedded twice
    await second.close()


async def test_progress_counters_equal_the_buffers_after_every_step(
    pipeline: ReferencePipeline, db: asyncpg.Connection, clock: ManualClock
) -> None:
    accepted = await upload_all(pipeline, db, [large_markdown_document(40_000, seed=3)])
    (worker,) = await started(pipeline.worker(name="w"))
    batches = 0
    while (await worker.run_once()).action is not StepAction.IDLE:
        job = await job_row(db)
        if job["state"] == "done":
            break
        chunks = await db.fetchval("SELECT count(*) FROM document_chunk_buffer")
        vectors = await db.fetchval("SELECT count(*) FROM document_vector_buffer")
        assert (job["chunks_done"], job["embeddings_done"]) == (chunks, vectors)
        batches += job["stage"] in ("chunking", "embedding")
    assert batches > 10  # a 40 kB document takes many claims in small batches
    await assert_ended_as_predicted(db, pipeline, accepted)
    await worker.close()


@pytest.mark.parametrize(
    ("document", "stage", "says"),
    [
        (empty_document(), Stage.QUEUED, "is empty"),
        (undecodable_text(1), Stage.QUEUED, "neither PDF nor UTF-8"),
        (text_document("nul\x00byte"), Stage.QUEUED, "NUL"),
        (pdf_document([""]), Stage.PARSED, "no text"),
        (text_document(" \n\n  \n"), Stage.PARSED, "no text"),
        (text_document("x" * 5000), Stage.QUEUED, "the limit is 4096"),
    ],
    ids=["empty", "undecodable", "binary", "blank-pdf", "whitespace", "oversized"],
)
async def test_unusable_input_is_dead_lettered_with_a_clear_error(
    make_pipeline: PipelineFactory,
    db: asyncpg.Connection,
    clock: ManualClock,
    document: Document,
    stage: Stage,
    says: str,
) -> None:
    config = replace(TEST_CONFIG, max_upload_bytes=4096)
    pipeline = make_pipeline(config=config)
    accepted = await upload_all(pipeline, db, [document])
    (worker,) = await started(pipeline.worker(name="w"))
    await pipeline.drain([worker])
    job = await job_row(db)
    assert (job["stage"], job["state"]) == (stage.value, State.DEADLETTER.value)
    assert says in job["last_error"]
    await assert_ended_as_predicted(db, pipeline, accepted)
    await worker.close()


async def test_checkpoints_are_awaited_in_order(
    pipeline: ReferencePipeline, db: asyncpg.Connection
) -> None:
    seen: list[tuple[Checkpoint, Stage | None]] = []

    async def record(worker: str, checkpoint: Checkpoint, job: ClaimedJob | None) -> None:
        seen.append((checkpoint, job.stage if job else None))

    await upload_all(pipeline, db, [markdown_document("# Order")])
    (worker,) = await started(pipeline.worker(name="w", checkpoints=record))
    await worker.run_once()  # validate: no external call
    await worker.run_once()  # submit to the parser
    order = [Checkpoint.CLAIMED, Checkpoint.BEFORE_COMMIT, Checkpoint.COMMITTED]
    calling = [
        Checkpoint.CLAIMED,
        Checkpoint.BEFORE_CALL,
        Checkpoint.AFTER_CALL,
        Checkpoint.BEFORE_COMMIT,
        Checkpoint.COMMITTED,
    ]
    assert seen == [(c, Stage.QUEUED) for c in order] + [(c, Stage.JOB_VALIDATED) for c in calling]
    await worker.close()


async def test_the_lease_is_renewed_while_a_service_call_is_in_flight(
    make_pipeline: PipelineFactory, db: asyncpg.Connection, clock: ManualClock
) -> None:
    slow = FaultPlan([Fault.latency(0.5)], endpoints=["embeddings"])
    pipeline = make_pipeline(embeddings_faults=slow)
    await upload_all(pipeline, db, [markdown_document("# Slow\n\nservice")])
    calling = asyncio.Event()

    async def note_call(worker: str, checkpoint: Checkpoint, job: ClaimedJob | None) -> None:
        if checkpoint is Checkpoint.BEFORE_CALL and job and job.stage is Stage.EMBEDDING:
            calling.set()

    (worker,) = await started(pipeline.worker(name="w", checkpoints=note_call))
    await step_until(worker, db, Stage.EMBEDDING)
    step = asyncio.create_task(worker.run_once())
    await calling.wait()
    await asyncio.sleep(0.05)  # the call is in flight (0.5 s of latency)
    lease = pipeline.config.lease_seconds
    clock.advance(lease / 3)  # the heartbeat's interval: it renews now
    for _ in range(50):
        expires = (await job_row(db))["lease_expires_at"]
        if expires == clock.now() + timedelta(seconds=lease):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError(f"lease not renewed: expires {expires}, now {clock.now()}")
    assert (await step).action is StepAction.ADVANCED
    await worker.close()


async def test_health_reports_the_database_storage_and_each_circuit(
    pipeline: ReferencePipeline,
) -> None:
    (worker,) = await started(pipeline.worker(name="w"))
    health = await worker.health()
    assert health["ok"] is True
    assert health["database"]["ok"] is True
    assert health["storage"]["ok"] is True
    assert set(health["services"]) == {"parser", "embeddings"}
    assert all(s["state"] == "closed" for s in health["services"].values())
    await db_terminated(worker)
    assert (await worker.health())["database"]["ok"] is False
    await worker.close()


async def db_terminated(worker: BaseWorker) -> None:
    other = await worker.database.connect()
    try:
        await other.execute("SELECT pg_terminate_backend($1)", await worker.backend_pid())
    finally:
        await other.close()


async def test_a_running_worker_reconnects_when_its_connection_is_killed(
    make_pipeline: PipelineFactory, db: asyncpg.Connection
) -> None:
    config = replace(TEST_CONFIG, lease_seconds=0.5)
    pipeline = make_pipeline(clock=SystemClock(), config=config)
    accepted = await upload_all(pipeline, db, sample_documents(4, seed=11, corrupt_ratio=0))
    killed = asyncio.Event()
    killer = await pipeline.database.connect()  # `db` is busy polling below

    async def kill_once(worker: str, checkpoint: Checkpoint, job: ClaimedJob | None) -> None:
        chunking = job is not None and job.stage is Stage.CHUNKING
        if checkpoint is Checkpoint.CLAIMED and chunking and not killed.is_set():
            killed.set()
            await killer.execute("SELECT pg_terminate_backend($1)", await target.backend_pid())

    target = pipeline.worker(name="target", checkpoints=kill_once)
    stop = asyncio.Event()
    task = asyncio.create_task(target.run(stop))
    try:
        async with asyncio.timeout(60):
            while await db.fetchval(
                "SELECT count(*) FROM upload_jobs WHERE state IN ('queued','working','retryable')"
            ):
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
        await target.close()
        await killer.close()
    assert killed.is_set()
    assert target.stats["database_errors"] >= 1
    await assert_ended_as_predicted(db, pipeline, accepted)


async def test_an_expired_lease_is_reclaimed_before_due_jobs_so_it_cannot_starve(
    pipeline: ReferencePipeline, db: asyncpg.Connection, clock: ManualClock
) -> None:
    stuck = await pipeline.upload(db, user_id=ALICE, document=markdown_document("# Stuck"))
    pauser = Pauser("lost", Checkpoint.CLAIMED, Stage.QUEUED)
    lost, rescuer = await started(
        pipeline.worker(name="lost", checkpoints=pauser), pipeline.worker(name="rescuer")
    )
    parked = asyncio.create_task(lost.run_once())
    await pauser.reached.wait()
    for index in range(3):  # a queue that always has due work
        await pipeline.upload(db, user_id=ALICE, document=markdown_document(f"# Due {index}"))
    clock.advance(pipeline.config.lease_seconds)
    result = await rescuer.run_once()
    assert result.job_id == stuck.job_id
    pauser.release.set()
    assert (await parked).action is StepAction.LEASE_LOST
    for worker in (lost, rescuer):
        await worker.close()


async def test_a_job_that_kills_every_worker_is_dead_lettered_after_the_retry_limit(
    pipeline: ReferencePipeline, db: asyncpg.Connection, clock: ManualClock
) -> None:
    await upload_all(pipeline, db, [markdown_document("# Poison\n\npill")])
    killer = await pipeline.database.connect()

    async def crash_on_parse(worker: str, checkpoint: Checkpoint, job: ClaimedJob | None) -> None:
        if checkpoint is Checkpoint.CLAIMED and job and job.stage is Stage.PARSING:
            victim = workers[worker]
            await killer.execute("SELECT pg_terminate_backend($1)", await victim.backend_pid())

    workers: dict[str, BaseWorker] = {}
    limit = pipeline.config.retry.limit
    for attempt in range(limit + 1):
        worker = pipeline.worker(name=f"victim-{attempt}", checkpoints=crash_on_parse)
        workers[worker.name] = worker
        await worker.start()
        with pytest.raises(DatabaseUnavailableError):
            await run_until_crash(worker)
        job = await job_row(db)
        assert (job["state"], job["retry_count"]) == ("working", attempt)
        clock.advance(pipeline.config.lease_seconds)
    (last,) = await started(pipeline.worker(name="undertaker"))
    result = await last.run_once()
    assert result.action is StepAction.DEADLETTERED
    job = await job_row(db)
    assert (job["stage"], job["state"], job["retry_count"]) == ("parsing", "deadletter", limit)
    assert "expired with retries exhausted" in job["last_error"]
    await last.close()
    await killer.close()


async def test_a_zombie_cannot_commit_while_the_new_owner_works_the_same_stage(
    pipeline: ReferencePipeline, db: asyncpg.Connection, clock: ManualClock
) -> None:
    accepted = await upload_all(pipeline, db, [markdown_document("# Two\n\nowners")])
    zombie_pause = Pauser("zombie", Checkpoint.AFTER_CALL, Stage.JOB_VALIDATED)
    live_pause = Pauser("live", Checkpoint.BEFORE_CALL, Stage.JOB_VALIDATED)
    zombie, live = await started(
        pipeline.worker(name="zombie", checkpoints=zombie_pause),
        pipeline.worker(name="live", checkpoints=live_pause),
    )
    await step_until(live, db, Stage.JOB_VALIDATED)
    zombie_step = asyncio.create_task(zombie.run_once())
    await zombie_pause.reached.wait()
    clock.advance(pipeline.config.lease_seconds)
    live_step = asyncio.create_task(live.run_once())
    await live_pause.reached.wait()  # the new owner holds the lease at the same stage
    zombie_pause.release.set()
    assert (await zombie_step).action is StepAction.LEASE_LOST
    job = await job_row(db)
    assert (job["stage"], job["owner"], job["parser_job_id"]) == ("job_validated", "live", None)
    live_pause.release.set()
    assert (await live_step).action is StepAction.ADVANCED
    await pipeline.drain([live])
    await assert_ended_as_predicted(db, pipeline, accepted)
    for worker in (zombie, live):
        await worker.close()

"""Client-side rate limits: 32 job slots sharing them never exceed them at the services.

Four workers of eight slots run in one process (one in-memory window for all) or as four
"processes" (each with its own limits object and its own database connection, sharing
the window through Postgres); either way the fakes must never see more than the limits.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace

import asyncpg
import pytest

from pipeline_models.clock import SystemClock
from pipeline_models.database import Database
from pipeline_models.documents import markdown_document
from pipeline_models.pipeline.checkpoints import Checkpoint
from pipeline_models.pipeline.ratelimit import RateLimits, ServiceRate, SharedRateLimits
from pipeline_models.pipeline.reference import ReferencePipeline
from pipeline_models.pipeline.services import EMBEDDINGS, PARSER
from pipeline_models.pipeline.worker import BaseWorker, ClaimedJob, StepAction
from tests.conftest import TEST_CONFIG, PipelineFactory

pytestmark = pytest.mark.anyio

ALICE = uuid.UUID(int=1)
WINDOW = 2.0  # seconds: a short "minute", so the test runs in seconds
# Arrival at the fake lags the limiter's decision by scheduling jitter (well under a
# millisecond here); the fake's windows are this much shorter than the limiter's.
JITTER = 0.05
PARSER_RATE = ServiceRate(requests=16, window_seconds=WINDOW)
EMBEDDINGS_RATE = ServiceRate(requests=5, tokens=1500, window_seconds=WINDOW)
WORKERS, SLOTS = 4, 8
DOCUMENTS = [
    markdown_document(f"# Limited {n}\n\n" + f"Sentence {n} about rate limits. " * 40)
    for n in range(12)
]


def most_in_window(arrivals: Sequence[tuple[float, int]], window: float) -> tuple[int, int]:
    """The most requests, and the most units, that arrived within any ``window`` seconds."""
    times = sorted(arrivals)
    most_requests = most_units = 0
    start = 0
    units = 0
    for end, (at, amount) in enumerate(times):
        units += amount
        while times[start][0] <= at - window:
            units -= times[start][1]
            start += 1
        most_requests = max(most_requests, end - start + 1)
        most_units = max(most_units, units)
    return most_requests, most_units


async def run_slots(
    pipeline: ReferencePipeline,
    db: asyncpg.Connection,
    limits_of_worker: Callable[[int], RateLimits] | None = None,
) -> None:
    """``WORKERS`` workers of ``SLOTS`` slots each, until every job is done; a worker's
    slots share ``limits_of_worker(w)`` (default: the pipeline's, shared by all 32)."""
    for document in DOCUMENTS:
        await pipeline.upload(db, user_id=ALICE, document=document)
    workers: list[BaseWorker] = []
    for w in range(WORKERS):
        options = {} if limits_of_worker is None else {"rate_limits": limits_of_worker(w)}
        workers += [pipeline.worker(name=f"worker{w + 1}-{s + 1}", **options) for s in range(SLOTS)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(worker.run(stop), name=worker.name) for worker in workers]
    try:
        async with asyncio.timeout(30):
            while await db.fetchval("SELECT count(*) FROM upload_jobs WHERE state <> 'done'"):
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for worker in workers:
            await worker.close()


def observed(pipeline: ReferencePipeline) -> dict[str, tuple[int, int]]:
    assert pipeline.fakes is not None
    window = WINDOW - JITTER
    parser = [(at, 1) for at, _ in pipeline.fakes.parser.arrivals]
    return {
        PARSER: most_in_window(parser, window),
        EMBEDDINGS: most_in_window(pipeline.fakes.embeddings.token_arrivals, window),
    }


def assert_the_limits_held_and_bound(seen: dict[str, tuple[int, int]]) -> None:
    assert seen[PARSER][0] <= PARSER_RATE.requests
    requests, tokens = seen[EMBEDDINGS]
    assert requests <= EMBEDDINGS_RATE.requests
    assert EMBEDDINGS_RATE.tokens is not None
    assert tokens <= EMBEDDINGS_RATE.tokens
    # The limits were the binding constraint, not a run too small to reach them.
    assert seen[PARSER][0] == PARSER_RATE.requests


async def test_rate_limits_hold_under_four_workers_of_eight_slots(
    make_pipeline: PipelineFactory, db: asyncpg.Connection
) -> None:
    limits = RateLimits({PARSER: PARSER_RATE, EMBEDDINGS: EMBEDDINGS_RATE})
    pipeline = make_pipeline(clock=SystemClock(), rate_limits=limits)
    await run_slots(pipeline, db)
    assert_the_limits_held_and_bound(observed(pipeline))


async def test_without_rate_limits_the_same_run_exceeds_them(
    make_pipeline: PipelineFactory, db: asyncpg.Connection
) -> None:
    pipeline = make_pipeline(clock=SystemClock())
    await run_slots(pipeline, db)
    seen = observed(pipeline)
    assert seen[PARSER][0] > PARSER_RATE.requests
    assert seen[EMBEDDINGS][0] > EMBEDDINGS_RATE.requests


async def forget_shared_windows(db: asyncpg.Connection) -> None:
    """Calls an earlier test counted in the database's windows must not slow this one."""
    if await db.fetchval("SELECT to_regclass('rate_limit_calls') IS NOT NULL"):
        await db.execute("DELETE FROM rate_limit_calls; DELETE FROM rate_limit_pauses")


def shared_limits_per_process(
    database: Database,
) -> tuple[list[RateLimits], Callable[[int], RateLimits]]:
    limits: list[RateLimits] = [
        SharedRateLimits(database, {PARSER: PARSER_RATE, EMBEDDINGS: EMBEDDINGS_RATE})
        for _ in range(WORKERS)
    ]
    return limits, limits.__getitem__


async def test_limits_kept_in_postgres_hold_across_four_worker_processes(
    make_pipeline: PipelineFactory, db: asyncpg.Connection
) -> None:
    await forget_shared_windows(db)
    pipeline = make_pipeline(clock=SystemClock())
    limits, of_worker = shared_limits_per_process(pipeline.database)
    try:
        await run_slots(pipeline, db, of_worker)
    finally:
        for each in limits:
            await each.aclose()
    assert_the_limits_held_and_bound(observed(pipeline))


async def test_a_window_per_process_lets_four_processes_exceed_the_limits(
    make_pipeline: PipelineFactory, db: asyncpg.Connection
) -> None:
    # Why the window is kept in the database: each process's own window holds, and the
    # service, which counts them all, sees up to four times the limit.
    pipeline = make_pipeline(clock=SystemClock())
    own = [RateLimits({PARSER: PARSER_RATE, EMBEDDINGS: EMBEDDINGS_RATE}) for _ in range(WORKERS)]
    await run_slots(pipeline, db, own.__getitem__)
    assert observed(pipeline)[PARSER][0] > PARSER_RATE.requests


async def test_retry_after_seen_by_one_process_pauses_every_process(
    clean_pipeline_database: Database, db: asyncpg.Connection
) -> None:
    await forget_shared_windows(db)
    rate = {EMBEDDINGS: ServiceRate(requests=100, window_seconds=60)}
    first = SharedRateLimits(clean_pipeline_database, rate)
    second = SharedRateLimits(clean_pipeline_database, rate)
    try:
        await first.pause(EMBEDDINGS, 0.4)
        started = asyncio.get_running_loop().time()
        await second.acquire(EMBEDDINGS)
        assert asyncio.get_running_loop().time() - started >= 0.35
        assert await first.used(EMBEDDINGS) == (1, 0)
    finally:
        await first.aclose()
        await second.aclose()


async def test_shared_limits_reconnect_after_the_database_drops_them(
    clean_pipeline_database: Database, db: asyncpg.Connection
) -> None:
    await forget_shared_windows(db)
    limits = SharedRateLimits(clean_pipeline_database, {PARSER: PARSER_RATE})
    try:
        await limits.acquire(PARSER)
        await db.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE application_name = 'pipeline-models rate limits'"
        )
        await asyncio.sleep(0.05)  # the closed socket reaches the client
        await limits.acquire(PARSER)  # on a new connection
        assert (await limits.used(PARSER))[0] == 2
    finally:
        await limits.aclose()


async def test_a_call_the_rate_limits_could_not_admit_is_settled_unbilled(
    make_pipeline: PipelineFactory, db: asyncpg.Connection
) -> None:
    unreachable = Database("postgresql://postgres@127.0.0.1:1/nowhere")
    limits = SharedRateLimits(unreachable, {PARSER: PARSER_RATE})
    pipeline = make_pipeline(rate_limits=limits)
    await pipeline.upload(db, user_id=ALICE, document=DOCUMENTS[0])
    async with pipeline.worker(name="w") as worker:
        await worker.run_once()  # validated
        await worker.run_once()  # the parse is refused before its request
    outcomes = await db.fetch("SELECT service, outcome FROM billed_calls")
    assert [(row["service"], row["outcome"]) for row in outcomes] == [(PARSER, "not_billed")]
    assert pipeline.fakes is not None
    assert not pipeline.fakes.parser.arrivals


async def test_retry_after_pauses_the_service_for_every_slot() -> None:
    limits = RateLimits({EMBEDDINGS: ServiceRate(requests=100, window_seconds=60)})
    await limits.pause(EMBEDDINGS, 0.3)
    started = asyncio.get_running_loop().time()
    await asyncio.gather(*(limits.acquire(EMBEDDINGS) for _ in range(3)))
    assert asyncio.get_running_loop().time() - started >= 0.3


async def test_a_call_larger_than_the_token_limit_is_refused_with_the_fix() -> None:
    limits = RateLimits({EMBEDDINGS: ServiceRate(tokens=10, window_seconds=60)})
    with pytest.raises(ValueError, match="make the batches smaller"):
        await limits.acquire(EMBEDDINGS, tokens=11)


async def test_a_wait_for_the_rate_limit_renews_the_lease_before_the_call(
    make_pipeline: PipelineFactory, db: asyncpg.Connection
) -> None:
    # A lease of 1 s and a wait of about 0.8 s for the parser: without a renewal after the
    # wait, the call would start with about 0.2 s of lease left.
    limits = RateLimits({PARSER: ServiceRate(requests=1, window_seconds=0.8)})
    pipeline = make_pipeline(
        clock=SystemClock(),
        config=replace(TEST_CONFIG, lease_seconds=1.0),
        rate_limits=limits,
    )
    await pipeline.upload(db, user_id=ALICE, document=DOCUMENTS[0])
    left_at_call: list[float] = []

    async def at_call(worker: str, checkpoint: Checkpoint, job: ClaimedJob | None) -> None:
        if checkpoint is Checkpoint.BEFORE_CALL and job is not None:
            lease = await db.fetchval(
                "SELECT lease_expires_at FROM upload_jobs WHERE job_id = $1", job.job_id
            )
            left_at_call.append((lease - pipeline.clock.now()).total_seconds())

    async with pipeline.worker(name="w", checkpoints=at_call) as worker:
        assert (await worker.run_once()).action is StepAction.ADVANCED  # validated
        await limits.acquire(PARSER)  # the window is now full for 0.8 s
        assert (await worker.run_once()).action is StepAction.ADVANCED  # submitted
    assert left_at_call
    assert left_at_call[0] > 0.6, left_at_call

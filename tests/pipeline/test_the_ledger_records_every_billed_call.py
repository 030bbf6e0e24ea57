"""The ledger of billed calls: recorded before the request, settled once, never leaked.

Each test plays a worker's ledger statements on a real job row: open (which reserves
from the budget), settle, the parser's page count, and the claim that takes over a
dead worker's job.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import asyncpg
import pytest

from pipeline_models.clock import ManualClock
from pipeline_models.documents import markdown_document
from pipeline_models.errors import BudgetExhaustedError, LeaseLostError
from pipeline_models.pipeline.budget import Budget, BudgetState
from pipeline_models.pipeline.costs import Usage
from pipeline_models.pipeline.ledger import BILLED, COUNTING, NOT_BILLED, Ledger
from pipeline_models.pipeline.reference import ReferencePipeline
from pipeline_models.queries import QUERIES

ALICE = uuid.UUID(int=1)
WORKER, OTHER = "ledger-worker", "ledger-other"
ESTIMATE = Decimal("0.010")
LEDGER = Ledger(budget_id="run")


async def a_working_job(
    db: asyncpg.Connection, pipeline: ReferencePipeline, clock: ManualClock
) -> uuid.UUID:
    """A job claimed by WORKER, its lease live for 30 s."""
    await pipeline.upload(db, user_id=ALICE, document=markdown_document("# Paid\n\nwords\n"))
    now = clock.now()
    row = await db.fetchrow(QUERIES["claim_job"].sql, WORKER, now, now + timedelta(seconds=30), 3)
    return uuid.UUID(str(row["job_id"]))


async def budget_of(db: asyncpg.Connection) -> BudgetState:
    state = await Budget().state(db)
    assert state is not None
    return state


async def calls(db: asyncpg.Connection) -> list[tuple[str, Decimal | None]]:
    rows = await db.fetch("SELECT outcome, cost_usd FROM billed_calls ORDER BY call_id")
    return [(row["outcome"], row["cost_usd"]) for row in rows]


@pytest.mark.anyio
async def test_a_call_reserves_its_estimate_and_settles_once(
    db: asyncpg.Connection, pipeline: ReferencePipeline, clock: ManualClock
) -> None:
    job_id = await a_working_job(db, pipeline, clock)
    await Budget().set_limit(db, Decimal("1"), clock.now())
    call_id = await LEDGER.open(db, job_id, WORKER, "embeddings", ESTIMATE, clock.now())
    assert await calls(db) == [("in_flight", None)]
    assert (await budget_of(db)).reserved_usd == ESTIMATE

    usage = Usage(tokens=300)
    settled = await LEDGER.settle(db, call_id, BILLED, Decimal("0.006"), clock.now(), usage=usage)
    assert settled
    assert await calls(db) == [("billed", Decimal("0.006"))]
    state = await budget_of(db)
    assert (state.reserved_usd, state.spent_usd) == (0, Decimal("0.006"))
    # Settled for good: a second settle changes nothing.
    assert not await LEDGER.settle(db, call_id, NOT_BILLED, Decimal(0), clock.now())
    assert await calls(db) == [("billed", Decimal("0.006"))]
    assert await budget_of(db) == state


@pytest.mark.anyio
async def test_a_worker_that_lost_the_job_may_not_open_a_call(
    db: asyncpg.Connection, pipeline: ReferencePipeline, clock: ManualClock
) -> None:
    job_id = await a_working_job(db, pipeline, clock)
    await Budget().set_limit(db, Decimal("1"), clock.now())
    with pytest.raises(LeaseLostError, match=OTHER):
        await LEDGER.open(db, job_id, OTHER, "embeddings", ESTIMATE, clock.now())
    clock.advance(31)  # WORKER's own lease ran out
    with pytest.raises(LeaseLostError):
        await LEDGER.open(db, job_id, WORKER, "embeddings", ESTIMATE, clock.now())
    assert await calls(db) == []
    assert (await budget_of(db)).reserved_usd == 0


@pytest.mark.anyio
async def test_a_call_the_budget_cannot_cover_is_neither_recorded_nor_reserved(
    db: asyncpg.Connection, pipeline: ReferencePipeline, clock: ManualClock
) -> None:
    job_id = await a_working_job(db, pipeline, clock)
    # No budget row yet: nothing caps the call, and it is recorded all the same.
    await LEDGER.open(db, job_id, WORKER, "embeddings", ESTIMATE, clock.now())
    assert await calls(db) == [("in_flight", None)]
    await Budget().set_limit(db, ESTIMATE - Decimal("0.001"), clock.now())
    with pytest.raises(BudgetExhaustedError, match="raise it with"):
        await LEDGER.open(db, job_id, WORKER, "embeddings", ESTIMATE, clock.now())
    assert len(await calls(db)) == 1
    assert (await budget_of(db)).reserved_usd == 0


@pytest.mark.anyio
async def test_the_claim_of_a_dead_workers_job_settles_its_call_and_a_late_answer_corrects_it(
    db: asyncpg.Connection, pipeline: ReferencePipeline, clock: ManualClock
) -> None:
    job_id = await a_working_job(db, pipeline, clock)
    await Budget().set_limit(db, Decimal("1"), clock.now())
    call_id = await LEDGER.open(db, job_id, WORKER, "embeddings", ESTIMATE, clock.now())

    clock.advance(31)
    now = clock.now()
    claimed = await db.fetchrow(
        QUERIES["claim_job"].sql, OTHER, now, now + timedelta(seconds=30), 3
    )
    assert (claimed["job_id"], claimed["previous_owner"]) == (job_id, WORKER)
    # It may have been billed: counted at its estimate, and no longer reserved.
    assert await calls(db) == [("unconfirmed", ESTIMATE)]
    state = await budget_of(db)
    assert (state.reserved_usd, state.spent_usd) == (0, ESTIMATE)

    # The zombie's answer arrives after all: the call is billed at what it cost.
    assert await LEDGER.settle(
        db, call_id, BILLED, Decimal("0.004"), clock.now(), usage=Usage(tokens=200)
    )
    assert await calls(db) == [("billed", Decimal("0.004"))]
    state = await budget_of(db)
    assert (state.reserved_usd, state.spent_usd) == (0, Decimal("0.004"))


@pytest.mark.anyio
async def test_a_parse_stands_at_its_estimate_until_its_pages_are_counted(
    db: asyncpg.Connection, pipeline: ReferencePipeline, clock: ManualClock
) -> None:
    job_id = await a_working_job(db, pipeline, clock)
    await Budget().set_limit(db, Decimal("1"), clock.now())
    call_id = await LEDGER.open(db, job_id, WORKER, "parser", Decimal("0.003"), clock.now())
    await LEDGER.settle(
        db,
        call_id,
        COUNTING,
        Decimal("0.003"),
        clock.now(),
        usage=Usage(pages=1),
        reference="parse-1",
    )
    assert await calls(db) == [("counting", Decimal("0.003"))]
    assert not await LEDGER.count_parse(db, job_id, "parse-2", 3, Decimal("0.009"), clock.now())
    assert await LEDGER.count_parse(db, job_id, "parse-1", 3, Decimal("0.009"), clock.now())
    assert await calls(db) == [("billed", Decimal("0.009"))]
    assert (await budget_of(db)).spent_usd == Decimal("0.009")
    # Counted once: a duplicate webhook or a second poll changes nothing.
    assert not await LEDGER.count_parse(db, job_id, "parse-1", 3, Decimal("0.009"), clock.now())

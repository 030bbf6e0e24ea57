"""A spending cap: jobs wait in a budget hold, none is lost, and the bill is exact."""

from __future__ import annotations

import uuid
from dataclasses import replace
from decimal import Decimal

import asyncpg
import pytest

from pipeline_models.clock import SystemClock
from pipeline_models.documents import markdown_document
from pipeline_models.lifecycle import BUDGET_HOLD
from pipeline_models.pipeline.budget import Budget
from pipeline_models.pipeline.costs import PriceTable, Usage
from pipeline_models.pipeline.reference import ReferencePipeline
from tests.conftest import TEST_CONFIG, PipelineFactory

pytestmark = pytest.mark.anyio

ALICE = uuid.UUID(int=1)
# Prices large enough that a handful of small documents costs dollars, not nanodollars.
PRICES = PriceTable(
    usd_per_page=Decimal("0.01"),
    usd_per_million_tokens={TEST_CONFIG.embed_model: Decimal("1000")},
)
CONFIG = replace(TEST_CONFIG, prices=PRICES)
DOCUMENTS = [
    markdown_document(f"# Report {n}\n\n" + f"Paragraph {n} of the budget test. " * (20 + n))
    for n in range(8)
]


def billed_by_fakes(pipeline: ReferencePipeline) -> Decimal:
    """What the fakes charged, at the run's prices (their own counters, not ours)."""
    assert pipeline.fakes is not None
    usage = Usage(
        pages=pipeline.fakes.parser.pages_billed, tokens=pipeline.fakes.embeddings.tokens_billed
    )
    return PRICES.price(usage, embed_model=CONFIG.embed_model)


async def states(db: asyncpg.Connection) -> list[tuple[str, str | None]]:
    rows = await db.fetch("SELECT state, held_for FROM upload_jobs ORDER BY job_seq")
    return [(r["state"], r["held_for"]) for r in rows]


async def test_a_budget_smaller_than_the_work_holds_the_rest_and_finishes_them_when_raised(
    make_pipeline: PipelineFactory, db: asyncpg.Connection
) -> None:
    budget = Budget()
    pipeline = make_pipeline(clock=SystemClock(), config=CONFIG, budget=budget)
    for document in DOCUMENTS:
        await pipeline.upload(db, user_id=ALICE, document=document)
    limit = Decimal("0.40")
    await budget.set_limit(db, limit, pipeline.clock.now())

    await pipeline.run_workers(4, timeout=60)

    first = await states(db)
    held = [s for s in first if s == ("queued", BUDGET_HOLD)]
    assert held, "the budget covered every document: the test's limit is too large"
    assert len(first) == len(DOCUMENTS)  # none lost
    assert set(first) <= {("done", None), ("queued", BUDGET_HOLD)}  # none failed
    spent = await budget.state(db)
    assert spent is not None
    assert spent.spent_usd <= limit
    assert spent.reserved_usd == 0
    assert spent.spent_usd == billed_by_fakes(pipeline)

    _, released = await budget.set_limit(db, Decimal("100"), pipeline.clock.now())
    assert released == len(held)
    await pipeline.run_workers(4, timeout=60)

    assert await states(db) == [("done", None)] * len(DOCUMENTS)
    total = await db.fetchval("SELECT sum(cost_usd) FROM upload_jobs")
    final = await budget.state(db)
    assert final is not None
    # To the cent, and in fact exactly: Decimal all the way, numeric in Postgres.
    assert total == final.spent_usd == billed_by_fakes(pipeline) > limit
    assert final.reserved_usd == 0


async def test_without_a_budget_no_job_is_ever_held(
    make_pipeline: PipelineFactory, db: asyncpg.Connection
) -> None:
    pipeline = make_pipeline(clock=SystemClock(), config=CONFIG)
    for document in DOCUMENTS:
        await pipeline.upload(db, user_id=ALICE, document=document)
    await pipeline.run_workers(4, timeout=60)
    assert await states(db) == [("done", None)] * len(DOCUMENTS)
    assert await db.fetchval("SELECT count(*) FROM spending_budget") == 0
    # The cost is tracked all the same.
    total = await db.fetchval("SELECT sum(cost_usd) FROM upload_jobs")
    assert total == billed_by_fakes(pipeline) > 0


async def test_a_budget_that_cannot_cover_one_call_holds_every_job_at_its_first_billed_stage(
    make_pipeline: PipelineFactory, db: asyncpg.Connection
) -> None:
    budget = Budget()
    pipeline = make_pipeline(clock=SystemClock(), config=CONFIG, budget=budget)
    for document in DOCUMENTS[:3]:
        await pipeline.upload(db, user_id=ALICE, document=document)
    await budget.set_limit(db, Decimal("0"), pipeline.clock.now())
    await pipeline.run_workers(2, timeout=60)
    rows = await db.fetch("SELECT stage, state, held_for, retry_count FROM upload_jobs")
    assert {tuple(r.values()) for r in rows} == {("job_validated", "queued", BUDGET_HOLD, 0)}
    assert pipeline.fakes is not None
    assert pipeline.fakes.parser.pages_billed == 0

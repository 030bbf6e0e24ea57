"""A spending cap: jobs wait in a budget hold, none is lost, and the bill is exact."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from pipeline_models.clock import SystemClock
from pipeline_models.cluster import LocalCluster
from pipeline_models.database import Database
from pipeline_models.documents import markdown_document
from pipeline_models.errors import BudgetExhaustedError
from pipeline_models.lifecycle import BUDGET_HOLD
from pipeline_models.pipeline.auth import TokenIssuer
from pipeline_models.pipeline.budget import Budget
from pipeline_models.pipeline.costs import PriceTable, Usage
from pipeline_models.pipeline.ledger import Ledger
from pipeline_models.pipeline.reference import ReferencePipeline
from pipeline_models.pipeline.worker import BaseWorker, StepAction
from tests.conftest import TEST_CONFIG, PipelineFactory, cluster_settings

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


@pytest.mark.anyio
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
    total = await db.fetchval("SELECT sum(cost_usd) FROM billed_calls")
    final = await budget.state(db)
    assert final is not None
    # To the cent, and in fact exactly: Decimal all the way, numeric in Postgres.
    assert total == final.spent_usd == billed_by_fakes(pipeline) > limit
    assert final.reserved_usd == 0


@pytest.mark.anyio
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
    total = await db.fetchval("SELECT sum(cost_usd) FROM billed_calls")
    assert total == billed_by_fakes(pipeline) > 0


@pytest.mark.anyio
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


def test_worker_processes_with_a_max_cost_hold_until_the_budget_command_raises_it(
    clean_pipeline_database: Database, tmp_path: Path
) -> None:
    database = clean_pipeline_database
    settings = cluster_settings(database, tmp_path / "blobs", max_cost_usd=Decimal(0))
    tokens = TokenIssuer(settings.token_secret)
    headers = {"Authorization": f"Bearer {tokens.issue(ALICE)}"}

    def positions() -> list[tuple[str, str, str | None]]:
        async def read() -> list[tuple[str, str, str | None]]:
            connection = await database.connect()
            try:
                rows = await connection.fetch("SELECT stage, state, held_for FROM upload_jobs")
            finally:
                await connection.close()
            return sorted((r["stage"], r["state"], r["held_for"]) for r in rows)

        return asyncio.run(read())

    def wait_for(expected: list[tuple[str, str, str | None]]) -> None:
        deadline = time.monotonic() + 60
        while positions() != expected:
            assert time.monotonic() < deadline, positions()
            time.sleep(0.1)

    with LocalCluster(settings, workers=1, slots=2) as cluster:
        with httpx.Client(base_url=cluster.api_url, timeout=30) as client:
            for document in DOCUMENTS[:2]:
                response = client.post(
                    "/upload",
                    headers=headers,
                    files={"file": (document.filename, document.data, document.content_type)},
                )
                assert response.status_code == 201, response.text
        wait_for([("job_validated", "queued", BUDGET_HOLD)] * 2)
        env = {**os.environ, **cluster.settings.to_env()}
        raised = subprocess.run(
            [sys.executable, "-m", "pipeline_models.cli", "budget", "--max-cost", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert raised.returncode == 0, raised.stderr
        assert "released 2 held jobs" in raised.stdout
        wait_for([("embedded", "done", None)] * 2)


@pytest.mark.anyio
async def test_a_raise_between_the_refusal_and_the_hold_does_not_leave_the_job_held(
    make_pipeline: PipelineFactory, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race the checker found: the budget refuses a call, the operator raises it and
    # releases the held jobs, and only then does the worker hold its job, which no
    # release would see until the next raise.
    budget = Budget()
    pipeline = make_pipeline(config=CONFIG, budget=budget)
    await pipeline.upload(db, user_id=ALICE, document=DOCUMENTS[0])
    await budget.set_limit(db, Decimal("0"), pipeline.clock.now())

    class RaisedRightAfterRefusing(Ledger):
        async def open(self, *args: Any, **options: Any) -> int:
            try:
                return await super().open(*args, **options)
            except BudgetExhaustedError:
                await budget.set_limit(db, Decimal("100"), pipeline.clock.now())
                raise

    monkeypatch.setattr(
        BaseWorker,
        "ledger",
        property(lambda w: RaisedRightAfterRefusing(budget_id=budget.budget_id, queries=w.queries)),
    )
    async with pipeline.worker(name="w") as worker:
        await worker.run_once()  # validated
        report = await worker.run_once()  # the parse is refused; the raise lands
        assert report.action is StepAction.REQUEUED, report
        assert await states(db) == [("queued", None)]
        monkeypatch.undo()
        while await db.fetchval("SELECT state <> 'done' FROM upload_jobs"):
            await worker.run_once()

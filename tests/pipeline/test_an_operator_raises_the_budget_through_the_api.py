"""The API's budget endpoint, job status with cost and hold, and health with the budget."""

from __future__ import annotations

import uuid
from decimal import Decimal

import asyncpg
import httpx
import pytest

from pipeline_models.clock import SystemClock
from pipeline_models.documents import markdown_document
from pipeline_models.pipeline.api import ApiSettings, create_api
from pipeline_models.pipeline.auth import TokenIssuer
from pipeline_models.pipeline.budget import Budget
from tests.conftest import PipelineFactory

pytestmark = pytest.mark.anyio

SECRET = "token-secret-for-the-budget-tests-0123456789"
OPERATOR, ALICE = uuid.UUID(int=100), uuid.UUID(int=1)


async def test_an_operator_raises_the_budget_and_the_held_job_finishes(
    make_pipeline: PipelineFactory, db: asyncpg.Connection
) -> None:
    budget = Budget()
    pipeline = make_pipeline(clock=SystemClock(), budget=budget)
    app = create_api(
        pipeline,
        ApiSettings(token_secret=SECRET, webhook_secrets=("s",), operators=frozenset({OPERATOR})),
    )
    tokens = TokenIssuer(SECRET)
    await budget.set_limit(db, Decimal(0), pipeline.clock.now())
    upload = await pipeline.upload(db, user_id=ALICE, document=markdown_document("# Op\n\nx y"))
    await pipeline.run_workers(1, timeout=30)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as client:
        alice = {"Authorization": f"Bearer {tokens.issue(ALICE)}"}
        status = (await client.get(f"/jobs/{upload.job_id}", headers=alice)).json()
        assert (status["state"], status["held_for"]) == ("queued", "budget")
        assert status["cost"] == {
            "pages_billed": 0,
            "tokens_billed": 0,
            "cost_usd": "0",
            "cost_unconfirmed_usd": "0",
        }
        health = (await client.get("/health")).json()
        assert health["held"] == {"job_validated": 1}
        assert health["budget"]["limit_usd"] == "0"

        refused = await client.put("/operator/budget", json={"max_cost_usd": "1.00"}, headers=alice)
        assert refused.status_code == 403
        operator = {"Authorization": f"Bearer {tokens.issue(OPERATOR)}"}
        raised = await client.put(
            "/operator/budget", json={"max_cost_usd": "1.00"}, headers=operator
        )
        assert raised.status_code == 200, raised.text
        assert raised.json()["released"] == 1
        bad = await client.put("/operator/budget", json={"max_cost_usd": "lots"}, headers=operator)
        assert bad.status_code == 422

        await pipeline.run_workers(1, timeout=30)
        status = (await client.get(f"/jobs/{upload.job_id}", headers=alice)).json()
        assert (status["state"], status["held_for"]) == ("done", None)
        assert Decimal(status["cost"]["cost_usd"]) > 0
        assert status["cost"]["pages_billed"] == 1
        health = (await client.get("/health")).json()
        assert Decimal(health["cost"]["cost_usd"]) == Decimal(status["cost"]["cost_usd"])

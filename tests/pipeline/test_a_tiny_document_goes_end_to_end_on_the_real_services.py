"""Live: the real parser and embeddings APIs, a tiny document, a budget of a few cents.

Runs only with PIPELINE_PARSER_KEY/URL, PIPELINE_EMBEDDINGS_KEY/URL (real services) and
PIPELINE_MAX_COST; otherwise it is deselected and the summary says why, once.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from pipeline_models.database import Database
from pipeline_models.documents import markdown_document
from pipeline_models.pipeline.budget import Budget
from pipeline_models.pipeline.config import WorkerConfig
from pipeline_models.pipeline.ratelimit import RateLimits
from pipeline_models.pipeline.reference import ReferencePipeline
from pipeline_models.settings import Settings

pytestmark = [pytest.mark.anyio, pytest.mark.live]

# Whatever the environment asks for, this test never spends more than this.
CEILING = Decimal("0.05")


async def test_a_tiny_document_goes_end_to_end_on_the_real_services(
    clean_pipeline_database: Database, tmp_path: object
) -> None:
    settings = Settings.from_env()
    assert settings.max_cost_usd is not None
    limit = min(settings.max_cost_usd, CEILING)
    budget = Budget()
    pipeline = ReferencePipeline.over_http(
        clean_pipeline_database,
        storage_root=f"{tmp_path}/blobs",
        parser_url=settings.parser_url,
        embeddings_url=settings.embeddings_url,
        parser_key=settings.parser_key,
        embeddings_key=settings.embeddings_key,
        config=WorkerConfig(parser_poll_seconds=2.0, prices=settings.prices),
        budget=budget,
        rate_limits=RateLimits(settings.rates),
    )
    async with pipeline:
        connection = await clean_pipeline_database.connect(application_name="live test")
        try:
            await budget.set_limit(connection, limit, pipeline.clock.now())
            document = markdown_document("# Live\n\nOne short paragraph for a live run.\n")
            await pipeline.upload(connection, user_id=uuid.UUID(int=1), document=document)
            await pipeline.run_workers(1, timeout=300)
            job = await connection.fetchrow("SELECT state, held_for FROM upload_jobs")
            cost = await connection.fetchval("SELECT sum(cost_usd) FROM billed_calls")
            state = await budget.state(connection)
        finally:
            await connection.close()
    assert job["state"] == "done", dict(job)
    assert state is not None
    assert 0 < cost == state.spent_usd <= limit

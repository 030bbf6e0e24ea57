from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import settings

from pipeline_models.clock import ManualClock
from pipeline_models.database import Database
from pipeline_models.pipeline.config import WorkerConfig
from pipeline_models.pipeline.reference import ReferencePipeline

# The suite is derandomized so that CI is repeatable; explore with a random seed with
# `pytest --hypothesis-profile=explore`.
settings.register_profile("repeatable", derandomize=True, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile("repeatable")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    # The pipeline is asyncio code (asyncpg); trio is not a target.
    return "asyncio"


@pytest.fixture
async def db(clean_pipeline_database: Database) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the emptied pipeline database."""
    connection = await clean_pipeline_database.connect(application_name="test")
    try:
        yield connection
    finally:
        await connection.close()


# Small vectors keep end-to-end tests fast; the dimension is a parameter like any other.
TEST_CONFIG = WorkerConfig(
    embed_dimensions=64,
    parser_poll_seconds=0.01,
    idle_seconds=0.01,
    chunk_batch_size=4,
    embed_batch_size=4,
)


PipelineFactory = Callable[..., ReferencePipeline]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def make_pipeline(
    clean_pipeline_database: Database, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[PipelineFactory]:
    """Build reference pipelines on in-process fakes (manual clock, small batches)."""
    built: list[ReferencePipeline] = []

    def make(**options: Any) -> ReferencePipeline:
        options.setdefault("config", TEST_CONFIG)
        options.setdefault("clock", clock)
        pipeline = ReferencePipeline.with_fakes(
            clean_pipeline_database, storage_root=tmp_path / "blobs", **options
        )
        built.append(pipeline)
        return pipeline

    yield make
    for pipeline in built:
        await pipeline.aclose()


@pytest.fixture
def pipeline(make_pipeline: PipelineFactory) -> ReferencePipeline:
    """The reference pipeline on healthy in-process fakes, with a manual clock."""
    return make_pipeline()

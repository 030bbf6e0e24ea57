from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import settings

from pipeline_models.clock import ManualClock
from pipeline_models.database import Database
from pipeline_models.pipeline.config import WorkerConfig
from pipeline_models.pipeline.reference import ReferencePipeline
from pipeline_models.settings import Settings

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
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temp directory of the test's own, for this process and its children (TMPDIR),
    to see what a run leaves behind. Short: an embedded Postgres puts its socket in it,
    and a socket's path has a length limit. (After tmp_path, which pytest makes in the
    real temp directory.)"""
    directory = Path(tempfile.mkdtemp(prefix="pm-tmp-"))
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    monkeypatch.setenv("TMPDIR", str(directory))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


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


# -- live tests ------------------------------------------------------------------------

_LIVE_NEEDS = (
    ("PIPELINE_PARSER_KEY", "the parser's API key"),
    ("PIPELINE_EMBEDDINGS_KEY", "the embeddings API key"),
    ("PIPELINE_PARSER_URL", "the real parser's URL"),
    ("PIPELINE_EMBEDDINGS_URL", "the real embeddings URL"),
    ("PIPELINE_MAX_COST", "a spending cap in USD"),
)
_FAKE_HOSTS = ("127.0.0.1", "localhost", "[::1]", ".fake")


def cluster_settings(database: Database, blobs: Path, **changes: Any) -> Settings:
    """Settings for processes of a local cluster on the test database, blobs under
    ``blobs``; ``changes`` are the test's own (a lease, keys, a spending cap)."""
    return Settings(
        database_url=database.url, schema=database.schema, storage_root=blobs, **changes
    )


def live_services_missing(environ: Mapping[str, str] | None = None) -> str | None:
    """Why live tests cannot run here (None: they can): keys, real URLs and a cap."""
    env = os.environ if environ is None else environ
    missing = [what for variable, what in _LIVE_NEEDS if not env.get(variable)]
    if missing:
        return "live tests need " + ", ".join(missing) + " (PIPELINE_* variables)"
    for variable in ("PIPELINE_PARSER_URL", "PIPELINE_EMBEDDINGS_URL"):
        if any(host in env[variable] for host in _FAKE_HOSTS):
            return f"live tests need real services, but {variable} points at a fake"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = live_services_missing()
    if reason is None:
        return
    live = [item for item in items if item.get_closest_marker("live")]
    if live:
        items[:] = [item for item in items if not item.get_closest_marker("live")]
        config.hook.pytest_deselected(items=live)
        config.stash[_LIVE_DESELECTED] = (len(live), reason)


_LIVE_DESELECTED = pytest.StashKey[tuple[int, str]]()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if (deselected := config.stash.get(_LIVE_DESELECTED, None)) is not None:
        count, reason = deselected
        terminalreporter.write_line(f"{count} live test(s) deselected: {reason}")


def run_pytest(
    cwd: Path,
    *arguments: str,
    leave_out: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """pytest in a child process in ``cwd``, without this session's PYTEST_ variables
    (the parent's current test) nor those named or prefixed in ``leave_out``, with
    ``env`` added."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", *leave_out))}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *arguments],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )

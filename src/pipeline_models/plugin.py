"""The pytest plugin (entry point ``pytest11``): options and default fixtures only.

Every option exists as a ``--pipeline-*`` flag and an ini key; the flag wins, then the
ini key, then the environment (``DATABASE_URL``), then the embedded Postgres. Importing
this module is cheap: the database machinery is imported when a fixture first runs.

A wrong setting is a usage error (exit 4) in one line, before any test runs: a profile
that does not exist, and a database the session's tests need but cannot reach (one
connection is tried once they are collected, instead of an error for each test).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pipeline_models.database import Database

_OPTIONS = {
    "database_url": (
        "Postgres URL for the pipeline's tables (default: DATABASE_URL, else an embedded "
        "throwaway server)"
    ),
    "schema": "schema holding the pipeline's tables (default: upload_pipeline)",
    "profile": "Hypothesis profile of the machines: ci, dev, fuzz or debug (default: ci)",
    "example_database": (
        "replay the failures in this example database, read-only: a directory or a "
        "redis:// URL (default: PIPELINE_MODELS_EXAMPLE_DATABASE, else Hypothesis's own)"
    ),
    "transitions_file": (
        "write the machines' transition counts here at the end of the session, for "
        "`pipeline-models report` (default: .pipeline-models/transitions-pytest.json)"
    ),
}


@dataclass(frozen=True)
class PipelineSettings:
    database_url: str | None
    schema: str
    profile: str | None
    example_database: str | None
    transitions_file: str


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pipeline-models", "model-checking Postgres pipelines")
    for name, help_text in _OPTIONS.items():
        flag = "--pipeline-" + name.replace("_", "-")
        group.addoption(flag, dest=f"pipeline_{name}", default=None, help=help_text)
        parser.addini(f"pipeline_{name}", help_text, default="")


def pipeline_settings(config: pytest.Config) -> PipelineSettings:
    """The plugin's settings, resolved from flags, ini keys and the environment."""

    def value(name: str) -> str | None:
        flag = config.getoption(f"pipeline_{name}")
        ini = config.getini(f"pipeline_{name}")
        return str(flag or ini or "") or None

    return PipelineSettings(
        database_url=value("database_url") or os.environ.get("DATABASE_URL") or None,
        schema=value("schema") or "upload_pipeline",
        profile=value("profile"),
        example_database=value("example_database")
        or os.environ.get("PIPELINE_MODELS_EXAMPLE_DATABASE")
        or None,
        transitions_file=value("transitions_file") or ".pipeline-models/transitions-pytest.json",
    )


def _profile_source(config: pytest.Config) -> str:
    if config.getoption("pipeline_profile"):
        return "--pipeline-profile"
    if config.getini("pipeline_profile"):
        return "the pipeline_profile ini key"
    from pipeline_models.profiles import ENVIRONMENT_VARIABLE

    return ENVIRONMENT_VARIABLE


def pytest_configure(config: pytest.Config) -> None:
    from pipeline_models import profiles

    settings = pipeline_settings(config)
    profiles.register_profiles()
    try:
        profiles.select_profile(settings.profile)
    except ValueError as error:
        raise pytest.UsageError(
            f"pipeline-models: {error} (from {_profile_source(config)})"
        ) from None
    if settings.database_url:
        from pipeline_models.core.machines import use_server

        # Queue machines (machine_for(YourAdapter).TestCase) check on the same server.
        use_server(settings.database_url)
    if settings.example_database:
        from pipeline_models.examples_database import example_database

        # Read-only: CI replays what fuzz sessions found, and neither adds its own
        # failures to the shared database nor deletes those it does not reproduce.
        profiles.use_example_database(example_database(settings.example_database, read_only=True))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Try the configured database once if the collected tests need it: unreachable, it is
    one line and a usage error now, not the same long error for every test that uses it.
    A session whose tests do not use it never connects (the plugin is loaded in every
    pytest run of the environment, and DATABASE_URL may be another project's)."""
    settings = pipeline_settings(session.config)
    if settings.database_url is None or session.config.option.collectonly:
        return
    if not any("pipeline_database" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    from pipeline_models.errors import PipelineModelsError

    try:
        asyncio.run(_try_connecting(settings))
    except PipelineModelsError as error:
        raise pytest.UsageError(f"pipeline-models: {error}") from None


async def _try_connecting(settings: PipelineSettings) -> None:
    from pipeline_models.database import Database

    database = Database.from_environment(settings.database_url, schema=settings.schema)
    connection = await database.connect(application_name="pipeline-models pytest")
    await connection.close()


def pytest_sessionfinish(session: pytest.Session) -> None:
    machines = sys.modules.get("pipeline_models.machines")
    if machines is None or not machines.STATISTICS.examples:
        return
    from pipeline_models.report import save_statistics

    path = Path(session.config.rootpath) / pipeline_settings(session.config).transitions_file
    save_statistics(machines.STATISTICS, path, source="pytest")


def pytest_report_header(config: pytest.Config) -> str:
    settings = pipeline_settings(config)
    if settings.database_url is None:
        where = "embedded Postgres (no DATABASE_URL)"
    else:
        from pipeline_models.database import redact

        where = redact(settings.database_url)
    from pipeline_models.profiles import active_profile

    return (
        f"pipeline-models: database {where}, schema {settings.schema}, "
        f"machine profile {active_profile()}"
        + (f", example database {settings.example_database}" if settings.example_database else "")
    )


@pytest.fixture(scope="session")
def pipeline_database(pytestconfig: pytest.Config) -> Iterator[Database]:
    """The session's database with the pipeline schema applied (embedded unless configured).

    The embedded server is stopped when the session ends, whatever way it ends.
    """
    from pipeline_models.database import Database

    settings = pipeline_settings(pytestconfig)
    database = Database.from_environment(settings.database_url, schema=settings.schema)
    try:
        asyncio.run(database.ensure_schema())
        yield database
    finally:
        database.close()


@pytest.fixture(scope="session")
def pipeline_machines(pipeline_database: Database) -> Database:
    """Point the state machines of :mod:`pipeline_models.machines` at the session's database.

    Use it with ``@pytest.mark.usefixtures("pipeline_machines")`` (or autouse it in a
    conftest) on the ``TestCase`` of a machine.
    """
    from pipeline_models.machines import use_database

    use_database(pipeline_database)
    return pipeline_database


@pytest.fixture
def clean_pipeline_database(pipeline_database: Database) -> Database:
    """The session's database, emptied before the test."""

    async def reset() -> None:
        connection = await pipeline_database.connect()
        try:
            await pipeline_database.reset(connection)
        finally:
            await connection.close()

    asyncio.run(reset())
    return pipeline_database

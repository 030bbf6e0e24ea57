from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from pipeline_models.database import Database, ResetStrategy, redact
from pipeline_models.errors import DatabaseConfigurationError
from pipeline_models.lifecycle import Stage, State

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_redact_hides_only_the_password() -> None:
    assert redact("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert redact("postgresql://app@db/x") == "postgresql://app@db/x"


async def _connect(url: str) -> None:
    await Database.from_environment(url).connect()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://app:s3cret@127.0.0.1:1/db", "connection refused"),
        ("postgresql://app:s3cret@no-such-host.invalid:5432/db", "does not resolve"),
        ("mysql://app:s3cret@127.0.0.1/db", "scheme 'mysql'"),
        ("not a url at all", "scheme"),
    ],
)
async def test_a_wrong_database_url_fails_fast_naming_it_without_the_password(
    url: str, says: str
) -> None:
    started = time.monotonic()
    with pytest.raises(DatabaseConfigurationError) as raised:
        await _connect(url)
    message = str(raised.value)
    assert says in message
    assert "s3cret" not in message
    assert "DATABASE_URL" in message
    assert time.monotonic() - started < 10


async def test_a_missing_database_is_named_with_the_fix(pipeline_database: Database) -> None:
    url = pipeline_database.url
    if "?" in url:
        base, query = url.split("?", 1)
        missing = base.rsplit("/", 1)[0] + "/no_such_database?" + query
    else:
        missing = url.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(DatabaseConfigurationError, match=r"no such database.*createdb"):
        await Database(missing).connect()


async def test_the_schema_is_applied_once_and_then_left_alone(
    pipeline_database: Database,
) -> None:
    assert await pipeline_database.ensure_schema() is False
    connection = await pipeline_database.connect()
    try:
        tables = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1", pipeline_database.schema
        )
    finally:
        await connection.close()
    assert {t["tablename"] for t in tables} >= set(pipeline_database.tables)


async def test_a_schema_pipeline_models_did_not_create_is_refused(
    pipeline_database: Database,
) -> None:
    foreign = f"someone_else_{uuid.uuid4().hex[:8]}"
    connection = await pipeline_database.connect()
    try:
        await connection.execute(f'CREATE SCHEMA "{foreign}"')
        await connection.execute(f'CREATE TABLE "{foreign}".precious (x int)')
        with pytest.raises(DatabaseConfigurationError, match="not created by pipeline-models"):
            await Database(pipeline_database.url, schema=foreign).ensure_schema()
        assert await connection.fetchval(f'SELECT count(*) FROM "{foreign}".precious') == 0
    finally:
        await connection.execute(f'DROP SCHEMA "{foreign}" CASCADE')
        await connection.close()


async def _insert_document(db: asyncpg.Connection) -> uuid.UUID:
    document_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO documents (document_id, user_id, filename, declared_type, file_sha256,"
        " size_bytes, raw_blob_key, created_at, updated_at)"
        " VALUES ($1, $2, 'a.md', 'text/markdown', $3, 1, 'raw/x', $4, $4)",
        document_id,
        uuid.uuid4(),
        uuid.uuid4().hex,
        NOW,
    )
    return document_id


async def _insert_job(
    db: asyncpg.Connection, document_id: uuid.UUID, stage: str, state: str
) -> None:
    await db.execute(
        "INSERT INTO upload_jobs (job_id, document_id, user_id, stage, state, next_attempt_at,"
        " correlation_id, created_at, updated_at, owner, lease_expires_at, last_error)"
        " VALUES ($1, $2, $3, $4, $5, $6, 'c', $6, $6, 'w', $6, 'e')",
        uuid.uuid4(),
        document_id,
        uuid.uuid4(),
        stage,
        state,
        NOW,
    )


@pytest.mark.parametrize(
    ("stage", "state", "constraint"),
    [
        ("bogus", "queued", "upload_jobs_stage"),
        ("queued", "sleeping", "upload_jobs_state"),
        ("parsing", "done", "upload_jobs_done_only_at_last_stage"),
    ],
)
async def test_the_database_refuses_positions_the_lifecycle_does_not_know(
    db: asyncpg.Connection, stage: str, state: str, constraint: str
) -> None:
    document_id = await _insert_document(db)
    with pytest.raises(asyncpg.CheckViolationError, match=constraint):
        await _insert_job(db, document_id, stage, state)


async def test_one_live_job_per_document(db: asyncpg.Connection) -> None:
    document_id = await _insert_document(db)
    await _insert_job(db, document_id, Stage.QUEUED.value, State.QUEUED.value)
    with pytest.raises(asyncpg.UniqueViolationError):
        await _insert_job(db, document_id, Stage.PARSING.value, State.WORKING.value)
    # A finished job does not block a new one for the same document.
    await _insert_job(db, document_id, Stage.EMBEDDED.value, State.DONE.value)


@pytest.mark.parametrize("strategy", list(ResetStrategy))
async def test_reset_leaves_every_table_empty_as_if_new(
    db: asyncpg.Connection, clean_pipeline_database: Database, strategy: ResetStrategy
) -> None:
    document_id = await _insert_document(db)
    await _insert_job(db, document_id, "queued", "queued")
    await db.execute("INSERT INTO events (action, created_at) VALUES ('x', $1)", NOW)
    await clean_pipeline_database.reset(db, strategy)
    assert set((await clean_pipeline_database.row_counts(db)).values()) == {0}
    first_event = await db.fetchval(
        "INSERT INTO events (action, created_at) VALUES ('y', $1) RETURNING event_id", NOW
    )
    assert first_event == 1

"""Postgres for the pipeline and its checker: a server from DATABASE_URL, or an embedded one.

Example::

    with Database.from_environment() as database:
        connection = await database.connect()
        await database.reset(connection)

Without a URL (argument, then ``DATABASE_URL``) an embedded throwaway server starts on
first use and stops with the process. A bad URL fails fast, before any work, with a
message that names the URL (password hidden) and what to do.

Isolation between tests (and, in the checker, between examples) is a *reset* of the
pipeline's tables. ``benchmarks/reset_cost.py`` measures the strategies; DELETE won on
the small states tests and examples leave (see the README for the figures), so it is the
default.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import asyncpg

from pipeline_models.core.server import (
    CONNECT_TIMEOUT,
    ENVIRONMENT_VARIABLE,
    _explain_connect_error,
    _validate_url,
    connect,
    redact,
    resolve_url,
)
from pipeline_models.embedded import EmbeddedPostgres
from pipeline_models.errors import DatabaseConfigurationError
from pipeline_models.schema import (
    DEFAULT_SCHEMA,
    TABLES_CHILDREN_FIRST,
    ddl_statements,
    schema_fingerprint,
)

logger = logging.getLogger(__name__)

_FINGERPRINT_PREFIX = "pipeline-models schema "
_SCHEMES = ("postgresql", "postgres")


class ResetStrategy(StrEnum):
    DELETE = "delete"
    TRUNCATE = "truncate"


async def _init_connection(connection: asyncpg.Connection) -> None:
    for json_type in ("json", "jsonb"):
        await connection.set_type_codec(
            json_type, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


# Polls for facts (a session gone), never for time the checker's clock may own.
_REAL_SLEEP = asyncio.sleep
# Every session this process opened, with the URL it went to: what an outage ends when
# the server is not this process's to stop (see Database.outage).
_SESSIONS: weakref.WeakKeyDictionary[asyncpg.Connection, str] = weakref.WeakKeyDictionary()
# Writes out the WAL of every commit so far: the throwaway settings commit
# asynchronously, leaving up to a few hundred milliseconds of commits in shared memory,
# which an immediate stop discards (every commit since the server started, on a server
# this young). A checkpoint is the one sure flush (a synchronous commit flushes only
# when its transaction wrote WAL itself); a few milliseconds on these small databases.
_FLUSH_WAL = "CHECKPOINT"
# $1 pids int[]
_TERMINATE = "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM unnest($1::int[]) pid"
_STILL_THERE = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])"


@dataclass(frozen=True)
class Outage:
    """What :meth:`Database.outage` did: how, to how many sessions, in how long."""

    how: str  # "server restarted" or "sessions ended"
    sessions: int  # the sessions of this process that were open and lost
    seconds: float

    def __str__(self) -> str:
        return f"{self.how}: {self.sessions} sessions lost in {self.seconds:.3f} s"


@dataclass
class Database:
    """A Postgres server holding the pipeline's schema.

    Build it with :meth:`from_environment`; it owns the embedded server if it started
    one, and stops it on :meth:`close` (or at the end of a ``with`` block).
    """

    url: str
    schema: str = DEFAULT_SCHEMA
    embedded: EmbeddedPostgres | None = None
    reset_strategy: ResetStrategy = ResetStrategy.DELETE
    extra_tables: Sequence[str] = field(default_factory=tuple)

    @classmethod
    def from_environment(
        cls,
        url: str | None = None,
        *,
        schema: str = DEFAULT_SCHEMA,
        reset_strategy: ResetStrategy = ResetStrategy.DELETE,
    ) -> Database:
        """A database from ``url``, else ``DATABASE_URL``, else a new embedded server."""
        resolved = resolve_url(url)
        if resolved is None:
            server = EmbeddedPostgres.start()
            return cls(server.url, schema=schema, embedded=server, reset_strategy=reset_strategy)
        _validate_url(resolved)
        return cls(resolved, schema=schema, reset_strategy=reset_strategy)

    @property
    def display_url(self) -> str:
        return "embedded Postgres" if self.embedded else redact(self.url)

    async def connect(self, *, application_name: str = "pipeline-models") -> asyncpg.Connection:
        """A new connection with ``search_path`` set to the pipeline's schema."""
        connection = await connect(
            self.url, search_path=self.schema, application_name=application_name
        )
        await _init_connection(connection)
        _SESSIONS[connection] = self.url
        return connection

    async def _init_pooled(self, connection: asyncpg.Connection) -> None:
        await _init_connection(connection)
        _SESSIONS[connection] = self.url

    async def create_pool(
        self, *, min_size: int = 1, max_size: int = 10, application_name: str = "pipeline-models"
    ) -> asyncpg.Pool:
        """A connection pool with the same settings as :meth:`connect` (for the API)."""
        try:
            pool = await asyncpg.create_pool(
                self.url,
                min_size=min_size,
                max_size=max_size,
                timeout=CONNECT_TIMEOUT,
                server_settings={"search_path": self.schema, "application_name": application_name},
                init=self._init_pooled,
            )
        except (asyncpg.PostgresError, OSError, TimeoutError, asyncpg.InterfaceError) as error:
            raise _explain_connect_error(self.url, error) from error
        assert pool is not None
        return pool

    def sessions(self) -> list[asyncpg.Connection]:
        """The open sessions this process has with this database (pools' included) in
        the running event loop (a session belongs to the loop that opened it)."""
        loop = asyncio.get_running_loop()
        return [
            connection
            for connection, url in list(_SESSIONS.items())
            if url == self.url
            and getattr(connection, "_loop", loop) is loop
            and not connection.is_closed()
        ]

    async def outage(self, survivor: asyncpg.Connection | None = None) -> Outage:
        """The whole database goes away and comes back: every session of this process
        (in the running event loop) is lost, its open transaction rolled back;
        committed work stays.

        An embedded server this process started is stopped at once (as in a crash) and
        started again on the same data directory and socket; its WAL is flushed first,
        as a durable server's commits are. Any other server (``DATABASE_URL``, or an
        embedded one another process started, as the mutants runner's parallel children
        share theirs) keeps running: every session this process opened to the database
        is ended (``pg_terminate_backend``), except ``survivor``, and never another
        process's (several checker processes share one database, each in its schema).
        Returns once every lost session is gone in the server and seen closed here.
        """
        started = time.perf_counter()
        lost = [c for c in self.sessions() if c is not survivor]
        if self.embedded is not None:
            if survivor is not None:
                await survivor.execute(_FLUSH_WAL)
            # Blocking the event loop, on purpose: nothing of the pipeline runs while the
            # server is down (an asyncpg pool would try to refill itself, and fail, as
            # many times as timing allows), so every replay sees the same outage: its
            # sessions lost, the server back before anyone reconnects.
            self.embedded.restart()
            how, lost = "server restarted", [*lost, *([survivor] if survivor else [])]
        else:
            pids = [c.get_server_pid() for c in lost]
            admin = survivor or await self.connect(application_name="pipeline-models outage")
            try:
                await admin.fetchval(_TERMINATE, pids)
                deadline = time.monotonic() + 10
                while await admin.fetchval(_STILL_THERE, pids) and time.monotonic() < deadline:
                    await _REAL_SLEEP(0.001)
            finally:
                if survivor is None:
                    await admin.close()
            how = "sessions ended"
        # Closed here too before anything runs again: the next query on a lost session
        # must fail the same way in every replay, not depend on when its socket's end
        # was read.
        deadline = time.monotonic() + 10
        while any(not c.is_closed() for c in lost) and time.monotonic() < deadline:
            await _REAL_SLEEP(0.001)
        return Outage(how, len(lost), time.perf_counter() - started)

    async def ensure_schema(self) -> bool:
        """Create the schema if missing or outdated; True if anything was created.

        Safe to call from many processes at once (an advisory lock serialises them). A
        schema of the same name that pipeline-models did not create is never touched.
        """
        expected = _FINGERPRINT_PREFIX + schema_fingerprint()
        connection = await self.connect(application_name="pipeline-models schema")
        try:
            async with connection.transaction():
                await connection.execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1))", f"pipeline-models:{self.schema}"
                )
                found = await connection.fetchval(
                    "SELECT coalesce(obj_description(oid, 'pg_namespace'), '') "
                    "FROM pg_namespace WHERE nspname = $1",
                    self.schema,
                )
                if found == expected:
                    return False
                quoted = _quote_identifier(self.schema)
                if found is not None:
                    if not found.startswith(_FINGERPRINT_PREFIX):
                        raise DatabaseConfigurationError(
                            f"schema {self.schema!r} in {self.display_url} was not created by "
                            "pipeline-models; it is left alone. Choose another schema "
                            "(--pipeline-schema, or Database(schema=...))."
                        )
                    logger.warning(
                        "schema changed, rebuilding",
                        extra={"action": "schema_rebuilt", "schema": self.schema},
                    )
                    await connection.execute(f"DROP SCHEMA {quoted} CASCADE")
                await connection.execute(f"CREATE SCHEMA {quoted}")
                await connection.execute(f"SET LOCAL search_path TO {quoted}")
                for statement in ddl_statements():
                    await connection.execute(statement)
                await connection.execute(f"COMMENT ON SCHEMA {quoted} IS '{expected}'")
                return True
        finally:
            await connection.close()

    async def drop_schema(self) -> None:
        """Drop the schema if pipeline-models created it (a throwaway run's cleanup);
        a schema of the same name that it did not create is left alone."""
        connection = await self.connect(application_name="pipeline-models schema")
        try:
            found = await connection.fetchval(
                "SELECT coalesce(obj_description(oid, 'pg_namespace'), '') "
                "FROM pg_namespace WHERE nspname = $1",
                self.schema,
            )
            if found is not None and found.startswith(_FINGERPRINT_PREFIX):
                await connection.execute(f"DROP SCHEMA {_quote_identifier(self.schema)} CASCADE")
        finally:
            await connection.close()

    @property
    def tables(self) -> tuple[str, ...]:
        """Every table a reset empties: the pipeline's children first, then the extra
        (checker) tables last, so that what their triggers record of the reset itself
        is emptied too."""
        return (*(t.name for t in TABLES_CHILDREN_FIRST), *self.extra_tables)

    async def reset(
        self, connection: asyncpg.Connection, strategy: ResetStrategy | None = None
    ) -> None:
        """Empty every pipeline table and restart identities, as if freshly created."""
        strategy = strategy or self.reset_strategy
        tables = [_quote_identifier(t) for t in self.tables]
        if strategy is ResetStrategy.TRUNCATE:
            await connection.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY")
            return
        names = ",".join(self.tables)
        statements = [f"DELETE FROM {table}" for table in tables]
        # Identity columns restart too, found in the catalog (cheap, and it sees tables
        # the checker added after the first reset).
        statements.append(
            "SELECT setval(pg_get_serial_sequence(a.attrelid::regclass::text, a.attname), 1, "
            "false) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE n.nspname = current_schema() AND a.attidentity <> '' "
            f"AND c.relname = ANY('{{{names}}}'::text[])"
        )
        # One round trip: a simple-protocol script runs in one implicit transaction.
        await connection.execute(";\n".join(statements))

    async def row_counts(self, connection: asyncpg.Connection) -> dict[str, int]:
        """Rows per pipeline table (for tests and reports)."""
        counts = {}
        for table in self.tables:
            counts[table] = await connection.fetchval(
                f"SELECT count(*) FROM {_quote_identifier(table)}"
            )
        return counts

    def close(self) -> None:
        """Stop the embedded server, if this database started one."""
        if self.embedded is not None:
            self.embedded.stop()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Database({self.display_url!r}, schema={self.schema!r})"


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


__all__ = [
    "ENVIRONMENT_VARIABLE",
    "Database",
    "Outage",
    "ResetStrategy",
    "redact",
    "resolve_url",
]

"""Checkpoints without editing the worker: interposed where it talks to the world.

A worker under the checker runs as asyncio tasks whose context names it (:data:`ACTOR`).
Wherever such a task makes a round trip, it first waits for the scheduler's leave:

* a statement on a database connection (:class:`CheckedConnection`, an
  ``asyncpg.Connection``, and :func:`checked_psycopg_class`, a psycopg 3
  ``AsyncConnection``; :func:`patched_drivers` makes ``asyncpg.connect``,
  ``asyncpg.create_pool`` and ``psycopg.AsyncConnection.connect`` (so psycopg_pool's
  pools) use them, so a worker that connects by itself is checked as it is), named by
  what comes next: ``before UPDATE guide.jobs SET state = 'running' …`` or ``before
  COMMIT``;
* an HTTP request through :class:`CheckedTransport` (an httpx transport wrapping the
  worker's own), before it is sent and after its answer (its effect is out);
* ``asyncio.sleep``: the worker waits for the checker's time to pass, not the wall's;
* a call run in a thread (``asyncio.to_thread``, ``loop.run_in_executor``) is in flight
  until it returns.

The session of every connection a worker uses is named after it (``application_name``,
so the audit trail knows the actor) and reads the checker's clock (``search_path``).
Outside a worker's context nothing changes: the checker's own connections, and the
adapter's, behave as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import re
import time
import weakref
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, Protocol

import asyncpg
import httpx
import httpx2

from pipeline_models.core.clock import unreachable_time


class Actor(Protocol):
    """What an interposed round trip reports to (the scheduler's view of one worker)."""

    name: str
    clock_schema: str

    async def round_trip(self, kind: str, label: str) -> None:
        """Wait for leave to make the round trip ``label`` (kind: statement, commit,
        rollback, call, after_call)."""

    def flying(self, pid: int | None, label: str) -> object:
        """A round trip left: the token to land with."""

    def landed(self, token: object) -> None:
        """The round trip ``token`` came back (or failed)."""

    async def sleep(self, seconds: float) -> None:
        """Wait until the checker's time has moved ``seconds`` on."""

    def warn(self, message: str) -> None:
        """Something the checker cannot see through (said once per message)."""

    def uses(self, connection: Any) -> None:
        """``connection`` is one of this worker's (cut client-side when it crashes)."""

    def from_thread(self, coroutine: Any) -> Any:
        """Run one of the coroutines above from a worker's thread, blocking it."""

    def thread_starts(self) -> None:
        """A thread of this worker starts: in flight until its first round trip."""

    def effect(self, label: str) -> None:
        """A call of this worker's was answered: its effect is out in the world."""


ACTOR: ContextVar[Actor | None] = ContextVar("pipeline_models_actor", default=None)
OPENED: weakref.WeakSet[CheckedConnection] = weakref.WeakSet()

_REAL_SLEEP = asyncio.sleep
_NOT_PARKED = frozenset({"BEGIN", "START", "SAVEPOINT", "RELEASE", "SET", "SHOW", "RESET"})
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
LABEL_LENGTH = 72
# A statement's closing row-locking clause: kept in a shortened label, since it says the
# worker is about to lock rows to write them (a pause point, and the story's turn).
_LOCKING_TAIL = re.compile(
    r"\s(FOR (?:NO KEY )?UPDATE|FOR (?:KEY )?SHARE)(?: OF [\w., ]+)?(?: NOWAIT| SKIP LOCKED)?$",
    re.IGNORECASE,
)


def describe_statement(sql: str) -> tuple[str, str]:
    """The kind of a statement and its label: what a shrunk program reads.

    >>> describe_statement("  UPDATE jobs\\n   SET state = 'done'  WHERE id = $1 -- done")
    ('statement', "UPDATE jobs SET state = 'done' WHERE id = $1")
    >>> describe_statement("COMMIT;")
    ('commit', 'COMMIT')

    A long statement is cut short, but its closing row-locking clause is kept:

    >>> describe_statement("SELECT id FROM jobs WHERE id = $1 AND owner = $2 AND "
    ...     "state = 'running' AND lease_until > now() FOR UPDATE")[1]
    'SELECT id FROM jobs WHERE id = $1 AND owner = $2 AND state … FOR UPDATE'
    >>> describe_statement("BEGIN ISOLATION LEVEL READ COMMITTED")[0]
    'begin'

    An empty statement (a pool's liveness check, psycopg_pool's ``check_connection``)
    reads and writes nothing: in flight only, no checkpoint.

    >>> describe_statement("")[0]
    'begin'
    """
    text = " ".join(_COMMENTS.sub(" ", sql).split()).rstrip(";").strip()
    first = text.split(" ", 1)[0].upper() if text else ""
    if first in ("COMMIT", "END"):
        kind = "commit"
    elif first in ("ROLLBACK", "ABORT"):
        kind = "rollback"
    elif first in _NOT_PARKED or not text:
        kind = "begin"
    else:
        kind = "statement"
    if len(text) > LABEL_LENGTH:
        locking = _LOCKING_TAIL.search(text)
        tail = f" … {locking.group(0).strip()}" if locking else " …"
        text = text[: LABEL_LENGTH - len(tail)].rstrip() + tail
    return kind, text


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def terminate_every_connection() -> None:
    """Cut every checked connection still open: the checker closes, and nothing of it
    may outlive it (a pool's background reconnect after a crash cut its connection)."""
    for connection in list(OPENED):
        if not connection.is_closed():
            with contextlib.suppress(Exception):
                connection.terminate()


class CheckedConnection(asyncpg.Connection):  # type: ignore[misc]
    """An asyncpg connection whose round trips, made by a worker, wait for the scheduler.

    Statements through ``prepare()`` and cursors are not interposed (rare in workers).
    """

    _pm_actor_name: str | None = None
    _pm_search_path: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        OPENED.add(self)
        # The worker that opened it owns it from now on: one crashed before its first
        # statement must not leave it open (an unclosed connection at exit).
        actor = ACTOR.get()
        if actor is not None:
            actor.uses(self)

    async def _pm_before(self, query: str) -> tuple[Actor | None, str]:
        actor = ACTOR.get()
        if actor is None:
            return None, ""
        if self._pm_actor_name != actor.name:
            with self._pm_flying(actor, "naming its session"):
                await self._pm_become(actor)
        kind, label = describe_statement(query)
        keyword = unreachable_time(query)
        if keyword:
            actor.warn(
                f"{actor.name} uses {keyword}, which the checker's clock cannot reach "
                f"(in: {label}); use now() so that time is the checker's"
            )
        if kind != "begin":
            await actor.round_trip(kind, label)
        return actor, label

    async def _pm_become(self, actor: Actor) -> None:
        """Name the session after ``actor`` and put the checker's clock first on its
        search_path (not a checkpoint: the worker did not ask for it)."""
        if self._pm_search_path is None:
            # The base class's own _execute: this one would park.
            rows = await asyncpg.Connection._execute(self, "SHOW search_path", (), 0, None)
            self._pm_search_path = str(rows[0][0])
        path = f'"{actor.clock_schema}", pg_catalog, {self._pm_search_path}'
        await self._protocol.query(
            f"SET application_name = {_literal(actor.name)}; SET search_path = {path}", None
        )
        self._pm_actor_name = actor.name
        actor.uses(self)

    @contextlib.contextmanager
    def _pm_flying(self, actor: Actor | None, label: str) -> Iterator[None]:
        if actor is None:
            yield
            return
        # A connection the checker cut (a crash) has no backend left to look at.
        pid = None if self.is_closed() else self.get_server_pid()
        token = actor.flying(pid, label)
        try:
            yield
        finally:
            actor.landed(token)

    async def close(self, *, timeout: float | None = None) -> None:
        with self._pm_flying(ACTOR.get(), "closing its connection"):
            await super().close(timeout=timeout)

    async def reset(self, *, timeout: float | None = None) -> None:
        """A pool resets a connection it takes back (``RESET ALL``): the session's name
        and the checker's clock go with it, so the next actor to use it names it again."""
        try:
            await super().reset(timeout=timeout)
        finally:
            self._pm_actor_name = None

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        if args:  # through _execute, which is interposed
            return str(await super().execute(query, *args, timeout=timeout))
        actor, label = await self._pm_before(query)
        with self._pm_flying(actor, label):
            return str(await super().execute(query, timeout=timeout))

    async def _execute(self, query: str, args: Any, limit: int, timeout: Any, **kw: Any) -> Any:
        actor, label = await self._pm_before(query)
        with self._pm_flying(actor, label):
            return await super()._execute(query, args, limit, timeout, **kw)

    async def _executemany(self, query: str, args: Any, timeout: Any, **kw: Any) -> Any:
        actor, label = await self._pm_before(query)
        with self._pm_flying(actor, label):
            return await super()._executemany(query, args, timeout, **kw)


def checked_class(base: type[asyncpg.Connection]) -> type[asyncpg.Connection]:
    """``base`` (a worker's own connection class) with the checkpoints mixed in."""
    if issubclass(base, CheckedConnection):
        return base
    return type(f"Checked{base.__name__}", (CheckedConnection, base), {})


def _psycopg_round_trip(connection: Any, gen: Any) -> tuple[str, str]:
    """What a psycopg generator will do on the wire: (kind, label), read from the
    generator's own arguments before it starts (psycopg sends everything through its
    connection's ``wait``)."""
    name = getattr(getattr(gen, "gi_code", None), "co_name", "")
    arguments = getattr(getattr(gen, "gi_frame", None), "f_locals", {}) or {}
    if name == "_commit_gen":
        return "commit", "COMMIT"
    if name == "_rollback_gen":
        return "rollback", "ROLLBACK"
    if name == "_exit_gen":  # a transaction block ending: committed unless it raised
        return (
            ("commit", "COMMIT") if arguments.get("exc_type") is None else ("rollback", "ROLLBACK")
        )
    query = arguments.get("query", arguments.get("command"))
    if query is None:
        return "begin", name  # internal (BEGIN, autocommit, fetching a stream): in flight only
    if hasattr(query, "as_string"):
        query = query.as_string(connection)
    elif isinstance(query, bytes | bytearray | memoryview):
        query = bytes(query).decode("utf-8", "replace")
    return describe_statement(str(query))


class _CheckedPsycopg:
    """Mixed into a psycopg ``AsyncConnection`` (see :func:`checked_psycopg_class`)."""

    _pm_actor_name: str | None = None

    async def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        actor = ACTOR.get()
        if actor is None:
            return await super().wait(gen, *args, **kwargs)  # type: ignore[misc]
        if self._pm_actor_name != actor.name:
            token = actor.flying(None, "naming its session")
            try:
                await self._pm_become(actor)
            finally:
                actor.landed(token)
        kind, label = _psycopg_round_trip(self, gen)
        if kind == "statement":
            keyword = unreachable_time(label)
            if keyword:
                actor.warn(
                    f"{actor.name} uses {keyword}, which the checker's clock cannot reach "
                    f"(in: {label}); use now() so that time is the checker's"
                )
        if kind != "begin":
            await actor.round_trip(kind, label)
        token = actor.flying(self.info.backend_pid, label)  # type: ignore[attr-defined]
        try:
            return await super().wait(gen, *args, **kwargs)  # type: ignore[misc]
        finally:
            actor.landed(token)

    async def _pm_become(self, actor: Actor) -> None:
        base = super()
        show = await base.wait(self._exec_command(b"SHOW search_path"))  # type: ignore[attr-defined]
        path = show.get_value(0, 0).decode() if show is not None else "public"
        for command in (
            f"SET application_name = {_literal(actor.name)}",
            f'SET search_path = "{actor.clock_schema}", pg_catalog, {path}',
        ):  # one statement per command: psycopg refuses several results
            await base.wait(self._exec_command(command.encode()))  # type: ignore[attr-defined]
        self._pm_actor_name = actor.name
        actor.uses(self)

    def get_server_pid(self) -> int:
        return int(self.info.backend_pid)  # type: ignore[attr-defined]

    def is_closed(self) -> bool:
        return bool(self.closed)  # type: ignore[attr-defined]

    def terminate(self) -> None:
        self.pgconn.finish()  # type: ignore[attr-defined]


class _CheckedPsycopgSync(_CheckedPsycopg):
    """Mixed into a psycopg (sync) ``Connection`` used by a worker in a thread: the
    thread blocks at each round trip until the scheduler, on the event loop, says go."""

    def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        actor = ACTOR.get()
        base = super(_CheckedPsycopg, self)
        if actor is None:
            return base.wait(gen, *args, **kwargs)  # type: ignore[attr-defined]
        if self._pm_actor_name != actor.name:
            show = base.wait(self._exec_command(b"SHOW search_path"))  # type: ignore[attr-defined]
            path = show.get_value(0, 0).decode() if show is not None else "public"
            for command in (
                f"SET application_name = {_literal(actor.name)}",
                f'SET search_path = "{actor.clock_schema}", pg_catalog, {path}',
            ):
                base.wait(self._exec_command(command.encode()))  # type: ignore[attr-defined]
            self._pm_actor_name = actor.name
            actor.from_thread(_call(actor.uses, self))
        kind, label = _psycopg_round_trip(self, gen)
        if kind != "begin":
            actor.from_thread(actor.round_trip(kind, label))
        token = actor.flying(self.info.backend_pid, label)  # type: ignore[attr-defined]
        try:
            return base.wait(gen, *args, **kwargs)  # type: ignore[attr-defined]
        finally:
            actor.landed(token)


async def _call(function: Any, *args: Any) -> Any:
    return function(*args)


_PSYCOPG_CLASSES: dict[type[Any], type[Any]] = {}


def checked_psycopg_class(base: type[Any]) -> type[Any]:
    """``base`` (a psycopg ``AsyncConnection`` or ``Connection`` class) with the
    checkpoints mixed in."""
    if issubclass(base, _CheckedPsycopg):
        return base
    if base not in _PSYCOPG_CLASSES:
        import psycopg

        mixin = (
            _CheckedPsycopg if issubclass(base, psycopg.AsyncConnection) else _CheckedPsycopgSync
        )
        _PSYCOPG_CLASSES[base] = type(f"Checked{base.__name__}", (mixin, base), {})
    return _PSYCOPG_CLASSES[base]


async def in_a_thread(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a sync worker (``function``) in a thread of its own, as a checked worker:
    its psycopg round trips and its ``time.sleep`` wait for the scheduler. For an
    adapter's ``run_worker``: ``await in_a_thread(worker.run, dsn)``."""
    actor = ACTOR.get()
    if actor is not None:
        actor.thread_starts()
    # asyncio.to_thread, but not the checked run_in_executor: this thread is followed
    # round trip by round trip (thread_starts, from_thread), not as one call in flight.
    call = functools.partial(contextvars.copy_context().run, function, *args, **kwargs)
    try:
        loop = asyncio.get_running_loop()
        if isinstance(loop, asyncio.BaseEventLoop):
            return await _REAL_RUN_IN_EXECUTOR(loop, None, call)
        return await loop.run_in_executor(None, call)  # a loop the checks do not patch
    finally:
        if actor is not None:
            actor.from_thread(None)  # the thread is over: nothing of it runs any more


_REAL_TIME_SLEEP = time.sleep


def _checked_time_sleep(seconds: Any) -> None:
    actor = ACTOR.get()
    if actor is None or seconds <= 0 or _in_the_loop():
        _REAL_TIME_SLEEP(seconds)
        return
    actor.from_thread(actor.sleep(float(seconds)))


def _in_the_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class CheckedTransport(httpx.AsyncBaseTransport, httpx2.AsyncBaseTransport):
    """An httpx transport that lets a worker's request leave only when the scheduler
    says so, and stops it again once its answer is in (the call's effect is out).

    It is an ``httpx2`` transport too (the official OpenAI SDK's HTTP library), so the
    same wrapper checks a worker's ``AsyncOpenAI(http_client=httpx2.AsyncClient(
    transport=CheckedTransport(...)))``."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: Any) -> Any:
        actor = ACTOR.get()
        if actor is None:
            return await self.inner.handle_async_request(request)
        label = f"{request.method} {request.url.path}"
        await actor.round_trip("call", label)
        token = actor.flying(None, label)
        try:
            response = await self.inner.handle_async_request(request)
        finally:
            actor.landed(token)
        actor.effect(label)
        await actor.round_trip("after_call", label)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _checked_sleep(delay: float, result: Any = None) -> Any:
    actor = ACTOR.get()
    if actor is None or delay <= 0:
        return await _REAL_SLEEP(delay, result)
    await actor.sleep(delay)
    return result


def _in_flight(connect: Any, label: str) -> Any:
    """``connect``, marked in flight for the actor that calls it (if any)."""

    async def connecting(*args: Any, **kwargs: Any) -> Any:
        actor = ACTOR.get()
        if actor is None:
            return await connect(*args, **kwargs)
        token = actor.flying(None, label)
        try:
            return await connect(*args, **kwargs)
        finally:
            actor.landed(token)

    return connecting


@contextlib.contextmanager
def patched_drivers() -> Iterator[None]:
    """While checking: ``asyncpg.connect``/``create_pool`` hand out checked connections,
    and ``asyncio.sleep`` in a worker's context waits for the checker's time."""
    original_connect = asyncpg.connect
    original_pool = asyncpg.create_pool

    async def connect(*args: Any, **kwargs: Any) -> Any:
        kwargs["connection_class"] = checked_class(
            kwargs.get("connection_class", asyncpg.Connection)
        )
        actor = ACTOR.get()
        if actor is None:
            return await original_connect(*args, **kwargs)
        # Not a checkpoint, but in flight: the scheduler waits for it to come back.
        token = actor.flying(None, "connecting")
        try:
            return await original_connect(*args, **kwargs)
        finally:
            actor.landed(token)

    def create_pool(*args: Any, **kwargs: Any) -> Any:
        kwargs["connection_class"] = checked_class(
            kwargs.get("connection_class", asyncpg.Connection)
        )
        # The pool's own connects are in flight too: a worker waiting for its pool to
        # connect is moving, not idle (or when it is seen idle would depend on timing).
        kwargs["connect"] = _in_flight(kwargs.get("connect") or original_connect, "connecting")
        return original_pool(*args, **kwargs)

    asyncpg.connect = connect
    asyncpg.create_pool = create_pool
    asyncio.sleep = _checked_sleep
    time.sleep = _checked_time_sleep
    asyncio.BaseEventLoop.run_in_executor = _checked_run_in_executor  # type: ignore[method-assign,assignment]
    restore_psycopg = _patch_psycopg()
    try:
        yield
    finally:
        asyncpg.connect = original_connect
        asyncpg.create_pool = original_pool
        asyncio.sleep = _REAL_SLEEP
        time.sleep = _REAL_TIME_SLEEP
        asyncio.BaseEventLoop.run_in_executor = _REAL_RUN_IN_EXECUTOR  # type: ignore[method-assign]
        restore_psycopg()


_REAL_RUN_IN_EXECUTOR = asyncio.BaseEventLoop.run_in_executor


def _checked_run_in_executor(
    self: asyncio.BaseEventLoop, executor: Any, func: Any, *args: Any
) -> asyncio.Future[Any]:
    """A worker's call run in a thread (``asyncio.to_thread``, ``run_in_executor``: the
    openai SDK reads the platform so on its first request) is in flight until it comes
    back. Unseen, the worker looked settled while the thread ran, and whether its step
    reached the next round trip depended on how fast the thread was."""
    future = _REAL_RUN_IN_EXECUTOR(self, executor, func, *args)
    actor = ACTOR.get()
    if actor is not None:
        token = actor.flying(None, "running a call in a thread")
        future.add_done_callback(lambda _: actor.landed(token))
    return future


def _patch_psycopg() -> Any:
    """``psycopg.AsyncConnection.connect`` (and so psycopg_pool's pools) hands out
    checked connections; returns what undoes it. Nothing if psycopg is not installed."""
    try:
        import psycopg
    except ImportError:
        return lambda: None
    original = psycopg.AsyncConnection.__dict__["connect"]

    async def connect(cls: type[Any], *args: Any, **kwargs: Any) -> Any:
        checked = checked_psycopg_class(cls)
        actor = ACTOR.get()
        if actor is None:
            return await original.__func__(checked, *args, **kwargs)
        token = actor.flying(None, "connecting")
        try:
            connection = await original.__func__(checked, *args, **kwargs)
        finally:
            actor.landed(token)
        # The worker's own from now on, used or not: a pool's spare connections go with
        # it when it crashes (they were left open, idle, example after example).
        actor.uses(connection)
        return connection

    psycopg.AsyncConnection.connect = classmethod(connect)  # type: ignore[method-assign,assignment]
    original_sync = psycopg.Connection.__dict__["connect"]

    def connect_sync(cls: type[Any], *args: Any, **kwargs: Any) -> Any:
        connection = original_sync.__func__(checked_psycopg_class(cls), *args, **kwargs)
        actor = ACTOR.get()
        if actor is not None:
            actor.uses(connection)
        return connection

    psycopg.Connection.connect = classmethod(connect_sync)  # type: ignore[method-assign,assignment]
    # psycopg.connect is Connection.connect, bound when psycopg was imported.
    original_function = psycopg.connect
    psycopg.connect = psycopg.Connection.connect

    def restore() -> None:
        psycopg.AsyncConnection.connect = original  # type: ignore[method-assign]
        psycopg.Connection.connect = original_sync  # type: ignore[method-assign]
        psycopg.connect = original_function

    return restore


__all__ = [
    "ACTOR",
    "Actor",
    "CheckedConnection",
    "CheckedTransport",
    "checked_class",
    "checked_psycopg_class",
    "describe_statement",
    "in_a_thread",
    "patched_drivers",
]

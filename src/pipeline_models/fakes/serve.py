"""Serve the fakes on loopback sockets with uvicorn, network faults included.

Both apps run in the caller's asyncio loop. Over sockets a :class:`NetworkFault`
becomes real network behaviour, through :class:`NetworkFaultMiddleware`:

- ``TIMEOUT``: the request is held, unanswered, for ``fault.seconds`` (30 s by
  default) or until the client gives up. The client sees its own read timeout
  (``httpx.ReadTimeout``; the openai SDK raises ``APITimeoutError``). If the client
  waits longer than the hold, the connection is then dropped as below.
- ``CONNECTION_ERROR``: the status line and headers of a 200 are sent, then the
  connection is closed before the promised one-byte body. The client sees
  ``httpx.RemoteProtocolError`` ("peer closed connection without sending complete
  message body"); the openai SDK raises ``APIConnectionError``. (In process the same
  fault is an ``httpx.ConnectError``: both are transport errors, neither is an HTTP
  status, and neither says whether the server acted.)

>>> import asyncio, httpx
>>> async def main() -> int:
...     async with served_fakes() as endpoints:
...         async with httpx.AsyncClient(base_url=endpoints.parser) as client:
...             return (await client.get("/_fake/stats")).status_code
>>> asyncio.run(main())
200
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline_models.fakes.embeddings import create_embeddings_app
from pipeline_models.fakes.faults import DEFAULT_TIMEOUT_HOLD, FaultKind, FaultPlan, NetworkFault
from pipeline_models.fakes.parser import create_parser_app

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PARSER_PORT = 8001
DEFAULT_EMBEDDINGS_PORT = 8002

logger = logging.getLogger("pipeline_models.fakes")


class _ConnectionDropped(Exception):
    """Raised after a response has started, so that uvicorn closes the connection."""


class _QuietDrops(logging.Filter):
    # uvicorn logs every exception that leaves an app with a traceback; a drop we asked
    # for is not an error of the app.
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _ConnectionDropped))


_QUIET_DROPS = _QuietDrops()


class _Request:
    """The remaining messages of a request whose app gave up on it."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.body_complete = False
        self.disconnected = False

    async def _next(self) -> None:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
        elif not message.get("more_body", False):
            self.body_complete = True

    async def hold(self, seconds: float) -> None:
        """Wait ``seconds`` or until the client disconnects, reading what it sends."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not self.disconnected:
                    await self._next()

    async def drain(self) -> None:
        """Read the rest of the body (for at most a second)."""
        # Closing a socket with unread input makes the kernel send a reset, and the
        # client then sees ReadError or RemoteProtocolError depending on timing. Reading
        # first makes the drop look the same every time.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                while not (self.body_complete or self.disconnected):
                    await self._next()


class NetworkFaultMiddleware:
    """ASGI middleware for a served fake: turn :class:`NetworkFault` into socket behaviour.

    See the module docstring for what a client sees.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        except NetworkFault as exc:
            fault = exc.fault
            logger.info("injecting %r on %s %s", fault, scope["method"], scope["path"])
            # The gate raises before the app reads anything, so the whole request is
            # still unread here.
            request = _Request(receive)
            if fault.kind is FaultKind.TIMEOUT:
                await request.hold(fault.seconds or DEFAULT_TIMEOUT_HOLD)
            await request.drain()
            if request.disconnected:
                return  # nothing to drop: the client already left
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"1")],
                }
            )
            raise _ConnectionDropped(str(exc)) from exc


@dataclass(frozen=True)
class FakeEndpoints:
    """Where the served fakes listen, and the apps (whose ``state.fake`` holds the state).

    ``embeddings`` ends in ``/v1``: pass it as ``openai.AsyncOpenAI(base_url=...)``.
    """

    parser: str
    embeddings: str
    parser_app: Starlette
    embeddings_app: Starlette


class LoopSignalServer(uvicorn.Server):
    """A uvicorn server that leaves signals to whoever runs the event loop.

    Two servers in one loop must not take turns installing and restoring signal
    handlers, and a service stopped by SIGTERM should exit 0, not re-raise the signal
    as uvicorn does after its graceful shutdown.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int, name: str) -> socket.socket:
    # Binding here rather than in uvicorn: uvicorn answers a bind failure with
    # sys.exit(1), and a SystemExit raised inside a task escapes the caller's event loop.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot serve the fake {name} on {host}:{port}: {exc.strerror}"
        ) from exc


def _url(host: str, server: uvicorn.Server) -> str:
    port = server.servers[0].sockets[0].getsockname()[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _start(
    app: ASGIApp, sock: socket.socket, name: str, options: dict[str, Any]
) -> tuple[LoopSignalServer, asyncio.Task[None]]:
    config: dict[str, Any] = {
        "lifespan": "off",  # the fakes have no startup work
        "http": "h11",
        "ws": "none",
        # A held (timed-out) request must not keep shutdown waiting for its full hold.
        "timeout_graceful_shutdown": 1,
        # A library must not reconfigure the test process's logging.
        "log_config": None,
        **options,
    }
    server = LoopSignalServer(uvicorn.Config(NetworkFaultMiddleware(app), **config))
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"serve-fake-{name}")
    while not server.started:
        if task.done():
            # serve() returned or raised before it was listening; surface why.
            task.result()
            raise RuntimeError(f"the fake {name} server stopped during startup")
        await asyncio.sleep(0.005)
    return server, task


async def _stop(servers: list[tuple[LoopSignalServer, asyncio.Task[None]]]) -> None:
    for server, _ in servers:
        server.should_exit = True
    await asyncio.gather(*(task for _, task in servers), return_exceptions=True)


@contextlib.asynccontextmanager
async def served_fakes(
    *,
    host: str = DEFAULT_HOST,
    parser_port: int = 0,
    embeddings_port: int = 0,
    parser_app: Starlette | None = None,
    embeddings_app: Starlette | None = None,
    api_key: str | None = None,
    parser_faults: FaultPlan | None = None,
    embeddings_faults: FaultPlan | None = None,
    pending_polls: int = 0,
    max_file_bytes: int = 50 * 2**20,
    webhook_secrets: Sequence[str] = (),
    auto_deliver_webhooks: bool = False,
    uvicorn_options: dict[str, Any] | None = None,
) -> AsyncIterator[FakeEndpoints]:
    """Serve the parser and embeddings fakes on ``host`` for the duration of the block.

    Port 0 picks a free port; the yielded :class:`FakeEndpoints` carries the bound URLs.
    Pass ready-made apps, or the options to build them (``api_key`` applies to both;
    ``webhook_secrets`` and ``auto_deliver_webhooks`` go to :func:`create_parser_app`).
    ``uvicorn_options`` go to ``uvicorn.Config`` (by default logging is left as it is).
    An occupied port is an ``OSError`` that names the service.

    Example (inside a coroutine)::

        async with served_fakes(parser_port=0, embeddings_port=0) as endpoints:
            sdk = openai.AsyncOpenAI(api_key="k", base_url=endpoints.embeddings)
            await sdk.embeddings.create(input="hi", model="text-embedding-3-small")
    """
    if parser_app is None:
        parser_app = create_parser_app(
            faults=parser_faults,
            pending_polls=pending_polls,
            api_key=api_key,
            max_file_bytes=max_file_bytes,
            webhook_secrets=webhook_secrets,
            auto_deliver_webhooks=auto_deliver_webhooks,
        )
    if embeddings_app is None:
        embeddings_app = create_embeddings_app(faults=embeddings_faults, api_key=api_key)
    uvicorn_error = logging.getLogger("uvicorn.error")
    if _QUIET_DROPS not in uvicorn_error.filters:
        uvicorn_error.addFilter(_QUIET_DROPS)

    options = uvicorn_options or {}
    sockets: list[socket.socket] = []
    servers: list[tuple[LoopSignalServer, asyncio.Task[None]]] = []
    try:
        sockets.append(_bind(host, parser_port, "parser"))
        sockets.append(_bind(host, embeddings_port, "embeddings"))
        servers.append(await _start(parser_app, sockets[0], "parser", options))
        servers.append(await _start(embeddings_app, sockets[1], "embeddings", options))
        yield FakeEndpoints(
            parser=_url(host, servers[0][0]),
            embeddings=_url(host, servers[1][0]) + "/v1",
            parser_app=parser_app,
            embeddings_app=embeddings_app,
        )
    finally:
        await _stop(servers)
        for sock in sockets:
            sock.close()


def _announce(endpoints: FakeEndpoints) -> None:
    print(f"fake parser:     {endpoints.parser}", flush=True)
    print(f"fake embeddings: {endpoints.embeddings}", flush=True)


def run_fakes(
    *,
    host: str = DEFAULT_HOST,
    parser_port: int = DEFAULT_PARSER_PORT,
    embeddings_port: int = DEFAULT_EMBEDDINGS_PORT,
    api_key: str | None = None,
    pending_polls: int = 0,
    max_file_bytes: int = 50 * 2**20,
    webhook_secrets: Sequence[str] = (),
    auto_deliver_webhooks: bool = False,
    log_level: str = "info",
    on_ready: Callable[[FakeEndpoints], None] = _announce,
) -> None:
    """Serve both fakes until SIGINT or SIGTERM, then shut down cleanly (main thread only).

    Fault plans are set while running with ``PUT /_fake/faults`` on either service.
    Parser webhooks are signed with ``webhook_secrets`` (current first) and sent after
    each upload with ``auto_deliver_webhooks``; queued ones (failed, or all of them
    without auto delivery) are sent by ``POST /_fake/webhooks/deliver`` on the parser.
    ``on_ready`` is called with the bound URLs (by default they are printed).

    Example::

        run_fakes(parser_port=8001, embeddings_port=8002)
    """

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = [signal.SIGINT, signal.SIGTERM]
        installed: list[signal.Signals] = []
        for sig in signals:
            try:
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
            except NotImplementedError:  # Windows event loops have no signal handlers
                signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
        try:
            async with served_fakes(
                host=host,
                parser_port=parser_port,
                embeddings_port=embeddings_port,
                api_key=api_key,
                pending_polls=pending_polls,
                max_file_bytes=max_file_bytes,
                webhook_secrets=webhook_secrets,
                auto_deliver_webhooks=auto_deliver_webhooks,
                # The CLI is a server: it gets uvicorn's usual console logging.
                uvicorn_options={
                    "log_config": uvicorn.config.LOGGING_CONFIG,
                    "log_level": log_level,
                },
            ) as endpoints:
                on_ready(endpoints)
                await stop.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    asyncio.run(main())


__all__ = [
    "DEFAULT_EMBEDDINGS_PORT",
    "DEFAULT_HOST",
    "DEFAULT_PARSER_PORT",
    "FakeEndpoints",
    "LoopSignalServer",
    "NetworkFaultMiddleware",
    "run_fakes",
    "served_fakes",
]

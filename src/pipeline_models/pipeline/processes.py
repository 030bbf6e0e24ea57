"""The pipeline's long-lived processes: the API server and a worker with N job slots.

``pipeline-models serve`` and ``pipeline-models worker`` call these. Both print one
ready line on stdout (``api: <url>`` / ``worker <name>: <n> slots``) so that whoever
started them knows when, and where, they listen.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from typing import Any

import uvicorn

from pipeline_models.database import Database
from pipeline_models.errors import DatabaseConfigurationError
from pipeline_models.fakes.serve import LoopSignalServer
from pipeline_models.pipeline.api import ApiSettings, create_api
from pipeline_models.pipeline.config import WorkerConfig
from pipeline_models.pipeline.reference import ReferencePipeline
from pipeline_models.settings import Settings

logger = logging.getLogger("pipeline_models.processes")


def _pipeline(database: Database, settings: Settings) -> ReferencePipeline:
    return ReferencePipeline.over_http(
        database,
        storage_root=settings.storage_root,
        parser_url=settings.parser_url,
        embeddings_url=settings.embeddings_url,
        parser_key=settings.parser_key,
        embeddings_key=settings.embeddings_key,
        webhook_url=settings.webhook_url,
        config=WorkerConfig(lease_seconds=settings.lease_seconds),
    )


def run_api(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    announce: Callable[[str], None] = lambda line: print(line, flush=True),
) -> None:
    """Serve the upload API until SIGINT or SIGTERM (uvicorn shuts down gracefully)."""

    async def main() -> None:
        database = Database.from_environment(settings.database_url, schema=settings.schema)
        try:
            await database.ensure_schema()
            async with _pipeline(database, settings) as pipeline:
                app = create_api(
                    pipeline,
                    ApiSettings(
                        token_secret=settings.token_secret,
                        webhook_secrets=settings.webhook_secrets,
                    ),
                )
                listener = socket.create_server((host, port))
                bound = listener.getsockname()[1]
                server = LoopSignalServer(
                    uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
                )
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
                announce(f"api: http://{host}:{bound}")
                if database.embedded is not None:
                    announce(f"database: {database.url}")
                await server.serve(sockets=[listener])
        finally:
            database.close()

    asyncio.run(main())


def run_worker(
    settings: Settings,
    *,
    slots: int = 1,
    name: str = "worker",
    grace_seconds: float = 30.0,
    announce: Callable[[str], None] = lambda line: print(line, flush=True),
) -> None:
    """Run ``slots`` workers until SIGTERM or SIGINT, then stop cleanly.

    The first signal lets every slot finish its current step (at most ``grace_seconds``);
    a second signal, or the end of the grace period, cancels the steps still running
    and releases their leases so another worker can take the jobs at once.
    """
    if not settings.database_url:
        raise DatabaseConfigurationError(
            "a worker needs the database the API uses: set DATABASE_URL (an embedded "
            "Postgres would be private to this process)"
        )

    async def main() -> None:
        database = Database.from_environment(settings.database_url, schema=settings.schema)
        await database.ensure_schema()
        stop, hurry = asyncio.Event(), asyncio.Event()

        def on_signal() -> None:
            (hurry if stop.is_set() else stop).set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        async with _pipeline(database, settings) as pipeline:
            workers = [pipeline.worker(name=f"{name}-{slot + 1}") for slot in range(slots)]
            tasks = [asyncio.create_task(w.run(stop), name=w.name) for w in workers]
            announce(f"worker {name}: {slots} slots")
            await stop.wait()
            finished: asyncio.Future[Any] = asyncio.ensure_future(
                asyncio.gather(*tasks, return_exceptions=True)
            )
            hurried: asyncio.Future[Any] = asyncio.ensure_future(hurry.wait())
            await asyncio.wait(
                [finished, hurried], timeout=grace_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            hurried.cancel()
            unfinished = [t for t in tasks if not t.done()]
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for worker in workers:
                if unfinished:
                    await worker.release_current_job()
                await worker.close()

    asyncio.run(main())


__all__ = ["run_api", "run_worker"]

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
from pipeline_models.metrics import PipelineMetrics, refresh_forever, serve_metrics
from pipeline_models.pipeline.api import ApiSettings, create_api
from pipeline_models.pipeline.budget import Budget
from pipeline_models.pipeline.config import WorkerConfig
from pipeline_models.pipeline.ratelimit import SharedRateLimits
from pipeline_models.pipeline.reference import ReferencePipeline
from pipeline_models.settings import Settings

logger = logging.getLogger("pipeline_models.processes")


def _pipeline(
    database: Database, settings: Settings, metrics: PipelineMetrics | None = None
) -> ReferencePipeline:
    return ReferencePipeline.over_http(
        database,
        storage_root=settings.storage_root,
        parser_url=settings.parser_url,
        embeddings_url=settings.embeddings_url,
        parser_key=settings.parser_key,
        embeddings_key=settings.embeddings_key,
        webhook_url=settings.webhook_url,
        config=WorkerConfig(lease_seconds=settings.lease_seconds, prices=settings.prices),
        # No cap configured: no budget, and not a single budget query.
        budget=Budget() if settings.max_cost_usd is not None else None,
        # Limits are the services' and count every process: kept in the database.
        rate_limits=SharedRateLimits(database, settings.rates) if settings.rates else None,
        metrics=metrics,
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
                        operators=settings.operators,
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
    metrics_port: int | None = None,
    announce: Callable[[str], None] = lambda line: print(line, flush=True),
) -> None:
    """Run ``slots`` workers until SIGTERM or SIGINT, then stop cleanly.

    The first signal lets every slot finish its current step (at most ``grace_seconds``);
    a second signal, or the end of the grace period, cancels the steps still running
    and releases their leases so another worker can take the jobs at once. With
    ``metrics_port`` (0: any free port), Prometheus metrics are served there. With a
    ``max_cost_usd`` setting, the budget is created with it unless it exists.
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
        metrics = PipelineMetrics() if metrics_port is not None else None
        async with _pipeline(database, settings, metrics) as pipeline:
            if pipeline.budget is not None and settings.max_cost_usd is not None:
                connection = await database.connect(application_name=f"{name} budget")
                try:
                    await pipeline.budget.ensure(
                        connection, settings.max_cost_usd, pipeline.clock.now()
                    )
                finally:
                    await connection.close()
            workers = [pipeline.worker(name=f"{name}-{slot + 1}") for slot in range(slots)]
            tasks = [asyncio.create_task(w.run(stop), name=w.name) for w in workers]
            refresher: asyncio.Task[None] | None = None
            if metrics is not None and metrics_port is not None:
                port = serve_metrics(metrics, port=metrics_port)
                refresher = asyncio.create_task(
                    refresh_forever(
                        metrics,
                        lambda: database.connect(application_name=f"{name} metrics"),
                        breakers=pipeline.breakers,
                        budget=pipeline.budget,
                        interval=0.2,
                    ),
                    name=f"{name}-metrics",
                )
                announce(f"metrics {name}: http://127.0.0.1:{port}/metrics")
            announce(f"worker {name}: {slots} slots")
            await stop.wait()
            if refresher is not None:
                refresher.cancel()
                await asyncio.gather(refresher, return_exceptions=True)
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

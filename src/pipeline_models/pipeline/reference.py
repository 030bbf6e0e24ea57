"""The reference pipeline assembled: database, blob storage, services, clock and settings.

With fakes (the default) the parser and embeddings services are in-process ASGI apps
reached through ``httpx.ASGITransport``; ``over_http`` points the same clients at served
fakes or real endpoints.

Example::

    pipeline = ReferencePipeline.with_fakes(database, storage_root=tmp)
    async with pipeline.worker() as worker:
        await worker.run_once()
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import httpx2
import openai
from starlette.applications import Starlette

from pipeline_models.clock import Clock, ManualClock, SystemClock
from pipeline_models.database import Database
from pipeline_models.documents import Document
from pipeline_models.fakes import (
    FaultPlan,
    create_embeddings_app,
    create_parser_app,
    openai_http_client,
    parser_http_client,
)
from pipeline_models.metrics import PipelineMetrics
from pipeline_models.pipeline.budget import Budget
from pipeline_models.pipeline.circuit import CircuitBreaker
from pipeline_models.pipeline.config import WorkerConfig
from pipeline_models.pipeline.ratelimit import RateLimits
from pipeline_models.pipeline.services import EmbeddingsClient, ParserClient, Services
from pipeline_models.pipeline.storage import BlobStorage, LocalDirectoryStorage
from pipeline_models.pipeline.uploads import Upload, UploadCheckpoint, enqueue_upload
from pipeline_models.pipeline.worker import BaseWorker, StepAction, StepResult, default_breakers
from pipeline_models.queries import QUERIES, Queries

FAKE_API_KEY = "fake-key-for-tests"
SERVICE_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


@dataclass
class Fakes:
    """The in-process fake services, to inspect and to put fault plans on."""

    parser_app: Starlette
    embeddings_app: Starlette

    @property
    def parser(self) -> Any:
        return self.parser_app.state.fake

    @property
    def embeddings(self) -> Any:
        return self.embeddings_app.state.fake


class ReferencePipeline:
    """Everything a worker needs, built once and shared by all of its workers."""

    def __init__(
        self,
        database: Database,
        storage: BlobStorage,
        services: Services,
        *,
        clock: Clock | None = None,
        config: WorkerConfig | None = None,
        fakes: Fakes | None = None,
        budget: Budget | None = None,
        rate_limits: RateLimits | None = None,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        self.database = database
        self.storage = storage
        self.services = services
        self.clock = clock or SystemClock()
        self.config = config or WorkerConfig()
        self.fakes = fakes
        # Shared by every worker of this pipeline, as they would be in one process.
        self.breakers: dict[str, CircuitBreaker] = default_breakers(self.clock, self.config)
        # Also shared: one spending budget (None: no cap) and one set of rate limits.
        self.budget = budget
        self.rate_limits = rate_limits or RateLimits()
        self.metrics = metrics

    @classmethod
    def with_fakes(
        cls,
        database: Database,
        *,
        storage_root: str | os.PathLike[str],
        clock: Clock | None = None,
        config: WorkerConfig | None = None,
        parser_faults: FaultPlan | None = None,
        embeddings_faults: FaultPlan | None = None,
        pending_polls: int = 0,
        webhook_url: str | None = None,
        webhook_secrets: Sequence[str] = (),
        budget: Budget | None = None,
        rate_limits: RateLimits | None = None,
        metrics: PipelineMetrics | None = None,
    ) -> ReferencePipeline:
        """The pipeline against in-process fakes (no sockets, deterministic).

        With ``webhook_url``, the parser is asked to call back there, signing with
        ``webhook_secrets``; deliveries wait in ``fakes.parser.outbox`` until sent (set
        ``fakes.parser.webhook_client`` to reach an in-process API).
        """
        config = config or WorkerConfig()
        fakes = Fakes(
            create_parser_app(
                faults=parser_faults,
                pending_polls=pending_polls,
                api_key=FAKE_API_KEY,
                webhook_secrets=webhook_secrets,
                clock=clock,
            ),
            create_embeddings_app(faults=embeddings_faults, api_key=FAKE_API_KEY),
        )
        parser_http = parser_http_client(
            fakes.parser_app, base_url="http://parser.fake", timeout=SERVICE_TIMEOUT
        )
        embeddings_http = openai_http_client(
            fakes.embeddings_app, base_url="http://embeddings.fake", timeout=30.0
        )
        services = build_services(
            config,
            parser_http=parser_http,
            parser_key=FAKE_API_KEY,
            embeddings_http=embeddings_http,
            embeddings_url="http://embeddings.fake/v1",
            embeddings_key=FAKE_API_KEY,
            webhook_url=webhook_url,
        )
        return cls(
            database,
            LocalDirectoryStorage(storage_root),
            services,
            clock=clock,
            config=config,
            fakes=fakes,
            budget=budget,
            rate_limits=rate_limits,
            metrics=metrics,
        )

    @classmethod
    def over_http(
        cls,
        database: Database,
        *,
        storage_root: str | os.PathLike[str],
        parser_url: str,
        embeddings_url: str,
        parser_key: str | None = FAKE_API_KEY,
        embeddings_key: str = FAKE_API_KEY,
        webhook_url: str | None = None,
        clock: Clock | None = None,
        config: WorkerConfig | None = None,
        budget: Budget | None = None,
        rate_limits: RateLimits | None = None,
        metrics: PipelineMetrics | None = None,
    ) -> ReferencePipeline:
        """The pipeline against services reached over the network (served fakes or real).

        ``embeddings_url`` is the OpenAI-style base URL, ending in ``/v1``.
        """
        config = config or WorkerConfig()
        services = build_services(
            config,
            parser_http=httpx.AsyncClient(base_url=parser_url, timeout=SERVICE_TIMEOUT),
            parser_key=parser_key,
            embeddings_http=httpx2.AsyncClient(timeout=30.0),
            embeddings_url=embeddings_url,
            embeddings_key=embeddings_key,
            webhook_url=webhook_url,
        )
        return cls(
            database,
            LocalDirectoryStorage(storage_root),
            services,
            clock=clock,
            config=config,
            budget=budget,
            rate_limits=rate_limits,
            metrics=metrics,
        )

    def worker(self, *, name: str | None = None, **options: Any) -> BaseWorker:
        """A new worker of this pipeline (start it with ``async with``)."""
        options.setdefault("breakers", self.breakers)
        options.setdefault("budget", self.budget)
        options.setdefault("rate_limits", self.rate_limits)
        options.setdefault("metrics", self.metrics)
        return BaseWorker(
            self.database,
            services=self.services,
            storage=self.storage,
            clock=self.clock,
            config=self.config,
            name=name,
            **options,
        )

    async def run_workers(
        self, count: int, *, timeout: float = 120.0, poll_seconds: float = 0.02
    ) -> list[BaseWorker]:
        """Run ``count`` workers concurrently until no job is live, then stop them.

        Each worker is a named asyncio task with its own connection. Raises
        :class:`TimeoutError` (naming the live jobs left) if ``timeout`` passes first.
        """
        workers = [self.worker(name=f"worker-{index + 1}") for index in range(count)]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(w.run(stop), name=w.name) for w in workers]
        monitor = await self.database.connect(application_name="pipeline-models monitor")
        try:
            async with asyncio.timeout(timeout):
                while await monitor.fetchval(QUERIES["count_live_jobs"].sql):
                    await asyncio.sleep(poll_seconds)
                    for task in tasks:
                        if task.done():
                            task.result()  # a worker that died raises here
        except TimeoutError:
            live = await monitor.fetchval(QUERIES["count_live_jobs"].sql)
            raise TimeoutError(f"{live} jobs still live after {timeout:g} s") from None
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            for worker in workers:
                await worker.close()
            await monitor.close()
        return workers

    async def drain(
        self, workers: Sequence[BaseWorker], *, max_rounds: int = 10_000
    ) -> list[StepResult]:
        """Step the workers in turn, deterministically, until no job is live.

        When every worker is idle the clock moves to the next due time (a ManualClock
        jumps; a real clock is waited for). Returns every non-idle step's result;
        raises :class:`AssertionError` if jobs are still live after ``max_rounds``.
        """
        results: list[StepResult] = []
        monitor = await self.database.connect(application_name="pipeline-models drain")
        try:
            for _ in range(max_rounds):
                progressed = False
                for worker in workers:
                    result = await worker.run_once()
                    if result.action is not StepAction.IDLE:
                        results.append(result)
                        progressed = True
                if progressed:
                    continue
                if not await monitor.fetchval(QUERIES["count_live_jobs"].sql):
                    return results
                due = await monitor.fetchval(QUERIES["next_due_at"].sql)
                if due is not None and due > self.clock.now():
                    if isinstance(self.clock, ManualClock):
                        self.clock.set(due)
                    else:
                        await self.clock.sleep((due - self.clock.now()).total_seconds())
        finally:
            await monitor.close()
        raise AssertionError(f"jobs still live after {max_rounds} rounds; last: {results[-5:]}")

    async def upload(
        self,
        connection: asyncpg.Connection,
        *,
        user_id: uuid.UUID,
        document: Document,
        queries: Queries = QUERIES,
        checkpoint: UploadCheckpoint | None = None,
    ) -> Upload:
        """Accept ``document`` from ``user_id`` as the upload API does (``checkpoint``:
        see :func:`~pipeline_models.pipeline.uploads.enqueue_upload`)."""
        return await enqueue_upload(
            connection,
            self.storage,
            self.clock,
            user_id=user_id,
            filename=document.filename,
            declared_type=document.content_type,
            data=document.data,
            queries=queries,
            checkpoint=checkpoint,
        )

    async def aclose(self) -> None:
        try:
            await self.services.aclose()
        finally:
            await self.rate_limits.aclose()

    async def __aenter__(self) -> ReferencePipeline:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def build_services(
    config: WorkerConfig,
    *,
    parser_http: httpx.AsyncClient,
    parser_key: str | None,
    embeddings_http: httpx2.AsyncClient,
    embeddings_url: str,
    embeddings_key: str,
    webhook_url: str | None = None,
) -> Services:
    sdk = openai.AsyncOpenAI(
        api_key=embeddings_key,
        base_url=embeddings_url,
        http_client=embeddings_http,
        # Retrying is the pipeline's job: on its clock, counted in the database.
        max_retries=0,
    )
    return Services(
        ParserClient(parser_http, api_key=parser_key, webhook_url=webhook_url),
        EmbeddingsClient(sdk, model=config.embed_model, dimensions=config.embed_dimensions),
    )


__all__ = ["FAKE_API_KEY", "SERVICE_TIMEOUT", "Fakes", "ReferencePipeline", "build_services"]

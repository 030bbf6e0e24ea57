"""Prometheus metrics of the reference pipeline: jobs, steps, external calls, circuits, cost.

A worker counts what it does as it does it (steps by stage and outcome, their durations,
external calls by outcome); what lives in Postgres (jobs by stage and state, held jobs,
cost so far, the budget) is read by :meth:`PipelineMetrics.refresh` before a scrape or on
a timer. ``pipeline-models worker --metrics-port`` serves them; the API serves its own at
``GET /metrics``.

>>> metrics = PipelineMetrics()
>>> metrics.external_calls.labels(service="parser", outcome="ok").inc()
>>> b"pipeline_external_calls_total" in metrics.exposition()
True
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import start_http_server as _start_http_server

from pipeline_models.lifecycle import STAGES, State
from pipeline_models.pipeline.budget import Budget
from pipeline_models.pipeline.circuit import CircuitBreaker, CircuitState
from pipeline_models.queries import QUERIES

logger = logging.getLogger("pipeline_models.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_STAGE_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0)


class PipelineMetrics:
    """The pipeline's metrics in their own registry (so several can live in one test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.steps = Counter(
            "pipeline_steps", "Steps run, by stage and outcome.", ["stage", "action"], registry=r
        )
        self.stage_seconds = Histogram(
            "pipeline_stage_duration_seconds",
            "Claim-to-commit time of one step, by stage.",
            ["stage"],
            buckets=_STAGE_SECONDS_BUCKETS,
            registry=r,
        )
        self.external_calls = Counter(
            "pipeline_external_calls",
            "Calls to external services, by outcome (ok, transient, permanent, error).",
            ["service", "outcome"],
            registry=r,
        )
        self.jobs = Gauge(
            "pipeline_jobs", "Jobs by stage and state (from Postgres).", ["stage", "state"],
            registry=r,
        )  # fmt: skip
        self.held_jobs = Gauge(
            "pipeline_jobs_held", "Jobs held for the budget, by stage.", ["stage"], registry=r
        )
        self.circuit_open = Gauge(
            "pipeline_circuit_state",
            "Circuit breaker state per service: 1 for its current state, 0 for the others.",
            ["service", "state"],
            registry=r,
        )
        self.cost_usd = Gauge(
            "pipeline_cost_usd", "What the jobs' billed calls cost so far (USD).", registry=r
        )
        self.pages_billed = Gauge("pipeline_pages_billed", "Parser pages billed.", registry=r)
        self.tokens_billed = Gauge("pipeline_tokens_billed", "Embedding tokens billed.", registry=r)
        self.budget_usd = Gauge(
            "pipeline_budget_usd",
            "The spending budget: limit, spent and reserved (USD); absent without a cap.",
            ["amount"],
            registry=r,
        )
        for stage in STAGES:
            for state in State:
                self.jobs.labels(stage=stage.value, state=state.value).set(0)

    def observe_circuits(self, breakers: Mapping[str, CircuitBreaker]) -> None:
        for service, breaker in breakers.items():
            for state in CircuitState:
                self.circuit_open.labels(service=service, state=state.value).set(
                    1 if breaker.state is state else 0
                )

    async def refresh(
        self,
        connection: asyncpg.Connection,
        *,
        breakers: Mapping[str, CircuitBreaker] | None = None,
        budget: Budget | None = None,
    ) -> None:
        """Read what lives in Postgres (jobs, holds, cost, budget) into the gauges."""
        counts = {(r["stage"], r["state"]): r["jobs"] for r in await connection.fetch(
            QUERIES["job_counts"].sql
        )}  # fmt: skip
        for stage in STAGES:
            for state in State:
                self.jobs.labels(stage=stage.value, state=state.value).set(
                    counts.get((stage.value, state.value), 0)
                )
        held = {
            r["stage"]: r["jobs"] for r in await connection.fetch(QUERIES["count_held_jobs"].sql)
        }
        for stage in STAGES:
            self.held_jobs.labels(stage=stage.value).set(held.get(stage.value, 0))
        usage = await connection.fetchrow(QUERIES["run_usage"].sql)
        self.cost_usd.set(float(usage["cost_usd"]))  # Prometheus samples are floats
        self.pages_billed.set(usage["pages"])
        self.tokens_billed.set(usage["tokens"])
        if budget is not None and (money := await budget.state(connection)) is not None:
            for amount, value in (
                ("limit", money.limit_usd),
                ("spent", money.spent_usd),
                ("reserved", money.reserved_usd),
            ):
                self.budget_usd.labels(amount=amount).set(float(value))
        if breakers is not None:
            self.observe_circuits(breakers)

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)


async def run_usage(connection: asyncpg.Connection) -> dict[str, Any]:
    """Pages, tokens and cost of every billed call, summed (exact Decimals); the part of
    the cost that is estimates (calls unanswered or uncounted) also on its own."""
    row = await connection.fetchrow(QUERIES["run_usage"].sql)
    return {
        "pages": row["pages"],
        "tokens": row["tokens"],
        "cost_usd": Decimal(row["cost_usd"]),
        "cost_unconfirmed_usd": Decimal(row["cost_unconfirmed_usd"]),
    }


def serve_metrics(metrics: PipelineMetrics, *, host: str = "127.0.0.1", port: int = 0) -> int:
    """Serve ``metrics`` over HTTP on a daemon thread; the bound port."""
    server, _ = _start_http_server(port, addr=host, registry=metrics.registry)
    return int(server.server_port)


async def refresh_forever(
    metrics: PipelineMetrics,
    connect: Any,
    *,
    breakers: Mapping[str, CircuitBreaker] | None = None,
    budget: Budget | None = None,
    interval: float = 1.0,
) -> None:
    """Refresh the Postgres-derived gauges every ``interval`` seconds until cancelled.

    ``connect`` opens the connection to read with (an awaitable factory); a failed read
    is logged and tried again on the next tick, so metrics never stop a worker.
    """
    connection: asyncpg.Connection | None = None
    try:
        while True:
            try:
                if connection is None or connection.is_closed():
                    connection = await connect()
                await metrics.refresh(connection, breakers=breakers, budget=budget)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                logger.warning("metrics refresh failed: %s", type(error).__name__)
                connection = None
            await asyncio.sleep(interval)
    finally:
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()


__all__ = [
    "CONTENT_TYPE",
    "PipelineMetrics",
    "refresh_forever",
    "run_usage",
    "serve_metrics",
]

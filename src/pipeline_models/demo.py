"""``pipeline-models demo``: run the reference pipeline end to end and check how it ended.

Uploads a deterministic mixed corpus (markdown, text, PDFs, a few corrupt files) from a
few users, runs W workers against the in-process fakes, prints a per-stage table and
timings, and compares every document's ending with the oracle: done with exactly the
predicted chunks and vectors, or dead-lettered with ``last_error`` for corrupt input.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx

from pipeline_models.cluster import LocalCluster
from pipeline_models.database import Database
from pipeline_models.documents import Document, large_markdown_document, sample_documents
from pipeline_models.lifecycle import STAGES, State
from pipeline_models.metrics import PipelineMetrics, refresh_forever, run_usage
from pipeline_models.model import discrepancies, expected_outcome, expected_outcomes
from pipeline_models.pipeline.auth import TokenIssuer
from pipeline_models.pipeline.budget import Budget
from pipeline_models.pipeline.config import WorkerConfig
from pipeline_models.pipeline.costs import Usage
from pipeline_models.pipeline.reference import ReferencePipeline
from pipeline_models.queries import QUERIES
from pipeline_models.settings import Settings
from pipeline_models.snapshot import take_snapshot
from pipeline_models.tables import format_table

# What a capped demo lifts its cap to once only held jobs are left: more than it spends.
LIFTED_CAP_USD = Decimal(1000)
_USER_NAMESPACE = uuid.UUID("0b5c3f7e-6a52-4f4e-9d0b-6f1d8f7a2c11")


@dataclass
class DemoReport:
    documents: int
    workers: int
    database: str
    upload_seconds: float = 0.0
    process_seconds: float = 0.0
    final_positions: Counter[tuple[str, str]] = field(default_factory=Counter)
    stage_rows: list[list[object]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    done: int = 0
    deadlettered: int = 0
    refused: int = 0
    final_chunks: int = 0
    pages_billed: int = 0
    tokens_billed: int = 0
    cost_usd: Decimal = Decimal(0)
    cost_unconfirmed_usd: Decimal = Decimal(0)
    prices_as_of: str = ""
    # What the in-process fakes billed, by their own counters (None with --processes).
    fakes_billed_usd: Decimal | None = None
    # With --max-cost: the cap, and how the run stood when it was reached.
    max_cost_usd: Decimal | None = None
    done_under_cap: int = 0
    held_at_cap: int = 0
    spent_under_cap: Decimal = Decimal(0)

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        rate = self.documents / self.process_seconds if self.process_seconds else 0.0
        positions = [
            [f"{stage}/{state}", jobs]
            for (stage, state), jobs in sorted(self.final_positions.items())
        ]
        lines = [
            f"pipeline-models demo: {self.documents} documents, {self.workers} workers, "
            f"{self.database}",
            f"uploaded in {self.upload_seconds:.2f} s; processed in {self.process_seconds:.2f} s "
            f"({rate:.1f} documents/s)",
            "",
            format_table(["stage", "steps", "seconds", "slowest"], self.stage_rows),
            "",
            format_table(["final (stage/state)", "jobs"], positions),
            "",
            f"cost: {self.pages_billed} pages, {self.tokens_billed} tokens = "
            f"${self.cost_usd:.6f} at list prices as of {self.prices_as_of} "
            f"(${self.cost_unconfirmed_usd:.6f} of it estimates)",
        ]
        if self.fakes_billed_usd is not None:
            lines.append(f"bill: the fake services billed ${self.fakes_billed_usd:.6f}")
        if self.max_cost_usd is not None:
            lines.append(
                f"budget: capped at ${self.max_cost_usd}, {self.done_under_cap} jobs done and "
                f"{self.held_at_cap} held for the budget (${self.spent_under_cap:.6f} spent); "
                "then the cap was raised and the held jobs went on"
            )
        lines.append("")
        if self.ok:
            refused = f", {self.refused} refused at upload" if self.refused else ""
            lines.append(
                f"OK: every document ended as the model predicts: {self.done} done with "
                f"{self.final_chunks} final chunks and vectors, {self.deadlettered} "
                f"dead-lettered with last_error{refused} (unusable input)"
            )
        else:
            lines.append(f"FAILED: {len(self.problems)} documents did not end as predicted:")
            lines.extend(f"  - {problem}" for problem in self.problems)
        return "\n".join(lines)


def demo_users(count: int, seed: int) -> list[uuid.UUID]:
    return [uuid.uuid5(_USER_NAMESPACE, f"{seed}:{index}") for index in range(count)]


async def run_demo(
    database: Database,
    *,
    documents: int = 20,
    workers: int = 4,
    seed: int = 0,
    users: int = 2,
    config: WorkerConfig | None = None,
    timeout: float = 300.0,
    large_bytes: int = 512 * 1024,
    metrics: PipelineMetrics | None = None,
    max_cost_usd: Decimal | None = None,
) -> DemoReport:
    """Upload ``documents`` sample files, process them with ``workers``, verify the ending.

    The corpus is ``documents - 1`` small mixed files (a few of them unusable on purpose)
    and one markdown document of ``large_bytes``. With ``metrics``, the workers count
    into it and its Postgres gauges are refreshed while they run. With ``max_cost_usd``
    the run is capped: the workers run until only jobs held for the budget are left,
    then the cap is lifted (as an operator would) and they finish; none may fail or be
    lost on the way.
    """
    config = config or WorkerConfig(parser_poll_seconds=0.05, idle_seconds=0.02)
    report = DemoReport(documents, workers, database.display_url)
    await database.ensure_schema()
    connection = await database.connect(application_name="pipeline-models demo")
    try:
        await database.reset(connection)
        with tempfile.TemporaryDirectory(prefix="pipeline-models-blobs-") as blobs:
            budget = Budget() if max_cost_usd is not None else None
            async with ReferencePipeline.with_fakes(
                database, storage_root=blobs, config=config, metrics=metrics, budget=budget
            ) as pipeline:
                # One large document among the small ones, so batches repeat visibly.
                corpus: list[Document] = [
                    *sample_documents(documents - 1, seed=seed),
                    large_markdown_document(large_bytes, seed=seed),
                ]
                owners = demo_users(users, seed)
                started = time.perf_counter()
                accepted = []
                for index, document in enumerate(corpus):
                    upload = await pipeline.upload(
                        connection, user_id=owners[index % users], document=document
                    )
                    accepted.append((upload.document_id, document))
                report.upload_seconds = time.perf_counter() - started
                started = time.perf_counter()
                refresher = None
                if metrics is not None:
                    refresher = asyncio.create_task(
                        refresh_forever(
                            metrics,
                            lambda: database.connect(application_name="pipeline-models metrics"),
                            breakers=pipeline.breakers,
                            interval=0.05,
                        ),
                        name="demo-metrics",
                    )
                try:
                    if budget is not None and max_cost_usd is not None:
                        await _run_capped(
                            report, pipeline, budget, connection, max_cost_usd, workers, timeout
                        )
                    await pipeline.run_workers(workers, timeout=timeout)
                finally:
                    if metrics is not None and refresher is not None:
                        refresher.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await refresher
                        await metrics.refresh(connection, breakers=pipeline.breakers)
                report.process_seconds = time.perf_counter() - started
                assert pipeline.fakes is not None
                report.fakes_billed_usd = config.prices.price(
                    Usage(
                        pages=pipeline.fakes.parser.pages_billed,
                        tokens=pipeline.fakes.embeddings.tokens_billed,
                    ),
                    embed_model=config.embed_model,
                )
        await _verify(report, connection, accepted, config)
    finally:
        await connection.close()
    return report


async def _verify(
    report: DemoReport,
    connection: asyncpg.Connection,
    accepted: list[tuple[uuid.UUID, Document]],
    config: WorkerConfig,
) -> None:
    timings = {row["stage"]: row for row in await connection.fetch(QUERIES["stage_timings"].sql)}
    report.stage_rows = [
        [stage.value, *(timings[stage][k] for k in ("steps", "seconds", "slowest"))]
        for stage in STAGES
        if stage in timings
    ]
    snapshot = await take_snapshot(connection)
    expected = expected_outcomes(accepted, config=config)
    report.problems.extend(discrepancies(expected, snapshot))
    report.final_positions = Counter((j.stage.value, j.state.value) for j in snapshot.jobs.values())
    report.done = sum(1 for j in snapshot.jobs.values() if j.state is State.DONE)
    report.deadlettered = sum(1 for j in snapshot.jobs.values() if j.state is State.DEADLETTER)
    report.final_chunks = len(snapshot.final_chunks)
    usage = await run_usage(connection)
    report.pages_billed, report.tokens_billed = usage["pages"], usage["tokens"]
    report.cost_usd = usage["cost_usd"]
    report.cost_unconfirmed_usd = usage["cost_unconfirmed_usd"]
    report.prices_as_of = config.prices.as_of.isoformat()
    billed = report.fakes_billed_usd
    if billed is not None and report.cost_unconfirmed_usd == 0 and report.cost_usd != billed:
        report.problems.append(
            f"the recorded cost ${report.cost_usd} is not what the services billed, ${billed}"
        )
    if report.max_cost_usd is not None and report.held_at_cap == 0:
        report.problems.append(
            f"the cap of ${report.max_cost_usd} held no job: it covered the whole run"
        )


async def _run_capped(
    report: DemoReport,
    pipeline: ReferencePipeline,
    budget: Budget,
    connection: asyncpg.Connection,
    max_cost_usd: Decimal,
    workers: int,
    timeout: float,
) -> None:
    """Run under the cap until only held jobs are left, record how it stood, lift it."""
    report.max_cost_usd = max_cost_usd
    await budget.set_limit(connection, max_cost_usd, pipeline.clock.now())
    await pipeline.run_workers(workers, timeout=timeout)
    rows = await connection.fetch("SELECT state, held_for FROM upload_jobs")
    report.done_under_cap = sum(1 for row in rows if row["state"] == State.DONE)
    report.held_at_cap = sum(1 for row in rows if row["held_for"] is not None)
    state = await budget.state(connection)
    assert state is not None
    report.spent_under_cap = state.spent_usd
    if state.spent_usd + state.reserved_usd > max_cost_usd:
        report.problems.append(f"the cap was passed: {state.as_dict()}")
    await budget.set_limit(connection, LIFTED_CAP_USD, pipeline.clock.now())


async def run_demo_processes(
    database: Database,
    *,
    documents: int = 20,
    workers: int = 4,
    seed: int = 0,
    users: int = 2,
    timeout: float = 300.0,
    large_bytes: int = 512 * 1024,
) -> DemoReport:
    """The demo with real processes: fakes, the API and worker processes on loopback.

    Documents go through ``POST /upload`` with bearer tokens; the parser reports back
    through its signed webhook while workers also poll. Unusable files may be refused at
    the door (4xx) instead of being dead-lettered; either ending is checked against the
    oracle.
    """
    report = DemoReport(documents, workers, f"{database.display_url}, separate processes")
    config = WorkerConfig()
    await database.ensure_schema()
    connection = await database.connect(application_name="pipeline-models demo")
    try:
        await database.reset(connection)
        with tempfile.TemporaryDirectory(prefix="pipeline-models-blobs-") as blobs:
            settings = Settings(
                database_url=database.url,
                schema=database.schema,
                storage_root=Path(blobs),
                lease_seconds=10.0,
            )
            processes = 2 if workers > 1 else 1
            with LocalCluster(
                settings, workers=processes, slots=-(-workers // processes)
            ) as cluster:
                corpus = [
                    *sample_documents(documents - 1, seed=seed),
                    large_markdown_document(large_bytes, seed=seed),
                ]
                tokens = TokenIssuer(settings.token_secret)
                owners = demo_users(users, seed)
                accepted: list[tuple[uuid.UUID, Document]] = []
                started = time.perf_counter()
                async with httpx.AsyncClient(base_url=cluster.api_url, timeout=60) as client:
                    for index, document in enumerate(corpus):
                        response = await client.post(
                            "/upload",
                            headers={
                                "Authorization": f"Bearer {tokens.issue(owners[index % users])}"
                            },
                            files={
                                "file": (document.filename, document.data, document.content_type)
                            },
                        )
                        if response.status_code in (200, 201):
                            accepted.append((uuid.UUID(response.json()["document_id"]), document))
                            continue
                        outcome = expected_outcome(uuid.uuid4(), document, config=config)
                        if response.status_code >= 500 or outcome.state is not State.DEADLETTER:
                            report.problems.append(
                                f"{document!r} was refused with {response.status_code} "
                                f"({response.text[:200]}) but the model expects {outcome!r}"
                            )
                        report.refused += 1
                report.upload_seconds = time.perf_counter() - started
                started = time.perf_counter()
                async with asyncio.timeout(timeout):
                    # Other processes do the work: the database is the only thing to watch.
                    while await connection.fetchval(QUERIES["count_live_jobs"].sql):  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                report.process_seconds = time.perf_counter() - started
                codes = cluster.stop()
                report.problems.extend(
                    f"process {name} exited with {code}" for name, code in codes.items() if code
                )
        await _verify(report, connection, accepted, config)
    finally:
        await connection.close()
    return report


def main(
    *,
    database_url: str | None,
    documents: int,
    workers: int,
    seed: int,
    timeout: float,
    processes: bool = False,
    max_cost_usd: Decimal | None = None,
) -> DemoReport:
    with Database.from_environment(database_url) as database:
        if processes:
            return asyncio.run(
                run_demo_processes(
                    database, documents=documents, workers=workers, seed=seed, timeout=timeout
                )
            )
        return asyncio.run(
            run_demo(
                database,
                documents=documents,
                workers=workers,
                seed=seed,
                timeout=timeout,
                max_cost_usd=max_cost_usd,
            )
        )


__all__ = ["DemoReport", "demo_users", "main", "run_demo", "run_demo_processes"]

"""``pipeline-models demo``: run the reference pipeline end to end and check how it ended.

Uploads a deterministic mixed corpus (markdown, text, PDFs, a few corrupt files) from a
few users, runs W workers against the in-process fakes, prints a per-stage table and
timings, and compares every document's ending with the oracle: done with exactly the
predicted chunks and vectors, or dead-lettered with ``last_error`` for corrupt input.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from pipeline_models.database import Database
from pipeline_models.documents import Document, large_markdown_document, sample_documents
from pipeline_models.lifecycle import STAGES, State
from pipeline_models.model import discrepancies, expected_outcomes
from pipeline_models.pipeline.config import WorkerConfig
from pipeline_models.pipeline.reference import ReferencePipeline
from pipeline_models.queries import QUERIES
from pipeline_models.snapshot import take_snapshot
from pipeline_models.tables import format_table

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
    final_chunks: int = 0

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
        ]
        if self.ok:
            lines.append(
                f"OK: every document ended as the model predicts: {self.done} done with "
                f"{self.final_chunks} final chunks and vectors, {self.deadlettered} "
                "dead-lettered with last_error (unusable input)"
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
) -> DemoReport:
    """Upload ``documents`` sample files, process them with ``workers``, verify the ending.

    The corpus is ``documents - 1`` small mixed files (a few of them unusable on purpose)
    and one markdown document of ``large_bytes``.
    """
    config = config or WorkerConfig(parser_poll_seconds=0.05, idle_seconds=0.02)
    report = DemoReport(documents, workers, database.display_url)
    await database.ensure_schema()
    connection = await database.connect(application_name="pipeline-models demo")
    try:
        await database.reset(connection)
        with tempfile.TemporaryDirectory(prefix="pipeline-models-blobs-") as blobs:
            async with ReferencePipeline.with_fakes(
                database, storage_root=blobs, config=config
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
                await pipeline.run_workers(workers, timeout=timeout)
                report.process_seconds = time.perf_counter() - started
        timings = {
            row["stage"]: row for row in await connection.fetch(QUERIES["stage_timings"].sql)
        }
        report.stage_rows = [
            [stage.value, *(timings[stage][k] for k in ("steps", "seconds", "slowest"))]
            for stage in STAGES
            if stage in timings
        ]
        snapshot = await take_snapshot(connection)
    finally:
        await connection.close()
    expected = expected_outcomes(accepted, config=config)
    report.problems = discrepancies(expected, snapshot)
    report.final_positions = Counter((j.stage.value, j.state.value) for j in snapshot.jobs.values())
    report.done = sum(1 for j in snapshot.jobs.values() if j.state is State.DONE)
    report.deadlettered = sum(1 for j in snapshot.jobs.values() if j.state is State.DEADLETTER)
    report.final_chunks = len(snapshot.final_chunks)
    return report


def main(
    *,
    database_url: str | None,
    documents: int,
    workers: int,
    seed: int,
    timeout: float,
) -> DemoReport:
    with Database.from_environment(database_url) as database:
        return asyncio.run(
            run_demo(database, documents=documents, workers=workers, seed=seed, timeout=timeout)
        )


__all__ = ["DemoReport", "demo_users", "main", "run_demo"]

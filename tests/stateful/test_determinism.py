"""The same seed gives the same interleaving and the same database state, twice."""

from __future__ import annotations

import re

from hypothesis.stateful import invariant, run_state_machine_as_test

from pipeline_models.machines import PipelineMachine
from pipeline_models.profiles import machine_settings
from pipeline_models.snapshot import Snapshot

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def canonical(snapshot: Snapshot) -> list[tuple[object, ...]]:
    """The database's content without its random ids (documents and jobs get uuid4s)."""
    rows = []
    for document in snapshot.documents.values():
        jobs = sorted(
            (
                job.stage.value,
                job.state.value,
                job.retry_count,
                job.chunks_done,
                job.embeddings_done,
                _UUID.sub("<id>", job.last_error or ""),
            )
            for job in snapshot.jobs_of(document.document_id)
        )
        finals = [
            (c.chunk_ord, c.chunk_sha, c.vector_sha)
            for c in snapshot.final_chunks_of(document.document_id)
        ]
        rows.append(
            (
                str(document.user_id),
                document.file_sha256,
                document.status,
                document.chunk_count,
                tuple(jobs),
                tuple(finals),
            )
        )
    return sorted(rows)


def record_run() -> list[object]:
    trace: list[object] = []

    class Recorded(PipelineMachine):
        def step_worker(self, worker: str) -> None:
            super().step_worker(worker)
            trace.append(("step", worker, self.crashed.copy()))

        @invariant()
        def database_agrees_with_the_model(self) -> None:
            super().database_agrees_with_the_model()
            trace.append(canonical(self._run(self.driver.snapshot())))

    settings = machine_settings("ci", max_examples=15, stateful_step_count=30)
    run_state_machine_as_test(Recorded, settings=settings)
    return trace


def test_the_same_seed_gives_the_same_interleaving_and_database_twice() -> None:
    first, second = record_run(), record_run()
    assert len(first) > 40
    assert first == second

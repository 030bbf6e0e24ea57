"""A failure to read end to end: a worker that commits after its lease ran out.

The reference worker with one bug: its completion checks that the job is still being
worked on, but not that *this* worker still holds it with a live lease (the catalog's
``completion-without-owner-check``). The search finds it (``pipeline-models mutants``,
``tests/stateful/test_bugs_are_caught.py``); this file is the story it finds, written as
``pipeline-models repro`` writes a failure, so that it replays the same way every time.
Watch every step and the job rows it changed::

    pipeline-models repro --run src/pipeline_models/examples/zombie_write.py
"""

from __future__ import annotations

from pipeline_models.drivers import CHECK_CONFIG, QueueDriver, ReferenceDriver
from pipeline_models.machines import QueueMachine, _Database
from pipeline_models.queries import QUERIES

# The completion's fence, and the move, without the owner and lease check.
WITHOUT_OWNER_CHECK = QUERIES.replace(
    lock_owned_job=(
        "SELECT job_id FROM upload_jobs WHERE job_id = $1 AND $2::text IS NOT NULL "
        "AND $3::timestamptz IS NOT NULL AND stage = $4 AND state = 'working' FOR UPDATE"
    ),
    advance_job=QUERIES["advance_job"].sql.replace(
        "AND owner = $2 AND state = 'working' AND lease_expires_at > $3",
        "AND $2::text IS NOT NULL AND state = 'working'",
    ),
)


class ZombieWriter(QueueMachine):
    """The job-queue machine over the reference worker with the bug above."""

    def make_driver(self) -> QueueDriver:
        return ReferenceDriver(_Database.get(), config=CHECK_CONFIG, queries=WITHOUT_OWNER_CHECK)


MACHINE = ZombieWriter


def program(state: QueueMachine) -> None:
    """w1 calls the parser and stalls; its lease runs out; w2 takes the job over; w1
    wakes and commits."""
    state.enqueue_first_job()
    state.run_worker(worker="w1", checkpoints=4)  # queued -> job_validated
    state.database_agrees_with_the_model()
    state.run_worker(worker="w1", checkpoints=3)  # claimed, before_call, after_call
    state.database_agrees_with_the_model()
    state.advance_clock(seconds=31)
    state.step_worker(worker="w2")  # takes over the expired lease
    state.database_agrees_with_the_model()
    state.run_worker(worker="w1", checkpoints=2)  # the zombie commits
    state.database_agrees_with_the_model()

"""A worker that keeps a heartbeat, not a lease, and deletes the jobs it finishes.

The checker must not read a late heartbeat as a lost job (the holder holds it until
someone recovers it), nor a deleted finished row as a lost one; and it must call a
completion by a worker whose job was recovered and taken by another what it is: a write
by a worker that does not hold the job (fencing).
"""

from __future__ import annotations

import pytest

from pipeline_models.core import QueueViolation, machine_for
from pipeline_models.core.machines import QueueMachine
from pipeline_models.core.report import run
from pipeline_models.examples.heartbeat.adapter import HeartbeatAdapter, UnfencedCompletionAdapter


@pytest.mark.parametrize(
    "seed", [1, *(pytest.param(seed, marks=pytest.mark.slow) for seed in (2, 3, 4, 5))]
)
def test_the_heartbeat_worker_passes_a_seeded_run(seed: int) -> None:
    report = run(machine_for(HeartbeatAdapter), profile="dev", seed=seed, max_examples=40)
    assert report.ok, report.render()


def _slow_worker_loses_its_job(machine: QueueMachine) -> None:
    """w1 works on its job, beats, and stalls just before deleting it; 31 s later w2 puts
    the job back and claims it; then w1 wakes and deletes it."""
    machine.enqueue_job()
    machine.run_worker_until_it_waits(worker="w1")  # claims, works (asleep)
    machine.advance_clock(seconds=16)
    machine.run_worker_until_it_waits(worker="w1")  # beats, works again
    machine.advance_clock(seconds=16)
    machine.run_worker(worker="w1", steps=2)  # beats; stops before its DELETE
    machine.advance_clock(seconds=31)
    machine.run_worker_until_it_waits(worker="w2")  # recovers it, claims it, works
    machine.step_worker(worker="w1")  # the zombie's DELETE


def test_a_completion_by_a_worker_whose_job_was_taken_over_is_reported_as_fencing() -> None:
    machine = machine_for(UnfencedCompletionAdapter, drain=False)()
    try:
        with pytest.raises(QueueViolation) as raised:
            _slow_worker_loses_its_job(machine)
    finally:
        machine.teardown()
    first = raised.value.findings[0]
    assert (first.invariant, first.job_id) == ("fencing", "1")
    assert "w2 held it" in str(first.observed)


def test_the_fenced_worker_passes_the_same_program() -> None:
    machine = machine_for(HeartbeatAdapter)()
    try:
        _slow_worker_loses_its_job(machine)
    finally:
        machine.teardown()

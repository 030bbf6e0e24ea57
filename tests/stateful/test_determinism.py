"""The same seed gives the same interleaving and the same database state, twice."""

from __future__ import annotations

import pytest
from hypothesis.stateful import invariant, run_state_machine_as_test

from pipeline_models.machines import PipelineMachine
from pipeline_models.profiles import machine_settings
from tests.determinism import snapshot_rows

# Two whole seeded runs compared: with the other same-seed tests, in CI's slow step.
pytestmark = pytest.mark.slow


def record_run() -> list[object]:
    trace: list[object] = []

    class Recorded(PipelineMachine):
        def step_worker(self, worker: str) -> None:
            super().step_worker(worker)
            trace.append(("step", worker, self.crashed.copy()))

        @invariant()
        def database_agrees_with_the_model(self) -> None:
            super().database_agrees_with_the_model()
            trace.append(snapshot_rows(self._run(self.driver.snapshot())))

    settings = machine_settings("ci", max_examples=15, stateful_step_count=30)
    run_state_machine_as_test(Recorded, settings=settings)
    return trace


def test_the_same_seed_gives_the_same_interleaving_and_database_twice() -> None:
    first, second = record_run(), record_run()
    assert len(first) > 40
    assert first == second

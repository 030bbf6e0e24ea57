"""The example-based baseline passes on the reference pipeline and fails on broken ones."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from pipeline_models.database import Database
from pipeline_models.drivers import ReferenceDriver
from pipeline_models.lifecycle import Stage
from pipeline_models.mutants.examples import (
    EXAMPLES,
    Example,
    ExampleResult,
    example_driver,
    run_examples,
)
from pipeline_models.pipeline.stages import STAGE_HANDLERS
from pipeline_models.pipeline.worker import Step, StepResult
from pipeline_models.queries import QUERIES

# Dead letters that lose their error: the schema's CHECK refuses the row, so the step
# itself blows up (an unexpected exception, which the runner counts as a failure).
NO_LAST_ERROR = QUERIES.replace(
    fail_job_permanent=QUERIES["fail_job_permanent"].sql.replace(
        "last_error = $4", "last_error = NULLIF($4::text, $4::text)"
    )
)
# A reclaim of an expired lease that does not count the failed attempt.
UNCOUNTED_RECLAIM = QUERIES.replace(
    claim_job=QUERIES["claim_job"].sql.replace(
        "+ CASE WHEN candidate.previous_state = 'working' AND NOT candidate.exhausted "
        "THEN 1 ELSE 0 END",
        "+ 0",
    )
)


async def _embed_nothing(step: Step) -> StepResult:
    """An embedding stage that counts the batches done without writing a vector."""
    async with step.commit() as connection:
        await connection.execute(
            step.queries["set_embedding_progress"].sql,
            step.job.job_id,
            step.job.chunks_total,
            step.now(),
        )
        return await step.advance(connection)


def _only(*names: str) -> list[Example]:
    by_name = {example.name: example for example in EXAMPLES}
    return [by_name[name] for name in names]


def _failures(results: list[ExampleResult]) -> dict[str, str | None]:
    return {result.name: result.message for result in results if not result.passed}


def test_the_examples_are_a_baseline_of_named_scenarios() -> None:
    names = [example.name for example in EXAMPLES]
    assert len(set(names)) == len(names)
    assert 12 <= len(EXAMPLES) <= 20
    for example in EXAMPLES:
        assert example.scenario, example.name
        assert "\n" not in example.scenario, example.name


def test_every_example_passes_on_the_reference_pipeline(pipeline_database: Database) -> None:
    results = asyncio.run(run_examples(pipeline_database))
    assert [result.name for result in results] == [example.name for example in EXAMPLES]
    assert _failures(results) == {}
    assert all(result.message is None and result.seconds > 0 for result in results)


def test_a_dead_letter_without_its_error_is_caught(pipeline_database: Database) -> None:
    results = asyncio.run(
        run_examples(
            pipeline_database,
            driver_factory=lambda db: example_driver(db, queries=NO_LAST_ERROR),
            examples=_only("parser_permanent_error", "happy_path"),
        )
    )
    failures = _failures(results)
    assert list(failures) == ["parser_permanent_error"]  # the happy path never dead-letters
    assert "CheckViolationError" in str(failures["parser_permanent_error"])


def test_an_embedding_stage_that_writes_no_vectors_is_caught(pipeline_database: Database) -> None:
    stages = {**STAGE_HANDLERS, Stage.EMBEDDING: _embed_nothing}
    results = asyncio.run(
        run_examples(
            pipeline_database,
            driver_factory=lambda db: example_driver(db, stages=stages),
            examples=_only("happy_path", "each_stage_once"),
        )
    )
    failures = _failures(results)
    assert set(failures) == {"happy_path", "each_stage_once"}
    assert "observed (embedded, deadletter)" in str(failures["happy_path"])


def test_a_reclaim_that_is_not_counted_is_caught(pipeline_database: Database) -> None:
    results = asyncio.run(
        run_examples(
            pipeline_database,
            driver_factory=lambda db: example_driver(db, queries=UNCOUNTED_RECLAIM),
            examples=_only("worker_crash_after_claim"),
        )
    )
    assert _failures(results) == {
        "worker_crash_after_claim": "retry_count after a lost lease: expected 1, observed 0"
    }


class _RecordingDriver(ReferenceDriver):
    torn_down = 0

    async def teardown(self) -> None:
        type(self).torn_down += 1
        await super().teardown()


async def _boom(driver: ReferenceDriver) -> None:
    raise RuntimeError("the pipeline fell over")


async def _hang(driver: ReferenceDriver) -> None:
    await asyncio.Event().wait()


@pytest.mark.parametrize(
    ("run", "message"),
    [
        (_boom, "RuntimeError: the pipeline fell over"),
        (_hang, "did not finish within 3 s (a hang)"),
    ],
)
def test_an_error_or_a_hang_is_a_failure_and_the_driver_is_torn_down(
    pipeline_database: Database, run: Callable[[ReferenceDriver], Awaitable[None]], message: str
) -> None:
    example = Example("broken", "a scenario that cannot pass", run)
    _RecordingDriver.torn_down = 0
    results = asyncio.run(
        run_examples(
            pipeline_database,
            driver_factory=_RecordingDriver,
            examples=[example, *_only("users_see_only_their_jobs")],
            timeout=3.0,
        )
    )
    assert [(r.name, r.passed, r.message) for r in results] == [
        ("broken", False, message),
        ("users_see_only_their_jobs", True, None),
    ]
    assert _RecordingDriver.torn_down == 2

"""A worker's task that fails and is never awaited is a warning of the report, not a
traceback that asyncio prints amid the checker's output."""

from __future__ import annotations

import asyncio
import gc

import pytest

from pipeline_models.core.machines import STATISTICS, _Runtime


class StatusError(Exception):
    pass


async def _persist_status(job: int) -> None:
    try:
        raise StatusError(f"Job was not found (job id: {job})")
    except StatusError as error:
        raise RuntimeError("\n    Database error.\n    ") from error


def test_a_task_nobody_awaited_is_one_warning_and_nothing_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    runtime = _Runtime.get()
    gc.collect()  # what earlier tests left unretrieved is theirs, not this test's
    STATISTICS.warnings.clear()

    async def leave_tasks_behind() -> None:
        for job in (1, 2):
            asyncio.get_running_loop().create_task(_persist_status(job))
        await asyncio.sleep(0.01)

    runtime.run(leave_tasks_behind())
    gc.collect()  # asyncio reports a failed task when it is collected unretrieved
    assert STATISTICS.warnings == [
        "asyncio: Task exception was never retrieved, from RuntimeError: Database error., "
        "from StatusError: Job was not found (job id: N)"
    ]
    assert "Traceback" not in capsys.readouterr().err

"""A crashed worker's last error is heard by the scheduler, not printed by asyncio.

A worker blocked in a query ends, with an error, as soon as the crash terminates its
backend: often before the crash looks at its task. The crash used to await the task only
if it was still running, and asyncio then printed the error of the finished one, a
traceback after a clean run ("Task exception was never retrieved").
"""

from __future__ import annotations

import asyncio
import gc
from types import SimpleNamespace
from typing import Any

from pipeline_models.database import Database
from pipeline_models.errors import DatabaseUnavailableError
from pipeline_models.scheduler import CheckpointScheduler, _Slot


async def _lost_its_connection() -> None:
    raise DatabaseUnavailableError("w1 lost its database connection")


async def _crash_a_worker_whose_step_just_ended(database: Database) -> list[dict[str, Any]]:
    unheard: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: unheard.append(context))
    scheduler = CheckpointScheduler(database)
    task = asyncio.create_task(_lost_its_connection(), name="w1-step")
    await asyncio.sleep(0)  # it ends before the crash looks at it
    assert task.done()
    worker: Any = SimpleNamespace(name="w1", _connection=None)
    scheduler.slots["w1"] = _Slot(worker, task=task)
    await scheduler.crash("w1")
    del task
    scheduler.slots.clear()
    gc.collect()  # asyncio speaks of an unheard error when the task is collected
    return unheard


def test_a_crashed_worker_leaves_no_error_unheard(pipeline_database: Database) -> None:
    assert asyncio.run(_crash_a_worker_whose_step_just_ended(pipeline_database)) == []

"""Named points where a worker may be paused: the seams the model checker interleaves at.

In production nothing is attached and a checkpoint costs one ``await`` of a no-op. Under
the checker's scheduler each checkpoint hands control back, so Hypothesis chooses which
worker runs next, and can shrink that choice.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pipeline_models.pipeline.worker import ClaimedJob


class Checkpoint(StrEnum):
    CLAIMED = "claimed"  # the claim committed; the job is leased to this worker
    BEFORE_CALL = "before_call"  # about to call an external service
    AFTER_CALL = "after_call"  # the call returned (its effects are out in the world)
    BEFORE_COMMIT = "before_commit"  # writes done inside the transaction, not committed
    COMMITTED = "committed"  # the step's transaction committed


class CheckpointHook(Protocol):
    async def __call__(
        self, worker: str, checkpoint: Checkpoint, job: ClaimedJob | None
    ) -> None: ...


__all__ = ["Checkpoint", "CheckpointHook"]

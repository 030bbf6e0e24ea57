"""pipeline-models: model-check Postgres-backed document pipelines with Hypothesis.

The names below load on first use, so ``import pipeline_models`` (which the pytest
plugin does in every session) stays cheap.

>>> from pipeline_models import Stage
>>> Stage.EMBEDDED.value
'embedded'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "BaseWorker": "pipeline_models.pipeline.worker",
    "Checkpoint": "pipeline_models.pipeline.checkpoints",
    "Database": "pipeline_models.database",
    "Document": "pipeline_models.documents",
    "Fault": "pipeline_models.fakes.faults",
    "FaultPlan": "pipeline_models.fakes.faults",
    "ManualClock": "pipeline_models.clock",
    "ReferencePipeline": "pipeline_models.pipeline.reference",
    "Stage": "pipeline_models.lifecycle",
    "State": "pipeline_models.lifecycle",
    "SystemClock": "pipeline_models.clock",
    "WorkerConfig": "pipeline_models.pipeline.config",
}

if TYPE_CHECKING:
    from pipeline_models.clock import ManualClock, SystemClock
    from pipeline_models.database import Database
    from pipeline_models.documents import Document
    from pipeline_models.fakes.faults import Fault, FaultPlan
    from pipeline_models.lifecycle import Stage, State
    from pipeline_models.pipeline.checkpoints import Checkpoint
    from pipeline_models.pipeline.config import WorkerConfig
    from pipeline_models.pipeline.reference import ReferencePipeline
    from pipeline_models.pipeline.worker import BaseWorker


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline_models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "BaseWorker",
    "Checkpoint",
    "Database",
    "Document",
    "Fault",
    "FaultPlan",
    "ManualClock",
    "ReferencePipeline",
    "Stage",
    "State",
    "SystemClock",
    "WorkerConfig",
    "__version__",
]

"""The checker core: it knows no schema, no stage name, no worker class.

A system is declared (:class:`Spec`) and driven through a small :class:`Adapter`; the
machines (:func:`machine_for`) interpose on its workers' round trips, keep their own
record of the job table, learn who holds what from what they saw, and judge the queue
invariants on it.

>>> from pipeline_models.core import Spec, States
>>> Spec("jobs", States(["queued"], ["running"])).holder.model.value
'row_lock'
"""

from __future__ import annotations

from pipeline_models.core.adapter import Adapter, action
from pipeline_models.core.invariants import ORDER, Finding, QueueViolation
from pipeline_models.core.machines import QueueMachine, close_checker, machine_for, use_server
from pipeline_models.core.spec import (
    Attempts,
    Finished,
    Holder,
    HolderModel,
    Spec,
    SpecError,
    States,
)

__all__ = [
    "ORDER",
    "Adapter",
    "Attempts",
    "Finding",
    "Finished",
    "Holder",
    "HolderModel",
    "QueueMachine",
    "QueueViolation",
    "Spec",
    "SpecError",
    "States",
    "action",
    "close_checker",
    "machine_for",
    "use_server",
]

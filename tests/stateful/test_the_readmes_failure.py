"""The failure the README and the tutorial read end to end, as a test.

``src/pipeline_models/examples/zombie_write.py`` is a repro file: under its bug (a
completion without the owner and lease check) the program fails as fencing, and on the
reference worker the same program passes, as the README says.
"""

from __future__ import annotations

import pytest

from pipeline_models.examples.zombie_write import ZombieWriter, program
from pipeline_models.invariants import InvariantViolation
from pipeline_models.machines import QueueMachine


def test_the_zombie_write_is_reported_as_fencing() -> None:
    machine = ZombieWriter()
    try:
        with pytest.raises(InvariantViolation) as raised:
            program(machine)
    finally:
        machine.teardown()
    assert {violation.invariant for violation in raised.value.violations} == {"fencing"}


def test_the_reference_worker_passes_the_same_program() -> None:
    machine = QueueMachine()
    try:
        program(machine)
    finally:
        machine.teardown()

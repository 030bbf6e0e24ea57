"""The state machines against the reference pipeline (the profile: --pipeline-profile)."""

from __future__ import annotations

from pipeline_models.machines import PipelineMachine, QueueMachine
from pipeline_models.profiles import machine_settings

TestQueueMachine = QueueMachine.TestCase
TestQueueMachine.settings = machine_settings()

TestPipelineMachine = PipelineMachine.TestCase
TestPipelineMachine.settings = machine_settings()

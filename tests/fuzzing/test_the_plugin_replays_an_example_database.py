"""The pytest plugin's example database: a flag, an ini key or an environment variable;
read-only; and the transition counts it leaves for ``pipeline-models report``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_pytest

PROBE = """
from hypothesis.database import ReadOnlyDatabase

from pipeline_models import machines
from pipeline_models.lifecycle import TransitionKind
from pipeline_models.profiles import machine_settings


def test_the_machines_settings() -> None:
    chosen = machine_settings()
    assert isinstance(chosen.database, ReadOnlyDatabase), chosen.database
    assert {database!r} in repr(chosen.database)
    assert chosen.derandomize is False
    machines.STATISTICS.examples += 1
    machines.STATISTICS.transitions[TransitionKind.CLAIM] += 2
    machines.event("edge queued/queued -> queued/working")
"""


def _run(directory: Path, *arguments: str, env: dict[str, str] | None = None) -> str:
    finished = run_pytest(directory, *arguments, leave_out=("PIPELINE_MODELS_",), env=env)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]
    return finished.stdout


@pytest.mark.parametrize("how", ["flag", "ini", "environment"])
def test_the_database_can_be_named_three_ways_and_is_read_only(tmp_path: Path, how: str) -> None:
    database = str(tmp_path / "shared-examples")
    (tmp_path / "test_probe.py").write_text(PROBE.format(database=database))
    arguments: list[str] = []
    env: dict[str, str] = {}
    if how == "flag":
        arguments.append(f"--pipeline-example-database={database}")
    elif how == "ini":
        (tmp_path / "pytest.ini").write_text(f"[pytest]\npipeline_example_database = {database}\n")
    else:
        env["PIPELINE_MODELS_EXAMPLE_DATABASE"] = database
    output = _run(tmp_path, *arguments, env=env)
    assert f"example database {database}" in output  # the report header says it
    counts = json.loads((tmp_path / ".pipeline-models/transitions-pytest.json").read_text())
    assert counts["transitions"]["claim"] == 2
    assert counts["edges"] == {"queued/queued -> queued/working": 1}

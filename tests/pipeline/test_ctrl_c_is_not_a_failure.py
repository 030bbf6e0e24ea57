"""Ctrl-C stops a long command: it says what was done, exits 130 (not 1, a failure), prints
no traceback, and stops the embedded Postgres."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from pipeline_models.cli import main
from pipeline_models.database import Database

GUIDE = "pipeline_models.examples.guide.adapter:FixedGuideAdapter"


@contextlib.contextmanager
def _start(arguments: list[str], directory: Path) -> Iterator[subprocess.Popen[str]]:
    """The command in a process group of its own, as a terminal runs a job, on an
    embedded server (no DATABASE_URL) that lives in the private temp directory. A test
    that fails before its Ctrl-C kills the group: no process or open pipe outlives it."""
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    environment["PYTHONUNBUFFERED"] = "1"  # each line as it is printed
    with subprocess.Popen(
        [sys.executable, "-m", "pipeline_models.cli", *arguments],
        cwd=directory,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            yield process
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)


def _ctrl_c(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    """What a terminal's Ctrl-C does: SIGINT to the whole foreground process group."""
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stdout, stderr


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.01)


def _servers_in(directory: Path) -> list[int]:
    """Postgres processes whose data lives under ``directory``."""
    found = []
    for process in psutil.process_iter(attrs=["name", "cmdline"]):
        if process.info.get("name") == "postgres" and any(
            str(directory) in part for part in process.info.get("cmdline") or []
        ):
            found.append(process.pid)
    return found


def _nothing_left(directory: Path) -> None:
    deadline = time.monotonic() + 15
    while _servers_in(directory) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _servers_in(directory) == [], "the embedded Postgres outlived the command"
    left = [path.name for path in directory.iterdir() if path.name.startswith("pipeline-models")]
    assert left == []


def _running_examples(process: subprocess.Popen[str]) -> None:
    """Wait until the machines have run an example: the debug profile announces each one
    as it begins, so the second announcement follows a whole example."""
    assert process.stdout is not None
    begun = 0
    while begun < 2:
        line = process.stdout.readline()
        assert line, f"the command ended before running an example: {process.wait()}"
        begun += line.startswith("Test case:")


@pytest.mark.parametrize(
    "arguments",
    [
        ["check", "--profile", "debug", "--max-examples", "10000"],
        pytest.param(  # the same path through the core: with the slow evidence
            ["check", "--profile", "debug", "--max-examples", "10000", "--adapter", GUIDE],
            marks=pytest.mark.slow,
        ),
    ],
    ids=["reference", "adapter"],
)
def test_ctrl_c_stops_check_with_what_it_did_and_exit_130(
    private_tmp: Path, tmp_path: Path, arguments: list[str]
) -> None:
    with _start(arguments, tmp_path) as process:
        _running_examples(process)
        code, stdout, stderr = _ctrl_c(process)
    output = stdout + stderr
    assert code == 130, output[-3000:]
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("STOPPED by Ctrl-C after "), output[-3000:]
    assert last.endswith(": no invariant failed so far"), last
    assert "Traceback" not in output, output[-3000:]
    assert "@seed(" not in output  # Hypothesis's advice for a failed test: none failed
    assert "Aborted!" not in output
    _nothing_left(private_tmp)


def test_ctrl_c_while_the_embedded_server_starts_stops_check_before_any_example(
    private_tmp: Path, tmp_path: Path
) -> None:
    with _start(["check"], tmp_path) as process:
        _wait_for(
            lambda: any(
                path.name.startswith("pipeline-models-pg-") for path in private_tmp.iterdir()
            ),
            "the embedded server starting",
        )
        code, stdout, stderr = _ctrl_c(process)
    output = stdout + stderr
    assert code == 130, output[-3000:]
    assert "STOPPED by Ctrl-C before the first example: nothing was checked" in stdout, output
    assert "Traceback" not in output, output
    assert "could not start the embedded Postgres" not in output
    _nothing_left(private_tmp)


def _interrupt(*_: object, **__: object) -> None:
    raise KeyboardInterrupt


def test_ctrl_c_stops_mutants_counting_nothing(
    monkeypatch: pytest.MonkeyPatch, pipeline_database: Database
) -> None:
    monkeypatch.setattr("pipeline_models.mutants.runner.run_campaign", _interrupt)
    result = CliRunner().invoke(
        main,
        ["mutants", "--only", "claim-without-skip-locked", "--database-url", pipeline_database.url],
    )
    assert result.exit_code == 130, result.output
    assert (
        "STOPPED by Ctrl-C after 0 of 1 mutants (the control runs first): nothing is counted"
        in (result.output)
    )


def test_ctrl_c_stops_the_demo_unverified(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipeline_models.demo.main", _interrupt)
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 130
    assert "STOPPED by Ctrl-C: the demo did not finish, so nothing was verified" in result.output


def test_ctrl_c_in_any_other_command_is_an_interruption_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("pipeline_models.report.write_report", _interrupt)
    runs = tmp_path / "transitions-x.json"
    runs.write_text("{}")
    result = CliRunner().invoke(main, ["report", str(runs), "--out", str(tmp_path / "report")])
    assert result.exit_code == 130
    assert result.output.strip() == "STOPPED by Ctrl-C"

"""A long command shows that it is alive while it runs: a line redrawn in place on a
terminal, plain lines in a log, always on stderr, so that stdout (the report, --json)
stays exactly what it was."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pipeline_models.cli import main
from pipeline_models.database import Database
from pipeline_models.fuzz import FuzzOptions, FuzzReport
from pipeline_models.machines import QueueMachine
from pipeline_models.mutants.catalog import BY_NAME
from pipeline_models.mutants.child import SideResult
from pipeline_models.mutants.runner import Campaign, MutantReport, RunOptions
from pipeline_models.progress import PERIOD_VARIABLE, Mode, Progress, Reading
from pipeline_models.report import Counts

QUEUE = len(QueueMachine.TRANSITIONS)
CHECK_LINE = re.compile(
    rf"^check: \d+ examples?, \d+ rules/s, transitions \d+ of {QUEUE}, \d+ s(; done)?$"
)
# Often enough that even a short run prints some: the shape is what is tested, not the time.
OFTEN = {PERIOD_VARIABLE: "0.2"}


def _check(database: Database, schema: str, *options: str, **popen: Any) -> Any:
    arguments = ["--machine", "queue", "--max-examples", "3", "--seed", "1", *options]
    arguments += ["--schema", schema, "--database-url", database.url]
    command = [sys.executable, "-m", "pipeline_models.cli", "check", *arguments]
    environment = {**os.environ, **OFTEN}
    if popen:
        return subprocess.Popen(command, env=environment, **popen)
    return subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=240, check=False
    )


@pytest.fixture
def schema(pipeline_database: Database) -> Any:
    name = f"pm_progress_{os.getpid()}"
    yield name
    asyncio.run(Database(pipeline_database.url, schema=name).drop_schema())


def test_check_in_a_log_prints_plain_progress_lines_on_stderr_and_a_clean_report(
    pipeline_database: Database, schema: str
) -> None:
    finished = _check(pipeline_database, schema)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    lines = finished.stderr.splitlines()
    assert lines, "no progress at all"
    assert all(CHECK_LINE.match(line) for line in lines), lines
    assert lines[-1].endswith("; done")
    assert "\r" not in finished.stderr  # no redrawing
    assert "\x1b" not in finished.stderr
    # The report on stdout is what it was: no progress in it.
    assert finished.stdout.startswith("pipeline-models check: queue machine")
    assert "rules/s, transitions" not in finished.stdout
    assert finished.stdout.rstrip().endswith("OK: no invariant failed")


def test_check_without_progress_prints_none(pipeline_database: Database, schema: str) -> None:
    finished = _check(pipeline_database, schema, "--no-progress")
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert finished.stderr == ""


def test_check_on_a_terminal_redraws_one_line_and_erases_it(
    pipeline_database: Database, schema: str
) -> None:
    """stderr a terminal, stdout a pipe (``check > report.txt``)."""
    main_end, terminal = pty.openpty()
    process = _check(pipeline_database, schema, stdout=subprocess.PIPE, stderr=terminal, text=True)
    os.close(terminal)
    shown = b""
    while True:
        ready, _, _ = select.select([main_end], [], [], 0.5)
        if ready:
            try:
                data = os.read(main_end, 65536)
            except OSError:  # the command closed the terminal's last end
                break
            if not data:
                break
            shown += data
        elif process.poll() is not None:
            break
    os.close(main_end)
    stdout, _ = process.communicate(timeout=240)
    assert process.returncode == 0, stdout + shown.decode(errors="replace")
    text = shown.decode()
    assert re.search(rf"check: \d+ examples?, \d+ rules/s, transitions \d+ of {QUEUE}", text)
    assert "\r" in text  # redrawn in place, not a line each time
    assert "; done" not in text  # the plain ending is for logs; here the line is erased
    assert stdout.startswith("pipeline-models check: queue machine")
    assert "rules/s, transitions" not in stdout


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def _plain(read: Callable[[], Reading], seconds: float = 1.0) -> Callable[..., list[str]]:
    def run(error: type[BaseException] | None = None) -> list[str]:
        stream = io.StringIO()
        with (
            pytest.raises(error) if error else contextlib.nullcontext(),
            Progress("check", read, mode=Mode.PLAIN, stream=stream, period=0.2),
        ):
            time.sleep(seconds)
            if error:
                raise error
        return _lines(stream)

    return run


def test_plain_progress_is_a_line_every_period_and_one_at_the_end() -> None:
    counter = iter(range(10**6))

    def read() -> Reading:
        step = next(counter)
        return Reading(step, step * 10, (1, 8))

    lines = _plain(read)()
    assert len(lines) >= 2
    shape = re.compile(r"check: \d+ examples?, \d+ rules/s, transitions 1 of 8, \d s")
    assert all(shape.match(line) for line in lines), lines
    assert lines[-1].endswith("; done")


def test_plain_progress_says_how_the_run_ended() -> None:
    stopped = _plain(lambda: Reading(3), seconds=0.1)(KeyboardInterrupt)
    assert stopped[-1] == "check: 3 examples, 0 s; stopped by Ctrl-C"
    failed = _plain(lambda: Reading(3), seconds=0.1)(RuntimeError)
    assert failed[-1] == "check: 3 examples, 0 s; ended by an error"


def test_progress_off_prints_nothing() -> None:
    stream = io.StringIO()
    with Progress("check", lambda: Reading(1), mode=Mode.OFF, stream=stream, period=0.01):
        time.sleep(0.1)
    assert stream.getvalue() == ""


def test_mutants_json_stays_parseable_with_progress_on_stderr(
    monkeypatch: pytest.MonkeyPatch, pipeline_database: Database
) -> None:
    mutant = BY_NAME["claim-without-skip-locked"]

    def campaign(mutants: Any, options: RunOptions, **hooks: Any) -> Campaign:
        side = SideResult("checker", killed=True, seconds=1.0, examples=12)
        control = MutantReport("unmodified", "-", "-", "-", {"checker": side})
        killed = MutantReport(mutant.name, mutant.kind, mutant.bug, mutant.seen, {"checker": side})
        hooks["on_control"](control)
        time.sleep(0.5)
        hooks["on_result"](killed)
        return Campaign(options, [control], [], [killed])

    monkeypatch.setattr("pipeline_models.mutants.runner.run_campaign", campaign)
    monkeypatch.setenv(PERIOD_VARIABLE, "0.1")
    result = CliRunner().invoke(
        main,
        [
            *("mutants", "--only", mutant.name, "--sides", "checker", "--rounds", "1", "--json"),
            *("--database-url", pipeline_database.url),
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["summary"]["killed_checker"] == 1
    lines = result.stderr.splitlines()
    assert lines, "no progress"
    assert all(line.startswith("mutants: ") for line in lines), lines
    # One control part: the queue layer's checker (the mutant's machine, the one side), its
    # one round.
    assert re.fullmatch(
        r"mutants: 24 examples, control 1 of 1 done, mutants 1 of 1 done \(1 killed\), "
        r"\d+ s; done",
        lines[-1],
    ), lines


def test_fuzz_shows_its_sessions_totals(monkeypatch: pytest.MonkeyPatch) -> None:
    def session(options: FuzzOptions, *, on_progress: Callable[[FuzzReport], None]) -> FuzzReport:
        report = FuzzReport(options, seconds=1.0, steps=50)
        report.counts = Counts(examples=7, rules=90, transitions=Counter({"claim": 4}))
        for _ in range(4):
            on_progress(report)
            time.sleep(0.1)
        return report

    monkeypatch.setattr("pipeline_models.fuzz.run_fuzz", session)
    monkeypatch.setenv(PERIOD_VARIABLE, "0.1")
    result = CliRunner().invoke(main, ["fuzz", "--machine", "queue"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("pipeline-models fuzz: queue")
    lines = result.stderr.splitlines()
    assert all(re.match(r"fuzz: \d+ examples, \d+ rules/s, transitions", x) for x in lines)
    assert lines[-1].startswith("fuzz: 7 examples, ")
    assert f"transitions 1 of {QUEUE}, 50 steps/s, 0 edges, 0 behaviours, failures 0" in lines[-1]


def test_repro_shows_which_failure_it_replays(pipeline_database: Database, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            *("repro", "--database", str(tmp_path / "examples"), "--out", str(tmp_path / "out")),
            *("--database-url", pipeline_database.url),
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "no failure in the example database reproduces here\n"
    assert result.stderr.splitlines()[-1].startswith(
        "repro: 0 examples, 0 rules/s, failure 0 of 0, 0 files written, "
    )

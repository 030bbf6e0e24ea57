"""``check --coverage``: the branches of the pipeline a run reached, measured where the
machines run them (the event loop's tasks), and the named queries it sent."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from pipeline_models.check import run_check
from pipeline_models.database import Database
from pipeline_models.reach import PIPELINE_DIR, BranchReport, Measure


def _files_with_branches() -> set[str]:
    return {
        path.name
        for path in Path(PIPELINE_DIR).glob("*.py")
        if any(line.lstrip().startswith("if ") for line in path.read_text().splitlines())
    }


def test_a_short_check_reaches_the_workers_branches_and_queries(
    pipeline_database: Database,
) -> None:
    report = run_check(pipeline_database, profile="ci", max_examples=2, coverage=True)
    reach = report.reach
    assert reach is not None
    # Every file of pipeline/ is in the denominator, imported or not.
    assert {name for name, _, _ in reach.by_file} >= _files_with_branches()
    assert reach.total == sum(of for _, _, of in reach.by_file) > 500
    # The workers run as tasks on the machines' event loop: measured there.
    worker = next((hit, of) for name, hit, of in reach.by_file if name == "worker.py")
    assert worker[0] > 0
    assert {"claim_job", "insert_document"} <= reach.queries_sent
    # The pipeline's long-lived processes are never run by the machines.
    assert any(line.startswith("processes.py:") for line in reach.missed_lines())
    assert "pause_service" in reach.queries_missed
    assert "branches not taken" in report.render()


def test_threads_started_while_measuring_are_measured() -> None:
    from pipeline_models.pipeline.retry import RetryPolicy

    with Measure() as measure:
        thread = threading.Thread(target=lambda: RetryPolicy(limit=2))
        thread.start()
        thread.join()
    report = measure.report
    assert report is not None
    retry = next(hit for name, hit, _ in report.by_file if name == "retry.py")
    assert retry > 0


def test_the_command_prints_the_share_and_the_missed_branches(
    pipeline_database: Database,
) -> None:
    # A process of its own (the machines keep one database per process), on a schema of
    # its own.
    arguments = ["check", "--coverage", "--profile", "ci", "--max-examples", "1"]
    where = ["--database-url", pipeline_database.url, "--schema", "check_coverage_cli"]
    result = subprocess.run(
        [sys.executable, "-m", "pipeline_models.cli", *arguments, "--no-progress", *where],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    after = result.stdout.split("OK: no invariant failed", 1)[1]
    assert "coverage of the system under test" in after
    assert "% of branches (" in after
    assert "named SQL queries sent:" in after
    assert "claim_job" not in after  # sent, so not listed as missed


def test_the_report_names_exits_and_counts() -> None:
    report = BranchReport(
        total=3,
        taken=1,
        missed=(("a.py", 3, 4), ("a.py", 5, -1)),
        queries=("one", "two"),
        queries_sent=frozenset({"one"}),
    )
    assert report.missed_lines() == ["a.py:3->4", "a.py:5->exit"]
    assert report.queries_missed == ["two"]
    assert f"{100 / 3:.1f}% of branches (1 of 3)" in report.render()

"""The guide (docs/own-worker.md), executed: a worker nobody wrote for the checker.

The team's worker claims in autocommit without a lock, has no lease, writes by id only
and reads time from SQL ``now()``. The checker reports its double claim, its zombie
write and its endless crash loop as three distinct findings of one run, each with a
short program; the same worker fixed as the guide shows passes five seeded runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline_models.core import machine_for
from pipeline_models.core.report import run
from pipeline_models.examples.guide import adapter as guide_adapter
from pipeline_models.examples.guide.adapter import FixedGuideAdapter, GuideAdapter

GUIDE = Path(__file__).parents[2] / "docs" / "own-worker.md"
FOLDER = Path(guide_adapter.__file__).parent


def headline(line: str) -> str:
    """A finding's first line without what a different shrink may change (which worker,
    which job, what times)."""
    line = re.sub(r"^\s*\d+\. ", "", line.split(": expected")[0])
    line = re.sub(r"\bw\d(~\d+)?\b", "w?", line)
    return re.sub(r"\(job \d+\)", "(job ?)", line)


def test_the_guide_shows_the_spec_and_adapter_as_they_are() -> None:
    text = GUIDE.read_text()
    for name in ("spec.toml", "adapter.py"):
        assert (FOLDER / name).read_text().rstrip() in text, f"docs/own-worker.md: {name} differs"


def test_the_guides_spec_and_adapter_take_under_60_lines() -> None:
    folder = Path(guide_adapter.__file__).parent
    lines = sum(
        len((folder / name).read_text().splitlines()) for name in ("spec.toml", "adapter.py")
    )
    print(f"spec.toml + adapter.py: {lines} lines")
    assert lines < 60


@pytest.mark.slow  # about 150 s: most of it shrinking three findings
def test_the_checker_reports_the_guide_workers_three_bugs_as_three_findings() -> None:
    report = run(machine_for(GuideAdapter), profile="dev", seed=1, shrink_seconds=120)
    print(report.render())
    found = {failure.invariant: failure for failure in report.failures}
    assert set(found) == {"mutual_exclusion", "fencing", "attempts"}
    assert "claimed a job" in found["mutual_exclusion"].lines[0]
    assert "wrote a job it did not hold" in found["fencing"].lines[0]
    assert "retried for ever" in found["attempts"].lines[0]
    for failure in report.failures:
        assert len(failure.rules) <= 6, failure.story
    shown = {headline(line) for line in GUIDE.read_text().splitlines() if ". [" in line}
    for failure in report.failures:
        assert headline(failure.lines[0]) in shown, failure.lines[0]


@pytest.mark.parametrize(
    "seed", [1, *(pytest.param(seed, marks=pytest.mark.slow) for seed in (2, 3, 4, 5))]
)
def test_the_fixed_guide_worker_passes_a_seeded_dev_run(seed: int) -> None:
    report = run(machine_for(FixedGuideAdapter), profile="dev", seed=seed)
    assert report.ok, report.render()
    assert report.examples >= 60

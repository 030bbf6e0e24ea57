"""A shrink that reaches its time limit (--shrink-seconds) says so in the report's words:
Hypothesis's own warning says "more than five minutes" whatever the limit was, and asks
the reader to report a bug to Hypothesis."""

from __future__ import annotations

import pytest

from pipeline_models.core import machine_for
from pipeline_models.core.report import run
from pipeline_models.examples.guide.adapter import GuideAdapter


def test_a_shrink_cut_short_is_a_warning_of_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    report = run(
        machine_for(GuideAdapter), profile="ci", seed=5, max_examples=30, rounds=1, shrink_seconds=0
    )
    assert report.failures, "the guide's worker passed: nothing was shrunk"
    printed = capsys.readouterr()
    assert "five minutes" not in printed.out + printed.err
    assert "warning: shrinking stopped at its limit of 0 s" in report.render()

"""Once an example has failed before its drain, the rest of that search (shrinking it,
looking on for other bugs) skips the drains: they cost most of an example and can only
show another failure, which the next round looks for. A machine run by itself (pytest's
TestCase) keeps every drain.

But a search that has seen a drain fail keeps its drains: Hypothesis replays that example
to shrink it, and a replay without its drain passed. The finding then read "FlakyFailure:
Failed on the first call but did not on a subsequent one" and kept its 60 unshrunk rules
(the guide's worker, seed 1): a flaky finding of the checker's own making."""

from __future__ import annotations

from typing import Any, ClassVar

from pipeline_models.core import machine_for
from pipeline_models.core.machines import QueueMachine
from pipeline_models.core.report import Report, run
from pipeline_models.examples.guide.adapter import GuideAdapter


def _recorded_search(seed: int) -> tuple[list[str], Report]:
    """Each drain, each failure before a drain and each failure in a drain, in order."""
    log: list[str] = []
    base: Any = machine_for(GuideAdapter)

    class Recorded(base):  # type: ignore[misc]
        seen: ClassVar[list[str]] = log

        def _drain(self) -> None:
            log.append("drain")
            super()._drain()

        def _judge(self, *args: Any, **kwargs: Any) -> None:
            try:
                super()._judge(*args, **kwargs)
            except Exception:
                log.append("drain failed" if self._draining else "failed")
                raise

    searched: type[QueueMachine] = Recorded
    report = run(searched, profile="ci", seed=seed, max_examples=30, rounds=1, shrink_seconds=5)
    return log, report


def test_after_the_first_failure_before_a_drain_no_example_of_the_search_drains() -> None:
    log, report = _recorded_search(seed=5)  # its first failure comes before a drain
    assert report.failures, "the guide's double claim was not found"
    assert "failed" in log
    first = log.index("failed")
    assert "drain failed" not in log[:first], "seed 5 no longer fails before a drain first"
    assert "drain" not in log[first:], "a drain ran after the search had failed"
    assert log.count("failed") > 1, "nothing was shrunk"


def test_a_search_that_saw_a_drain_fail_keeps_its_drains_and_its_findings_replay() -> None:
    log, report = _recorded_search(seed=7)  # a drain fails first, then an example before one
    assert "drain failed" in log
    assert "failed" in log
    assert log.index("drain failed") < log.index("failed"), "seed 7 no longer fails so"
    assert "drain" in log[log.index("failed") :], (
        "the drains stopped: the drain's finding cannot replay"
    )
    kinds = [failure.kind for failure in report.failures]
    assert not any("Flaky" in kind for kind in kinds), report.render()

"""Once an example has failed before its drain, the rest of that search (shrinking it,
looking on for other bugs) skips the drains: they cost most of an example and can only
show another failure, which the next round looks for. A machine run by itself (pytest's
TestCase) keeps every drain."""

from __future__ import annotations

from typing import ClassVar

from pipeline_models.core import machine_for
from pipeline_models.core.report import run
from pipeline_models.examples.guide.adapter import GuideAdapter


def test_after_the_first_failure_before_a_drain_no_example_of_the_search_drains() -> None:
    log: list[str] = []
    base = machine_for(GuideAdapter)

    class Recorded(base):  # type: ignore[valid-type,misc]
        seen: ClassVar[list[str]] = log

        def _drain(self) -> None:
            log.append("drain")
            super()._drain()

        def _judge(self, *args: object, **kwargs: object) -> None:
            try:
                super()._judge(*args, **kwargs)  # type: ignore[arg-type]
            except Exception:
                if not self._draining:
                    log.append("failed")
                raise

    report = run(Recorded, profile="ci", seed=1, max_examples=30, rounds=1, shrink_seconds=5)
    assert report.failures, "the guide's double claim was not found"
    assert "failed" in log
    first = log.index("failed")
    assert "drain" in log[:first] or first == 0
    assert "drain" not in log[first:], "a drain ran after the search had failed"
    assert log.count("failed") > 1, "nothing was shrunk"

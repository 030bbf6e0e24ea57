"""A machine's report lists what that machine checks, and nothing it does not: the queue
machine, the job-queue layer alone, neither judges billing nor delivers webhooks."""

from __future__ import annotations

from collections import Counter

from pipeline_models.check import CheckReport
from pipeline_models.core.report import Report
from pipeline_models.fuzz import FuzzOptions, FuzzReport
from pipeline_models.invariants import INVARIANTS
from pipeline_models.lifecycle import TransitionKind
from pipeline_models.machines import PipelineMachine, QueueMachine, RunStatistics

# Only the pipeline machine's rules put faults on services, deliver webhooks, retry as
# operator and cap the spending.
PIPELINE_ONLY = ("fail_transient", "webhook", "operator_retry", "hold", "release")


def _report(machine: str, seen: dict[TransitionKind, int] | None = None) -> str:
    statistics = RunStatistics(examples=3, rules=40, transitions=Counter(seen or {}))
    return CheckReport(machine, "dev", "a database", seconds=1.0, statistics=statistics).render()


def _invariants_line(report: str) -> str:
    return next(line for line in report.splitlines() if line.startswith("invariants checked"))


def _table(report: str) -> list[str]:
    """The first column of the transitions table."""
    lines = report.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("transition "))) + 2
    rows = []
    for line in lines[start:]:
        if not line or line.startswith("also seen"):
            break
        rows.append(line.split()[0])
    return rows


def test_the_queue_machine_lists_only_the_queue_invariants_and_transitions() -> None:
    report = _report("queue")
    line = _invariants_line(report)
    for name in ("billing", "cost", "finalize", "buffers", "progress", "no_loss"):
        assert name not in line, line
    assert line.endswith(
        "transitions, claims_skip_locks, leases_cover_calls, fencing, retries, no_duplicates;"
        " liveness at every drain"
    )
    assert "webhook" not in report
    assert _table(report) == [kind.value for kind in QueueMachine.TRANSITIONS]
    assert not set(PIPELINE_ONLY) & set(_table(report))
    assert f"transitions covered: 0 of {len(QueueMachine.TRANSITIONS)}" in report


def test_the_pipeline_machine_lists_every_invariant_and_transition() -> None:
    report = _report("pipeline")
    assert _invariants_line(report).endswith(", ".join(INVARIANTS) + "; liveness at every drain")
    assert "billing" in _invariants_line(report)
    assert _table(report) == [kind.value for kind in TransitionKind]
    assert set(PIPELINE_ONLY) <= set(_table(report))
    assert f"transitions covered: 0 of {len(TransitionKind)}" in report


def test_the_lists_come_from_the_machines() -> None:
    assert QueueMachine.checked_invariants() == QueueMachine.INVARIANT_NAMES
    assert PipelineMachine.checked_invariants() == tuple(INVARIANTS)
    assert set(QueueMachine.TRANSITIONS) < set(PipelineMachine.TRANSITIONS)


def test_what_the_queue_machine_did_not_make_itself_is_still_shown() -> None:
    # Its drains deliver the parser's webhooks: seen, and so said, outside the table.
    report = _report(
        "queue",
        {TransitionKind.CLAIM: 5, TransitionKind.WEBHOOK: 2, TransitionKind.FAIL_TRANSIENT: 1},
    )
    assert "webhook" not in _table(report)
    assert "also seen, made by the drains: webhook 2" in report
    assert "also seen: fail_transient 1" in report
    assert f"transitions covered: 1 of {len(QueueMachine.TRANSITIONS)}" in report


def test_a_fuzz_session_of_the_queue_machine_counts_its_transitions() -> None:
    queue = FuzzReport(FuzzOptions(machines=("queue",))).render()
    both = FuzzReport(FuzzOptions()).render()
    assert f"transitions covered: 0 of {len(QueueMachine.TRANSITIONS)};" in queue
    assert "hold" not in queue
    assert f"transitions covered: 0 of {len(TransitionKind)};" in both


def test_your_own_workers_report_names_the_invariants_it_checked() -> None:
    report = Report("GuideAdapterMachine", "dev", invariants=("fencing", "no_loss", "liveness"))
    assert "invariants checked: fencing, no_loss; liveness at every drain" in report.render()
    without = Report("GuideAdapterMachine", "dev", invariants=("fencing",)).render()
    assert "invariants checked: fencing\n" in without

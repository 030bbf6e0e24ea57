"""Every queue invariant holds on a correct history and fires on a crafted bad one.

Histories are written by hand as the audit trigger records them (whole rows before and
after, the actor, the checker's time), replayed through :class:`HolderHistory` and
judged by :class:`QueueJudge`: no database, no worker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline_models.core import Attempts, Holder, Spec, States
from pipeline_models.core.holders import HolderHistory, Move
from pipeline_models.core.invariants import (
    Finding,
    QueueJudge,
    QueueViolation,
    in_causal_order,
    raise_findings,
    violation_class,
)
from pipeline_models.core.observe import AuditRow

START = datetime(2030, 1, 1, tzinfo=UTC)
STATES = States(
    claimable=["queued"], in_progress=["running"], succeeded=["done"], failed=["failed"]
)
HEARTBEAT = Spec(
    "jobs",
    STATES,
    holder=Holder("heartbeat", column="beat", timeout_seconds=30),
    attempts=Attempts("attempts", limit=3),
    due="due",
)
LEASE = Spec("jobs", STATES, holder=Holder("lease", column="lease_until"))


class Trail:
    """A job table in memory, each write recorded as the audit trigger records it."""

    def __init__(self, spec: Spec = HEARTBEAT, *, finished: str | None = None) -> None:
        self.spec = spec
        self.rows: dict[str, dict[str, Any]] = {}
        self.now = START
        self.history = HolderHistory(spec, workers={"w1", "w2", "w3"})
        self.judge = QueueJudge(spec)
        self.findings: list[Finding] = []
        self._audit = 0
        self._transaction: str | None = None  # every write its own transaction, else

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def _record(self, operation: str, actor: str, job: str, old: Any, new: Any) -> None:
        self._audit += 1
        xid = self._transaction or f"x{self._audit}"
        change = AuditRow(self._audit, operation, actor, self.now, job, old, new, xid)
        self.findings += self.judge.judge([self.history.apply(change)])

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """The writes inside share one transaction (as the trigger's xid shows)."""
        self._transaction = f"t{self._audit}"
        try:
            yield
        finally:
            self._transaction = None

    def enqueue(self, job: str = "1", **values: Any) -> None:
        row = {"id": job, "state": "queued", "attempts": 0, "beat": None, "due": None, **values}
        self.rows[job] = row
        self.judge.enqueued.append(job)
        self._record("INSERT", "pipeline-models enqueue", job, None, dict(row))

    def write(self, actor: str, job: str = "1", **values: Any) -> None:
        old = dict(self.rows[job])
        self.rows[job] = {**old, **values}
        self._record("UPDATE", actor, job, old, dict(self.rows[job]))

    def delete(self, actor: str, job: str = "1") -> None:
        self._record("DELETE", actor, job, self.rows.pop(job), None)

    def claim(self, actor: str, job: str = "1", **values: Any) -> None:
        self.write(actor, job, state="running", beat=self.now.isoformat(), **values)

    def fired(self, name: str) -> list[Finding]:
        return [finding for finding in self.findings if finding.invariant == name]


def test_a_correct_history_breaks_no_invariant() -> None:
    trail = Trail()
    trail.enqueue("1")
    trail.enqueue("2")
    trail.claim("w1", "1")
    trail.claim("w2", "2")
    trail.tick(10)
    trail.write("w1", "1", beat=trail.now.isoformat())  # a heartbeat
    trail.write("w1", "1", state="done")
    trail.write("w2", "2", state="queued", attempts=1)  # a failed attempt, retried
    trail.claim("w1", "2")
    trail.write("w1", "2", state="done")
    assert trail.findings == []
    assert trail.judge.liveness(trail.rows) == []
    assert [e.move for e in trail.history.events][2:5] == [Move.CLAIM, Move.CLAIM, Move.PROGRESS]


def test_mutual_exclusion_fires_when_a_second_worker_takes_a_held_job() -> None:
    trail = Trail()
    trail.enqueue()
    trail.claim("w1")
    trail.claim("w2")  # running -> running: the lockless claim's lost race
    [finding] = trail.fired("mutual_exclusion")
    assert finding.message == "w2 claimed a job w1 had claimed"
    assert finding.job_id == "1"


def test_mutual_exclusion_fires_when_a_claim_lands_on_a_job_another_worker_finished() -> None:
    # Both read the job as queued; w2 claimed it and finished it; then w1's update lands.
    trail = Trail()
    trail.enqueue()
    trail.claim("w2")
    trail.write("w2", state="done")
    trail.claim("w1")
    [finding] = trail.fired("mutual_exclusion")
    assert "w2 claimed it at 00:00:00 and left it 'done'" in str(finding.observed)
    assert [f.invariant for f in in_causal_order(trail.findings)][:2] == [
        "mutual_exclusion",
        "transitions",
    ]


def test_a_take_over_after_the_heartbeat_went_stale_or_a_crash_is_no_double_claim() -> None:
    trail = Trail()
    trail.enqueue("1")
    trail.enqueue("2")
    trail.claim("w1", "1")
    trail.claim("w1", "2")
    trail.tick(31)
    trail.claim("w2", "1", attempts=1)  # its heartbeat is 31 s old: a recovery
    trail.history.crash("w1")
    trail.claim("w3", "2", attempts=1)  # its holder crashed
    assert trail.fired("mutual_exclusion") == []
    assert trail.fired("attempts") == []


def test_fencing_fires_on_a_zombie_completion_after_its_job_was_recovered() -> None:
    trail = Trail()
    trail.enqueue()
    trail.claim("w1")
    trail.tick(31)
    trail.write("w2", state="queued", attempts=1)  # recovers the stalled job
    trail.write("w1", state="done")  # w1 was only slow: it completes by id
    [finding] = trail.fired("fencing")
    assert "w1 wrote a job it did not hold" in finding.message
    assert "queued → done" in str(finding.observed)


def test_a_heartbeat_holder_that_is_late_but_not_recovered_still_holds_its_job() -> None:
    trail = Trail()
    trail.enqueue()
    trail.claim("w1")
    trail.tick(45)  # stale, but nobody recovered it
    trail.write("w1", state="done")
    assert trail.findings == []


def test_under_a_lease_a_write_after_the_expiry_is_a_zombies_write() -> None:
    trail = Trail(LEASE)
    trail.enqueue()
    trail.write("w1", state="running", lease_until=(trail.now + timedelta(seconds=30)).isoformat())
    trail.tick(31)
    trail.write("w1", state="done")
    [finding] = trail.fired("fencing")
    assert "lease expired" in str(finding.observed)


def test_fencing_fires_when_a_worker_deletes_a_job_it_does_not_hold() -> None:
    trail = Trail(Spec("jobs", STATES, holder=HEARTBEAT.holder, finished="deleted"))
    trail.enqueue()
    trail.claim("w1")
    trail.delete("w1")  # its own finished job: fine
    trail.enqueue("2")
    trail.claim("w1", "2")
    trail.tick(31)
    trail.claim("w2", "2")
    trail.delete("w1", "2")
    assert [f.job_id for f in trail.fired("fencing")] == ["2"]
    assert trail.fired("no_loss") == []
    assert trail.judge.finished == {"1"}


@pytest.mark.parametrize(
    ("story", "says"),
    [
        ("finished job changed", "a finished job changed"),
        ("undeclared state", "the state 'lost' is not one the spec declares"),
        ("claim before due", "claimed a job before it was due"),
        ("born running", "a job was created neither claimable nor waiting"),
        ("claimable to done", "a job moved claimable → succeeded"),
    ],
)
def test_transitions_fire_on_moves_no_queue_makes(story: str, says: str) -> None:
    trail = Trail()
    if story == "born running":
        trail.enqueue(state="running")
    else:
        trail.enqueue(due=(START + timedelta(seconds=60)).isoformat())
    if story == "finished job changed":
        trail.tick(61)
        trail.claim("w1")
        trail.write("w1", state="done")
        trail.write("w1", state="queued")
    elif story == "undeclared state":
        trail.write("w1", state="lost")
    elif story == "claim before due":
        trail.claim("w1")
    elif story == "claimable to done":
        trail.write("pipeline-models operator", state="done")
    assert any(says in f.message for f in trail.fired("transitions")), trail.findings


def test_a_stage_moves_only_along_the_declared_moves() -> None:
    staged = Spec("jobs", STATES, stage="stage", stages=["parse", "embed", "finish"])
    trail = Trail(staged)
    trail.enqueue(stage="parse")
    trail.claim("w1")
    trail.write("w1", state="queued", stage="embed")
    trail.claim("w1")
    trail.write("w1", state="queued", stage="parse")  # backwards
    [finding] = trail.fired("transitions")
    assert "embed → parse" in finding.message


def test_attempts_fire_when_a_recovery_is_never_counted() -> None:
    trail = Trail()
    trail.enqueue()
    trail.claim("w1")
    trail.history.crash("w1")
    trail.tick(31)
    trail.write("w2", state="queued")  # put back, the crash not counted
    trail.claim("w2")
    [finding] = trail.fired("attempts")
    assert "retried for ever" in finding.message
    assert finding.expected is not None
    assert finding.expected.startswith("1 ")


@pytest.mark.parametrize("where", ["at the recovery", "at the claim"])
def test_a_recovery_may_be_counted_where_it_happens_or_by_the_next_claim(where: str) -> None:
    trail = Trail()
    trail.enqueue()
    trail.claim("w1")
    trail.tick(31)
    if where == "at the recovery":
        trail.write("w2", state="queued", attempts=1)
        trail.claim("w2")
    else:
        trail.write("w2", state="queued")
        trail.claim("w2", attempts=1)
    assert trail.fired("attempts") == []


def test_attempts_fire_when_one_recovery_is_counted_twice_or_a_count_is_lost() -> None:
    twice = Trail()
    twice.enqueue()
    twice.claim("w1")
    twice.tick(31)
    twice.write("w2", state="queued", attempts=1)
    twice.claim("w2", attempts=2)
    assert "did not fail" in twice.fired("attempts")[0].message

    lost = Trail()
    lost.enqueue()
    lost.claim("w1")
    lost.write("w1", state="queued", attempts=1)  # a failure, counted
    lost.claim("w2")
    lost.write("w2", attempts=0)  # written back from a stale read
    assert "already counted was lost" in lost.fired("attempts")[0].message


def test_a_declared_progress_gives_the_attempts_a_fresh_budget_in_its_transaction() -> None:
    spec = Spec(
        "jobs",
        STATES,
        holder=HEARTBEAT.holder,
        attempts=Attempts("attempts", limit=3, resets_on=["cursor"]),
    )
    progress = Trail(spec)
    progress.enqueue(cursor=0)
    progress.claim("w1")
    progress.write("w1", state="queued", attempts=1)  # a failure, counted
    progress.claim("w2")
    with progress.transaction():
        progress.write("w2", cursor=1)  # a batch written
        progress.write("w2", state="queued", attempts=0)  # and a fresh budget
    assert progress.findings == []

    elsewhere = Trail(spec)
    elsewhere.enqueue(cursor=0)
    elsewhere.claim("w1")
    elsewhere.write("w1", state="queued", attempts=1)
    elsewhere.claim("w2")
    elsewhere.write("w2", cursor=1)  # progress, committed on its own
    elsewhere.write("w2", state="queued", attempts=0)  # a later write loses the count
    assert "already counted was lost" in elsewhere.fired("attempts")[0].message


def test_a_lease_that_ends_at_a_take_over_lets_a_late_holder_write_until_then() -> None:
    spec = Spec("jobs", STATES, holder=Holder("lease", column="lease_until", ends="takeover"))
    trail = Trail(spec)
    trail.enqueue()
    trail.write("w1", state="running", lease_until=(trail.now + timedelta(seconds=30)).isoformat())
    trail.tick(31)
    # Late, but nobody took the job: the holder gives it back (under "expiry", a zombie's).
    trail.write("w1", state="queued", lease_until=None)
    assert trail.findings == []
    trail.write("w2", state="running", lease_until=(trail.now + timedelta(seconds=30)).isoformat())
    trail.write("w1", state="done")  # after another's claim: a zombie's write
    [finding] = trail.fired("fencing")
    assert "w2 held it" in str(finding.observed)


def test_a_job_claimed_once_per_stage_is_no_poison_job() -> None:
    stages = [f"s{index}" for index in range(6)]
    spec = Spec(
        "jobs", STATES, holder=HEARTBEAT.holder, max_deliveries=2, stage="stage", stages=stages
    )
    trail = Trail(spec)
    trail.enqueue(stage="s0")
    for index, stage in enumerate(stages[1:]):
        trail.claim("w1")
        trail.write("w1", state="queued", stage=stage)
        assert not trail.fired("redelivery"), index
    for _ in range(3):
        trail.claim("w1")
        trail.write("w1", state="queued")  # no further: the same stage again and again
    assert trail.fired("redelivery")


def test_redelivery_fires_on_a_poison_job_claimed_past_the_limit() -> None:
    spec = Spec("jobs", STATES, holder=Holder("heartbeat", "beat", 30), max_deliveries=3)
    trail = Trail(spec)
    trail.enqueue()
    for worker in ("w1", "w2", "w3", "w1"):
        trail.claim(worker)
        trail.history.crash(worker)
        trail.write("w2", state="queued")
    [finding] = trail.fired("redelivery")
    assert finding.observed == "claim 4 by w1"


def test_no_loss_fires_on_a_job_deleted_unfinished_or_gone_without_trace() -> None:
    trail = Trail()
    trail.enqueue("1")
    trail.enqueue("2")
    trail.delete("pipeline-models operator", "1")
    assert "deleted a job that had not finished" in trail.fired("no_loss")[0].message
    del trail.rows["2"]  # as a TRUNCATE would: no row trigger fires
    [gone] = trail.judge.check_rows(trail.rows)
    assert (gone.job_id, gone.observed) == ("2", "no row")


def test_liveness_names_every_job_that_never_finished() -> None:
    trail = Trail()
    trail.enqueue("1")
    trail.enqueue("2")
    trail.claim("w1", "1")
    trail.write("w1", "1", state="done")
    [stuck] = trail.judge.liveness(trail.rows)
    assert (stuck.invariant, stuck.job_id, stuck.observed) == (
        "liveness",
        "2",
        "'queued' (claimable)",
    )


def test_every_finding_is_reported_in_causal_order_as_the_first_ones_class() -> None:
    findings = [
        Finding("attempts", "lost"),
        Finding("transitions", "odd"),
        Finding("mutual_exclusion", "double claim"),
    ]
    assert [f.invariant for f in in_causal_order(findings)] == [
        "mutual_exclusion",
        "transitions",
        "attempts",
    ]
    with pytest.raises(QueueViolation) as raised:
        raise_findings(findings)
    assert type(raised.value) is violation_class("mutual_exclusion")
    assert str(raised.value).splitlines()[0] == "[mutual_exclusion] double claim"
    assert len(raised.value.findings) == 3


def test_effects_fire_when_a_job_s_effect_happens_twice_under_exactly_once() -> None:
    spec = Spec("jobs", STATES, holder=HEARTBEAT.holder, effects="exactly_once")
    trail = Trail(spec)
    trail.enqueue()
    trail.claim("w1")
    assert trail.judge.effects("w1", "POST /charge", trail.now, ["1"]) == []
    trail.tick(31)
    trail.claim("w2")  # a take-over of a stalled job: fine, but its charge is not
    [twice] = trail.judge.effects("w2", "POST /charge", trail.now, ["1"])
    assert (twice.invariant, twice.job_id) == ("effects", "1")
    assert twice.observed == "POST /charge by w1 at 00:00:00, then w2 at 00:00:31"
    [zombie] = trail.judge.effects("w1", "POST /charge", trail.now, [])
    assert "held no job" in zombie.message


def test_at_least_once_lets_a_recovered_job_repeat_its_effect_but_not_skip_it() -> None:
    spec = Spec("jobs", STATES, holder=HEARTBEAT.holder, effects="at_least_once")
    trail = Trail(spec)
    trail.enqueue("1")
    trail.enqueue("2")
    trail.claim("w1", "1")
    assert trail.judge.effects("w1", "POST /charge", trail.now, ["1"]) == []
    assert trail.judge.effects("w2", "POST /charge", trail.now, ["1"]) == []
    trail.write("w1", "1", state="done")
    trail.claim("w1", "2")
    trail.write("w1", "2", state="done")  # without its call
    [skipped] = trail.judge.liveness(trail.rows)
    assert (skipped.job_id, skipped.message) == (
        "2",
        "a job succeeded without its handler's effect",
    )

"""Every queue invariant holds on a correct history and fires on a crafted bad one.

Histories are written by hand as the audit trigger records them (whole rows before and
after, the actor, the checker's time), replayed through :class:`HolderHistory` and
judged by :class:`QueueJudge`: no database, no worker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline_models.core import Attempts, Holder, Spec, SpecError, States
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


def test_where_every_return_is_a_retry_each_put_back_counts_once_in_its_own_write() -> None:
    returns = replace(HEARTBEAT, attempts=Attempts("attempts", limit=2, counts="returns"))
    counted = Trail(returns)
    counted.enqueue()
    counted.claim("w1")
    counted.write("w1", state="queued", attempts=1)  # failed, put back: counted
    counted.claim("w2")
    counted.tick(31)
    counted.write("w1", state="queued", attempts=2)  # stalled, recovered: counted
    counted.claim("w1")
    counted.write("w1", state="failed")  # out of attempts
    assert counted.findings == []

    uncounted = Trail(returns)
    uncounted.enqueue()
    uncounted.claim("w1")
    uncounted.write("w1", state="queued")  # failed and put back, not counted
    [finding] = uncounted.fired("attempts")
    assert "return to the queue was not counted" in finding.message
    assert finding.expected == "1 in the write that put it back"

    recovered = Trail(returns)
    recovered.enqueue()
    recovered.claim("w1")
    recovered.tick(31)
    recovered.write("w2", state="queued")  # recovered, not counted
    assert "not counted" in recovered.fired("attempts")[0].message


@pytest.mark.parametrize(("delay", "fires"), [(3, False), (0, True), (-5, True), (None, True)])
def test_a_counted_failure_put_back_due_at_once_is_no_backoff(
    delay: int | None, fires: bool
) -> None:
    spec = replace(HEARTBEAT, attempts=Attempts("attempts", limit=3, backs_off=True))
    trail = Trail(spec)
    trail.enqueue()
    trail.claim("w1")
    trail.tick(2)
    due = None if delay is None else (trail.now + timedelta(seconds=delay)).isoformat()
    trail.write("w1", state="queued", attempts=1, due=due)  # a failure, counted
    assert bool(trail.fired("attempts")) == fires, trail.findings
    if fires:
        assert "no backoff" in trail.fired("attempts")[0].message
    # Undeclared, the same history is no finding.
    plain = Trail(HEARTBEAT)
    plain.enqueue()
    plain.claim("w1")
    plain.write("w1", state="queued", attempts=1, due=due)
    assert plain.findings == []


def test_a_backoff_is_judged_from_the_time_the_worker_read_not_the_write() -> None:
    """A worker reads the time, pauses before its write while a rule moves the clock
    31 s, then writes due = what it read + 3 s: a backoff, though earlier than the write.
    The scheduler tells the judge the time of the worker's step before the write."""
    spec = replace(HEARTBEAT, attempts=Attempts("attempts", limit=3, backs_off=True))
    trail = Trail(spec)
    trail.enqueue()
    trail.claim("w1")
    read = trail.now
    trail.tick(31)
    trail.judge.read_before = lambda actor, at: read
    trail.write("w1", state="queued", attempts=1, due=(read + timedelta(seconds=3)).isoformat())
    assert trail.findings == []
    trail.claim("w1")
    read = trail.now
    trail.write("w1", state="queued", attempts=2, due=read.isoformat())  # what it read: none
    assert "no backoff" in trail.fired("attempts")[0].message


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


def test_a_stage_moved_under_its_holder_by_someone_else_is_a_transition_finding() -> None:
    """A webhook may take a job from its worker and move it on (the reference's notice
    sets it queued at the next stage); moving it on and leaving it held lets the worker
    advance it again from where it last saw it (webhook-and-poller-both-advance)."""
    staged = Spec("jobs", STATES, stage="stage", stages=["parse", "embed", "finish"])
    for takes_it, fired in ((True, []), (False, ["transitions"])):
        trail = Trail(staged)
        trail.enqueue(stage="parse")
        trail.claim("w1")
        state = "queued" if takes_it else "running"
        trail.write("webhook #1", stage="embed", state=state)
        assert [finding.invariant for finding in trail.findings] == fired, takes_it
    [finding] = trail.findings
    assert finding.message == "webhook #1 moved the stage of a job w1 holds, and left it held"
    assert finding.observed == "parse → embed by webhook #1, 'running' under w1"


def test_a_second_call_of_a_hold_without_a_renewal_is_a_fencing_finding() -> None:
    """holder.renews_before_calls: the claim's lease covers the hold's first call; each
    later call needs a renewal first (lease-not-renewed: a long stage outlives its lease).
    Judged on order alone, so a renewal long before its call is no finding."""
    renewing = Spec(
        "jobs", STATES, holder=Holder("lease", column="lease_until", renews_before_calls=True)
    )

    def call(trail: Trail, *held: str) -> list[str]:
        found = trail.judge.calls_covered("w1", "POST /parse", trail.now, list(held))
        return [finding.invariant for finding in found]

    trail = Trail(renewing)
    trail.enqueue()
    trail.claim("w1", lease_until=(START + timedelta(seconds=30)).isoformat())
    assert call(trail, "1") == []  # the claim's lease
    trail.tick(600)  # a pause of the worker's: no fault of its own
    trail.write("w1", lease_until=(trail.now + timedelta(seconds=30)).isoformat())
    assert call(trail, "1") == []
    assert call(trail, "1") == ["fencing"]  # no renewal since the last call
    assert call(trail, "1", "2") == []  # two held: which job the call was for is unknown
    unchecked = Spec("jobs", STATES, holder=Holder("lease", column="lease_until"))
    trail = Trail(unchecked)
    trail.enqueue()
    trail.claim("w1", lease_until=START.isoformat())
    assert call(trail, "1") + call(trail, "1") == []
    with pytest.raises(SpecError, match="renews_before_calls needs a time"):
        Holder("row_lock", renews_before_calls=True)


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


def test_a_job_that_makes_declared_progress_at_each_claim_is_no_poison_job() -> None:
    """A long document crashed after every batch it committed is claimed once a batch at
    one stage: each claim gets further (its cursor moves), so it is no poison job. The
    unmodified reference with small batches made the core call this a redelivery."""
    spec = Spec(
        "jobs",
        STATES,
        holder=HEARTBEAT.holder,
        attempts=Attempts("attempts", limit=2, resets_on=["cursor"]),
    )
    trail = Trail(spec)
    trail.enqueue(cursor=0)
    for batch in range(1, 7):
        trail.claim("w1")
        trail.write("w1", state="queued", cursor=batch)  # a batch written, then put back
    assert trail.findings == []
    for _ in range(4):  # and no further: the same cursor again and again (limit 2 + 1)
        trail.claim("w1")
        trail.write("w1", state="queued")
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


def test_an_operators_declared_retry_of_a_failed_job_starts_it_afresh() -> None:
    """A dead letter queued again by an operator (a declared extra move, its attempts
    reset): no transition, count or redelivery finding; undeclared, a transition and a
    lost count."""
    retried = Spec(
        "jobs",
        STATES,
        holder=HEARTBEAT.holder,
        attempts=Attempts("attempts", limit=1),
        extra_moves=[("failed", "queued")],
    )
    for spec, expected in (
        (retried, set()),
        (replace(retried, extra_moves=()), {"transitions", "attempts"}),
    ):
        trail = Trail(spec)
        trail.enqueue()
        for worker in ("w1", "w2"):
            trail.claim(worker)
            trail.write(worker, state="queued", attempts=1)
            trail.claim(worker)
            trail.write(worker, state="failed", attempts=2)
            trail.write("operator", state="queued", attempts=0)
        assert {finding.invariant for finding in trail.findings} == expected, trail.findings


def test_a_job_put_off_or_changed_by_an_operator_each_time_is_no_poison_job() -> None:
    """Released with a due time ahead (a Retry-After), or released and then changed by
    someone outside the queue (an operator lifting a spending cap), more times than the
    limit: fresh starts. Released to run at once, as many times: a poison loop."""
    spec = replace(HEARTBEAT, attempts=None, max_deliveries=3)
    for delay, operator, expected in ((60, False, []), (0, True, []), (0, False, ["redelivery"])):
        trail = Trail(spec)
        trail.enqueue()
        for worker in ("w1", "w2", "w3", "w1"):
            trail.tick(61)
            trail.claim(worker)
            due = trail.now + timedelta(seconds=delay)
            trail.write(worker, state="queued", due=due.isoformat())
            if operator:
                trail.write("operator", note="cap lifted")
        assert [finding.invariant for finding in trail.findings] == expected, (delay, operator)


# -- a heartbeat on the worker's row (holder.beats_in, as procrastinate keeps it) --------

WORKER_BEATS = Spec(
    "jobs",
    STATES,
    holder=Holder(
        "heartbeat", column="worker_id", timeout_seconds=30, beats_in="workers", beat="beat"
    ),
)


class BeatsTrail(Trail):
    """Jobs name their worker's row; the workers' rows carry the beats. ``beat`` records
    a worker row's change as committed before every later job change."""

    def __init__(self) -> None:
        super().__init__(WORKER_BEATS)
        self.beats: dict[str, AuditRow] = {}

    def beat(self, row: str, *, deleted: bool = False) -> None:
        self._audit += 1
        values = {"id": int(row), "beat": self.now.isoformat()}
        old, new = (values, None) if deleted else (None, values)
        if deleted and row in self.beats:
            old = dict(self.beats[row].new or self.beats[row].old or values)
        operation = "DELETE" if deleted else "UPDATE"
        self.beats[row] = AuditRow(self._audit, operation, "w?", self.now, row, old, new)

    def _record(self, operation: str, actor: str, job: str, old: Any, new: Any) -> None:
        self._audit += 1
        change = AuditRow(
            self._audit,
            operation,
            actor,
            self.now,
            job,
            old,
            new,
            f"x{self._audit}",
            beats=dict(self.beats),
        )
        self.findings += self.judge.judge([self.history.apply(change)])

    def claim(self, actor: str, job: str = "1", **values: Any) -> None:
        self.write(actor, job, state="running", **values)


def test_a_worker_rows_heartbeat_lets_a_job_be_recovered_only_once_it_is_stale() -> None:
    trail = BeatsTrail()
    trail.enqueue("1", worker_id=None)
    trail.beat("7")
    trail.claim("w1", "1", worker_id=7)
    trail.tick(20)
    trail.beat("7")  # w1 still beats
    trail.tick(20)
    trail.write("w2", "1", state="queued")  # its beat is 20 s old: w1 still holds it
    [finding] = trail.fired("fencing")
    assert "w1 held it" in str(finding.observed)

    stale = BeatsTrail()
    stale.enqueue("1", worker_id=None)
    stale.beat("7")
    stale.claim("w1", "1", worker_id=7)
    stale.tick(31)
    stale.write("w2", "1", state="queued")  # 31 s without a beat: a recovery
    assert stale.findings == []
    assert stale.history.events[-1].move is Move.RECOVERY
    assert "heartbeat (00:00:00) was older than 30 s" in str(stale.history.events[-1].taken_away)


def test_a_pruned_worker_row_unlinks_its_job_and_a_fresh_one_is_pruned_by_a_foreign_write() -> None:
    trail = BeatsTrail()
    trail.enqueue("1", worker_id=None)
    trail.beat("7")
    trail.claim("w1", "1", worker_id=7)
    trail.tick(31)
    trail.write("w2", "1", worker_id=None)  # w1's stale row pruned: ON DELETE SET NULL
    assert trail.history.events[-1].move is Move.UNLINK
    assert trail.history.holder_of("1") is not None  # the hold stands until a recovery
    trail.beat("7", deleted=True)
    trail.write("w2", "1", state="queued")
    assert trail.findings == []
    assert "its row 7 in workers was deleted" in str(trail.history.events[-1].taken_away)

    done = BeatsTrail()  # a finished job keeps naming its worker until the row goes
    done.enqueue("1", worker_id=None)
    done.beat("7")
    done.claim("w1", "1", worker_id=7)
    done.write("w1", "1", state="done")
    done.tick(60)
    done.write("w2", "1", worker_id=None)
    assert done.findings == []
    assert done.history.events[-1].move is Move.UNLINK

    fresh = BeatsTrail()
    fresh.enqueue("1", worker_id=None)
    fresh.beat("7")
    fresh.claim("w1", "1", worker_id=7)
    fresh.tick(5)
    fresh.write("w2", "1", worker_id=None)  # pruned while it beats
    [finding] = fresh.fired("fencing")
    assert "w1 held it" in str(finding.observed)


def test_an_unfenced_holder_s_late_write_is_tolerated_and_nobody_else_s() -> None:
    unfenced = Spec(
        "jobs",
        STATES,
        holder=Holder("heartbeat", column="beat", timeout_seconds=30, fenced=False),
    )
    trail = Trail(unfenced)
    trail.enqueue()
    trail.claim("w1")
    trail.tick(31)
    trail.write("w2", state="queued")  # recovers the stalled job
    trail.claim("w2")
    trail.write("w1", state="done")  # w1 was only slow: its finish checks no worker
    assert trail.findings == []
    assert trail.history.events[-1].move is Move.LATE
    trail.enqueue("3")
    trail.claim("w2", "3")
    trail.tick(31)
    trail.write("w2", "3", state="queued")  # its own recovery puts its stalled job back
    trail.write("w2", "3", state="done")  # and its job's run ends: late, tolerated
    assert trail.findings == []
    trail.enqueue("2")
    trail.claim("w1", "2")
    trail.write("w3", "2", state="done")  # w3 never held job 2: still fencing
    [finding] = trail.fired("fencing")
    assert finding.job_id == "2"


def test_a_count_an_unfenced_late_retry_pushed_past_the_limit_is_tolerated_with_it() -> None:
    def late_retry(fenced: bool) -> Trail:
        spec = Spec(
            "jobs",
            STATES,
            holder=Holder("heartbeat", column="beat", timeout_seconds=30, fenced=fenced),
            attempts=Attempts("attempts", limit=2, counts="returns"),
        )
        trail = Trail(spec)
        trail.enqueue()
        trail.claim("w1")
        trail.write("w1", state="queued", attempts=1)  # failed once, retried
        trail.claim("w1")
        trail.tick(31)
        trail.write("w2", state="queued", attempts=2)  # stalled: put back, counted
        trail.claim("w2")
        # w1 was only slow: its job fails, and it retries it on the 1 attempt it read.
        trail.write("w1", state="queued", attempts=3)
        trail.claim("w2")
        return trail

    assert late_retry(fenced=False).findings == []
    strict = late_retry(fenced=True)
    assert strict.fired("fencing")
    assert {f.message for f in strict.fired("attempts")} == {
        "a job was kept going past its attempts limit"
    }


def test_a_claim_that_names_no_worker_row_is_taken_only_from_a_crashed_worker() -> None:
    trail = BeatsTrail()
    trail.enqueue("1", worker_id=None)
    trail.claim("w1", "1", worker_id=None)  # its claim names no worker row
    trail.tick(31)
    trail.write("w2", "1", state="queued")  # 'stalled' by its NULL worker: w1 still holds it
    [finding] = trail.fired("fencing")
    assert "w1 held it" in str(finding.observed)

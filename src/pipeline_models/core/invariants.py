"""The queue invariants: judged on the classified trail, for any declared job table.

Each invariant has a name, a message that says what and where, the expected and the
observed. They are evaluated together, in causal order (:data:`ORDER`: who held the job
before what it became, what it became before what was counted, liveness last), and a
failing check raises the exception class of its *first* violation
(:func:`raise_findings`), so that Hypothesis shrinks each cause as its own bug and
reports distinct causes as distinct findings.

>>> ORDER[:3]
('claims_skip_locks', 'mutual_exclusion', 'fencing')
>>> violation_class("fencing").__name__
'FencingViolated'
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline_models.core.holders import Event, Move, declared_extra_move, moment_of
from pipeline_models.core.spec import TERMINAL, Finished, HolderModel, Meaning, Spec

ORDER = (
    "claims_skip_locks",
    "mutual_exclusion",
    "fencing",
    "transitions",
    "attempts",
    "redelivery",
    "no_loss",
    "effects",
    "liveness",
)
"""Every queue invariant, the likely cause first: a claim that waits on a lock (where the
spec says claims skip locked rows), then a double claim, which makes the zombie write
that makes the odd transition that loses the count."""

_ALLOWED = {
    Meaning.CLAIMABLE: {Meaning.CLAIMABLE, Meaning.IN_PROGRESS, Meaning.WAITING},
    Meaning.WAITING: {Meaning.WAITING, Meaning.CLAIMABLE},
    Meaning.IN_PROGRESS: {
        Meaning.IN_PROGRESS,
        Meaning.CLAIMABLE,
        Meaning.WAITING,
        Meaning.SUCCEEDED,
        Meaning.FAILED,
    },
    Meaning.SUCCEEDED: set(),
    Meaning.FAILED: set(),
}


@dataclass(frozen=True)
class Finding:
    """One violation of one invariant."""

    invariant: str
    message: str
    job_id: str | None = None
    expected: str | None = None
    observed: str | None = None

    def __str__(self) -> str:
        where = f" (job {self.job_id})" if self.job_id is not None else ""
        text = f"[{self.invariant}] {self.message}{where}"
        if self.expected is not None or self.observed is not None:
            text += f": expected {self.expected}, observed {self.observed}"
        return text


class QueueViolation(AssertionError):
    """Invariants failed; the first finding (in causal order) names the class."""

    def __init__(self, findings: Sequence[Finding]) -> None:
        self.findings = list(findings)
        super().__init__("\n".join(str(finding) for finding in self.findings))


_CLASSES: dict[str, type[QueueViolation]] = {}


def violation_class(invariant: str) -> type[QueueViolation]:
    """The exception raised when ``invariant`` is the first to fail."""
    if invariant not in _CLASSES:
        name = "".join(part.title() for part in invariant.split("_")) + "Violated"
        _CLASSES[invariant] = type(name, (QueueViolation,), {"__module__": __name__})
    return _CLASSES[invariant]


def in_causal_order(findings: Iterable[Finding]) -> list[Finding]:
    rank = {name: index for index, name in enumerate(ORDER)}
    return sorted(findings, key=lambda finding: rank.get(finding.invariant, len(ORDER)))


def raise_findings(findings: Iterable[Finding]) -> None:
    """Raise every finding, the cause first, as the first one's exception class."""
    ordered = in_causal_order(findings)
    if ordered:
        raise violation_class(ordered[0].invariant)(ordered)


def select(names: Iterable[str] | None = None, *, without: Iterable[str] = ()) -> tuple[str, ...]:
    """The invariants to check: ``names`` (all by default) minus ``without``.

    >>> select(without=["claims_skip_locks", "liveness", "redelivery"])
    ('mutual_exclusion', 'fencing', 'transitions', 'attempts', 'no_loss', 'effects')
    """
    chosen = list(ORDER if names is None else names)
    for name in [*chosen, *without]:
        if name not in ORDER:
            raise ValueError(f"no invariant {name!r}; the queue invariants are {', '.join(ORDER)}")
    skipped = set(without)
    return tuple(name for name in ORDER if name in chosen and name not in skipped)


def _state(event: Event, spec: Spec, *, new: bool = True) -> Any:
    return event.change.value(spec.state, new=new)


def _move(event: Event, spec: Spec) -> str:
    old = _state(event, spec, new=False)
    new = _state(event, spec)
    return f"{old if old is not None else '(none)'} → {new if new is not None else '(deleted)'}"


def _time(moment: datetime) -> str:
    return moment.strftime("%H:%M:%S")


def _count(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass
class QueueJudge:
    """Judges classified changes as they come; keeps what must be counted over a job's
    life (attempts owed, claims, which jobs were enqueued)."""

    spec: Spec
    invariants: tuple[str, ...] = ORDER
    enqueued: list[str] = field(default_factory=list)
    # attempts: what the column must reach by the end of the next claim (recoveries
    # owed), and the floor it may never go under.
    owed: dict[str, int] = field(default_factory=dict)
    floor: dict[str, int] = field(default_factory=dict)
    progress_in: dict[str, str] = field(default_factory=dict)  # job -> xid of its progress
    # Jobs an unfenced holder wrote late (holder.fenced = false): the spec tolerates the
    # write, and with it a count it pushed past the limit and the claims after it (a
    # retry decided on the attempts its late worker read before its job was put back).
    written_late: set[str] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)  # deleted once finished
    deleted: set[str] = field(default_factory=set)  # every deletion the trail shows
    _redelivered: set[str] = field(default_factory=set)
    effects_of: dict[str, list[str]] = field(default_factory=dict)  # job: who, when
    # (worker, job): whether the holder wrote its hold's time since its last call.
    renewed: dict[tuple[str, str], bool] = field(default_factory=dict)
    # The time a worker read before a write of its (the scheduler's read_before): a due
    # time is judged against it, not against the write's, which a rule may have moved.
    read_before: Callable[[str, datetime], datetime | None] | None = None

    def judge(self, events: Sequence[Event]) -> list[Finding]:
        found: list[Finding] = []
        for event in events:
            self._note_hold_writes(event)
            for name in self.invariants:
                check = getattr(self, f"_{name}", None)
                if check is not None:
                    found.extend(check(event))
        return found

    def check_rows(self, rows: Mapping[str, Any]) -> list[Finding]:
        """What the table must show now: every enqueued job still there, or finished."""
        if "no_loss" not in self.invariants:
            return []
        return [
            Finding(
                "no_loss",
                "an enqueued job is gone without a trace in the audit trail",
                job,
                "its row, or its deletion after it finished",
                "no row",
            )
            for job in self.enqueued
            if job not in rows and job not in self.deleted
        ]

    def effects(self, worker: str, label: str, at: datetime, held: Sequence[str]) -> list[Finding]:
        """A call ``worker`` made at ``at`` while it held ``held`` (the effect of those
        jobs' handler): under exactly-once, no job's effect twice, and none made by a
        worker that held no job (a zombie's)."""
        if self.spec.effects is None or "effects" not in self.invariants:
            return []
        for job in held:
            self.effects_of.setdefault(job, []).append(f"{worker} at {_time(at)}")
        if self.spec.effects != "exactly_once":
            return []
        found = []
        if not held:
            found.append(
                Finding(
                    "effects",
                    f"{worker} made its job's call while it held no job",
                    None,
                    "a handler's effect made only by the job's holder",
                    f"{label} by {worker} at {_time(at)}",
                )
            )
        for job in held:
            if len(self.effects_of[job]) > 1:
                found.append(
                    Finding(
                        "effects",
                        "a job's effect happened twice, where the spec says exactly once",
                        job,
                        "one",
                        f"{label} by {', then '.join(self.effects_of[job])}",
                    )
                )
        return found

    def calls_covered(
        self, worker: str, label: str, at: datetime, held: Sequence[str]
    ) -> list[Finding]:
        """holder.renews_before_calls: ``worker``'s call (answered at ``at``, while it
        held ``held``) came after a write of its hold's time since its previous call.
        Judged only where the call's job is plain, its worker holding one job: a worker
        that holds two (after a double claim, reported as such) renews the one it works
        on."""
        column = self.spec.holder.time_column
        if not self.spec.holder.renews_before_calls or "fencing" not in self.invariants:
            return []
        renewed = [self.renewed.get((worker, job), True) for job in held]
        for job in held:
            self.renewed[(worker, job)] = False  # the next call needs a renewal first
        if len(held) != 1 or renewed[0]:
            return []
        return [
            Finding(
                "fencing",
                f"{worker} called a service again without renewing its hold",
                held[0],
                f"{column} written by {worker} before each call of a hold after its first",
                f"{label} at {_time(at)}; its last write of {column} came before its previous call",
            )
        ]

    def _note_hold_writes(self, event: Event) -> None:
        """What :meth:`calls_covered` needs: which holders wrote their hold's time since
        their last call (a claim writes it; so does a renewal)."""
        column = self.spec.holder.time_column
        if not self.spec.holder.renews_before_calls or column is None:
            return
        change = event.change
        if event.move in (Move.CLAIM, Move.TAKEOVER) or (
            event.move is Move.PROGRESS and change.value(column) != change.value(column, new=False)
        ):
            self.renewed[(change.actor, change.job_id)] = True

    def liveness(self, rows: Mapping[str, Any]) -> list[Finding]:
        """At the drain: every enqueued job finished (and, where effects are declared,
        every job that succeeded had its effect)."""
        found = []
        for job in self.enqueued:
            if job in self.finished:
                continue
            row = rows.get(job)
            meaning = self.spec.meaning(None if row is None else row.get(self.spec.state))
            if meaning not in TERMINAL:
                state = "no row" if row is None else f"{row.get(self.spec.state)!r} ({meaning})"
                found.append(
                    Finding(
                        "liveness",
                        "a job never finished after faults healed and time moved on",
                        job,
                        "succeeded or failed",
                        state,
                    )
                )
            elif (
                meaning is Meaning.SUCCEEDED
                and self.spec.effects is not None
                and not self.effects_of.get(job)
            ):
                found.append(
                    Finding(
                        "liveness",
                        "a job succeeded without its handler's effect",
                        job,
                        "at least one call made while holding it",
                        "none",
                    )
                )
        return found

    # -- per change ------------------------------------------------------------------------

    def _mutual_exclusion(self, event: Event) -> list[Finding]:
        if event.move is not Move.TAKEOVER:
            return []
        holder = event.holder
        old = self.spec.meaning(_state(event, self.spec, new=False))
        if holder is not None and event.taken_away is None and holder.worker != event.actor:
            other = holder.worker
            claimed = f"{other} claimed it at {_time(holder.at)}"
        elif holder is None and old is not Meaning.IN_PROGRESS and event.previous is not None:
            # Not claimable when this claim landed: another worker claimed it after this
            # one read it as claimable (and may have finished it already).
            other = event.previous.worker
            claimed = (
                f"{other} claimed it at {_time(event.previous.at)} and left it "
                f"{_state(event, self.spec, new=False)!r}"
            )
        else:
            return []
        return [
            Finding(
                "mutual_exclusion",
                f"{event.actor} claimed a job {other} had claimed",
                event.change.job_id,
                f"a job in progress is taken only once its holder crashed{self._or_expired()}",
                f"{claimed}; {event.actor} took it at {_time(event.change.at)} "
                f"({_move(event, self.spec)})",
            )
        ]

    def _or_expired(self) -> str:
        holder = self.spec.holder
        if holder.model is HolderModel.LEASE:
            return " or its lease expired"
        if holder.model is HolderModel.HEARTBEAT:
            return f" or its heartbeat was older than {holder.timeout_seconds:g} s"
        return ""

    def _fencing(self, event: Event) -> list[Finding]:
        if event.move is not Move.FOREIGN:
            return []
        holder = event.holder
        if holder is None:
            held = "nobody held it"
        elif holder.worker == event.actor:
            held = f"{event.actor}'s own hold was over: {event.taken_away or 'it had lost it'}"
        else:
            held = f"{holder.worker} held it since {_time(holder.at)}"
        return [
            Finding(
                "fencing",
                f"{event.actor} wrote a job it did not hold",
                event.change.job_id,
                "only the job's holder writes it (a claim, its progress, its end)",
                f"{_move(event, self.spec)} at {_time(event.change.at)}; {held}",
            )
        ]

    def _transitions(self, event: Event) -> list[Finding]:
        spec = self.spec
        change = event.change
        found: list[Finding] = []
        if change.operation == "DELETE" or event.move in (Move.UNLINK, Move.LATE):
            return found  # judged by no_loss; an unlink is no move of the job
        old_value, new_value = _state(event, spec, new=False), _state(event, spec)
        old, new = spec.meaning(old_value), spec.meaning(new_value)
        if new is None:
            found.append(
                Finding(
                    "transitions",
                    f"the state {new_value!r} is not one the spec declares",
                    change.job_id,
                    f"one of {', '.join(spec._meaning_of)}",
                    _move(event, spec),
                )
            )
            return found
        if change.operation == "INSERT":
            if new not in (Meaning.CLAIMABLE, Meaning.WAITING):
                found.append(
                    Finding(
                        "transitions",
                        "a job was created neither claimable nor waiting",
                        change.job_id,
                        "a new job claimable or waiting",
                        f"inserted as {new_value!r} ({new})",
                    )
                )
            return found
        if old is None:
            return found  # an undeclared old state was reported when it was written
        extra = (old_value, new_value) in spec.extra_moves
        if old in TERMINAL and change.old != change.new and not extra:
            found.append(
                Finding(
                    "transitions",
                    "a finished job changed",
                    change.job_id,
                    "a job that succeeded or failed never changes again",
                    f"{_move(event, spec)} by {change.actor}",
                )
            )
        elif new not in _ALLOWED[old] and not extra:
            found.append(
                Finding(
                    "transitions",
                    f"a job moved {old} → {new}, which no queue does",
                    change.job_id,
                    f"from {old}: {', '.join(sorted(_ALLOWED[old])) or 'nothing'}",
                    f"{_move(event, spec)} by {change.actor}",
                )
            )
        if event.move is Move.CLAIM and spec.due:
            due = change.value(spec.due, new=False)
            due_at = datetime.fromisoformat(due) if isinstance(due, str) else due
            if due_at is not None and due_at > change.at:
                found.append(
                    Finding(
                        "transitions",
                        f"{change.actor} claimed a job before it was due",
                        change.job_id,
                        f"claimed at or after {_time(due_at)}",
                        f"claimed at {_time(change.at)}",
                    )
                )
        if spec.stage:
            old_stage, new_stage = change.value(spec.stage, new=False), change.value(spec.stage)
            if old_stage != new_stage and (old_stage, new_stage) not in (spec.stage_moves or ()):
                found.append(
                    Finding(
                        "transitions",
                        f"the stage moved {old_stage} → {new_stage}, which the spec does not allow",
                        change.job_id,
                        "a declared stage move",
                        f"{old_stage} → {new_stage} by {change.actor}",
                    )
                )
            holder = event.holder
            if (
                old_stage != new_stage
                and event.move is Move.OTHER
                and new is Meaning.IN_PROGRESS
                and holder is not None
                and not holder.crashed
            ):
                # Someone outside the queue (a webhook, an operator) may take a job from
                # its worker, but moving it on while the worker still holds it means two
                # parties advance one job, each from where it last saw it.
                found.append(
                    Finding(
                        "transitions",
                        f"{change.actor} moved the stage of a job {holder.worker} holds, "
                        "and left it held",
                        change.job_id,
                        "a held job's stage moved by its holder only (anyone else takes "
                        "the job from it first)",
                        f"{old_stage} → {new_stage} by {change.actor}, "
                        f"{new_value!r} under {holder.worker}",
                    )
                )
        return found

    def _attempts(self, event: Event) -> list[Finding]:
        attempts = self.spec.attempts
        if attempts is None:
            return []
        change = event.change
        job = change.job_id
        old = _count(change.value(attempts.column, new=False))
        new = _count(change.value(attempts.column))
        if change.operation == "INSERT":
            self.floor[job] = new or 0
            self.owed[job] = 0
            return []
        if new is None:
            return []
        if event.move is Move.LATE:
            self.written_late.add(job)
            self.floor[job] = max(self.floor.get(job, old or 0), new)
            return []
        if any(
            change.value(column) != change.value(column, new=False) for column in attempts.resets_on
        ):
            self.progress_in[job] = change.xid
        if declared_extra_move(self.spec, change):
            # An operator's retry (a declared extra move) gives the job a fresh budget.
            self.floor[job] = new
            self.owed[job] = 0
            return []
        if new < (old or 0) and self.progress_in.get(job) == change.xid:
            # Progress in this transaction, and a fresh budget for the next step (as the
            # spec declares: attempts.resets_on).
            self.floor[job] = new
            return []
        found: list[Finding] = []
        floor = self.floor.get(job, old or 0)
        recovered = event.move is Move.RECOVERY or (
            event.move is Move.TAKEOVER and event.taken_away is not None
        )
        returned = (recovered or event.move is Move.RELEASE) and self.spec.meaning(
            _state(event, self.spec)
        ) is Meaning.CLAIMABLE
        if attempts.counts == "returns" and returned:
            if new != (old or 0) + 1:
                found.append(
                    Finding(
                        "attempts",
                        "a return to the queue was not counted once: a job that fails for "
                        "ever is retried for ever",
                        job,
                        f"{(old or 0) + 1} in the write that put it back",
                        f"{old} → {new} by {change.actor} ({_move(event, self.spec)})",
                    )
                )
            self.floor[job] = max(floor, new)
            return found + self._past_limit(event, new)
        if recovered:
            self.owed[job] = self.owed.get(job, 0) + 1  # due by the end of the next claim
        if attempts.counts == "claims" and event.move in (Move.CLAIM, Move.TAKEOVER):
            if new != event.claims + self._initial(job):
                found.append(
                    Finding(
                        "attempts",
                        "the attempts column does not count the claims",
                        job,
                        f"{event.claims + self._initial(job)} after claim {event.claims}",
                        str(new),
                    )
                )
            self.floor[job] = max(floor, new)
            return found
        owed = self.owed.get(job, 0)
        if new < floor:
            found.append(
                Finding(
                    "attempts",
                    "an attempt already counted was lost",
                    job,
                    f"at least {floor}",
                    f"{old} → {new} by {change.actor} ({_move(event, self.spec)})",
                )
            )
        if event.move in (Move.CLAIM, Move.TAKEOVER):
            counted = new - floor
            if counted < owed:
                found.append(
                    Finding(
                        "attempts",
                        "a recovery after a crash or a timeout was not counted: a job that "
                        "kills its worker is retried for ever",
                        job,
                        f"{floor + owed} ({owed} recovery counted once) by the end of the claim",
                        f"{new} after {change.actor}'s claim",
                    )
                )
            elif counted > owed:
                found.append(
                    Finding(
                        "attempts",
                        "a claim counted an attempt that did not fail",
                        job,
                        f"{floor + owed} ({owed} recovery counted once)",
                        f"{new} after {change.actor}'s claim",
                    )
                )
            self.owed[job] = 0
        elif recovered:
            # Counted where it was recovered: nothing more is owed.
            paid = min(max(new - floor, 0), self.owed[job])
            self.owed[job] -= paid
        elif returned and new > (old or 0):
            found += self._backed_off(event)
        self.floor[job] = max(floor, new)
        return found + self._past_limit(event, new)

    def _backed_off(self, event: Event) -> list[Finding]:
        """attempts.backs_off: a counted failure put back due at once hammers whatever
        made it fail (a rate-limited service: a 429 storm)."""
        assert self.spec.attempts is not None
        if not self.spec.attempts.backs_off or not self.spec.due:
            return []
        change = event.change
        due = moment_of(change.value(self.spec.due))
        read = (self.read_before and self.read_before(change.actor, change.at)) or change.at
        if due is not None and due > read:
            return []
        return [
            Finding(
                "attempts",
                "a failed attempt was put back due at once: no backoff",
                change.job_id,
                f"{self.spec.due} later than the worker's time ({read.isoformat()})",
                f"{self.spec.due} {None if due is None else due.isoformat()} by {change.actor}",
            )
        ]

    def _past_limit(self, event: Event, attempts: int) -> list[Finding]:
        assert self.spec.attempts is not None
        state = _state(event, self.spec)
        if attempts <= self.spec.attempts.limit or state is None:
            return []
        if event.change.job_id in self.written_late:
            return []
        if self.spec.meaning(state) in TERMINAL:
            return []
        return [
            Finding(
                "attempts",
                "a job was kept going past its attempts limit",
                event.change.job_id,
                f"failed once attempts reach {self.spec.attempts.limit}",
                f"attempts {attempts}, {state!r}",
            )
        ]

    def _initial(self, job: str) -> int:
        return 0

    def _redelivery(self, event: Event) -> list[Finding]:
        job = event.change.job_id
        limit = self.spec.delivery_limit
        if event.move not in (Move.CLAIM, Move.TAKEOVER) or event.claims <= limit:
            return []
        if job in self._redelivered or job in self.written_late:
            return []  # reported once; or put back again by a late write the spec tolerates
        self._redelivered.add(job)
        why = (
            f"attempts limit {self.spec.attempts.limit} + 1"
            if self.spec.attempts is not None
            else f"max_deliveries {limit}"
        )
        return [
            Finding(
                "redelivery",
                "a job was claimed again and again: a poison job nobody stops",
                job,
                f"at most {limit} claims ({why})",
                f"claim {event.claims} by {event.actor}",
            )
        ]

    def _no_loss(self, event: Event) -> list[Finding]:
        change = event.change
        if change.operation == "DELETE":
            self.deleted.add(change.job_id)
        if change.operation != "DELETE" or event.move is Move.FOREIGN:
            return []  # a foreign deletion is fencing's
        old = self.spec.meaning(_state(event, self.spec, new=False))
        if event.move is Move.FINISH or old in TERMINAL:
            self.finished.add(change.job_id)
            return []
        if old is Meaning.IN_PROGRESS and self.spec.finished is Finished.KEPT:
            why = "it was in progress, and the spec says finished rows are kept"
        else:
            why = f"it was {_state(event, self.spec, new=False)!r} ({old})"
        return [
            Finding(
                "no_loss",
                f"{change.actor} deleted a job that had not finished",
                change.job_id,
                "a job's row deleted only once it succeeded or failed",
                f"deleted: {why}",
            )
        ]


def outstanding(judge: QueueJudge) -> Mapping[str, int]:
    """Recoveries still owed a count, by job (for reports)."""
    owed: dict[str, int] = defaultdict(int)
    for job, count in judge.owed.items():
        if count:
            owed[job] = count
    return owed


__all__ = [
    "ORDER",
    "Finding",
    "QueueJudge",
    "QueueViolation",
    "in_causal_order",
    "outstanding",
    "raise_findings",
    "select",
    "violation_class",
]

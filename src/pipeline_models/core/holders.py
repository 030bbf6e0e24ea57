"""Who holds which job: learned from what the checker saw, never from a column.

The checker knows its workers by name (every worker session is named after its worker,
so the audit trail names the actor of each change). A worker holds a job from the
change by which it claimed it (claimable to in progress, or a take-over of a job in
progress) until its own finishing or releasing write, its crash, another actor's
recovery of the job, or, under a lease, the expiry the claim wrote. The spec's holder
model says when a hold may be taken away:

* ``lease``: once the expiry in the holder column has passed; a holder writing after
  that is a zombie, whether or not anyone took the job since;
* ``heartbeat``: once the last beat in the holder column is older than the timeout;
  until another actor recovers the job, its holder still holds it;
* ``row_lock``: only by a crash (Postgres releases the lock).

:class:`HolderHistory` replays the trail change by change and classifies each one
(:class:`Move`); the queue invariants judge the classified changes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pipeline_models.core.observe import AuditRow
from pipeline_models.core.spec import TERMINAL, Finished, HolderModel, Meaning, Spec


class Move(StrEnum):
    """What one change of a job row was, given who held the job."""

    INSERT = "insert"  # a new job
    CLAIM = "claim"  # a worker took a claimable job
    TAKEOVER = "takeover"  # a worker took a job that was in progress
    PROGRESS = "progress"  # the holder wrote its job and kept it
    RELEASE = "release"  # the holder gave it back (claimable or waiting)
    FINISH = "finish"  # the holder finished it (succeeded or failed)
    RECOVERY = "recovery"  # another actor took a job in progress out of its holder's hands
    FOREIGN = "foreign"  # a worker wrote a job it did not hold, and not to recover it
    # Only a job's link to its worker's row was cut (the row pruned once its beats had
    # stopped: holder.beats_in); a hold stands until someone recovers the job.
    UNLINK = "unlink"
    # A write of a worker that held the job before (its hold since ended: recovered, or
    # put back by itself) where the spec declares holders unfenced (holder.fenced =
    # false): tolerated, and judged by no invariant.
    LATE = "late"
    DELETE = "delete"  # the row went away
    OTHER = "other"  # an actor that is not a worker (the enqueuer, an operator)


@dataclass
class Hold:
    worker: str
    since: int  # the audit id of the claim
    at: datetime  # when the claim was written
    crashed: bool = False
    ref: Any = None  # the holder column the claim wrote (holder.beats_in: its worker row)


@dataclass(frozen=True)
class Event:
    """One change, classified: the move, and the hold it was judged against."""

    change: AuditRow
    move: Move
    holder: Hold | None  # who held the job just before the change
    previous: Hold | None  # the job's last hold, even if it had ended
    taken_away: str | None  # why that hold could be taken away at the change's time
    claims: int  # the job's claims so far (at its stage, if staged), this one included

    @property
    def actor(self) -> str:
        return self.change.actor


@dataclass
class HolderHistory:
    """The holds, replayed from the trail and the crashes, change by change."""

    spec: Spec
    workers: set[str] = field(default_factory=set)
    holds: dict[str, Hold] = field(default_factory=dict)
    last: dict[str, Hold] = field(default_factory=dict)  # the last hold, even one ended
    claims: Counter[str] = field(default_factory=Counter)
    events: list[Event] = field(default_factory=list)
    held_before: dict[str, set[str]] = field(default_factory=dict)  # job: who ever held it

    def crash(self, worker: str) -> None:
        """``worker`` died: its holds end (its jobs wait for someone to recover them)."""
        for hold in self.holds.values():
            if hold.worker == worker:
                hold.crashed = True

    def lost_sessions(self, worker: str) -> None:
        """``worker``'s database sessions ended and it lives on: a hold that was a row
        lock ends with them (anyone may take the job); a lease or a heartbeat does not."""
        if self.spec.holder.model is HolderModel.ROW_LOCK:
            self.crash(worker)

    def holder_of(self, job_id: str) -> Hold | None:
        return self.holds.get(job_id)

    def apply(self, change: AuditRow) -> Event:
        spec = self.spec
        job = change.job_id
        old = spec.meaning(change.value(spec.state, new=False))
        new = spec.meaning(change.value(spec.state))
        hold = self.holds.get(job)
        previous = self.last.get(job)
        taken_away = self.taken_away(hold, change) if hold is not None else None
        worker = change.actor in self.workers
        if change.operation == "INSERT":
            move = Move.INSERT
        elif change.operation == "DELETE":
            move = self._deletion(hold, change, old)
        elif not worker:
            move = Move.OTHER
        elif old is Meaning.CLAIMABLE and new is Meaning.IN_PROGRESS:
            move = Move.CLAIM
        elif self._unlinks(change):
            held = hold is not None and hold.worker != change.actor and taken_away is None
            move = Move.FOREIGN if held else Move.UNLINK
        elif new is Meaning.IN_PROGRESS and (
            hold is None or hold.worker != change.actor or self._expired(hold, change)
        ):
            # A claim of a job that was not claimable: someone else's job, its own after
            # its lease ran out, or one another worker claimed (and perhaps finished)
            # since this worker read it as claimable.
            move = Move.TAKEOVER
        elif hold is not None and hold.worker == change.actor:
            if self._expired(hold, change):
                move = Move.FOREIGN  # a zombie: its lease ran out
            elif new is Meaning.IN_PROGRESS:
                move = Move.PROGRESS
            elif new in (Meaning.SUCCEEDED, Meaning.FAILED):
                move = Move.FINISH
            else:
                move = Move.RELEASE
        elif old is Meaning.IN_PROGRESS and (hold is None or taken_away is not None):
            move = Move.RECOVERY
        else:
            move = Move.FOREIGN
        if (
            move is Move.FOREIGN
            and not spec.holder.fenced
            and change.actor in self.held_before.get(job, ())
        ):
            move = Move.LATE
        if declared_extra_move(spec, change):
            # A declared extra move (an operator's retry of a failed job) starts the job
            # afresh: its claims are counted from there.
            self.claims[job] = 0
        progress = [spec.stage] if spec.stage else []
        if spec.attempts is not None:
            progress += spec.attempts.resets_on
        if any(change.value(column) != change.value(column, new=False) for column in progress):
            # A job that moved on (its next stage, or progress the spec declares: a cursor,
            # a batch written) is delivered afresh: a poison job is one claimed again and
            # again without getting anywhere. (A long document crashed after every batch is
            # claimed once a batch, and each claim gets further.)
            self.claims[job] = 0
        if (move is Move.RELEASE and self._deferred(change)) or move is Move.OTHER:
            # The holder put its job off to a later time on purpose (a Retry-After, a
            # backoff), or someone outside the queue changed it (an operator releasing a
            # job held for a spending cap): a fresh start, not a poison loop. The attempts
            # column, where declared, bounds the failures among such claims.
            self.claims[job] = 0
        claims = self.claims[job]
        if move in (Move.CLAIM, Move.TAKEOVER):
            self.held_before.setdefault(job, set()).add(change.actor)
            claims = self.claims[job] = claims + 1
            ref = change.value(spec.holder.column or "")
            self.holds[job] = self.last[job] = Hold(
                change.actor, change.audit_id, change.at, ref=ref
            )
        elif move in (Move.RELEASE, Move.FINISH, Move.RECOVERY, Move.DELETE) or (
            move in (Move.OTHER, Move.LATE) and new is not Meaning.IN_PROGRESS
        ):
            self.holds.pop(job, None)
        event = Event(change, move, hold, previous, taken_away, claims)
        self.events.append(event)
        return event

    def _deletion(self, hold: Hold | None, change: AuditRow, old: Meaning | None) -> Move:
        """A deleted row: the holder finishing its job (when finished rows are deleted or
        moved away), a worker deleting a job it does not hold, or any other deletion."""
        if change.actor not in self.workers or old in TERMINAL:
            return Move.DELETE  # an operator's, or a cleanup of finished rows
        held = hold is not None and hold.worker == change.actor and not self._expired(hold, change)
        if held and old is Meaning.IN_PROGRESS:
            return Move.FINISH if self.spec.finished is not Finished.KEPT else Move.DELETE
        return Move.FOREIGN

    def _deferred(self, change: AuditRow) -> bool:
        due = moment_of(change.value(self.spec.due)) if self.spec.due else None
        return due is not None and due > change.at

    def _unlinks(self, change: AuditRow) -> bool:
        """holder.beats_in: a write that only cut the job's link to a worker row (the
        row's deletion setting the reference to NULL), whatever the job's state."""
        column = self.spec.holder.column or ""
        if not self.spec.holder.beats_in or change.old is None or change.new is None:
            return False
        rest = {key: value for key, value in change.old.items() if key != column}
        return (
            change.value(column) is None
            and change.value(column, new=False) is not None
            and rest == {key: value for key, value in change.new.items() if key != column}
        )

    def _beat_gone(self, hold: Hold, change: AuditRow) -> str | None:
        """holder.beats_in: why the hold's worker row shows no recent sign of life."""
        holder = self.spec.holder
        if hold.ref is None:
            return None  # its claim named no worker row: no beat to go stale, only a crash
        row = (change.beats or {}).get(str(hold.ref))
        if row is None:
            return f"no beat of its row {hold.ref} in {holder.beats_in} was committed"
        if row.operation == "DELETE":
            return f"its row {hold.ref} in {holder.beats_in} was deleted at {_time(row.at)}"
        mark = moment_of(row.value(holder.beat or ""))
        timeout = timedelta(seconds=holder.timeout_seconds or 0)
        if mark is not None and mark + timeout <= change.at:
            return (
                f"its worker's heartbeat ({_time(mark)}) was older than "
                f"{holder.timeout_seconds:g} s at {_time(change.at)}"
            )
        return None

    def taken_away(self, hold: Hold, change: AuditRow) -> str | None:
        """Why ``hold`` could be taken from its worker at ``change``'s time (None: it
        could not be: the worker still held the job)."""
        if hold.crashed:
            return f"{hold.worker} had crashed"
        if self.spec.holder.beats_in:
            return self._beat_gone(hold, change)
        model = self.spec.holder.model
        mark = moment_of(change.value(self.spec.holder.column or "", new=False))
        if model is HolderModel.LEASE and mark is not None and mark <= change.at:
            return f"its lease expired at {_time(mark)}"
        if model is HolderModel.HEARTBEAT and mark is not None:
            timeout = timedelta(seconds=self.spec.holder.timeout_seconds or 0)
            if mark + timeout <= change.at:
                return (
                    f"its heartbeat ({_time(mark)}) was older than "
                    f"{self.spec.holder.timeout_seconds:g} s at {_time(change.at)}"
                )
        return None

    def _expired(self, hold: Hold, change: AuditRow) -> bool:
        """A holder's own write after its lease ran out is a zombie's (leases only: a
        heartbeat holder holds until someone recovers its job)."""
        if self.spec.holder.model is not HolderModel.LEASE or self.spec.holder.ends == "takeover":
            return False
        mark = moment_of(change.value(self.spec.holder.column or "", new=False))
        return mark is not None and mark <= change.at


def declared_extra_move(spec: Spec, change: AuditRow) -> bool:
    """Whether ``change`` makes one of the spec's extra moves (state, old to new)."""
    if change.operation != "UPDATE":
        return False
    return (change.value(spec.state, new=False), change.value(spec.state)) in spec.extra_moves


def moment_of(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _time(moment: datetime) -> str:
    return moment.strftime("%H:%M:%S")


__all__ = ["Event", "Hold", "HolderHistory", "Move", "moment_of"]

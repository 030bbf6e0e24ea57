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
    DELETE = "delete"  # the row went away
    OTHER = "other"  # an actor that is not a worker (the enqueuer, an operator)


@dataclass
class Hold:
    worker: str
    since: int  # the audit id of the claim
    at: datetime  # when the claim was written
    crashed: bool = False


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

    def crash(self, worker: str) -> None:
        """``worker`` died: its holds end (its jobs wait for someone to recover them)."""
        for hold in self.holds.values():
            if hold.worker == worker:
                hold.crashed = True

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
        if spec.stage and change.value(spec.stage) != change.value(spec.stage, new=False):
            # A job that moved to its next stage is delivered afresh: a poison job is one
            # claimed again and again without getting anywhere.
            self.claims[job] = 0
        claims = self.claims[job]
        if move in (Move.CLAIM, Move.TAKEOVER):
            claims = self.claims[job] = claims + 1
            self.holds[job] = self.last[job] = Hold(change.actor, change.audit_id, change.at)
        elif move in (Move.RELEASE, Move.FINISH, Move.RECOVERY, Move.DELETE) or (
            move is Move.OTHER and new is not Meaning.IN_PROGRESS
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

    def taken_away(self, hold: Hold, change: AuditRow) -> str | None:
        """Why ``hold`` could be taken from its worker at ``change``'s time (None: it
        could not be: the worker still held the job)."""
        if hold.crashed:
            return f"{hold.worker} had crashed"
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


def moment_of(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _time(moment: datetime) -> str:
    return moment.strftime("%H:%M:%S")


__all__ = ["Event", "Hold", "HolderHistory", "Move", "moment_of"]

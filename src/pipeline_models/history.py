"""What the checker's audit trigger observed: every committed change of every job row.

``sql/audit.sql`` installs a trigger on ``upload_jobs`` that writes each insert, update
and delete, with the old and new stage, state, owner, lease and counters, the acting
connection's name and the actor's clock (the row's ``updated_at``), to a table the
pipeline never touches. :class:`History` reads it incrementally; each
:class:`JobChange` knows which lifecycle transition explains it, if any.

>>> change = JobChange.created(job_id=uuid.UUID(int=1), actor="api")
>>> change.kind
<TransitionKind.CREATE: 'create'>
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import asyncpg

from pipeline_models.lifecycle import (
    CLAIMABLE_STATES,
    Position,
    Stage,
    State,
    TransitionKind,
    next_stage,
    transitions_between,
)
from pipeline_models.queries import Queries
from pipeline_models.snapshot import CHECKER_QUERIES, Snapshot, snapshot_from_row

AUDIT_QUERIES = Queries.load("audit.sql")
AUDIT_TABLE = "checker_job_audit"


async def install_audit(connection: asyncpg.Connection) -> None:
    """Create the audit table and trigger in the connection's schema (idempotent)."""
    await connection.execute(AUDIT_QUERIES["install_audit"].sql)


def _position(stage: str | None, state: str | None) -> Position | None:
    if stage is None or state is None:
        return None
    return Position(Stage(stage), State(state))


@dataclass(frozen=True)
class JobChange:
    """One committed change of one job row, as the trigger saw it."""

    audit_id: int
    operation: str  # INSERT, UPDATE or DELETE
    actor: str
    job_id: uuid.UUID
    document_id: uuid.UUID
    at: datetime | None
    old_stage: str | None = None
    new_stage: str | None = None
    old_state: str | None = None
    new_state: str | None = None
    old_owner: str | None = None
    new_owner: str | None = None
    old_lease_expires_at: datetime | None = None
    new_lease_expires_at: datetime | None = None
    old_next_attempt_at: datetime | None = None
    new_next_attempt_at: datetime | None = None
    old_retry_count: int | None = None
    new_retry_count: int | None = None
    old_chunks_done: int | None = None
    new_chunks_done: int | None = None
    old_embeddings_done: int | None = None
    new_embeddings_done: int | None = None
    new_last_error: str | None = None
    old_held_for: str | None = None
    new_held_for: str | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> JobChange:
        return cls(**{f.name: record[f.name] for f in fields(cls)})

    @classmethod
    def created(cls, *, job_id: uuid.UUID, actor: str, **values: Any) -> JobChange:
        """A hand-made insert (for tests that craft histories)."""
        defaults: dict[str, Any] = {
            "audit_id": 0,
            "operation": "INSERT",
            "document_id": uuid.UUID(int=0),
            "at": None,
            "new_stage": Stage.QUEUED.value,
            "new_state": State.QUEUED.value,
            "new_retry_count": 0,
        }
        return cls(job_id=job_id, actor=actor, **{**defaults, **values})

    @property
    def old(self) -> Position | None:
        return _position(self.old_stage, self.old_state)

    @property
    def new(self) -> Position | None:
        return _position(self.new_stage, self.new_state)

    @property
    def moved(self) -> bool:
        """The row changed position, owner or lease (not only counters or details)."""
        return (
            self.old != self.new
            or self.old_owner != self.new_owner
            or self.old_lease_expires_at != self.new_lease_expires_at
            or self.old_held_for != self.new_held_for
        )

    @property
    def kind(self) -> TransitionKind | None:
        """The lifecycle transition that explains this change, or None if none does.

        Where the table alone is ambiguous, the row's owners and the actor decide: a
        working row keeping its owner is a renewal, changing owner a reclaim; parsing to
        parsed by the owner is an advance, by anyone else the webhook.
        """
        if self.operation == "DELETE" or self.new is None:
            return None
        held = (self.old_held_for, self.new_held_for)
        candidates = {t.kind for t in transitions_between(self.old, self.new) if t.held == held}
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates.pop()
        if candidates >= {TransitionKind.RENEW, TransitionKind.RECLAIM}:
            if self.old_owner != self.new_owner:
                return TransitionKind.RECLAIM
            # The same worker may claim back its own job after its lease expired (its
            # step lost the lease, then it claimed again): that is a reclaim, counted.
            counted = (
                self.old_retry_count is not None
                and self.new_retry_count == self.old_retry_count + 1
            )
            expired = not lease_live(self)
            return TransitionKind.RECLAIM if counted and expired else TransitionKind.RENEW
        if candidates >= {TransitionKind.ADVANCE, TransitionKind.WEBHOOK}:
            by_owner = self.old_state == State.WORKING and self.actor == self.old_owner
            return TransitionKind.ADVANCE if by_owner else TransitionKind.WEBHOOK
        return sorted(candidates)[0]

    def describe(self) -> str:
        """One line for failure messages."""

        def where(stage: str | None, state: str | None, owner: str | None) -> str:
            if stage is None:
                return "(no row)"
            return f"({stage}, {state}{', owner ' + owner if owner else ''})"

        old = where(self.old_stage, self.old_state, self.old_owner)
        new = where(self.new_stage, self.new_state, self.new_owner)
        when = self.at.isoformat() if self.at else "?"
        return f"audit #{self.audit_id}: {old} -> {new} by {self.actor!r} at {when}"


class History:
    """The audit trail read so far, growing with :meth:`refresh`.

    Rows are read by writing transaction, not by audit id: ids are drawn when a row is
    written, so a worker that holds its transaction open (parked before its commit)
    commits a row with a lower id than rows others committed meanwhile. Reading "ids
    after the last one seen" would skip that row for good; the checker then saw a
    failure's retry but not the failure.
    """

    def __init__(self, changes: Iterable[JobChange] = ()) -> None:
        self.changes: list[JobChange] = list(changes)
        self._seen = {c.audit_id for c in self.changes}
        self._from_xid = "0"  # every transaction older than this had ended at the last read

    async def refresh(self, connection: asyncpg.Connection) -> list[JobChange]:
        """Read the changes committed since the last refresh; returns the new ones."""
        row = await connection.fetchrow(AUDIT_QUERIES["audit_since"].sql, self._from_xid)
        return self._record(row)

    async def observe(self, connection: asyncpg.Connection) -> tuple[Snapshot, list[JobChange]]:
        """The tables and the changes since the last refresh, read in one statement (so
        the changes are exactly those behind the tables); returns both, records the new."""
        row = await connection.fetchrow(CHECKER_QUERIES["observe_all"].sql, self._from_xid)
        return snapshot_from_row(row), self._record(row)

    def _record(self, row: Mapping[str, Any]) -> list[JobChange]:
        new = [
            JobChange.from_record(record)
            for record in row["audit"]
            if record["audit_id"] not in self._seen
        ]
        self._seen.update(change.audit_id for change in new)
        self.changes.extend(new)
        self._from_xid = row["next_xid"]
        return new

    def of_job(self, job_id: uuid.UUID) -> list[JobChange]:
        return [c for c in self.changes if c.job_id == job_id]

    def coverage(self) -> Counter[TransitionKind]:
        """How often each allowed transition was observed."""
        return Counter(kind for c in self.changes if c.moved and (kind := c.kind) is not None)


def is_claim_due(change: JobChange) -> bool:
    """A claim's guard: the row was claimable and due at the actor's time."""
    return (
        change.old_state in {s.value for s in CLAIMABLE_STATES}
        and change.old_next_attempt_at is not None
        and change.at is not None
        and change.old_next_attempt_at <= change.at
    )


def lease_live(change: JobChange) -> bool:
    """The old lease was still live at the actor's time."""
    return (
        change.old_lease_expires_at is not None
        and change.at is not None
        and change.old_lease_expires_at > change.at
    )


def follows(stage: str | None) -> str | None:
    """The stage after ``stage`` (by name), for guards written over audit rows."""
    if stage is None:
        return None
    following = next_stage(Stage(stage))
    return following.value if following else None


__all__ = [
    "AUDIT_QUERIES",
    "AUDIT_TABLE",
    "History",
    "JobChange",
    "follows",
    "install_audit",
    "is_claim_due",
    "lease_live",
]

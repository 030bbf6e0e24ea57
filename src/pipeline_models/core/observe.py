"""Observation generated from the spec: an audit trigger on the job table, and reads.

The checker installs, in schemas of its own, an audit table and a trigger function; the
user's job table gets one trigger, removed when the check ends. Every insert, update and
delete of a job row lands in the trail with the whole old and new rows (as jsonb), the
acting session's ``application_name`` (each worker connects under its own name), the
writing transaction and the checker's time. :class:`Trail` reads the trail and the
table together, incrementally.

Nothing here knows a column but the ones the spec names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg

from pipeline_models.core.queries import Queries
from pipeline_models.core.spec import Meaning, Spec, SpecError

CHECKER_SCHEMA = "pipeline_models_checker"
CLOCK_SCHEMA = "pipeline_models_clock"
_TEMPLATES = Queries.load("observe.sql", package="pipeline_models.core")


@dataclass(frozen=True)
class AuditRow:
    """One committed change of one job row, as the trigger saw it."""

    audit_id: int
    operation: str  # INSERT, UPDATE or DELETE
    actor: str  # the session's application_name
    at: datetime  # the checker's time when the row was written
    job_id: str
    old: Mapping[str, Any] | None
    new: Mapping[str, Any] | None
    xid: str = ""
    # Heartbeats on the workers' rows (a spec's ``holder.beats_in``): each worker row's
    # last change committed before this one was (its DELETE if the row was pruned).
    beats: Mapping[str, AuditRow] | None = None

    def value(self, column: str, *, new: bool = True) -> Any:
        row = self.new if new else self.old
        return None if row is None else row.get(column)


class Observer:
    """The checker's SQL for one spec: install, reset, move the clock, observe."""

    def __init__(
        self, spec: Spec, *, checker_schema: str = CHECKER_SCHEMA, clock_schema: str = CLOCK_SCHEMA
    ) -> None:
        self.spec = spec
        self.checker_schema = checker_schema
        self.clock_schema = clock_schema
        slug = re.sub(r"[^a-z0-9_]", "_", spec.table.lower())
        names = {
            "checker": _quote(checker_schema),
            "clock": _quote(clock_schema),
            "table": ".".join(_quote(part) for part in spec.table.split(".")),
            "table_literal": ".".join(_quote(part) for part in spec.table.split(".")).replace(
                "'", "''"
            ),
            "id": "'" + spec.id + "'",
            "audit_function": _quote(f"audit_{slug}"),
            "trigger": _quote(f"pipeline_models_audit_{slug}"),
        }
        self.sql = {name: query.sql.format(**names) for name, query in _TEMPLATES.items()}
        # spec.skips_locked: another session locks one claimable job ($1: its id) and keeps
        # the lock; no row if the job is locked already, or not claimable.
        self.lock_a_claimable_job = (
            f"SELECT true FROM {names['table']} WHERE {_quote(spec.id)}::text = $1 "
            f"AND {_quote(spec.state)}::text = ANY($2::text[]) FOR UPDATE SKIP LOCKED"
        )
        # The workers' table of a heartbeat kept on the worker's row: audited alike.
        self.beats_sql: dict[str, str] = {}
        if spec.holder.beats_in:
            beats = spec.holder.beats_in
            slug = re.sub(r"[^a-z0-9_]", "_", beats.lower())
            quoted = ".".join(_quote(part) for part in beats.split("."))
            names |= {
                "table": quoted,
                "table_literal": quoted.replace("'", "''"),
                "id": "'id'",
                "audit_function": _quote(f"audit_{slug}"),
                "trigger": _quote(f"pipeline_models_audit_{slug}"),
            }
            self.beats_sql = {name: q.sql.format(**names) for name, q in _TEMPLATES.items()}

    async def install(self, connection: asyncpg.Connection) -> None:
        """Check the spec against the table, then install the schemas and the trigger."""
        columns = [
            row["name"]
            for row in await connection.fetch(self.sql["table_columns"], self.spec.table)
        ]
        if not columns:
            raise SpecError(
                f"the spec's table {self.spec.table!r} does not exist (on the search_path "
                f"{await connection.fetchval('SHOW search_path')!r}); create it first, or "
                "qualify its name with its schema"
            )
        for role, column in self.spec.columns().items():
            if column not in columns:
                raise SpecError(
                    f"the spec's {role} column {column!r} is not a column of {self.spec.table}; "
                    f"its columns are {', '.join(columns)}"
                )
        beats = self.spec.holder.beats_in
        if beats:
            rows = await connection.fetch(self.sql["table_columns"], beats)
            found = {row["name"] for row in rows}
            for column in ("id", self.spec.holder.beat or ""):
                if column not in found:
                    raise SpecError(
                        f"holder.beats_in {beats!r} has no column {column!r}; its columns are "
                        f"{', '.join(sorted(found)) or 'none (no such table)'}"
                    )
        await connection.execute(self.sql["install_checker"])
        await connection.execute(self.sql["install_trigger"])
        if self.beats_sql:
            await connection.execute(self.beats_sql["install_trigger"])

    async def remove(self, connection: asyncpg.Connection) -> None:
        await connection.execute(self.sql["remove_trigger"])
        if self.beats_sql:
            await connection.execute(self.beats_sql["remove_trigger"])

    async def reset(self, connection: asyncpg.Connection, start: datetime) -> None:
        await connection.execute(self.sql["reset_trail"])
        if self.beats_sql:
            await connection.execute(self.beats_sql["reset_trail"])
        await self.set_clock(connection, start)

    async def set_clock(self, connection: asyncpg.Connection, at: datetime) -> None:
        await connection.execute(self.sql["set_clock"], at)

    def trail(self) -> Trail:
        return Trail(self)


class Trail:
    """The audit trail read so far and the table as last read, growing with each read.

    Rows are read by writing transaction, not by audit id: ids are drawn when a row is
    written, so a worker that holds its transaction open commits a row with a lower id
    than rows others committed meanwhile; reading "ids after the last one seen" would
    skip it for good.
    """

    def __init__(self, observer: Observer) -> None:
        self.observer = observer
        self.changes: list[AuditRow] = []
        self.rows: dict[str, Mapping[str, Any]] = {}
        self._seen: set[int] = set()
        self._from_xid = "0"
        # Heartbeats on the workers' rows (holder.beats_in): their changes committed by
        # the previous read, in write order. A beat first seen in the same read as a job
        # change may have been committed after it: it does not count for that change.
        self.beat_changes: list[AuditRow] = []
        self._beats_from_xid = "0"

    async def read(self, connection: asyncpg.Connection) -> list[AuditRow]:
        """Read the table and the changes committed since the last read; the new ones."""
        beats_sql = self.observer.beats_sql
        beat_record = None
        if beats_sql:
            beat_record = await connection.fetchrow(beats_sql["observe"], self._beats_from_xid)
        record = await connection.fetchrow(self.observer.sql["observe"], self._from_xid)
        spec = self.observer.spec
        self.rows = {str(row[spec.id]): row for row in map(_json, record["rows"])}
        new = [self._change(audit) for audit in record["audit"]]
        new = [row for row in new if row.audit_id not in self._seen]
        if beat_record is not None:
            new = [replace(row, beats=self._beats_before(row.audit_id)) for row in new]
            fresh = [self._change(audit) for audit in beat_record["audit"]]
            self.beat_changes += [row for row in fresh if row.audit_id not in self._seen]
            self.beat_changes.sort(key=lambda row: row.audit_id)
            self._seen.update(row.audit_id for row in fresh)
            self._beats_from_xid = beat_record["next_xid"]
        self._seen.update(row.audit_id for row in new)
        self.changes.extend(new)
        self._from_xid = record["next_xid"]
        return new

    def _beats_before(self, audit_id: int) -> dict[str, AuditRow]:
        last: dict[str, AuditRow] = {}
        for beat in self.beat_changes:
            if beat.audit_id < audit_id:
                last[beat.job_id] = beat
        return last

    @staticmethod
    def _change(audit: Any) -> AuditRow:
        return AuditRow(
            audit_id=audit["audit_id"],
            operation=audit["operation"],
            actor=audit["actor"],
            at=audit["at"],
            job_id=audit["job_id"],
            old=_json(audit["old"]) if audit["old"] is not None else None,
            new=_json(audit["new"]) if audit["new"] is not None else None,
            xid=str(audit["xid"]),
        )

    def meaning_of(self, job_id: str) -> Meaning | None:
        row = self.rows.get(job_id)
        return (
            None if row is None else self.observer.spec.meaning(row.get(self.observer.spec.state))
        )


def _json(value: Any) -> Mapping[str, Any]:
    import json

    return json.loads(value) if isinstance(value, str) else dict(value)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def states_of(rows: Sequence[AuditRow], spec: Spec) -> list[tuple[Any, Any]]:
    """(old state, new state) of each change: for messages and tests."""
    return [(row.value(spec.state, new=False), row.value(spec.state)) for row in rows]


__all__ = ["CHECKER_SCHEMA", "CLOCK_SCHEMA", "AuditRow", "Observer", "Trail", "states_of"]

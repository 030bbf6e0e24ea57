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
from dataclasses import dataclass
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
        await connection.execute(self.sql["install_checker"])
        await connection.execute(self.sql["install_trigger"])

    async def remove(self, connection: asyncpg.Connection) -> None:
        await connection.execute(self.sql["remove_trigger"])

    async def reset(self, connection: asyncpg.Connection, start: datetime) -> None:
        await connection.execute(self.sql["reset_trail"])
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

    async def read(self, connection: asyncpg.Connection) -> list[AuditRow]:
        """Read the table and the changes committed since the last read; the new ones."""
        record = await connection.fetchrow(self.observer.sql["observe"], self._from_xid)
        spec = self.observer.spec
        self.rows = {str(row[spec.id]): row for row in map(_json, record["rows"])}
        new = []
        for audit in record["audit"]:
            if audit["audit_id"] in self._seen:
                continue
            new.append(
                AuditRow(
                    audit_id=audit["audit_id"],
                    operation=audit["operation"],
                    actor=audit["actor"],
                    at=audit["at"],
                    job_id=audit["job_id"],
                    old=_json(audit["old"]) if audit["old"] is not None else None,
                    new=_json(audit["new"]) if audit["new"] is not None else None,
                    xid=str(audit["xid"]),
                )
            )
        self._seen.update(row.audit_id for row in new)
        self.changes.extend(new)
        self._from_xid = record["next_xid"]
        return new

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

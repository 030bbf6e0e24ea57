"""The database read straight from its tables into frozen dataclasses.

The checker trusts what the tables hold, not what the pipeline says it did. A snapshot
is taken in one REPEATABLE READ transaction, so every table is seen at the same instant.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from pipeline_models.lifecycle import Stage, State
from pipeline_models.queries import Queries

CHECKER_QUERIES = Queries.load("checker.sql")


@dataclass(frozen=True)
class DocumentRow:
    document_id: uuid.UUID
    user_id: uuid.UUID
    filename: str
    file_sha256: str
    size_bytes: int
    raw_blob_key: str
    status: str
    chunk_count: int | None


@dataclass(frozen=True)
class JobRow:
    job_id: uuid.UUID
    document_id: uuid.UUID
    stage: Stage
    state: State
    owner: str | None
    lease_expires_at: datetime | None
    next_attempt_at: datetime
    retry_count: int
    last_error: str | None
    chunks_total: int | None
    chunks_done: int
    embeddings_done: int


@dataclass(frozen=True)
class ChunkRow:
    """A row of the chunk buffer or of the final chunks (vector fields only for final)."""

    chunk_id: uuid.UUID
    document_id: uuid.UUID
    chunk_ord: int
    chunk_sha: str
    text: str
    vector_sha: str | None = None
    vector: tuple[float, ...] | None = None


@dataclass(frozen=True)
class VectorRow:
    chunk_id: uuid.UUID
    document_id: uuid.UUID
    vector_sha: str
    vector: tuple[float, ...]


@dataclass(frozen=True)
class BilledCallRow:
    """A row of the ledger of billed calls (cost None while the call is in flight)."""

    call_id: int
    job_id: uuid.UUID
    service: str
    caller: str
    budget_id: str | None
    outcome: str
    estimated_usd: Decimal
    pages: int
    tokens: int
    cost_usd: Decimal | None
    reference: str | None


@dataclass(frozen=True)
class BudgetRow:
    budget_id: str
    limit_usd: Decimal
    spent_usd: Decimal
    reserved_usd: Decimal


@dataclass(frozen=True)
class Snapshot:
    documents: Mapping[uuid.UUID, DocumentRow] = field(default_factory=dict)
    jobs: Mapping[uuid.UUID, JobRow] = field(default_factory=dict)
    chunk_buffer: tuple[ChunkRow, ...] = ()
    vector_buffer: tuple[VectorRow, ...] = ()
    final_chunks: tuple[ChunkRow, ...] = ()
    billed_calls: tuple[BilledCallRow, ...] = ()
    budgets: Mapping[str, BudgetRow] = field(default_factory=dict)

    def jobs_of(self, document_id: uuid.UUID) -> list[JobRow]:
        return [job for job in self.jobs.values() if job.document_id == document_id]

    def final_chunks_of(self, document_id: uuid.UUID) -> list[ChunkRow]:
        return sorted(
            (c for c in self.final_chunks if c.document_id == document_id),
            key=lambda c: c.chunk_ord,
        )


def _fields(cls: type, record: Mapping[str, Any]) -> dict[str, Any]:
    return {f.name: record[f.name] for f in dataclasses.fields(cls) if f.name in record}


async def take_snapshot(connection: asyncpg.Connection) -> Snapshot:
    """Read every pipeline table at one instant (one statement, one round trip)."""
    return snapshot_from_row(await connection.fetchrow(CHECKER_QUERIES["snapshot_all"].sql))


def snapshot_from_row(row: Mapping[str, Any]) -> Snapshot:
    """The snapshot in a row of ``snapshot_all`` (or of a query with the same columns)."""
    documents = {r["document_id"]: DocumentRow(**_fields(DocumentRow, r)) for r in row["documents"]}
    jobs = {}
    for r in row["jobs"]:
        values = _fields(JobRow, r)
        values["stage"], values["state"] = Stage(r["stage"]), State(r["state"])
        jobs[r["job_id"]] = JobRow(**values)
    chunk_buffer = tuple(ChunkRow(**_fields(ChunkRow, r)) for r in row["chunk_buffer"])
    vector_buffer = tuple(
        VectorRow(r["chunk_id"], r["document_id"], r["vector_sha"], tuple(r["vector"]))
        for r in row["vector_buffer"]
    )
    final_chunks = tuple(
        ChunkRow(**{**_fields(ChunkRow, r), "vector": tuple(r["vector"])})
        for r in row["final_chunks"]
    )
    billed_calls = tuple(
        BilledCallRow(**_fields(BilledCallRow, r)) for r in row.get("billed_calls") or ()
    )
    budgets = {r["budget_id"]: BudgetRow(**_fields(BudgetRow, r)) for r in row.get("budgets") or ()}
    return Snapshot(
        documents, jobs, chunk_buffer, vector_buffer, final_chunks, billed_calls, budgets
    )


__all__ = [
    "CHECKER_QUERIES",
    "BilledCallRow",
    "BudgetRow",
    "ChunkRow",
    "DocumentRow",
    "JobRow",
    "Snapshot",
    "VectorRow",
    "snapshot_from_row",
    "take_snapshot",
]

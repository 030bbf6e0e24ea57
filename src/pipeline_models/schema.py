"""The pipeline's tables, declared once with SQLAlchemy Core.

The CHECK constraints on stage and state are generated from :mod:`pipeline_models.lifecycle`,
so the database itself refuses a stage or state the lifecycle does not know. Tables are
declared without a schema; :func:`ddl_statements` places them in the configured one, so
several isolated copies (one per fuzz process) can live on one server.

The worker's hot-path queries are not built here: they are named SQL in ``sql/queries.sql``.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable

from sqlalchemy import (
    REAL,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.schema import CreateIndex, CreateTable

from pipeline_models.lifecycle import (
    BILLED_STAGES,
    BUDGET_HOLD,
    LIVE_STATES,
    STAGES,
    State,
    stages_allowing,
)

DEFAULT_SCHEMA = "upload_pipeline"

metadata = MetaData()


def _one_of(column: str, values: Iterable[str]) -> str:
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


_LIVE = sorted(s.value for s in LIVE_STATES)


def _document_reference() -> Column[uuid.UUID]:
    """The owning document; its rows go when it goes."""
    return Column(
        "document_id",
        UUID(as_uuid=True),
        ForeignKey("documents.document_id", ondelete="CASCADE"),
        nullable=False,
    )


documents = Table(
    "documents",
    metadata,
    Column("document_id", UUID(as_uuid=True), primary_key=True),
    Column("user_id", UUID(as_uuid=True), nullable=False),
    Column("filename", Text, nullable=False),
    Column("declared_type", Text, nullable=False),
    Column("detected_type", Text),
    Column("file_sha256", Text, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("raw_blob_key", Text, nullable=False),
    Column("parsed_blob_key", Text),
    Column("parsed_sha256", Text),
    Column("parsed_pages", Integer),
    Column("status", Text, nullable=False, server_default="processing"),
    Column("chunk_count", Integer),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("user_id", "file_sha256", name="documents_one_per_user_and_content"),
    CheckConstraint(_one_of("status", ["processing", "complete", "failed"]), "documents_status"),
    CheckConstraint("size_bytes >= 0", "documents_size_not_negative"),
    CheckConstraint(
        "status <> 'complete' OR (chunk_count IS NOT NULL AND chunk_count > 0)",
        "documents_complete_has_chunks",
    ),
)

upload_jobs = Table(
    "upload_jobs",
    metadata,
    Column("job_id", UUID(as_uuid=True), primary_key=True),
    # Insertion order: the claim's tie-break among jobs due at the same instant, so equal
    # due times are served first come, first served (and a replayed run claims alike).
    Column("job_seq", BigInteger, Identity(always=True), nullable=False, unique=True),
    _document_reference(),
    Column("user_id", UUID(as_uuid=True), nullable=False),
    Column("stage", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("owner", Text),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("retry_count", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
    Column("last_error_kind", Text),
    Column("parser_job_id", Text),
    Column("chunks_total", Integer),
    Column("chunks_done", Integer, nullable=False, server_default="0"),
    Column("chunk_cursor", BigInteger, nullable=False, server_default="0"),
    Column("embeddings_done", Integer, nullable=False, server_default="0"),
    Column("correlation_id", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Why a queued job is not claimable (the claim skips it): 'budget' until an operator
    # raises the spending cap. NULL for every job when no cap is configured.
    Column("held_for", Text),
    CheckConstraint(_one_of("stage", (s.value for s in STAGES)), "upload_jobs_stage"),
    CheckConstraint(_one_of("state", (s.value for s in State)), "upload_jobs_state"),
    CheckConstraint(
        f"state <> 'done' OR {_one_of('stage', (s.value for s in stages_allowing(State.DONE)))}",
        "upload_jobs_done_only_at_last_stage",
    ),
    CheckConstraint(
        "state <> 'working' OR (owner IS NOT NULL AND lease_expires_at IS NOT NULL)",
        "upload_jobs_working_has_lease",
    ),
    CheckConstraint(
        "state <> 'deadletter' OR last_error IS NOT NULL", "upload_jobs_deadletter_has_error"
    ),
    CheckConstraint(
        _one_of("last_error_kind", ["transient", "permanent"]), "upload_jobs_error_kind"
    ),
    CheckConstraint("retry_count >= 0", "upload_jobs_retry_count_not_negative"),
    CheckConstraint(
        "chunks_done >= 0 AND embeddings_done >= 0 AND chunk_cursor >= 0",
        "upload_jobs_progress_not_negative",
    ),
    CheckConstraint(
        f"held_for IS NULL OR (held_for = '{BUDGET_HOLD}' AND state = 'queued' AND "
        f"{_one_of('stage', sorted(s.value for s in BILLED_STAGES))})",
        "upload_jobs_held_only_while_queued_at_a_billed_stage",
    ),
)

# One live job per document: a document may be reprocessed later, never twice at once.
Index(
    "upload_jobs_one_live_job_per_document",
    upload_jobs.c.document_id,
    unique=True,
    postgresql_where=text(_one_of("state", _LIVE)),
)
# The claim query's two ways in: due queued/retryable jobs, and expired leases.
Index(
    "upload_jobs_due",
    upload_jobs.c.next_attempt_at,
    upload_jobs.c.job_seq,
    postgresql_where=text(_one_of("state", ["queued", "retryable"])),
)
Index(
    "upload_jobs_leases",
    upload_jobs.c.lease_expires_at,
    upload_jobs.c.job_seq,
    postgresql_where=text("state = 'working'"),
)
Index("upload_jobs_by_user", upload_jobs.c.user_id)

document_chunk_buffer = Table(
    "document_chunk_buffer",
    metadata,
    Column("chunk_id", UUID(as_uuid=True), primary_key=True),
    _document_reference(),
    Column("chunker_name", Text, nullable=False),
    Column("chunker_version", Text, nullable=False),
    Column("chunk_ord", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("chunk_sha", Text, nullable=False),
    Column("byte_start", BigInteger, nullable=False),
    Column("byte_end", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint(
        "document_id",
        "chunker_name",
        "chunker_version",
        "chunk_ord",
        name="chunk_buffer_one_row_per_ordinal",
    ),
    CheckConstraint("chunk_ord >= 0 AND byte_start < byte_end", "chunk_buffer_shape"),
)

document_vector_buffer = Table(
    "document_vector_buffer",
    metadata,
    Column(
        "chunk_id",
        UUID(as_uuid=True),
        ForeignKey("document_chunk_buffer.chunk_id", ondelete="CASCADE"),
        nullable=False,
    ),
    _document_reference(),
    Column("embed_model", Text, nullable=False),
    Column("embed_version", Text, nullable=False),
    Column("vector", ARRAY(REAL), nullable=False),
    Column("vector_sha", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint(
        "chunk_id", "embed_model", "embed_version", name="vector_buffer_one_per_chunk_and_model"
    ),
)
Index("vector_buffer_by_document", document_vector_buffer.c.document_id)

document_chunks = Table(
    "document_chunks",
    metadata,
    Column("chunk_id", UUID(as_uuid=True), primary_key=True),
    _document_reference(),
    Column("chunk_ord", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("chunk_sha", Text, nullable=False),
    Column("embed_model", Text, nullable=False),
    Column("embed_version", Text, nullable=False),
    Column("vector", ARRAY(REAL), nullable=False),
    Column("vector_sha", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("document_id", "chunk_ord", name="document_chunks_one_per_ordinal"),
)

events = Table(
    "events",
    metadata,
    Column("event_id", BigInteger, Identity(always=True), primary_key=True),
    Column("job_id", UUID(as_uuid=True)),
    Column("document_id", UUID(as_uuid=True)),
    Column("correlation_id", Text),
    Column("action", Text, nullable=False),
    Column("stage", Text),
    Column("state", Text),
    Column("worker", Text),
    Column("detail", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
Index("events_by_job", events.c.job_id, events.c.event_id)

spending_budget = Table(
    "spending_budget",
    metadata,
    # One row per budget ("run"); every worker of the deployment shares it.
    Column("budget_id", Text, primary_key=True),
    Column("limit_usd", Numeric, nullable=False),
    # Settled: what the services billed, as their responses reported it.
    Column("spent_usd", Numeric, nullable=False, server_default="0"),
    # Estimates of calls in flight, reserved before each call and settled after it.
    Column("reserved_usd", Numeric, nullable=False, server_default="0"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    CheckConstraint(
        "limit_usd >= 0 AND spent_usd >= 0 AND reserved_usd >= 0", "spending_budget_not_negative"
    ),
)

# Every billed call to an external service, written before the request is sent and
# settled when its answer (or its loss) is known: the money a run spent, call by call.
# A call's money is spent whether or not its step commits, so these rows are written
# outside the step's transaction and a job's cost is the sum of its calls.
BILLED_CALL_OUTCOMES = {
    "in_flight": "reserved before the request; no answer yet",
    "billed": "answered; cost is what the service reported",
    "counting": "the parser took the document; it bills pages it has not counted yet, "
    "so cost is the estimate until the pages are known",
    "not_billed": "refused with an HTTP error status, or never sent: cost 0",
    "unconfirmed": "no usable answer (a crash, a timeout, a garbled body): it may have "
    "been billed, so cost is the estimate; a late answer corrects it",
}
billed_calls = Table(
    "billed_calls",
    metadata,
    Column("call_id", BigInteger, Identity(always=True), primary_key=True),
    Column(
        "job_id",
        UUID(as_uuid=True),
        ForeignKey("upload_jobs.job_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("service", Text, nullable=False),
    # The worker that made the call: while it is in flight, the job's owner.
    Column("caller", Text, nullable=False),
    # The budget the estimate was reserved from; NULL when no cap was set.
    Column("budget_id", Text, ForeignKey("spending_budget.budget_id"), nullable=True),
    Column("outcome", Text, nullable=False, server_default="in_flight"),
    Column("estimated_usd", Numeric, nullable=False),
    Column("pages", Integer, nullable=False, server_default="0"),
    Column("tokens", BigInteger, nullable=False, server_default="0"),
    Column("cost_usd", Numeric),
    # The service's own id for the work (the parser job), to true up a parse's pages.
    Column("reference", Text),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("settled_at", DateTime(timezone=True)),
    CheckConstraint(_one_of("outcome", BILLED_CALL_OUTCOMES), "billed_calls_outcome"),
    CheckConstraint("(outcome = 'in_flight') = (cost_usd IS NULL)", "billed_calls_settled_cost"),
    CheckConstraint(
        "estimated_usd >= 0 AND pages >= 0 AND tokens >= 0 AND cost_usd >= 0",
        "billed_calls_not_negative",
    ),
)
# The claim and the release settle a job's calls left in flight: usually none.
Index(
    "billed_calls_in_flight",
    billed_calls.c.job_id,
    postgresql_where=text("outcome = 'in_flight'"),
)
Index("billed_calls_by_job", billed_calls.c.job_id, billed_calls.c.call_id)

# Children before parents: the order DELETE-based reset must follow.
TABLES_CHILDREN_FIRST: tuple[Table, ...] = (
    billed_calls,
    spending_budget,
    events,
    document_chunks,
    document_vector_buffer,
    document_chunk_buffer,
    upload_jobs,
    documents,
)


def ddl_statements() -> list[str]:
    """The DDL that creates every table and index, idempotently, unqualified.

    Compiled with SQLAlchemy's asyncpg dialect. :mod:`pipeline_models.database` runs it
    with ``search_path`` set to the target schema, so one declaration serves any schema.
    """
    dialect = asyncpg_dialect()  # type: ignore[no-untyped-call]
    statements: list[str] = []
    for table in metadata.sorted_tables:
        statements.append(str(CreateTable(table, if_not_exists=True).compile(dialect=dialect)))
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            statements.append(str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect)))
    return statements


def schema_fingerprint() -> str:
    """A short hash of the DDL: a changed declaration means a rebuilt schema."""
    return hashlib.sha256("\n".join(ddl_statements()).encode()).hexdigest()[:16]


__all__ = [
    "BILLED_CALL_OUTCOMES",
    "DEFAULT_SCHEMA",
    "TABLES_CHILDREN_FIRST",
    "billed_calls",
    "ddl_statements",
    "document_chunk_buffer",
    "document_chunks",
    "document_vector_buffer",
    "documents",
    "events",
    "metadata",
    "schema_fingerprint",
    "spending_budget",
    "upload_jobs",
]

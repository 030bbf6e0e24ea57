"""Named checks of the database and the audit trail against the model.

Each invariant is a pure function of an :class:`Observation` (what the database, the
audit trigger and the fakes show now) and the :class:`Expectations` (what the model
says must hold), returning every :class:`Violation` it finds. The state machine calls
:func:`check` after every step, so each check indexes what it reads by document or by
job once and never loops over the history inside a loop; :func:`liveness` runs once, at
the drain.

Nothing here trusts the pipeline's own account: transitions and fencing read the
checker's audit trail (``sql/audit.sql``), the others read the tables.

>>> world = Observation(
...     snapshot=Snapshot(), changes=(), history=(), blobs=frozenset(), embedding_inputs={}
... )
>>> expectations = Expectations(outcomes={}, workers=frozenset(), config=WorkerConfig())
>>> check(world, expectations)
[]
>>> sorted(INVARIANTS)[:3]
['billing', 'buffers', 'claims_skip_locks']
"""

from __future__ import annotations

import functools
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TypeAlias

from pipeline_models.history import JobChange, is_claim_due, lease_live
from pipeline_models.lifecycle import (
    CLAIMABLE_STATES,
    LIVE_STATES,
    Position,
    Stage,
    State,
    TransitionKind,
    successors,
)
from pipeline_models.model import ExpectedChunk, ExpectedOutcome, discrepancies
from pipeline_models.pipeline.config import WorkerConfig
from pipeline_models.pipeline.costs import Usage
from pipeline_models.snapshot import ChunkRow, DocumentRow, JobRow, Snapshot, VectorRow

_WORKING = State.WORKING.value
_CLAIMABLE = frozenset(state.value for state in CLAIMABLE_STATES)
_INTERRUPTED = frozenset({State.RETRYABLE.value, State.DEADLETTER.value})
_EMBEDDING = Stage.EMBEDDING.value
_COMPLETE = "complete"  # documents.status once finalize has promoted the buffers


@dataclass(frozen=True)
class Expectations:
    """What the model says; the state machine maintains it as it acts.

    ``outcomes`` holds every accepted upload's predicted ending, by document id;
    ``workers`` every actor name a worker has used (every incarnation), so that fencing
    knows whose writes must be fenced; ``config`` the workers' settings (retry limit,
    batch sizes, chunker, embedding model).

    >>> Expectations(outcomes={}, workers=frozenset({"worker-1"}), config=WorkerConfig()).workers
    frozenset({'worker-1'})
    """

    outcomes: Mapping[uuid.UUID, ExpectedOutcome]
    workers: frozenset[str]
    config: WorkerConfig

    def planned(self, document_id: uuid.UUID) -> tuple[ExpectedChunk, ...]:
        """The chunks the model plans for a document (none if it must dead-letter)."""
        outcome = self.outcomes.get(document_id)
        return outcome.chunks if outcome is not None else ()


@dataclass(frozen=True)
class TextsSent:
    """Texts one worker step sent to the embeddings service for one document.

    ``sender`` is the worker the checker was stepping when they went out (None when it
    cannot tell: several workers ran at once). ``continued``: the step resumed a claim
    the sender made in an earlier step (it was parked mid-step), rather than claiming
    in this one; only such a send can come from a worker whose job was taken over
    while it paused.

    >>> TextsSent(uuid.UUID(int=1), ("a text",), sender="w1").continued
    False
    """

    document_id: uuid.UUID
    texts: Sequence[str]
    sender: str | None = None
    continued: bool = False


@dataclass(frozen=True)
class Observation:
    """What the database and the fakes show now.

    ``changes`` are the audit rows to check now (new since the last check); ``history``
    is the whole trail so far, ``changes`` included, for what must be counted over a
    job's life. ``blobs`` are the keys present in blob storage; ``embedding_inputs``
    the number of texts sent to the embeddings service, by document id.

    >>> Observation(Snapshot(), (), (), frozenset(), {}).changes
    ()
    """

    snapshot: Snapshot
    changes: Sequence[JobChange]
    history: Sequence[JobChange]
    blobs: frozenset[str]
    embedding_inputs: Mapping[uuid.UUID, int]
    # Workers whose claim waited on a row lock, with the job whose lock it was (if known).
    waiting_claims: Mapping[str, uuid.UUID | None] = field(default_factory=dict)
    # Workers that reached the start of an external call, with their job and the time.
    calls_started: Mapping[str, tuple[uuid.UUID, datetime]] = field(default_factory=dict)
    # Texts sent to the embeddings service since the last check, in the order sent.
    embedded_texts: Sequence[TextsSent] = ()
    # What the services billed so far, by their own counters (None: not known).
    services_billed: Mapping[str, Usage] | None = None

    @functools.cached_property
    def _rows(self) -> _Rows:
        # Several invariants read the same groupings; build them once per observation.
        return _Rows.of(self.snapshot)


@dataclass(frozen=True)
class _Rows:
    """The snapshot's rows grouped by document."""

    jobs: Mapping[uuid.UUID, list[JobRow]]
    chunk_buffer: Mapping[uuid.UUID, list[ChunkRow]]
    vector_buffer: Mapping[uuid.UUID, list[VectorRow]]
    final_chunks: Mapping[uuid.UUID, list[ChunkRow]]

    @classmethod
    def of(cls, snapshot: Snapshot) -> _Rows:
        jobs: defaultdict[uuid.UUID, list[JobRow]] = defaultdict(list)
        for job in snapshot.jobs.values():
            jobs[job.document_id].append(job)
        chunks: defaultdict[uuid.UUID, list[ChunkRow]] = defaultdict(list)
        for chunk in snapshot.chunk_buffer:
            chunks[chunk.document_id].append(chunk)
        vectors: defaultdict[uuid.UUID, list[VectorRow]] = defaultdict(list)
        for vector in snapshot.vector_buffer:
            vectors[vector.document_id].append(vector)
        finals: defaultdict[uuid.UUID, list[ChunkRow]] = defaultdict(list)
        for final in snapshot.final_chunks:
            finals[final.document_id].append(final)
        for rows in (*chunks.values(), *finals.values()):
            rows.sort(key=lambda row: row.chunk_ord)
        return cls(dict(jobs), dict(chunks), dict(vectors), dict(finals))

    def done(self, document_id: uuid.UUID) -> bool:
        """Whether the document has a finished job."""
        return any(job.state is State.DONE for job in self.jobs.get(document_id, ()))


@dataclass(frozen=True)
class Violation:
    """One way the database or the audit trail breaks an invariant.

    >>> print(Violation("progress", "chunks_done is not the buffer's row count",
    ...                 job_id=uuid.UUID(int=1), expected="3", observed="4"))
    [progress] chunks_done is not the buffer's row count (job 00000000-0000-0000-0000-000000000001): expected 3, observed 4
    """  # noqa: E501

    invariant: str
    message: str
    job_id: uuid.UUID | None = None
    document_id: uuid.UUID | None = None
    expected: str | None = None
    observed: str | None = None

    def __str__(self) -> str:
        text = f"[{self.invariant}] {self.message}"
        where = [
            f"{label} {value}"
            for label, value in (("job", self.job_id), ("document", self.document_id))
            if value is not None
        ]
        if where:
            text += f" ({', '.join(where)})"
        found = [
            f"{label} {value}"
            for label, value in (("expected", self.expected), ("observed", self.observed))
            if value is not None
        ]
        if found:
            text += ": " + ", ".join(found)
        return text


class InvariantViolation(AssertionError):
    """Raised by :func:`assert_invariants`; ``violations`` holds what was found.

    >>> error = InvariantViolation([Violation("no_loss", "a", expected="x", observed="y"),
    ...                             Violation("retries", "b")])
    >>> print(error)
    [no_loss] a: expected x, observed y
    [retries] b
    """

    def __init__(self, violations: Sequence[Violation]) -> None:
        self.violations = tuple(violations)
        super().__init__("\n".join(str(violation) for violation in self.violations))


Invariant: TypeAlias = Callable[[Observation, Expectations], list[Violation]]
"""An invariant: the violations it finds in an observation, given the expectations."""


# -- helpers -------------------------------------------------------------------------


# Leases are stored to the microsecond; a renewal computed from the same clock reading is
# exact, so this only absorbs rounding.
_CLOCK_SLACK = timedelta(milliseconds=1)


def _time(moment: datetime | None) -> str:
    return moment.isoformat() if moment is not None else "an unknown time"


def _where(stage: str | None, state: str | None) -> str:
    return "(no row)" if stage is None else f"({stage}, {state})"


def _allowed_after(old: Position | None) -> str:
    if old is None:
        return "an insert at (queued, queued)"
    targets = sorted(successors(old), key=lambda p: (p.stage != old.stage, p.state.value))
    if not targets:
        return f"no change: {_where(old.stage, old.state)} is final"
    return "one of " + ", ".join(_where(p.stage, p.state) for p in targets)


def _retry_count_plus_one(change: JobChange) -> bool:
    return (
        change.old_retry_count is not None and change.new_retry_count == change.old_retry_count + 1
    )


def _moves(change: JobChange) -> bool:
    """The row changed stage, state, owner or hold (what ``JobChange.moved`` says, by name)."""
    return (change.old_stage, change.old_state, change.old_owner, change.old_held_for) != (
        change.new_stage,
        change.new_state,
        change.new_owner,
        change.new_held_for,
    )


def _lease_after_at(change: JobChange) -> bool:
    return (
        change.new_lease_expires_at is not None
        and change.at is not None
        and change.new_lease_expires_at > change.at
    )


def _kind(change: JobChange) -> TransitionKind | None:
    """The transition explaining ``change``, telling a claim of one's own dead lease apart.

    ``JobChange.kind`` calls a working row that keeps its owner a renewal. But the claim
    does not skip the claimer's own rows: a worker whose step lost its lease, claiming
    again, takes the same job back under the same name. Such a take-over counts an
    attempt (retry_count + 1) on an expired lease; a renewal does neither.
    """
    kind = change.kind
    if kind is TransitionKind.RENEW and not lease_live(change) and _retry_count_plus_one(change):
        return TransitionKind.RECLAIM
    return kind


def _take_over(change: JobChange, kind: TransitionKind | None, limit: int) -> bool:
    """An expired lease taken over by a claim: a reclaim, or its dead-letter past the limit."""
    if lease_live(change):
        return False
    if kind is TransitionKind.RECLAIM:
        return change.new_owner == change.actor and _lease_after_at(change)
    return (
        kind is TransitionKind.FAIL_PERMANENT
        and change.old_retry_count is not None
        and change.old_retry_count >= limit
        and change.new_owner is None
    )


# -- invariants ----------------------------------------------------------------------


def transitions(observation: Observation, expectations: Expectations) -> list[Violation]:
    """Every new audit row is an allowed lifecycle transition with its guards.

    Why: stages never go backwards or skip, terminal ``done`` never changes, and no job
    row is deleted; a change no row of ``lifecycle.TRANSITIONS`` explains is how a
    skipped step or a lost job first shows. The guards checked here are those that do
    not depend on who holds the lease (that is :func:`fencing`): a create is
    (queued, queued) with no retries, by a non-worker; a claim takes a claimable row that
    is due, naming the actor as owner with a lease after the change; a reclaim and a
    transient failure count exactly one attempt; operator retries and webhooks come from
    outside the workers, and an operator retry resets the count; a working row keeps an
    owner and a lease; a transient failure waits at least its backoff. Updates that move
    nothing (counters, details) are allowed, except on a done row.
    """
    found: list[Violation] = []
    retry = expectations.config.retry
    workers = expectations.workers

    def fail(change: JobChange, problem: str, expected: str, observed: str) -> None:
        found.append(
            Violation(
                "transitions",
                f"{change.describe()}: {problem}",
                job_id=change.job_id,
                document_id=change.document_id,
                expected=expected,
                observed=observed,
            )
        )

    for change in observation.changes:
        moved_to = _where(change.new_stage, change.new_state)
        if change.operation == "DELETE":
            fail(change, "a job row was deleted", "job rows are never deleted", "DELETE")
            continue
        kind = _kind(change)
        if kind is None:
            # Compared by name: building positions for every change would double the cost.
            if change.operation == "UPDATE" and not _moves(change):
                if change.old_state == State.DONE.value:
                    fail(change, "a done job was written", "done never changes", moved_to)
                # Otherwise an update that moves nothing (counters, details): allowed.
                continue
            fail(
                change,
                "no allowed transition explains this change",
                _allowed_after(change.old),
                moved_to,
            )
            continue
        if change.new_state == _WORKING and (
            change.new_owner is None or change.new_lease_expires_at is None
        ):
            fail(
                change,
                "a working row lost its owner or lease",
                "a working row with an owner and a lease",
                f"owner {change.new_owner!r}, lease {_time(change.new_lease_expires_at)}",
            )
        if kind is TransitionKind.CREATE:
            if change.new_retry_count != 0:
                fail(
                    change,
                    "a job was created with retries already counted",
                    "retry_count 0",
                    f"retry_count {change.new_retry_count}",
                )
            if change.actor in workers:
                fail(
                    change,
                    "a worker created a job",
                    "jobs created by uploads, not by workers",
                    f"created by worker {change.actor!r}",
                )
        elif kind is TransitionKind.CLAIM:
            if not is_claim_due(change):
                fail(
                    change,
                    "a job was claimed before it was due",
                    f"claimable at or after {_time(change.old_next_attempt_at)}",
                    f"claimed at {_time(change.at)}",
                )
            if change.new_owner != change.actor or not _lease_after_at(change):
                fail(
                    change,
                    "a claim must name its claimer as owner with a lease after the claim",
                    f"owner {change.actor!r}, lease after {_time(change.at)}",
                    f"owner {change.new_owner!r}, lease {_time(change.new_lease_expires_at)}",
                )
        elif kind in (TransitionKind.RECLAIM, TransitionKind.FAIL_TRANSIENT):
            if not _retry_count_plus_one(change):
                fail(
                    change,
                    f"a {kind.value} must count exactly one attempt",
                    f"retry_count {change.old_retry_count} + 1",
                    f"retry_count {change.new_retry_count}",
                )
            backoff = timedelta(seconds=retry.backoff_seconds(change.old_retry_count or 0))
            if (
                kind is TransitionKind.FAIL_TRANSIENT
                and change.at is not None
                and (
                    change.new_next_attempt_at is None
                    or change.new_next_attempt_at < change.at + backoff
                )
            ):
                fail(
                    change,
                    "a transient failure must wait out its backoff before the next attempt",
                    f"next attempt at or after {_time(change.at + backoff)}",
                    f"next attempt at {_time(change.new_next_attempt_at)}",
                )
            if kind is TransitionKind.RECLAIM and (
                change.new_owner != change.actor or not _lease_after_at(change)
            ):
                fail(
                    change,
                    "a reclaim must name its claimer as owner with a lease after the claim",
                    f"owner {change.actor!r}, lease after {_time(change.at)}",
                    f"owner {change.new_owner!r}, lease {_time(change.new_lease_expires_at)}",
                )
        elif kind is TransitionKind.RENEW:
            if change.new_retry_count != change.old_retry_count:
                fail(
                    change,
                    "a lease renewal changed the retry count",
                    f"retry_count {change.old_retry_count}",
                    f"retry_count {change.new_retry_count}",
                )
        elif kind in (TransitionKind.OPERATOR_RETRY, TransitionKind.WEBHOOK):
            if change.actor in workers:
                what = "an operator retry" if kind is TransitionKind.OPERATOR_RETRY else "a webhook"
                fail(
                    change,
                    f"a worker performed {what}, which only the API may",
                    "an actor outside the workers (the API)",
                    f"worker {change.actor!r}",
                )
            if kind is TransitionKind.OPERATOR_RETRY and change.new_retry_count != 0:
                fail(
                    change,
                    "an operator retry must start a fresh retry budget",
                    "retry_count 0",
                    f"retry_count {change.new_retry_count}",
                )
        elif kind is TransitionKind.HOLD:
            if change.actor != change.old_owner or change.new_retry_count != change.old_retry_count:
                fail(
                    change,
                    "a budget hold must be made by the job's owner and count no attempt",
                    f"by {change.old_owner!r}, retry_count {change.old_retry_count}",
                    f"by {change.actor!r}, retry_count {change.new_retry_count}",
                )
        elif kind is TransitionKind.RELEASE and change.actor in workers:
            fail(
                change,
                "a worker released a budget hold, which only an operator may",
                "an actor outside the workers (the budget command or the API)",
                f"worker {change.actor!r}",
            )
    return found


def fencing(observation: Observation, expectations: Expectations) -> list[Violation]:
    """No worker changes a job row it does not hold.

    Why: the lease is the only thing that keeps two workers off one job; a write by a
    worker whose lease expired (or moved to another owner) is the zombie write that
    duplicates or corrupts work. For every change by a worker to a working row, the
    actor must be the old owner with a lease still live at the change's time, unless it
    takes over an expired lease through a claim (a reclaim, or the claim's dead-letter
    of a job past its retry limit). A claimable row a worker may only claim; a done or
    dead-lettered row a worker never writes. Changes by other actors (the API's webhook
    and operator retry) are not fenced.
    """
    found: list[Violation] = []
    limit = expectations.config.retry.limit
    for change in observation.changes:
        if change.actor not in expectations.workers or change.operation == "INSERT":
            continue
        actor, owner = change.actor, change.old_owner
        if change.old_state == _WORKING:
            live = lease_live(change)
            if actor == owner and live:
                continue
            if _take_over(change, _kind(change), limit):
                continue
            lease = f"lease of {owner!r} until {_time(change.old_lease_expires_at)}"
            if actor == owner:
                problem = "a worker committed after its lease expired"
                expected = f"a lease live at {_time(change.at)}"
            elif live:
                problem = "a worker changed a job another worker holds"
                expected = f"changes only by the owner {owner!r}"
            else:
                problem = "a worker moved a job whose lease expired without claiming it"
                expected = f"a claim by {actor!r} first (a reclaim)"
            observed = f"{actor!r} at {_time(change.at)}, {lease}"
        elif change.old_state in _CLAIMABLE:
            if change.new_state == _WORKING and change.new_owner == actor:
                continue
            problem = "a worker wrote a job it does not hold"
            expected = f"only a claim of a {change.old_state} job"
            observed = f"{_where(change.new_stage, change.new_state)} by {actor!r}"
        else:
            problem = "a worker wrote a job it never claimed"
            expected = f"no worker writes a {change.old_state} job"
            observed = f"{_where(change.new_stage, change.new_state)} by {actor!r}"
        found.append(
            Violation(
                "fencing",
                f"{change.describe()}: {problem}",
                job_id=change.job_id,
                document_id=change.document_id,
                expected=expected,
                observed=observed,
            )
        )
    return found


def no_loss(observation: Observation, expectations: Expectations) -> list[Violation]:
    """Every accepted upload has its document row, exactly one job and its raw blob.

    Why: an upload the API acknowledged is a promise; a document without a job is never
    processed, and a job without its blob can only fail. Any document row without a job
    is lost too, acknowledged or not (an upload cut half-way): nothing will process it,
    and the user's retry of the same bytes finds the document and no job.
    """
    found: list[Violation] = []
    documents = observation.snapshot.documents
    jobs = observation._rows.jobs
    for document_id in sorted(set(documents) - set(expectations.outcomes)):
        if not jobs.get(document_id):
            found.append(
                Violation(
                    "no_loss",
                    "a document row has no job: nothing will ever process it",
                    document_id=document_id,
                    expected="1 job",
                    observed="0 jobs",
                )
            )
    for document_id in sorted(expectations.outcomes):
        document = documents.get(document_id)
        if document is None:
            found.append(
                Violation(
                    "no_loss",
                    "an accepted upload has no document row",
                    document_id=document_id,
                    expected="a document row",
                    observed="none",
                )
            )
            continue
        its_jobs = jobs.get(document_id, [])
        if len(its_jobs) != 1:
            found.append(
                Violation(
                    "no_loss",
                    "an accepted upload must have exactly one job",
                    document_id=document_id,
                    expected="1 job",
                    observed=f"{len(its_jobs)} jobs"
                    + "".join(f", {job.job_id} ({job.stage}, {job.state})" for job in its_jobs),
                )
            )
        if document.raw_blob_key not in observation.blobs:
            found.append(
                Violation(
                    "no_loss",
                    "an accepted upload's raw blob is missing from storage",
                    document_id=document_id,
                    expected=f"blob {document.raw_blob_key!r}",
                    observed="no such blob",
                )
            )
    return found


def no_duplicates(observation: Observation, expectations: Expectations) -> list[Violation]:
    """Nothing that must be unique exists twice.

    Why: a second live job processes a document twice; a second document for the same
    user and bytes breaks upload dedupe; duplicate buffer or final rows mean a retried
    batch was not idempotent; a job finalized twice promoted its buffers twice. Checked:
    one live job per document; one document per (user_id, file_sha256); chunk-buffer
    rows unique per (document, ordinal) and per chunk id; vector-buffer rows unique per
    chunk; final chunks unique per (document, ordinal) and per chunk id; at most one
    finalize per job in the whole history.
    """
    found: list[Violation] = []
    snapshot = observation.snapshot

    def duplicated(what: str, key: object, count: int, **ids: uuid.UUID | None) -> None:
        found.append(
            Violation(
                "no_duplicates",
                f"{what} {key} exists {count} times",
                expected="1",
                observed=str(count),
                **ids,
            )
        )

    for document_id, jobs in sorted(observation._rows.jobs.items()):
        live = [job for job in jobs if job.state in LIVE_STATES]
        if len(live) > 1:
            found.append(
                Violation(
                    "no_duplicates",
                    "a document has more than one live job: "
                    + ", ".join(f"{job.job_id} ({job.stage}, {job.state})" for job in live),
                    document_id=document_id,
                    expected="at most 1 live job",
                    observed=f"{len(live)} live jobs",
                )
            )
    owners: defaultdict[tuple[uuid.UUID, str], list[DocumentRow]] = defaultdict(list)
    for document in snapshot.documents.values():
        owners[document.user_id, document.file_sha256].append(document)
    for (user_id, sha), same in sorted(owners.items()):
        if len(same) > 1:
            found.append(
                Violation(
                    "no_duplicates",
                    f"user {user_id} has {len(same)} documents for the same bytes "
                    f"(sha256 {sha[:12]}): " + ", ".join(str(d.document_id) for d in same),
                    document_id=same[0].document_id,
                    expected="1 document per user and content",
                    observed=f"{len(same)} documents",
                )
            )
    for table, rows in (
        ("chunk-buffer row", snapshot.chunk_buffer),
        ("final chunk", snapshot.final_chunks),
    ):
        by_ordinal = Counter((row.document_id, row.chunk_ord) for row in rows)
        for (document_id, ordinal), count in sorted(by_ordinal.items()):
            if count > 1:
                duplicated(f"{table} at ordinal", ordinal, count, document_id=document_id)
        by_id = Counter(row.chunk_id for row in rows)
        documents = {row.chunk_id: row.document_id for row in rows}
        for chunk_id, count in sorted(by_id.items()):
            if count > 1:
                duplicated(f"{table} id", chunk_id, count, document_id=documents[chunk_id])
    vectors = Counter(row.chunk_id for row in snapshot.vector_buffer)
    vector_documents = {row.chunk_id: row.document_id for row in snapshot.vector_buffer}
    for chunk_id, count in sorted(vectors.items()):
        if count > 1:
            duplicated(
                "vector-buffer row for chunk",
                chunk_id,
                count,
                document_id=vector_documents[chunk_id],
            )
    # The finalize test is on raw fields: computing each change's kind over the whole
    # history at every step would dominate the check's cost.
    finalized: Counter[uuid.UUID] = Counter()
    documents_of: dict[uuid.UUID, uuid.UUID] = {}
    for change in observation.history:
        if (
            change.old_state == _WORKING
            and change.new_state == State.DONE.value
            and change.operation == "UPDATE"
        ):
            finalized[change.job_id] += 1
            documents_of[change.job_id] = change.document_id
    for job_id, count in sorted(finalized.items()):
        if count > 1:
            found.append(
                Violation(
                    "no_duplicates",
                    f"a job was finalized {count} times",
                    job_id=job_id,
                    document_id=documents_of[job_id],
                    expected="at most 1 finalize",
                    observed=f"{count} finalizes",
                )
            )
    return found


def buffers(observation: Observation, expectations: Expectations) -> list[Violation]:
    """Buffers hold exactly a prefix of the planned chunks, and the right vectors.

    Why: chunks and vectors are written in batches across crashes and retries; the only
    correct partial state is the first n planned chunks (deterministic ids, hashes and
    text), with vectors only for chunks that are buffered, each equal to the expected
    embedding. A document whose job is done has empty buffers (finalize cleared them);
    a document the model expects to dead-letter plans no chunks and never has buffer
    rows.
    """
    found: list[Violation] = []
    rows = observation._rows
    for document_id in sorted(rows.chunk_buffer.keys() | rows.vector_buffer.keys()):
        chunks = rows.chunk_buffer.get(document_id, [])
        vectors = rows.vector_buffer.get(document_id, [])
        job = _job_of(rows, document_id)
        if rows.done(document_id):
            found.append(
                Violation(
                    "buffers",
                    "a done document still has buffer rows",
                    job_id=job,
                    document_id=document_id,
                    expected="empty buffers",
                    observed=f"{len(chunks)} chunk rows, {len(vectors)} vector rows",
                )
            )
            continue
        planned = expectations.planned(document_id)
        if not planned:
            found.append(
                Violation(
                    "buffers",
                    "a document the model plans no chunks for has buffer rows",
                    job_id=job,
                    document_id=document_id,
                    expected="no buffer rows (the model expects "
                    f"{expectations.outcomes.get(document_id)!r})",
                    observed=f"{len(chunks)} chunk rows, {len(vectors)} vector rows",
                )
            )
            continue
        for index, row in enumerate(chunks):
            problem = _chunk_problem(row, index, planned)
            if problem is not None:
                expected, observed = problem
                found.append(
                    Violation(
                        "buffers",
                        f"the chunk buffer is not a prefix of the planned chunks at row {index}",
                        job_id=job,
                        document_id=document_id,
                        expected=expected,
                        observed=observed,
                    )
                )
                break  # later rows are off by the same mistake; the first one explains it
        ordinals = {row.chunk_id: row.chunk_ord for row in chunks}
        for vector in vectors:
            ordinal = ordinals.get(vector.chunk_id)
            if ordinal is None:
                found.append(
                    Violation(
                        "buffers",
                        f"a vector for chunk {vector.chunk_id}, which is not buffered",
                        job_id=job,
                        document_id=document_id,
                        expected="vectors only for buffered chunks",
                        observed=f"vector for unbuffered chunk {vector.chunk_id}",
                    )
                )
                continue
            if ordinal >= len(planned) or planned[ordinal].chunk_id != vector.chunk_id:
                continue  # the chunk row itself is wrong, reported above
            want = planned[ordinal]
            if vector.vector != want.vector or vector.vector_sha != want.vector_sha:
                found.append(
                    Violation(
                        "buffers",
                        f"the vector of chunk {ordinal} differs from the expected embedding",
                        job_id=job,
                        document_id=document_id,
                        expected=f"vector_sha {want.vector_sha[:16]}, {_vector_text(want.vector)}",
                        observed=f"vector_sha {vector.vector_sha[:16]}, "
                        f"{_vector_text(vector.vector)}",
                    )
                )
    return found


def progress(observation: Observation, expectations: Expectations) -> list[Violation]:
    """A live job's counters equal its buffers' row counts and the model's plan.

    Why: the worker resumes from its counters; a counter ahead of the buffer skips
    chunks, one behind repeats them. For every job not done: chunks_done equals the
    document's chunk-buffer rows, embeddings_done its vector-buffer rows, and
    chunks_total, once set, the number of chunks the model plans.
    """
    found: list[Violation] = []
    rows = observation._rows
    for job in sorted(observation.snapshot.jobs.values(), key=lambda j: j.job_id):
        if job.state is State.DONE:
            continue
        document_id = job.document_id
        counts = (
            ("chunks_done", job.chunks_done, len(rows.chunk_buffer.get(document_id, ()))),
            (
                "embeddings_done",
                job.embeddings_done,
                len(rows.vector_buffer.get(document_id, ())),
            ),
        )
        for name, counter, buffered in counts:
            if counter != buffered:
                table = "chunk" if name == "chunks_done" else "vector"
                found.append(
                    Violation(
                        "progress",
                        f"{name} differs from the {table} buffer's row count",
                        job_id=job.job_id,
                        document_id=document_id,
                        expected=f"{name} {buffered}",
                        observed=f"{name} {counter}",
                    )
                )
        if job.chunks_total is not None:
            planned = len(expectations.planned(document_id))
            if job.chunks_total != planned:
                found.append(
                    Violation(
                        "progress",
                        "chunks_total differs from the number of chunks the model plans",
                        job_id=job.job_id,
                        document_id=document_id,
                        expected=f"chunks_total {planned}",
                        observed=f"chunks_total {job.chunks_total}",
                    )
                )
    return found


def retries(observation: Observation, expectations: Expectations) -> list[Violation]:
    """retry_count never exceeds the limit, and a dead letter says why.

    Why: a count above the limit means a failing job kept being retried (a crash loop
    that never ends); a dead-lettered job without ``last_error`` is a silent failure.
    Checked in the snapshot and in every new audit row, so a count that went over and
    came back is caught too.
    """
    found: list[Violation] = []
    limit = expectations.config.retry.limit
    for job in sorted(observation.snapshot.jobs.values(), key=lambda j: j.job_id):
        if job.retry_count > limit:
            found.append(
                Violation(
                    "retries",
                    "retry_count is above the retry limit",
                    job_id=job.job_id,
                    document_id=job.document_id,
                    expected=f"retry_count <= {limit}",
                    observed=f"retry_count {job.retry_count} at ({job.stage}, {job.state})",
                )
            )
        if job.state is State.DEADLETTER and not (job.last_error or "").strip():
            found.append(
                Violation(
                    "retries",
                    "a dead-lettered job has no last_error",
                    job_id=job.job_id,
                    document_id=job.document_id,
                    expected="a non-empty last_error",
                    observed=f"last_error {job.last_error!r}",
                )
            )
    for change in observation.changes:
        if change.new_retry_count is not None and change.new_retry_count > limit:
            found.append(
                Violation(
                    "retries",
                    f"{change.describe()}: retry_count went above the retry limit",
                    job_id=change.job_id,
                    document_id=change.document_id,
                    expected=f"retry_count <= {limit}",
                    observed=f"retry_count {change.new_retry_count}",
                )
            )
    return found


def finalize(observation: Observation, expectations: Expectations) -> list[Violation]:
    """Final rows exist only for done jobs, and a done job's rows are exactly the model's.

    Why: "done with empty buffers" and "complete with the wrong chunks" are the silent
    failures this library exists to catch. Final chunks (``document_chunks``) belong
    only to documents whose job is done; a done job's final rows equal the predicted
    chunks exactly (ids, ordinals, text, chunk_sha, vector_sha, vector values); its
    document is ``complete`` with chunk_count their number; and a document is
    ``complete`` only if its job is done.
    """
    found: list[Violation] = []
    rows = observation._rows
    documents = observation.snapshot.documents
    for document_id, finals in sorted(rows.final_chunks.items()):
        if not rows.done(document_id):
            found.append(
                Violation(
                    "finalize",
                    "final chunk rows exist for a document whose job is not done",
                    job_id=_job_of(rows, document_id),
                    document_id=document_id,
                    expected="no final rows before finalize",
                    observed=f"{len(finals)} final rows, job at {_job_position(rows, document_id)}",
                )
            )
    for job in sorted(observation.snapshot.jobs.values(), key=lambda j: j.job_id):
        if job.state is not State.DONE:
            continue
        document_id = job.document_id
        finals = rows.final_chunks.get(document_id, [])
        planned = expectations.planned(document_id)
        difference = _final_difference(finals, planned)
        if difference is not None:
            expected, observed = difference
            found.append(
                Violation(
                    "finalize",
                    "a done job's final chunks differ from the model's",
                    job_id=job.job_id,
                    document_id=document_id,
                    expected=expected,
                    observed=observed,
                )
            )
        document = documents.get(document_id)
        status = None if document is None else (document.status, document.chunk_count)
        if status != (_COMPLETE, len(finals)):
            found.append(
                Violation(
                    "finalize",
                    "a done job's document is not complete with its chunk count",
                    job_id=job.job_id,
                    document_id=document_id,
                    expected=f"status {_COMPLETE!r}, chunk_count {len(finals)}",
                    observed="no document row"
                    if status is None
                    else f"status {status[0]!r}, chunk_count {status[1]}",
                )
            )
    for document_id, document in sorted(documents.items()):
        if document.status == _COMPLETE and not rows.done(document_id):
            found.append(
                Violation(
                    "finalize",
                    "a document is complete but its job is not done",
                    job_id=_job_of(rows, document_id),
                    document_id=document_id,
                    expected="complete only with a done job",
                    observed=f"job at {_job_position(rows, document_id)}",
                )
            )
    return found


def cost(observation: Observation, expectations: Expectations) -> list[Violation]:
    """External calls per chunk are bounded: a crash may repeat one batch, not all.

    Why: a pipeline that restarts a document's embedding from scratch after every
    failure passes every correctness check and still multiplies the bill. For each
    document, the texts sent to the embeddings service are at most its planned chunks
    plus one micro-batch per interruption of an embedding step. An interruption is a
    change of the document's job from (embedding, working) to retryable or dead-letter,
    a take-over of the lease (another owner, or the same one counting an attempt), or a
    requeue that recorded no progress: embeddings_done no higher than when the step was
    claimed. (A worker may write its counters and its requeue in separate statements of
    one transaction, so the requeue's own audit row does not show the progress.) A
    document with no planned chunks is never sent.
    """
    found: list[Violation] = []
    inputs = observation.embedding_inputs
    if not inputs:
        return found
    batch = expectations.config.embed_batch_size
    interruptions: Counter[uuid.UUID] = Counter()
    claimed_at: dict[uuid.UUID, int | None] = {}  # embeddings_done when the step was claimed
    for change in observation.history:
        if change.document_id not in inputs:
            continue
        if (
            change.old_stage == _EMBEDDING
            and change.old_state == _WORKING
            and _interrupts(change, claimed_at.get(change.job_id, change.old_embeddings_done))
        ):
            interruptions[change.document_id] += 1
        if change.new_state == _WORKING and (
            change.old_state != _WORKING
            or change.new_owner != change.old_owner
            or _retry_count_plus_one(change)
        ):
            claimed_at[change.job_id] = change.new_embeddings_done
    for document_id, sent in sorted(inputs.items()):
        planned = len(expectations.planned(document_id))
        if planned == 0:
            bound = 0
            why = "none: the model plans no chunks for it"
        else:
            bound = planned + batch * interruptions[document_id]
            why = (
                f"at most {bound} = {planned} planned + {batch} per batch "
                f"x {interruptions[document_id]} interruptions"
            )
        if sent > bound:
            found.append(
                Violation(
                    "cost",
                    "more texts were sent to the embeddings service than a crash explains",
                    job_id=_job_of(observation._rows, document_id),
                    document_id=document_id,
                    expected=why,
                    observed=f"{sent} texts sent",
                )
            )
    found.extend(_committed_embeddings_sent_again(observation, expectations))
    return found


def _committed_embeddings_sent_again(
    observation: Observation, expectations: Expectations
) -> list[Violation]:
    """Texts sent since the last check whose vectors the job had already committed.

    A crash may repeat the batch in flight, never one whose progress was recorded: a
    chunk below the job's embeddings_done (as it stood before this check's changes) is
    paid for twice if it is sent again by a worker that holds the job.

    One resend is waste no worker can rule out: a worker that pauses between its last
    lease check and its request for longer than its lease sends that request after
    another worker has taken the job over and committed the same batch. Such a zombie
    commits nothing (fencing) and its call is settled by the take-over (billing), and
    the take-over counts as an interruption in :func:`cost`'s bound, so the waste is one
    batch per lost lease. A send is a zombie's when it continued a claim made in an
    earlier step and, before this check's changes, the job's last change left it out
    of the sender's hands.
    """
    found: list[Violation] = []
    if not observation.embedded_texts:
        return found
    done_before: dict[uuid.UUID, int] = {}
    last_before: dict[uuid.UUID, JobChange] = {}
    earlier = len(observation.history) - len(observation.changes)
    for change in observation.history[:earlier]:
        last_before[change.document_id] = change
        if change.new_embeddings_done is not None:
            done_before[change.document_id] = change.new_embeddings_done
    for sent in observation.embedded_texts:
        document_id = sent.document_id
        last = last_before.get(document_id)
        if (
            sent.continued
            and sent.sender is not None
            and last is not None
            and not (last.new_state == _WORKING and last.new_owner == sent.sender)
        ):
            continue  # a zombie's one late batch: bounded by cost's interruption count
        done = done_before.get(document_id, 0)
        # A text may repeat within a document: it counts as committed only if every
        # chunk carrying it is below the mark.
        last_ordinal: dict[str, int] = {}
        for chunk in expectations.planned(document_id):
            last_ordinal[chunk.text] = max(chunk.ordinal, last_ordinal.get(chunk.text, -1))
        again = sorted(
            {last_ordinal[text] for text in sent.texts if last_ordinal.get(text, done) < done}
        )
        if again:
            by = f"{sent.sender} (holding the job)" if sent.sender is not None else "a worker"
            found.append(
                Violation(
                    "cost",
                    "chunks whose vectors were already committed were sent to the "
                    "embeddings service again",
                    job_id=_job_of(observation._rows, document_id),
                    document_id=document_id,
                    expected=f"only chunks from ordinal {done} on (embeddings_done {done})",
                    observed=f"{by} sent ordinals {again} again",
                )
            )
    return found


_SETTLED_AT_ESTIMATE = frozenset({"counting", "unconfirmed"})
_UNCERTAIN = frozenset({"in_flight", "counting", "unconfirmed"})


def billing(observation: Observation, expectations: Expectations) -> list[Violation]:
    """The ledger of billed calls is the run's bill, and the budget is the ledger's sums.

    Why: a tool that runs real services under a cap must neither lose money from its
    record nor let a crash eat the budget. Checked on the ledger and the budget rows:

    * every settled call costs what its usage costs at the configured prices (the one
      function the budget reserves with); a call settled at its estimate (``counting``,
      ``unconfirmed``) costs exactly the estimate; a refused one nothing;
    * a call in flight belongs to the job's current hold: its job is working and owned
      by the caller. Otherwise its worker is gone and nothing will ever settle it: its
      reservation leaks, and the budget shrinks with every crash;
    * each budget's reserved sum is its calls in flight, its spent sum its settled calls;
    * the budget holds: spent and reserved stay within the limit, but for what counted
      parses cost above their estimates (the parser bills pages it counts later);
    * the services billed at least every page and token the ledger confirms, and, when
      no call is uncertain (in flight, uncounted, unanswered), exactly those.
    """
    found: list[Violation] = []
    snapshot = observation.snapshot
    config = expectations.config
    jobs = snapshot.jobs
    reserved: defaultdict[str, Decimal] = defaultdict(Decimal)
    spent: defaultdict[str, Decimal] = defaultdict(Decimal)
    overrun: defaultdict[str, Decimal] = defaultdict(Decimal)
    confirmed: dict[str, Usage] = defaultdict(Usage)
    uncertain: set[str] = set()
    for call in snapshot.billed_calls:
        usage = Usage(pages=call.pages, tokens=call.tokens)
        where = f"{call.service} call {call.call_id} ({call.outcome})"
        if call.outcome == "in_flight":
            job = jobs.get(call.job_id)
            if job is None or job.state is not State.WORKING or job.owner != call.caller:
                held = "gone" if job is None else _where(job.stage.value, job.state.value)
                found.append(
                    Violation(
                        "billing",
                        f"{where} is still in flight, but its worker no longer holds the job: "
                        "its reservation is never released",
                        job_id=call.job_id,
                        document_id=job.document_id if job is not None else None,
                        expected=f"the job working under {call.caller!r}, or the call settled",
                        observed=f"job {held}, owner {job.owner if job else None!r}",
                    )
                )
        else:
            priced = config.prices.price(usage, embed_model=config.embed_model)
            if call.outcome == "not_billed":
                should = Decimal(0)
            elif call.outcome in _SETTLED_AT_ESTIMATE:
                should = call.estimated_usd
            else:
                should = priced
            if call.cost_usd != should or (call.outcome == "counting" and priced != should):
                found.append(
                    Violation(
                        "billing",
                        f"{where} is recorded at the wrong cost",
                        job_id=call.job_id,
                        expected=f"{should} USD ({usage.pages} pages, {usage.tokens} tokens, "
                        f"estimate {call.estimated_usd})",
                        observed=f"{call.cost_usd} USD",
                    )
                )
        if call.outcome in _UNCERTAIN:
            uncertain.add(call.service)
        elif call.outcome == "billed":
            confirmed[call.service] += usage
        if call.budget_id is None:
            continue
        if call.cost_usd is None:
            reserved[call.budget_id] += call.estimated_usd
        else:
            spent[call.budget_id] += call.cost_usd
            overrun[call.budget_id] += max(Decimal(0), call.cost_usd - call.estimated_usd)
    for budget in snapshot.budgets.values():
        name = budget.budget_id
        if (budget.reserved_usd, budget.spent_usd) != (reserved[name], spent[name]):
            found.append(
                Violation(
                    "billing",
                    f"budget {name!r} does not add up to its calls",
                    expected=f"reserved {reserved[name]} (calls in flight), "
                    f"spent {spent[name]} (settled calls)",
                    observed=f"reserved {budget.reserved_usd}, spent {budget.spent_usd}",
                )
            )
        ceiling = budget.limit_usd + overrun[name]
        if budget.spent_usd + budget.reserved_usd > ceiling:
            found.append(
                Violation(
                    "billing",
                    f"budget {name!r} was overspent",
                    expected=f"spent + reserved <= {ceiling} (limit {budget.limit_usd}"
                    f" + {overrun[name]} counted above estimates)",
                    observed=f"spent {budget.spent_usd} + reserved {budget.reserved_usd}",
                )
            )
    if observation.services_billed is None:
        return found
    for service, bill in sorted(observation.services_billed.items()):
        ours = confirmed.get(service, Usage())
        if ours.pages > bill.pages or ours.tokens > bill.tokens:
            problem = "the ledger confirms more than the service billed"
        elif service not in uncertain and ours != bill:
            problem = "the service billed calls the ledger does not record"
        else:
            continue
        found.append(
            Violation(
                "billing",
                f"{service}: {problem}",
                expected=f"{bill.pages} pages, {bill.tokens} tokens (the service's bill)",
                observed=f"{ours.pages} pages, {ours.tokens} tokens confirmed in the ledger",
            )
        )
    return found


def claims_skip_locks(observation: Observation, expectations: Expectations) -> list[Violation]:
    """A claim never waits on a row lock.

    Why: a locked job row is someone's (a claimer half-way through, an operator's or a
    report's transaction), so a claim must pass it by and take another job, or none. A
    claim that waits (FOR UPDATE without SKIP LOCKED, or no lock at all, so the UPDATE
    waits) queues every worker behind one slow transaction: the stuck-workers outage,
    and under real concurrency the double claim. The scheduler sees the wait in
    pg_stat_activity while the worker is inside its claim; the driver reports it here.
    """
    return [
        Violation(
            "claims_skip_locks",
            f"{worker}'s claim waited on a row lock another session holds",
            job_id=job_id,
            expected="a claim skips locked rows (FOR UPDATE SKIP LOCKED)",
            observed=f"{worker} blocked inside its claim query",
        )
        for worker, job_id in observation.waiting_claims.items()
    ]


def leases_cover_calls(observation: Observation, expectations: Expectations) -> list[Violation]:
    """A worker about to call an external service holds a full lease from that moment.

    Why: a call (a parse, a batch of embeddings) can take longer than what is left of
    the lease taken at the claim. Unless the lease is renewed before the call (and kept
    renewed during it), it expires under a worker that is still working, a second
    worker reclaims the job and runs the same stage: the same document parsed and
    embedded twice, paid twice. Fencing keeps the tables right, so no other invariant
    sees it; the bill does.
    """
    violations = []
    length = timedelta(seconds=expectations.config.lease_seconds)
    for worker, (job_id, at) in observation.calls_started.items():
        job = observation.snapshot.jobs.get(job_id)
        if job is None or job.owner != worker or job.state is not State.WORKING:
            continue  # no longer its job: fencing and transitions judge what happened
        lease = job.lease_expires_at
        if lease is None or lease < at + length - _CLOCK_SLACK:
            violations.append(
                Violation(
                    "leases_cover_calls",
                    f"{worker} started an external call without renewing its lease",
                    job_id=job_id,
                    expected=f"lease until at least {_time(at + length)}",
                    observed=f"lease until {_time(lease)}",
                )
            )
    return violations


INVARIANTS: dict[str, Invariant] = {
    "transitions": transitions,
    "claims_skip_locks": claims_skip_locks,
    "leases_cover_calls": leases_cover_calls,
    "fencing": fencing,
    "no_loss": no_loss,
    "no_duplicates": no_duplicates,
    "buffers": buffers,
    "progress": progress,
    "retries": retries,
    "finalize": finalize,
    "cost": cost,
    "billing": billing,
}
"""The invariants :func:`check` runs after every step, by name (all but liveness)."""


def check(
    observation: Observation,
    expectations: Expectations,
    *,
    names: Iterable[str] | None = None,
) -> list[Violation]:
    """Every violation of the named invariants (all of :data:`INVARIANTS` by default).

    >>> empty = Observation(Snapshot(), (), (), frozenset(), {})
    >>> check(empty, Expectations({}, frozenset(), WorkerConfig()), names=["no_loss"])
    []
    >>> check(empty, Expectations({}, frozenset(), WorkerConfig()), names=["nope"])
    Traceback (most recent call last):
    ...
    ValueError: unknown invariant 'nope'; the invariants are billing, buffers, claims_skip_locks, cost, fencing, finalize, leases_cover_calls, no_duplicates, no_loss, progress, retries, transitions (liveness runs at the drain: call liveness(snapshot, expectations))
    """  # noqa: E501
    selected = list(INVARIANTS) if names is None else list(names)
    for name in selected:
        if name not in INVARIANTS:
            raise ValueError(
                f"unknown invariant {name!r}; the invariants are {', '.join(sorted(INVARIANTS))}"
                " (liveness runs at the drain: call liveness(snapshot, expectations))"
            )
    found: list[Violation] = []
    for name in selected:
        found.extend(INVARIANTS[name](observation, expectations))
    return found


def assert_invariants(
    observation: Observation,
    expectations: Expectations,
    *,
    names: Iterable[str] | None = None,
) -> None:
    """Raise :class:`InvariantViolation` listing every violation :func:`check` finds.

    >>> assert_invariants(Observation(Snapshot(), (), (), frozenset(), {}),
    ...                   Expectations({}, frozenset(), WorkerConfig()))
    """
    found = check(observation, expectations, names=names)
    if found:
        raise InvariantViolation(found)


def liveness(snapshot: Snapshot, expectations: Expectations) -> list[Violation]:
    """At the drain: every document ended exactly as the model predicts.

    Why: safety checks pass on a pipeline that does nothing; after faults heal and time
    advances, every job must be done with the predicted chunks and vectors, or
    dead-lettered where the model says, with ``last_error``. The findings are
    :func:`pipeline_models.model.discrepancies`, one :class:`Violation` each.

    >>> liveness(Snapshot(), Expectations({}, frozenset(), WorkerConfig()))
    []
    """
    found: list[Violation] = []
    rows = _Rows.of(snapshot)
    outcomes = expectations.outcomes
    # discrepancies() runs per document on that document's rows, so each finding comes
    # back already attached to its document and job.
    for document_id in sorted(snapshot.documents.keys() | outcomes.keys()):
        outcome = outcomes.get(document_id)
        document = snapshot.documents.get(document_id)
        jobs = rows.jobs.get(document_id, [])
        part = Snapshot(
            documents={} if document is None else {document_id: document},
            jobs={job.job_id: job for job in jobs},
            chunk_buffer=tuple(rows.chunk_buffer.get(document_id, ())),
            final_chunks=tuple(rows.final_chunks.get(document_id, ())),
        )
        expected = {} if outcome is None else {document_id: outcome}
        messages = discrepancies(expected, part)
        if not messages:
            continue
        finals = len(rows.final_chunks.get(document_id, ()))
        observed = ", ".join(
            f"job {job.job_id} at ({job.stage}, {job.state}) last_error={job.last_error!r}"
            for job in jobs
        )
        for message in messages:
            found.append(
                Violation(
                    "liveness",
                    message,
                    job_id=jobs[0].job_id if len(jobs) == 1 else None,
                    document_id=document_id,
                    expected="no document" if outcome is None else repr(outcome),
                    observed=(observed or "no job") + f", {finals} final chunks",
                )
            )
    return found


# -- details -------------------------------------------------------------------------


def _job_of(rows: _Rows, document_id: uuid.UUID) -> uuid.UUID | None:
    jobs = rows.jobs.get(document_id, [])
    return jobs[0].job_id if len(jobs) == 1 else None


def _job_position(rows: _Rows, document_id: uuid.UUID) -> str:
    jobs = rows.jobs.get(document_id, [])
    return ", ".join(f"({job.stage}, {job.state})" for job in jobs) or "(no job)"


def _interrupts(change: JobChange, claimed_at: int | None) -> bool:
    """Whether a change from (embedding, working) cut an embedding step short.

    ``claimed_at`` is embeddings_done when the step was claimed.
    """
    if change.new_state in _INTERRUPTED:
        return True
    if change.new_state == _WORKING:
        return change.new_owner != change.old_owner or _retry_count_plus_one(change)
    return (
        change.new_state == State.QUEUED.value
        and change.new_stage == _EMBEDDING
        and (change.new_embeddings_done or 0) <= (claimed_at or 0)
    )


def _chunk_problem(
    row: ChunkRow, index: int, planned: Sequence[ExpectedChunk]
) -> tuple[str, str] | None:
    """Why buffer row ``index`` is not planned chunk ``index`` (None if it is)."""
    if row.chunk_ord != index:
        return f"ordinal {index} next", f"ordinal {row.chunk_ord} (a gap or a duplicate)"
    if index >= len(planned):
        return f"{len(planned)} planned chunks", f"a chunk at ordinal {index}"
    want = planned[index]
    for name, expected, observed in (
        ("chunk_id", want.chunk_id, row.chunk_id),
        ("chunk_sha", want.chunk_sha, row.chunk_sha),
        ("text", want.text, row.text),
    ):
        if expected != observed:
            return (
                f"ordinal {index} {name} {_short(expected)}",
                f"ordinal {index} {name} {_short(observed)}",
            )
    return None


def _final_difference(
    finals: Sequence[ChunkRow], planned: Sequence[ExpectedChunk]
) -> tuple[str, str] | None:
    """How the final rows differ from the plan (None if they are exactly it)."""
    if len(finals) != len(planned):
        return f"{len(planned)} final chunks", f"{len(finals)} final chunks"
    for row, want in zip(finals, planned, strict=True):
        for name, expected, observed in (
            ("chunk_id", want.chunk_id, row.chunk_id),
            ("ordinal", want.ordinal, row.chunk_ord),
            ("chunk_sha", want.chunk_sha, row.chunk_sha),
            ("text", want.text, row.text),
            ("vector_sha", want.vector_sha, row.vector_sha),
            ("vector", want.vector, row.vector),
        ):
            if expected != observed:
                where = f"ordinal {want.ordinal} {name}"
                return f"{where} {_short(expected)}", f"{where} {_short(observed)}"
    return None


def _short(value: object) -> str:
    if isinstance(value, tuple):
        return _vector_text(value)
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _vector_text(vector: Sequence[float] | None) -> str:
    if vector is None:
        return "no vector"
    head = ", ".join(f"{x:.6g}" for x in vector[:3])
    return f"[{head}{', ...' if len(vector) > 3 else ''}] ({len(vector)} dims)"


__all__ = [
    "INVARIANTS",
    "Expectations",
    "Invariant",
    "InvariantViolation",
    "Observation",
    "TextsSent",
    "Violation",
    "assert_invariants",
    "buffers",
    "check",
    "cost",
    "fencing",
    "finalize",
    "liveness",
    "no_duplicates",
    "no_loss",
    "progress",
    "retries",
    "transitions",
]

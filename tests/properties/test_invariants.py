"""Every invariant holds on a correct run and fires on a crafted bad state.

The world is built by hand: a few documents with their predicted outcomes, and a
:class:`World` that plays the reference worker's writes (claim, one step of the stage,
commit) on rows kept in memory, recording each job change as the audit trigger would.
A good world passes :func:`check`; each test then breaks one thing and shows that the
right invariant fires, naming the job or document.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_models.documents import Document, corrupt_pdf, markdown_document
from pipeline_models.history import JobChange
from pipeline_models.invariants import (
    INVARIANTS,
    Expectations,
    InvariantViolation,
    Observation,
    TextsSent,
    Violation,
    assert_invariants,
    check,
    liveness,
)
from pipeline_models.lifecycle import (
    BUDGET_HOLD,
    CLAIMABLE_STATES,
    Position,
    Stage,
    State,
    is_allowed,
    next_stage,
    positions,
)
from pipeline_models.model import ExpectedOutcome, expected_outcome
from pipeline_models.pipeline.chunking import Chunker
from pipeline_models.pipeline.config import WorkerConfig
from pipeline_models.pipeline.costs import Usage
from pipeline_models.pipeline.identity import vector_sha
from pipeline_models.snapshot import (
    BilledCallRow,
    BudgetRow,
    ChunkRow,
    DocumentRow,
    JobRow,
    Snapshot,
    VectorRow,
)

CONFIG = WorkerConfig(
    embed_dimensions=8,
    chunk_batch_size=2,
    embed_batch_size=2,
    chunker=Chunker(min_chars=8, max_chars=24),
)
LIMIT = CONFIG.retry.limit
LEASE = timedelta(seconds=CONFIG.lease_seconds)
START = datetime(2026, 1, 1, tzinfo=UTC)
API = "pipeline-models api"
W1, W2 = "worker-1", "worker-2"
ALICE = uuid.UUID(int=0xA11CE)

ALPHA = markdown_document(
    "# Alpha\n\nApples and apricots.\n\nAlmonds grow on trees in the sun.\n\nThe end of alpha.\n"
)
BETA = markdown_document(
    "# Beta\n\nBananas, blueberries and beans.\n\nBrown bread baked by bakers.\n"
)
GAMMA = markdown_document(
    "Gamma rays glow green.\nGrapes and guavas gathered in groves.\nGood grief, gamma.\n"
)
DELTA = corrupt_pdf(1)
# Document ids: alpha ends done, beta waits mid-chunking, gamma is being embedded after a
# crash, delta (a corrupt PDF) is dead-lettered at parsing.
ALPHA_ID, BETA_ID, GAMMA_ID, DELTA_ID = (uuid.UUID(int=n) for n in range(1, 5))


class World:
    """Pipeline tables in memory, written the way the reference worker writes them."""

    def __init__(self) -> None:
        self.now = START
        self.documents: dict[uuid.UUID, DocumentRow] = {}
        self.jobs: dict[uuid.UUID, JobRow] = {}
        self.chunk_buffer: list[ChunkRow] = []
        self.vector_buffer: list[VectorRow] = []
        self.final_chunks: list[ChunkRow] = []
        self.history: list[JobChange] = []
        self.blobs: set[str] = set()
        self.inputs: Counter[uuid.UUID] = Counter()
        self.outcomes: dict[uuid.UUID, ExpectedOutcome] = {}
        self.job_of: dict[uuid.UUID, uuid.UUID] = {}
        self.billed_calls: list[BilledCallRow] = []
        self.budgets: dict[str, BudgetRow] = {}

    # -- what the checker sees --------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return Snapshot(
            dict(self.documents),
            dict(self.jobs),
            tuple(self.chunk_buffer),
            tuple(self.vector_buffer),
            tuple(self.final_chunks),
            tuple(self.billed_calls),
            dict(self.budgets),
        )

    def observation(self, **changed: Any) -> Observation:
        values: dict[str, Any] = {
            "snapshot": self.snapshot(),
            "changes": tuple(self.history),
            "history": tuple(self.history),
            "blobs": frozenset(self.blobs),
            "embedding_inputs": dict(self.inputs),
        }
        return Observation(**{**values, **changed})

    def expectations(self, **changed: Any) -> Expectations:
        values: dict[str, Any] = {
            "outcomes": dict(self.outcomes),
            "workers": frozenset({W1, W2}),
            "config": CONFIG,
        }
        return Expectations(**{**values, **changed})

    def check(self, name: str) -> list[Violation]:
        return check(self.observation(), self.expectations(), names=[name])

    # -- rows -------------------------------------------------------------------------

    def tick(self, seconds: float = 1) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now

    def record(self, operation: str, actor: str, old: JobRow | None, new: JobRow | None) -> None:
        row = new or old
        assert row is not None
        values: dict[str, Any] = {}
        for prefix, job in (("old", old), ("new", new)):
            if job is None:
                continue
            values |= {
                f"{prefix}_stage": job.stage.value,
                f"{prefix}_state": job.state.value,
                f"{prefix}_owner": job.owner,
                f"{prefix}_lease_expires_at": job.lease_expires_at,
                f"{prefix}_next_attempt_at": job.next_attempt_at,
                f"{prefix}_retry_count": job.retry_count,
                f"{prefix}_chunks_done": job.chunks_done,
                f"{prefix}_embeddings_done": job.embeddings_done,
            }
        if new is not None:
            values["new_last_error"] = new.last_error
        self.history.append(
            JobChange(
                audit_id=len(self.history) + 1,
                operation=operation,
                actor=actor,
                job_id=row.job_id,
                document_id=row.document_id,
                at=self.now,
                **values,
            )
        )

    def write(self, job_id: uuid.UUID, actor: str, **values: Any) -> None:
        """An UPDATE of a job row by ``actor`` at the current time."""
        old = self.jobs[job_id]
        new = replace(old, **values)
        self.jobs[job_id] = new
        self.record("UPDATE", actor, old, new)

    def delete(self, job_id: uuid.UUID, actor: str) -> None:
        self.record("DELETE", actor, self.jobs.pop(job_id), None)

    # -- the outside world ------------------------------------------------------------

    def upload(self, number: int, document: Document, *, user: uuid.UUID = ALICE) -> uuid.UUID:
        document_id, job_id = uuid.UUID(int=number), uuid.UUID(int=0x10B0000 + number)
        key = f"raw/{user}/{document.sha256}"
        self.tick()
        self.blobs.add(key)
        self.documents[document_id] = DocumentRow(
            document_id,
            user,
            document.filename,
            document.sha256,
            document.size,
            key,
            "processing",
            None,
        )
        job = JobRow(
            job_id, document_id, Stage.QUEUED, State.QUEUED, None, None, self.now, 0, None, None,
            0, 0,
        )  # fmt: skip
        self.jobs[job_id] = job
        self.record("INSERT", API, None, job)
        self.outcomes[document_id] = expected_outcome(document_id, document, config=CONFIG)
        self.job_of[document_id] = job_id
        return job_id

    # -- the reference worker ---------------------------------------------------------

    def claim(self, job_id: uuid.UUID, worker: str) -> None:
        job = self.jobs[job_id]
        self.tick()
        lease = self.now + LEASE
        if job.state is State.WORKING:
            assert job.lease_expires_at is not None
            assert job.lease_expires_at <= self.now
            if job.retry_count >= LIMIT:
                self.write(
                    job_id,
                    worker,
                    state=State.DEADLETTER,
                    owner=None,
                    lease_expires_at=None,
                    last_error=f"lease of {job.owner} expired with retries exhausted",
                )
                return
            self.write(
                job_id,
                worker,
                owner=worker,
                lease_expires_at=lease,
                retry_count=job.retry_count + 1,
                last_error=f"lease of {job.owner} expired",
            )
            return
        assert job.state in CLAIMABLE_STATES
        assert job.next_attempt_at <= self.now
        self.write(job_id, worker, state=State.WORKING, owner=worker, lease_expires_at=lease)

    def work(self, job_id: uuid.UUID) -> None:
        """One step of the job's stage by its owner, committed."""
        job = self.jobs[job_id]
        worker, document_id, stage = job.owner, job.document_id, job.stage
        assert worker is not None
        assert job.state is State.WORKING
        outcome = self.outcomes[document_id]
        planned = outcome.chunks
        self.tick()
        if outcome.state is State.DEADLETTER and outcome.stage is stage:
            self.documents[document_id] = replace(self.documents[document_id], status="failed")
            self.move(job_id, state=State.DEADLETTER, last_error=f"{stage}: {outcome.reason}")
        elif stage is Stage.PARSE_VALIDATED:
            self.write(job_id, worker, chunks_total=len(planned), chunks_done=0, embeddings_done=0)
            self.advance(job_id)
        elif stage is Stage.CHUNKING:
            batch = planned[job.chunks_done : job.chunks_done + CONFIG.chunk_batch_size]
            self.chunk_buffer += [
                ChunkRow(c.chunk_id, document_id, c.ordinal, c.chunk_sha, c.text) for c in batch
            ]
            done = job.chunks_done + len(batch)
            self.write(job_id, worker, chunks_done=done)
            self.advance(job_id) if done == len(planned) else self.requeue(job_id, progress=True)
        elif stage is Stage.EMBEDDING:
            done = job.embeddings_done + self.embed(job_id)
            self.vector_buffer += [
                VectorRow(c.chunk_id, document_id, c.vector_sha, c.vector)
                for c in planned[job.embeddings_done : done]
            ]
            self.write(job_id, worker, embeddings_done=done)
            self.advance(job_id) if done == len(planned) else self.requeue(job_id, progress=True)
        elif stage is Stage.EMBEDDED:
            self.final_chunks += [
                ChunkRow(c.chunk_id, document_id, c.ordinal, c.chunk_sha, c.text, c.vector_sha,
                         c.vector)
                for c in planned
            ]  # fmt: skip
            self.chunk_buffer = [c for c in self.chunk_buffer if c.document_id != document_id]
            self.vector_buffer = [v for v in self.vector_buffer if v.document_id != document_id]
            self.documents[document_id] = replace(
                self.documents[document_id], status="complete", chunk_count=len(planned)
            )
            self.move(job_id, state=State.DONE)
        else:
            self.advance(job_id)

    def embed(self, job_id: uuid.UUID) -> int:
        """The embeddings call of an embedding step (made before the commit): its size."""
        job = self.jobs[job_id]
        planned = len(self.outcomes[job.document_id].chunks)
        size = min(CONFIG.embed_batch_size, planned - job.embeddings_done)
        self.inputs[job.document_id] += size
        return size

    def move(self, job_id: uuid.UUID, **values: Any) -> None:
        owner = self.jobs[job_id].owner
        assert owner is not None
        self.write(job_id, owner, owner=None, lease_expires_at=None, **values)

    def advance(self, job_id: uuid.UUID) -> None:
        following = next_stage(self.jobs[job_id].stage)
        self.move(job_id, stage=following, state=State.QUEUED, next_attempt_at=self.now,
                  retry_count=0)  # fmt: skip

    def requeue(self, job_id: uuid.UUID, *, progress: bool) -> None:
        retries = 0 if progress else self.jobs[job_id].retry_count
        self.move(job_id, state=State.QUEUED, next_attempt_at=self.now, retry_count=retries)

    def fail_transient(self, job_id: uuid.UUID, error: str = "embeddings: 503") -> None:
        job = self.jobs[job_id]
        self.tick()
        backoff = CONFIG.retry.backoff_seconds(job.retry_count)
        self.move(
            job_id,
            state=State.RETRYABLE,
            next_attempt_at=self.now + timedelta(seconds=backoff),
            retry_count=job.retry_count + 1,
            last_error=f"{job.stage}: {error}",
        )

    def step(self, job_id: uuid.UUID, worker: str) -> None:
        self.claim(job_id, worker)
        if self.jobs[job_id].state is State.WORKING:
            self.work(job_id)

    def run(
        self, job_id: uuid.UUID, worker: str, until: Callable[[JobRow], bool] | None = None
    ) -> None:
        """Step the job until ``until`` holds (or it ends)."""
        for _ in range(100):
            job = self.jobs[job_id]
            if job.state in (State.DONE, State.DEADLETTER) or (until is not None and until(job)):
                return
            self.step(job_id, worker)
        raise AssertionError(f"job {job_id} never got there")


def at(stage: Stage, **counters: int) -> Callable[[JobRow], bool]:
    def reached(job: JobRow) -> bool:
        return job.stage is stage and all(getattr(job, k) == v for k, v in counters.items())

    return reached


def build_world() -> World:
    """Alpha done; beta queued mid-chunking; gamma working mid-embedding after a crash
    of its first embedding step; delta (a corrupt PDF) dead-lettered at parsing."""
    world = World()
    alpha, beta, gamma, delta = (
        world.upload(n, d) for n, d in enumerate((ALPHA, BETA, GAMMA, DELTA), start=1)
    )
    assert [world.jobs[j].document_id for j in (alpha, beta, gamma, delta)] == [
        ALPHA_ID,
        BETA_ID,
        GAMMA_ID,
        DELTA_ID,
    ]
    world.run(alpha, W1)
    world.run(beta, W1, until=at(Stage.CHUNKING, chunks_done=2))
    world.run(gamma, W1, until=at(Stage.EMBEDDING))
    world.claim(gamma, W1)
    world.embed(gamma)  # the call is made, then worker-1 crashes before its commit
    world.tick(CONFIG.lease_seconds + 1)
    world.step(gamma, W2)  # reclaims the expired lease and embeds the first batch again
    world.claim(gamma, W2)  # and holds it now, its lease live
    world.run(delta, W2)
    return world


@pytest.fixture
def world() -> World:
    return build_world()


def ids(world: World) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, uuid.UUID]:
    """The job ids of alpha, beta, gamma and delta."""
    job_of = world.job_of
    return job_of[ALPHA_ID], job_of[BETA_ID], job_of[GAMMA_ID], job_of[DELTA_ID]


def assert_fired(
    found: list[Violation],
    name: str,
    *,
    job: uuid.UUID | None = None,
    document: uuid.UUID | None = None,
    says: str = "",
) -> Violation:
    """``found`` holds a violation of ``name`` naming ``job``/``document`` and saying ``says``."""
    assert found, f"{name} did not fire"
    for violation in found:
        assert violation.invariant == name
        text = str(violation)
        names = (job is None or str(job) in text) and (document is None or str(document) in text)
        if names and says in text:
            assert violation.expected is not None
            assert violation.observed is not None
            return violation
    raise AssertionError(f"no {name} violation names {job or document} and says {says!r}: {found}")


# -- the good world ------------------------------------------------------------------


def test_a_correct_run_breaks_no_invariant(world: World) -> None:
    alpha, beta, gamma, delta = ids(world)
    jobs = world.jobs
    assert (jobs[alpha].stage, jobs[alpha].state) == (Stage.EMBEDDED, State.DONE)
    assert (jobs[beta].stage, jobs[beta].state, jobs[beta].chunks_done) == (
        Stage.CHUNKING,
        State.QUEUED,
        2,
    )
    assert (jobs[gamma].state, jobs[gamma].owner, jobs[gamma].embeddings_done) == (
        State.WORKING,
        W2,
        2,
    )
    assert (jobs[delta].stage, jobs[delta].state) == (Stage.PARSING, State.DEADLETTER)
    assert check(world.observation(), world.expectations()) == []
    assert_invariants(world.observation(), world.expectations())


def test_the_invariants_checked_after_every_step_are_all_but_liveness() -> None:
    assert list(INVARIANTS) == [
        "transitions",
        "claims_skip_locks",
        "leases_cover_calls",
        "fencing",
        "no_loss",
        "no_duplicates",
        "buffers",
        "progress",
        "retries",
        "finalize",
        "cost",
        "billing",
    ]
    for name, invariant in INVARIANTS.items():
        assert invariant.__name__ == name
        assert "Why" in (invariant.__doc__ or "")


def test_check_refuses_an_unknown_invariant_naming_the_valid_ones(world: World) -> None:
    with pytest.raises(ValueError, match=r"unknown invariant 'liveness'.*claims_skip_locks, cost"):
        check(world.observation(), world.expectations(), names=["liveness"])


def test_assert_invariants_raises_with_one_line_per_violation(world: World) -> None:
    world.blobs.clear()
    with pytest.raises(InvariantViolation) as raised:
        assert_invariants(world.observation(), world.expectations())
    assert len(raised.value.violations) == 4
    lines = str(raised.value).splitlines()
    assert len(lines) == 4
    assert all(line.startswith("[no_loss] ") for line in lines)
    assert f"document {ALPHA_ID}" in lines[0]
    assert isinstance(raised.value, AssertionError)


def test_a_violation_reads_as_invariant_message_where_expected_and_observed() -> None:
    violation = Violation(
        "fencing",
        "a worker committed after its lease expired",
        job_id=uuid.UUID(int=7),
        document_id=uuid.UUID(int=8),
        expected="a live lease",
        observed="expired",
    )
    assert str(violation) == (
        "[fencing] a worker committed after its lease expired "
        f"(job {uuid.UUID(int=7)}, document {uuid.UUID(int=8)}): "
        "expected a live lease, observed expired"
    )
    assert str(Violation("cost", "too many")) == "[cost] too many"


# -- transitions ---------------------------------------------------------------------


def test_transitions_fires_when_a_stage_is_skipped(world: World) -> None:
    _, beta, _, _ = ids(world)
    world.claim(beta, W1)
    world.move(beta, stage=Stage.EMBEDDING, state=State.QUEUED)
    violation = assert_fired(world.check("transitions"), "transitions", job=beta)
    assert "(chunking, working, owner worker-1) -> (embedding, queued)" in violation.message
    assert violation.observed == "(embedding, queued)"
    assert "(chunks_buffered, queued)" in (violation.expected or "")


def test_transitions_fires_when_a_stage_goes_backwards(world: World) -> None:
    _, beta, _, _ = ids(world)
    world.write(beta, API, stage=Stage.PARSED)
    assert_fired(world.check("transitions"), "transitions", job=beta, says="(parsed, queued)")


def test_transitions_fires_when_a_job_row_is_deleted(world: World) -> None:
    *_, delta = ids(world)
    world.delete(delta, API)
    assert_fired(world.check("transitions"), "transitions", job=delta, says="deleted")


def test_transitions_fires_when_a_done_job_changes(world: World) -> None:
    alpha, *_ = ids(world)
    world.write(alpha, API, state=State.QUEUED)
    assert_fired(world.check("transitions"), "transitions", job=alpha, says="is final")


def test_transitions_fires_when_a_done_job_is_written_without_moving(world: World) -> None:
    alpha, *_ = ids(world)
    world.write(alpha, API, chunks_done=0)
    assert_fired(world.check("transitions"), "transitions", job=alpha, says="done never changes")


def test_transitions_allows_updates_that_move_nothing(world: World) -> None:
    *_, delta = ids(world)
    world.write(delta, API, last_error="parsing: still corrupt")
    assert world.check("transitions") == []


def test_transitions_fires_when_a_job_is_claimed_before_it_is_due(world: World) -> None:
    _, beta, _, _ = ids(world)
    world.write(beta, API, next_attempt_at=world.now + timedelta(hours=1))
    world.tick()
    world.write(beta, W1, state=State.WORKING, owner=W1, lease_expires_at=world.now + LEASE)
    assert_fired(world.check("transitions"), "transitions", job=beta, says="before it was due")


def test_transitions_fires_when_a_claim_names_another_owner(world: World) -> None:
    _, beta, _, _ = ids(world)
    world.tick()
    world.write(beta, W1, state=State.WORKING, owner=W2, lease_expires_at=world.now + LEASE)
    assert_fired(world.check("transitions"), "transitions", job=beta, says="name its claimer")


def test_transitions_fires_when_a_reclaim_does_not_count_an_attempt(world: World) -> None:
    _, _, gamma, _ = ids(world)
    world.tick(CONFIG.lease_seconds + 1)
    world.write(gamma, W1, owner=W1, lease_expires_at=world.now + LEASE)
    assert_fired(world.check("transitions"), "transitions", job=gamma, says="exactly one attempt")


def test_transitions_fires_when_a_transient_failure_does_not_count_an_attempt(
    world: World,
) -> None:
    _, _, gamma, _ = ids(world)
    world.move(gamma, state=State.RETRYABLE, last_error="embedding: 503")
    assert_fired(world.check("transitions"), "transitions", job=gamma, says="fail_transient")


def test_transitions_fires_when_a_transient_failure_skips_its_backoff(world: World) -> None:
    _, _, gamma, _ = ids(world)
    job = world.jobs[gamma]
    world.tick()
    world.move(
        gamma,
        state=State.RETRYABLE,
        next_attempt_at=world.now,  # due again at once: the backoff ignored
        retry_count=job.retry_count + 1,
        last_error="embedding: 503",
    )
    assert_fired(world.check("transitions"), "transitions", job=gamma, says="backoff")


def test_transitions_fires_when_a_worker_retries_a_dead_letter(world: World) -> None:
    *_, delta = ids(world)
    world.write(delta, W1, state=State.QUEUED, retry_count=0)
    assert_fired(world.check("transitions"), "transitions", job=delta, says="only the API may")


def test_transitions_fires_when_an_operator_retry_keeps_the_retry_count(world: World) -> None:
    *_, delta = ids(world)
    world.write(delta, API, retry_count=2)
    world.write(delta, API, state=State.QUEUED)
    assert_fired(world.check("transitions"), "transitions", job=delta, says="fresh retry budget")


def test_transitions_fires_when_a_worker_creates_a_job() -> None:
    world = World()
    world.upload(1, ALPHA)
    world.history[-1] = replace(world.history[-1], actor=W1, new_retry_count=1)
    found = world.check("transitions")
    assert_fired(found, "transitions", says="a worker created a job")
    assert_fired(found, "transitions", says="retries already counted")


@settings(max_examples=150)
@given(st.sampled_from(sorted(positions())), st.sampled_from(sorted(positions())))
def test_transitions_fires_on_every_move_the_lifecycle_does_not_allow(
    old: Position, new: Position
) -> None:
    if is_allowed(old, new) or old == new:
        return
    job_id = uuid.UUID(int=99)
    change = JobChange(
        audit_id=1,
        operation="UPDATE",
        actor=API,
        job_id=job_id,
        document_id=uuid.UUID(int=98),
        at=START,
        old_stage=old.stage.value,
        new_stage=new.stage.value,
        old_state=old.state.value,
        new_state=new.state.value,
        old_owner=W1 if old.state is State.WORKING else None,
        new_owner=W1 if new.state is State.WORKING else None,
        old_retry_count=0,
        new_retry_count=0,
    )
    observation = Observation(Snapshot(), (change,), (change,), frozenset(), {})
    expectations = Expectations({}, frozenset({W1}), CONFIG)
    assert_fired(check(observation, expectations, names=["transitions"]), "transitions", job=job_id)


# -- budget holds ---------------------------------------------------------------------


def held_change(
    actor: str,
    old: tuple[Stage, State, str | None],
    new: tuple[Stage, State, str | None],
    *,
    retry_counts: tuple[int, int] = (0, 0),
) -> list[Violation]:
    """The transitions invariant on one crafted change: (stage, state, held_for) before
    and after, the owner W1 while working."""
    job_id = uuid.UUID(int=97)
    change = JobChange(
        audit_id=1,
        operation="UPDATE",
        actor=actor,
        job_id=job_id,
        document_id=uuid.UUID(int=96),
        at=START,
        old_stage=old[0].value,
        new_stage=new[0].value,
        old_state=old[1].value,
        new_state=new[1].value,
        old_owner=W1 if old[1] is State.WORKING else None,
        new_owner=W1 if new[1] is State.WORKING else None,
        old_lease_expires_at=START + LEASE if old[1] is State.WORKING else None,
        new_lease_expires_at=START + LEASE if new[1] is State.WORKING else None,
        old_next_attempt_at=START,
        new_next_attempt_at=START,
        old_retry_count=retry_counts[0],
        new_retry_count=retry_counts[1],
        old_held_for=old[2],
        new_held_for=new[2],
    )
    observation = Observation(Snapshot(), (change,), (change,), frozenset(), {})
    expectations = Expectations({}, frozenset({W1}), CONFIG)
    return check(observation, expectations, names=["transitions"])


def test_transitions_accepts_a_budget_hold_by_the_owner_and_its_release_by_an_operator() -> None:
    working = (Stage.EMBEDDING, State.WORKING, None)
    held = (Stage.EMBEDDING, State.QUEUED, BUDGET_HOLD)
    released = (Stage.EMBEDDING, State.QUEUED, None)
    assert held_change(W1, working, held) == []
    assert held_change(API, held, released) == []


def test_transitions_fires_when_a_held_job_is_claimed() -> None:
    held = (Stage.JOB_VALIDATED, State.QUEUED, BUDGET_HOLD)
    claimed = (Stage.JOB_VALIDATED, State.WORKING, BUDGET_HOLD)
    assert_fired(held_change(W1, held, claimed), "transitions", says="no allowed transition")


def test_transitions_fires_when_a_job_is_held_without_going_through_its_owner() -> None:
    # A queued job marked held in place: no worker stepped it, so no hold explains it.
    queued = (Stage.EMBEDDING, State.QUEUED, None)
    held = (Stage.EMBEDDING, State.QUEUED, BUDGET_HOLD)
    assert_fired(held_change(API, queued, held), "transitions", says="no allowed transition")


def test_transitions_fires_when_a_worker_releases_a_budget_hold() -> None:
    held = (Stage.EMBEDDING, State.QUEUED, BUDGET_HOLD)
    released = (Stage.EMBEDDING, State.QUEUED, None)
    assert_fired(held_change(W1, held, released), "transitions", says="only an operator may")


def test_transitions_fires_when_a_budget_hold_counts_an_attempt() -> None:
    working = (Stage.EMBEDDING, State.WORKING, None)
    held = (Stage.EMBEDDING, State.QUEUED, BUDGET_HOLD)
    found = held_change(W1, working, held, retry_counts=(1, 2))
    assert_fired(found, "transitions", says="count no attempt")


def test_transitions_fires_when_a_job_is_held_at_a_stage_that_bills_nothing() -> None:
    working = (Stage.CHUNKING, State.WORKING, None)
    held = (Stage.CHUNKING, State.QUEUED, BUDGET_HOLD)
    assert_fired(held_change(W1, working, held), "transitions", says="no allowed transition")


# -- claims_skip_locks ---------------------------------------------------------------


def test_claims_skip_locks_fires_when_a_claim_waited_on_a_row_lock(world: World) -> None:
    alpha, *_ = ids(world)
    found = check(
        world.observation(waiting_claims={W1: alpha}),
        world.expectations(),
        names=["claims_skip_locks"],
    )
    violation = assert_fired(found, "claims_skip_locks", job=alpha, says="waited on a row lock")
    assert W1 in str(violation)


def test_claims_skip_locks_holds_when_no_claim_waited(world: World) -> None:
    assert world.check("claims_skip_locks") == []


# -- leases_cover_calls ----------------------------------------------------------------


def test_leases_cover_calls_fires_when_a_call_starts_on_the_claims_lease(world: World) -> None:
    *_, gamma, _ = ids(world)
    job = world.snapshot().jobs[gamma]
    assert job.owner == W2
    assert job.lease_expires_at is not None
    # The call starts 5 s after the lease was last set, and the lease was not renewed.
    started = job.lease_expires_at - LEASE + timedelta(seconds=5)
    found = check(
        world.observation(calls_started={W2: (gamma, started)}),
        world.expectations(),
        names=["leases_cover_calls"],
    )
    violation = assert_fired(found, "leases_cover_calls", job=gamma, says="without renewing")
    assert W2 in str(violation)


def test_leases_cover_calls_holds_when_the_lease_was_renewed_at_the_call(world: World) -> None:
    *_, gamma, _ = ids(world)
    job = world.snapshot().jobs[gamma]
    assert job.lease_expires_at is not None
    started = job.lease_expires_at - LEASE
    assert (
        check(
            world.observation(calls_started={W2: (gamma, started)}),
            world.expectations(),
            names=["leases_cover_calls"],
        )
        == []
    )
    # Another worker's call, or a job no longer held, is judged by fencing, not here.
    assert (
        check(
            world.observation(calls_started={W1: (gamma, started + LEASE)}),
            world.expectations(),
            names=["leases_cover_calls"],
        )
        == []
    )


# -- fencing -------------------------------------------------------------------------


def test_fencing_fires_when_a_worker_commits_after_its_lease_expired(world: World) -> None:
    _, _, gamma, _ = ids(world)
    world.tick(CONFIG.lease_seconds + 1)
    world.work(gamma)  # worker-2 embeds and commits its batch with no live lease
    violation = assert_fired(world.check("fencing"), "fencing", job=gamma, says="lease expired")
    assert "worker-2" in str(violation)


def test_fencing_fires_when_a_worker_that_is_not_the_owner_commits(world: World) -> None:
    _, _, gamma, _ = ids(world)
    world.tick()
    world.write(gamma, W1, owner=None, lease_expires_at=None, state=State.QUEUED)
    assert_fired(world.check("fencing"), "fencing", job=gamma, says="another worker holds")


def test_fencing_fires_when_a_worker_moves_an_expired_job_without_claiming_it(
    world: World,
) -> None:
    _, _, gamma, _ = ids(world)
    world.tick(CONFIG.lease_seconds + 1)
    world.write(gamma, W1, embeddings_done=3)
    assert_fired(world.check("fencing"), "fencing", job=gamma, says="without claiming it")


def test_fencing_fires_when_a_worker_steals_a_live_lease(world: World) -> None:
    _, _, gamma, _ = ids(world)
    world.tick()
    world.write(gamma, W1, owner=W1, lease_expires_at=world.now + LEASE, retry_count=2)
    assert_fired(world.check("fencing"), "fencing", job=gamma, says="another worker holds")


def test_fencing_fires_when_a_worker_writes_a_job_it_never_claimed(world: World) -> None:
    alpha, beta, _, _ = ids(world)
    world.write(beta, W1, chunks_done=4)
    world.write(alpha, W2, chunks_done=0)
    found = world.check("fencing")
    assert_fired(found, "fencing", job=beta, says="does not hold")
    assert_fired(found, "fencing", job=alpha, says="never claimed")


def test_fencing_allows_a_worker_to_take_back_its_own_expired_lease(world: World) -> None:
    # The claim does not skip the claimer's own rows: a worker whose step lost its lease
    # can claim the same job again under the same name, counting an attempt.
    _, _, gamma, _ = ids(world)
    world.tick(CONFIG.lease_seconds + 1)
    world.step(gamma, W2)
    assert world.history[-3].old_owner == world.history[-3].new_owner == W2
    assert check(world.observation(), world.expectations()) == []


def test_fencing_allows_the_claim_to_dead_letter_an_expired_job_past_its_limit(
    world: World,
) -> None:
    _, _, gamma, _ = ids(world)
    # As if gamma had been reclaimed up to the limit (the counts are left out here).
    world.jobs[gamma] = replace(world.jobs[gamma], retry_count=LIMIT)
    world.tick(CONFIG.lease_seconds + 1)
    world.claim(gamma, W1)
    assert world.jobs[gamma].state is State.DEADLETTER
    assert world.check("fencing") == []
    assert world.check("transitions") == []


def test_fencing_ignores_the_api_moving_a_working_job(world: World) -> None:
    # The parser's webhook may advance a job a polling worker holds; the worker's
    # fence then fails. Only workers are fenced.
    world = World()
    job = world.upload(1, ALPHA)
    world.run(job, W1, until=at(Stage.PARSING))
    world.claim(job, W1)
    world.write(job, API, stage=Stage.PARSED, state=State.QUEUED, owner=None,
                lease_expires_at=None)  # fmt: skip
    assert check(world.observation(), world.expectations()) == []


# -- no_loss -------------------------------------------------------------------------


def test_no_loss_fires_when_an_accepted_upload_has_no_job(world: World) -> None:
    _, beta, _, _ = ids(world)
    world.jobs.pop(beta)
    assert_fired(world.check("no_loss"), "no_loss", document=BETA_ID, says="0 jobs")


def test_no_loss_fires_when_an_accepted_upload_has_no_document(world: World) -> None:
    world.documents.pop(GAMMA_ID)
    assert_fired(world.check("no_loss"), "no_loss", document=GAMMA_ID, says="no document")


def test_no_loss_fires_when_any_document_row_has_no_job(world: World) -> None:
    orphan = uuid.UUID(int=78)  # an upload cut between its document and its job
    world.documents[orphan] = replace(
        world.documents[ALPHA_ID], document_id=orphan, file_sha256="0" * 64
    )
    assert_fired(world.check("no_loss"), "no_loss", document=orphan, says="has no job")


def test_no_loss_fires_when_the_raw_blob_is_missing(world: World) -> None:
    key = world.documents[DELTA_ID].raw_blob_key
    world.blobs.discard(key)
    violation = assert_fired(world.check("no_loss"), "no_loss", document=DELTA_ID)
    assert key in str(violation)


# -- no_duplicates -------------------------------------------------------------------


def test_no_duplicates_fires_when_a_document_has_two_live_jobs(world: World) -> None:
    _, beta, _, _ = ids(world)
    twin = uuid.UUID(int=0xDEAD)
    world.jobs[twin] = replace(world.jobs[beta], job_id=twin, stage=Stage.QUEUED)
    assert_fired(world.check("no_duplicates"), "no_duplicates", document=BETA_ID, says=str(twin))


def test_no_duplicates_fires_when_a_job_is_finalized_twice(world: World) -> None:
    alpha, *_ = ids(world)
    finalize = world.history.index(
        next(c for c in world.history if c.job_id == alpha and c.new_state == "done")
    )
    world.history.append(replace(world.history[finalize], audit_id=len(world.history) + 1))
    assert_fired(world.check("no_duplicates"), "no_duplicates", job=alpha, says="2 times")


def test_no_duplicates_fires_when_a_user_has_two_documents_for_the_same_bytes(
    world: World,
) -> None:
    copy = uuid.UUID(int=77)
    world.documents[copy] = replace(world.documents[ALPHA_ID], document_id=copy)
    assert_fired(world.check("no_duplicates"), "no_duplicates", says=str(copy))


def test_no_duplicates_fires_on_duplicate_buffer_and_final_rows(world: World) -> None:
    world.chunk_buffer.append(world.chunk_buffer[0])
    world.vector_buffer.append(world.vector_buffer[0])
    world.final_chunks.append(replace(world.final_chunks[0], chunk_id=uuid.UUID(int=5)))
    found = world.check("no_duplicates")
    assert_fired(found, "no_duplicates", says="chunk-buffer row at ordinal 0")
    assert_fired(found, "no_duplicates", says="chunk-buffer row id")
    assert_fired(found, "no_duplicates", says="vector-buffer row for chunk")
    assert_fired(found, "no_duplicates", document=ALPHA_ID, says="final chunk at ordinal")


# -- buffers -------------------------------------------------------------------------


def test_buffers_fires_on_a_gap_in_the_chunk_prefix(world: World) -> None:
    world.chunk_buffer = [
        c for c in world.chunk_buffer if (c.document_id, c.chunk_ord) != (BETA_ID, 0)
    ]
    assert_fired(world.check("buffers"), "buffers", document=BETA_ID, says="ordinal 0 next")


def test_buffers_fires_on_a_wrong_chunk_sha(world: World) -> None:
    index = next(i for i, c in enumerate(world.chunk_buffer) if c.document_id == BETA_ID)
    world.chunk_buffer[index] = replace(world.chunk_buffer[index], chunk_sha="0" * 64)
    assert_fired(world.check("buffers"), "buffers", document=BETA_ID, says="chunk_sha")


def test_buffers_fires_on_a_chunk_beyond_the_plan(world: World) -> None:
    planned = world.outcomes[BETA_ID].chunks
    world.chunk_buffer += [
        ChunkRow(c.chunk_id, BETA_ID, c.ordinal, c.chunk_sha, c.text) for c in planned[2:]
    ]
    world.chunk_buffer.append(ChunkRow(uuid.UUID(int=6), BETA_ID, len(planned), "0" * 64, "extra"))
    assert_fired(world.check("buffers"), "buffers", document=BETA_ID, says="5 planned chunks")


def test_buffers_fires_on_a_vector_for_an_unbuffered_chunk(world: World) -> None:
    unbuffered = world.outcomes[BETA_ID].chunks[3]
    world.vector_buffer.append(
        VectorRow(unbuffered.chunk_id, BETA_ID, unbuffered.vector_sha, unbuffered.vector)
    )
    assert_fired(world.check("buffers"), "buffers", document=BETA_ID, says="not buffered")


def test_buffers_fires_on_a_wrong_vector(world: World) -> None:
    row = world.vector_buffer[0]
    assert row.document_id == GAMMA_ID
    wrong = (row.vector[0] + 2**-20, *row.vector[1:])
    world.vector_buffer[0] = replace(row, vector=wrong, vector_sha=vector_sha(wrong))
    assert_fired(world.check("buffers"), "buffers", document=GAMMA_ID, says="expected embedding")


def test_buffers_fires_on_a_vector_with_a_wrong_sha(world: World) -> None:
    world.vector_buffer[1] = replace(world.vector_buffer[1], vector_sha="f" * 64)
    assert_fired(world.check("buffers"), "buffers", document=GAMMA_ID, says="vector_sha ffff")


def test_buffers_fires_when_a_done_document_keeps_buffer_rows(world: World) -> None:
    first = world.outcomes[ALPHA_ID].chunks[0]
    world.chunk_buffer.append(ChunkRow(first.chunk_id, ALPHA_ID, 0, first.chunk_sha, first.text))
    assert_fired(world.check("buffers"), "buffers", document=ALPHA_ID, says="done document")


def test_buffers_fires_when_a_document_that_must_dead_letter_has_buffer_rows(
    world: World,
) -> None:
    world.chunk_buffer.append(ChunkRow(uuid.UUID(int=9), DELTA_ID, 0, "0" * 64, "%PDF"))
    assert_fired(world.check("buffers"), "buffers", document=DELTA_ID, says="plans no chunks")


# -- progress ------------------------------------------------------------------------


@settings(max_examples=60)
@given(
    which=st.sampled_from(["beta", "gamma"]),
    counter=st.sampled_from(["chunks_done", "embeddings_done", "chunks_total"]),
    delta=st.integers(-3, 3).filter(bool),
)
def test_progress_catches_any_single_change_of_a_live_jobs_counter(
    which: str, counter: str, delta: int
) -> None:
    world = build_world()
    job_id = world.job_of[BETA_ID if which == "beta" else GAMMA_ID]
    job = world.jobs[job_id]
    world.jobs[job_id] = replace(job, **{counter: getattr(job, counter) + delta})
    assert_fired(world.check("progress"), "progress", job=job_id, says=counter)


def test_progress_ignores_the_counters_of_a_done_job(world: World) -> None:
    alpha, *_ = ids(world)
    assert world.jobs[alpha].chunks_done == 5  # the buffer was cleared by finalize
    assert world.check("progress") == []


# -- retries -------------------------------------------------------------------------


def test_retries_fires_when_retry_count_is_above_the_limit(world: World) -> None:
    _, beta, _, _ = ids(world)
    world.jobs[beta] = replace(world.jobs[beta], retry_count=LIMIT + 1)
    assert_fired(world.check("retries"), "retries", job=beta, says=f"retry_count {LIMIT + 1}")


def test_retries_fires_when_a_change_went_above_the_limit_and_back(world: World) -> None:
    _, beta, _, _ = ids(world)
    world.write(beta, API, retry_count=LIMIT + 2)
    world.write(beta, API, retry_count=0)
    assert_fired(world.check("retries"), "retries", job=beta, says="went above")


def test_retries_fires_on_a_dead_letter_without_last_error(world: World) -> None:
    *_, delta = ids(world)
    world.jobs[delta] = replace(world.jobs[delta], last_error="  ")
    assert_fired(world.check("retries"), "retries", job=delta, says="no last_error")


# -- finalize ------------------------------------------------------------------------


def test_finalize_fires_on_final_rows_for_a_job_that_is_not_done(world: World) -> None:
    world.final_chunks += [
        ChunkRow(c.chunk_id, BETA_ID, c.ordinal, c.chunk_sha, c.text, c.vector_sha, c.vector)
        for c in world.outcomes[BETA_ID].chunks
    ]
    assert_fired(world.check("finalize"), "finalize", document=BETA_ID, says="not done")


def test_finalize_fires_when_a_done_job_misses_final_rows(world: World) -> None:
    alpha, *_ = ids(world)
    world.final_chunks.pop()
    found = world.check("finalize")
    assert_fired(found, "finalize", job=alpha, says="5 final chunks, observed 4")
    assert_fired(found, "finalize", job=alpha, says="chunk_count 5")


def test_finalize_fires_when_a_done_jobs_final_vector_differs(world: World) -> None:
    alpha, *_ = ids(world)
    row = world.final_chunks[2]
    world.final_chunks[2] = replace(row, vector=tuple(-x for x in row.vector or ()))
    assert_fired(world.check("finalize"), "finalize", job=alpha, says="ordinal 2 vector")


def test_finalize_fires_when_a_document_is_complete_but_its_job_is_not_done(
    world: World,
) -> None:
    world.documents[BETA_ID] = replace(world.documents[BETA_ID], status="complete", chunk_count=5)
    assert_fired(world.check("finalize"), "finalize", document=BETA_ID, says="complete but")


def test_finalize_fires_when_a_done_jobs_document_is_not_complete(world: World) -> None:
    alpha, *_ = ids(world)
    world.documents[ALPHA_ID] = replace(world.documents[ALPHA_ID], status="processing")
    assert_fired(world.check("finalize"), "finalize", job=alpha, says="'processing'")


# -- cost ----------------------------------------------------------------------------


def test_cost_fires_when_every_batch_is_re_embedded_after_one_crash(world: World) -> None:
    # One crash in the history of alpha's embedding, then everything sent again.
    world.inputs[ALPHA_ID] = 2 * len(world.outcomes[ALPHA_ID].chunks)
    job = world.job_of[ALPHA_ID]
    world.history.append(
        JobChange(
            audit_id=len(world.history) + 1,
            operation="UPDATE",
            actor=W2,
            job_id=job,
            document_id=ALPHA_ID,
            at=world.now,
            old_stage="embedding",
            new_stage="embedding",
            old_state="working",
            new_state="retryable",
            old_retry_count=0,
            new_retry_count=1,
        )
    )
    violation = assert_fired(world.check("cost"), "cost", document=ALPHA_ID, says="10 texts")
    assert violation.expected == "at most 7 = 5 planned + 2 per batch x 1 interruptions"


def test_cost_fires_when_a_committed_chunk_is_embedded_again(world: World) -> None:
    # Gamma's first batch (ordinals 0 and 1) is committed: embeddings_done is 2.
    assert world.snapshot().jobs[world.job_of[GAMMA_ID]].embeddings_done == 2
    chunks = world.outcomes[GAMMA_ID].chunks
    found = check(
        # Sent after everything in the history so far: nothing new to check but the texts.
        world.observation(
            changes=(), embedded_texts=[TextsSent(GAMMA_ID, [chunks[0].text, chunks[2].text])]
        ),
        world.expectations(),
        names=["cost"],
    )
    violation = assert_fired(found, "cost", document=GAMMA_ID, says="already committed")
    assert violation.observed == "a worker sent ordinals [0] again"


def test_cost_allows_the_batch_in_flight_to_be_sent_again(world: World) -> None:
    chunks = world.outcomes[GAMMA_ID].chunks
    texts = [chunk.text for chunk in chunks[2:4]]
    observation = world.observation(changes=(), embedded_texts=[TextsSent(GAMMA_ID, texts)])
    assert check(observation, world.expectations(), names=["cost"]) == []


def test_cost_allows_a_zombie_its_one_late_batch(world: World) -> None:
    # Worker-1 paused before its request past its lease; worker-2 took gamma over and
    # committed the first batch; then worker-1's request for that batch went out.
    first_batch = [chunk.text for chunk in world.outcomes[GAMMA_ID].chunks[:2]]
    late = TextsSent(GAMMA_ID, first_batch, sender=W1, continued=True)
    observation = world.observation(changes=(), embedded_texts=[late])
    assert check(observation, world.expectations(), names=["cost"]) == []


@pytest.mark.parametrize(
    ("sender", "continued"),
    [
        (W2, True),  # the holder, mid-step: it planned from stale progress
        (W1, False),  # claimed in this very step, so it held the job when it sent
        (None, True),  # nobody can say who sent it: judged as the holder's
    ],
)
def test_cost_fires_when_a_worker_holding_the_job_sends_a_committed_batch_again(
    world: World, sender: str | None, continued: bool
) -> None:
    first_batch = [chunk.text for chunk in world.outcomes[GAMMA_ID].chunks[:2]]
    again = TextsSent(GAMMA_ID, first_batch, sender=sender, continued=continued)
    found = check(world.observation(changes=(), embedded_texts=[again]), world.expectations(),
                  names=["cost"])  # fmt: skip
    violation = assert_fired(found, "cost", document=GAMMA_ID, says="already committed")
    assert violation.observed is not None
    assert violation.observed.endswith("sent ordinals [0, 1] again")


def test_cost_allows_one_repeated_batch_per_interruption(world: World) -> None:
    # Gamma's first batch was sent twice (the crash), which its reclaim explains.
    assert world.inputs[GAMMA_ID] == 4
    world.inputs[GAMMA_ID] += 2
    assert world.check("cost") == []
    world.inputs[GAMMA_ID] += 1
    assert_fired(world.check("cost"), "cost", document=GAMMA_ID, says="7 texts")


def test_cost_counts_a_requeue_without_progress_as_an_interruption(world: World) -> None:
    job = world.job_of[GAMMA_ID]
    world.embed(job)  # worker-2 sends the second batch, then gives the job back unwritten
    world.tick()
    world.requeue(job, progress=False)
    world.claim(job, W1)
    world.work(job)  # and worker-1 sends it again
    assert world.inputs[GAMMA_ID] == 8
    assert world.check("cost") == []
    world.inputs[GAMMA_ID] += 1
    assert_fired(world.check("cost"), "cost", document=GAMMA_ID, says="2 interruptions")


def test_cost_does_not_count_a_batch_requeue_whose_progress_was_written_first(
    world: World,
) -> None:
    # The reference worker writes embeddings_done, then requeues, in two statements of
    # one transaction: the requeue's own audit row shows no change of the counter.
    requeues = [
        c
        for c in world.history
        if c.document_id == ALPHA_ID and c.old_stage == "embedding" and c.new_state == "queued"
        and c.new_stage == "embedding"
    ]  # fmt: skip
    assert requeues
    assert all(c.old_embeddings_done == c.new_embeddings_done for c in requeues)
    world.inputs[ALPHA_ID] = len(world.outcomes[ALPHA_ID].chunks) + 1
    assert_fired(world.check("cost"), "cost", document=ALPHA_ID, says="x 0 interruptions")


def test_cost_fires_when_a_document_with_no_planned_chunks_is_embedded(world: World) -> None:
    world.inputs[DELTA_ID] = 1
    assert_fired(world.check("cost"), "cost", document=DELTA_ID, says="plans no chunks")


# -- billing -------------------------------------------------------------------------

# At list prices: a page $0.003, 1M tokens $0.02 (text-embedding-3-small).
PAGE = Decimal("0.003")


def call(
    world: World,
    job_id: uuid.UUID,
    service: str,
    outcome: str,
    *,
    estimated: Decimal,
    cost: Decimal | None,
    pages: int = 0,
    tokens: int = 0,
    caller: str = W1,
    budget: str | None = "run",
) -> BilledCallRow:
    row = BilledCallRow(
        call_id=len(world.billed_calls) + 1,
        job_id=job_id,
        service=service,
        caller=caller,
        budget_id=budget,
        outcome=outcome,
        estimated_usd=estimated,
        pages=pages,
        tokens=tokens,
        cost_usd=cost,
        reference=None,
    )
    world.billed_calls.append(row)
    return row


def billed_world(world: World) -> tuple[World, dict[str, Usage]]:
    """Alpha's parse counted at 2 pages and one embedding call of 1,000 tokens; gamma's
    worker (worker-2, holding it) mid-call; a budget of $0.01 that adds up."""
    alpha, _, gamma, _ = ids(world)
    call(world, alpha, "parser", "billed", estimated=PAGE, cost=2 * PAGE, pages=2)
    call(world, alpha, "embeddings", "billed", estimated=Decimal("0.0001"),
         cost=Decimal("0.00002"), tokens=1000)  # fmt: skip
    call(world, gamma, "embeddings", "in_flight", estimated=Decimal("0.0001"), cost=None,
         caller=W2)  # fmt: skip
    world.budgets["run"] = BudgetRow(
        "run", Decimal("0.01"), spent_usd=Decimal("0.00602"), reserved_usd=Decimal("0.0001")
    )
    return world, {"parser": Usage(pages=2), "embeddings": Usage(tokens=1000)}


def check_billing(world: World, billed: dict[str, Usage] | None) -> list[Violation]:
    return check(world.observation(services_billed=billed), world.expectations(), names=["billing"])


def test_billing_holds_on_a_ledger_that_adds_up(world: World) -> None:
    world, billed = billed_world(world)
    assert check_billing(world, billed) == []


def test_billing_fires_when_a_call_is_priced_wrong(world: World) -> None:
    world, billed = billed_world(world)
    first = world.billed_calls[1]
    world.billed_calls[1] = replace(first, cost_usd=Decimal("0.00003"))
    world.budgets["run"] = replace(world.budgets["run"], spent_usd=Decimal("0.00603"))
    assert_fired(
        check_billing(world, billed), "billing", job=first.job_id, says="at the wrong cost"
    )


def test_billing_fires_when_a_call_outlives_its_workers_hold_on_the_job(world: World) -> None:
    world, billed = billed_world(world)
    alpha, *_ = ids(world)  # done: no worker holds it
    call(world, alpha, "embeddings", "in_flight", estimated=Decimal("0.0001"), cost=None)
    world.budgets["run"] = replace(world.budgets["run"], reserved_usd=Decimal("0.0002"))
    assert_fired(
        check_billing(world, billed), "billing", job=alpha, says="reservation is never released"
    )


def test_billing_fires_when_the_budget_does_not_add_up_to_its_calls(world: World) -> None:
    world, billed = billed_world(world)
    world.budgets["run"] = replace(world.budgets["run"], reserved_usd=Decimal("0.0002"))
    assert_fired(check_billing(world, billed), "billing", says="does not add up to its calls")


def test_billing_fires_when_the_budget_is_overspent(world: World) -> None:
    world, billed = billed_world(world)
    world.budgets["run"] = replace(world.budgets["run"], limit_usd=Decimal("0.006"))
    # 2 pages counted at $0.003 over a one-page estimate: the cap may be passed by that.
    assert check_billing(world, billed) == []
    world.budgets["run"] = replace(world.budgets["run"], limit_usd=Decimal("0.003"))
    assert_fired(check_billing(world, billed), "billing", says="overspent")


def test_billing_fires_when_a_service_billed_a_call_the_ledger_lacks(world: World) -> None:
    world, billed = billed_world(world)
    assert_fired(
        check_billing(world, {**billed, "parser": Usage(pages=3)}),
        "billing",
        says="parser: the service billed calls the ledger does not record",
    )
    # While a call is uncertain, the bill may run ahead of the ledger.
    gamma = ids(world)[2]
    call(world, gamma, "parser", "unconfirmed", estimated=PAGE, cost=PAGE, caller=W2,
         budget=None)  # fmt: skip
    assert check_billing(world, {**billed, "parser": Usage(pages=3)}) == []
    # But it never confirms more than was billed.
    assert_fired(
        check_billing(world, {**billed, "embeddings": Usage(tokens=999)}),
        "billing",
        says="confirms more than the service billed",
    )


# -- liveness ------------------------------------------------------------------------


def finish(world: World) -> None:
    _, beta, gamma, _ = ids(world)
    world.work(gamma)
    world.run(gamma, W2)
    world.run(beta, W1)


def test_liveness_holds_when_every_document_ends_as_predicted(world: World) -> None:
    finish(world)
    assert check(world.observation(), world.expectations()) == []
    assert liveness(world.snapshot(), world.expectations()) == []


def test_liveness_fires_when_a_job_is_left_live(world: World) -> None:
    _, beta, _, _ = ids(world)
    found = liveness(world.snapshot(), world.expectations())
    violation = assert_fired(found, "liveness", job=beta, says="(chunking, queued)")
    assert violation.document_id == BETA_ID
    assert "done at embedded" in (violation.expected or "")


def test_liveness_fires_when_a_done_document_should_have_been_dead_lettered(
    world: World,
) -> None:
    finish(world)
    outcomes = {
        **world.outcomes,
        ALPHA_ID: ExpectedOutcome(ALPHA_ID, State.DEADLETTER, Stage.PARSING, reason="unparseable"),
    }
    found = liveness(world.snapshot(), world.expectations(outcomes=outcomes))
    assert_fired(found, "liveness", document=ALPHA_ID, says="(embedded, done)")
    assert all(v.document_id == ALPHA_ID for v in found)


def test_liveness_fires_on_a_document_no_upload_created(world: World) -> None:
    finish(world)
    stray = uuid.UUID(int=55)
    world.documents[stray] = replace(world.documents[ALPHA_ID], document_id=stray)
    found = liveness(world.snapshot(), world.expectations())
    assert_fired(found, "liveness", document=stray, says="no accepted upload")


# -- speed ---------------------------------------------------------------------------


def test_check_stays_fast_on_twenty_documents_and_hundreds_of_changes() -> None:
    world = World()
    corpus = (ALPHA, BETA, GAMMA, DELTA)
    jobs = [
        world.upload(n, replace(corpus[n % 4], data=corpus[n % 4].data + b"\n" * (n // 4)))
        for n in range(1, 21)
    ]
    for index, job in enumerate(jobs):
        world.run(job, W1 if index % 2 else W2, until=None if index % 3 else at(Stage.EMBEDDING))
    observation, expectations = world.observation(), world.expectations()
    assert len(observation.history) > 400
    started = time.perf_counter()
    assert check(observation, expectations) == []
    assert time.perf_counter() - started < 0.25

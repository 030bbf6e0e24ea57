"""The state machines: Hypothesis chooses uploads, steps, crashes, faults and time.

:class:`QueueMachine` is the job-queue layer (workers stepping checkpoint by checkpoint,
crashing, restarting, losing connections; time moving); :class:`PipelineMachine` adds
the document layer (uploads and re-uploads, fault plans on the parser and the
embeddings service, webhooks delivered, duplicated, tampered or stale, operator retries).
After every rule the database and the audit trail are checked against the model; at the
end, faults heal, time moves and the workers drain: every job must end as predicted.

Machines are synchronous; the async system runs on an event loop each machine owns
(an ``asyncio.Runner`` created with the machine, closed in its teardown).

Use them as tests::

    from pipeline_models.machines import PipelineMachine
    TestPipeline = PipelineMachine.TestCase

Rules and their arguments are named so that a shrunk failure reads as a story:
``upload_document(user=ALICE, document=...)``, ``step_worker(worker='w1')``,
``crash_worker(worker='w2')``, ``advance_clock(seconds=31)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from hypothesis import event as hypothesis_event
from hypothesis import note as hypothesis_note
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from pipeline_models.database import Database
from pipeline_models.documents import Document, DocumentKind
from pipeline_models.drivers import (
    CHECK_CONFIG,
    PipelineDriver,
    QueueDriver,
    ReferenceDriver,
    WebhookKind,
)
from pipeline_models.fakes import FaultPlan
from pipeline_models.history import JobChange
from pipeline_models.invariants import (
    INVARIANTS,
    InvariantViolation,
    Violation,
    check,
    liveness,
)
from pipeline_models.lifecycle import State, TransitionKind
from strategies import documents, fault_plans, faults

T = TypeVar("T")

ALICE = uuid.UUID("00000000-0000-4000-8000-00000000a11c")
BOB = uuid.UUID("00000000-0000-4000-8000-000000000b0b")
USERS = (ALICE, BOB)
CLOCK_STEPS = (1, 3, 10, 31, 61, 301)
# A few documents are enough to interleave; more only lengthen every drain.
MAX_DOCUMENTS = 4
QUEUE_INVARIANTS = ("transitions", "fencing", "retries", "no_duplicates")


@dataclass
class RunStatistics:
    """What the machines did, across every example of a run (for reports and tests)."""

    examples: int = 0
    rules: int = 0  # rules run (each followed by the invariants)
    steps: int = 0  # worker steps the rules took (checkpoint to checkpoint)
    drain_steps: int = 0  # whole worker steps the drains took
    checks: int = 0  # invariant checks that read the database
    transitions: Counter[TransitionKind] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)  # by phase: setup, check, drain…

    @contextlib.contextmanager
    def timing(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.seconds[phase] = self.seconds.get(phase, 0.0) + elapsed

    def uncovered(self) -> list[TransitionKind]:
        return [kind for kind in TransitionKind if not self.transitions[kind]]


STATISTICS = RunStatistics()


class _Database:
    """The database every machine in this process uses: set by the pytest plugin or
    the ``check`` command (one embedded server per process, started on first use)."""

    database: ClassVar[Database | None] = None

    @classmethod
    def get(cls) -> Database:
        if cls.database is None:
            database = Database.from_environment()
            asyncio.run(database.ensure_schema())
            cls.database = database
        return cls.database


def use_database(database: Database) -> None:
    """Make every machine in this process run against ``database``."""
    _Database.database = database


class QueueMachine(RuleBasedStateMachine):
    """The job-queue layer: enqueue, step, crash, restart, lose connections, move time."""

    WORKER_SLOTS: ClassVar[tuple[str, ...]] = ("w1", "w2")
    INVARIANT_NAMES: ClassVar[tuple[str, ...] | None] = QUEUE_INVARIANTS

    def __init__(self) -> None:
        super().__init__()
        self._runner = asyncio.Runner()
        with STATISTICS.timing("setup"):
            self.driver: QueueDriver = self.make_driver()
            self.incarnation = dict.fromkeys(self.WORKER_SLOTS, 1)
            self.crashed: set[str] = set()
            # Rules that cannot change the database (time, fault plans) leave it clean:
            # the last check still holds, so it is not repeated.
            self.dirty = True
            # Counted here, not read from the database: a precondition must not depend on
            # how a race came out, or Hypothesis cannot replay the program.
            self.new_documents = 0
            self._run(self.driver.setup())
            for slot in self.WORKER_SLOTS:
                self._run(self.driver.start_worker(slot))
        STATISTICS.examples += 1

    def make_driver(self) -> QueueDriver:
        """The system under test; override to check another worker."""
        return ReferenceDriver(_Database.get(), config=CHECK_CONFIG)

    def _run(self, awaitable: Awaitable[T]) -> T:
        with STATISTICS.timing(f"rule {sys._getframe(1).f_code.co_name}"):
            return self._runner.run(awaitable)  # type: ignore[arg-type]

    def worker_name(self, slot: str) -> str:
        """The slot's current incarnation: a restarted worker is a new process."""
        generation = self.incarnation[slot]
        return slot if generation == 1 else f"{slot}~{generation}"

    # -- rules -----------------------------------------------------------------------

    @initialize()
    def enqueue_first_job(self) -> None:
        self._enqueue()

    def _enqueue(self) -> None:
        self.new_documents += 1
        self._run(self.driver.enqueue())

    @precondition(lambda self: self.new_documents < MAX_DOCUMENTS)
    @rule()
    def enqueue_a_job(self) -> None:
        self._enqueue()

    @rule(worker=st.sampled_from(("w1", "w2")))
    def step_worker(self, worker: str) -> None:
        if worker in self.crashed:
            return
        report = self._run(self.driver.step(self.worker_name(worker)))
        STATISTICS.steps += 1
        event(f"step {report.outcome}")
        note(str(report))

    @rule(worker=st.sampled_from(("w1", "w2")), checkpoints=st.integers(2, 12))
    def run_worker(self, worker: str, checkpoints: int) -> None:
        """Several steps of one worker in a row (shrinks to fewer, or to step_worker)."""
        for _ in range(checkpoints):
            self.step_worker(worker)

    @rule(worker=st.sampled_from(("w1", "w2")))
    def crash_worker(self, worker: str) -> None:
        if worker in self.crashed:
            return
        self._run(self.driver.crash(self.worker_name(worker)))
        self.crashed.add(worker)
        event("crash")

    @precondition(lambda self: bool(self.crashed))
    @rule(worker=st.sampled_from(("w1", "w2")))
    def restart_worker(self, worker: str) -> None:
        if worker not in self.crashed:
            return
        self.crashed.discard(worker)
        self.incarnation[worker] += 1
        self._run(self.driver.start_worker(self.worker_name(worker)))

    @rule(worker=st.sampled_from(("w1", "w2")))
    def drop_database_connection(self, worker: str) -> None:
        if worker in self.crashed:
            return
        self._run(self.driver.drop_connection(self.worker_name(worker)))
        event("dropped connection")

    @rule(seconds=st.sampled_from(CLOCK_STEPS))
    def advance_clock(self, seconds: int) -> None:
        self.driver.clock.advance(seconds)
        self.dirty = False

    # -- checks ----------------------------------------------------------------------

    @invariant()
    def database_agrees_with_the_model(self) -> None:
        STATISTICS.rules += 1
        if not self.dirty:
            self.dirty = True
            return
        with STATISTICS.timing("observe"):
            observation = self._run(self.driver.observe())
        _record_coverage(observation.changes)
        STATISTICS.checks += 1
        with STATISTICS.timing("check"):
            violations = check(observation, self.driver.expectations(), names=self.INVARIANT_NAMES)
        if violations:
            raise InvariantViolation(violations)

    def teardown(self) -> None:
        try:
            # Skip the drain when the example already failed: its error is the report.
            if sys.exception() is None:
                with STATISTICS.timing("drain"):
                    self._drain_and_check_liveness()
        finally:
            try:
                with STATISTICS.timing("teardown"):
                    self._run(self.driver.teardown())
            finally:
                self._runner.close()

    def _drain_and_check_liveness(self) -> None:
        snapshot, settled = self._run(self.driver.drain())
        STATISTICS.drain_steps += getattr(self.driver, "drain_steps", 0)
        observation = self._run(self.driver.observe())
        _record_coverage(observation.changes)
        expectations = self.driver.expectations()
        violations = check(observation, expectations, names=self.INVARIANT_NAMES)
        if not settled:
            violations.append(Violation("liveness", "jobs were still live when the drain gave up"))
        violations.extend(liveness(snapshot, expectations))
        if violations:
            raise InvariantViolation(violations)


class PipelineMachine(QueueMachine):
    """The document pipeline: uploads, faults, webhooks and operator retries on top of
    the job-queue layer, every invariant checked after every rule."""

    INVARIANT_NAMES: ClassVar[tuple[str, ...] | None] = None  # all of them

    uploads = Bundle("uploads")

    @property
    def pipeline(self) -> PipelineDriver:
        assert isinstance(self.driver, PipelineDriver)
        return self.driver

    @initialize(
        target=uploads,
        user=st.sampled_from(USERS),
        document=documents(kinds=[DocumentKind.MARKDOWN], min_size=80, max_size=600),
    )
    def upload_first_document(
        self, user: uuid.UUID, document: Document
    ) -> tuple[uuid.UUID, Document]:
        self.new_documents += 1
        outcome = self._run(self.pipeline.upload(user, document))
        event(f"upload {outcome.status}")
        return (user, document)

    def enqueue_first_job(self) -> None:  # the document layer enqueues by uploading
        return

    def enqueue_a_job(self) -> None:
        return

    @precondition(lambda self: self.new_documents < MAX_DOCUMENTS)
    @rule(
        target=uploads,
        user=st.sampled_from(USERS),
        document=documents(max_size=600),
    )
    def upload_document(self, user: uuid.UUID, document: Document) -> tuple[uuid.UUID, Document]:
        self.new_documents += 1
        outcome = self._run(self.pipeline.upload(user, document))
        event(f"upload {outcome.status}")
        return (user, document)

    @rule(upload=uploads, by_the_other_user=st.booleans())
    def upload_the_same_bytes_again(
        self, upload: tuple[uuid.UUID, Document], by_the_other_user: bool
    ) -> None:
        user, document = upload
        if by_the_other_user:
            user = BOB if user == ALICE else ALICE
        outcome = self._run(self.pipeline.upload(user, document))
        if outcome.accepted and not by_the_other_user:
            assert not outcome.created, "the same bytes from the same user made a new document"

    @rule(plan=fault_plans())
    def put_faults_on_the_parser(self, plan: FaultPlan) -> None:
        self.pipeline.set_faults("parser", plan)
        self.dirty = False

    @rule(plan=fault_plans(faults=faults(wrong_dimension=True)))
    def put_faults_on_the_embeddings(self, plan: FaultPlan) -> None:
        self.pipeline.set_faults("embeddings", plan)
        self.dirty = False

    @rule()
    def deliver_parser_webhooks(self) -> None:
        statuses = self._run(self.pipeline.deliver_webhooks(WebhookKind.QUEUED))
        for status in statuses:
            event(f"webhook {status}")

    @rule()
    def deliver_a_webhook_twice(self) -> None:
        self._run(self.pipeline.deliver_webhooks(WebhookKind.DUPLICATE))

    @rule(kind=st.sampled_from([WebhookKind.TAMPERED, WebhookKind.STALE]))
    def deliver_a_forged_webhook(self, kind: WebhookKind) -> None:
        for status in self._run(self.pipeline.deliver_webhooks(kind)):
            assert status == 401, f"a {kind} webhook was answered {status}, not rejected (401)"

    @rule(pick=st.integers(0, 7))
    def retry_a_dead_letter_as_operator(self, pick: int) -> None:
        snapshot = self._run(self.driver.snapshot())
        # Ordered by what the program uploaded, not by random ids, so a replay picks alike.
        dead = sorted(
            (job for job in snapshot.jobs.values() if job.state is State.DEADLETTER),
            key=lambda job: (
                snapshot.documents[job.document_id].file_sha256,
                str(snapshot.documents[job.document_id].user_id),
            ),
        )
        if not dead:
            return
        job = dead[pick % len(dead)]
        owner = snapshot.documents[job.document_id].user_id
        status = self._run(self.pipeline.operator_retry(owner, job.job_id))
        assert status in (0, 200), f"the operator retry of a dead letter was answered {status}"
        event("operator retry")


def event(name: str) -> None:
    """Count ``name`` for Hypothesis's statistics (and the fuzzer's guidance); outside a
    Hypothesis run (a replayed program) it only counts."""
    STATISTICS.events[name] += 1
    if currently_in_test_context():
        hypothesis_event(name)


def note(text: str) -> None:
    """Attach ``text`` to a failure report; a replayed program prints it."""
    if currently_in_test_context():
        hypothesis_note(text)
    else:
        print(text)


def _record_coverage(changes: Iterable[JobChange]) -> None:
    for change in changes:
        kind = change.kind
        if change.moved and kind is not None:
            STATISTICS.transitions[kind] += 1
            event(f"transition {kind}")


def all_invariants() -> tuple[str, ...]:
    return tuple(INVARIANTS)


__all__ = [
    "ALICE",
    "BOB",
    "STATISTICS",
    "PipelineMachine",
    "QueueMachine",
    "RunStatistics",
    "all_invariants",
    "use_database",
]

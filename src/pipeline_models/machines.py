"""The state machines: Hypothesis chooses uploads, steps, crashes, faults and time.

:class:`QueueMachine` is the job-queue layer (workers stepping checkpoint by checkpoint,
crashing, restarting, losing connections; time moving); :class:`PipelineMachine` adds
the document layer (uploads and re-uploads, fault plans on the parser and the
embeddings service, webhooks delivered, duplicated, tampered or stale, operator retries).
After every rule the database and the audit trail are checked against the model; at the
end, faults heal, time moves and the workers drain: every job must end as predicted.

Machines are synchronous; the async system runs on one event loop the machines own
(an ``asyncio.Runner`` per process, closed at exit), so that connections and the API
app are reused from one example to the next instead of rebuilt.

Use them as tests::

    from pipeline_models.machines import PipelineMachine
    TestPipeline = PipelineMachine.TestCase

Rules and their arguments are named so that a shrunk failure reads as a story:
``upload_document(user=ALICE, document=...)``, ``step_worker(worker='w1')``,
``crash_worker(worker='w2')``, ``advance_clock(seconds=31)``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import ClassVar, TypeVar

from hypothesis import event as hypothesis_event
from hypothesis import note as hypothesis_note
from hypothesis import strategies as st
from hypothesis import target
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
    OPERATOR_USER,
    PipelineDriver,
    QueueDriver,
    ReferenceDriver,
    WebhookKind,
    keep_between_examples,
    release_shared,
)
from pipeline_models.fakes import FaultPlan
from pipeline_models.history import JobChange
from pipeline_models.interrupts import stop_if_asked
from pipeline_models.invariants import (
    INVARIANTS,
    Expectations,
    InvariantViolation,
    Observation,
    Violation,
    check,
    liveness,
)
from pipeline_models.lifecycle import Stage, State, TransitionKind
from pipeline_models.pipeline.checkpoints import Checkpoint
from pipeline_models.pipeline.inputs import (
    BOUNDARY_DOCUMENTS,
    BUDGET_LIMITS_USD,
    CLOCK_ADVANCES,
    EMBEDDINGS_FAULT_PLANS,
    PARSER_FAULT_PLANS,
    UPLOADS,
)
from pipeline_models.scheduler import Outcome, StepReport
from pipeline_models.snapshot import JobRow
from strategies import documents

T = TypeVar("T")

ALICE = uuid.UUID("00000000-0000-4000-8000-00000000a11c")
BOB = uuid.UUID("00000000-0000-4000-8000-000000000b0b")
USERS = (ALICE, BOB)
# A few documents are enough to interleave; more only lengthen every drain.
MAX_DOCUMENTS = 4
# A cap, then perhaps a raise: a rule free to fire all program long would keep most
# documents held before their parse, and every later stage would go unexplored.
MAX_SPENDING_CAPS = 2
# A whole-database outage costs a server restart (about 0.2 s, as much as dozens of
# rules): once a program, and only while a worker is mid-step with a job claimed.
MAX_OUTAGES = 1
# Where run_worker_until stops a worker: after an external call's effects are out in the
# world, and with the writes done but not committed.
PAUSE_POINTS = (Checkpoint.AFTER_CALL.value, Checkpoint.BEFORE_COMMIT.value)
STAGE_ORDER = {stage: position for position, stage in enumerate(Stage)}
QUEUE_INVARIANTS = (
    "transitions",
    "claims_skip_locks",
    "leases_cover_calls",
    "fencing",
    "retries",
    "no_duplicates",
)
# What the job-queue machine's rules make happen to jobs: enqueued (an upload), claimed
# and worked to the end, crashed and reclaimed, dead-lettered once crashes have used up
# the retries. A failed call (fail_transient) needs a fault on a service; webhooks,
# operator retries and spending caps (hold, release) are the pipeline machine's rules.
QUEUE_TRANSITIONS = (
    TransitionKind.CREATE,
    TransitionKind.CLAIM,
    TransitionKind.RENEW,
    TransitionKind.RECLAIM,
    TransitionKind.ADVANCE,
    TransitionKind.REQUEUE,
    TransitionKind.FAIL_PERMANENT,
    TransitionKind.FINALIZE,
)
# What every drain may make besides (ReferenceDriver.drain): it delivers the parser's
# queued webhooks, and retries as operator the dead letters the model did not predict.
DRAIN_TRANSITIONS = (TransitionKind.WEBHOOK, TransitionKind.OPERATOR_RETRY)


@dataclass
class RunStatistics:
    """What the machines did, across every example of a run (for reports and tests)."""

    examples: int = 0
    rules: int = 0  # rules run (each followed by the invariants)
    steps: int = 0  # worker steps the rules took (checkpoint to checkpoint)
    drain_steps: int = 0  # whole worker steps the drains took
    checks: int = 0  # invariant checks that read the database
    # Examples an invariant failed in, Hypothesis's replays while shrinking included: an
    # interrupted run can tell whether it had found anything.
    failures: int = 0
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


class _EventLoop:
    """The one event loop every machine in this process runs on, so that connections and
    the API app outlive an example (closed, with what the drivers keep, at exit)."""

    runner: ClassVar[asyncio.Runner | None] = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        if cls.runner is None:
            cls.runner = asyncio.Runner()
            keep_between_examples(cls.runner.get_loop())
            atexit.register(cls.close)
        return cls.runner.get_loop()

    @classmethod
    def close(cls) -> None:
        runner, cls.runner = cls.runner, None
        if runner is None:
            return
        with contextlib.suppress(Exception):
            runner.get_loop().run_until_complete(release_shared())
        runner.close()

    @classmethod
    def cancel_leftovers(cls) -> None:
        """Cancel what an example left running (a blocked request, a timer), so that
        nothing of it runs during the next example."""
        loop = cls.get()
        leftovers = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))


def use_database(database: Database) -> None:
    """Make every machine in this process run against ``database``."""
    _Database.database = database


class QueueMachine(RuleBasedStateMachine):
    """The job-queue layer: enqueue, step, crash, restart, lose connections, move time."""

    WORKER_SLOTS: ClassVar[tuple[str, ...]] = ("w1", "w2")
    # What this machine checks, which its report lists (see checked_invariants() and check.py):
    # the invariants judged after every rule (None: all of them), and the lifecycle
    # transitions its rules make.
    INVARIANT_NAMES: ClassVar[tuple[str, ...] | None] = QUEUE_INVARIANTS
    TRANSITIONS: ClassVar[tuple[TransitionKind, ...]] = QUEUE_TRANSITIONS
    # Off only to shrink a failure that fired before the drain: the drain is half of an
    # example's time and cannot matter to it.
    DRAIN: ClassVar[bool] = True

    def __init__(self) -> None:
        stop_if_asked()  # Ctrl-C (see interrupts): before an example, nothing is half done
        super().__init__()
        with STATISTICS.timing("setup"):
            self.driver: QueueDriver = self.make_driver()
            self._loop = _EventLoop.get()
            self.incarnation = dict.fromkeys(self.WORKER_SLOTS, 1)
            self.crashed: set[str] = set()
            # Rules that cannot change the database (time, fault plans) leave it clean:
            # the last check still holds, so it is not repeated.
            self.dirty = True
            # Counted here, not read from the database: a precondition must not depend on
            # how a race came out, or Hypothesis cannot replay the program.
            self.new_documents = 0
            self.spending_caps = 0
            self.outages = 0
            # Where each worker last parked: a crash there is its own behaviour to cover.
            self.parked_at: dict[str, object] = {}
            # What Hypothesis's target phase climbs (see _aim): how far documents got,
            # and how many texts were sent to the embeddings service per planned chunk.
            self._targets: dict[str, float] = {}
            self._run(self.driver.setup())
            for slot in self.WORKER_SLOTS:
                self._run(self.driver.start_worker(slot))
        STATISTICS.examples += 1

    @classmethod
    def checked_invariants(cls) -> tuple[str, ...]:
        """The invariants this machine judges after every rule and at every drain."""
        return tuple(INVARIANTS) if cls.INVARIANT_NAMES is None else cls.INVARIANT_NAMES

    def make_driver(self) -> QueueDriver:
        """The system under test; override to check another worker."""
        return ReferenceDriver(_Database.get(), config=CHECK_CONFIG)

    def _run(self, awaitable: Awaitable[T]) -> T:
        with STATISTICS.timing(f"rule {sys._getframe(1).f_code.co_name}"):
            # The loop directly: Runner.run() would swap the SIGINT handler on every
            # call, which costs more than many a rule.
            return self._loop.run_until_complete(awaitable)

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
        self._step(worker)

    def _step(self, worker: str) -> StepReport | None:
        if worker in self.crashed:
            return None
        report = self._run(self.driver.step(self.worker_name(worker)))
        STATISTICS.steps += 1
        event(f"step {report.outcome}")
        self.parked_at[worker] = report.checkpoint
        note(str(report))
        return report

    @rule(worker=st.sampled_from(("w1", "w2")), checkpoints=st.integers(2, 12))
    def run_worker(self, worker: str, checkpoints: int) -> None:
        """Several steps of one worker in a row (shrinks to fewer, or to step_worker),
        the invariants checked at every checkpoint on the way, as after every rule."""
        for count in range(checkpoints):
            if count:
                self._check_the_database()
            self.step_worker(worker)

    @rule(worker=st.sampled_from(("w1", "w2")), checkpoint=st.sampled_from(PAUSE_POINTS))
    def run_worker_until(self, worker: str, checkpoint: str) -> None:
        """Run one worker until it stops at ``checkpoint`` (a dozen steps at most), the
        invariants checked on the way: a pause or a crash right after a call or just
        before a commit, where zombies and half-done work come from, is one rule away."""
        for count in range(12):
            if count:
                self._check_the_database()
            report = self._step(worker)
            if report is None or report.checkpoint == checkpoint:
                return
            if report.outcome in (Outcome.IDLE, Outcome.BLOCKED, Outcome.CONNECTION_LOST):
                return

    @rule(worker=st.sampled_from(("w1", "w2")), steps=st.integers(1, 10))
    def run_whole_steps(self, worker: str, steps: int) -> None:
        """The worker finishes its current step, then runs whole steps: programs reach the
        late stages (and their faults) in a few rules, where checkpoint by checkpoint they
        would need dozens. Shrinks to fewer steps, or to run_worker."""
        for count in range(steps):
            if worker in self.crashed:
                return
            if count:
                self._check_the_database()
            report = self._run(self.driver.step_whole(self.worker_name(worker)))
            STATISTICS.steps += 1
            event(f"step {report.outcome}")
            note(str(report))
            self.parked_at[worker] = None  # at a step's end, or blocked
            if report.outcome is Outcome.BLOCKED:
                return

    @rule(worker=st.sampled_from(("w1", "w2")))
    def crash_worker(self, worker: str) -> None:
        if worker in self.crashed:
            return
        self._run(self.driver.crash(self.worker_name(worker)))
        self.crashed.add(worker)
        event("crash")
        event(f"crash at {self.parked_at.pop(worker, None) or 'a step boundary'}")

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

    @rule(pick=st.integers(0, 7))
    def hold_a_job_row_lock(self, pick: int) -> None:
        """Another session locks a job's row and keeps it (a claimer mid-transaction, an
        operator's query): claims must pass it by, everyone else may wait."""
        if self._run(self.driver.hold_job_lock(pick)) is not None:
            event("job row lock held")
        self.dirty = False

    @rule()
    def release_the_job_row_lock(self) -> None:
        self._run(self.driver.release_job_lock())

    @rule(seconds=CLOCK_ADVANCES)
    def advance_clock(self, seconds: int) -> None:
        self.driver.clock.advance(seconds)
        self.dirty = False

    # -- checks ----------------------------------------------------------------------

    @invariant()
    def database_agrees_with_the_model(self) -> None:
        stop_if_asked()  # Ctrl-C: after a rule, the teardown undoes the rest
        STATISTICS.rules += 1
        if not self.dirty:
            self.dirty = True
            return
        self._check_the_database()

    def _check_the_database(self) -> None:
        with STATISTICS.timing("observe"):
            observation = self._run(self.driver.observe())
        _record_coverage(observation.changes)
        STATISTICS.checks += 1
        expectations = self.driver.expectations()
        with STATISTICS.timing("check"):
            violations = check(observation, expectations, names=self.INVARIANT_NAMES)
        self._aim(observation, expectations)
        if violations:
            STATISTICS.failures += 1
            raise InvariantViolation(violations)

    def _aim(self, observation: Observation, expectations: Expectations) -> None:
        """Steer the search (targeted property-based testing): programs that push jobs to
        later stages, and that send more embedding texts per planned chunk, are the ones
        Hypothesis mutates further, towards the bugs that hide there."""
        stages = [STAGE_ORDER[job.stage] for job in observation.snapshot.jobs.values()]
        if stages:
            self._raise_target("furthest stage", max(stages))
        for document_id, sent in observation.embedding_inputs.items():
            planned = len(expectations.planned(document_id))
            if planned:
                self._raise_target("embedding texts per planned chunk", sent / planned)
        # Towards an open circuit: the longest run of failures a service's breaker counts.
        if isinstance(self.driver, ReferenceDriver):
            self._raise_target("failures in a row", self.driver.circuit_failures())
            for service in self.driver.circuits_open():
                event(f"circuit open: {service}")

    def _raise_target(self, label: str, value: float) -> None:
        self._targets[label] = max(value, self._targets.get(label, value))

    def teardown(self) -> None:
        if currently_in_test_context():
            for label, value in self._targets.items():
                target(value, label=label)
        try:
            # Skip the drain when the example already failed: its error is the report.
            if sys.exception() is None and self.DRAIN:
                with STATISTICS.timing("drain"):
                    self._drain_and_check_liveness()
        finally:
            try:
                with STATISTICS.timing("teardown"):
                    self._run(self.driver.teardown())
            finally:
                _EventLoop.cancel_leftovers()

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
            STATISTICS.failures += 1
            raise InvariantViolation(violations)


# Forged webhooks: a body changed after signing, a timestamp outside the tolerance either
# way, and each way of breaking the signature headers; each must be refused (401).
FORGERIES = (
    WebhookKind.TAMPERED,
    WebhookKind.STALE,
    WebhookKind.FUTURE,
    WebhookKind.UNSIGNED,
    WebhookKind.UNDATED,
    WebhookKind.BAD_TIMESTAMP,
    WebhookKind.BAD_SIGNATURE,
    WebhookKind.NOT_HEX,
    WebhookKind.OTHER_SCHEME,
)
_NO_SUCH_JOB = uuid.UUID("00000000-0000-4000-8000-000000000404")
# What misuse_the_api sends: method, path ("{job}": a job of the program), as whom
# (None: no token; "owner": the job's owner), a token's lifetime (0: expired at once),
# the body, and the status the API must answer.
API_MISUSES: dict[str, tuple[str, str, object, int | None, object, int]] = {
    "no token": ("GET", "/jobs/{job}", None, None, None, 401),
    "an expired token": ("GET", "/jobs/{job}", "owner", 0, None, 401),
    "a job that does not exist": ("GET", f"/jobs/{_NO_SUCH_JOB}", ALICE, None, None, 404),
    "a retry of a job that does not exist": (
        "POST",
        f"/jobs/{_NO_SUCH_JOB}/retry",
        ALICE,
        None,
        None,
        404,
    ),
    "a cap set by a user": ("PUT", "/operator/budget", BOB, None, {"max_cost_usd": "5"}, 403),
    "a cap that is no number": (
        "PUT",
        "/operator/budget",
        OPERATOR_USER,
        None,
        {"max_cost_usd": "five"},
        422,
    ),
    "a negative cap": (
        "PUT",
        "/operator/budget",
        OPERATOR_USER,
        None,
        {"max_cost_usd": "-1"},
        422,
    ),
}


class PipelineMachine(QueueMachine):
    """The document pipeline: uploads, faults, webhooks and operator retries on top of
    the job-queue layer, every invariant checked after every rule."""

    INVARIANT_NAMES: ClassVar[tuple[str, ...] | None] = None  # all of them
    TRANSITIONS: ClassVar[tuple[TransitionKind, ...]] = tuple(TransitionKind)  # all of them

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
    def upload_first_document(self, user: uuid.UUID, document: Document) -> Upload:
        self.new_documents += 1
        outcome = self._run(self.pipeline.upload(user, document))
        event(f"upload {outcome.status}")
        return Upload(user, document, outcome.accepted)

    def enqueue_first_job(self) -> None:  # the document layer enqueues by uploading
        return

    def enqueue_a_job(self) -> None:
        return

    @precondition(lambda self: self.new_documents < MAX_DOCUMENTS)
    @rule(target=uploads, user=st.sampled_from(USERS), document=UPLOADS)
    def upload_document(self, user: uuid.UUID, document: Document) -> Upload:
        self.new_documents += 1
        outcome = self._run(self.pipeline.upload(user, document))
        event(f"upload {outcome.status}")
        return Upload(user, document, outcome.accepted)

    @precondition(lambda self: self.new_documents < MAX_DOCUMENTS)
    @rule(
        target=uploads,
        user=st.sampled_from(USERS),
        document=documents(kinds=[DocumentKind.MARKDOWN], min_size=80, max_size=600),
        point=st.sampled_from(["blob_stored", "document_inserted"]),
    )
    def upload_cut_short(self, user: uuid.UUID, document: Document, point: str) -> Upload:
        """The API process dies at ``point`` of the upload: the client hears nothing (and
        may send the same bytes again, which the bundle lets a later rule do)."""
        self.new_documents += 1
        outcome = self._run(self.pipeline.upload(user, document, cut_at=point))
        event(f"upload cut at {point}")
        return Upload(user, document, outcome.accepted)

    @precondition(lambda self: self.new_documents < MAX_DOCUMENTS)
    @rule(target=uploads, user=st.sampled_from(USERS), document=BOUNDARY_DOCUMENTS)
    def upload_a_boundary_document(self, user: uuid.UUID, document: Document) -> Upload:
        """An upload at an edge: exactly a batch of chunks (or one more, or one fewer),
        no text, no byte, one byte, a word a chunk long, the size limit's bytes."""
        self.new_documents += 1
        outcome = self._run(self.pipeline.upload(user, document))
        event(f"upload {outcome.status}")
        event(f"boundary upload {document.filename}")
        return Upload(user, document, outcome.accepted)

    def _mid_claim(self) -> bool:
        """Whether a live worker is parked mid-step, with a job claimed (known from the
        program's own steps, never from the database, so that a replay decides alike)."""
        return any(
            self.parked_at.get(slot) is not None and slot not in self.crashed
            for slot in self.WORKER_SLOTS
        )

    # Named to sort after the other rules without arguments: Hypothesis orders them by
    # name and shrinks a rule's choice towards the first, which must be one that is
    # always allowed (as "database_outage", first and mostly not allowed, it left a
    # shrunk failure of 50 no-op rules in test_bugs_are_caught).
    @precondition(lambda self: self.outages < MAX_OUTAGES and self._mid_claim())
    @rule()
    def whole_database_outage(self) -> None:
        """The whole database goes away and comes back while a worker is mid-step:
        every session is lost (embedded: the server is stopped at once and started
        again; otherwise every session this process has with the database is ended),
        open transactions with them. Workers and the API must recover on their own and
        lose nothing; the checker's own sessions reconnect."""
        self.outages += 1
        self._run(self.pipeline.outage())
        event("database outage")
        # Not how it was made (a restart, or sessions ended): the same seed must read
        # the same on any server.
        note("database outage: every session lost")

    @rule(upload=uploads, by_the_other_user=st.booleans())
    def upload_the_same_bytes_again(self, upload: Upload, by_the_other_user: bool) -> None:
        user, document = upload.user, upload.document
        if by_the_other_user:
            user = BOB if user == ALICE else ALICE
        outcome = self._run(self.pipeline.upload(user, document))
        if outcome.status == 0:
            return  # waits on a worker's lock; it completes, and is recorded, later
        if upload.accepted:
            assert outcome.accepted, (
                f"the same bytes, accepted before, were refused with {outcome.status}"
            )
        if outcome.accepted and not by_the_other_user and upload.accepted:
            assert not outcome.created, "the same bytes from the same user made a new document"

    @rule(plan=PARSER_FAULT_PLANS)
    def put_faults_on_the_parser(self, plan: FaultPlan) -> None:
        self.pipeline.set_faults("parser", plan)
        _fault_events("parser", plan)
        self.dirty = False

    @rule(plan=EMBEDDINGS_FAULT_PLANS)
    def put_faults_on_the_embeddings(self, plan: FaultPlan) -> None:
        self.pipeline.set_faults("embeddings", plan)
        _fault_events("embeddings", plan)
        self.dirty = False

    @precondition(lambda self: self.spending_caps < MAX_SPENDING_CAPS)
    @rule(limit=st.sampled_from(BUDGET_LIMITS_USD))
    def cap_the_spending(self, limit: Decimal) -> None:
        """The operator caps the run's spending, or raises the cap (never lowers it):
        a cap below the next call's estimate holds its job, a raise releases it."""
        self.spending_caps += 1
        self._run(self.pipeline.raise_budget(limit))
        event(f"spending capped at {limit} USD")

    @rule()
    def deliver_parser_webhooks(self) -> None:
        statuses = self._run(self.pipeline.deliver_webhooks(WebhookKind.QUEUED))
        for status in statuses:
            event(f"webhook {status}")

    @rule()
    def deliver_a_webhook_twice(self) -> None:
        for status in self._run(self.pipeline.deliver_webhooks(WebhookKind.DUPLICATE)):
            event(f"webhook duplicate {status}")

    @rule(kind=st.sampled_from(FORGERIES))
    def deliver_a_forged_webhook(self, kind: WebhookKind) -> None:
        for status in self._run(self.pipeline.deliver_webhooks(kind)):
            event(f"webhook {kind} {status}")
            assert status == 401, f"a {kind} webhook was answered {status}, not rejected (401)"

    @rule(pick=st.integers(0, 7))
    def look_at_a_job_as_the_other_user(self, pick: int) -> None:
        jobs = self._jobs_in_upload_order()
        if not jobs:
            return
        job, owner = jobs[pick % len(jobs)]
        stranger = BOB if owner == ALICE else ALICE
        status = self._run(self.pipeline.read_job(stranger, job.job_id))
        assert status == 404, f"another user's job was answered {status}, not 404"

    @rule(pick=st.integers(0, 7))
    def look_at_a_job_as_its_owner(self, pick: int) -> None:
        jobs = self._jobs_in_upload_order()
        if not jobs:
            return
        job, owner = jobs[pick % len(jobs)]
        status = self._run(self.pipeline.read_job(owner, job.job_id))
        assert status == 200, f"its owner's job was answered {status}, not 200"

    @rule(path=st.sampled_from(["/health", "/metrics"]))
    def look_at_the_health_and_the_metrics(self, path: str) -> None:
        """What an operator's dashboard reads: the database, the storage, each service
        and its circuit, the jobs, the holds and the cost."""
        status = self._run(self.pipeline.call_api("GET", path, user=None))
        allowed = (200, 503) if path == "/health" else (200,)  # 503: a circuit is open
        assert status in allowed, f"GET {path} was answered {status}"
        event(f"{path} {status}")

    @rule(misuse=st.sampled_from(sorted(API_MISUSES)), pick=st.integers(0, 7))
    def misuse_the_api(self, misuse: str, pick: int) -> None:
        """A request the API must refuse, and refuse with the right status."""
        method, path, user, ttl, body, expected = API_MISUSES[misuse]
        jobs = self._jobs_in_upload_order()
        if "{job}" in path:
            if not jobs:
                return
            job, owner = jobs[pick % len(jobs)]
            path = path.format(job=job.job_id)
            user = owner if user == "owner" else user
        status = self._run(
            self.pipeline.call_api(
                method,
                path,
                user=None if user is None else uuid.UUID(str(user)),
                ttl_seconds=ttl,
                json=body,
            )
        )
        assert status == expected, f"{misuse}: answered {status}, not {expected}"
        event(f"api misuse {misuse}")

    @rule(pick=st.integers(0, 7))
    def retry_a_job_that_is_not_dead_as_operator(self, pick: int) -> None:
        live_or_done = [
            (j, o) for j, o in self._jobs_in_upload_order() if j.state is not State.DEADLETTER
        ]
        if not live_or_done:
            return
        job, owner = live_or_done[pick % len(live_or_done)]
        status = self._run(self.pipeline.operator_retry(owner, job.job_id))
        assert status in (0, 409), (
            f"an operator retry of a {job.state} job was answered {status}, not refused (409)"
        )

    def _jobs_in_upload_order(self) -> list[tuple[JobRow, uuid.UUID]]:
        """Every job with its owner, ordered by what the program uploaded (not by random
        ids), so a replay picks alike."""
        snapshot = self._run(self.driver.snapshot())
        jobs = sorted(
            snapshot.jobs.values(),
            key=lambda job: (
                snapshot.documents[job.document_id].file_sha256,
                str(snapshot.documents[job.document_id].user_id),
            ),
        )
        return [(job, snapshot.documents[job.document_id].user_id) for job in jobs]

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


@dataclass(frozen=True)
class Upload:
    """What an upload rule sent (a later rule may send the same bytes again)."""

    user: uuid.UUID
    document: Document
    accepted: bool

    def __repr__(self) -> str:
        who = "ALICE" if self.user == ALICE else "BOB" if self.user == BOB else str(self.user)
        return f"Upload({who}, {self.document!r}, accepted={self.accepted})"


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


def _fault_events(service: str, plan: FaultPlan) -> None:
    for fault in plan.script:
        event(f"{service} fault {fault.kind if fault else 'none'}")


def _record_coverage(changes: Iterable[JobChange]) -> None:
    for change in changes:
        kind = change.kind
        if change.moved and change.old_stage is not None and change.new_stage is not None:
            # Each edge of the lifecycle graph is its own behaviour for the fuzzer (and a
            # count for `pipeline-models report`); a forbidden one is named as such.
            edge = f"{change.old_stage}/{change.old_state} -> {change.new_stage}/{change.new_state}"
            event(f"edge {edge}" if kind is not None else f"forbidden edge {edge}")
        if change.moved and kind is not None:
            STATISTICS.transitions[kind] += 1
            event(f"transition {kind}")


def all_invariants() -> tuple[str, ...]:
    return tuple(INVARIANTS)


def transitions_of(machines: Iterable[type[QueueMachine]]) -> tuple[TransitionKind, ...]:
    """The transitions the rules of ``machines`` make, in lifecycle order.

    >>> transitions_of([QueueMachine]) == QUEUE_TRANSITIONS
    True
    >>> len(transitions_of([QueueMachine, PipelineMachine]))
    13
    """
    made = {kind for machine in machines for kind in machine.TRANSITIONS}
    return tuple(kind for kind in TransitionKind if kind in made)


__all__ = [
    "ALICE",
    "BOB",
    "DRAIN_TRANSITIONS",
    "QUEUE_TRANSITIONS",
    "STATISTICS",
    "PipelineMachine",
    "QueueMachine",
    "RunStatistics",
    "all_invariants",
    "transitions_of",
    "use_database",
]

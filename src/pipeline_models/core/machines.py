"""The queue machine: Hypothesis drives any adapter's workers, round trip by round trip.

:func:`machine_for` builds a :class:`QueueMachine` for an adapter. Its rules enqueue
jobs, step workers (each to its next round trip: ``w1 before UPDATE guide.jobs …``),
run them several round trips in a row, crash and restart them, and move the checker's
clock (by steps the spec's own timeouts suggest). After every rule the checker reads its
audit trail, replays who held what (:mod:`~pipeline_models.core.holders`) and judges
every selected invariant (:mod:`~pipeline_models.core.invariants`), raising the first
cause's class so that each distinct cause shrinks, and is reported, on its own. At the
end of an example the workers drain: time moves on until every job is finished.

Use it as a test::

    TestGuide = machine_for(GuideAdapter).TestCase

or leave invariants out, without a subclass::

    TestGuide = machine_for(GuideAdapter, without=["redelivery"]).TestCase
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import re
import sys
import traceback
from collections.abc import Awaitable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

import asyncpg
from hypothesis import note as hypothesis_note
from hypothesis import reject, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import RuleBasedStateMachine, rule

from pipeline_models.core.adapter import Adapter, actions_of, interleaved_actions_of
from pipeline_models.core.clock import CheckerClock
from pipeline_models.core.holders import HolderHistory, Move, moment_of
from pipeline_models.core.interpose import patched_drivers, terminate_every_connection
from pipeline_models.core.invariants import (
    ORDER,
    Finding,
    QueueJudge,
    in_causal_order,
    raise_findings,
    select,
)
from pipeline_models.core.observe import CHECKER_SCHEMA, CLOCK_SCHEMA, Observer, Trail
from pipeline_models.core.scheduler import (
    Outcome,
    RoundTripScheduler,
    StepReport,
    task_factory,
)
from pipeline_models.core.server import Server
from pipeline_models.core.spec import TERMINAL, HolderModel, Meaning, Spec, SpecError
from pipeline_models.interrupts import stop_if_asked
from pipeline_models.profiles import machine_settings

T = TypeVar("T")

ENQUEUER = "pipeline-models enqueue"
CHECKER = "pipeline-models checker"
LOCK_HOLDER = "pipeline-models lock holder"
MAX_JOBS = 4
# Where run_worker_until stops a worker: before it writes or commits; before a call to
# a service or with its answer in hand too, where the spec speaks of calls (effects,
# renewals before calls), so that the draws of a system without calls stay as they were.
PAUSE_POINTS = ("a write", "a commit", "a call", "a call's answer")
WRITE_POINTS = PAUSE_POINTS[:2]
# How many such points run_worker_until passes at most: a stage that calls a service
# three times (submit, poll, fetch) renews its hold before each; only a pause at the last
# call's answer leaves a zombie nothing to renew before its write.
UNTIL_TIMES = 4
_WRITES = ("UPDATE", "DELETE", "INSERT", "MERGE")
_ROW_LOCKS = ("FOR UPDATE", "FOR NO KEY UPDATE", "FOR SHARE", "FOR KEY SHARE", "NOWAIT", "LOCKED")
_HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
DRAIN_ROUNDS = 100
DRAIN_TURN = 200  # round trips of one worker before the next one's turn
EVERY_WORKER = "every worker"  # lose_the_connection's outage: every worker's sessions end
# Rounds of the drain in a row that change no job before the world heals (Adapter.heal).
STUCK_ROUNDS = 3


@dataclass
class Statistics:
    """What the queue machines did in this process (for reports and tests)."""

    examples: int = 0
    rules: int = 0
    steps: int = 0
    drain_steps: int = 0
    # Examples an invariant failed in, Hypothesis's replays while shrinking included: an
    # interrupted run can tell whether it had found anything.
    failures: int = 0
    warnings: list[str] = field(default_factory=list)


STATISTICS = Statistics()


class _Runtime:
    """What outlives one example: the event loop, the server, the checker's connections
    and the installed observers (one per spec)."""

    current: ClassVar[_Runtime | None] = None
    server_url: ClassVar[str | None] = None

    def __init__(self) -> None:
        self.runner = asyncio.Runner()
        self.loop = self.runner.get_loop()
        self.scheduler: RoundTripScheduler | None = None
        self.loop.set_task_factory(task_factory(lambda: self.scheduler))
        self.loop.set_exception_handler(_a_warning)
        self.server = Server.from_environment(self.server_url)
        self.monitor: asyncpg.Connection = self.run(self.server.connect(application_name=CHECKER))
        self.enqueuer: asyncpg.Connection = self.run(self.server.connect(application_name=ENQUEUER))
        self.observers: dict[int, Observer] = {}
        self.adapters: dict[type[Adapter], Adapter] = {}  # each one's teardown runs at close
        # This process's own trail and clock: checks running side by side on one server
        # (a CI matrix, mutant runs) neither read each other's changes nor move each
        # other's time. Left over by a process with the same pid: dropped first.
        self.checker_schema = f"{CHECKER_SCHEMA}_{os.getpid()}"
        self.clock_schema = f"{CLOCK_SCHEMA}_{os.getpid()}"
        self.run(self.monitor.execute(_drop_schemas(self.checker_schema, self.clock_schema)))
        self._enqueuer_path: str | None = None
        self._lock_holder: asyncpg.Connection | None = None

    async def lock_holder(self) -> asyncpg.Connection:
        """The session that holds a job's row lock for a program (spec.skips_locked)."""
        if self._lock_holder is None or self._lock_holder.is_closed():
            self._lock_holder = await self.server.connect(application_name=LOCK_HOLDER)
        return self._lock_holder

    @classmethod
    def get(cls) -> _Runtime:
        if cls.current is None:
            cls.current = cls()
            atexit.register(cls.close)
        return cls.current

    def run(self, awaitable: Awaitable[T]) -> T:
        # Made current again each time: an asyncio.run() in between (a test's, a tool's)
        # leaves the main thread with no current loop, and code that asks for it fails.
        asyncio.set_event_loop(self.loop)
        return self.loop.run_until_complete(awaitable)

    async def observer(self, adapter: Adapter) -> Observer:
        self.adapters.setdefault(type(adapter), adapter)
        spec = adapter.spec
        observer = self.observers.get(id(spec))
        if observer is None:
            await adapter.setup(self.enqueuer)
            observer = Observer(
                spec, checker_schema=self.checker_schema, clock_schema=self.clock_schema
            )
            await observer.install(self.monitor)
            self.observers[id(spec)] = observer
            if self._enqueuer_path is None:
                shown = await self.enqueuer.fetchval("SHOW search_path")
                self._enqueuer_path = f'"{observer.clock_schema}", pg_catalog, {shown}'
                await self.enqueuer.execute(f"SET search_path = {self._enqueuer_path}")
        return observer

    @classmethod
    def close(cls) -> None:
        runtime, cls.current = cls.current, None
        if runtime is None:
            return
        for adapter in runtime.adapters.values():
            with contextlib.suppress(Exception):
                runtime.run(adapter.teardown(runtime.monitor))
        # The checker's schemas go, and with their trigger functions the triggers on the
        # user's tables (CASCADE): nothing of the check is left, even on a table that a
        # test dropped meanwhile.
        with contextlib.suppress(Exception):
            runtime.run(
                runtime.monitor.execute(_drop_schemas(runtime.checker_schema, runtime.clock_schema))
            )
        with contextlib.suppress(Exception):
            runtime.run(runtime.monitor.close())
        with contextlib.suppress(Exception):
            runtime.run(runtime.enqueuer.close())
        if runtime._lock_holder is not None:
            with contextlib.suppress(Exception):
                runtime.run(runtime._lock_holder.close())
        terminate_every_connection()
        runtime.runner.close()
        terminate_every_connection()  # one a cancelled task's cleanup opened
        runtime.server.close()


def _drop_schemas(*names: str) -> str:
    # Within seconds or not at all: another process's workers may hold a lock on a table
    # the trigger is on, and a check must not hang at exit waiting for them.
    drops = ";".join(f'DROP SCHEMA IF EXISTS "{name}" CASCADE' for name in names)
    return f"SET lock_timeout = '5s'; {drops}; RESET lock_timeout"


def _a_warning(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """What asyncio would print to stderr (a worker's task that failed and nobody awaited,
    say): a warning of the report, once, not a traceback amid the checker's output."""
    said = [context.get("message", "an error in the event loop")]
    error = context.get("exception")
    while error is not None:  # an exception and its causes, one line each
        said.append(f"{type(error).__name__}: {' '.join(str(error).split())}".strip(": "))
        error = error.__cause__
    # Numbers (a job's id) differ from one example to the next: one warning for all.
    warning = re.sub(r"\d+", "N", "asyncio: " + ", from ".join(said))
    if warning not in STATISTICS.warnings:
        STATISTICS.warnings.append(warning)


def use_server(url: str | None) -> None:
    """Make every queue machine in this process use the server at ``url`` (None: the
    environment's DATABASE_URL, else an embedded one)."""
    _Runtime.server_url = url


def close_checker() -> None:
    """Run the adapters' teardowns and close the checker's connections now, not at exit:
    before the server they use stops (a test session's embedded one, say)."""
    _Runtime.close()


def clock_steps(spec: Spec) -> tuple[int, ...]:
    """The time steps a program may take: around the spec's own timeouts, so that
    expiry and recovery are one rule away.

    >>> from pipeline_models.core.spec import Holder, States
    >>> spec = Spec("jobs", States(["queued"], ["running"]), Holder("heartbeat", "beat", 30))
    >>> clock_steps(spec)
    (1, 16, 31, 91)
    """
    timeout = spec.holder.timeout_seconds
    if spec.holder.model is HolderModel.LEASE and timeout is None:
        timeout = 30
    if timeout is None:
        return (1, 10, 61, 301)
    whole = int(timeout)
    return tuple(sorted({1, max(1, whole // 2 + 1), whole + 1, 3 * whole + 1}))


class QueueMachine(RuleBasedStateMachine):
    """The job-queue layer over an adapter. Build one with :func:`machine_for`."""

    ADAPTER: ClassVar[type[Adapter]]
    INVARIANTS: ClassVar[tuple[str, ...]] = ORDER
    WORKER_SLOTS: ClassVar[tuple[str, ...]] = ("w1", "w2")
    MAX_JOBS: ClassVar[int] = MAX_JOBS
    DRAIN: ClassVar[bool] = True
    ACTIONS: ClassVar[tuple[str, ...]] = ()  # the adapter's actions drawn as rules
    # Causes already reported (by an earlier round of the same run): an example whose
    # first finding is one of them is discarded, so that the search finds the others.
    KNOWN: ClassVar[frozenset[str]] = frozenset()
    # Once an example has failed before its drain, the search that found it (Hypothesis
    # shrinking it, or looking on for other bugs) skips the drains: a drain can only
    # show some other failure, which the next round looks for, and it costs most of an
    # example, so shrinking gets several times the tries in its time. Set on the class a
    # search runs (report.run makes one a round); a machine run twice never sets it.
    SKIP_DRAINS_ONCE_FAILED: ClassVar[bool] = False
    failed_before_a_drain: ClassVar[bool] = False
    # A search that has seen a drain fail keeps every drain: Hypothesis replays that
    # example to shrink it, and without its drain the replay passed ("Failed on the first
    # call but did not on a subsequent one": a flaky finding of the checker's own making).
    failed_in_a_drain: ClassVar[bool] = False

    def __init__(self) -> None:
        stop_if_asked()  # Ctrl-C (see interrupts): before an example, nothing is half done
        super().__init__()
        self.runtime = _Runtime.get()
        self.adapter = self.ADAPTER()
        self._draining = False
        self.adapter.dsn = self.runtime.server.url
        self.spec = self.adapter.spec
        self.clock = CheckerClock()
        self._patches = contextlib.ExitStack()
        self._patches.enter_context(patched_drivers())
        for name in self.adapter.quiet_loggers:
            self._patches.enter_context(_held_to_errors(logging.getLogger(name)))
        self.clock.stop_python_time()
        self._patches.callback(self.clock.release_python_time)
        self.observer: Observer = self._run(self.runtime.observer(self.adapter))
        self._run(self._reset())
        self.trail: Trail = self.observer.trail()
        self.scheduler = RoundTripScheduler(
            self.clock, self.runtime.monitor, clock_schema=self.observer.clock_schema
        )
        self.clock.listeners.append(self._publish_time)
        self.runtime.scheduler = self.scheduler
        self.holders = HolderHistory(self.spec)
        self.judge = QueueJudge(self.spec, self.INVARIANTS, read_before=self.scheduler.read_before)
        self.incarnation = dict.fromkeys(self.WORKER_SLOTS, 1)
        self.crashed: set[str] = set()
        self.jobs = 0
        self.actions = 0
        # Actions still running (waiting on a worker's lock): what each will report.
        self.pending: dict[str, list[Finding]] = {}
        # Actions started by start_<name>, moved by step_an_action only (until the drain).
        self.started: list[str] = []
        self.reported: list[Finding] = []
        # The job whose row lock the lock holder keeps (spec.skips_locked), and its pid.
        self.row_lock: tuple[str, int] | None = None
        for slot in self.WORKER_SLOTS:
            self._add_worker(slot)
        STATISTICS.examples += 1

    async def _reset(self) -> None:
        await self.adapter.setup(self.runtime.enqueuer)
        await self.observer.reset(self.runtime.monitor, self.clock.now())

    def _run(self, awaitable: Awaitable[T]) -> T:
        return self.runtime.run(awaitable)

    def worker_name(self, slot: str) -> str:
        generation = self.incarnation[slot]
        return slot if generation == 1 else f"{slot}~{generation}"

    def _add_worker(self, slot: str) -> None:
        name = self.worker_name(slot)
        self.holders.workers.add(name)
        adapter, dsn = self.adapter, self.runtime.server.url
        self.scheduler.add(name, lambda: adapter.run_worker(name, dsn))

    # -- rules -----------------------------------------------------------------------------

    # No preconditions: a rule that depends on a count makes Hypothesis read the same
    # choices as other rules once an earlier step is deleted, and shrinking stalls. A
    # rule that cannot act does nothing instead.
    @rule()
    def enqueue_job(self) -> None:
        if self.jobs >= self.MAX_JOBS:
            return
        job = self._run(self.adapter.enqueue(self.runtime.enqueuer, self.jobs))
        self.jobs += 1
        self.judge.enqueued.append(str(job))
        self._check()

    @rule(worker=st.sampled_from(("w1", "w2")))
    def step_worker(self, worker: str) -> None:
        self._step(worker)
        self._check()

    @rule(worker=st.sampled_from(("w1", "w2")), steps=st.integers(2, 8))
    def run_worker(self, worker: str, steps: int) -> None:
        """Several round trips of one worker in a row (shrinks to step_worker), the
        invariants checked after each."""
        for _ in range(steps):
            report = self._step(worker)
            self._check()
            if report is None or report.outcome is not Outcome.PARKED:
                return

    @rule(worker=st.sampled_from(("w1", "w2")))
    def run_worker_until_it_waits(self, worker: str) -> None:
        """One worker runs on until it waits: for time to pass, for a lock, for work.
        Programs reach a worker's later round trips in one rule (shrinks to run_worker)."""
        for _ in range(DRAIN_TURN):
            report = self._step(worker)
            self._check()
            if report is None or report.outcome is not Outcome.PARKED:
                return

    def run_worker_until(self, worker: str, before: str, times: int = 1) -> None:
        """One worker runs until it is about to write a row, commit or call a service, or
        has a service's answer in hand (where a pause lets its hold run out and another
        worker take the job: the zombie's window; or lets a webhook race the call), the
        ``times``-th time from here: a stage's last call, after its renewals, is one rule
        away (shrinks toward the first)."""
        for count in range(DRAIN_TURN):
            report = self._step(worker)
            self._check()
            if report is None or report.outcome is not Outcome.PARKED:
                return
            if count and _pauses_before(report.next or "", before):
                times -= 1
                if times == 0:
                    return

    def stall_worker(self, worker: str, before: str, times: int = 1) -> None:
        """One worker runs as in :meth:`run_worker_until`, then stalls there (a GC pause,
        a partition, a swapped-out host) for longer than a hold lasts: the clock moves
        past the spec's timeout. Whatever it does next it does as a worker that may have
        lost its job: a zombie's window in one rule (of machines whose holds expire)."""
        self.run_worker_until(worker, before, times)
        if worker not in self.crashed:
            self._move_clock(timedelta(seconds=_hold_seconds(self.spec) + 1))

    def _step(self, worker: str) -> StepReport | None:
        if worker in self.crashed:
            return None
        report = self._run(self.scheduler.step(self.worker_name(worker)))
        STATISTICS.steps += 1
        self._work_takes_time()
        note(str(report))
        if (
            report.outcome is Outcome.BLOCKED
            and self.row_lock is not None
            and self.row_lock[1] in report.blockers
        ):
            self.reported.append(
                Finding(
                    "claims_skip_locks",
                    f"{report.worker} waited on the row lock of a job another session holds",
                    self.row_lock[0],
                    "a claim passes a locked job by (FOR UPDATE SKIP LOCKED)",
                    f"{report.worker} blocked in {report.next}",
                )
            )
        return report

    def hold_a_row_lock(self, pick: int) -> None:
        """Another session locks a claimable job's row and keeps it (an operator's query,
        a claimer half-way through its transaction): claims must pass it by (rule of
        machines whose spec says claims skip locked rows)."""
        if self.row_lock is not None or not self.judge.enqueued:
            return
        self._run(self._lock_a_job(pick))
        self._check()

    async def _lock_a_job(self, pick: int) -> None:
        holder = await self.runtime.lock_holder()
        jobs = self.judge.enqueued
        await holder.execute("BEGIN")
        for offset in range(len(jobs)):
            job = jobs[(pick + offset) % len(jobs)]
            if await holder.fetchval(
                self.observer.lock_a_claimable_job, job, list(self.spec.states.claimable)
            ):
                self.row_lock = (job, holder.get_server_pid())
                note(f"the lock holder keeps the row lock of job {job}")
                return
        await holder.execute("ROLLBACK")

    def release_the_row_lock(self) -> None:
        """The lock holder lets go; whoever waited on it goes on."""
        if self.row_lock is None:
            return
        self._release_the_row_lock()
        self._check()

    def _release_the_row_lock(self) -> None:
        self.row_lock = None
        self._run(self._rollback_the_lock_holder())

    async def _rollback_the_lock_holder(self) -> None:
        holder = await self.runtime.lock_holder()
        await holder.execute("ROLLBACK")
        await self.scheduler.settle()  # a statement that waited on it lands now

    @rule(worker=st.sampled_from(("w1", "w2")))
    def crash_worker(self, worker: str) -> None:
        if worker in self.crashed:
            return
        name = self.worker_name(worker)
        self._check()  # every change before the crash is judged as its holder's
        self._run(self.scheduler.crash(name))
        self.holders.crash(name)
        self.crashed.add(worker)

    def lose_the_connection(self, worker: str) -> None:
        """The server ends ``worker``'s database sessions, or (``"every worker"``) every
        worker's at once, as in an outage or a failover, and each lives on (rule of
        machines whose adapter says its worker reconnects)."""
        slots = self.WORKER_SLOTS if worker == EVERY_WORKER else (worker,)
        self._check()  # every change before the cut is judged as its holder's
        for slot in slots:
            if slot in self.crashed:
                continue
            name = self.worker_name(slot)
            note(str(self._run(self.scheduler.cut(name))))
            self.holders.lost_sessions(name)
        self._check()

    @rule(worker=st.sampled_from(("w1", "w2")))
    def restart_worker(self, worker: str) -> None:
        if worker not in self.crashed:
            return
        self.crashed.discard(worker)
        self.incarnation[worker] += 1
        self._add_worker(worker)

    def _act(self, name: str, drawn: dict[str, Any], *, started: bool = False) -> None:
        """Run the adapter's action ``name`` as an actor of its own (see
        :func:`~pipeline_models.core.adapter.action`); ``started``: only as far as its
        first round trip, the rest by ``step_an_action``."""
        self.actions += 1
        actor = f"{name} #{self.actions}"
        method = getattr(self.adapter, name)
        found: list[Finding] = []

        async def main() -> None:
            found.extend(await method(**drawn) or ())

        self.scheduler.add(actor, main)
        self.pending[actor] = found
        if started:
            self.started.append(actor)
            self._step_action(actor)
        self._check()

    def step_an_action(self, pick: int) -> None:
        """A started action makes its next round trip (rule of machines whose adapter
        has interleaved actions)."""
        if not self.started:
            return
        self._step_action(self.started[pick % len(self.started)])
        self._check()

    def _step_action(self, actor: str) -> None:
        report = self._run(self.scheduler.step(actor))
        note(str(report))
        if report.outcome is Outcome.ENDED:
            self._action_ended(actor, report)

    def _settle_actions(self) -> None:
        """Every action still running goes on until it ends or waits on a lock (but those
        the program started and moves itself, until the drain)."""
        for actor in [a for a in self.pending if a not in self.started]:
            report = self._run(self.scheduler.step(actor))
            while report.outcome is Outcome.PARKED:
                report = self._run(self.scheduler.step(actor))
            if report.outcome is Outcome.ENDED:
                self._action_ended(actor, report)
            else:
                note(str(report))

    def _action_ended(self, actor: str, report: StepReport) -> None:
        # A deadlock's detail names backends: each is named after its worker or action,
        # while the one that ended still has its own.
        said = self.scheduler.name_sessions(str(report.error))
        # Not crashed: what it left open (a pool's connections) may serve the next.
        self.scheduler.forget(actor)
        if actor in self.started:
            self.started.remove(actor)
        self.reported += self.pending.pop(actor)
        if report.error is not None:
            # The system raised to one of its users (the API would answer 500).
            error = report.error
            self.reported.append(
                Finding(
                    "actions",
                    f"{actor} raised {type(error).__name__}: {said}",
                    None,
                    "an answer",
                    "".join(traceback.format_exception(error)[-3:]).strip(),
                )
            )

    def _work_takes_time(self) -> None:
        seconds = self.adapter.seconds_per_round_trip
        if seconds:
            self._move_clock(timedelta(seconds=seconds))

    def _move_clock(self, by: timedelta) -> None:
        self.clock.set(self.clock.now() + by)
        self._run(self.clock.publish())

    async def _publish_time(self, now: datetime) -> None:
        await self.observer.set_clock(self.runtime.monitor, now)

    # -- checks --------------------------------------------------------------------------

    def _check(self) -> None:
        stop_if_asked()  # Ctrl-C: after a rule, or in the drain, the teardown undoes the rest
        STATISTICS.rules += 1
        if self.pending:
            self._settle_actions()
        self._run(self.trail.read(self.runtime.monitor))
        own: list[Finding] = []
        if type(self.adapter).findings_after_each_step is not Adapter.findings_after_each_step:
            own = self._run(self.adapter.findings_after_each_step(self.runtime.monitor))
        self._judge(own)

    def _judge(self, extra: Iterable[Finding] = ()) -> None:
        new = self.trail.changes[len(self.holders.events) :]
        events = [self.holders.apply(change) for change in new]
        for event in events:  # a job the system made itself (an action, a worker) counts too
            if event.move is Move.INSERT and event.change.job_id not in self.judge.enqueued:
                self.judge.enqueued.append(event.change.job_id)
        findings = [*self.judge.judge(events), *self.judge.check_rows(self.trail.rows), *extra]
        findings += self.reported
        self.reported = []
        # A call's effect belongs to the jobs its worker held when it was answered: a
        # worker stops right after each answer, so this check sees that moment.
        for slot in self.scheduler.slots.values():
            if slot.name not in self.holders.workers:
                slot.effects.clear()  # an action's calls are no job's effect
            for label, at in slot.effects:
                held = [job for job, hold in self.holders.holds.items() if hold.worker == slot.name]
                findings += self.judge.effects(slot.name, label, at, held)
                findings += self.judge.calls_covered(slot.name, label, at, held)
            slot.effects.clear()
        for slot in self.scheduler.slots.values():
            for warning in slot.warnings:
                if warning not in STATISTICS.warnings:
                    STATISTICS.warnings.append(warning)
                    note(f"warning: {warning}")
        ordered = in_causal_order(findings)
        if ordered and ordered[0].invariant in self.KNOWN:
            # A cause an earlier round already reported: this example can only show it
            # again (or its consequences as if they were causes); look elsewhere.
            reject()
        if ordered:
            STATISTICS.failures += 1
            if self.SKIP_DRAINS_ONCE_FAILED and not self._draining and not self.failed_in_a_drain:
                type(self).failed_before_a_drain = True
        raise_findings(ordered)

    def teardown(self) -> None:
        try:
            if self.row_lock is not None:
                self._release_the_row_lock()
            if sys.exception() is None and self.DRAIN and not self.failed_before_a_drain:
                self._draining = True
                try:
                    self._drain()
                except Exception:
                    if self.SKIP_DRAINS_ONCE_FAILED:
                        type(self).failed_in_a_drain = True
                    raise
        finally:
            try:
                self._run(self.scheduler.close())
            finally:
                self.runtime.scheduler = None
                self._patches.close()

    def _drain(self) -> None:
        """Every live worker runs on, one at a time (each until it waits for time or
        for another: the drain makes no race of its own), time moving whenever nobody
        can; once every job is finished, what the outside world still owes arrives late
        (:meth:`Adapter.arrive_late`) and the workers run on again; then every job must
        be finished (liveness)."""
        self.started.clear()  # the drain lets every started action finish
        heals = type(self.adapter).heal is not Adapter.heal
        # First the world as the program left it (faults still scripted, a cap still
        # set): what the program set up for work it never ran meets the drain's. Once
        # nobody gets further, the world heals and the drain goes on.
        self._run_until_quiet(give_up_after=STUCK_ROUNDS if heals else None)
        if heals and not self._all_finished():
            self._act("heal", {})
            self._run_until_quiet()
        if type(self.adapter).arrive_late is not Adapter.arrive_late and self._all_finished():
            self._act("arrive_late", {})
            self._run_until_quiet()
        self._check()
        found = self.judge.liveness(self.trail.rows) + [
            Finding(
                "liveness",
                f"{actor} still waited on a lock when every worker was done",
                None,
                "every action of the program answered",
                self.scheduler.report(actor),
            )
            for actor in self.pending
        ]
        if not found:  # every job finished: the system's own invariants (if any)
            found = self._run(self.adapter.findings_at_end(self.runtime.monitor))
        self._judge(found)

    def _run_until_quiet(self, give_up_after: int | None = None) -> None:
        """The drain's workers run until every job is finished, or (``give_up_after``)
        until that many rounds in a row changed no job."""
        timeout = _hold_seconds(self.spec)
        still = 0
        for _ in range(DRAIN_ROUNDS):
            live = self._live_for_the_drain()
            self._check()
            if self._all_finished():
                break
            moved = False
            changes = len(self.trail.changes)
            for name in live:
                for _ in range(DRAIN_TURN):
                    if not self.scheduler.can_move(name):
                        break
                    self._run(self.scheduler.step(name))
                    STATISTICS.drain_steps += 1
                    self._work_takes_time()
                    moved = True
                    if self.scheduler.slots[name].effects:
                        self._check()  # a call's effect is judged at its moment
                self._check()
            if moved and len(self.trail.changes) > changes:
                still = 0
                continue
            still += 1
            if give_up_after is not None and still >= give_up_after:
                return
            # Nobody changed a job (the workers only polled, or all wait): time moves to
            # the next moment something can happen, not by a poller's short sleeps.
            now = self.clock.now()
            wake = self.scheduler.next_wake()
            soonest = [t for t in (self._next_moment(now), wake if not moved else None) if t]
            if soonest:
                self._move_clock(min(soonest) - now)
            else:
                self._move_clock(timedelta(seconds=timeout + 1))

    def _live_for_the_drain(self) -> list[str]:
        """The workers that can still work; one restarted if none can. A worker whose main
        loop ended (at any point of the drain) is a dead process: what is left of it is
        crashed, as a fault healed (a procrastinate worker pruned by another dies at its
        next fetch, its worker_id gone)."""
        for slot in self.WORKER_SLOTS:
            name = self.worker_name(slot)
            if slot not in self.crashed and self.scheduler.slots[name].ended:
                self._run(self.scheduler.crash(name))
                self.holders.crash(name)
                self.crashed.add(slot)
        live = [self.worker_name(slot) for slot in self.WORKER_SLOTS if slot not in self.crashed]
        if not live:
            self.incarnation["w1"] += 1
            self.crashed.discard("w1")
            self._add_worker("w1")
            live = [self.worker_name("w1")]
        return live

    def _next_moment(self, now: datetime) -> datetime | None:
        """The earliest time after ``now`` the job table names: a job falls due, a lease
        runs out, a heartbeat grows stale (the spec says which columns mean which)."""
        spec = self.spec
        stale_after = timedelta(seconds=spec.holder.timeout_seconds or 0)
        moments = []
        for row in self.trail.rows.values():
            if spec.due:
                moments.append(moment_of(row.get(spec.due)))
            column = spec.holder.time_column
            if column and spec.meaning(row.get(spec.state)) is Meaning.IN_PROGRESS:
                mark = moment_of(row.get(column))
                if mark is not None and spec.holder.model is HolderModel.HEARTBEAT:
                    mark += stale_after
                moments.append(mark)
        later = [moment for moment in moments if moment is not None and moment > now]
        return min(later) if later else None

    def _all_finished(self) -> bool:
        for job in self.judge.enqueued:
            if job in self.judge.finished:
                continue
            row = self.trail.rows.get(job)
            if row is None or self.spec.meaning(row.get(self.spec.state)) not in TERMINAL:
                return False
        return True


def _pauses_before(where: str, point: str) -> bool:
    """Whether a worker parked at ``where`` stands before ``point`` (see PAUSE_POINTS).

    >>> _pauses_before("before DELETE FROM jobs WHERE id = $1", "a write")
    True
    >>> _pauses_before("before COMMIT", "a write")
    False
    >>> _pauses_before("before SELECT id FROM jobs WHERE id = $1 … FOR UPDATE", "a write")
    True
    >>> call = "before GET /jobs/7"
    >>> _pauses_before(call, "a call"), _pauses_before(call, "a write")
    (True, False)
    >>> _pauses_before("after GET /jobs/7", "a call's answer")
    True
    >>> _pauses_before("before UPDATE jobs SET state = $1", "a call's answer")
    False
    """
    when, _, label = where.partition(" ")
    first, _, rest = label.partition(" ")
    first = first.upper()
    call = first in _HTTP_METHODS and rest.startswith("/")  # an external call, not SQL
    if when == "after":  # the service has answered; the worker has yet to write it down
        return call and point == "a call's answer"
    if when != "before":
        return False
    if point == "a commit":
        return first == "COMMIT"
    if point == "a call":
        return call
    if point != "a write" or call:
        return False
    if first == "SELECT":  # a locking read: the worker takes the row it is about to write
        return label.upper().endswith(_ROW_LOCKS)
    return first in _WRITES or (first == "WITH" and any(w in label.upper() for w in _WRITES))


def _hold_seconds(spec: Spec) -> float:
    """How long a hold lasts unrenewed: the spec's timeout (30 s for a lease whose length
    the worker chooses)."""
    return spec.holder.timeout_seconds or 30


def queue_settings(profile: str | None = None, **overrides: Any) -> settings:
    """The profile's Hypothesis settings (ci, dev, fuzz, debug: see
    :mod:`pipeline_models.profiles`), without an example database unless one was set:
    a failure replays from its seed, and examples of other systems never mix in."""
    return machine_settings(profile, **{"database": None, **overrides})


def machine_for(
    adapter: type[Adapter],
    *,
    invariants: Sequence[str] | None = None,
    without: Iterable[str] = (),
    workers: Sequence[str] = ("w1", "w2"),
    max_jobs: int = MAX_JOBS,
    drain: bool = True,
    actions: Iterable[str] | None = None,
) -> type[QueueMachine]:
    """A queue machine for ``adapter``, checking ``invariants`` (all by default) but
    those ``without``, drawing the adapter's ``actions`` (all by default; ``()``: the
    queue alone, where every rule drawn is a queue's). Its ``TestCase`` is a test."""
    chosen = select(invariants, without=without)
    if not adapter.spec.skips_locked:  # nothing to judge: the spec promises no skipping
        chosen = tuple(name for name in chosen if name != "claims_skip_locks")
    declared = actions_of(adapter)
    drawn = list(declared) if actions is None else list(actions)
    unknown = sorted(set(drawn) - set(declared))
    if unknown:
        raise SpecError(
            f"{adapter.__name__} has no action {', '.join(unknown)}; its actions: "
            f"{', '.join(sorted(declared)) or 'none'}"
        )

    if any(not isinstance(step, int) or step < 1 for step in adapter.clock_steps):
        raise SpecError(
            f"{adapter.__name__}.clock_steps: whole seconds, each at least 1; "
            f"got {adapter.clock_steps!r}"
        )
    # Half the steps around the spec's timeout (a hold's expiry, one rule away however
    # many durations the adapter adds), half the adapter's own.
    steps = st.sampled_from(clock_steps(adapter.spec))
    if adapter.clock_steps:
        steps = st.one_of(steps, st.sampled_from(sorted(set(adapter.clock_steps))))

    @rule(seconds=steps)
    def advance_clock(self: QueueMachine, seconds: int) -> None:
        """Time moves on, by steps around the spec's timeouts (:func:`clock_steps`) and
        the adapter's own durations."""
        self._move_clock(timedelta(seconds=seconds))

    namespace: dict[str, Any] = {
        "ADAPTER": adapter,
        "INVARIANTS": chosen,
        "WORKER_SLOTS": tuple(workers),
        "MAX_JOBS": max_jobs,
        "DRAIN": drain and "liveness" in chosen,
        "advance_clock": advance_clock,
        "ACTIONS": tuple(drawn),
        "__module__": adapter.__module__,
    }
    for name in drawn:
        arguments = declared[name]
        if hasattr(QueueMachine, name) or name in namespace:
            raise SpecError(
                f"{adapter.__name__}.{name}: an action may not take the name of one of "
                "the queue machine's own rules or attributes; rename it"
            )
        namespace[name] = _action_rule(name, arguments)
    interleaved = [name for name in interleaved_actions_of(adapter) if name in drawn]
    for name in interleaved:
        start = f"start_{name}"
        if hasattr(QueueMachine, start) or start in namespace:
            raise SpecError(
                f"{adapter.__name__}.{name} is interleaved: its rule {start} may not take "
                "the name of another rule or attribute; rename one of them"
            )
        namespace[start] = _action_rule(name, declared[name], started=True)
    if interleaved:
        namespace["step_an_action"] = rule(pick=st.integers(0, 3))(QueueMachine.step_an_action)
    calls = adapter.spec.effects is not None or adapter.spec.holder.renews_before_calls
    until = rule(
        worker=st.sampled_from(("w1", "w2")),
        before=st.sampled_from(PAUSE_POINTS if calls else WRITE_POINTS),
        times=st.integers(1, UNTIL_TIMES),
    )
    namespace["run_worker_until"] = until(QueueMachine.run_worker_until)
    if adapter.spec.holder.model is not HolderModel.ROW_LOCK:
        namespace["stall_worker"] = until(QueueMachine.stall_worker)
    if adapter.reconnects:
        namespace["lose_the_connection"] = rule(worker=st.sampled_from(("w1", "w2", EVERY_WORKER)))(
            QueueMachine.lose_the_connection
        )
    if "claims_skip_locks" in chosen:
        namespace["hold_a_row_lock"] = rule(pick=st.integers(0, 7))(QueueMachine.hold_a_row_lock)
        namespace["release_the_row_lock"] = rule()(QueueMachine.release_the_row_lock)
    machine: type[QueueMachine] = type(f"{adapter.__name__}Machine", (QueueMachine,), namespace)
    machine.TestCase.settings = queue_settings()
    return machine


def _action_rule(
    name: str, arguments: dict[str, st.SearchStrategy[Any]], *, started: bool = False
) -> Any:
    def run_action(self: QueueMachine, **drawn: Any) -> None:
        self._act(name, drawn, started=started)

    run_action.__name__ = run_action.__qualname__ = f"start_{name}" if started else name
    return rule(**arguments)(run_action)  # type: ignore[call-overload]


@contextlib.contextmanager
def _held_to_errors(logger: logging.Logger) -> Iterator[None]:
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def note(text: str) -> None:
    if currently_in_test_context():
        hypothesis_note(text)


__all__ = [
    "STATISTICS",
    "QueueMachine",
    "Statistics",
    "clock_steps",
    "machine_for",
    "queue_settings",
    "use_server",
]

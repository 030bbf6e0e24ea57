"""The deterministic checkpoint scheduler: Hypothesis chooses which worker runs next.

Every worker runs its steps as an asyncio task that parks at each checkpoint (claimed,
before_call, after_call, before_commit, committed). :meth:`CheckpointScheduler.step`
resumes one worker until its next checkpoint (or the end of its step), so the order in
which workers touch the database is exactly the order of the machine's rules, and a
shrunk failure replays the same interleaving.

A worker may block on a row lock another parked worker holds (a zombie's fence waiting
for the new owner's transaction, a webhook waiting for a worker's commit). The scheduler
asks Postgres's lock manager (``pg_blocking_pids``) and reports the step as blocked
instead of hanging; the worker moves on by itself once the lock is released, and the
scheduler waits for it to settle before the next rule.

Blocked is a fact, never a timing: a backend counts as blocked only while the lock
manager lists a holder it waits for, and only when no holder is an actor still running
(which will let go by itself). ``pg_stat_activity.wait_event_type`` is not that fact: the
waiter reports it itself and clears it only once it is scheduled again, so for a moment
after the holder's commit it still reads 'Lock' (a blocked report, and the actor then
running behind the next rule's back: a program that does not replay). How long a step
takes never decides what it reports: the scheduler polls, but only to learn facts.

``crash`` terminates the worker's backend (its open transaction rolls back), closes its
connection client-side and cancels its task: memory is lost, external calls already made
stay made. ``drop_connection`` only terminates the backend: the worker notices at its
next query and reconnects. ``run_freely`` lets every worker run in parallel for a while,
for races that need real timing.

Example::

    scheduler = CheckpointScheduler(database)
    await scheduler.start()
    scheduler.add(pipeline.worker(name="w1"))
    report = await scheduler.step("w1")     # claimed
    report = await scheduler.step("w1")     # before_call ...
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import asyncpg

from pipeline_models.core.scheduler import terminate
from pipeline_models.database import Database
from pipeline_models.errors import DatabaseUnavailableError, PipelineModelsError
from pipeline_models.lifecycle import Stage
from pipeline_models.pipeline.checkpoints import Checkpoint
from pipeline_models.pipeline.worker import BaseWorker, ClaimedJob, StepResult
from pipeline_models.spares import SpareConnections

# How often a step still running is looked at (has it parked, finished, or does the lock
# manager have it waiting?): a poll for facts, whose period decides nothing it reports.
_POLL_SECONDS = 0.005
# A step that neither parks, finishes nor blocks within this is a hang: a bug.
HANG_SECONDS = 30.0
# Who $1 waits for, from the lock manager (granted the moment the holder lets go, where
# pg_stat_activity's wait_event lags until the waiter runs again), and whether each of
# them waits in turn. $1 pid int
_BLOCKERS = """
SELECT blocker.pid, activity.application_name,
       cardinality(pg_blocking_pids(blocker.pid)) > 0 AS waits
FROM unnest(pg_blocking_pids($1)) AS blocker(pid)
LEFT JOIN pg_stat_activity AS activity ON activity.pid = blocker.pid
"""
# The backends of an application_name that the lock manager has waiting. $1 text
_WAITING_BACKENDS = """
SELECT pid FROM pg_stat_activity
WHERE application_name = $1 AND cardinality(pg_blocking_pids(pid)) > 0
"""


class SchedulerError(PipelineModelsError):
    """The scheduler was asked something impossible (unknown or crashed worker, a hang)."""


class Outcome(StrEnum):
    PARKED = "parked"  # stopped at a checkpoint, waiting for its next step
    FINISHED = "finished"  # completed a whole step (claim ... commit)
    IDLE = "idle"  # nothing was due
    BLOCKED = "blocked"  # waiting on a row lock another actor holds
    CONNECTION_LOST = "connection_lost"  # its connection died; it reconnects next step
    CRASHED = "crashed"  # killed: backend terminated, task cancelled


@dataclass(frozen=True)
class StepReport:
    worker: str
    outcome: Outcome
    checkpoint: Checkpoint | None = None
    stage: Stage | None = None
    result: StepResult | None = None
    in_claim: bool = False  # BLOCKED inside the claim query
    job_id: uuid.UUID | None = None  # the job it holds, when PARKED with one

    def __str__(self) -> str:
        where = (
            f" at {self.checkpoint}"
            if self.checkpoint
            else " in its claim"
            if self.in_claim
            else ""
        )
        stage = f" ({self.stage})" if self.stage else ""
        result = f": {self.result}" if self.result else ""
        return f"{self.worker} {self.outcome}{where}{stage}{result}"


@dataclass(eq=False)
class _Slot:
    worker: BaseWorker
    task: asyncio.Task[StepResult] | None = None
    parked_at: Checkpoint | None = None
    parked_job: ClaimedJob | None = None
    resume: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    backend_pid: int | None = None
    crashed: bool = False
    reconnect: bool = False

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done() and self.parked_at is None


class CheckpointScheduler:
    """Owns a set of workers and runs each one checkpoint at a time."""

    def __init__(self, database: Database, *, spares: SpareConnections | None = None) -> None:
        """``spares``: where connections come from and go back to (else each is new)."""
        self.database = database
        self.spares = spares
        self.slots: dict[str, _Slot] = {}
        self.background: list[tuple[str, asyncio.Task[Any]]] = []
        self.free = False
        self._admin: asyncpg.Connection | None = None
        # Background operations are recognised in pg_stat_activity by the
        # application_name of the connections they use, and once seen waiting, by the
        # backend they wait in (several requests share one application_name).
        self._application_names: dict[int, str] = {}
        self._backends: dict[int, int] = {}

    async def start(self) -> None:
        self._admin = await self._new_connection("pipeline-models scheduler")

    async def _new_connection(self, application_name: str) -> asyncpg.Connection:
        if self.spares is not None:
            return await self.spares.take(application_name)
        return await self.database.connect(application_name=application_name)

    async def close(self) -> None:
        """Stop every worker: an idle one's connection goes back to the spares (if any),
        one that is mid-step is crashed (its transaction must not survive it)."""
        for name, slot in list(self.slots.items()):
            idle = slot.task is None or slot.task.done()
            if slot.task is not None and slot.task.done() and not slot.task.cancelled():
                slot.task.exception()  # seen: a lost connection at the end is no news
            if self.spares is not None and idle and not slot.crashed and not slot.reconnect:
                slot.crashed = True
                self.spares.give(slot.worker.detach())
            else:
                await self.crash(name)
        for _, task in self.background:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if self._admin is not None:
            if self.spares is not None:
                self.spares.give(self._admin)
            else:
                await self._admin.close()
            self._admin = None

    async def reconnect(self) -> None:
        """After an outage: a new session for the scheduler's own if it was lost, and
        every actor that was running (waiting on a lock) settled: it found its session
        gone, and its next step reconnects."""
        if self._admin is not None and self._admin.is_closed():
            self._admin = await self._new_connection("pipeline-models scheduler")
        await self.settle_all()

    @property
    def admin(self) -> asyncpg.Connection:
        if self._admin is None:
            raise SchedulerError("the scheduler is not started: await start() first")
        return self._admin

    def add(self, worker: BaseWorker) -> None:
        """Put ``worker`` (started or not) under the scheduler's control."""
        if worker.name in self.slots:
            raise SchedulerError(f"a worker named {worker.name!r} is already scheduled")
        worker.checkpoints = self._checkpoint
        self.slots[worker.name] = _Slot(worker, reconnect=True)

    async def _checkpoint(
        self, worker: str, checkpoint: Checkpoint, job: ClaimedJob | None
    ) -> None:
        if self.free:
            return
        slot = self.slots[worker]
        slot.parked_at, slot.parked_job = checkpoint, job
        slot.resume = asyncio.Event()
        slot.arrived.set()
        try:
            await slot.resume.wait()
        finally:
            slot.parked_at = None

    def _slot(self, name: str) -> _Slot:
        try:
            slot = self.slots[name]
        except KeyError:
            raise SchedulerError(
                f"no worker named {name!r}; scheduled: {', '.join(self.slots) or 'none'}"
            ) from None
        if slot.crashed:
            raise SchedulerError(f"worker {name!r} has crashed; restart it under a new name")
        return slot

    def mid_step(self, name: str) -> bool:
        """Whether ``name`` is inside a step (parked, blocked or running): its next step
        continues a claim made earlier instead of claiming."""
        slot = self.slots.get(name)
        return slot is not None and slot.task is not None and not slot.task.done()

    async def step(self, name: str) -> StepReport:
        """Resume ``name`` until its next checkpoint, the end of its step, or a lock wait."""
        slot = self._slot(name)
        if slot.task is not None and not slot.task.done() and slot.parked_at is None:
            # Still blocked (or running) from an earlier step: let it settle first.
            report = await self._settle(slot)
            await self._settle_others(slot)
            return report
        slot.arrived.clear()
        if slot.task is None or slot.task.done():
            await self._connect(slot)
            slot.task = asyncio.create_task(slot.worker.run_once(), name=f"{name}-step")
        else:
            slot.resume.set()
        report = await self._settle(slot)
        await self._settle_others(slot)
        return report

    async def _connect(self, slot: _Slot) -> None:
        """A new connection for a worker that has none yet, or whose connection died."""
        if slot.reconnect:
            await slot.worker.close()
            await slot.worker.start(await self._new_connection(slot.worker.name))
            slot.backend_pid = await slot.worker.backend_pid()
            slot.reconnect = False

    async def _settle(self, slot: _Slot, *, was_blocked: bool = False) -> StepReport:
        """Wait until the slot parks, finishes, or waits on a lock.

        ``was_blocked``: it waited on a lock when last seen; if it still does, say so at
        once instead of waiting for it first.
        """
        assert slot.task is not None
        name = slot.worker.name
        if was_blocked and not slot.task.done() and await self._waits_on_lock(slot.backend_pid):
            return self._blocked(slot)
        deadline = time.monotonic() + HANG_SECONDS
        while True:
            if slot.arrived.is_set() and slot.parked_at is not None:
                slot.arrived.clear()
                job = slot.parked_job
                return StepReport(
                    name,
                    Outcome.PARKED,
                    slot.parked_at,
                    job.stage if job else None,
                    job_id=job.job_id if job else None,
                )
            if slot.task.done():
                slot.arrived.clear()
                return self._finished(slot)
            arrived = asyncio.ensure_future(slot.arrived.wait())
            await asyncio.wait(
                {arrived, slot.task}, timeout=_POLL_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            arrived.cancel()
            if slot.arrived.is_set() or slot.task.done():
                continue
            if await self._waits_on_lock(slot.backend_pid):
                return self._blocked(slot)
            if time.monotonic() > deadline:
                raise SchedulerError(f"{name} neither parked nor finished in {HANG_SECONDS} s")

    def _blocked(self, slot: _Slot) -> StepReport:
        in_claim = bool(getattr(slot.worker, "claiming", False))
        return StepReport(slot.worker.name, Outcome.BLOCKED, in_claim=in_claim)

    def _finished(self, slot: _Slot) -> StepReport:
        assert slot.task is not None
        name = slot.worker.name
        try:
            result = slot.task.result()
        except DatabaseUnavailableError:
            slot.reconnect = True
            return StepReport(name, Outcome.CONNECTION_LOST)
        if result.action.value == "idle":
            return StepReport(name, Outcome.IDLE, result=result)
        return StepReport(name, Outcome.FINISHED, stage=result.stage, result=result)

    async def settle_all(self) -> None:
        """Let every actor that is running (released from a lock by something outside the
        scheduler) reach its next checkpoint, so that nothing runs behind a rule's back."""
        await self._settle_others(None)

    async def _settle_others(self, stepped: _Slot | None) -> None:
        """Actors that were blocked may have been released by this step: let them run
        to their next checkpoint before the next rule, so no two run at once."""
        for slot in self.slots.values():
            if slot is not stepped and not slot.crashed and slot.running:
                await self._settle(slot, was_blocked=True)
        for entry in list(self.background):
            label, task = entry
            if not task.done():
                await self._settle_background(label, task, was_blocked=True)

    async def _waits_on_lock(self, pid: int | None) -> bool:
        """Whether ``pid`` waits on a lock that only the scheduler can free: the lock
        manager lists holders it waits for, and none of them is an actor still running
        (a released worker or request that will commit or park by itself), unless that
        one waits in turn."""
        if pid is None:
            return False
        rows = await self.admin.fetch(_BLOCKERS, pid)
        if not rows:
            return False
        running_pids = {
            slot.backend_pid
            for slot in self.slots.values()
            if slot.running and not slot.crashed and slot.backend_pid != pid
        }
        running_names = {
            self._application_names[id(task)]
            for _, task in self.background
            if not task.done() and id(task) in self._application_names
        }
        for row in rows:
            running = row["pid"] in running_pids or row["application_name"] in running_names
            if running and not row["waits"]:
                return False
        return True

    async def run_in_background(
        self, label: str, operation: Callable[[], Awaitable[Any]], *, application_name: str
    ) -> tuple[bool, Any]:
        """Run a non-worker actor's operation (an API request) like a step.

        Returns (True, result) when it completed, (False, None) when it is blocked on a
        lock held by a parked worker; it then completes by itself later, and
        :meth:`settle_background` returns what it returned.

        Requests share their application_name (the API's pool), so an earlier request
        still blocked must not be taken for this one: this one is blocked when a backend
        of its name waits that did not wait before it started.
        """
        already_waiting = await self._waiting_backends(application_name)
        task = asyncio.ensure_future(operation())
        self._application_names[id(task)] = application_name
        blocked = await self._settle_background(label, task, already_waiting=already_waiting)
        if blocked:
            self.background.append((label, task))
            return False, None
        return True, task.result()

    async def _settle_background(
        self,
        label: str,
        task: asyncio.Future[Any],
        *,
        was_blocked: bool = False,
        already_waiting: frozenset[int] = frozenset(),
    ) -> bool:
        deadline = time.monotonic() + HANG_SECONDS
        if was_blocked and await self._waits_on_lock(self._backends.get(id(task))):
            return True
        while not task.done():
            await asyncio.wait({task}, timeout=_POLL_SECONDS)
            if task.done():
                break
            if await self._task_waits_on_lock(task, already_waiting):
                return True
            if time.monotonic() > deadline:
                raise SchedulerError(f"{label} neither finished nor blocked in {HANG_SECONDS} s")
        self._backends.pop(id(task), None)
        self._application_names.pop(id(task), None)
        return False

    async def _task_waits_on_lock(self, task: asyncio.Future[Any], ignore: frozenset[int]) -> bool:
        """Whether ``task``'s backend waits on a lock: the one it was seen waiting in
        before, or else a backend of its application_name newly waiting."""
        backend = self._backends.get(id(task))
        if backend is not None:
            return await self._waits_on_lock(backend)
        name = self._application_names.get(id(task))
        if name is None:
            return False
        known = ignore | set(self._backends.values())
        new = sorted((await self._waiting_backends(name)) - known)
        if not new or not await self._waits_on_lock(new[0]):
            return False
        self._backends[id(task)] = new[0]
        return True

    async def _waiting_backends(self, application_name: str) -> frozenset[int]:
        rows = await self.admin.fetch(_WAITING_BACKENDS, application_name)
        return frozenset(row["pid"] for row in rows)

    async def settle_background(self) -> list[tuple[str, Any]]:
        """Finished background operations (label, result or exception), removed."""
        finished = []
        for entry in list(self.background):
            label, task = entry
            if task.done():
                self.background.remove(entry)
                self._backends.pop(id(task), None)
                self._application_names.pop(id(task), None)
                error = task.exception()
                finished.append((label, error if error is not None else task.result()))
        return finished

    async def step_together(self, names: Sequence[str]) -> list[StepReport]:
        """Concurrent mode for one step: every named worker resumes at the same instant, so
        their queries race in the database for real (claims against claims, say). The
        database decides the order, not the machine: this is the one nondeterministic
        move, for the races only real timing shows."""
        slots = [self._slot(name) for name in names]
        for slot in slots:
            if slot.task is not None and not slot.task.done() and slot.parked_at is None:
                return [await self._settle(slot) for slot in slots]
        for slot in slots:
            slot.arrived.clear()
            await self._connect(slot)
        for slot in slots:
            if slot.task is None or slot.task.done():
                slot.task = asyncio.create_task(
                    slot.worker.run_once(), name=f"{slot.worker.name}-step"
                )
            else:
                slot.resume.set()
        reports = [await self._settle(slot) for slot in slots]
        await self._settle_others(slots[0])
        return reports

    async def step_whole(self, name: str) -> StepReport:
        """Resume ``name`` through every checkpoint to the end of its step (or a lock
        wait): interleaving at whole-step granularity, with lock waits still reported."""
        report = await self.step(name)
        while report.outcome is Outcome.PARKED:
            report = await self.step(name)
        return report

    async def run_whole_step(self, name: str) -> StepReport:
        """Run ``name`` through one whole step without parking at its checkpoints.

        For the drain, where only the ending matters: still one worker at a time, so the
        run stays deterministic, without the cost of stopping at every seam. A step
        already in progress is first finished checkpoint by checkpoint.
        """
        slot = self._slot(name)
        report = StepReport(name, Outcome.PARKED)
        if slot.task is not None and not slot.task.done():
            report = await self.step(name)
            while report.outcome is Outcome.PARKED:
                report = await self.step(name)
            return report
        await self._connect(slot)
        # Nothing is parked, so nothing holds a lock this step could wait on: run it.
        self.free = True
        try:
            slot.task = asyncio.create_task(slot.worker.run_once(), name=f"{name}-step")
            with contextlib.suppress(DatabaseUnavailableError):
                await slot.task
            return self._finished(slot)
        finally:
            self.free = False

    async def crash(self, name: str) -> StepReport:
        """Kill ``name``: its backend is terminated (rolling back any open transaction),
        its connection closed and its task cancelled; the worker is gone for good."""
        slot = self.slots.get(name)
        if slot is None or slot.crashed:
            return StepReport(name, Outcome.CRASHED)
        slot.crashed = True
        if slot.backend_pid is not None:
            await terminate(self.admin, [slot.backend_pid])
        connection = slot.worker._connection
        if connection is not None and not connection.is_closed():
            # Close client-side before cancelling, or asyncpg tries to roll back on the
            # dead socket and fails inside the task.
            connection.terminate()
        if slot.task is not None:
            if not slot.task.done():
                slot.task.cancel()
            # Awaited even when done: a worker blocked in a query ends with the backend
            # terminated above, and its error is seen here, not printed by asyncio as a
            # task exception never retrieved.
            with contextlib.suppress(BaseException):
                await slot.task
        return StepReport(name, Outcome.CRASHED)

    async def drop_connection(self, name: str) -> None:
        """Terminate ``name``'s backend only; the worker finds out at its next query."""
        slot = self._slot(name)
        if slot.backend_pid is not None:
            await terminate(self.admin, [slot.backend_pid])

    async def run_freely(self, seconds: float) -> None:
        """Concurrent mode: every live worker runs steps in parallel for ``seconds``."""
        live = [s for s in self.slots.values() if not s.crashed]
        for slot in live:
            if slot.parked_at is not None:
                slot.resume.set()
        self.free = True
        try:
            for slot in live:
                if slot.task is not None and not slot.task.done():
                    with contextlib.suppress(DatabaseUnavailableError):
                        await slot.task
            stop = asyncio.Event()
            runners = [asyncio.create_task(s.worker.run(stop)) for s in live]
            await asyncio.sleep(seconds)
            stop.set()
            await asyncio.gather(*runners, return_exceptions=True)
        finally:
            self.free = False
            for slot in live:
                slot.task = None
                slot.reconnect = True


__all__ = [
    "HANG_SECONDS",
    "CheckpointScheduler",
    "Outcome",
    "SchedulerError",
    "StepReport",
]

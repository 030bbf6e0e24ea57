"""Steps any worker round trip by round trip; sees lock waits; crashes workers.

Each worker is the adapter's coroutine (its main loop, unchanged) run as asyncio tasks
whose context names the worker (:data:`~pipeline_models.core.interpose.ACTOR`): every
task it starts inherits the name. Its round trips (statements, commits, HTTP calls) and
its sleeps wait for the scheduler (:mod:`pipeline_models.core.interpose`), so the order
in which workers touch the database is exactly the program's.

:meth:`RoundTripScheduler.step` resumes one worker at its first waiting point (or starts
it), then lets everything run until nothing can move without the scheduler: every task
parked, asleep until the checker's time passes, or waiting; every statement answered or
waiting on a row lock (seen in ``pg_stat_activity``, reported as blocked, never a hang).
The narrow interface (a checkpoint is a label and a leave to go) is what a loopback
proxy speaking the Postgres protocol could also provide, for workers in any language.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import asyncpg

from pipeline_models.core.clock import CheckerClock
from pipeline_models.core.interpose import _REAL_SLEEP, ACTOR
from pipeline_models.errors import PipelineModelsError

HANG_SECONDS = 30.0
# Terminate backends and wait (up to 5 s each) until they are gone: a terminated
# backend's locks are released only when its process exits, and a step taken before
# that would wait on them for as long as the machine is slow (a lock wait that shows
# under load and not otherwise: a program that does not replay).
# $1 pids int[]
TERMINATE = (
    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE pid = ANY($1::int[])"
)
# A statement still in flight after this long is looked for in pg_stat_activity: is it
# waiting on a lock? (Most come back long before; the look costs a round trip.)
_LOCK_LOOK_SECONDS = 0.02


class SchedulerError(PipelineModelsError):
    """A worker neither reached a round trip nor waited within the hang limit."""


class Outcome(StrEnum):
    PARKED = "parked"  # waits before its next round trip
    IDLE = "idle"  # nothing to do until time passes or something happens
    BLOCKED = "blocked"  # a statement waits on a row lock another session holds
    ENDED = "ended"  # its main coroutine returned or raised
    CRASHED = "crashed"  # killed: backends terminated, tasks cancelled


@dataclass(frozen=True)
class StepReport:
    worker: str
    outcome: Outcome
    next: str | None = None  # what it waits to do (PARKED), or waits on (BLOCKED)
    error: BaseException | None = None  # why it ENDED

    def __str__(self) -> str:
        if self.outcome is Outcome.PARKED:
            return f"{self.worker} {self.next}"
        if self.outcome is Outcome.BLOCKED:
            return f"{self.worker} blocked on a lock in {self.next}"
        if self.outcome is Outcome.IDLE and self.next:
            return f"{self.worker} {self.next}"
        if self.outcome is Outcome.ENDED and self.error is not None:
            return f"{self.worker} ended: {type(self.error).__name__}: {self.error}"
        return f"{self.worker} {self.outcome}"


@dataclass(eq=False)
class _Waiting:
    """A point where a worker's task waits for the scheduler: a round trip (always
    ready to go) or a sleep (ready once the checker's time reaches ``until``)."""

    label: str
    kind: str
    future: asyncio.Future[None]
    until: datetime | None = None

    def ready(self, now: datetime) -> bool:
        return self.until is None or self.until <= now

    @property
    def where(self) -> str:
        """Where the worker stands, for a story: before its round trip, after a call."""
        return f"after {self.label}" if self.kind == "after_call" else f"before {self.label}"


@dataclass(eq=False)
class _Flying:
    pid: int | None
    label: str
    blocked: bool = False


@dataclass(eq=False)
class WorkerSlot:
    """One worker under the scheduler: its tasks, where they wait, what is in flight."""

    name: str
    scheduler: RoundTripScheduler
    main: Callable[[], Awaitable[Any]]
    clock_schema: str
    task: asyncio.Task[Any] | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    waiting: list[_Waiting] = field(default_factory=list)
    in_flight: list[_Flying] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)
    connections: list[Any] = field(default_factory=list)
    thread_running: object | None = None  # a worker thread between two round trips
    effects: list[tuple[str, datetime]] = field(default_factory=list)  # calls answered
    crashed: bool = False
    warnings: list[str] = field(default_factory=list)

    # -- the Actor protocol (called from the worker's tasks) ---------------------------

    async def round_trip(self, kind: str, label: str) -> None:
        self._dead_stay_dead()
        if self.scheduler.free:
            return
        await self._wait(_Waiting(label, kind, asyncio.get_running_loop().create_future()))

    async def sleep(self, seconds: float) -> None:
        self._dead_stay_dead()
        until = self.scheduler.clock.now() + timedelta(seconds=seconds)
        if self.scheduler.free:
            await _REAL_SLEEP(0)
            return
        point = _Waiting(
            f"sleep {seconds:g} s", "sleep", asyncio.get_running_loop().create_future()
        )
        point.until = until
        await self._wait(point)

    async def _wait(self, point: _Waiting) -> None:
        self.waiting.append(point)
        self.scheduler.poke()
        try:
            await point.future
        finally:
            if point in self.waiting:
                self.waiting.remove(point)

    def _dead_stay_dead(self) -> None:
        """A crashed worker makes no more round trips. Its cancellation can be lost on the
        way out (a rollback on the cut connection raises a connection error in place of
        CancelledError, which a worker then handles by reconnecting): a process that
        crashed would not have gone on, so it is cancelled again wherever it tries."""
        if self.crashed:
            raise asyncio.CancelledError(f"{self.name} has crashed")

    def flying(self, pid: int | None, label: str) -> object:
        self._dead_stay_dead()
        if pid is not None:
            self.pids.add(pid)
        token = _Flying(pid, label)
        self.in_flight.append(token)
        return token

    def landed(self, token: object) -> None:
        if token in self.in_flight:
            self.in_flight.remove(token)
        self.scheduler.poke()

    def effect(self, label: str) -> None:
        self.effects.append((label, self.scheduler.clock.now()))

    def thread_starts(self) -> None:
        self.thread_running = self.flying(None, "running in its thread")

    def from_thread(self, coroutine: Any) -> Any:
        """A worker's thread runs ``coroutine`` on the scheduler's loop and waits for it.

        While the thread runs between two such calls it is in flight (the loop cannot
        see it work); ``None`` says the thread is over. The hand-over happens on the
        loop, where settle() looks: the thread is counted running until its coroutine
        starts there, and again from the moment it ends there."""
        if coroutine is None:
            running, self.thread_running = self.thread_running, None
            if running is not None:
                self.landed(running)
            return None

        async def handed_over() -> Any:
            running, self.thread_running = self.thread_running, None
            if running is not None:
                self.landed(running)
            try:
                return await coroutine
            finally:
                if not self.crashed:
                    self.thread_running = self.flying(None, "running in its thread")

        return asyncio.run_coroutine_threadsafe(handed_over(), self.scheduler.loop).result()

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def uses(self, connection: Any) -> None:
        self.connections.append(connection)
        pid = connection.get_server_pid()
        if pid is not None:
            self.pids.add(pid)

    # -- state ------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.task is not None and self.task.done()

    def first_ready(self, now: datetime) -> _Waiting | None:
        return next((point for point in self.waiting if point.ready(now)), None)


class RoundTripScheduler:
    """Owns the workers of one example and runs each one round trip at a time."""

    def __init__(
        self,
        clock: CheckerClock,
        admin: asyncpg.Connection,
        *,
        clock_schema: str,
        hang_seconds: float = HANG_SECONDS,
    ) -> None:
        """``admin``: a connection of the checker's own, to see lock waits and to
        terminate backends."""
        self.clock = clock
        self.admin = admin
        self.clock_schema = clock_schema
        self.hang_seconds = hang_seconds
        self.slots: dict[str, WorkerSlot] = {}
        self.free = False  # the drain may let workers run without parking
        # Set whenever a round trip comes back or a task starts waiting: settle()
        # sleeps on it instead of polling.
        self.activity = asyncio.Event()
        self.loop = asyncio.get_event_loop()

    def poke(self) -> None:
        """Something moved (from the loop or from a worker's thread): settle() looks."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.activity.set()
        else:
            self.loop.call_soon_threadsafe(self.activity.set)

    # -- workers ------------------------------------------------------------------------

    def add(self, name: str, main: Callable[[], Awaitable[Any]]) -> WorkerSlot:
        """Put a worker under the scheduler; it starts at its first step."""
        if name in self.slots:
            raise SchedulerError(f"a worker named {name!r} is already scheduled")
        slot = WorkerSlot(name, self, main, self.clock_schema)
        self.slots[name] = slot
        return slot

    def _slot(self, name: str) -> WorkerSlot:
        try:
            slot = self.slots[name]
        except KeyError:
            raise SchedulerError(
                f"no worker named {name!r}; scheduled: {', '.join(self.slots) or 'none'}"
            ) from None
        if slot.crashed:
            raise SchedulerError(f"worker {name!r} has crashed; restart it under a new name")
        return slot

    def _start(self, slot: WorkerSlot) -> None:
        context = contextvars.copy_context()
        context.run(ACTOR.set, slot)
        slot.task = asyncio.get_running_loop().create_task(
            _run_main(slot), name=f"{slot.name} main", context=context
        )

    def track(self, task: asyncio.Task[Any]) -> None:
        """Called for every task created: a worker's tasks are cancelled with it."""
        actor = task.get_context().get(ACTOR) if hasattr(task, "get_context") else None
        if isinstance(actor, WorkerSlot) and actor.scheduler is self:
            actor.tasks.add(task)
            task.add_done_callback(actor.tasks.discard)

    async def step(self, name: str) -> StepReport:
        """Let ``name`` make its next move, then wait until nothing can move."""
        slot = self._slot(name)
        if slot.task is None:
            self._start(slot)
        elif not slot.ended:
            point = slot.first_ready(self.clock.now())
            if point is None and not any(f.blocked for f in slot.in_flight):
                # Asleep: stepping it lets its sleep pass (time moves as work is done).
                wakes = [p.until for p in slot.waiting if p.until is not None]
                if wakes:
                    self.clock.set(max(min(wakes), self.clock.now()))
                    await self.clock.publish()
                    point = slot.first_ready(self.clock.now())
            if point is not None:
                slot.waiting.remove(point)
                point.future.set_result(None)
        await self.settle()
        return await self._report(slot)

    async def _report(self, slot: WorkerSlot) -> StepReport:
        if slot.crashed:
            return StepReport(slot.name, Outcome.CRASHED)
        if slot.ended:
            assert slot.task is not None
            error = None if slot.task.cancelled() else slot.task.exception()
            return StepReport(slot.name, Outcome.ENDED, error=error)
        blocked = next((f for f in slot.in_flight if f.blocked), None)
        if blocked is not None:
            return StepReport(slot.name, Outcome.BLOCKED, blocked.label)
        point = slot.first_ready(self.clock.now())
        if point is not None:
            return StepReport(slot.name, Outcome.PARKED, point.where)
        wakes = [p.until for p in slot.waiting if p.until is not None]
        if wakes:
            return StepReport(slot.name, Outcome.IDLE, f"asleep until {min(wakes):%H:%M:%S}")
        return StepReport(slot.name, Outcome.IDLE)

    def report(self, name: str) -> str:
        """Where ``name`` stands now, for notes."""
        slot = self.slots[name]
        point = slot.first_ready(self.clock.now())
        return f"{name} {point.where}" if point else f"{name} idle"

    def can_move(self, name: str) -> bool:
        """Whether a step of ``name`` would do anything (for the drain)."""
        slot = self.slots[name]
        if slot.crashed or slot.ended:
            return False
        return slot.task is None or slot.first_ready(self.clock.now()) is not None

    def next_wake(self) -> datetime | None:
        """The earliest time a sleeping worker waits for."""
        wakes = [
            point.until
            for slot in self.slots.values()
            if not slot.crashed
            for point in slot.waiting
            if point.until is not None
        ]
        return min(wakes) if wakes else None

    # -- quiescence -----------------------------------------------------------------------

    async def settle(self) -> None:
        """Run until nothing can move without the scheduler: every statement in flight
        answered or waiting on a lock, no task ready to run."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.hang_seconds
        for slot in self.slots.values():
            for flying in slot.in_flight:
                flying.blocked = False
        quiet = 0
        while True:
            await _REAL_SLEEP(0)
            moving = [
                f
                for s in self.slots.values()
                if not s.crashed
                for f in s.in_flight
                if not f.blocked
            ]
            if moving:
                quiet = 0
                self.activity.clear()
                try:
                    await asyncio.wait_for(self.activity.wait(), _LOCK_LOOK_SECONDS)
                except TimeoutError:
                    await self._see_lock_waits(moving)
                if time.monotonic() > deadline:
                    labels = ", ".join(f.label for f in moving)
                    raise SchedulerError(
                        f"a statement neither came back nor waited on a lock in "
                        f"{self.hang_seconds:g} s: {labels}"
                    )
                continue
            if getattr(loop, "_ready", ()):
                quiet = 0
                if time.monotonic() > deadline:
                    raise SchedulerError(
                        f"workers kept running without a round trip for {self.hang_seconds:g} s"
                    )
                continue
            quiet += 1
            if quiet >= 2:
                return

    async def _see_lock_waits(self, flying: Sequence[_Flying]) -> None:
        pids = sorted({f.pid for f in flying if f.pid is not None})
        if not pids:
            return
        rows = await self.admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int[]) "
            "AND wait_event_type = 'Lock'",
            pids,
        )
        waiting = {row["pid"] for row in rows}
        for f in flying:
            if f.pid in waiting:
                f.blocked = True

    # -- crashes ------------------------------------------------------------------------------

    async def crash(self, name: str) -> StepReport:
        """Kill ``name``: its backends terminated (open transactions roll back), its
        connections cut client-side (or its driver would try to roll back on a dead
        socket), its tasks cancelled; round trips already made stay made."""
        slot = self.slots.get(name)
        if slot is None or slot.crashed:
            return StepReport(name, Outcome.CRASHED)
        slot.crashed = True
        await self._terminate(slot)
        for connection in slot.connections:
            if not connection.is_closed():
                connection.terminate()
        slot.connections.clear()
        tasks = [task for task in {*slot.tasks, slot.task} if task is not None and not task.done()]
        for task in tasks:
            task.cancel()
        for point in slot.waiting:
            if not point.future.done():
                point.future.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=self.hang_seconds)
            if stuck:
                raise SchedulerError(
                    f"{name} did not stop within {self.hang_seconds:g} s of being cancelled "
                    "(a worker must let asyncio.CancelledError through); it was at:\n"
                    + "\n".join(_where(task) for task in stuck)
                )
        slot.in_flight.clear()
        return StepReport(name, Outcome.CRASHED)

    async def drop_connections(self, name: str) -> None:
        """Terminate ``name``'s backends only: it finds out at its next statement."""
        await self._terminate(self._slot(name))

    async def _terminate(self, slot: WorkerSlot) -> None:
        if slot.pids:
            await self.admin.execute(TERMINATE, sorted(slot.pids))
            slot.pids.clear()

    async def close(self) -> None:
        """Stop every worker (each is crashed: nothing of it outlives the example)."""
        for name in list(self.slots):
            await self.crash(name)


def _where(task: asyncio.Task[Any]) -> str:
    """Where a task that is still waiting waits: its chain of awaited coroutines."""
    lines: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None and len(lines) < 40:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
        if frame is not None:
            lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
    return f"task {task.get_name()!r}, innermost last:\n" + "\n".join(lines[-8:])


async def _run_main(slot: WorkerSlot) -> Any:
    return await slot.main()


def task_factory(
    scheduler_of: Callable[[], RoundTripScheduler | None],
) -> Callable[..., asyncio.Task[Any]]:
    """A loop task factory that tells the current scheduler of every new task, so a
    worker's own tasks are cancelled when it crashes."""

    def factory(
        loop: asyncio.AbstractEventLoop, coro: Any, context: contextvars.Context | None = None
    ) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, context=context)
        scheduler = scheduler_of()
        actor = (context or contextvars.copy_context()).get(ACTOR)
        if scheduler is not None and isinstance(actor, WorkerSlot):
            actor.tasks.add(task)
            task.add_done_callback(actor.tasks.discard)
        return task

    return factory


__all__ = [
    "HANG_SECONDS",
    "TERMINATE",
    "Outcome",
    "RoundTripScheduler",
    "SchedulerError",
    "StepReport",
    "WorkerSlot",
    "task_factory",
]

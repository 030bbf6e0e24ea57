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
import bisect
import contextvars
import re
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
_SIGNAL = "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid"
# A backend leaves pg_stat_activity as its process exits, after its locks are gone.
_ALIVE = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])"


async def terminate(admin: Any, pids: Sequence[int], timeout: float = 5.0) -> None:
    """End the backends ``pids`` and return once they are gone, their locks with them.

    ``pg_terminate_backend`` only signals a backend; its locks go when its process
    exits, a few milliseconds later. A scheduler that moved on at once let the next step
    wait on a dead worker's lock, but only under load (programs that did not replay).
    Postgres's own wait (``pg_terminate_backend(pid, timeout)``) polls every 100 ms, pid
    after pid: a tenth of a second a worker at every crash and at every example's end.
    All are signalled at once here, then looked for every millisecond."""
    if not pids:
        return
    await admin.execute(_SIGNAL, list(pids))
    deadline = time.monotonic() + timeout
    while await admin.fetchval(_ALIVE, list(pids)) and time.monotonic() < deadline:
        await _REAL_SLEEP(0.001)


# A statement still in flight after this long is looked for in the lock manager: is it
# waiting on a lock? (Most come back long before; the look costs a round trip. It is a
# poll for a fact: how long a statement takes decides nothing.)
_LOCK_LOOK_SECONDS = 0.02
# Whom each of $1 waits for, from the lock manager: granted the moment the holder lets
# go, where pg_stat_activity's wait_event lags until the waiter runs again.
# $1 pids int[]
_BLOCKERS = "SELECT pid, pg_blocking_pids(pid) AS blockers FROM unnest($1::int[]) AS pid"

# A crashed worker's tasks still running after this long are cancelled again.
_RECANCEL_SECONDS = 0.05


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
    blockers: frozenset[int] = frozenset()  # BLOCKED: the backends holding the lock

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
    blockers: frozenset[int] = frozenset()  # the sessions it waits on, once blocked


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
    # The checker's time at each step (the time the worker read, if it read one).
    resumed: list[datetime] = field(default_factory=list)
    crashed: bool = False
    # The last step left it waiting on a lock: its next step is that statement landing
    # (once the lock is gone), whether or not it landed already, and nothing more.
    was_blocked: bool = False
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
        if not any(known is connection for known in self.connections):
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
        # The sessions of actors that ended (an action answered): still named in messages.
        self.former_sessions: dict[int, str] = {}
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
        elif not slot.ended and not slot.was_blocked:
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
        slot.resumed.append(self.clock.now())
        await self.settle()
        report = await self._report(slot)
        # Whether a statement it waited on landed before this step (as the lock holder's
        # release came back) or during it is timing: the step reports the same either way.
        slot.was_blocked = report.outcome is Outcome.BLOCKED
        return report

    def read_before(self, actor: str, at: datetime) -> datetime | None:
        """The checker's time at ``actor``'s step before the one that wrote at ``at``: the
        time a worker read before its write (``now = clock.now()``, then the statement),
        however far a rule moved the time in between. None: not one of the scheduler's."""
        slot = self.slots.get(actor)
        if slot is None:
            return None
        writing = bisect.bisect_right(slot.resumed, at) - 1
        return slot.resumed[max(writing - 1, 0)] if writing >= 0 else None

    async def _report(self, slot: WorkerSlot) -> StepReport:
        if slot.crashed:
            return StepReport(slot.name, Outcome.CRASHED)
        if slot.ended:
            assert slot.task is not None
            error = None if slot.task.cancelled() else slot.task.exception()
            return StepReport(slot.name, Outcome.ENDED, error=error)
        blocked = next((f for f in slot.in_flight if f.blocked), None)
        if blocked is not None:
            return StepReport(slot.name, Outcome.BLOCKED, blocked.label, blockers=blocked.blockers)
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

    def name_sessions(self, text: str) -> str:
        """``text`` (a Postgres message: a deadlock's detail) with every backend of a
        worker or an action named: ``process 4711 (w1)``."""
        owners = dict(self.former_sessions)
        owners |= {pid: name for name, slot in self.slots.items() for pid in slot.pids}

        def named(found: re.Match[str]) -> str:
            owner = owners.get(int(found[2]))
            return f"{found[0]} ({owner})" if owner else found[0]

        return re.sub(r"\b([Pp]rocess) (\d+)\b", named, text)

    def forget(self, name: str) -> None:
        """``name`` ended and is no actor any more; its sessions keep its name."""
        slot = self.slots.pop(name)
        self.former_sessions |= dict.fromkeys(slot.pids, name)

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
        """Mark the statements the lock manager has waiting for a session that will not
        let go by itself (a parked worker's, an idle one's). Not ``wait_event_type =
        'Lock'``: the waiter clears that itself once scheduled again, so it still reads
        'Lock' for a moment after the holder commits, and a statement already on its way
        would be taken for blocked (and land behind the checker's back) as the machine
        is slow. A holder that is itself a statement in flight will let go by itself:
        not blocked yet, look again."""
        pids = sorted({f.pid for f in flying if f.pid is not None})
        if not pids:
            return
        # The sessions with a statement on its way. A worker's other sessions are not:
        # one parked before its COMMIT holds its locks until the scheduler lets it go
        # (procrastinate's recipe waits on the row its own job's finish just locked).
        # A statement whose session is not known yet could be on any of its worker's.
        moving: set[int] = set()
        for slot in self.slots.values():
            on_its_way = [f for f in slot.in_flight if not f.blocked and not slot.crashed]
            moving |= {f.pid for f in on_its_way if f.pid is not None}
            if any(f.pid is None for f in on_its_way):
                moving |= slot.pids
        rows = await self.admin.fetch(_BLOCKERS, pids)
        waiting = {
            row["pid"]: frozenset(row["blockers"])
            for row in rows
            if row["blockers"] and not set(row["blockers"]) & (moving - {row["pid"]})
        }
        for f in flying:
            if f.pid in waiting:
                f.blocked = True
                f.blockers = waiting[f.pid]

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
        # Cancelled again, and again, until nothing of it runs: a worker that catches the
        # cancellation to shut down gracefully (procrastinate waits for its running job,
        # which starts a task to record the job's end, which waits for a pool connection
        # nobody will make) would not have gone on either.
        deadline = time.monotonic() + self.hang_seconds
        ended: set[asyncio.Task[Any]] = set()
        while True:
            tasks = [t for t in {*slot.tasks, slot.task} if t is not None and not t.done()]
            ended.update(tasks)
            for point in slot.waiting:
                if not point.future.done():
                    point.future.cancel()
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            _, stuck = await asyncio.wait(tasks, timeout=_RECANCEL_SECONDS)
            if stuck and time.monotonic() > deadline:
                raise SchedulerError(
                    f"{name} did not stop within {self.hang_seconds:g} s of being cancelled "
                    "(a worker must let asyncio.CancelledError through); it was at:\n"
                    + "\n".join(_where(task) for task in stuck)
                )
        slot.in_flight.clear()
        for task in ended:  # what the crash ended it with (a dead connection) is no news
            if not task.cancelled():
                task.exception()
        return StepReport(name, Outcome.CRASHED)

    async def drop_connections(self, name: str) -> None:
        """Terminate ``name``'s backends only: it finds out at its next statement."""
        await self._terminate(self._slot(name))

    async def cut(self, name: str) -> StepReport:
        """``name`` loses its database sessions (the server ended them: a failover, an
        idle timeout, a network cut) and lives on: what it had in flight fails, and what
        it does next is its own affair (reconnect, give up)."""
        slot = self._slot(name)
        if slot.crashed or slot.ended:
            return await self._report(slot)
        self.former_sessions |= dict.fromkeys(slot.pids, name)
        await self._terminate(slot)
        await self.settle()
        return await self._report(slot)

    async def _terminate(self, slot: WorkerSlot) -> None:
        await terminate(self.admin, sorted(slot.pids))
        slot.pids.clear()

    async def close(self) -> None:
        """Stop every worker (each is crashed: nothing of it outlives the example), all
        their backends ended at once first."""
        live = [slot for slot in self.slots.values() if not slot.crashed]
        await terminate(self.admin, sorted(pid for slot in live for pid in slot.pids))
        for slot in live:
            slot.pids.clear()
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
    "Outcome",
    "RoundTripScheduler",
    "SchedulerError",
    "StepReport",
    "WorkerSlot",
    "task_factory",
    "terminate",
]

"""What a seed draws, recorded: the programs of a run, each with what its steps reported.

:func:`record_programs` runs a machine from a seed and returns every example Hypothesis
ran, as Hypothesis prints it (``state.step_worker(worker='w1')`` …) with the notes its
steps left (``w1 parked at claimed (queued)``: how each step came out). Two runs of one
seed must return the same list, wherever and however fast they ran: choices come from
Hypothesis alone, and what a step does from the program alone.

:func:`lagging_backends` makes the database slow the way a loaded machine is: every
round trip may wait a few milliseconds, and a backend released from a lock wait by a
commit or rollback is stopped (SIGSTOP) for a while, as a process the machine has not
scheduled yet. (Only the latter shows a scheduler that takes timing for facts: Postgres
has granted the lock, the waiter has yet to clear its wait event.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
from hypothesis import seed as hypothesis_seed
from hypothesis.internal.observability import (
    add_observability_callback,
    remove_observability_callback,
)
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

from pipeline_models.core.interpose import _REAL_SLEEP
from pipeline_models.machines import QueueMachine, note
from pipeline_models.profiles import machine_settings
from pipeline_models.snapshot import Snapshot
from tests.slow_backends import local_backend

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class Program:
    status: str  # passed, failed, gave_up
    text: str  # the rules with their arguments, as Hypothesis prints a program
    steps: tuple[str, ...]  # what the steps reported (ids numbered as they appear)


def canonical(lines: list[str]) -> tuple[str, ...]:
    """``lines`` with the random ids (uuid4 documents and jobs) numbered by first use."""
    seen: dict[str, int] = {}
    return tuple(
        _UUID.sub(lambda match: f"<id{seen.setdefault(match.group(0), len(seen))}>", line)
        for line in lines
    )


def with_database_notes(machine: type[QueueMachine]) -> type[QueueMachine]:
    """``machine`` noting what each check of the database saw (its rows without their
    random ids, hashed) and which workers and requests the scheduler had not seen park
    or finish: a step or a request that lands behind the scheduler's back shows there."""

    class Noted(machine):  # type: ignore[valid-type,misc]
        def _check_the_database(self) -> None:
            try:
                super()._check_the_database()
            finally:
                rows = repr(snapshot_rows(self._run(self.driver.snapshot()))).encode()
                note(f"database {hashlib.sha256(rows).hexdigest()[:12]}, {_in_motion(self)}")

    Noted.__name__ = machine.__name__
    return Noted


def _in_motion(machine: QueueMachine) -> str:
    """Which workers and requests the scheduler has not seen park or finish: blocked on
    a lock (a fact of the program), or running behind its back (a matter of timing)."""
    scheduler = getattr(machine.driver, "scheduler", None)
    if scheduler is None:
        return "no scheduler"
    workers = sorted(name for name, slot in scheduler.slots.items() if slot.running)
    requests = sorted(label for label, task in scheduler.background if not task.done())
    return f"in motion: {workers} {requests}"


def snapshot_rows(snapshot: Snapshot) -> list[tuple[object, ...]]:
    """The pipeline's tables without their random ids (documents and jobs get uuid4s)."""
    rows = []
    for document in snapshot.documents.values():
        jobs = sorted(
            (
                job.stage.value,
                job.state.value,
                job.owner or "",
                str(job.lease_expires_at),
                str(job.next_attempt_at),
                job.retry_count,
                job.chunks_done,
                job.embeddings_done,
                _UUID.sub("<id>", job.last_error or ""),
            )
            for job in snapshot.jobs_of(document.document_id)
        )
        finals = [
            (c.chunk_ord, c.chunk_sha, c.vector_sha)
            for c in snapshot.final_chunks_of(document.document_id)
        ]
        rows.append(
            (
                str(document.user_id),
                document.file_sha256,
                document.status,
                document.chunk_count,
                tuple(jobs),
                tuple(finals),
                len(snapshot.billed_calls),
            )
        )
    return sorted(rows)


def record_programs(
    machine: type[RuleBasedStateMachine], *, seed: int, max_examples: int, steps: int
) -> list[Program]:
    """Every example a run of ``machine`` from ``seed`` ran, in order."""
    programs: list[Program] = []

    def observe(observation: Any) -> None:
        if observation.type == "test_case":
            notes = [str(note) for note in (observation.metadata.notes or [])]
            programs.append(
                Program(observation.status, observation.representation, canonical(notes))
            )

    seeded = type(machine.__name__, (machine,), {"__module__": machine.__module__})
    hypothesis_seed(seed)(seeded)
    settings = machine_settings(
        "ci",
        max_examples=max_examples,
        stateful_step_count=steps,
        derandomize=False,
        database=None,
    )
    add_observability_callback(observe)
    try:
        run_state_machine_as_test(seeded, settings=settings)
    finally:
        remove_observability_callback(observe)
    return programs


def first_difference(first: list[Program], second: list[Program]) -> str | None:
    """Where two recordings part (None: nowhere), told for an assertion message."""
    for number, (one, other) in enumerate(zip(first, second, strict=False), start=1):
        if one == other:
            continue
        if one.text != other.text:
            where = _first_line_apart(one.text.splitlines(), other.text.splitlines())
            return f"example {number} drew another program: {where}"
        if one.steps != other.steps:
            return f"example {number}'s steps came out otherwise: " + _first_line_apart(
                list(one.steps), list(other.steps)
            )
        return f"example {number} {one.status} once and {other.status} the other time"
    if len(first) != len(second):
        return f"one run ran {len(first)} examples, the other {len(second)}"
    return None


def _first_line_apart(one: list[str], other: list[str]) -> str:
    for index, (a, b) in enumerate(zip(one, other, strict=False)):
        if a != b:
            return f"line {index + 1}: {a[:200]!r} then {b[:200]!r}"
    return f"{len(one)} lines, then {len(other)}"


@contextlib.contextmanager
def lagging_backends(*, seed: int = 0, stop_seconds: float = 0.1) -> Iterator[list[int]]:
    """Slow every asyncpg round trip by 0-3 ms (from ``seed``), and stop for
    ``stop_seconds`` each local backend that a COMMIT or ROLLBACK releases from a lock
    wait. Yields the list of backends stopped so far (to tell the lag happened)."""
    jitter = random.Random(seed)
    stopped: list[int] = []
    connection_class = asyncpg.connection.Connection
    original_execute = connection_class.execute
    original_round_trip = connection_class._execute

    async def lag() -> None:
        # The wall's sleep: under the core, a worker's asyncio.sleep waits for the
        # checker's time, which does not pass while a statement is in flight.
        await _REAL_SLEEP(jitter.choice((0, 0, 0, 0.001, 0.003)))

    async def round_trip(self: Any, *args: Any, **kwargs: Any) -> Any:
        await lag()
        return await original_round_trip(self, *args, **kwargs)

    async def execute(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        if not args:  # with arguments it goes through _execute, which lags
            await lag()
        ends = query.lstrip().upper().startswith(("COMMIT", "ROLLBACK", "END", "ABORT"))
        waiters: list[int] = []
        if ends and not args and not self.is_closed() and self.is_in_transaction():
            rows = await original_round_trip(
                self,
                "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                (self.get_server_pid(),),
                0,
                None,
            )
            waiters = [row["pid"] for row in rows if local_backend(row["pid"])]
        for pid in waiters:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        try:
            return await original_execute(self, query, *args, **kwargs)
        finally:
            loop = asyncio.get_running_loop()
            for pid in waiters:
                loop.call_later(stop_seconds, _resume, pid)

    connection_class.execute = execute  # type: ignore[method-assign]
    connection_class._execute = round_trip  # type: ignore[method-assign]
    try:
        yield stopped
    finally:
        connection_class.execute = original_execute  # type: ignore[method-assign]
        connection_class._execute = original_round_trip  # type: ignore[method-assign]
        for pid in stopped:
            _resume(pid)


def _resume(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)

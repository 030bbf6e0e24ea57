"""Time as a parameter: every comparison with "now" in the pipeline reads a Clock.

Production uses :class:`SystemClock`. The model checker uses :class:`ManualClock`, whose
time moves only when told to, so lease expiry, backoff and replay windows are explored
deterministically.

>>> clock = ManualClock()
>>> start = clock.now()
>>> clock.advance(30)
>>> (clock.now() - start).total_seconds()
30.0
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@runtime_checkable
class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""

    async def sleep(self, seconds: float) -> None:
        """Wait until ``seconds`` of this clock's time have passed."""


class SystemClock:
    """Wall-clock time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that moves only through :meth:`advance` or :meth:`set`.

    ``sleep`` returns once the clock has been advanced far enough, so a task sleeping on
    this clock wakes exactly when the test moves time, never on its own.
    """

    def __init__(self, start: datetime = EPOCH) -> None:
        if start.tzinfo is None:
            raise ValueError(f"ManualClock needs a timezone-aware start, got {start!r}")
        self._now = start
        self._sleepers: list[tuple[datetime, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"time only moves forward; advance({seconds}) was asked")
        self.set(self._now + timedelta(seconds=seconds))

    def set(self, when: datetime) -> None:
        if when < self._now:
            raise ValueError(f"time only moves forward: {when} is before {self._now}")
        self._now = when
        waiting = []
        for deadline, future in self._sleepers:
            if future.done():
                continue
            if deadline <= when:
                # Thread-safe and loop-state-agnostic: the machine may move time while
                # its event loop is not running.
                future.get_loop().call_soon_threadsafe(_resolve, future)
            else:
                waiting.append((deadline, future))
        self._sleepers = waiting

    async def sleep(self, seconds: float) -> None:
        deadline = self._now + timedelta(seconds=max(0.0, seconds))
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((deadline, future))
        await future

    def __repr__(self) -> str:
        return f"ManualClock({self._now.isoformat()})"


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


__all__ = ["EPOCH", "Clock", "ManualClock", "SystemClock"]

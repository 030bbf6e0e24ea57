"""One time for the checker, the worker's SQL and the worker's Python.

During a check the checker's clock is the only clock:

* in SQL, every worker session has the checker's clock schema first on its
  ``search_path`` (:mod:`pipeline_models.core.interpose` sets it), whose ``now()``,
  ``transaction_timestamp()``, ``statement_timestamp()`` and ``clock_timestamp()`` read
  the checker's time from a table the clock writes;
* in Python, ``datetime.now()``, ``datetime.utcnow()``, ``date.today()`` and
  ``time.time()`` return it (time-machine travels there with the clock stopped);
* ``asyncio.sleep`` in a worker waits for the checker's time to pass (see
  :mod:`pipeline_models.core.interpose`).

What cannot be redirected, said plainly: the SQL keywords ``CURRENT_TIMESTAMP``,
``LOCALTIMESTAMP``, ``CURRENT_DATE`` and ``CURRENT_TIME`` (the parser turns them into
built-in values, not function calls; the checker warns when a worker's statement uses
one); a call qualified as ``pg_catalog.now()``; column defaults such as ``DEFAULT
now()`` (bound when the table was created); functions declared with their own ``SET
search_path``; ``time.monotonic()`` and ``time.perf_counter()`` (left alone: the event
loop and timeouts need real time); and the clocks of other processes.

>>> clock = CheckerClock()
>>> clock.now().isoformat()
'2030-01-01T00:00:00+00:00'
>>> clock.advance(61)
>>> clock.now().isoformat()
'2030-01-01T00:01:01+00:00'
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

START = datetime(2030, 1, 1, tzinfo=UTC)

# SQL time keywords the search_path cannot reach (matched outside quotes, roughly).
UNREACHABLE_TIME = re.compile(
    r"\b(CURRENT_TIMESTAMP|LOCALTIMESTAMP|CURRENT_DATE|CURRENT_TIME|LOCALTIME)\b|pg_catalog\.now\b",
    re.IGNORECASE,
)


class CheckerClock:
    """The checker's time: moves only through :meth:`advance` (or :meth:`set`).

    ``on_change`` callbacks run after every move (the SQL clock table, time-machine,
    sleeping workers to wake); they are awaited by :meth:`publish`.
    """

    def __init__(self, start: datetime = START) -> None:
        self._now = start
        self.start = start
        self._travel: Any = None
        self._coordinates: Any = None
        self.listeners: list[Callable[[datetime], Awaitable[None]]] = []

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"time never goes back; got advance({seconds})")
        self.set(self._now + timedelta(seconds=seconds))

    def set(self, moment: datetime) -> None:
        if moment < self._now:
            raise ValueError(f"time never goes back: {moment} is before {self._now}")
        self._now = moment
        if self._coordinates is not None:
            self._coordinates.move_to(moment, tick=False)

    def reset(self) -> None:
        """Back to the start, for a new example."""
        self._now = self.start
        if self._coordinates is not None:
            self._coordinates.move_to(self.start, tick=False)

    async def publish(self) -> None:
        """Tell every listener where time is now (the SQL clock, sleepers)."""
        for listener in self.listeners:
            await listener(self._now)

    # -- Python's time -------------------------------------------------------------------

    def stop_python_time(self) -> None:
        """From now on ``datetime.now()`` and ``time.time()`` return the checker's time
        (until :meth:`release_python_time`)."""
        if self._travel is not None:
            return
        import time_machine

        self._travel = time_machine.travel(self._now, tick=False)
        self._coordinates = self._travel.start()

    def release_python_time(self) -> None:
        if self._travel is None:
            return
        self._travel.stop()
        self._travel = self._coordinates = None

    def __repr__(self) -> str:
        return f"CheckerClock({self._now.isoformat()})"


def unreachable_time(sql: str) -> str | None:
    """The first time keyword in ``sql`` that the checker's clock cannot reach, if any.

    >>> unreachable_time("UPDATE jobs SET started_at = CURRENT_TIMESTAMP")
    'CURRENT_TIMESTAMP'
    >>> unreachable_time("UPDATE jobs SET started_at = now()") is None
    True
    """
    match = UNREACHABLE_TIME.search(_without_quotes(sql))
    return match.group(0) if match else None


def _without_quotes(sql: str) -> str:
    return re.sub(r"'(?:[^']|'')*'", "''", sql)


__all__ = ["START", "CheckerClock", "unreachable_time"]

"""Client-side rate limits per service: requests and tokens per window, and Retry-After.

Each service has a request limit and optionally a token limit over a sliding window (a
minute for the real services); a call waits until it fits. A server's Retry-After pauses
the whole service for every slot, not only the step that saw it.

Two implementations with one interface: :class:`RateLimits` keeps the window in memory
and is shared by every job slot of one worker process; :class:`SharedRateLimits` keeps
it in Postgres and is shared by every process that uses the database, which is what a
service counts when a team runs several workers against one API key.

Why not a leaky bucket (``aiolimiter``): a bucket of N per minute lets N through at once
and then drips, so a sliding minute can see nearly 2N, which is what a service's limit
counts and rejects. A sliding log of recent calls keeps every window at or under N.

>>> import asyncio
>>> limits = RateLimits({"embeddings": ServiceRate(requests=2, window_seconds=60)})
>>> waited = asyncio.run(limits.acquire("embeddings")); asyncio.run(limits.used("embeddings"))
(1, 0)
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from pipeline_models.queries import Queries

if TYPE_CHECKING:
    from pipeline_models.database import Database

RATE_LIMIT_QUERIES = Queries.load("ratelimit.sql")


@dataclass(frozen=True)
class ServiceRate:
    """At most ``requests`` calls and ``tokens`` tokens per ``window_seconds`` (None: no
    limit of that kind)."""

    requests: int | None = None
    tokens: int | None = None
    window_seconds: float = 60.0

    def __post_init__(self) -> None:
        for name in ("requests", "tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"ServiceRate.{name} must be at least 1 or None, got {value}")
        if self.window_seconds <= 0:
            raise ValueError(
                f"ServiceRate.window_seconds must be positive, got {self.window_seconds}"
            )


class _Window:
    """A sliding log of (time, tokens) for one service, with a FIFO lock for waiters."""

    def __init__(self, rate: ServiceRate, monotonic: Callable[[], float]) -> None:
        self.rate = rate
        self.monotonic = monotonic
        self.log: deque[tuple[float, int]] = deque()
        self.lock = asyncio.Lock()  # fair: waiters are served in arrival order
        self.paused_until = 0.0

    def _expire(self, now: float) -> None:
        while self.log and self.log[0][0] <= now - self.rate.window_seconds:
            self.log.popleft()

    def used(self) -> tuple[int, int]:
        self._expire(self.monotonic())
        return len(self.log), sum(tokens for _, tokens in self.log)

    def _wait_seconds(self, now: float, tokens: int) -> float:
        """How long until a call of ``tokens`` fits; 0 if it fits now."""
        if now < self.paused_until:
            return self.paused_until - now
        self._expire(now)
        requests, used = len(self.log), sum(t for _, t in self.log)
        limit_r, limit_t = self.rate.requests, self.rate.tokens
        waits = [0.0]
        if limit_r is not None and requests + 1 > limit_r:
            waits.append(self.log[requests - limit_r][0] + self.rate.window_seconds - now)
        if limit_t is not None and used + tokens > limit_t and self.log:
            # The oldest calls must leave the window until the new one fits.
            freed = 0
            for at, spent in self.log:
                freed += spent
                if used - freed + tokens <= limit_t:
                    waits.append(at + self.rate.window_seconds - now)
                    break
        return max(waits)

    def check_fits(self, tokens: int) -> None:
        if self.rate.tokens is not None and tokens > self.rate.tokens:
            raise ValueError(
                f"one call of {tokens} tokens can never fit a limit of {self.rate.tokens} "
                f"tokens per {self.rate.window_seconds:g} s: make the batches smaller"
            )

    async def acquire(self, tokens: int) -> float:
        self.check_fits(tokens)
        started = self.monotonic()
        async with self.lock:
            # A wait that ends is the only event here: time passing frees the window.
            while (wait := self._wait_seconds(self.monotonic(), tokens)) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait + 1e-3)
            self.log.append((now := self.monotonic(), tokens))
        return now - started


class RateLimits:
    """Rate limits per service name, shared by the job slots of one worker process."""

    def __init__(
        self,
        rates: Mapping[str, ServiceRate] | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.monotonic = monotonic
        self._windows = {
            service: _Window(rate, monotonic) for service, rate in (rates or {}).items()
        }

    def rate(self, service: str) -> ServiceRate | None:
        window = self._windows.get(service)
        return None if window is None else window.rate

    async def acquire(self, service: str, *, tokens: int = 0) -> float:
        """Wait until a call of ``tokens`` to ``service`` fits its limits, and count it;
        the seconds waited (0.0 for a service without limits)."""
        window = self._windows.get(service)
        if window is None:
            return 0.0
        return await window.acquire(tokens)

    async def pause(self, service: str, seconds: float) -> None:
        """The server said Retry-After: no slot calls ``service`` for ``seconds``."""
        window = self._windows.get(service)
        if window is not None and seconds > 0:
            window.paused_until = max(window.paused_until, self.monotonic() + seconds)

    async def used(self, service: str) -> tuple[int, int]:
        """Requests and tokens counted in ``service``'s current window."""
        window = self._windows.get(service)
        return (0, 0) if window is None else window.used()

    async def aclose(self) -> None:
        """Nothing to release: the windows live in this process."""


class SharedRateLimits(RateLimits):
    """Rate limits kept in Postgres, shared by every process using ``database``.

    Each call asks the database (``take_rate_slot`` in ``sql/ratelimit.sql``) whether it
    fits the service's window, which is counted across all processes; if not, it sleeps
    for as long as the database says and asks again. Slots of one process queue on a
    local lock first, so they are served in arrival order and ask one at a time. The
    object holds one connection of its own, opened on first use and reopened if the
    database drops it; a database that stays away fails the call (the step is retried).
    """

    def __init__(
        self,
        database: Database,
        rates: Mapping[str, ServiceRate] | None = None,
    ) -> None:
        super().__init__(rates)
        self.database = database
        self._turns = {service: asyncio.Lock() for service in self._windows}
        self._connection: asyncpg.Connection | None = None
        self._connection_lock = asyncio.Lock()  # one query at a time on the connection

    async def _query(self, name: str, *args: object) -> Any:
        async with self._connection_lock:
            if self._connection is None or self._connection.is_closed():
                connection = await self.database.connect(
                    application_name="pipeline-models rate limits"
                )
                try:
                    await connection.execute(RATE_LIMIT_QUERIES["install_rate_limits"].sql)
                except BaseException:
                    await connection.close()
                    raise
                self._connection = connection
            try:
                return await self._connection.fetchrow(RATE_LIMIT_QUERIES[name].sql, *args)
            except BaseException:
                # Dropped by the server, cancelled mid-query or refused: whatever state the
                # connection is in, the next call starts on a new one; this call fails
                # like any lost database call (the step is retried).
                self._connection.terminate()
                self._connection = None
                raise

    async def acquire(self, service: str, *, tokens: int = 0) -> float:
        window = self._windows.get(service)
        if window is None:
            return 0.0
        rate = window.rate
        window.check_fits(tokens)
        started = time.monotonic()
        async with self._turns[service]:
            while True:
                row = await self._query(
                    "take_rate_slot",
                    service,
                    rate.requests,
                    rate.tokens,
                    rate.window_seconds,
                    tokens,
                )
                wait = float(row[0])
                if wait <= 0:
                    return time.monotonic() - started
                await asyncio.sleep(wait + 1e-3)

    async def pause(self, service: str, seconds: float) -> None:
        if service in self._windows and seconds > 0:
            await self._query("pause_service", service, float(seconds))

    async def used(self, service: str) -> tuple[int, int]:
        window = self._windows.get(service)
        if window is None:
            return (0, 0)
        row = await self._query("used_rate_window", service, window.rate.window_seconds)
        return int(row["requests"]), int(row["tokens"])

    async def aclose(self) -> None:
        async with self._connection_lock:
            if self._connection is not None:
                await self._connection.close()
                self._connection = None


__all__ = ["RateLimits", "ServiceRate", "SharedRateLimits"]

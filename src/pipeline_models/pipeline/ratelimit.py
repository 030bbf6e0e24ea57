"""Client-side rate limits per service: requests and tokens per window, and Retry-After.

One :class:`RateLimits` is shared by every job slot of a worker process. Each service has
a request limit and optionally a token limit over a sliding window (a minute for the real
services); a call waits until it fits. A server's Retry-After pauses the whole service
for every slot, not only the step that saw it.

Why not a leaky bucket (``aiolimiter``): a bucket of N per minute lets N through at once
and then drips, so a sliding minute can see nearly 2N, which is what a service's limit
counts and rejects. A sliding log of recent calls keeps every window at or under N.

>>> import asyncio
>>> limits = RateLimits({"embeddings": ServiceRate(requests=2, window_seconds=60)})
>>> waited = asyncio.run(limits.acquire("embeddings")); limits.used("embeddings")
(1, 0)
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass


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

    async def acquire(self, tokens: int) -> float:
        if self.rate.tokens is not None and tokens > self.rate.tokens:
            raise ValueError(
                f"one call of {tokens} tokens can never fit a limit of {self.rate.tokens} "
                f"tokens per {self.rate.window_seconds:g} s: make the batches smaller"
            )
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

    def pause(self, service: str, seconds: float) -> None:
        """The server said Retry-After: no slot calls ``service`` for ``seconds``."""
        window = self._windows.get(service)
        if window is not None and seconds > 0:
            window.paused_until = max(window.paused_until, self.monotonic() + seconds)

    def used(self, service: str) -> tuple[int, int]:
        """Requests and tokens counted in ``service``'s current window."""
        window = self._windows.get(service)
        return (0, 0) if window is None else window.used()


__all__ = ["RateLimits", "ServiceRate"]

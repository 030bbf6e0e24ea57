"""A circuit breaker per external service, on the worker's Clock.

Closed: calls go through; ``failure_threshold`` transient failures in a row open it.
Open: calls fail fast with :class:`CircuitOpenError` (no request is sent) until
``reset_seconds`` have passed. Half-open: one trial call at a time; success closes the
circuit, failure opens it again. Permanent errors (a 4xx for one bad request) say nothing
about the service's health and do not count.

>>> from pipeline_models.clock import ManualClock
>>> clock = ManualClock()
>>> breaker = CircuitBreaker("parser", clock, failure_threshold=2, reset_seconds=10)
>>> breaker.record_failure(); breaker.record_failure(); breaker.state
<CircuitState.OPEN: 'open'>
>>> clock.advance(10); breaker.state
<CircuitState.HALF_OPEN: 'half_open'>
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from pipeline_models.clock import Clock
from pipeline_models.errors import CircuitOpenError


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        service: str,
        clock: Clock,
        *,
        failure_threshold: int = 5,
        reset_seconds: float = 30.0,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {failure_threshold}")
        if reset_seconds < 0:
            raise ValueError(f"reset_seconds must not be negative, got {reset_seconds}")
        self.service = service
        self.clock = clock
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self.consecutive_failures = 0
        self.opened_at: datetime | None = None
        self.trial_in_flight = False
        self.last_error: str | None = None

    @property
    def state(self) -> CircuitState:
        if self.opened_at is None:
            return CircuitState.CLOSED
        if self.clock.now() >= self.opened_at + timedelta(seconds=self.reset_seconds):
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    def before_call(self) -> None:
        """Raise :class:`CircuitOpenError` unless a call may go through now."""
        state = self.state
        if state is CircuitState.CLOSED:
            return
        if state is CircuitState.HALF_OPEN and not self.trial_in_flight:
            self.trial_in_flight = True
            return
        assert self.opened_at is not None
        reopen = self.opened_at + timedelta(seconds=self.reset_seconds)
        wait = max((reopen - self.clock.now()).total_seconds(), 0.0)
        raise CircuitOpenError(
            self.service,
            f"circuit open after {self.consecutive_failures} failures in a row "
            f"(last: {self.last_error}); next trial in {wait:.1f} s",
            retry_after=wait or self.reset_seconds,
        )

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self.opened_at = None
        self.trial_in_flight = False

    def record_failure(self, error: str | None = None) -> None:
        self.consecutive_failures += 1
        self.last_error = error
        if self.trial_in_flight or self.consecutive_failures >= self.failure_threshold:
            self.opened_at = self.clock.now()
        self.trial_in_flight = False

    def release_trial(self) -> None:
        """The trial call ended without a verdict on the service (e.g. a permanent error)."""
        self.trial_in_flight = False

    def snapshot(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
        }

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.service!r}, {self.state.value})"


__all__ = ["CircuitBreaker", "CircuitState"]

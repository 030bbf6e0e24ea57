from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline_models.clock import ManualClock
from pipeline_models.errors import (
    CircuitOpenError,
    DocumentRejectedError,
    InconsistentStateError,
    PermanentServiceError,
    TransientServiceError,
)
from pipeline_models.pipeline.circuit import CircuitBreaker, CircuitState
from pipeline_models.pipeline.retry import FailureKind, RetryPolicy, classify


@given(st.integers(0, 20), st.floats(0, 1000) | st.none())
def test_the_wait_is_the_backoff_or_the_services_retry_after_whichever_is_longer(
    retry_count: int, retry_after: float | None
) -> None:
    policy = RetryPolicy()
    delay = policy.delay_seconds(retry_count, retry_after)
    assert delay == max(min(3.0 * 2**retry_count, 3600.0), retry_after or 0.0)


def test_the_default_backoff_doubles_from_three_seconds_and_allows_three_retries() -> None:
    policy = RetryPolicy()
    assert [policy.backoff_seconds(n) for n in range(3)] == [3.0, 6.0, 12.0]
    assert [policy.exhausted(n) for n in range(5)] == [False, False, False, True, True]


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (DocumentRejectedError("empty"), FailureKind.PERMANENT),
        (InconsistentStateError("plan and buffer disagree"), FailureKind.PERMANENT),
        (PermanentServiceError("parser", "HTTP 400"), FailureKind.PERMANENT),
        (TransientServiceError("parser", "HTTP 503"), FailureKind.TRANSIENT),
        (CircuitOpenError("parser", "open", retry_after=5), FailureKind.DEFERRED),
        (KeyError("a bug in a stage"), FailureKind.TRANSIENT),
    ],
)
def test_failures_are_classified(error: Exception, kind: FailureKind) -> None:
    failure = classify(error)
    assert failure.kind is kind
    assert type(error).__name__ in failure.message


def test_a_long_error_is_truncated_for_last_error() -> None:
    assert len(classify(ValueError("x" * 10_000)).message) == 2000


def test_the_circuit_opens_after_consecutive_failures_and_fails_fast() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("embeddings", clock, failure_threshold=3, reset_seconds=30)
    breaker.record_failure("503")
    breaker.record_success()  # a success in between resets the count
    for _ in range(3):
        breaker.before_call()
        breaker.record_failure("503")
    assert breaker.state is CircuitState.OPEN
    clock.advance(10)
    with pytest.raises(CircuitOpenError) as raised:
        breaker.before_call()
    assert raised.value.retry_after == 20


def test_a_half_open_circuit_lets_one_trial_through_and_closes_on_success() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("parser", clock, failure_threshold=1, reset_seconds=5)
    breaker.record_failure("timeout")
    clock.advance(5)
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.before_call()  # the trial
    with pytest.raises(CircuitOpenError):
        breaker.before_call()  # a second caller waits for the verdict
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED


def test_a_failed_trial_opens_the_circuit_again() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("parser", clock, failure_threshold=3, reset_seconds=5)
    for _ in range(3):
        breaker.record_failure("503")
    clock.advance(5)
    breaker.before_call()
    breaker.record_failure("503 again")
    assert breaker.state is CircuitState.OPEN
    assert breaker.snapshot()["last_error"] == "503 again"

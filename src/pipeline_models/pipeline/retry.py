"""What a failure means for the job: classification, backoff and the retry limit.

>>> policy = RetryPolicy(base_seconds=3, limit=3)
>>> [policy.backoff_seconds(n) for n in range(4)]
[3.0, 6.0, 12.0, 24.0]
>>> classify(DocumentRejectedError("empty upload")).kind
<FailureKind.PERMANENT: 'permanent'>
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pipeline_models.errors import (
    CircuitOpenError,
    DocumentRejectedError,
    InconsistentStateError,
    PermanentServiceError,
    ServiceError,
)

_MAX_ERROR_CHARS = 2000


class FailureKind(StrEnum):
    TRANSIENT = "transient"  # retry after backoff, counts against the limit
    PERMANENT = "permanent"  # dead-letter now
    DEFERRED = "deferred"  # not the job's fault (circuit open): wait, do not count


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    message: str
    retry_after: float | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff, ``base_seconds * 2 ** retry_count``, at most ``limit`` retries.

    A job that fails transiently with ``retry_count == limit`` is dead-lettered.
    """

    base_seconds: float = 3.0
    limit: int = 3
    max_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if self.base_seconds < 0:
            raise ValueError(f"base_seconds must not be negative, got {self.base_seconds}")
        if self.limit < 0:
            raise ValueError(f"limit must not be negative, got {self.limit}")

    def backoff_seconds(self, retry_count: int) -> float:
        return float(min(self.base_seconds * 2**retry_count, self.max_seconds))

    def delay_seconds(self, retry_count: int, retry_after: float | None) -> float:
        """The wait before the next attempt: the backoff, or longer if the service asked."""
        return max(self.backoff_seconds(retry_count), retry_after or 0.0)

    def exhausted(self, retry_count: int) -> bool:
        return retry_count >= self.limit


def classify(error: BaseException) -> Failure:
    """Decide what an exception raised by a stage means for its job.

    Unknown exceptions are bugs in a stage: transient, so they are retried a bounded
    number of times and then dead-lettered with the error, never marked done.
    """
    message = describe(error)
    if isinstance(error, CircuitOpenError):
        return Failure(FailureKind.DEFERRED, message, error.retry_after)
    if isinstance(error, DocumentRejectedError | InconsistentStateError | PermanentServiceError):
        return Failure(FailureKind.PERMANENT, message)
    if isinstance(error, ServiceError):
        return Failure(FailureKind.TRANSIENT, message, error.retry_after)
    return Failure(FailureKind.TRANSIENT, message)


def describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


__all__ = ["Failure", "FailureKind", "RetryPolicy", "classify", "describe"]

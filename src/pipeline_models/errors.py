"""Exceptions, each saying what went wrong, on which object, and what to do."""

from __future__ import annotations

from decimal import Decimal


class PipelineModelsError(Exception):
    """Base class of every error raised by pipeline-models."""


class DatabaseConfigurationError(PipelineModelsError):
    """The database URL is malformed, unreachable or refuses us; raised before any work."""


class DatabaseUnavailableError(PipelineModelsError):
    """The database went away while the pipeline was running; the work is retried."""


class EmbeddedPostgresError(PipelineModelsError):
    """The embedded Postgres could not start."""


class ServiceError(PipelineModelsError):
    """An external service (parser, embeddings) failed a call.

    ``transient`` errors are retried with backoff; permanent ones dead-letter the job.
    ``retry_after`` is the service's own Retry-After, in seconds, when it sent one.
    """

    transient: bool = True

    def __init__(
        self,
        service: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.status = status
        self.retry_after = retry_after


class TransientServiceError(ServiceError):
    transient = True


class PermanentServiceError(ServiceError):
    transient = False


class CircuitOpenError(TransientServiceError):
    """The service's circuit breaker is open: the call was not made."""


class DocumentRejectedError(PipelineModelsError):
    """The document itself is unusable (type, size, empty, undecodable): never retried."""


class InconsistentStateError(PipelineModelsError):
    """The job's rows contradict each other (a plan and its buffer disagree, say).

    Never retried and never papered over: the job is dead-lettered with the discrepancy.
    """


class LeaseLostError(PipelineModelsError):
    """The worker no longer owns the job (lease expired and moved, or the job changed).

    The transaction that raised it is rolled back; the new owner carries on.
    """


class StorageError(PipelineModelsError):
    """A blob is missing or the storage backend refused an operation."""


class BudgetExhaustedError(PipelineModelsError):
    """The spending budget cannot cover the next billed call: the job is held, not failed.

    ``budget_id`` and ``estimate_usd`` say which budget refused what, so the hold can
    check again, under the budget's row lock, that a raise did not just make room."""

    def __init__(
        self, message: str, *, budget_id: str | None = None, estimate_usd: Decimal | None = None
    ) -> None:
        super().__init__(message)
        self.budget_id = budget_id
        self.estimate_usd = estimate_usd


__all__ = [
    "BudgetExhaustedError",
    "CircuitOpenError",
    "DatabaseConfigurationError",
    "DatabaseUnavailableError",
    "DocumentRejectedError",
    "EmbeddedPostgresError",
    "InconsistentStateError",
    "LeaseLostError",
    "PermanentServiceError",
    "PipelineModelsError",
    "ServiceError",
    "StorageError",
    "TransientServiceError",
]

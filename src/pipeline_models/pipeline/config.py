"""The worker's settings, one frozen dataclass with the defaults the design states."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline_models.pipeline.chunking import Chunker
from pipeline_models.pipeline.costs import PriceTable
from pipeline_models.pipeline.retry import RetryPolicy

MEBIBYTE = 2**20


@dataclass(frozen=True)
class WorkerConfig:
    """How a BaseWorker behaves.

    >>> WorkerConfig(lease_seconds=10).lease_seconds
    10.0
    """

    lease_seconds: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    parser_poll_seconds: float = 2.0
    idle_seconds: float = 0.5
    chunker: Chunker = field(default_factory=Chunker)
    chunk_batch_size: int = 64
    embed_batch_size: int = 64
    embed_model: str = "text-embedding-3-small"
    embed_dimensions: int = 1536
    max_upload_bytes: int = 25 * MEBIBYTE
    renew_leases: bool = True
    circuit_failure_threshold: int = 5
    circuit_reset_seconds: float = 30.0
    prices: PriceTable = field(default_factory=PriceTable.default)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lease_seconds", float(self.lease_seconds))
        for name in ("chunk_batch_size", "embed_batch_size", "embed_dimensions"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"WorkerConfig.{name} must be at least 1, got {getattr(self, name)}"
                )
        if self.lease_seconds <= 0:
            raise ValueError(
                f"WorkerConfig.lease_seconds must be positive, got {self.lease_seconds}"
            )

    @property
    def embed_version(self) -> str:
        """Vectors of another dimension are another version of the same model's output."""
        return f"dim{self.embed_dimensions}"


__all__ = ["MEBIBYTE", "WorkerConfig"]

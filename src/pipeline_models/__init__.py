"""pipeline-models: model-check Postgres-backed document pipelines with Hypothesis."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

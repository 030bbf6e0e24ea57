"""Hypothesis strategies for pipeline-models: documents, users and fault plans, and
boundary-seeking ones (``strategies._boundaries``) that draw the edges of every batch and
limit on purpose.

Every strategy is a plural noun taking keyword-only arguments, with ``min_size`` and
``max_size`` where sizes exist, and raises ``hypothesis.errors.InvalidArgument`` for
arguments it cannot honour.
"""

from __future__ import annotations

from strategies._boundaries import (
    boundaries,
    boundary_documents,
    boundary_fault_plans,
    boundary_faults,
    boundary_integers,
    chunk_count_documents,
    chunked_texts,
    clock_edges,
    clock_steps,
    size_limit_documents,
    size_limit_sizes,
    unbroken_documents,
    weighted,
)
from strategies._documents import documents, large_documents, markdown_texts
from strategies._faults import fault_plans, faults
from strategies._users import distinct_users, users

__all__ = [
    "boundaries",
    "boundary_documents",
    "boundary_fault_plans",
    "boundary_faults",
    "boundary_integers",
    "chunk_count_documents",
    "chunked_texts",
    "clock_edges",
    "clock_steps",
    "distinct_users",
    "documents",
    "fault_plans",
    "faults",
    "large_documents",
    "markdown_texts",
    "size_limit_documents",
    "size_limit_sizes",
    "unbroken_documents",
    "users",
    "weighted",
]

"""Hypothesis strategies for pipeline-models: documents, users and fault plans.

Every strategy is a plural noun taking keyword-only arguments, with ``min_size`` and
``max_size`` where sizes exist, and raises ``hypothesis.errors.InvalidArgument`` for
arguments it cannot honour.
"""

from __future__ import annotations

from strategies._documents import documents, large_documents, markdown_texts
from strategies._faults import fault_plans, faults
from strategies._users import distinct_users, users

__all__ = [
    "distinct_users",
    "documents",
    "fault_plans",
    "faults",
    "large_documents",
    "markdown_texts",
    "users",
]

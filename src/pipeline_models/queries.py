"""The reference pipeline's named SQL (``sql/queries.sql``), by :mod:`pipeline_models.core.queries`.

>>> QUERIES["renew_lease"].sql.startswith("UPDATE upload_jobs")
True
"""

from __future__ import annotations

from pipeline_models.core.queries import Queries, Query

QUERIES = Queries.load("queries.sql")

__all__ = ["QUERIES", "Queries", "Query"]

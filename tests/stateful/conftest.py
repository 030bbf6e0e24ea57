from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _machines_use_the_session_database(pipeline_machines: object) -> None:
    """Every machine here runs against the session's database (embedded or DATABASE_URL)."""

from __future__ import annotations

import pytest

from pipeline_models.core import use_server
from pipeline_models.database import Database


@pytest.fixture(autouse=True, scope="session")
def _core_machines_use_the_session_database(pipeline_database: Database) -> None:
    """Every queue machine here runs on the session's server (embedded or DATABASE_URL)."""
    use_server(pipeline_database.url)

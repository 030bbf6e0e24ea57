from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline_models.core import close_checker, use_server
from pipeline_models.database import Database


@pytest.fixture(autouse=True, scope="session")
def _core_machines_use_the_session_database(pipeline_database: Database) -> Iterator[None]:
    """Every queue machine here runs on the session's server (embedded or DATABASE_URL);
    the adapters' teardowns run before that server stops."""
    use_server(pipeline_database.url)
    yield
    close_checker()

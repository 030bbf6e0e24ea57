from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    # The pipeline is asyncio code (asyncpg); trio is not a target.
    return "asyncio"

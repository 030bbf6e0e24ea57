"""One seed, one sequence of programs: on another server, and on a slow machine.

What a machine draws must come from Hypothesis alone: never from how long a step took,
nor from what a particular server returns in an order it does not promise. A seed that
finds a bug at example 3 on one server and draws other programs on another (or under
load) cannot be replayed, and a failure that does not replay is reported as Hypothesis's
"inconsistent data generation" or as flaky. Each test records every example of a seeded
run, the program as Hypothesis prints it and how each of its steps came out, and
compares two runs line by line, with what each check of the database saw and how many
requests the scheduler still held as blocked.
"""

from __future__ import annotations

import asyncio
import os

import asyncpg
import pytest

from pipeline_models.database import Database
from pipeline_models.drivers import release_shared
from pipeline_models.embedded import EmbeddedPostgres
from pipeline_models.machines import PipelineMachine, _EventLoop, use_database
from tests.determinism import (
    first_difference,
    lagging_backends,
    record_programs,
    with_database_notes,
)

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
MACHINE = with_database_notes(PipelineMachine)
# Seed 8's eight programs include a request that a worker's commit releases from a
# lock wait (what the lag is about), and a database outage (a restart on one server,
# sessions ended on the other). Seed 3's did not once the outage rule came: a new rule
# draws other programs.
SEED, EXAMPLES, STEPS = 8, 8, 30

# Each runs one seed several times (two servers, a lagging database): two minutes
# together, so they run with the slow evidence (in CI, `pytest -m slow`).
pytestmark = pytest.mark.slow


def _reachable(url: str) -> bool:
    async def probe() -> None:
        connection = await asyncpg.connect(url, timeout=5)
        await connection.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    return True


def other_server(session: Database) -> Database:
    """The server the session does not use: DATABASE_URL's beside an embedded one, an
    embedded one beside DATABASE_URL's. A schema of this process's own, dropped after."""
    schema = f"determinism_{os.getpid()}"
    if session.embedded is None:
        return Database(EmbeddedPostgres.start().url, schema=schema)
    url = os.environ.get("DATABASE_URL") or DEFAULT_URL
    if not _reachable(url):
        # Reached only on the embedded server with DATABASE_URL unset (a set one is the
        # session's server, checked at start): a fresh machine with no server of its own
        # has no second server to compare with. CI sets DATABASE_URL and runs it there.
        pytest.skip(f"no second server: DATABASE_URL is unset and {url} is unreachable")
    return Database(url, schema=schema)


def test_one_seed_draws_the_same_programs_on_the_embedded_server_and_on_database_url(
    pipeline_database: Database,
) -> None:
    here = record_programs(MACHINE, seed=SEED, max_examples=EXAMPLES, steps=STEPS)
    other = other_server(pipeline_database)
    try:
        asyncio.run(other.ensure_schema())
        use_database(other)
        there = record_programs(MACHINE, seed=SEED, max_examples=EXAMPLES, steps=STEPS)
    finally:
        use_database(pipeline_database)
        # What the drivers keep between examples (spare connections, the API's pool)
        # goes before the server does; the session's is rebuilt on its next use.
        _EventLoop.get().run_until_complete(release_shared())
        asyncio.run(other.drop_schema())
        other.close()
    assert len(here) >= EXAMPLES
    assert first_difference(here, there) is None, first_difference(here, there)


def test_one_seed_draws_the_same_programs_when_the_database_lags(
    pipeline_database: Database,
) -> None:
    plain = record_programs(MACHINE, seed=SEED, max_examples=EXAMPLES, steps=STEPS)
    with lagging_backends() as stopped:
        lagging = record_programs(MACHINE, seed=SEED, max_examples=EXAMPLES, steps=STEPS)
    print(f"{len(stopped)} released waiters stopped for a while")
    assert stopped, "no backend was released from a lock wait: the lag was not put to the test"
    assert first_difference(plain, lagging) is None, first_difference(plain, lagging)

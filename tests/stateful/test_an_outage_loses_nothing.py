"""The whole database goes away mid-claim and comes back: the pipeline loses nothing,
the checker reports without a traceback of its own, and a bug only an outage shows is
caught.

The program is ``pipeline_models.examples.outage``: w2 stands before its commit, w1
idles, the database goes away and comes back. Both ways an outage is made are run: on an
embedded server this process started (stopped at once and started again) and, when
``DATABASE_URL`` is set, on that server (this process's sessions ended, the server up).
The bug runs as the mutants runner runs it, from a planted copy in a process of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

import strategies
from pipeline_models.database import Database
from pipeline_models.drivers import release_shared
from pipeline_models.embedded import EmbeddedPostgres
from pipeline_models.examples import outage
from pipeline_models.machines import _Database, _EventLoop, use_database
from pipeline_models.mutants.catalog import BY_NAME

BUG = BY_NAME["orphans-rescued-by-lost-session"]
# The checkout's root, for the strategies package the machines import.
ROOT = Path(strategies.__file__).parents[1]
PATHS = ["embedded", "DATABASE_URL"]


def _url_or_skip() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        pytest.skip("DATABASE_URL is not set: the outage that ends sessions is not run")
    return url


@pytest.fixture(params=PATHS)
def outage_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Machines on the embedded server of this process, or on DATABASE_URL's server."""
    session = _Database.get()
    path: str = request.param
    if path == "DATABASE_URL":
        url = _url_or_skip()
        database = (
            session
            if session.embedded is None
            else Database.from_environment(url, schema="pm_outage")  # nobody else's rows
        )
    elif session.embedded is not None:
        database = session
    else:
        server = EmbeddedPostgres.start()
        database = Database(server.url, schema=session.schema, embedded=server)
    asyncio.run(database.ensure_schema())
    use_database(database)
    try:
        yield path
    finally:
        use_database(session)
        if database is not session:
            # What the drivers keep between examples (spare connections, the API's
            # pool) goes before the server does.
            _EventLoop.get().run_until_complete(release_shared())
            database.close()


def test_the_reference_loses_nothing_in_an_outage_mid_claim(outage_path: str) -> None:
    assert outage.failures(outage=True) == []


# A child process of its own (interpreter, embedded server, two programs): 5 to 25 s.
@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
def test_the_outage_catches_a_bug_one_dropped_connection_does_not(
    path: str, tmp_path: Path
) -> None:
    """Under ``orphans-rescued-by-lost-session`` the program fails as fencing; with
    w1's connection dropped alone instead of the outage, w2 keeps its session and its
    lock, and the same program passes. Neither run has a traceback of the checker's."""
    environment = dict(os.environ)
    if path == "embedded":
        environment.pop("DATABASE_URL", None)
    else:
        _url_or_skip()
    environment["PYTHONPATH"] = os.pathsep.join([str(BUG.plant(tmp_path)), str(ROOT)])
    environment["PIPELINE_SCHEMA"] = "pm_outage_bug"  # nobody else's rows
    finished = subprocess.run(
        [sys.executable, "-m", "pipeline_models.examples.outage"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert "Traceback" not in finished.stderr + finished.stdout, finished.stderr
    assert finished.returncode == 1, finished.stderr
    found = json.loads(finished.stdout.strip().splitlines()[-1])
    assert found == {"outage": ["fencing"], "dropped connection": []}


def test_an_outage_ends_this_process_sessions_and_no_other() -> None:
    """On a server this process did not start, the outage ends the sessions this
    process opened (in its event loop) and leaves everyone else's (another checker
    process, in another schema) alone."""
    session = _Database.get()
    database = Database(session.url, schema=session.schema)  # not ours to restart

    async def scenario() -> tuple[bool, bool, bool, int]:
        ours = await database.connect(application_name="pipeline-models test ours")
        survivor = await database.connect(application_name="pipeline-models test survivor")
        theirs = await asyncpg.connect(session.url)  # not through Database: another's
        try:
            lost = await database.outage(survivor)
            alive = await theirs.fetchval("SELECT true") and await survivor.fetchval("SELECT 1")
            return ours.is_closed(), bool(alive), lost.how == "sessions ended", lost.sessions
        finally:
            await theirs.close()
            await survivor.close()
            ours.terminate()

    assert asyncio.run(scenario()) == (True, True, True, 1)

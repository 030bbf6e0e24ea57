"""A short fuzz session on a planted bug, two HypoFuzz processes sharing a Redis example
database: it finds the bug, writes a repro file that fails under the bug and passes on
the reference, and a plain ``pytest tests/stateful`` pointed at the same database replays
the failure (read-only, in its reuse phase, before generating anything)."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline_models.fuzz import FuzzOptions, FuzzReport, run_fuzz
from tests.conftest import run_pytest

# A fuzz session on a mutant, its repro and a replay: evidence, run by CI's slow step.
pytestmark = pytest.mark.slow

pytest.importorskip("hypofuzz", reason="the fuzz extra is not installed")
redis = pytest.importorskip("redis", reason="the fuzz extra is not installed")

ROOT = Path(__file__).parents[2]
REDIS = "redis://127.0.0.1:6379/0"
# Found within a few seconds: the machines hold a job's row lock and step a worker.
MUTANT = "claim-without-skip-locked"


def _redis_or_skip() -> redis.Redis:
    client = redis.Redis.from_url(REDIS, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as error:
        pytest.skip(f"no Redis at {REDIS} ({error}): start one to test the shared database")
    return client


@pytest.fixture(scope="module")
def shared_database() -> Iterator[str]:
    """A Redis example database of our own: a key prefix no other run uses."""
    client = _redis_or_skip()
    prefix = f"pipeline-models-test-{uuid.uuid4().hex}:"
    try:
        yield f"{REDIS}?prefix={prefix}"
    finally:
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)


@pytest.fixture(scope="module")
def session(shared_database: str, tmp_path_factory: pytest.TempPathFactory) -> FuzzReport:
    directory = tmp_path_factory.mktemp("fuzz")
    return run_fuzz(
        FuzzOptions(
            minutes=1.5,
            processes=2,
            machines=("queue",),
            example_database=shared_database,
            mutant=MUTANT,
            directory=directory / ".pipeline-models",
            repro_directory=directory / "regressions",
            shrink_seconds=10,
        )
    )


def _pytest(
    arguments: list[str], *, cwd: Path, package: Path | None
) -> subprocess.CompletedProcess[str]:
    # Without DATABASE_URL: each replay on an embedded server of its own, never in the
    # schema this session's tests use.
    env: dict[str, str] = {}
    if package is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(package), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
    return run_pytest(cwd, "-q", *arguments, leave_out=("DATABASE_URL",), env=env, timeout=300)


def test_the_session_finds_the_mutant_and_reports_coverage(session: FuzzReport) -> None:
    assert not session.ok, session.render()
    assert session.failures == {"queue": session.failures["queue"]}
    assert session.counts.examples > 0
    # The session may stop at its very first program (a claim that waits on the held lock
    # never commits), so the only transition every run records is the job's creation.
    assert session.counts.transitions["create"] > 0, session.render()
    assert "FAILED: new failures in the example database: queue" in session.render()


def test_its_repro_file_fails_under_the_bug_and_passes_without_it(session: FuzzReport) -> None:
    assert len(session.repro_files) >= 1, session.render()
    repro = session.repro_files[0]
    text = repro.read_text()
    assert "# The failure when it was found:\n#   InvariantViolation: [claims_skip_locks]" in text
    # The story varies with the fuzzer's draw: a held row lock, or another worker's open
    # transaction, makes the claim wait. Either way it is rules, spelled out.
    assert re.search(r"state\.(?!database_agrees_with_the_model|teardown)\w+\(", text), text
    assert "state.database_agrees_with_the_model()" in text
    under_the_bug = _pytest([str(repro)], cwd=repro.parent, package=session.package)
    assert under_the_bug.returncode == 1, under_the_bug.stdout[-3000:]
    assert "claims_skip_locks" in under_the_bug.stdout
    on_the_reference = _pytest([str(repro)], cwd=repro.parent, package=None)
    assert on_the_reference.returncode == 0, on_the_reference.stdout[-3000:]


def test_pytest_pointed_at_the_shared_database_replays_the_failure(
    session: FuzzReport, shared_database: str
) -> None:
    assert not session.ok
    replay = _pytest(
        [
            "tests/stateful/test_machines.py::TestQueueMachine",
            f"--pipeline-example-database={shared_database}",
            "--hypothesis-show-statistics",
        ],
        cwd=ROOT,
        package=session.package,
    )
    assert replay.returncode == 1, replay.stdout[-3000:]
    assert "claims_skip_locks" in replay.stdout
    # Replayed from the database, not found again: the run never reached generation.
    assert "during reuse phase" in replay.stdout
    assert "during generate phase" not in replay.stdout, replay.stdout[-3000:]

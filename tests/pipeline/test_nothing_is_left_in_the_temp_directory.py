"""A run leaves nothing in the temp directory: the embedded server's data, the blobs of
the reference checked through its adapter, a cluster's logs are all gone once the
process has ended (each is removed by whoever made it, at exit at the latest)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import run_pytest

# A whole pytest session in a subprocess: evidence, run by CI's slow step.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# Tests that make temporary files of each kind, run in a child process on the embedded
# server (no DATABASE_URL): its data directory is temporary too.
MAKERS = (
    "tests/core/test_the_reference_on_the_core.py::"
    "test_the_document_extension_holds_a_finished_document_to_the_model",
    "tests/pipeline/test_a_cluster_leaves_nothing_in_the_temp_directory.py",
)


def test_a_pytest_run_leaves_nothing_in_the_temp_directory(tmp_path: Path) -> None:
    # A short path: the embedded server's Unix socket lives under it (at most 107 bytes).
    temp = Path(tempfile.mkdtemp(prefix="pm-t-"))
    try:
        _run_and_look(temp, tmp_path)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _run_and_look(temp: Path, tmp_path: Path) -> None:
    finished = run_pytest(
        ROOT,
        "-q",
        "-p",
        "no:randomly",
        f"--basetemp={tmp_path / 'pytest'}",  # pytest's own, kept on purpose: elsewhere
        *MAKERS,
        leave_out=("DATABASE_URL",),
        env={"TMPDIR": str(temp)},
        timeout=300,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    left = sorted(str(path.relative_to(temp)) for path in temp.rglob("*"))
    # pgserver's one per-user runtime directory (platformdirs' fallback when there is no
    # /run/user/<uid>): made when pgserver is imported, shared by every process that
    # uses it, holding its lock file; the same directory every run, so nothing piles up.
    shared = f"runtime-{os.geteuid()}"
    pgserver = {
        shared,
        f"{shared}/python_PostgresServer",
        f"{shared}/python_PostgresServer/.lockfile",
    }
    assert [name for name in left if name not in pgserver] == []

"""A cluster's processes log to a temporary directory that goes with them: a test's
cluster and ``demo --processes`` leave nothing in the temp directory, even when they fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_models.cluster import ClusterError, LocalCluster
from pipeline_models.database import Database
from tests.conftest import cluster_settings


def _left(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_a_cluster_removes_its_logs_when_it_stops(
    clean_pipeline_database: Database, tmp_path: Path, private_tmp: Path
) -> None:
    settings = cluster_settings(clean_pipeline_database, tmp_path / "blobs")
    with LocalCluster(settings, workers=1, slots=1) as cluster:
        assert cluster.logs.parent == private_tmp  # the test watches the right place
        assert (cluster.logs / "worker1.log").exists()
    assert _left(private_tmp) == []


def test_a_cluster_that_fails_to_start_says_why_and_leaves_nothing(
    clean_pipeline_database: Database, tmp_path: Path, private_tmp: Path
) -> None:
    settings = cluster_settings(clean_pipeline_database, tmp_path / "blobs")
    with (
        pytest.raises(ClusterError, match="fakes exited with 2") as failure,
        LocalCluster(settings, log_level="nonsense"),
    ):
        pass
    assert "Invalid value for '--log-level'" in str(failure.value)  # the log's tail
    assert _left(private_tmp) == []


def test_a_cluster_left_by_an_exception_leaves_nothing(
    clean_pipeline_database: Database, tmp_path: Path, private_tmp: Path
) -> None:
    settings = cluster_settings(clean_pipeline_database, tmp_path / "blobs")
    with pytest.raises(RuntimeError, match="a failing test"), LocalCluster(settings, workers=0):
        raise RuntimeError("a failing test")
    assert _left(private_tmp) == []


def test_a_cluster_keeps_the_logs_it_was_told_to_keep(
    clean_pipeline_database: Database, tmp_path: Path, private_tmp: Path
) -> None:
    settings = cluster_settings(clean_pipeline_database, tmp_path / "blobs")
    with LocalCluster(settings, workers=0, logs=tmp_path / "logs"):
        pass
    assert (tmp_path / "logs" / "api.log").exists()
    assert _left(private_tmp) == []


@pytest.mark.slow  # a whole demo with processes: the cluster tests above cover the rest
def test_a_demo_with_processes_leaves_nothing_in_the_temp_directory(
    tmp_path: Path, private_tmp: Path
) -> None:
    # The embedded server (in the private temp directory too): the demo empties the
    # tables of the default schema, which a shared server's other users may be using.
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    finished = subprocess.run(
        [sys.executable, "-m", "pipeline_models.cli", "demo", "--processes", "-n", "4", "-w", "2"],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "OK: every document ended as the model predicts" in finished.stdout
    # pgserver keeps one runtime directory per user (runtime-<uid>, its lock file) in
    # the temp directory, shared by every run; pipeline-models' own all go.
    assert [name for name in _left(private_tmp) if not name.startswith("runtime-")] == []

"""The pipeline as real processes on loopback: API, fakes and two worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from pipeline_models.cluster import LocalCluster
from pipeline_models.database import Database
from pipeline_models.documents import Document, large_markdown_document, sample_documents
from pipeline_models.fakes import FaultPlan
from pipeline_models.model import discrepancies, expected_outcomes
from pipeline_models.pipeline.auth import TokenIssuer
from pipeline_models.pipeline.config import WorkerConfig
from pipeline_models.queries import QUERIES
from pipeline_models.settings import Settings
from pipeline_models.snapshot import take_snapshot
from tests.conftest import cluster_settings

USER = uuid.UUID(int=5)


async def _fetchval(database: Database, sql: str) -> object:
    connection = await database.connect()
    try:
        return await connection.fetchval(sql)
    finally:
        await connection.close()


def fetchval(database: Database, sql: str) -> object:
    return asyncio.run(_fetchval(database, sql))


async def _discrepancies(
    database: Database, accepted: list[tuple[uuid.UUID, Document]]
) -> list[str]:
    connection = await database.connect()
    try:
        snapshot = await take_snapshot(connection)
    finally:
        await connection.close()
    return discrepancies(expected_outcomes(accepted, config=WorkerConfig()), snapshot)


def wait_for(condition: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def test_a_worker_process_killed_mid_run_loses_nothing(
    clean_pipeline_database: Database, tmp_path: Path
) -> None:
    database = clean_pipeline_database
    settings = cluster_settings(database, tmp_path / "blobs", lease_seconds=2.0)
    documents = [
        *sample_documents(6, seed=21, corrupt_ratio=0),
        large_markdown_document(300_000, seed=21),
        large_markdown_document(300_000, seed=22),
    ]
    tokens = TokenIssuer(settings.token_secret)
    with LocalCluster(settings, workers=2, slots=2) as cluster:
        # Slow services, so that the kill lands while the first worker holds leases.
        parser_admin = cluster.settings.parser_url
        embeddings_admin = cluster.settings.embeddings_url.removesuffix("/v1")
        # Long enough that a worker spends nearly all its time inside a call, holding a
        # lease: the kill then lands on a held job (checked below, not assumed).
        for admin, latency in ((parser_admin, 0.25), (embeddings_admin, 0.25)):
            httpx.put(
                f"{admin}/_fake/faults", json=FaultPlan(latency=latency).to_json()
            ).raise_for_status()
        accepted = []
        with httpx.Client(base_url=cluster.api_url, timeout=30) as client:
            for document in documents:
                response = client.post(
                    "/upload",
                    headers={"Authorization": f"Bearer {tokens.issue(USER)}"},
                    files={"file": (document.filename, document.data, document.content_type)},
                )
                assert response.status_code == 201, response.text
                accepted.append((uuid.UUID(response.json()["document_id"]), document))
        held: object = []
        for _ in range(10):
            wait_for(
                lambda: fetchval(
                    database,
                    "SELECT count(*) FROM upload_jobs WHERE state = 'working' "
                    "AND owner LIKE 'worker1-%' AND chunks_done > 0",
                ),
                60,
                "worker1 to hold a lease mid-document",
            )
            # Freeze the worker first: a COMMIT it sent just before can still land, so the
            # leases it holds are read once that has settled, and then it dies holding
            # them. If that COMMIT gave back its last job, thaw it and try again.
            cluster.kill_worker(0, signal.SIGSTOP)
            time.sleep(0.2)
            # The jobs worker1 dies holding (or lost to a reclaim already). Their last_error
            # is no proof of a take-over at the end: a later transient failure replaces it.
            held = fetchval(
                database,
                "SELECT coalesce(array_agg(job_id::text), '{}') FROM upload_jobs"
                " WHERE owner LIKE 'worker1-%' AND state = 'working'"
                " OR last_error LIKE 'lease of worker1-%'",
            )
            if held:
                break
            cluster.kill_worker(0, signal.SIGCONT)
        cluster.kill_worker(0, signal.SIGKILL)
        wait_for(
            lambda: not fetchval(database, QUERIES["count_live_jobs"].sql),
            120,
            "every job to finish",
        )
        codes = cluster.stop()
    assert codes == {"worker1": -signal.SIGKILL, "worker2": 0, "api": 0, "fakes": 0}
    assert isinstance(held, list)
    assert held, "worker1 held no lease when it was killed: the test proved nothing"
    # Every one of them finished, and worker1 was dead: another worker took it over.
    unfinished = fetchval(
        database,
        "SELECT count(*) FROM upload_jobs WHERE job_id::text = ANY(ARRAY["
        + ", ".join(f"'{job_id}'" for job_id in held)
        + "]) AND state NOT IN ('done', 'deadletter')",
    )
    assert unfinished == 0, "a job the killed worker held was never taken over"
    assert asyncio.run(_discrepancies(database, accepted)) == []


def test_a_worker_process_stops_on_sigterm_and_exits_zero(pipeline_database: Database) -> None:
    environment = {**os.environ, **Settings(database_url=pipeline_database.url).to_env()}
    with subprocess.Popen(
        [sys.executable, "-m", "pipeline_models.cli", "worker", "--slots", "3", "--name", "w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    ) as process:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "worker w: 3 slots"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_a_worker_without_a_database_url_refuses_to_start() -> None:
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline_models.cli", "worker"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=30,
    )
    assert result.returncode == 1
    assert "a worker needs the database the API uses" in result.stderr


def test_the_api_process_serves_and_stops_on_sigterm_with_exit_zero(
    pipeline_database: Database,
) -> None:
    environment = {**os.environ, **Settings(database_url=pipeline_database.url).to_env()}
    with subprocess.Popen(
        [sys.executable, "-m", "pipeline_models.cli", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    ) as process:
        assert process.stdout is not None
        url = process.stdout.readline().split()[-1]
        health = httpx.get(f"{url}/health", timeout=10)
        assert health.status_code in (200, 503)  # no fakes are running: services unreachable
        assert health.json()["database"]["ok"] is True
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0

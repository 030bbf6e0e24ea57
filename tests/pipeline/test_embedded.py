"""No embedded Postgres outlives the process (or pytest session) that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline_models.embedded import leftover_servers

STARTER = textwrap.dedent(
    """
    import os, signal, sys, time
    from pipeline_models.embedded import EmbeddedPostgres
    server = EmbeddedPostgres.start()
    print(server.pid, server.pgdata, flush=True)
    how = sys.argv[1]
    sys.stdin.readline()  # the test has seen the server running
    if how == "raise":
        raise RuntimeError("a failing program")
    if how in ("sigkill", "sigterm", "sigint"):
        time.sleep(60)
    """
)


def _gone(pid: int, pgdata: Path, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pid not in leftover_servers() and not pgdata.parent.exists():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("how", ["exit", "raise", "sigkill", "sigterm", "sigint"])
def test_the_embedded_server_stops_however_its_process_ends(how: str) -> None:
    signals = {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT}
    with subprocess.Popen(
        [sys.executable, "-c", STARTER, how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as process:
        assert process.stdin is not None
        assert process.stdout is not None
        pid_text, pgdata = process.stdout.readline().split()
        pid = int(pid_text)
        assert pid in leftover_servers()
        process.stdin.write("go\n")
        process.stdin.flush()
        if how in signals:
            os.kill(process.pid, signals[how])
        process.wait(timeout=30)
    assert _gone(pid, Path(pgdata)), f"postgres {pid} survived its process ({how})"


def test_no_embedded_server_outlives_a_failing_pytest_session(tmp_path: Path) -> None:
    (tmp_path / "test_uses_the_database.py").write_text(
        textwrap.dedent(
            """
            import asyncio
            from pipeline_models.embedded import leftover_servers

            def test_fails_while_the_server_runs(pipeline_database):
                assert pipeline_database.embedded is not None
                print("PID", pipeline_database.embedded.pid)
                assert False, "a failing test"
            """
        )
    )
    before = set(leftover_servers())
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "PID" in result.stdout
    started = int(result.stdout.split("PID", 1)[1].split()[0])
    deadline = time.monotonic() + 10
    while started in leftover_servers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert started not in leftover_servers()
    assert set(leftover_servers()) <= before


def test_a_restarted_server_keeps_its_data_and_socket_and_still_stops() -> None:
    """An outage's restart: a new postmaster on the same data directory and socket, with
    what was committed (and written out) before; stopping still stops the new one."""
    import asyncio

    import asyncpg

    from pipeline_models.embedded import EmbeddedPostgres

    server = EmbeddedPostgres.start()
    try:

        async def write() -> None:
            connection = await asyncpg.connect(server.url)
            await connection.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)")
            await connection.execute("CHECKPOINT")
            await connection.close()

        async def read() -> int:
            connection = await asyncpg.connect(server.url)  # the same URL: the same socket
            try:
                return int(await connection.fetchval("SELECT count(*) FROM kept"))
            finally:
                await connection.close()

        asyncio.run(write())
        before = server.pid
        seconds = server.restart()
        after = server.pid
        assert before is not None
        assert after is not None
        assert after != before
        assert seconds < 30
        assert asyncio.run(read()) == 1
    finally:
        server.stop()
    deadline = time.monotonic() + 10
    while after in leftover_servers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert after not in leftover_servers()

"""A throwaway Postgres for machines with none: the ``pgserver`` wheel's binaries.

The server lives in a temporary directory and never outlives the process that started
it. ``atexit`` covers a normal exit, an exception and Ctrl-C; a *reaper* subprocess
covers the rest (SIGTERM, SIGKILL, a crashed interpreter): it holds the read end of a
pipe whose write end only the parent holds, so the kernel closes it however the parent
dies, and the reaper then stops the server and deletes its directory.

Example::

    server = EmbeddedPostgres.start()
    server.url      # 'postgresql://postgres:@/postgres?host=/tmp/pipeline-models-pg-...'
    server.stop()
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pipeline_models.errors import EmbeddedPostgresError

logger = logging.getLogger(__name__)

_DIR_PREFIX = "pipeline-models-pg-"
_THROWAWAY_SETTINGS = "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"


class EmbeddedPostgres:
    """One embedded Postgres server in a temporary directory."""

    def __init__(self, pgdata: Path, url: str, server: object, reaper: subprocess.Popen[bytes]):
        self.pgdata = pgdata
        self.url = url
        self._server = server
        self._reaper = reaper
        self._stopped = False
        self._lock = threading.Lock()

    @classmethod
    def start(cls) -> EmbeddedPostgres:
        """Initialise and start a fresh server; typically 0.5 to 1 s.

        A Ctrl-C meanwhile takes effect once the server runs and will be stopped: not
        halfway, with a server started and nothing yet to stop it. If it killed the
        start (pgserver runs initdb and pg_ctl in our process group, where a terminal
        sends its SIGINT), the start was interrupted rather than failed.
        """
        pgserver_log = logging.getLogger("pgserver")
        pgserver_log.addFilter(_not_killed_by_ctrl_c)
        try:
            with _ctrl_c_held():
                try:
                    return cls._start()
                except EmbeddedPostgresError:
                    if _ctrl_c_pending():
                        raise KeyboardInterrupt from None
                    raise
        finally:
            pgserver_log.removeFilter(_not_killed_by_ctrl_c)

    @classmethod
    def _start(cls) -> EmbeddedPostgres:
        try:
            with warnings.catch_warnings():
                # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); pgserver
                # falls back to /tmp, which is what we want.
                warnings.simplefilter("ignore")
                import pgserver
        except ImportError as error:  # pragma: no cover - a dependency of the package
            raise EmbeddedPostgresError(
                "the embedded Postgres needs the 'pgserver' package: pip install pgserver, "
                "or set DATABASE_URL to a server you run"
            ) from error
        root = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX))
        # pgserver runs the server as an unprivileged user when we are root; it must be
        # able to traverse into the data directory's parent.
        root.chmod(0o755)
        pgdata = root / "data"
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                server = pgserver.get_server(pgdata, cleanup_mode="delete")  # type: ignore[attr-defined]
            # We stop the server ourselves, faster (an immediate shutdown: nothing in a
            # throwaway database is worth a checkpoint) and also when the process is
            # killed; pgserver's own exit hook would then find nothing to clean.
            atexit.unregister(server._cleanup)
            url = server.get_uri()
            pid = server.get_pid()
            if pid is None:
                raise EmbeddedPostgresError(f"the server in {pgdata} exited right after start")
            # A throwaway database needs no durability across an OS crash; without it a
            # commit no longer waits for a disk flush, which is most of a short
            # transaction's cost. Crashes the tests inject (killed backends, killed
            # workers) behave exactly the same.
            # Written as ALTER SYSTEM would, then a reload signal: cheaper than a client.
            with (pgdata / "postgresql.auto.conf").open("a") as settings:
                settings.write(_THROWAWAY_SETTINGS)
            os.kill(pid, signal.SIGHUP)
        except Exception as error:
            shutil.rmtree(root, ignore_errors=True)
            raise EmbeddedPostgresError(
                f"could not start the embedded Postgres in {pgdata}: {error}. "
                "Set DATABASE_URL to a server you run instead."
            ) from error
        reaper = _spawn_reaper(root, pid)
        instance = cls(pgdata, url, server, reaper)
        atexit.register(instance.stop)
        logger.info(
            "embedded postgres started",
            extra={
                "action": "embedded_postgres_started",
                "pgdata": str(pgdata),
                "pid": pid,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        return instance

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        return _postmaster_pid(self.pgdata)

    def restart(self) -> float:
        """An outage: stop the server at once (``pg_ctl stop -m immediate``: every
        backend killed, no shutdown checkpoint, as in a crash) and start it again on the
        same data directory and socket; returns the seconds it took (about 0.2 s: two
        of pg_ctl's 0.1 s polls). Committed work survives as after any crash, replayed
        from the WAL: flush it first (the throwaway settings let a commit return before
        its WAL leaves shared memory, which an immediate stop discards)."""
        from pgserver._commands import POSTGRES_BIN_PATH

        started = time.perf_counter()
        pg_ctl = str(POSTGRES_BIN_PATH / "pg_ctl")
        # pgserver runs the server as its own unprivileged user when we are root.
        user = getattr(self._server, "system_user", None)
        data = str(self.pgdata)
        # Where pgserver put the socket (the data directory unless its path is too long).
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.url).query)
        socket_dir = query.get("host", [data])[0]
        run = functools.partial(
            subprocess.run,
            check=True,
            user=user,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        try:
            run([pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"])
            # As pgserver starts it: no TCP, the same socket.
            log = str(self.pgdata / "log")
            run(
                [
                    pg_ctl,
                    "-D",
                    data,
                    "-w",
                    "-o",
                    '-h ""',
                    "-o",
                    f"-k {socket_dir}",
                    "-l",
                    log,
                    "start",
                ]
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            raise EmbeddedPostgresError(
                f"the embedded Postgres in {self.pgdata} did not restart: {error}"
            ) from error
        return time.perf_counter() - started

    def stop(self) -> None:
        """Stop the server and delete its directory; safe to call twice."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        atexit.unregister(self.stop)
        # Closing our end of the pipe tells the reaper it is time: it stops the server,
        # removes the directory and exits.
        stdin: IO[bytes] | None = self._reaper.stdin
        if stdin is not None:
            stdin.close()
        try:
            self._reaper.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._reaper.kill()

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"EmbeddedPostgres({str(self.pgdata)!r}, {state})"


def _ctrl_c_pending() -> bool:
    return signal.SIGINT in signal.sigpending()


def _not_killed_by_ctrl_c(record: logging.LogRecord) -> bool:
    """pgserver logs a command that failed, with its output: not one a Ctrl-C killed."""
    return not _ctrl_c_pending()


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """SIGINT held (blocked in this thread) until the block ends, then delivered."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _spawn_reaper(root: Path, pid: int | None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline_models.embedded", str(root), str(pid or 0)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Its own session: a Ctrl-C aimed at the foreground job must not kill the reaper
        # before it has done its work.
        start_new_session=True,
    )


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        first_line = (pgdata / "postmaster.pid").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    try:
        pid = int(first_line)
    except ValueError:
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    import psutil

    try:
        # A stopped postmaster stays a zombie until init reaps it, which in a container
        # can take a second: it no longer serves anything, so it counts as gone.
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _reap(root: Path, pid: int) -> None:
    """Stop the postmaster (immediate shutdown) and remove the directory."""
    pid = _postmaster_pid(root / "data") or pid
    if pid and _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown: a throwaway database
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


def leftover_servers() -> list[int]:
    """Pids of embedded servers started by pipeline-models that are still running.

    Used by the test that proves no embedded server outlives its session.
    """
    import psutil

    found = []
    for process in psutil.process_iter(attrs=["name", "cmdline"]):
        cmdline = process.info.get("cmdline") or []
        ours = any(_DIR_PREFIX in part for part in cmdline)
        if process.info.get("name") == "postgres" and ours and _alive(process.pid):
            found.append(process.pid)
    return found


def _reaper_main(argv: list[str]) -> None:
    root, pid = Path(argv[0]), int(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Blocks until the parent closes the pipe or dies: either way, the end of its life.
    sys.stdin.buffer.read()
    _reap(root, pid)


if __name__ == "__main__":
    _reaper_main(sys.argv[1:])


__all__ = ["EmbeddedPostgres", "leftover_servers"]

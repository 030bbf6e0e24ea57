"""The whole pipeline as real processes on loopback: fakes, API, and worker processes.

Used by ``pipeline-models demo --processes``, the end-to-end test that SIGKILLs a worker
mid-run, and the upload benchmark. Every process is a ``pipeline-models`` command; the
cluster reads each one's ready line to learn its address, and stops them all (SIGTERM,
then SIGKILL) however the block is left. Their logs go to a temporary directory that
goes with them (a failure to start carries the log's tail), unless ``logs`` names a
directory to keep them in.

Example::

    settings = Settings(database_url=url, storage_root=tmp)
    with LocalCluster(settings, workers=2, slots=2) as cluster:
        httpx.post(cluster.api_url + "/upload", ...)
        cluster.kill_worker(0)
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline_models.errors import PipelineModelsError
from pipeline_models.settings import Settings

READY_SECONDS = 60.0


class ClusterError(PipelineModelsError):
    """A process of the cluster did not start or died; the message carries its log."""


@dataclass
class ClusterProcess:
    name: str
    process: subprocess.Popen[str]
    log: Path
    ready_lines: list[str] = field(default_factory=list)
    # A thread drains stdout into this queue, so a chatty child never blocks on a full
    # pipe and readiness can be awaited with a timeout.
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        threading.Thread(target=self._drain, name=f"{self.name}-stdout", daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                self.lines.put(line.strip())
        self.lines.put(None)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class LocalCluster:
    """Fakes, the API and ``workers`` worker processes of ``slots`` slots each."""

    def __init__(
        self,
        settings: Settings,
        *,
        workers: int = 2,
        slots: int = 2,
        python: str = sys.executable,
        log_level: str | None = None,
        worker_metrics: bool = False,
        logs: Path | None = None,
    ) -> None:
        if not settings.database_url:
            raise ClusterError("a cluster needs a shared database: set settings.database_url")
        self.settings = settings
        self.worker_count = workers
        self.slots = slots
        self.python = python
        self._temporary_logs: tempfile.TemporaryDirectory[str] | None = None
        if logs is None:
            self._temporary_logs = tempfile.TemporaryDirectory(
                prefix="pipeline-models-cluster-", ignore_cleanup_errors=True
            )
            logs = Path(self._temporary_logs.name)
        logs.mkdir(parents=True, exist_ok=True)
        self.logs = logs
        self.fakes: ClusterProcess | None = None
        self.api: ClusterProcess | None = None
        self.workers: list[ClusterProcess] = []
        self.api_url = ""
        self.log_level = log_level
        # With worker_metrics, each worker serves Prometheus metrics on a free port.
        self.worker_metrics = worker_metrics
        self.metrics_urls: list[str] = []

    def _spawn(self, name: str, arguments: list[str], settings: Settings) -> ClusterProcess:
        log = self.logs / f"{name}.log"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
        environment.pop("DATABASE_URL", None)
        environment.update(settings.to_env())
        with log.open("w") as stderr:
            process = subprocess.Popen(
                [
                    self.python,
                    "-m",
                    "pipeline_models.cli",
                    *(("--log-level", self.log_level) if self.log_level else ()),
                    *arguments,
                ],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=environment,
            )
        return ClusterProcess(name, process, log)

    def _await_ready(self, member: ClusterProcess, lines: int) -> list[str]:
        """Wait for ``lines`` ready lines on ``member``'s stdout, or fail with its log."""
        deadline = time.monotonic() + READY_SECONDS
        while len(member.ready_lines) < lines:
            try:
                line = member.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise ClusterError(
                    f"{member.name} not ready after {READY_SECONDS:g} s:\n{member.log_tail()}"
                ) from None
            if line is None:
                raise ClusterError(
                    f"{member.name} exited with {member.process.wait()}:\n{member.log_tail()}"
                )
            member.ready_lines.append(line)
        return member.ready_lines

    def start(self) -> LocalCluster:
        settings = self.settings
        webhook_flags = [flag for s in settings.webhook_secrets for flag in ("--webhook-secret", s)]
        self.fakes = self._spawn(
            "fakes",
            [
                "serve-fakes",
                "--parser-port",
                "0",
                "--embeddings-port",
                "0",
                "--api-key",
                settings.embeddings_key,
                "--auto-deliver-webhooks",
                *webhook_flags,
            ],
            settings,
        )
        parser_line, embeddings_line = self._await_ready(self.fakes, 2)
        settings = settings.with_(
            parser_url=parser_line.split()[-1],
            embeddings_url=embeddings_line.split()[-1],
            parser_key=settings.embeddings_key,
        )
        self.api = self._spawn("api", ["serve", "--port", "0"], settings)
        self.api_url = self._await_ready(self.api, 1)[0].split()[-1]
        self.settings = settings.with_(webhook_url=f"{self.api_url}/webhooks/parser")
        for index in range(self.worker_count):
            name = f"worker{index + 1}"
            metrics = ["--metrics-port", "0"] if self.worker_metrics else []
            member = self._spawn(
                name,
                ["worker", "--slots", str(self.slots), "--name", name, *metrics],
                self.settings,
            )
            self.workers.append(member)
        for member in self.workers:
            lines = self._await_ready(member, 2 if self.worker_metrics else 1)
            self.metrics_urls.extend(
                line.split()[-1] for line in lines if line.startswith("metrics")
            )
        return self

    def kill_worker(self, index: int, sig: signal.Signals = signal.SIGKILL) -> None:
        self.workers[index].process.send_signal(sig)

    def stop(self, *, seconds: float = 30.0) -> dict[str, int | None]:
        """SIGTERM every process (workers first), SIGKILL what outlives ``seconds``; then
        remove the temporary log directory. Safe to call twice."""
        members = [*self.workers, *(m for m in (self.api, self.fakes) if m is not None)]
        for member in members:
            if member.alive:
                member.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + seconds
        codes: dict[str, int | None] = {}
        for member in members:
            try:
                codes[member.name] = member.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                member.process.kill()
                codes[member.name] = member.process.wait()
        if self._temporary_logs is not None:
            self._temporary_logs.cleanup()
        return codes

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop(seconds=5)
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


__all__ = ["ClusterError", "ClusterProcess", "LocalCluster"]

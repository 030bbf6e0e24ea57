"""``pipeline-models fuzz``: a long session over the state machines on HypoFuzz.

HypoFuzz (``hypothesis fuzz``) is the engine: it runs each machine's ``TestCase`` in N
worker processes, keeps a corpus per machine, and steers towards inputs that show new
behaviour, which for these machines includes every ``hypothesis.event`` they report
(each lifecycle edge, a crash at each checkpoint, each fault kind, each webhook kind).
This module only prepares and watches a session:

* it writes a small pytest module (``test_fuzz_targets.py``, in a session directory
  under ``.pipeline-models/fuzz/``) whose test cases are the machines with the fuzz
  profile and the chosen example database, and runs HypoFuzz on it, with the planted
  mutant's package first on ``PYTHONPATH`` when ``--mutant`` names one;
* every worker process gets its own Postgres: its own embedded server, or, with
  ``DATABASE_URL``, its own schema (``pm_fuzz_<pid>``), so processes never share rows;
* every worker writes its machines' statistics to the session directory each second;
  the progress line and the summary add them up, and failures are read from the
  example database (HypoFuzz saves a shrunk failure under the key Hypothesis replays);
* the session ends at the time budget, or at the first shrunk failure; then
  ``pipeline-models repro`` turns each failure into a test file. Ctrl-C ends it too:
  the report says what it did until then (no repro file is written: the failures are
  in the example database, for ``pipeline-models repro``).

Example::

    report = run_fuzz(FuzzOptions(minutes=1, processes=2))
    print(report.render())
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline_models.examples_database import example_database, machine_database_key
from pipeline_models.interrupts import Interrupted
from pipeline_models.lifecycle import TransitionKind
from pipeline_models.report import Counts, load_counts, save_counts, transition_lines

SESSION_VARIABLE = "PIPELINE_MODELS_FUZZ_SESSION"
DATABASE_VARIABLE = "PIPELINE_MODELS_FUZZ_EXAMPLE_DATABASE"
MACHINE_VARIABLE = "PIPELINE_MODELS_FUZZ_MACHINES"
COPIES_VARIABLE = "PIPELINE_MODELS_FUZZ_COPIES"
MACHINE_NAMES = ("pipeline", "queue")
INTERRUPTED = "Ctrl-C"  # what ended an interrupted session (FuzzReport.ended)

_TARGETS = '''"""Written by `pipeline-models fuzz`: the machines HypoFuzz runs in this session."""

from pipeline_models.fuzz import worker_test_cases

globals().update(worker_test_cases())
'''
_PYTEST_INI = """[pytest]
# Written by `pipeline-models fuzz`: the session's tests, not the project's settings.
addopts = -p no:cacheprovider
"""


@dataclass(frozen=True)
class FuzzOptions:
    """What a session runs, for how long, and where it keeps what it finds."""

    minutes: float = 5.0
    processes: int = 2
    machines: tuple[str, ...] = MACHINE_NAMES
    example_database: str | None = None  # a directory or a redis:// URL (see examples_database)
    database_url: str | None = None  # Postgres; None: an embedded server per process
    mutant: str | None = None  # plant this bug from the catalog first
    directory: Path = Path(".pipeline-models")
    repro_directory: Path | None = Path("tests/regressions")
    stop_at_first_failure: bool = True
    shrink_seconds: float = 60  # for each failure, before its repro file is written


@dataclass
class FuzzReport:
    """What a session did: totals of every worker, and the failures it found."""

    options: FuzzOptions
    seconds: float = 0.0
    counts: Counts = field(default_factory=Counts)
    steps: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # machine -> new failures
    repro_files: list[Path] = field(default_factory=list)
    log: Path | None = None
    package: Path | None = None  # the planted mutant's copy, first on PYTHONPATH
    repro_problem: str | None = None  # why no repro file was written, if none was
    ended: str = "time budget"  # or INTERRUPTED, the first failure, HypoFuzz exiting
    restarts: int = 0  # of HypoFuzz's hub, which can stop on its own (see run_fuzz)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def interrupted(self) -> bool:
        return self.ended == INTERRUPTED

    def transitions(self) -> tuple[TransitionKind, ...]:
        """The transitions the rules of the session's machines make."""
        from pipeline_models.machines import transitions_of

        classes = _machine_classes()
        return transitions_of(classes[name] for name in self.options.machines)

    def covered(self) -> list[TransitionKind]:
        return [kind for kind in self.transitions() if self.counts.transitions[kind.value]]

    def render(self) -> str:
        from pipeline_models.machines import DRAIN_TRANSITIONS

        options = self.options
        kinds = self.transitions()
        covered = self.covered()
        target = f"mutant {options.mutant}" if options.mutant else "the reference pipeline"
        lines = [
            f"pipeline-models fuzz: {', '.join(options.machines)} on {target}, "
            f"{options.processes} processes, HypoFuzz, profile fuzz, "
            f"example database {options.example_database or 'default directory'}",
            f"ended by {self.ended} after {self.seconds:.0f} s: {self.counts.examples} examples "
            f"({self.counts.examples / max(self.seconds, 1e-9):.1f}/s), {self.counts.rules} "
            f"rules, {self.steps} worker steps; HypoFuzz restarted {self.restarts} times",
            f"transitions covered: {len(covered)} of {len(kinds)}; lifecycle edges "
            f"seen: {len(self.counts.edges)}; forbidden edges: {len(self.counts.forbidden)}; "
            f"distinct events: {len(self.counts.events)}",
            *transition_lines(self.counts.transitions, kinds, drained=DRAIN_TRANSITIONS),
        ]
        if self.ok:
            lines.append(
                "STOPPED by Ctrl-C: no failure found so far"
                if self.interrupted
                else "OK: no failure found"
            )
        else:
            found = ", ".join(f"{machine} ({count})" for machine, count in self.failures.items())
            lines.append(f"FAILED: new failures in the example database: {found}")
            lines.extend(f"  repro: {path}" for path in self.repro_files)
            if self.repro_problem:
                lines.append(f"  no repro file: {self.repro_problem}")
        if self.log is not None:
            lines.append(f"HypoFuzz's output: {self.log}")
        return "\n".join(lines)


def _machine_classes() -> dict[str, type[Any]]:
    from pipeline_models.machines import PipelineMachine, QueueMachine

    return {"pipeline": PipelineMachine, "queue": QueueMachine}


# -- in each HypoFuzz worker process ---------------------------------------------------


def worker_test_cases() -> dict[str, type[Any]]:
    """The session's machines as ``TestCase`` classes, by name (run in each worker).

    HypoFuzz fuzzes only tests whose example database is the default one, so the chosen
    database becomes the default profile's too.
    """
    from hypothesis import settings

    from pipeline_models import machines
    from pipeline_models.profiles import machine_settings, use_example_database

    database = example_database(os.environ.get(DATABASE_VARIABLE))
    settings.register_profile("pipeline-models-fuzz", database=database, derandomize=False)
    settings.load_profile("pipeline-models-fuzz")
    use_example_database(database)
    # Patched in the worker only (the machines' source, hence their database key, stays
    # the same): each process its own Postgres, created on first use after the fork.
    machines._Database.get = staticmethod(_database_of_this_process)  # type: ignore[method-assign]
    chosen = os.environ.get(MACHINE_VARIABLE, ",".join(MACHINE_NAMES)).split(",")
    # HypoFuzz 25.11 deals tests out to its processes round-robin: with fewer tests than
    # processes, some processes get none (one machine, -n 2: one idle process). So each
    # machine is offered once per process, under as many names; the copies share the
    # machine's database key, hence one corpus and one set of failures.
    copies = int(os.environ.get(COPIES_VARIABLE, "1"))
    cases: dict[str, type[Any]] = {}
    for name, machine in _machine_classes().items():
        if name in chosen:
            for copy in range(1, copies + 1):
                case = machine.TestCase
                case.settings = machine_settings("fuzz")
                suffix = f"_{copy}" if copies > 1 else ""
                cases[f"Test{machine.__name__}{suffix}"] = case
    return cases


_databases: dict[int, Any] = {}


def _database_of_this_process() -> Any:
    from pipeline_models.database import Database, resolve_url
    from pipeline_models.schema import DEFAULT_SCHEMA

    pid = os.getpid()
    if pid not in _databases:
        url = resolve_url()
        schema = f"pm_fuzz_{pid}" if url else DEFAULT_SCHEMA
        database = Database.from_environment(url, schema=schema)
        asyncio.run(database.ensure_schema())
        _databases[pid] = database
        _start_statistics_writer(Path(os.environ[SESSION_VARIABLE]) / "workers" / f"{pid}.json")
    return _databases[pid]


def _start_statistics_writer(path: Path) -> None:
    from pipeline_models import machines
    from pipeline_models.report import counts_from

    path.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        counts = counts_from(machines.STATISTICS, source=f"fuzz worker {os.getpid()}")
        temporary = path.with_suffix(".tmp")
        save_counts(counts, temporary)
        data = json.loads(temporary.read_text())
        data["steps"] = machines.STATISTICS.steps + machines.STATISTICS.drain_steps
        temporary.write_text(json.dumps(data))
        temporary.replace(path)  # atomic: the parent never reads half a file

    def loop() -> None:
        while True:
            time.sleep(1.0)
            with contextlib.suppress(Exception):
                write()

    def write_and_terminate(signum: int, frame: object) -> None:
        # The session ends its workers with SIGTERM, often within a second of a failure:
        # what they did until then still counts. Then die of SIGTERM as before.
        with contextlib.suppress(Exception):
            write()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=loop, name="pipeline-models-fuzz-statistics", daemon=True).start()
    atexit.register(write)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, write_and_terminate)


# -- in the parent ---------------------------------------------------------------------


def _failures(database: Any, keys: dict[str, bytes]) -> dict[str, set[bytes]]:
    """Every failing example saved for each machine (shrunk, and not yet shrunk)."""
    return {
        name: set(database.fetch(key)) | set(database.fetch(key + b".secondary"))
        for name, key in keys.items()
    }


def _read_workers(directory: Path) -> tuple[Counts, int]:
    paths = sorted(directory.glob("*.json"))
    counts = Counts()
    steps = 0
    for path in paths:
        with contextlib.suppress(OSError, ValueError):
            counts.add(load_counts([path]))
            steps += int(json.loads(path.read_text()).get("steps", 0))
    return counts, steps


def environment_for(options: FuzzOptions, scratch: Path | None) -> dict[str, str]:
    """The environment of processes that must see the session's package and databases."""
    environment = dict(os.environ)
    if scratch is not None:
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(scratch), *filter(None, [environment.get("PYTHONPATH")])]
        )
    if options.database_url:
        environment["DATABASE_URL"] = options.database_url
    return environment


def plant_mutant(name: str, directory: Path) -> Path:
    """Plant the catalog's mutant ``name`` in a scratch copy under ``directory``."""
    from pipeline_models.mutants.catalog import BY_NAME

    if name not in BY_NAME:
        raise ValueError(f"no mutant {name!r}; the catalog: {', '.join(BY_NAME)}")
    return BY_NAME[name].plant(directory)


def _database_spec(spec: str | None) -> str:
    """The spec with a directory made absolute (workers run in the session directory)."""
    from urllib.parse import urlsplit

    from pipeline_models.examples_database import DEFAULT_DIRECTORY, REDIS_SCHEMES

    spec = spec or DEFAULT_DIRECTORY
    if urlsplit(spec).scheme in REDIS_SCHEMES:
        return spec
    return str(Path(spec).resolve())


def run_fuzz(
    options: FuzzOptions, *, on_progress: Callable[[FuzzReport], None] | None = None
) -> FuzzReport:
    """Run a session; its report (``report.ok`` is False when it found a failure). Ctrl-C
    ends it: :class:`~pipeline_models.interrupts.Interrupted` then carries the report."""
    try:
        import hypofuzz  # noqa: F401
    except ImportError as error:
        raise RuntimeError(
            "pipeline-models fuzz runs on HypoFuzz: pip install 'pipeline-models[fuzz]'"
        ) from error
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    session = (options.directory / "fuzz" / f"{stamp}-{os.getpid()}").resolve()
    workers = session / "workers"
    workers.mkdir(parents=True)
    (session / "test_fuzz_targets.py").write_text(_TARGETS)
    (session / "pytest.ini").write_text(_PYTEST_INI)
    scratch = plant_mutant(options.mutant, session / "mutant") if options.mutant else None
    spec = _database_spec(options.example_database)
    database = example_database(spec)
    classes = _machine_classes()
    keys = {name: machine_database_key(classes[name]) for name in options.machines}
    known = _failures(database, keys)
    environment = environment_for(options, scratch)
    environment.update(
        {
            SESSION_VARIABLE: str(session),
            DATABASE_VARIABLE: spec,
            MACHINE_VARIABLE: ",".join(options.machines),
            COPIES_VARIABLE: str(options.processes),
        }
    )
    command = [
        sys.executable,
        "-c",
        "from hypofuzz.entrypoint import fuzz; fuzz()",
        "-n",
        str(options.processes),
        "--no-dashboard",
        "--",
        "-c",
        str(session / "pytest.ini"),
        "--rootdir",
        str(session),
        "-q",
        str(session / "test_fuzz_targets.py"),
    ]
    report = FuzzReport(options, log=session / "hypofuzz.log", package=scratch)
    started = time.monotonic()
    with report.log.open("w") as log:  # type: ignore[union-attr]

        def launch() -> subprocess.Popen[bytes]:
            # Its own process group: the session ends HypoFuzz and its workers at once.
            return subprocess.Popen(
                command,
                cwd=session,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        process = launch()
        try:
            while True:
                time.sleep(1.0)
                report.seconds = time.monotonic() - started
                report.counts, report.steps = _read_workers(workers)
                found = _failures(database, keys)
                report.failures = {
                    name: len(found[name] - known[name])
                    for name in keys
                    if found[name] - known[name]
                }
                if on_progress is not None:
                    on_progress(report)
                if report.seconds >= options.minutes * 60:
                    break
                # At the first failure, not the first shrunk one: HypoFuzz 25.11 cannot
                # save a shrunk failure with Hypothesis 6.170 (its worker dies after
                # shrinking); `pipeline-models repro` shrinks with Hypothesis instead.
                if options.stop_at_first_failure and report.failures:
                    report.ended = "the first failure"
                    break
                if process.poll() is not None:
                    if report.failures:
                        report.ended = f"HypoFuzz exiting ({process.returncode})"
                        break
                    # HypoFuzz 25.11's hub exits when, at its once-a-minute check, no
                    # worker has reported a finished batch of 100 examples yet, which
                    # slow examples like these often have not. The corpus is in the
                    # example database: a new hub carries on from it.
                    _stop(process)
                    report.restarts += 1
                    process = launch()
        except KeyboardInterrupt:
            report.ended = INTERRUPTED
        finally:
            _stop(process)
    report.seconds = time.monotonic() - started
    report.counts, report.steps = _read_workers(workers)
    report.counts.sources = [f"fuzz session {session.name}"]
    save_counts(report.counts, options.directory / "transitions-fuzz.json")
    if report.interrupted:
        if report.failures:
            report.repro_problem = "stopped by Ctrl-C first; `pipeline-models repro` writes it"
        raise Interrupted(report)
    if report.failures and options.repro_directory is not None:
        report.repro_files, report.repro_problem = _write_repros(options, spec, environment)
    return report


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End HypoFuzz and its workers (they share the process group it leads)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):  # or a second Ctrl-C
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # Workers that outlived the leader (HypoFuzz's own children) go with the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _write_repros(
    options: FuzzOptions, spec: str, environment: dict[str, str]
) -> tuple[list[Path], str | None]:
    """Run ``pipeline-models repro`` with the session's package (the mutant, if any)."""
    assert options.repro_directory is not None
    command = [
        sys.executable,
        "-m",
        "pipeline_models.cli",
        "repro",
        "--database",
        spec,
        "--out",
        str(options.repro_directory.resolve()),
        "--shrink-seconds",
        str(options.shrink_seconds),
    ]
    for machine in options.machines:
        command += ["--machine", machine]
    if options.mutant:
        command += ["--label", options.mutant]
    finished = subprocess.run(
        command, env=environment, capture_output=True, text=True, check=False, timeout=600
    )
    paths = [
        Path(line.split("wrote ", 1)[1])
        for line in finished.stdout.splitlines()
        if line.startswith("wrote ")
    ]
    if paths:
        return paths, None
    said = (finished.stdout.strip() or finished.stderr.strip() or "no output").splitlines()
    return [], f"pipeline-models repro (exit {finished.returncode}): {said[-1]}"


__all__ = [
    "MACHINE_NAMES",
    "FuzzOptions",
    "FuzzReport",
    "environment_for",
    "plant_mutant",
    "run_fuzz",
    "worker_test_cases",
]

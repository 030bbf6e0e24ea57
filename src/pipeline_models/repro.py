"""``pipeline-models repro``: failures in the example database as readable test files.

A failure saved by a fuzz session (or any run) is a blob of Hypothesis choices: it
replays only against the same machine source and the same Hypothesis. This module
replays each saved failure once, takes the shrunk program Hypothesis prints for it
(``state = PipelineMachine()``, one line per rule, ``state.teardown()``), and writes it
as a standalone pytest file that calls the rules explicitly and checks the database
after each one, as the machine does. The file fails while the bug is present, passes
once it is fixed, and carries the failure's message as a comment::

    paths = write_repro_files(example_database("redis://127.0.0.1:6379/0"),
                              Path("tests/regressions"))

:func:`run_repro_file` replays one such file with the debug profile, printing every
rule, what each worker step reached, and the job rows the audit trigger saw change.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import re
import shutil
import subprocess
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from hypothesis import Phase
from hypothesis.database import ExampleDatabase, InMemoryExampleDatabase
from hypothesis.stateful import run_state_machine_as_test

from pipeline_models import documents, machines
from pipeline_models.examples_database import machine_database_key
from pipeline_models.profiles import machine_settings, register_profiles, select_profile
from pipeline_models.shrinking import shrink_limit

MACHINES: dict[str, type[machines.QueueMachine]] = {
    "pipeline": machines.PipelineMachine,
    "queue": machines.QueueMachine,
}

# Names a printed program may use, and where the generated file imports them from.
_IMPORTS = {
    "UUID": "uuid",
    "Document": "pipeline_models.documents",
    "DocumentKind": "pipeline_models.documents",
    "Fault": "pipeline_models.fakes",
    "FaultKind": "pipeline_models.fakes",
    "FaultPlan": "pipeline_models.fakes",
    "WebhookKind": "pipeline_models.drivers",
    "Upload": "pipeline_models.machines",
}
_CHECK = "state.database_agrees_with_the_model()"
_RULE = re.compile(r"^(\w+ = )?state\.\w+\(")


class ReplayFailed(Exception):
    """A saved example did not fail when replayed (fixed, or not reproducible here)."""


def replay_program(
    machine: type[machines.QueueMachine], choices: bytes, *, shrink_seconds: float = 60
) -> tuple[list[str], BaseException, bytes]:
    """Replay one saved failure of ``machine`` and shrink it with Hypothesis's shrinker
    (a no-op for an already shrunk one); the program Hypothesis printed, the error, and
    the shrunk example's choices."""
    key = machine_database_key(machine)
    # The example alone in a throwaway database: replayed, shrunk, nothing else generated.
    # Under the secondary key: Hypothesis does not shrink again what it finds under the
    # primary one (it takes it as shrunk already), and a fuzzer's may not be.
    database = InMemoryExampleDatabase()
    database.save(key + b".secondary", choices)
    settings = machine_settings(
        # The longest programs any profile makes (fuzz: 100 rules): a replay with fewer
        # would cut a long failure short, and it would not fail.
        "fuzz",
        database=database,
        derandomize=False,
        phases=(Phase.explicit, Phase.reuse, Phase.shrink),
        report_multiple_bugs=False,
        print_blob=False,
    )
    # Reprs of documents in full, so that the program rebuilds them (the default repr
    # abbreviates long ones to keep reports short).
    limit = documents._REPR_DATA_LIMIT
    documents._REPR_DATA_LIMIT = 1 << 30
    try:
        with shrink_limit(shrink_seconds):
            run_state_machine_as_test(machine, settings=settings)
    except Exception as error:
        shrunk = min(database.fetch(key), key=lambda blob: (len(blob), blob), default=choices)
        return program_lines(error), error, shrunk
    finally:
        documents._REPR_DATA_LIMIT = limit
    raise ReplayFailed(f"the saved example of {machine.__name__} passed when replayed")


def program_lines(error: BaseException) -> list[str]:
    """The shrunk program in the failure's notes, from ``state = ...`` to the teardown."""
    lines: list[str] = []
    inside = False
    for note in getattr(error, "__notes__", []):
        for line in note.splitlines():
            stripped = line.strip()
            if stripped.startswith("state = "):
                inside, lines = True, []
            if inside and stripped:
                lines.append(stripped)
            if stripped == "state.teardown()":
                inside = False
    return lines


def render_test_file(
    machine: type[machines.QueueMachine], program: list[str], error: BaseException, *, label: str
) -> str:
    """The text of a standalone pytest file replaying ``program``."""
    body = [line for line in program if not line.startswith("state = ")]
    body = [line for line in body if line not in ("state.teardown()", _CHECK)]
    steps = [_CHECK]
    for line in body:
        if _RULE.match(line):
            steps += [line, _CHECK]
        else:  # what the rule's note said when it ran (a step report, a blocked claim)
            steps.append(f"# {line}")
    text = "\n".join(steps)
    used = sorted(name for name in _IMPORTS if re.search(rf"\b{name}\b", text))
    modules: dict[str, list[str]] = {}
    for name in used:
        modules.setdefault(_IMPORTS[name], []).append(name)
    modules.setdefault("pipeline_models.machines", []).append(machine.__name__)
    imports = "\n".join(
        f"from {module} import {', '.join(sorted(names))}"
        for module, names in sorted(modules.items())
    )
    message = f"{type(error).__name__}: {error}".strip()
    wrapped = [
        piece
        for line in message.splitlines()[:40]
        for piece in (textwrap.wrap(line, 90, subsequent_indent="    ") or [""])
    ]
    comment = "\n".join(f"#   {line}" if line else "#" for line in wrapped)
    digest = hashlib.sha1(text.encode()).hexdigest()[:10]
    name = f"test_{machine.__name__.lower()}_{_identifier(label)}_{digest}"
    indented = textwrap.indent(text, "    ")
    found = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f'''"""A shrunk failure of {machine.__name__} ({label}), as an explicit program.

Written by ``pipeline-models repro`` on {found}. It calls the rules
Hypothesis chose, in order, and checks the database against the model after each,
as the machine does; the teardown drains the workers and checks liveness. It fails
while the bug is present and passes once the bug is fixed. To watch every step and
the job rows it changed::

    pipeline-models repro --run <this file>
"""

# The failure when it was found:
{comment}

from __future__ import annotations

{imports}

MACHINE = {machine.__name__}


def program(state: {machine.__name__}) -> None:
{indented}


def {name}() -> None:
    state = MACHINE()
    try:
        program(state)
    finally:
        state.teardown()
'''


def _identifier(label: str) -> str:
    return re.sub(r"\W+", "_", label).strip("_").lower() or "failure"


def write_repro_files(
    database: ExampleDatabase,
    directory: Path,
    *,
    machine_names: tuple[str, ...] = tuple(MACHINES),
    label: str = "fuzz",
    shrink_seconds: float = 60,
    on_written: Callable[[Path], None] | None = None,
    on_replay: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """One test file in ``directory`` per distinct failure saved for each machine (shrunk
    first, and saved back shrunk, so that a replaying run gets the short one); their paths.
    ``on_written`` hears of each file as soon as it is written; ``on_replay`` of each
    saved failure (its number, from 1, and how many there are) before it is replayed.
    """
    register_profiles()
    logging.getLogger("pipeline_models.worker").setLevel(logging.CRITICAL)
    written: list[Path] = []
    directory.mkdir(parents=True, exist_ok=True)
    failures = []
    for name in machine_names:
        machine = MACHINES[name]
        key = machine_database_key(machine)
        # Shrunk failures, then those a fuzzer saved before shrinking them.
        saved = [*sorted(database.fetch(key)), *sorted(database.fetch(key + b".secondary"))]
        failures += [(machine, key, choices) for choices in saved]
    for number, (machine, key, choices) in enumerate(failures, start=1):
        if on_replay is not None:
            on_replay(number, len(failures))
        try:
            program, error, shrunk = replay_program(machine, choices, shrink_seconds=shrink_seconds)
        except ReplayFailed:
            continue
        if not program:
            continue
        database.save(key, shrunk)  # a no-op on a read-only database
        text = render_test_file(machine, program, error, label=label)
        test_name = re.search(r"^def (test_\w+)\(", text, re.M)
        assert test_name is not None
        path = directory / f"{test_name.group(1)}.py"
        if path not in written:
            path.write_text(text)
            _format(path)
            written.append(path)
            if on_written is not None:
                on_written(path)
    return written


def _format(path: Path) -> None:
    """Format the file as the project's code is (ruff), when ruff is installed: a repro file
    is meant to be committed."""
    ruff = shutil.which("ruff")
    if ruff is not None:
        subprocess.run([ruff, "format", "--quiet", str(path)], check=False, timeout=60)


def load_repro_file(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"repro_{_identifier(path.stem)}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "program") or not hasattr(module, "MACHINE"):
        raise ValueError(f"{path} is not a repro file (no program() and MACHINE)")
    return module


class _Traced:
    """Stands for the machine in ``program``: prints each rule as it runs and the job rows
    the audit trigger saw change since the previous rule."""

    def __init__(self, state: machines.QueueMachine, echo: Callable[[str], None]) -> None:
        self._state = state
        self._echo = echo
        self._last_audit_id = 0
        self._step = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._state, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            shown = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
            if name != "database_agrees_with_the_model":
                self._step += 1
                self._echo(f"[{self._step}] state.{name}({shown})")
            try:
                return attribute(*args, **kwargs)
            finally:
                self._rows()

        return call

    def _rows(self) -> None:
        driver = self._state.driver
        schema = driver.database.schema  # type: ignore[attr-defined]
        rows = self._state._run(
            driver.monitor.fetch(  # type: ignore[attr-defined]
                f'SELECT * FROM "{schema}".checker_job_audit WHERE audit_id > $1 ORDER BY audit_id',
                self._last_audit_id,
            )
        )
        for row in rows:
            self._last_audit_id = max(self._last_audit_id, row["audit_id"])
            data = dict(row)
            self._echo(
                f"      row {data.get('operation')} job {str(data.get('job_id'))[:8]} by "
                f"{data.get('actor')}: {data.get('old_stage')}/{data.get('old_state')} -> "
                f"{data.get('new_stage')}/{data.get('new_state')} owner "
                f"{data.get('old_owner')} -> {data.get('new_owner')}"
            )


def run_repro_file(path: Path, *, echo: Callable[[str], None] = print) -> BaseException | None:
    """Replay a repro file with the debug profile, printing every step; the failure, if any."""
    register_profiles()
    select_profile("debug")
    module = load_repro_file(path)
    state = module.MACHINE()
    traced = _Traced(state, echo)
    failure: BaseException | None = None
    try:
        module.program(traced)
    except Exception as error:
        failure = error
        # Inside the handler the machine's teardown sees the failure and skips the drain.
        with contextlib.suppress(Exception):
            state.teardown()
    else:
        echo("[teardown] drain the workers, check liveness")
        try:
            state.teardown()
        except Exception as error:
            failure = error
    if failure is not None:
        echo(f"FAILED: {type(failure).__name__}: {failure}")
        return failure
    echo("PASSED: no invariant failed")
    return None


__all__ = [
    "MACHINES",
    "ReplayFailed",
    "load_repro_file",
    "program_lines",
    "render_test_file",
    "replay_program",
    "run_repro_file",
    "write_repro_files",
]

"""What a long command (``check``, ``mutants``, ``fuzz``, ``repro``) is doing, while it runs.

On a terminal: one line on stderr, redrawn in place a few times a second (rich) and
erased when the command ends, so the report that follows stands alone::

    ⠹ check: 41 examples, 152 rules/s, transitions 9 of 13, 14 s

Anywhere else (a CI log, a pipe, ``TERM=dumb``): the same line, plain, every
``PIPELINE_MODELS_PROGRESS_SECONDS`` (default 10) seconds and once at the end, so that a
log shows the run is alive. Progress never goes to stdout: reports, and ``--json``, stay
as they were. A command's ``--no-progress`` turns it off.

The display reads the run's counters (the machines' statistics) from a thread of its
own, a few times a second: the run never waits for it, and pays nothing per rule.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import IO, Any

PERIOD_VARIABLE = "PIPELINE_MODELS_PROGRESS_SECONDS"
DEFAULT_PERIOD = 10.0  # seconds between plain lines
REFRESH = 0.25  # seconds between readings (and redraws on a terminal)
RATE_WINDOW = 5.0  # a rate over the last seconds, not since a server was starting


@dataclass(frozen=True)
class Reading:
    """What a run has done so far; None for what its command does not know."""

    examples: int | None = None
    rules: int | None = None  # shown as a rate: rules/s
    transitions: tuple[int, int] | None = None  # covered, of those the machines make
    detail: str = ""  # anything else the command can say: "mutant 3 of 28 done"
    unit: str = "rules"  # what ``rules`` counts


class Mode(StrEnum):
    LIVE = "live"  # a line redrawn in place
    PLAIN = "plain"  # a line every period
    OFF = "off"


def choose_mode(enabled: bool = True, stream: IO[str] | None = None) -> Mode:
    """Live on a terminal that can redraw a line; plain lines anywhere else; off if asked.

    >>> import io
    >>> choose_mode(stream=io.StringIO())
    <Mode.PLAIN: 'plain'>
    >>> choose_mode(False)
    <Mode.OFF: 'off'>
    """
    if not enabled:
        return Mode.OFF
    stream = sys.stderr if stream is None else stream
    terminal = hasattr(stream, "isatty") and stream.isatty()
    if not terminal or os.environ.get("TERM") == "dumb":
        return Mode.PLAIN
    return Mode.LIVE


def plain_period() -> float:
    """Seconds between plain lines: PIPELINE_MODELS_PROGRESS_SECONDS, or 10."""
    try:
        period = float(os.environ.get(PERIOD_VARIABLE, DEFAULT_PERIOD))
    except ValueError:
        return DEFAULT_PERIOD
    return period if period > 0 else DEFAULT_PERIOD


def render(command: str, reading: Reading, seconds: float, rate: float | None = None) -> str:
    """The progress line.

    >>> render("check", Reading(41, 2100, (9, 13)), 14.2, rate=152.4)
    'check: 41 examples, 152 rules/s, transitions 9 of 13, 14 s'
    >>> render("mutants", Reading(detail="control 1 of 3 done"), 75)
    'mutants: control 1 of 3 done, 75 s'
    """
    parts = []
    if reading.examples is not None:
        parts.append(f"{reading.examples} example{'' if reading.examples == 1 else 's'}")
    if reading.rules is not None and rate is not None:
        parts.append(f"{rate:.0f} {reading.unit}/s")
    if reading.transitions is not None:
        covered, of = reading.transitions
        parts.append(f"transitions {covered} of {of}")
    if reading.detail:
        parts.append(reading.detail)
    parts.append(f"{seconds:.0f} s")
    return f"{command}: {', '.join(parts)}"


class Progress:
    """Shows ``read()`` while the block runs (see the module's docstring)::

    with Progress("check", lambda: Reading(STATISTICS.examples, STATISTICS.rules)):
        run()
    """

    def __init__(
        self,
        command: str,
        read: Callable[[], Reading],
        *,
        mode: Mode | None = None,
        stream: IO[str] | None = None,
        period: float | None = None,
    ) -> None:
        self.command = command
        self.read = read
        self.stream = sys.stderr if stream is None else stream
        self.mode = choose_mode(stream=self.stream) if mode is None else mode
        self.period = plain_period() if period is None else period
        self._stop = threading.Event()
        self._echoing = threading.Lock()
        self._thread: threading.Thread | None = None
        self._live: Any = None  # rich.live.Live, on a terminal
        self._spinner: Any = None  # its rich.spinner.Spinner
        self._stderr: IO[str] = sys.stderr  # the real one, while rich's proxy stands in
        self._started = 0.0
        self._last = Reading()
        self._rules: deque[tuple[float, int]] = deque()

    # -- the run's side --------------------------------------------------------------------

    def __enter__(self) -> Progress:
        if self.mode is Mode.OFF:
            return self
        self._started = time.monotonic()
        if self.mode is Mode.LIVE:
            self._start_live()
        self._thread = threading.Thread(
            target=self._loop, name="pipeline-models-progress", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.mode is Mode.OFF:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._live is not None:
            _redirect_logs(sys.stderr, self._stderr)  # before rich restores sys.stderr
            self._live.stop()  # transient: the line goes, the report follows
            self._live = None
            return
        if kind is None:
            ending = "done"
        elif issubclass(kind, KeyboardInterrupt):
            ending = "stopped by Ctrl-C"
        else:
            ending = "ended by an error"
        self._write(f"{self.line()}; {ending}")

    def echo(self, text: str, *, err: bool = True) -> None:
        """Print a line of the command's own (a mutant's verdict, a file written) on
        stderr, or stdout: above the progress line on a terminal. From any thread.

        (Not click.echo: it would write past rich's stand-in for the stream, through the
        line.)"""
        with self._echoing, contextlib.suppress(OSError, ValueError):
            print(text, file=sys.stderr if err else sys.stdout, flush=True)

    def line(self) -> str:
        """The line as of now (read afresh)."""
        now = time.monotonic()
        with contextlib.suppress(Exception):  # a counter caught mid-update: the last one
            self._last = self.read()
        rate = None
        if self._last.rules is not None:
            self._rules.append((now, self._last.rules))
            while len(self._rules) > 2 and now - self._rules[1][0] >= RATE_WINDOW:
                self._rules.popleft()
            (then, before), (_, rules) = self._rules[0], self._rules[-1]
            rate = (rules - before) / (now - then) if now > then else 0.0
        return render(self.command, self._last, now - self._started, rate)

    # -- the display's thread ----------------------------------------------------------------

    def _loop(self) -> None:
        printed = time.monotonic()
        while not self._stop.wait(REFRESH):
            line = self.line()
            if self._live is not None:
                self._show(line)
            elif time.monotonic() - printed >= self.period:
                printed = time.monotonic()
                self._write(line)

    def _write(self, line: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # a closed pipe is no reason to fail
            print(line, file=self.stream, flush=True)

    def _start_live(self) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.spinner import Spinner

        console = Console(file=self.stream)
        # What others print to stderr goes above the line (rich's proxy); stdout too when
        # it is the same terminal, else it stays stdout (a report piped to a file).
        stdout_terminal = hasattr(sys.stdout, "isatty") and sys.stdout.isatty()
        self._stderr = sys.stderr
        self._spinner = Spinner("dots")
        self._live = Live(
            self._spinner,
            console=console,
            transient=True,
            auto_refresh=False,
            redirect_stdout=stdout_terminal,
            redirect_stderr=True,
        )
        self._live.start()
        _redirect_logs(self._stderr, sys.stderr)
        self._show(self.line())

    def _show(self, line: str) -> None:
        with contextlib.suppress(Exception):  # the display is never a reason to fail
            self._spinner.update(text=line)
            self._live.refresh()


def _redirect_logs(old: object, new: IO[str]) -> None:
    """The library's log handlers that wrote to ``old`` write to ``new`` (on a terminal,
    rich's proxy of stderr while the line shows, so that a log line does not tear it)."""
    for handler in logging.getLogger("pipeline_models").handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is old:
            handler.setStream(new)


# -- what each command shows ---------------------------------------------------------------


def check_reading(machine: Any) -> Callable[[], Reading]:
    """``check`` of a reference machine: its examples, rules, and how many of the
    transitions its rules make were seen (``machine.TRANSITIONS``)."""
    from pipeline_models.machines import STATISTICS

    kinds = tuple(machine.TRANSITIONS)

    def read() -> Reading:
        covered = sum(1 for kind in kinds if STATISTICS.transitions[kind])
        return Reading(STATISTICS.examples, STATISTICS.rules, (covered, len(kinds)))

    return read


def adapter_reading() -> Callable[[], Reading]:
    """``check --adapter``: the core machine's examples and the workers' round trips
    (a spec names no transition kinds to count)."""
    from pipeline_models.core.machines import STATISTICS

    examples = STATISTICS.examples  # counted per process

    def read() -> Reading:
        steps = STATISTICS.steps + STATISTICS.drain_steps
        return Reading(STATISTICS.examples - examples, steps, unit="round trips")

    return read


def fuzz_reading(report: Any) -> Reading:
    """``fuzz``: the totals of every worker process, as the session last read them (a
    FuzzReport, or None before the first reading)."""
    if report is None:
        return Reading(0, 0, detail="starting HypoFuzz")
    counts = report.counts
    steps = report.steps / report.seconds if report.seconds else 0.0
    return Reading(
        counts.examples,
        counts.rules,
        (len(report.covered()), len(report.transitions())),
        f"{steps:.0f} steps/s, {len(counts.edges)} edges, {len(counts.events)} behaviours, "
        f"failures {sum(report.failures.values())}",
    )


@dataclass
class MutantsTally:
    """``mutants``: the control's parts, then the mutants, each run in a child process
    that reports only when done (so: examples of the parts done). Updated from the
    campaign's threads."""

    control: int  # parts of the control
    mutants: int
    control_done: int = 0
    mutants_done: int = 0
    killed: int = 0
    examples: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def finished(self, report: Any, *, control: bool) -> None:
        """A part of the control, or a mutant (a MutantReport), is done."""
        with self._lock:
            self.examples += sum(side.examples for side in report.sides.values())
            if control:
                self.control_done += 1
            else:
                self.mutants_done += 1
                self.killed += report.killed_by("checker")

    def reading(self) -> Reading:
        detail = f"control {self.control_done} of {self.control} done"
        if self.mutants:
            detail += f", mutants {self.mutants_done} of {self.mutants} done ({self.killed} killed)"
        return Reading(self.examples, detail=detail)


@dataclass
class ReproTally:
    """``repro``: which saved failure is being replayed (and shrunk), and the files
    written; examples are the machines' (every replay and shrink is some)."""

    failures: int = 0
    replaying: int = 0  # 1-based; 0 before the first
    written: int = 0

    def __post_init__(self) -> None:
        from pipeline_models.machines import STATISTICS

        self._statistics = STATISTICS
        self._examples = STATISTICS.examples

    def reading(self) -> Reading:
        files = f"{self.written} file{'' if self.written == 1 else 's'} written"
        return Reading(
            self._statistics.examples - self._examples,
            self._statistics.rules,
            detail=f"failure {self.replaying} of {self.failures}, {files}",
        )


__all__ = [
    "DEFAULT_PERIOD",
    "PERIOD_VARIABLE",
    "Mode",
    "MutantsTally",
    "Progress",
    "Reading",
    "ReproTally",
    "adapter_reading",
    "check_reading",
    "choose_mode",
    "fuzz_reading",
    "plain_period",
    "render",
]

"""``check --coverage``: what of the system under test a run reached.

coverage.py, in branch mode, through its programmatic API, measures the reference
pipeline's code (``pipeline_models/pipeline/``) while the machines run; the named SQL
queries the pipeline sends (``sql/queries.sql`` and ``sql/ratelimit.sql``) are counted
as asyncpg hands them to the server. The report gives the share of branches taken,
every branch never taken (``file:line->line``, ``exit`` for a function's return) and
the named queries never sent. It is the search's own measure: a branch no program takes
is a behaviour no invariant was ever judged on.

Everything the check runs is measured: the machines, the workers and the API run as
tasks on one event loop in the calling thread, and coverage's thread tracer follows any
thread started while it measures.

>>> BranchReport(total=4, taken=3, missed=(("worker.py", 10, 12),)).percent
75.0
>>> BranchReport(total=4, taken=3, missed=(("worker.py", 10, -9),)).missed_lines()
['worker.py:10->exit']
"""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PIPELINE_DIR = Path(__file__).parent / "pipeline"
# The pipeline's named SQL; the checker's own (audit.sql, checker.sql) is not measured.
MEASURED_SQL = ("queries.sql", "ratelimit.sql")
# asyncpg's methods that send a query text; prepare() and cursor() take one too.
_SENDING = ("execute", "executemany", "fetch", "fetchrow", "fetchval", "prepare", "cursor")


class CoverageUnavailable(RuntimeError):
    """coverage.py is not installed (``pip install 'pipeline-models[coverage]'``)."""


@dataclass(frozen=True)
class BranchReport:
    """Branches of the measured code: how many, how many taken, which not (by file)."""

    total: int
    taken: int
    missed: tuple[tuple[str, int, int], ...]  # (file, from line, to line; negative: exit)
    queries: tuple[str, ...] = ()  # every named query measured
    queries_sent: frozenset[str] = field(default_factory=frozenset)
    by_file: tuple[tuple[str, int, int], ...] = ()  # (file, branches taken, branches)

    @property
    def percent(self) -> float:
        return 100.0 * self.taken / self.total if self.total else 100.0

    def missed_lines(self) -> list[str]:
        return [f"{file}:{start}->{'exit' if end < 0 else end}" for file, start, end in self.missed]

    @property
    def queries_missed(self) -> list[str]:
        return [name for name in self.queries if name not in self.queries_sent]

    def render(self) -> str:
        lines = [
            f"coverage of the system under test (src/pipeline_models/pipeline/, branch mode): "
            f"{self.percent:.1f}% of branches ({self.taken} of {self.total})",
        ]
        partly = [(name, hit, of) for name, hit, of in self.by_file if hit < of]
        if partly:
            lines.append("by file (taken of branches), where any was missed:")
            lines.extend(f"    {name:<16} {hit:>4} of {of}" for name, hit, of in partly)
        missed = self.missed_lines()
        if missed:
            lines.append(f"branches not taken ({len(missed)}):")
            lines.extend(f"    {line}" for line in missed)
        if self.queries:
            sent = len(self.queries) - len(self.queries_missed)
            lines.append(f"named SQL queries sent: {sent} of {len(self.queries)}")
            if self.queries_missed:
                lines.append(f"    not sent: {', '.join(self.queries_missed)}")
        return "\n".join(lines)


def _named_queries() -> dict[str, str]:
    """The measured queries' SQL texts, each to its name."""
    from pipeline_models.core.queries import Queries

    return {query.sql: name for name, query in Queries.load(*MEASURED_SQL).items()}


@contextlib.contextmanager
def _counting_queries(texts: dict[str, str], sent: set[str]) -> Iterator[None]:
    """Count the named queries asyncpg sends, on every connection (pools and the
    checker's interposed connections included: they inherit these methods)."""
    import asyncpg

    originals: dict[str, Callable[..., Any]] = {}

    def counted(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            query = args[0] if args else kwargs.get("query", kwargs.get("command"))
            name = texts.get(query) if isinstance(query, str) else None
            if name is not None:
                sent.add(name)
            return method(self, *args, **kwargs)

        return wrapper

    for name in _SENDING:
        originals[name] = getattr(asyncpg.Connection, name)
        setattr(asyncpg.Connection, name, counted(originals[name]))
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(asyncpg.Connection, name, method)


class Measure:
    """Measure what a run reaches of the pipeline: ``with Measure() as measure: ...``,
    then ``measure.report``."""

    def __init__(self, source: Path = PIPELINE_DIR) -> None:
        try:
            import coverage
        except ImportError as error:  # pragma: no cover - the extra is missing
            raise CoverageUnavailable(
                "check --coverage needs coverage.py: pip install 'pipeline-models[coverage]'"
            ) from error
        self.source = source
        self._coverage = coverage.Coverage(
            branch=True,
            source=[str(source)],
            data_file=None,  # in memory: a run leaves no .coverage file behind
            config_file=False,  # the project's own settings, not the caller's .coveragerc
            concurrency=["thread"],
        )
        self._texts = _named_queries()
        self._sent: set[str] = set()
        self._queries: contextlib.ExitStack | None = None
        self.report: BranchReport | None = None

    def start(self) -> Measure:
        """Start measuring (before the pipeline's modules are imported, if it can be:
        what their import runs, such as a config's checks, is code reached too)."""
        if self._queries is None:
            self._queries = contextlib.ExitStack()
            self._queries.enter_context(_counting_queries(self._texts, self._sent))
            self._coverage.start()
        return self

    def stop(self) -> BranchReport:
        """Stop measuring (once; again returns the same report) and analyse."""
        if self.report is None:
            assert self._queries is not None, "stop() before start()"
            self._coverage.stop()
            self._queries.close()
            self.report = self._analyse()
        return self.report

    def __enter__(self) -> Measure:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _analyse(self) -> BranchReport:
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "coverage.json"
            self._coverage.json_report(outfile=str(out))
            data = json.loads(out.read_text("utf-8"))
        total = taken = 0
        missed: list[tuple[str, int, int]] = []
        by_file: list[tuple[str, int, int]] = []
        for path, measured in sorted(data["files"].items()):
            summary = measured["summary"]
            total += summary["num_branches"]
            taken += summary["covered_branches"]
            name = Path(path).name
            by_file.append((name, summary["covered_branches"], summary["num_branches"]))
            missed.extend((name, start, end) for start, end in measured["missing_branches"])
        return BranchReport(
            total=total,
            taken=taken,
            missed=tuple(missed),
            queries=tuple(sorted(self._texts.values())),
            queries_sent=frozenset(self._sent),
            by_file=tuple(by_file),
        )


__all__ = ["MEASURED_SQL", "PIPELINE_DIR", "BranchReport", "CoverageUnavailable", "Measure"]

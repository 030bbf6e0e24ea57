"""The declared system: what a team tells the checker about its job table.

A :class:`Spec` names the job table and the columns the checker reads, says what each
value of the state column means, how a worker holds a job (a lease with an expiry, a
heartbeat with a timeout, or only a row lock), how attempts are counted, and what
happens to a finished job. Nothing else of the schema is assumed. Write it in Python
or in TOML (a file, or ``[tool.pipeline-models]`` in the team's ``pyproject.toml``)::

    [tool.pipeline-models]
    table = "guide.jobs"
    id = "id"
    state = "state"
    due = "run_at"
    finished = "kept"

    [tool.pipeline-models.states]
    claimable = ["queued"]
    in_progress = ["running"]
    succeeded = ["done"]
    failed = ["failed"]

    [tool.pipeline-models.holder]
    model = "heartbeat"
    column = "started_at"
    timeout_seconds = 30

    [tool.pipeline-models.attempts]
    column = "attempts"
    limit = 3

>>> spec = Spec(
...     table="guide.jobs",
...     states=States(claimable=["queued"], in_progress=["running"], succeeded=["done"]),
...     holder=Holder("heartbeat", column="started_at", timeout_seconds=30),
... )
>>> spec.meaning("running").value
'in_progress'
>>> try:
...     Spec(table="jobs", states=States(claimable=["queued"], in_progress=["queued"]))
... except SpecError as error:
...     print(error)
the state 'queued' has two meanings (claimable and in_progress); give each value of the state column one meaning
"""  # noqa: E501

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pipeline_models.errors import PipelineModelsError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
TOML_TABLE = ("tool", "pipeline-models")


class SpecError(PipelineModelsError):
    """The spec is malformed, or does not match the database it describes."""


class Meaning(StrEnum):
    """What a value of the state column means to the checker."""

    CLAIMABLE = "claimable"  # a worker may take it (when due)
    IN_PROGRESS = "in_progress"  # a worker holds it
    SUCCEEDED = "succeeded"  # terminal success
    FAILED = "failed"  # terminal failure (dead letter, cancelled, aborted)
    WAITING = "waiting"  # neither claimable nor held nor finished (held for an operator, ...)


TERMINAL = frozenset({Meaning.SUCCEEDED, Meaning.FAILED})


class HolderModel(StrEnum):
    """How a worker holds a job it claimed, and so when it stops holding it."""

    LEASE = "lease"  # until the expiry the claim wrote passes (renewals extend it)
    HEARTBEAT = "heartbeat"  # until another actor recovers it once its beat is too old
    ROW_LOCK = "row_lock"  # while the claiming transaction holds the row lock


class Finished(StrEnum):
    """What happens to a job's row once it is finished."""

    KEPT = "kept"
    DELETED = "deleted"
    MOVED = "moved"  # deleted here, inserted into ``finished_table``


@dataclass(frozen=True)
class States:
    """The values of the state column, by meaning. Every value must have one meaning."""

    claimable: Sequence[str]
    in_progress: Sequence[str]
    succeeded: Sequence[str] = ()
    failed: Sequence[str] = ()
    waiting: Sequence[str] = ()

    def __post_init__(self) -> None:
        for meaning in Meaning:
            values = getattr(self, meaning.value)
            if isinstance(values, str):
                raise SpecError(
                    f"states.{meaning.value} must be a list of state values, got the string "
                    f"{values!r}; write [{values!r}]"
                )
            object.__setattr__(self, meaning.value, tuple(values))
        if not self.claimable:
            raise SpecError("states.claimable is empty: name the state(s) a worker may claim")
        if not self.in_progress:
            raise SpecError("states.in_progress is empty: name the state(s) of a held job")

    def by_value(self) -> dict[str, Meaning]:
        meanings: dict[str, Meaning] = {}
        for meaning in Meaning:
            for value in getattr(self, meaning.value):
                if value in meanings:
                    raise SpecError(
                        f"the state {value!r} has two meanings ({meanings[value]} and "
                        f"{meaning}); give each value of the state column one meaning"
                    )
                meanings[value] = meaning
        return meanings


@dataclass(frozen=True)
class Holder:
    """How a job is held. ``column``: the lease's expiry (lease), the last sign of life
    (heartbeat). ``timeout_seconds``: how old a heartbeat may get before another actor
    may recover the job. The checker never reads an owner column: it learns who holds a
    job from which worker's write claimed it.

    ``ends`` (leases only): when a hold is over. ``"expiry"`` (the default, the strict
    contract): once the lease has run out, any write of its holder is a zombie's.
    ``"takeover"``: the holder keeps its job until another worker takes it over (or it
    is recovered); a late write of its own before anyone else acted is no second holder.
    Declare it for a worker that fences by owner and stamps its writes with a time it
    read before the write (after a pause in between it renews an expired lease nobody
    took, then releases or advances the job).

    ``beats_in`` and ``beat`` (heartbeats only): the sign of life is not on the job's
    row but on its worker's, as in procrastinate (``procrastinate_workers``): ``column``
    is then the job's reference to a row of ``beats_in`` (by its ``id``), whose ``beat``
    column is the worker's last heartbeat. A row since deleted (its worker pruned) shows
    no sign of life; a claim that named no row shows no beat to go stale (its hold ends
    only with a crash); a beat counts once it was committed before the judged change."""

    model: HolderModel | str
    column: str | None = None
    timeout_seconds: float | None = None
    ends: str = "expiry"
    beats_in: str | None = None
    beat: str | None = None
    # False: the system does not fence a worker's writes by its hold (procrastinate's
    # finish and retry check the job's status, not its worker): a worker that held the job
    # and lost it (recovered, or put back by its own stalled-job recovery) may still write
    # it, its declared at-least-once behaviour, judged by no invariant; a worker that never
    # held the job is still fencing. The strict default reports every such write.
    fenced: bool = True
    # True: the worker extends its hold (writes holder.column: a lease renewed, a beat)
    # before each call to a service after the first of a hold (the claim's write covers
    # that one), so that no call outlasts a hold it took long ago. Without it a long
    # stage outlives its lease and a second worker runs it too. Judged on the order of
    # the worker's writes and calls, never on times: a pause between a renewal and its
    # call is no fault of the worker's.
    renews_before_calls: bool = False

    def __post_init__(self) -> None:
        if self.ends not in ("expiry", "takeover"):
            raise SpecError(f"holder.ends must be 'expiry' or 'takeover', got {self.ends!r}")
        try:
            object.__setattr__(self, "model", HolderModel(self.model))
        except ValueError:
            raise SpecError(
                f"holder.model {self.model!r} is not one of "
                f"{', '.join(m.value for m in HolderModel)}"
            ) from None
        if self.model is HolderModel.LEASE and not self.column:
            raise SpecError("holder.model 'lease' needs holder.column: the lease's expiry")
        if bool(self.beats_in) != bool(self.beat):
            raise SpecError(
                "holder.beats_in and holder.beat go together: the workers' table and its "
                "heartbeat column"
            )
        if self.beats_in and self.model is not HolderModel.HEARTBEAT:
            raise SpecError("holder.beats_in is for model 'heartbeat' only")
        for name in filter(None, (*(self.beats_in or "").split("."), self.beat)):
            if not _IDENTIFIER.match(name):
                raise SpecError(f"holder: {name!r} is not a plain SQL identifier")
        if self.model is HolderModel.HEARTBEAT:
            if not self.column:
                raise SpecError(
                    "holder.model 'heartbeat' needs holder.column: when the job last showed "
                    "a sign of life"
                )
            if self.timeout_seconds is None or self.timeout_seconds <= 0:
                raise SpecError(
                    "holder.model 'heartbeat' needs holder.timeout_seconds > 0: how old a "
                    "heartbeat may get before another actor may recover the job"
                )

        if self.renews_before_calls and (self.model is HolderModel.ROW_LOCK or self.beats_in):
            raise SpecError(
                "holder.renews_before_calls needs a time on the job's row: a lease's expiry "
                "or a heartbeat in holder.column"
            )

    @property
    def time_column(self) -> str | None:
        """The job table's column that holds a time (the expiry, the last beat); None
        when the beat is on the worker's row (``beats_in``)."""
        return None if self.beats_in else self.column


@dataclass(frozen=True)
class Attempts:
    """The attempts column and its limit. ``counts``: what the worker counts, failures
    (each failed attempt and each recovery after a crash or a timeout, counted once),
    claims (each claim) or returns (each time the job goes back to the queue, by its
    holder or by a recovery, counted in that same write: a queue whose every put-back is
    a retry)."""

    column: str
    limit: int
    counts: str = "failures"
    # Columns whose change is progress (the stage column, a cursor): a worker that gives
    # each step a fresh budget writes the count back to 0 in the same write.
    resets_on: Sequence[str] = ()
    # A failure the holder counts puts the job off: the write that puts it back sets the
    # due column later than the write's own time (a backoff, a Retry-After). Needs the
    # spec's due column.
    backs_off: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.resets_on, str):
            raise SpecError(
                f"attempts.resets_on must be a list of columns, got the string "
                f"{self.resets_on!r}; write [{self.resets_on!r}]"
            )
        object.__setattr__(self, "resets_on", tuple(self.resets_on))
        if self.limit < 1:
            raise SpecError(f"attempts.limit must be at least 1, got {self.limit}")
        if self.counts not in ("failures", "claims", "returns"):
            raise SpecError(
                f"attempts.counts must be 'failures', 'claims' or 'returns', got {self.counts!r}"
            )


@dataclass(frozen=True)
class Spec:
    """A declared system: its job table and the meaning of its columns."""

    table: str  # schema-qualified: "jobs" means the search_path's first schema
    states: States
    holder: Holder = field(default_factory=lambda: Holder(HolderModel.ROW_LOCK))
    id: str = "id"
    state: str = "state"
    attempts: Attempts | None = None
    due: str | None = None
    stage: str | None = None
    stages: Sequence[str] = ()
    # Allowed stage moves; by default each stage to the next one.
    stage_moves: Sequence[tuple[str, str]] | None = None
    finished: Finished | str = Finished.KEPT
    finished_table: str | None = None
    # State moves allowed beyond the lifecycle every queue shares (claim, progress,
    # retry, finish, recovery): an operator's retry of a failed job, a cancellation.
    extra_moves: Sequence[tuple[str, str]] = ()
    # A job claimed more than this many times is a poison job nobody stops (used when
    # no attempts column is declared).
    max_deliveries: int = 10
    # What a job's handler does to the world (the HTTP calls its worker makes while it
    # holds the job): "at_least_once" (every succeeded job did it) or "exactly_once"
    # (and never twice); None: not checked.
    effects: str | None = None
    # Claims pass by a job row another session has locked (FOR UPDATE SKIP LOCKED):
    # declared, the machine draws a session that locks a claimable job and keeps it (an
    # operator's query, a claimer half-way through), and a worker that waits on it is a
    # finding (claims_skip_locks).
    skips_locked: bool = False
    _meaning_of: dict[str, Meaning] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        schema, _, name = self.table.rpartition(".")
        for part in filter(None, (schema, name)):
            if not _IDENTIFIER.match(part):
                raise SpecError(
                    f"table {self.table!r}: {part!r} is not a plain SQL identifier "
                    "(letters, digits, underscores)"
                )
        for role, column in self.columns().items():
            if not _IDENTIFIER.match(column):
                raise SpecError(f"{role} column {column!r} is not a plain SQL identifier")
        try:
            object.__setattr__(self, "finished", Finished(self.finished))
        except ValueError:
            raise SpecError(
                f"finished {self.finished!r} is not one of {', '.join(f.value for f in Finished)}"
            ) from None
        if (self.finished is Finished.MOVED) != bool(self.finished_table):
            raise SpecError("finished = 'moved' and finished_table go together: name the log table")
        meanings = self.states.by_value()
        object.__setattr__(self, "_meaning_of", meanings)
        for old, new in self.extra_moves:
            for value in (old, new):
                if value not in meanings:
                    raise SpecError(
                        f"extra_moves: {value!r} is not a declared state; the states are "
                        f"{', '.join(meanings)}"
                    )
        object.__setattr__(self, "extra_moves", tuple(tuple(m) for m in self.extra_moves))
        object.__setattr__(self, "stages", tuple(self.stages))
        if bool(self.stage) != bool(self.stages):
            raise SpecError("stage and stages go together: name the column and its stages in order")
        if self.stage_moves is None:
            moves = tuple(zip(self.stages, self.stages[1:], strict=False))
        else:
            moves = tuple(tuple(m) for m in self.stage_moves)  # type: ignore[misc]
            for old, new in moves:
                for value in (old, new):
                    if value not in self.stages:
                        raise SpecError(
                            f"stage_moves: {value!r} is not one of the stages "
                            f"{', '.join(self.stages)}"
                        )
        object.__setattr__(self, "stage_moves", moves)
        if self.effects not in (None, "at_least_once", "exactly_once"):
            raise SpecError(
                f"effects {self.effects!r} is not one of at_least_once, exactly_once "
                "(or leave it out)"
            )
        if self.max_deliveries < 1:
            raise SpecError(f"max_deliveries must be at least 1, got {self.max_deliveries}")
        if self.attempts is not None and self.attempts.backs_off and not self.due:
            raise SpecError(
                "attempts.backs_off needs the due column: name it (due = ...), the column "
                "a put-back job waits for"
            )

    # -- reading -----------------------------------------------------------------------

    def columns(self) -> dict[str, str]:
        """Every column the checker reads, by its role."""
        columns = {"id": self.id, "state": self.state}
        if self.holder.column:
            columns["holder"] = self.holder.column
        if self.attempts is not None:
            columns["attempts"] = self.attempts.column
            for column in self.attempts.resets_on:
                columns[f"attempts.resets_on {column}"] = column
        if self.due:
            columns["due"] = self.due
        if self.stage:
            columns["stage"] = self.stage
        return columns

    def meaning(self, value: str | None) -> Meaning | None:
        """What a state value means (None for an unknown value or a missing row)."""
        if value is None:
            return None
        return self._meaning_of.get(value)

    @property
    def delivery_limit(self) -> int:
        """How many claims of one job the checker tolerates before calling it endless."""
        return self.attempts.limit + 1 if self.attempts is not None else self.max_deliveries

    # -- writing -----------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, where: str = "the spec") -> Spec:
        """A spec from parsed TOML (or any mapping of the same shape)."""
        known = {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SpecError(
                f"{where}: unknown key(s) {', '.join(unknown)}; "
                f"the keys are {', '.join(sorted(known))}"
            )
        if "table" not in values or "states" not in values:
            raise SpecError(f"{where}: 'table' and '[states]' are required")
        arguments = dict(values)
        arguments["states"] = _build(States, values["states"], f"{where} [states]")
        if "holder" in values:
            arguments["holder"] = _build(Holder, values["holder"], f"{where} [holder]")
        if "attempts" in values:
            arguments["attempts"] = _build(Attempts, values["attempts"], f"{where} [attempts]")
        return cls(**arguments)

    @classmethod
    def from_toml(cls, path: str | Path) -> Spec:
        """A spec from a TOML file: its ``[tool.pipeline-models]`` table (a pyproject) or,
        in a file of its own, the whole file."""
        path = Path(path)
        try:
            document = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise SpecError(f"no spec file at {path}") from None
        except tomllib.TOMLDecodeError as error:
            raise SpecError(f"{path} is not valid TOML: {error}") from None
        values: Any = document
        for key in TOML_TABLE:
            if isinstance(values, dict) and key in values:
                values = values[key]
            else:
                values = document
                break
        if path.name == "pyproject.toml" and values is document:
            raise SpecError(f"{path} has no [tool.pipeline-models] table")
        return cls.from_mapping(values, where=str(path))


def _build(kind: type[Any], values: Any, where: str) -> Any:
    if not isinstance(values, Mapping):
        raise SpecError(f"{where} must be a table")
    known = set(kind.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise SpecError(
            f"{where}: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(sorted(known))}"
        )
    try:
        return kind(**values)
    except TypeError as error:
        raise SpecError(f"{where}: {error}") from None


def quote_table(table: str) -> str:
    """``schema.name`` as a quoted SQL name (the spec checked it is plain).

    >>> quote_table("guide.jobs")
    '"guide"."jobs"'
    """
    return ".".join(f'"{part}"' for part in table.split("."))


def state_values(spec: Spec, meanings: Iterable[Meaning]) -> list[str]:
    wanted = set(meanings)
    return [value for value, meaning in spec._meaning_of.items() if meaning in wanted]


__all__ = [
    "TERMINAL",
    "Attempts",
    "Finished",
    "Holder",
    "HolderModel",
    "Meaning",
    "Spec",
    "SpecError",
    "States",
    "quote_table",
    "state_values",
]

"""The job lifecycle as data: nine stages, five states and the allowed changes.

Everything else derives from this module: the CHECK constraints of the schema, the
worker's stage order, and the checker's transition invariant. Nothing here does I/O.

>>> next_stage(Stage.PARSING)
<Stage.PARSED: 'parsed'>
>>> is_allowed(Position(Stage.PARSING, State.WORKING), Position(Stage.PARSED, State.QUEUED))
True
>>> is_allowed(Position(Stage.PARSED, State.QUEUED), Position(Stage.PARSING, State.QUEUED))
False
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple


class Stage(StrEnum):
    """Where a job is in the pipeline; stages only move forward, one at a time."""

    QUEUED = "queued"
    JOB_VALIDATED = "job_validated"
    PARSING = "parsing"
    PARSED = "parsed"
    PARSE_VALIDATED = "parse_validated"
    CHUNKING = "chunking"
    CHUNKS_BUFFERED = "chunks_buffered"
    EMBEDDING = "embedding"
    EMBEDDED = "embedded"


class State(StrEnum):
    """What is happening to a job at its stage."""

    QUEUED = "queued"  # claimable once next_attempt_at <= now
    WORKING = "working"  # leased by one worker until lease_expires_at
    RETRYABLE = "retryable"  # transient failure, waiting for its backoff
    DONE = "done"  # terminal success, only at the last stage
    DEADLETTER = "deadletter"  # terminal failure, carries last_error


STAGES: tuple[Stage, ...] = tuple(Stage)
FIRST_STAGE = Stage.QUEUED
LAST_STAGE = Stage.EMBEDDED

LIVE_STATES = frozenset({State.QUEUED, State.WORKING, State.RETRYABLE})
CLAIMABLE_STATES = frozenset({State.QUEUED, State.RETRYABLE})
TERMINAL_STATES = frozenset({State.DONE, State.DEADLETTER})

# Stages whose work is split into several claims: one batch (or one poll) per claim.
REPEATING_STAGES = frozenset({Stage.PARSING, Stage.CHUNKING, Stage.EMBEDDING})

# Stages whose step makes a billed external call (the parser's upload, an embeddings
# batch): the only stages a spending budget can hold a job at.
BILLED_STAGES = frozenset({Stage.JOB_VALIDATED, Stage.EMBEDDING})

# The reason a queued job waits for an operator rather than for its due time
# (``upload_jobs.held_for``); the claim skips held jobs.
BUDGET_HOLD = "budget"


class Position(NamedTuple):
    """A job's (stage, state): the unit the transition table talks about."""

    stage: Stage
    state: State


class TransitionKind(StrEnum):
    CREATE = "create"
    CLAIM = "claim"
    RENEW = "renew"
    RECLAIM = "reclaim"
    ADVANCE = "advance"
    REQUEUE = "requeue"
    FAIL_TRANSIENT = "fail_transient"
    FAIL_PERMANENT = "fail_permanent"
    FINALIZE = "finalize"
    WEBHOOK = "webhook"
    OPERATOR_RETRY = "operator_retry"
    HOLD = "hold"
    RELEASE = "release"


class StageChange(StrEnum):
    SAME = "same"
    NEXT = "next"
    FIRST = "first"  # only for CREATE


@dataclass(frozen=True)
class Transition:
    """One allowed kind of change of a job row, with the guard that must hold.

    ``from_states`` empty means "no row before" (an insert). ``held`` is the row's hold
    (``held_for``) before and after: every transition but a hold and its release keeps a
    job unheld, so a claim of a held job is a violation, not a claim.
    """

    kind: TransitionKind
    from_stages: frozenset[Stage]
    from_states: frozenset[State]
    stage_change: StageChange
    to_state: State
    guard: str
    held: tuple[str | None, str | None] = (None, None)

    def matches(self, old: Position | None, new: Position) -> bool:
        if old is None:
            return (
                not self.from_states
                and self.target_stage(None) == new.stage
                and (new.state == self.to_state)
            )
        if old.stage not in self.from_stages or old.state not in self.from_states:
            return False
        return new.state == self.to_state and new.stage == self.target_stage(old.stage)

    def target_stage(self, stage: Stage | None) -> Stage | None:
        if self.stage_change is StageChange.FIRST:
            return FIRST_STAGE
        if stage is None:
            return None
        if self.stage_change is StageChange.SAME:
            return stage
        return next_stage(stage)


_ALL = frozenset(STAGES)
_ADVANCING = frozenset(s for s in STAGES if s is not LAST_STAGE)

TRANSITIONS: tuple[Transition, ...] = (
    Transition(
        TransitionKind.CREATE,
        frozenset(),
        frozenset(),
        StageChange.FIRST,
        State.QUEUED,
        "an accepted upload, in the same transaction as its document",
    ),
    Transition(
        TransitionKind.CLAIM,
        _ALL,
        CLAIMABLE_STATES,
        StageChange.SAME,
        State.WORKING,
        "due time reached; sets owner and lease",
    ),
    Transition(
        TransitionKind.RENEW,
        _ALL,
        frozenset({State.WORKING}),
        StageChange.SAME,
        State.WORKING,
        "same owner, lease still live; only the lease moves",
    ),
    Transition(
        TransitionKind.RECLAIM,
        _ALL,
        frozenset({State.WORKING}),
        StageChange.SAME,
        State.WORKING,
        "new owner, only after the old lease expired; retry_count + 1",
    ),
    Transition(
        TransitionKind.ADVANCE,
        _ADVANCING,
        frozenset({State.WORKING}),
        StageChange.NEXT,
        State.QUEUED,
        "stage done, by the current owner with a live lease",
    ),
    Transition(
        TransitionKind.REQUEUE,
        _ALL,
        frozenset({State.WORKING}),
        StageChange.SAME,
        State.QUEUED,
        "a batch done, the parser still pending, a service deferred, or the lease released",
    ),
    Transition(
        TransitionKind.FAIL_TRANSIENT,
        _ALL,
        frozenset({State.WORKING}),
        StageChange.SAME,
        State.RETRYABLE,
        "transient failure by the owner; retry_count + 1; backoff",
    ),
    Transition(
        TransitionKind.FAIL_PERMANENT,
        _ALL,
        frozenset({State.WORKING}),
        StageChange.SAME,
        State.DEADLETTER,
        "permanent failure or retries exhausted; last_error set",
    ),
    Transition(
        TransitionKind.FINALIZE,
        frozenset({LAST_STAGE}),
        frozenset({State.WORKING}),
        StageChange.SAME,
        State.DONE,
        "buffers promoted in the same transaction, by the owner with a live lease",
    ),
    Transition(
        TransitionKind.WEBHOOK,
        frozenset({Stage.PARSING}),
        LIVE_STATES,
        StageChange.NEXT,
        State.QUEUED,
        "a verified parser webhook, accepted once",
    ),
    Transition(
        TransitionKind.OPERATOR_RETRY,
        _ALL,
        frozenset({State.DEADLETTER}),
        StageChange.SAME,
        State.QUEUED,
        "an operator retry through the API; retry_count reset",
    ),
    Transition(
        TransitionKind.HOLD,
        BILLED_STAGES,
        frozenset({State.WORKING}),
        StageChange.SAME,
        State.QUEUED,
        "the budget cannot cover the next billed call: by the owner with a live lease, "
        "held_for set, retry_count unchanged",
        held=(None, BUDGET_HOLD),
    ),
    Transition(
        TransitionKind.RELEASE,
        BILLED_STAGES,
        frozenset({State.QUEUED}),
        StageChange.SAME,
        State.QUEUED,
        "the budget was raised: an operator (not a worker) clears held_for",
        held=(BUDGET_HOLD, None),
    ),
)


def next_stage(stage: Stage) -> Stage | None:
    """The stage after ``stage``, or None after the last one."""
    index = STAGES.index(stage)
    return STAGES[index + 1] if index + 1 < len(STAGES) else None


def stage_index(stage: Stage) -> int:
    return STAGES.index(stage)


def is_terminal(state: State) -> bool:
    """Done and dead-lettered jobs wait for nothing (an operator may revive a dead letter)."""
    return state in TERMINAL_STATES


def transitions_between(old: Position | None, new: Position) -> tuple[Transition, ...]:
    """Every transition kind that could explain a change from ``old`` to ``new``."""
    return tuple(t for t in TRANSITIONS if t.matches(old, new))


def is_allowed(old: Position | None, new: Position) -> bool:
    """Whether a job row may change from ``old`` to ``new`` (None: no row before)."""
    return bool(transitions_between(old, new))


def successors(position: Position) -> frozenset[Position]:
    """Every position one allowed change away from ``position``."""
    found: set[Position] = set()
    for transition in TRANSITIONS:
        if position.stage not in transition.from_stages:
            continue
        if position.state not in transition.from_states:
            continue
        target = transition.target_stage(position.stage)
        if target is not None:
            found.add(Position(target, transition.to_state))
    return frozenset(found)


def reachable(start: Position) -> frozenset[Position]:
    """Every position reachable from ``start`` through allowed changes (start included)."""
    seen = {start}
    frontier = deque([start])
    while frontier:
        for successor in successors(frontier.popleft()):
            if successor not in seen:
                seen.add(successor)
                frontier.append(successor)
    return frozenset(seen)


def positions() -> frozenset[Position]:
    """Every position a job can ever hold."""
    return reachable(Position(FIRST_STAGE, State.QUEUED))


def stages_allowing(state: State) -> tuple[Stage, ...]:
    """The stages at which a job can be in ``state``, in stage order."""
    held = {p.stage for p in positions() if p.state is state}
    return tuple(s for s in STAGES if s in held)


DONE = Position(LAST_STAGE, State.DONE)

__all__ = [
    "BILLED_STAGES",
    "BUDGET_HOLD",
    "CLAIMABLE_STATES",
    "DONE",
    "FIRST_STAGE",
    "LAST_STAGE",
    "LIVE_STATES",
    "REPEATING_STAGES",
    "STAGES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Position",
    "Stage",
    "StageChange",
    "State",
    "Transition",
    "TransitionKind",
    "is_allowed",
    "is_terminal",
    "next_stage",
    "positions",
    "reachable",
    "stage_index",
    "stages_allowing",
    "successors",
    "transitions_between",
]

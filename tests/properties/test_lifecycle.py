from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline_models.lifecycle import (
    CLAIMABLE_STATES,
    DONE,
    LIVE_STATES,
    STAGES,
    TRANSITIONS,
    Position,
    Stage,
    State,
    TransitionKind,
    is_allowed,
    is_terminal,
    next_stage,
    positions,
    reachable,
    stage_index,
    stages_allowing,
    successors,
    transitions_between,
)

stages = st.sampled_from(STAGES)
states = st.sampled_from(list(State))
held_positions = st.sampled_from(sorted(positions()))


def test_there_are_nine_stages_in_the_documented_order() -> None:
    assert [s.value for s in STAGES] == [
        "queued",
        "job_validated",
        "parsing",
        "parsed",
        "parse_validated",
        "chunking",
        "chunks_buffered",
        "embedding",
        "embedded",
    ]


@given(held_positions)
def test_every_live_position_can_reach_done(position: Position) -> None:
    if position.state in LIVE_STATES:
        assert DONE in reachable(position)


def test_nothing_leaves_done() -> None:
    assert successors(DONE) == frozenset()
    assert is_terminal(State.DONE)


@given(held_positions, held_positions)
def test_stages_never_go_backwards_and_never_skip(old: Position, new: Position) -> None:
    if is_allowed(old, new):
        assert stage_index(new.stage) - stage_index(old.stage) in (0, 1)


@given(held_positions)
def test_a_deadletter_leaves_only_through_an_operator_retry(position: Position) -> None:
    if position.state is State.DEADLETTER:
        for successor in successors(position):
            kinds = {t.kind for t in transitions_between(position, successor)}
            assert kinds == {TransitionKind.OPERATOR_RETRY}
            assert successor == Position(position.stage, State.QUEUED)


@given(stages, states, stages, states)
def test_allowed_agrees_with_the_successor_relation(a: Stage, x: State, b: Stage, y: State) -> None:
    assert is_allowed(Position(a, x), Position(b, y)) == (
        Position(b, y) in successors(Position(a, x))
    )


def test_done_is_held_only_at_the_last_stage() -> None:
    assert stages_allowing(State.DONE) == (Stage.EMBEDDED,)


def test_jobs_are_created_queued_at_the_first_stage_only() -> None:
    assert is_allowed(None, Position(Stage.QUEUED, State.QUEUED))
    assert not is_allowed(None, Position(Stage.PARSING, State.QUEUED))
    assert not is_allowed(None, Position(Stage.QUEUED, State.WORKING))


def test_only_the_webhook_advances_a_job_that_is_not_working() -> None:
    for transition in TRANSITIONS:
        if transition.stage_change.value == "next" and transition.from_states - {State.WORKING}:
            assert transition.kind is TransitionKind.WEBHOOK


def test_claims_start_from_queued_or_retryable() -> None:
    (claim,) = [t for t in TRANSITIONS if t.kind is TransitionKind.CLAIM]
    assert claim.from_states == CLAIMABLE_STATES == {State.QUEUED, State.RETRYABLE}


def test_next_stage_walks_the_pipeline_and_stops_at_the_end() -> None:
    walked = [Stage.QUEUED]
    while (following := next_stage(walked[-1])) is not None:
        walked.append(following)
    assert tuple(walked) == STAGES


def test_every_position_is_reachable_from_creation() -> None:
    held = positions()
    # Every stage can be live in every live state, and dead-lettered.
    for stage in STAGES:
        for state in (*LIVE_STATES, State.DEADLETTER):
            assert Position(stage, state) in held
    assert DONE in held

"""Each boundary the machines draw on purpose is drawn within the ci profile's budget.

Every test runs a strategy the way the ci profile runs the machines (derandomized, its
``max_examples``) and asserts that the boundary value appears among the draws: remove
the boundary from its strategy and the test fails.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from pipeline_models.documents import Document
from pipeline_models.drivers import API_MAX_UPLOAD_BYTES, CHECK_CONFIG
from pipeline_models.fakes import Fault, FaultKind
from pipeline_models.fakes.faults import retry_after_header
from pipeline_models.fakes.parsing import parse_document
from pipeline_models.lifecycle import Stage, State
from pipeline_models.model import expected_outcome
from pipeline_models.pipeline import inputs
from pipeline_models.pipeline.inputs import MULTIPART_OVERHEAD
from pipeline_models.pipeline.services import retry_after_seconds
from pipeline_models.pipeline.webhooks import DEFAULT_TOLERANCE_SECONDS
from pipeline_models.profiles import PROFILES
from strategies import boundary_faults
from strategies._boundaries import (
    RATE_LIMIT_VARIANTS,
    TEXTLESS_DOCUMENTS,
    boundaries,
    chunk_count_documents,
    clock_edges,
    clock_steps,
    size_limit_documents,
    size_limit_sizes,
    unbroken_documents,
)

CI_BUDGET = PROFILES["ci"]["max_examples"]
BATCHES = (CHECK_CONFIG.chunk_batch_size, CHECK_CONFIG.embed_batch_size)
LIMIT = CHECK_CONFIG.max_upload_bytes
RETRY_LIMIT = CHECK_CONFIG.retry.limit
THRESHOLD = CHECK_CONFIG.circuit_failure_threshold


def drawn(strategy: SearchStrategy[Any], key: Callable[[Any], Hashable]) -> set[Hashable]:
    """What ``strategy`` draws in a run of the ci profile's budget (as ``key``)."""
    seen: set[Hashable] = set()

    @settings(
        max_examples=CI_BUDGET,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(value: Any) -> None:
        seen.add(key(value))

    run()
    return seen


def chunks_of(document: Document) -> int:
    """How many chunks the pipeline cuts: the fake parser's text, CHECK_CONFIG's chunker."""
    if not document.data.strip():
        return 0
    markdown = parse_document(document.data, filename=document.filename).markdown
    return len(CHECK_CONFIG.chunker.split(markdown))


# -- documents ------------------------------------------------------------------------

CHUNK_COUNTS = boundaries(*BATCHES, low=1, high=8)


def test_the_chunk_counts_are_the_batch_boundaries() -> None:
    assert CHUNK_COUNTS == (1, 2, 3, 4, 5)  # 1, a batch (2) and either side, two batches, +1


@pytest.mark.parametrize("count", CHUNK_COUNTS)
def test_a_document_of_each_boundary_chunk_count_is_drawn(count: int) -> None:
    strategy = chunk_count_documents(chunker=CHECK_CONFIG.chunker, batches=BATCHES)
    assert count in drawn(strategy, chunks_of)


SIZES = size_limit_sizes(
    limits=[LIMIT, API_MAX_UPLOAD_BYTES], sizes=[API_MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD + 1]
)


def test_the_sizes_are_each_limit_either_side_and_past_the_multipart_allowance() -> None:
    assert SIZES == (2047, 2048, 2049, 4095, 4096, 4097, 4096 + 65536 + 1)


@pytest.mark.parametrize("size", SIZES)
def test_a_document_at_each_size_limit_and_either_side_is_drawn(size: int) -> None:
    strategy = size_limit_documents(
        limits=[LIMIT, API_MAX_UPLOAD_BYTES], sizes=[API_MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD + 1]
    )
    assert size in drawn(strategy, lambda d: d.size)


def test_the_model_refuses_only_the_document_over_the_limit() -> None:
    import uuid

    for size, dead in ((LIMIT, False), (LIMIT + 1, True)):
        document = next(
            d for d in _all_drawn(size_limit_documents(limits=[LIMIT])) if d.size == size
        )
        outcome = expected_outcome(uuid.uuid4(), document, config=CHECK_CONFIG)
        assert (outcome.state is State.DEADLETTER and outcome.stage is Stage.QUEUED) is dead


def _all_drawn(strategy: SearchStrategy[Document]) -> list[Document]:
    found: list[Document] = []
    drawn(strategy, lambda d: found.append(d) or d.size)
    return found


UNBROKEN = boundaries(
    CHECK_CONFIG.chunker.max_chars,
    low=CHECK_CONFIG.chunker.max_chars - 1,
    high=2 * CHECK_CONFIG.chunker.max_chars + 1,
)


@pytest.mark.parametrize("length", UNBROKEN)
def test_a_word_at_each_hard_cut_boundary_is_drawn(length: int) -> None:
    assert length in drawn(unbroken_documents(chunker=CHECK_CONFIG.chunker), lambda d: d.size)


@pytest.mark.parametrize("document", TEXTLESS_DOCUMENTS, ids=lambda d: repr(d.data))
def test_no_byte_no_text_and_one_byte_are_drawn(document: Document) -> None:
    assert document.data in drawn(st.sampled_from(TEXTLESS_DOCUMENTS), lambda d: d.data)


FAMILIES = {
    "chunks.md": "chunk counts",
    "empty.txt": "textless",
    "blank.md": "textless",
    "one.md": "textless",
    "unbroken.md": "hard cuts",
    "at-the-limit.md": "size limit",
}


@pytest.mark.parametrize("family", sorted(set(FAMILIES.values())))
def test_the_machine_draws_each_kind_of_boundary_upload(family: str) -> None:
    assert family in drawn(inputs.BOUNDARY_DOCUMENTS, lambda d: FAMILIES[d.filename])


def test_the_machine_uploads_pdfs() -> None:
    assert "application/pdf" in drawn(inputs.UPLOADS, lambda d: d.content_type)


def test_a_blank_document_has_no_chunk_and_is_predicted_dead() -> None:
    import uuid

    blank = next(d for d in TEXTLESS_DOCUMENTS if d.filename == "blank.md")
    assert chunks_of(blank) == 0
    outcome = expected_outcome(uuid.uuid4(), blank, config=CHECK_CONFIG)
    assert outcome.state is State.DEADLETTER


# -- faults ---------------------------------------------------------------------------

EVERY_FAULT = [
    *RATE_LIMIT_VARIANTS,
    *(Fault.server_error(status) for status in (500, 502, 503, 504)),
    Fault.timeout(),
    Fault.connection_error(),
    Fault.malformed_body(),
    *(Fault.permanent(status) for status in (400, 401, 403, 404, 413, 422)),
    Fault.wrong_dimension(),
]


@pytest.mark.parametrize("fault", EVERY_FAULT, ids=repr)
def test_each_fault_kind_in_each_variant_is_drawn(fault: Fault) -> None:
    assert fault in drawn(boundary_faults(wrong_dimension=True), lambda f: f)


def test_the_retry_after_variants_are_absent_zero_seconds_ahead_and_past() -> None:
    headers = [
        None
        if f.retry_after is None
        else retry_after_header(f.retry_after, as_date=f.retry_after_date)
        for f in RATE_LIMIT_VARIANTS
    ]
    waits = [retry_after_seconds(header) for header in headers]
    assert waits[0] is None  # absent
    assert waits[1] == 0.0  # zero
    assert waits[-2] is not None
    assert 40 < waits[-2] <= 45  # a date ahead
    assert waits[-1] == 0.0  # a date already past is "now"
    assert headers[-1] is not None
    assert headers[-1].endswith(" GMT")


@pytest.mark.parametrize("length", sorted({RETRY_LIMIT, RETRY_LIMIT + 1, THRESHOLD, THRESHOLD + 1}))
@pytest.mark.parametrize("service", ["parser", "embeddings"])
def test_unbroken_fault_runs_of_the_retry_limit_and_the_circuit_threshold_are_drawn(
    length: int, service: str
) -> None:
    plans = inputs.PARSER_FAULT_PLANS if service == "parser" else inputs.EMBEDDINGS_FAULT_PLANS
    # An unbroken run: no healthy request between the faults, so failures are consecutive.
    runs = drawn(plans, lambda p: len(p.script) if None not in p.script else 0)
    assert length in runs


def test_a_run_of_one_transient_fault_long_enough_to_open_the_circuit_is_drawn() -> None:
    transient = {FaultKind.RATE_LIMIT, FaultKind.SERVER_ERROR, FaultKind.TIMEOUT}

    def trips(plan: Any) -> bool:
        script = plan.script
        return (
            len(script) >= THRESHOLD
            and None not in script
            and len(set(script)) == 1
            and script[0].kind in transient
        )

    assert True in drawn(inputs.PARSER_FAULT_PLANS, trips)


@pytest.mark.parametrize("service", ["parser", "embeddings"])
def test_an_outage_of_a_transient_fault_is_drawn(service: str) -> None:
    plans = inputs.PARSER_FAULT_PLANS if service == "parser" else inputs.EMBEDDINGS_FAULT_PLANS
    transient = {FaultKind.RATE_LIMIT, FaultKind.SERVER_ERROR, FaultKind.TIMEOUT}

    def outage(plan: Any) -> bool:
        return plan.repeat and plan.script[0] is not None and plan.script[0].kind in transient

    assert True in drawn(plans, outage)


# -- time -----------------------------------------------------------------------------

EDGES = clock_edges(
    CHECK_CONFIG.lease_seconds,
    [CHECK_CONFIG.retry.backoff_seconds(n) for n in range(RETRY_LIMIT + 1)],
    CHECK_CONFIG.circuit_reset_seconds,
    CHECK_CONFIG.parser_poll_seconds,
    DEFAULT_TOLERANCE_SECONDS,
)


def test_the_clock_edges_are_each_duration_and_a_second_less() -> None:
    assert EDGES == (1, 2, 3, 5, 6, 11, 12, 29, 30, 299, 300)


@pytest.mark.parametrize("seconds", EDGES)
def test_each_clock_edge_is_drawn(seconds: int) -> None:
    strategy = clock_steps(
        lease_seconds=CHECK_CONFIG.lease_seconds,
        backoff_seconds=[CHECK_CONFIG.retry.backoff_seconds(n) for n in range(RETRY_LIMIT + 1)],
        circuit_reset_seconds=CHECK_CONFIG.circuit_reset_seconds,
        poll_seconds=CHECK_CONFIG.parser_poll_seconds,
        webhook_tolerance_seconds=DEFAULT_TOLERANCE_SECONDS,
    )
    assert seconds in drawn(strategy, lambda s: s)


@pytest.mark.parametrize("seconds", [29, 299, 300])
def test_the_machine_moves_the_clock_to_the_edges_the_old_steps_missed(seconds: int) -> None:
    assert seconds not in inputs.CLOCK_STEPS
    assert seconds in drawn(inputs.CLOCK_ADVANCES, lambda s: s)

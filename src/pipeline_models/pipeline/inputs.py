"""What the machines send the reference pipeline, at the edges of what its configuration
names: both the pipeline machine and the reference's adapter on the checker core draw
from here, so that a boundary one reaches the other reaches too.

Documents of exactly 0, 1, a batch, a batch +- 1 and two batches of chunks, at the size
limit and either side of it (strategies/_boundaries.py); fault runs as long as the retry
limit and the circuit's threshold; clock steps at the lease, the backoffs, the circuit's
reset, the poll and the webhook tolerance, and a second before each.
"""

from __future__ import annotations

from decimal import Decimal

from hypothesis import strategies as st

from pipeline_models.documents import DocumentKind
from pipeline_models.drivers import API_MAX_UPLOAD_BYTES, CHECK_CONFIG

# The API allows this much over its limit for the multipart framing (a private constant:
# the boundary it sets is what the search must reach).
from pipeline_models.pipeline.api import _MULTIPART_OVERHEAD as MULTIPART_OVERHEAD
from pipeline_models.pipeline.webhooks import DEFAULT_TOLERANCE_SECONDS
from strategies import (
    boundary_documents,
    boundary_fault_plans,
    boundary_faults,
    clock_edges,
    clock_steps,
    documents,
    fault_plans,
    faults,
)

BOUNDARY_DOCUMENTS = boundary_documents(
    chunker=CHECK_CONFIG.chunker,
    batches=(CHECK_CONFIG.chunk_batch_size, CHECK_CONFIG.embed_batch_size),
    max_upload_bytes=(CHECK_CONFIG.max_upload_bytes, API_MAX_UPLOAD_BYTES),
    # Past the API's multipart allowance: refused by the request's Content-Length.
    sizes=(API_MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD + 1,),
)
# Small documents of every kind but PDF (the smallest PDF has 945 bytes), and PDFs up to
# the size limit.
UPLOADS = st.one_of(
    documents(max_size=600),
    documents(kinds=[DocumentKind.PDF], max_size=CHECK_CONFIG.max_upload_bytes),
)
_RETRY_LIMIT = CHECK_CONFIG.retry.limit
_CIRCUIT_THRESHOLD = CHECK_CONFIG.circuit_failure_threshold
PARSER_FAULT_PLANS = st.one_of(
    fault_plans(),
    boundary_fault_plans(retry_limit=_RETRY_LIMIT, circuit_threshold=_CIRCUIT_THRESHOLD),
)
EMBEDDINGS_FAULT_PLANS = st.one_of(
    fault_plans(faults=faults(wrong_dimension=True)),
    boundary_fault_plans(
        retry_limit=_RETRY_LIMIT,
        circuit_threshold=_CIRCUIT_THRESHOLD,
        faults=boundary_faults(wrong_dimension=True),
    ),
)
_DURATIONS = {
    "lease_seconds": CHECK_CONFIG.lease_seconds,
    "backoff_seconds": [
        CHECK_CONFIG.retry.backoff_seconds(count) for count in range(CHECK_CONFIG.retry.limit + 1)
    ],
    "circuit_reset_seconds": CHECK_CONFIG.circuit_reset_seconds,
    "poll_seconds": CHECK_CONFIG.parser_poll_seconds,
    "webhook_tolerance_seconds": DEFAULT_TOLERANCE_SECONDS,
}
# The instants the pipeline's durations run out, and the last ones they have not.
CLOCK_EDGES = clock_edges(**_DURATIONS)  # type: ignore[arg-type]
CLOCK_STEPS = (1, 3, 10, 31, 61, 301)
CLOCK_ADVANCES = st.one_of(st.sampled_from(CLOCK_STEPS), clock_steps(**_DURATIONS))  # type: ignore[arg-type]
# Spending caps an operator may set: none covers a call, one parse page (at the default
# $0.003), a few pages, everything a program uploads.
BUDGET_LIMITS_USD = tuple(Decimal(limit) for limit in ("0", "0.003", "0.012", "1"))

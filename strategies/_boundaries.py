"""Boundary-seeking strategies: inputs at, just below and just above every batch and limit.

A random size almost never lands on an exact multiple of a batch, a fault plan of four
faults never opens a circuit of five, and a random wait is rarely the lease to the
second. These strategies draw such edges on purpose: each mixes an explicit list of
boundary values (``st.sampled_from``, listed first so that shrinking prefers them) with
the whole range around them, so the search still explores in between.

* :func:`boundaries` and :func:`boundary_integers`: 0, 1 and ``k*L - 1``, ``k*L``,
  ``k*L + 1`` for every limit ``L`` (``k`` = 1, 2), within a range;
* :func:`boundary_documents`: uploads with exactly ``n`` chunks for ``n`` at every
  batch boundary, no chunk at all (whitespace only), the empty upload, one byte, words
  at the chunker's bounds (hard cuts), and uploads of the size limit's bytes, one
  fewer and one more;
* :func:`boundary_faults` and :func:`boundary_fault_plans`: every fault kind in every
  variant (a 429 with its Retry-After absent, zero, in seconds, as a date ahead or a
  date already past; each 5xx; each 4xx), in scripts as long as the retry limit and
  the circuit breaker's threshold, one fewer and one more;
* :func:`clock_steps`: waits at the lease, the backoffs, the circuit's reset, the
  parser's poll and the webhook tolerance, one second either side.

>>> boundaries(2, low=0, high=6)
(0, 1, 2, 3, 4, 5)
>>> boundaries(40, 120, low=1, high=130)
(1, 39, 40, 41, 79, 80, 81, 119, 120, 121)
"""

from __future__ import annotations

from collections.abc import Iterable

import hypothesis.strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.strategies import SearchStrategy

from pipeline_models.documents import MARKDOWN_TYPE, TEXT_TYPE, Document, DocumentKind
from pipeline_models.fakes import Fault, FaultPlan
from pipeline_models.pipeline.chunking import Chunker

RATE_LIMIT_VARIANTS: tuple[Fault, ...] = (
    Fault.rate_limit(None),  # no Retry-After: the client's own backoff
    Fault.rate_limit(0.0),  # "retry now"
    Fault.rate_limit(1.0),
    Fault.rate_limit(60.0),  # longer than the backoff
    Fault.rate_limit(45.0, as_date=True),  # an HTTP date ahead
    Fault.rate_limit(-30.0, as_date=True),  # an HTTP date already past: "now", not a wait
)
"""A 429 in each variant of its Retry-After."""

SERVER_ERROR_STATUSES = (500, 502, 503, 504)
PERMANENT_STATUSES = (400, 401, 403, 404, 413, 422)


def boundaries(*limits: int, low: int = 0, high: int, multiples: int = 2) -> tuple[int, ...]:
    """0 and 1, and ``k*L - 1``, ``k*L``, ``k*L + 1`` for each limit ``L`` and ``k`` up to
    ``multiples``, those within ``[low, high]``, sorted."""
    if low > high:
        raise InvalidArgument(f"boundaries(low={low}, high={high}): need low <= high")
    values = {0, 1}
    for limit in limits:
        if limit < 1:
            raise InvalidArgument(f"boundaries: a limit must be at least 1, got {limit}")
        for k in range(1, multiples + 1):
            values.update((k * limit - 1, k * limit, k * limit + 1))
    return tuple(sorted(value for value in values if low <= value <= high))


def boundary_integers(
    *limits: int, low: int = 0, high: int, multiples: int = 2
) -> SearchStrategy[int]:
    """An integer in ``[low, high]``: three times in four a boundary of ``limits`` (see
    :func:`boundaries`), else any value of the range. Shrinks towards the boundaries."""
    edges = boundaries(*limits, low=low, high=high, multiples=multiples)
    return weighted(st.sampled_from(edges), st.integers(low, high))


# -- documents ------------------------------------------------------------------------


def _paragraph(ordinal: int, length: int) -> str:
    """ASCII words, no blank line inside, ``length`` characters with the closing "\\n\\n"."""
    words = f"Chunk {ordinal} of a boundary document, words and more words " * (length // 40 + 1)
    return words[: length - 2].rstrip().ljust(length - 2, "w") + "\n\n"


def chunked_texts(*, chunker: Chunker, counts: SearchStrategy[int]) -> SearchStrategy[str]:
    """Markdown texts that ``chunker`` cuts into exactly ``n`` chunks, ``n`` drawn from
    ``counts``: ``n`` paragraphs, each longer than half a chunk and at most a chunk (so
    no two share a chunk and none is cut)."""
    shortest = chunker.max_chars // 2 + 1
    if shortest < chunker.min_chars or shortest < 3:
        raise InvalidArgument(
            f"chunked_texts: {chunker!r} leaves no paragraph length that is one chunk"
        )
    lengths = st.integers(shortest, chunker.max_chars)

    @st.composite
    def texts(draw: st.DrawFn) -> str:
        # One length for every paragraph: the count is what matters, and few choices
        # let Hypothesis tell its draws apart (and so try every count) sooner.
        count = draw(counts)
        length = draw(lengths)
        return "".join(_paragraph(ordinal, length) for ordinal in range(count))

    return texts()


def _sized(size: int) -> Document:
    """A markdown upload of exactly ``size`` bytes of paragraphs."""
    unit = "".join(_paragraph(ordinal, 90) for ordinal in range(4)).encode()
    data = (unit * (size // len(unit) + 1))[:size]
    return Document("at-the-limit.md", MARKDOWN_TYPE, data, DocumentKind.MARKDOWN)


def chunk_count_documents(
    *, chunker: Chunker, batches: Iterable[int], max_chunks: int = 8
) -> SearchStrategy[Document]:
    """Markdown uploads of exactly ``n`` chunks, ``n`` at the boundaries of ``batches``
    (1, a batch, one fewer and one more, two batches, ...) three times in four."""
    counts = boundary_integers(*tuple(batches), low=1, high=max_chunks)
    return chunked_texts(chunker=chunker, counts=counts).map(
        lambda text: Document("chunks.md", MARKDOWN_TYPE, text.encode(), DocumentKind.MARKDOWN)
    )


def unbroken_documents(*, chunker: Chunker) -> SearchStrategy[Document]:
    """One word with no whitespace, so the chunker cuts hard: a chunk long, one character
    shorter or longer, two chunks long and either side, three times in four."""
    edges = boundaries(chunker.max_chars, low=chunker.max_chars - 1, high=2 * chunker.max_chars + 1)
    lengths = weighted(st.sampled_from(edges), st.integers(1, 2 * chunker.max_chars + 1))
    return lengths.map(
        lambda n: Document("unbroken.md", MARKDOWN_TYPE, b"x" * n, DocumentKind.MARKDOWN)
    )


def size_limit_documents(
    *, limits: Iterable[int], sizes: Iterable[int] = ()
) -> SearchStrategy[Document]:
    """Markdown uploads of each size limit's bytes, one fewer and one more, and of
    ``sizes`` besides (a limit that counts more than the file, such as a request's).

    >>> sorted(size_limit_sizes(limits=[10, 20], sizes=[99]))
    [9, 10, 11, 19, 20, 21, 99]
    """
    return st.sampled_from(size_limit_sizes(limits=limits, sizes=sizes)).map(_sized)


def size_limit_sizes(*, limits: Iterable[int], sizes: Iterable[int] = ()) -> tuple[int, ...]:
    """The sizes :func:`size_limit_documents` draws."""
    edges = {limit + delta for limit in limits for delta in (-1, 0, 1)} | set(sizes)
    return tuple(sorted(size for size in edges if size >= 1))


TEXTLESS_DOCUMENTS: tuple[Document, ...] = (
    Document("empty.txt", TEXT_TYPE, b"", DocumentKind.EMPTY),
    Document("blank.md", MARKDOWN_TYPE, b" \t\n\n \n", DocumentKind.MARKDOWN),
    Document("one.md", MARKDOWN_TYPE, b"x", DocumentKind.MARKDOWN),
)
"""No byte, no text (whitespace only: no chunk), and one byte."""


def boundary_documents(
    *,
    chunker: Chunker,
    batches: Iterable[int],
    max_upload_bytes: Iterable[int],
    max_chunks: int = 8,
    sizes: Iterable[int] = (),
) -> SearchStrategy[Document]:
    """Uploads at the edges of the pipeline's batches and limits (see the module):
    ``max_upload_bytes`` are the size limits (the worker's, the API's), ``sizes`` more
    sizes to draw (see :func:`size_limit_documents`)."""
    return st.one_of(
        chunk_count_documents(chunker=chunker, batches=batches, max_chunks=max_chunks),
        st.sampled_from(TEXTLESS_DOCUMENTS),
        unbroken_documents(chunker=chunker),
        size_limit_documents(limits=max_upload_bytes, sizes=sizes),
    )


# -- faults ---------------------------------------------------------------------------


def boundary_faults(*, wrong_dimension: bool = False) -> SearchStrategy[Fault]:
    """Every fault kind, in every variant: the 429's Retry-After absent, zero, in seconds,
    a date ahead and a date past; every 5xx and 4xx status; the network faults; and
    (``wrong_dimension``) the embeddings-only wrong dimension."""
    choices: list[Fault] = [
        *RATE_LIMIT_VARIANTS,
        *(Fault.server_error(status) for status in SERVER_ERROR_STATUSES),
        Fault.timeout(),
        Fault.connection_error(),
        Fault.malformed_body(),
        *(Fault.permanent(status) for status in PERMANENT_STATUSES),
    ]
    if wrong_dimension:
        choices.append(Fault.wrong_dimension())
    return st.sampled_from(choices)


def boundary_fault_plans(
    *,
    retry_limit: int,
    circuit_threshold: int,
    faults: SearchStrategy[Fault] | None = None,
) -> SearchStrategy[FaultPlan]:
    """Unbroken runs of faults as long as the retry limit allows attempts (``limit + 1``)
    and the circuit breaker's threshold, one fewer and one more: the same fault again and
    again, or a new one each time; or an outage, one fault on every request until the
    faults heal (``repeat``)."""
    fault = boundary_faults() if faults is None else faults
    lengths = st.sampled_from(
        sorted(
            {
                retry_limit,
                retry_limit + 1,
                retry_limit + 2,
                circuit_threshold - 1,
                circuit_threshold,
                circuit_threshold + 1,
            }
            - {0}
        )
    )
    repeated = st.builds(lambda one, n: FaultPlan([one] * n), fault, lengths)
    varied = lengths.flatmap(lambda n: st.lists(fault, min_size=n, max_size=n)).map(FaultPlan)
    outage = fault.map(lambda one: FaultPlan([one], repeat=True))
    return st.one_of(repeated, varied, outage)


# -- time -----------------------------------------------------------------------------


def clock_steps(
    *,
    lease_seconds: float,
    backoff_seconds: Iterable[float],
    circuit_reset_seconds: float,
    poll_seconds: float,
    webhook_tolerance_seconds: float,
    high: int = 600,
) -> SearchStrategy[int]:
    """Seconds to move the clock: each of the pipeline's durations and one second less
    (the instant a lease, a backoff, a circuit's pause, a poll or a webhook's tolerance
    runs out, and the last instant it has not), three times in four; else any step up to
    ``high``.

    >>> sorted(clock_edges(30, [3, 6], 30, 2, 300))
    [1, 2, 3, 5, 6, 29, 30, 299, 300]
    """
    edges = clock_edges(
        lease_seconds,
        backoff_seconds,
        circuit_reset_seconds,
        poll_seconds,
        webhook_tolerance_seconds,
        high=high,
    )
    return weighted(st.sampled_from(edges), st.integers(1, high))


def clock_edges(
    lease_seconds: float,
    backoff_seconds: Iterable[float],
    circuit_reset_seconds: float,
    poll_seconds: float,
    webhook_tolerance_seconds: float,
    *,
    high: int = 600,
) -> tuple[int, ...]:
    """The clock steps :func:`clock_steps` draws on purpose."""
    durations = [
        lease_seconds,
        *backoff_seconds,
        circuit_reset_seconds,
        poll_seconds,
        webhook_tolerance_seconds,
    ]
    return tuple(
        sorted(
            {int(d) + delta for d in durations for delta in (-1, 0) if 1 <= int(d) + delta <= high}
        )
    )


def weighted(
    edges: SearchStrategy[int], anywhere: SearchStrategy[int], *, times: int = 3
) -> SearchStrategy[int]:
    """``edges`` ``times`` in ``times + 1`` draws, else ``anywhere``: ``st.one_of``
    chooses among its branches alike, so the edges are given more branches."""
    return st.one_of(*([edges] * times), anywhere)


__all__ = [
    "PERMANENT_STATUSES",
    "RATE_LIMIT_VARIANTS",
    "SERVER_ERROR_STATUSES",
    "TEXTLESS_DOCUMENTS",
    "boundaries",
    "boundary_documents",
    "boundary_fault_plans",
    "boundary_faults",
    "boundary_integers",
    "chunk_count_documents",
    "chunked_texts",
    "clock_edges",
    "clock_steps",
    "size_limit_documents",
    "size_limit_sizes",
    "unbroken_documents",
    "weighted",
]

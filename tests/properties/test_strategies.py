"""The strategies make valid values within their bounds, pass Hypothesis's health
checks (these are ordinary @given tests, health checks on), reject bad arguments with
InvalidArgument, and shrink towards simple markdown."""

from __future__ import annotations

import importlib
import inspect
import re
import uuid
from collections.abc import Callable
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import Phase, find, given, settings
from hypothesis.errors import InvalidArgument

import strategies
from pipeline_models.documents import (
    MARKDOWN_TYPE,
    PDF_TYPE,
    TEXT_TYPE,
    Document,
    DocumentKind,
    min_pdf_size,
    pdf_is_readable,
)
from pipeline_models.pipeline.chunking import Chunker
from pipeline_models.users import User
from strategies import distinct_users, documents, large_documents, markdown_texts, users

GENERATE = [Phase.generate]
STRUCTURE = set("#-*+1. \n`\t\xa0\u3000\u2009\u2028\x85")


def size_bounds(*, low: int = 0, high: int = 6_000) -> st.SearchStrategy[tuple[int, int]]:
    pairs = st.tuples(st.integers(low, high), st.integers(low, high))
    return pairs.map(lambda pair: (min(pair), max(pair)))


def check_document(document: Document) -> None:
    """What each kind promises, whatever the bounds."""
    data = document.data
    if document.kind in (DocumentKind.MARKDOWN, DocumentKind.TEXT):
        text = data.decode("utf-8")
        assert text
        assert "\x00" not in text
        assert not data.startswith(b"%PDF-")
        expected = MARKDOWN_TYPE if document.kind is DocumentKind.MARKDOWN else TEXT_TYPE
        assert document.content_type == expected
    elif document.kind is DocumentKind.PDF:
        assert document.content_type == PDF_TYPE
        assert pdf_is_readable(data)
    elif document.kind is DocumentKind.CORRUPT_PDF:
        assert document.content_type == PDF_TYPE
        assert data.startswith(b"%PDF-")
        assert not pdf_is_readable(data)
    elif document.kind is DocumentKind.UNDECODABLE:
        assert document.content_type == TEXT_TYPE
        assert not data.startswith(b"%PDF-")
        with pytest.raises(UnicodeDecodeError):
            data.decode("utf-8")
    else:
        assert data == b""


# -- markdown_texts --------------------------------------------------------------------


@given(st.data(), size_bounds())
def test_markdown_texts_respect_their_size_bounds(
    data: st.DataObject, bounds: tuple[int, int]
) -> None:
    low, high = bounds
    text = data.draw(markdown_texts(min_size=low, max_size=high))
    assert low <= len(text) <= high


@given(markdown_texts())
def test_default_markdown_texts_are_storable_utf8(text: str) -> None:
    assert len(text) <= 4_000
    text.encode("utf-8")  # no surrogates
    assert "\x00" not in text
    assert "\ufeff" not in text


@given(markdown_texts(alphabet="xyz", min_size=1, max_size=300))
def test_markdown_texts_draw_words_from_the_alphabet(text: str) -> None:
    assert set(text) <= set("xyz") | STRUCTURE


@given(markdown_texts(alphabet=st.sampled_from("αβγ"), max_size=300))
def test_markdown_texts_accept_an_alphabet_strategy(text: str) -> None:
    assert set(text) <= set("αβγ") | STRUCTURE


@pytest.mark.parametrize(
    "found",
    [
        pytest.param(lambda t: re.search(r"(^|\n)#{1,6} ", t), id="heading"),
        pytest.param(lambda t: re.search(r"(^|\n)(- |\* |1\. )", t), id="list"),
        pytest.param(lambda t: "\n\n" in t, id="blank line"),
        pytest.param(lambda t: "```\n" in t, id="code fence"),
        pytest.param(lambda t: any(len(line) > 1200 for line in t.split("\n")), id="long line"),
        pytest.param(lambda t: re.search(r"\S{1201}", t), id="long word"),
        pytest.param(lambda t: any(len(c.encode()) == 2 for c in t), id="2-byte"),
        pytest.param(lambda t: any(len(c.encode()) == 3 for c in t), id="3-byte"),
        pytest.param(lambda t: any(len(c.encode()) == 4 for c in t), id="4-byte"),
        pytest.param(lambda t: "\u3000" in t or "\u2028" in t, id="unicode space"),
    ],
)
def test_markdown_texts_can_hold_markdown_structure_and_every_utf8_width(
    found: Callable[[str], object],
) -> None:
    # Existence, not a minimal example: shrinking would cost seconds per structure.
    search = settings(max_examples=500, database=None, phases=GENERATE)
    find(markdown_texts(), lambda text: bool(found(text)), settings=search)


def test_markdown_texts_shrink_to_simple_ascii() -> None:
    quiet = settings(database=None, derandomize=True, phases=[Phase.generate, Phase.shrink])
    assert find(markdown_texts(), lambda text: True, settings=quiet) == ""
    assert find(markdown_texts(min_size=1), lambda text: True, settings=quiet) == "0"
    # The shrinker may keep a stray block next to the heading ("0\n# 0\n").
    heading = find(markdown_texts(), lambda text: "#" in text, settings=quiet)
    assert heading.endswith("# 0\n")
    assert len(heading) <= 8


# -- documents ---------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.data(), st.sampled_from(list(DocumentKind)), size_bounds(high=30_000))
def test_documents_honour_the_kind_and_the_size_bounds(
    data: st.DataObject, kind: DocumentKind, bounds: tuple[int, int]
) -> None:
    low, high = bounds
    if kind is DocumentKind.EMPTY:
        low = 0
    elif kind is DocumentKind.PDF:
        high = max(high, min_pdf_size(), low + 1)
    elif kind is DocumentKind.CORRUPT_PDF:
        high = max(high, 9)
    else:
        high = max(high, 1)
    document = data.draw(documents(kinds=[kind], min_size=low, max_size=high))
    assert document.kind is kind
    assert low <= document.size <= high
    check_document(document)


@settings(max_examples=30, deadline=None)
@given(documents(kinds=["pdf"]))
def test_pdf_documents_parse_with_pypdf_with_one_to_three_pages(document: Document) -> None:
    import io

    import pypdf

    assert 1 <= len(pypdf.PdfReader(io.BytesIO(document.data)).pages) <= 3


@settings(max_examples=60, deadline=None)
@given(documents(kinds=["corrupt_pdf"], max_size=4096))
def test_corrupt_pdf_documents_never_parse(document: Document) -> None:
    check_document(document)


@settings(max_examples=40, deadline=None)
@given(documents())
def test_documents_of_every_kind_are_valid_for_their_kind(document: Document) -> None:
    assert document.size <= 20_000
    check_document(document)


@given(documents(min_size=1, max_size=600))
def test_default_kinds_are_the_kinds_that_fit_the_bounds(document: Document) -> None:
    assert document.kind not in (DocumentKind.EMPTY, DocumentKind.PDF)
    assert 1 <= document.size <= 600


@given(documents(max_size=0))
def test_only_the_empty_document_fits_in_zero_bytes(document: Document) -> None:
    assert document.kind is DocumentKind.EMPTY


@settings(max_examples=20, deadline=None)
@given(documents(kinds=["markdown", "text", "undecodable"], min_size=50_000, max_size=60_000))
def test_text_documents_above_the_drawn_limit_repeat_their_text(document: Document) -> None:
    assert 50_000 <= document.size <= 60_000
    check_document(document)


def test_documents_shrink_to_a_tiny_markdown_document() -> None:
    quiet = settings(database=None, derandomize=True, phases=[Phase.generate, Phase.shrink])
    smallest = find(documents(), lambda document: True, settings=quiet)
    assert smallest.kind is DocumentKind.MARKDOWN
    assert smallest.data == b"0"


# -- large_documents ---------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(st.data(), size_bounds(low=1, high=200_000))
def test_large_documents_respect_their_size_bounds(
    data: st.DataObject, bounds: tuple[int, int]
) -> None:
    low, high = bounds
    document = data.draw(large_documents(min_size=low, max_size=high))
    assert low <= document.size <= high
    assert document.kind is DocumentKind.MARKDOWN
    check_document(document)


@settings(max_examples=2, deadline=None)
@given(large_documents(min_size=10 * 2**20, max_size=10 * 2**20))
def test_a_ten_megabyte_document_is_drawn_and_chunked(document: Document) -> None:
    assert document.size == 10 * 2**20
    data = document.data

    def read(offset: int, size: int) -> bytes:
        return data[offset : offset + size]

    chunker = Chunker()
    assert chunker.count_chunks(read) >= document.size // (4 * chunker.max_chars)


# -- users -------------------------------------------------------------------------------


@given(users())
def test_users_have_a_uuid_and_a_short_lowercase_name(user: User) -> None:
    assert isinstance(user.user_id, uuid.UUID)
    assert re.fullmatch(r"[a-h]{1,8}", user.name)


@given(users(names=st.just("zed")))
def test_users_take_their_names_from_a_strategy(user: User) -> None:
    assert user.name == "zed"


@given(st.data(), size_bounds(high=5))
def test_distinct_users_are_distinct_and_within_bounds(
    data: st.DataObject, bounds: tuple[int, int]
) -> None:
    low, high = bounds
    people = data.draw(distinct_users(min_size=low, max_size=high))
    assert low <= len(people) <= high
    assert len({person.user_id for person in people}) == len(people)
    assert len({person.name for person in people}) == len(people)


# -- arguments ---------------------------------------------------------------------------

BAD_ARGUMENTS: list[tuple[str, Callable[[], st.SearchStrategy[Any]]]] = [
    ("negative min_size", lambda: markdown_texts(min_size=-1)),
    ("min_size above max_size", lambda: markdown_texts(min_size=5, max_size=4)),
    ("max_size not an int", lambda: markdown_texts(max_size=4.5)),  # type: ignore[arg-type]
    ("bool size", lambda: markdown_texts(max_size=True)),
    ("empty alphabet", lambda: markdown_texts(alphabet="")),
    ("alphabet not a str", lambda: markdown_texts(alphabet=["a"])),  # type: ignore[arg-type]
    ("alphabet of strings", lambda: markdown_texts(alphabet=st.just("ab"), min_size=1)),
    ("no kinds", lambda: documents(kinds=[])),
    ("unknown kind", lambda: documents(kinds=["docx"])),
    ("kinds as a str", lambda: documents(kinds="pdf")),
    ("empty with min_size", lambda: documents(kinds=["empty"], min_size=1)),
    ("pdf too small", lambda: documents(kinds=["pdf"], max_size=200)),
    ("pdf without slack", lambda: documents(kinds=["pdf"], min_size=5000, max_size=5000)),
    ("corrupt pdf too small", lambda: documents(kinds=["corrupt_pdf"], max_size=8)),
    ("markdown in no bytes", lambda: documents(kinds=["markdown"], max_size=0)),
    ("documents bounds", lambda: documents(min_size=10, max_size=1)),
    ("large of no bytes", lambda: large_documents(min_size=0)),
    ("large bounds", lambda: large_documents(min_size=10, max_size=9)),
    ("names not a strategy", lambda: users(names="bob")),  # type: ignore[arg-type]
    ("negative users", lambda: distinct_users(min_size=-1)),
    ("users bounds", lambda: distinct_users(min_size=3, max_size=2)),
]


@pytest.mark.parametrize("make", [pytest.param(make, id=name) for name, make in BAD_ARGUMENTS])
def test_bad_arguments_raise_invalid_argument(make: Callable[[], st.SearchStrategy[Any]]) -> None:
    # Bad sizes and kinds are caught when the strategy is made; a strategy alphabet
    # yielding strings is caught when drawing, as st.text does.
    @settings(database=None, max_examples=5)
    @given(st.data())
    def draw_one(data: st.DataObject) -> None:
        data.draw(make())

    with pytest.raises(InvalidArgument):
        draw_one()


def test_invalid_argument_messages_name_the_call_and_the_fix() -> None:
    with pytest.raises(InvalidArgument, match=r"documents\(kinds=\[\.\.\., 'empty'\].*min_size=0"):
        documents(kinds=["empty"], min_size=1)
    with pytest.raises(
        InvalidArgument, match=r"'docx' is not a DocumentKind; valid kinds: 'markdown'"
    ):
        documents(kinds=["docx"])


# -- exports -----------------------------------------------------------------------------


def test_the_package_exports_every_public_strategy_in_sorted_order() -> None:
    assert strategies.__all__ == sorted(strategies.__all__)
    defined = {
        name
        for module in map(
            importlib.import_module,
            (
                "strategies._documents",
                "strategies._users",
                "strategies._faults",
                "strategies._boundaries",
            ),
        )
        for name, value in vars(module).items()
        if inspect.isfunction(value)
        and value.__module__ == module.__name__
        and not name.startswith("_")
    }
    assert set(strategies.__all__) == defined
    assert all(callable(getattr(strategies, name)) for name in strategies.__all__)

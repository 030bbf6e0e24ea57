"""Properties of the document builders and the sample corpus."""

from __future__ import annotations

import hashlib
import io
import time

import hypothesis.strategies as st
import pypdf
import pytest
from hypothesis import example, given, settings

from pipeline_models.documents import (
    INVALID_UTF8,
    MARKDOWN_TYPE,
    PDF_TYPE,
    TEXT_TYPE,
    Document,
    DocumentKind,
    corrupt_pdf,
    empty_document,
    large_markdown_document,
    markdown_document,
    min_pdf_size,
    pdf_document,
    pdf_is_readable,
    pdf_safe_text,
    sample_documents,
    text_document,
    undecodable_text,
)

# Words Helvetica can draw and pypdf gives back: latin-1 letters, digits and
# punctuation, short enough never to be broken across lines.
pdf_words = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_categories=("Cc", "Cf")),
    min_size=1,
    max_size=15,
)
pdf_pages = st.lists(st.lists(pdf_words, max_size=40).map(" ".join), min_size=1, max_size=3)


def pypdf_text(data: bytes) -> list[str]:
    return [page.extract_text() for page in pypdf.PdfReader(io.BytesIO(data)).pages]


@given(st.text(), st.text(max_size=20))
def test_text_builders_are_deterministic_and_encode_utf8(text: str, name: str) -> None:
    for build, content_type in ((markdown_document, MARKDOWN_TYPE), (text_document, TEXT_TYPE)):
        document = build(text, filename=name)
        assert document == build(text, filename=name)
        assert document.data == text.encode("utf-8")
        assert document.content_type == content_type
        assert document.filename == name
        assert (document.kind is DocumentKind.EMPTY) == (text == "")


@given(st.binary(max_size=200))
def test_sha256_and_size_describe_the_data(data: bytes) -> None:
    document = Document("blob.bin", TEXT_TYPE, data, DocumentKind.TEXT)
    assert document.sha256 == hashlib.sha256(data).hexdigest()
    assert document.size == len(data)


@settings(max_examples=25, deadline=None)
@given(pdf_pages)
def test_pdf_documents_are_deterministic_and_readable_with_every_word(pages: list[str]) -> None:
    document = pdf_document(pages)
    assert document == pdf_document(pages)
    assert document.kind is DocumentKind.PDF
    assert document.content_type == PDF_TYPE
    extracted = pypdf_text(document.data)
    assert len(extracted) == len(pages)
    for page, text in zip(pages, extracted, strict=True):
        for word in page.split():
            assert word in text


@settings(max_examples=10, deadline=None)
@given(st.text(max_size=200))
def test_pdf_documents_of_any_text_are_readable(text: str) -> None:
    document = pdf_document([text, text])
    assert pdf_is_readable(document.data)
    assert len(pypdf_text(document.data)) == 2


def test_a_long_page_stays_on_one_pdf_page() -> None:
    words = [f"word{number}" for number in range(3000)]
    extracted = pypdf_text(pdf_document([" ".join(words)]).data)
    assert len(extracted) == 1
    assert words[-1] in extracted[0]


@pytest.mark.parametrize(
    ("text", "safe"),
    [
        ("café", "café"),
        ("日本 €", "?? ?"),
        ("😀", "?"),
        ("tab\there\r\nline", "tab here \nline"),
        ("soft\xadhyphen", "soft-hyphen"),
        ("nel\x85x\x00", "nel x "),
    ],
)
def test_pdf_safe_text_keeps_latin1_and_replaces_the_rest(text: str, safe: str) -> None:
    assert pdf_safe_text(text) == safe


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 50_000), pdf_pages)
@example(min_size=10_310, pages=[""])  # startxref gains its fifth digit here
def test_pdf_min_size_pads_to_at_most_one_byte_over(min_size: int, pages: list[str]) -> None:
    plain = pdf_document(pages)
    padded = pdf_document(pages, min_size=min_size)
    if min_size <= plain.size:
        assert padded == plain
    else:
        assert min_size <= padded.size <= min_size + 1
    assert pypdf_text(padded.data) == pypdf_text(plain.data)


def test_pdf_min_size_is_met_across_an_offset_gaining_a_digit() -> None:
    for min_size in range(10_300, 10_320):
        assert min_size <= pdf_document([""], min_size=min_size).size <= min_size + 1


def test_min_pdf_size_is_the_size_of_one_blank_page() -> None:
    assert min_pdf_size() == pdf_document([""]).size
    assert all(pdf_document([text]).size >= min_pdf_size() for text in ("", "a", "a" * 500))


def test_pdf_document_rejects_a_bare_string_and_no_pages() -> None:
    with pytest.raises(TypeError, match=r"pass \[text\]"):
        pdf_document("page")
    with pytest.raises(ValueError, match="at least one page"):
        pdf_document([])


@given(st.integers(0, 2**32))
def test_corrupt_pdfs_start_like_a_pdf_and_pypdf_cannot_read_them(seed: int) -> None:
    document = corrupt_pdf(seed)
    assert document == corrupt_pdf(seed)
    assert document.kind is DocumentKind.CORRUPT_PDF
    assert document.content_type == PDF_TYPE
    assert document.data.startswith(b"%PDF-")
    assert not pdf_is_readable(document.data)
    with pytest.raises(Exception):  # noqa: B017, PT011 - pypdf raises several types
        pypdf.PdfReader(io.BytesIO(document.data))


def test_every_form_of_corruption_is_made() -> None:
    truncated, junk, no_xref = (corrupt_pdf(seed).data for seed in (0, 1, 2))
    assert b"%%EOF" not in truncated
    assert b"obj" in truncated
    assert b"obj" not in junk
    assert no_xref.endswith(b"%%EOF\n")
    assert b"startxref" not in no_xref


@given(st.integers(0, 2**32))
def test_undecodable_texts_are_not_utf8(seed: int) -> None:
    document = undecodable_text(seed)
    assert document == undecodable_text(seed)
    assert document.kind is DocumentKind.UNDECODABLE
    assert document.content_type == TEXT_TYPE
    assert b"\x00" not in document.data
    with pytest.raises(UnicodeDecodeError):
        document.data.decode("utf-8")


@pytest.mark.parametrize("sequence", INVALID_UTF8)
def test_each_invalid_sequence_is_invalid_between_characters(sequence: bytes) -> None:
    for before, after in ((b"", b""), (b"a", b"b"), ("é".encode(), "€".encode())):
        with pytest.raises(UnicodeDecodeError):
            (before + sequence + after).decode("utf-8")


def test_the_empty_document_has_no_bytes() -> None:
    document = empty_document()
    assert document.data == b""
    assert document.kind is DocumentKind.EMPTY
    assert document == empty_document()


@given(st.integers(0, 200_000), st.integers(0, 2**32))
def test_large_markdown_documents_have_exactly_the_requested_size(size: int, seed: int) -> None:
    document = large_markdown_document(size, seed=seed)
    assert document.size == size
    assert document == large_markdown_document(size, seed=seed)
    text = document.data.decode("utf-8")
    assert document.kind is (DocumentKind.MARKDOWN if size else DocumentKind.EMPTY)
    assert "\x00" not in text


def test_a_ten_megabyte_markdown_document_is_built_quickly_and_exactly() -> None:
    size = 10 * 2**20
    started = time.perf_counter()
    document = large_markdown_document(size, seed=1)
    elapsed = time.perf_counter() - started
    assert document.size == size
    text = document.data.decode("utf-8")
    assert text.startswith("# ")
    for marker in ("\n## ", "\n- ", "\n1. ", "\n> "):
        assert marker in text
    assert any(ord(character) > 0xFFFF for character in text[:100_000])
    # Measured at about 0.1 s; the bound leaves room for a loaded CI machine.
    assert elapsed < 2.0


def test_large_markdown_documents_differ_across_seeds() -> None:
    assert large_markdown_document(5000, seed=1) != large_markdown_document(5000, seed=2)


def test_sample_documents_are_deterministic_for_a_seed() -> None:
    assert sample_documents(40, seed=3) == sample_documents(40, seed=3)


def test_sample_documents_vary_across_seeds() -> None:
    first = {document.sha256 for document in sample_documents(20, seed=1)}
    second = {document.sha256 for document in sample_documents(20, seed=2)}
    assert not first & second


@pytest.mark.parametrize(("count", "ratio"), [(0, 0.1), (1, 0.0), (10, 0.1), (60, 0.1), (30, 0.5)])
def test_sample_documents_mix_kinds_with_distinct_bytes(count: int, ratio: float) -> None:
    corpus = sample_documents(count, seed=11, corrupt_ratio=ratio)
    assert len(corpus) == count
    assert len({document.sha256 for document in corpus}) == count
    assert len({document.filename for document in corpus}) == count
    unusable = {DocumentKind.CORRUPT_PDF, DocumentKind.UNDECODABLE, DocumentKind.EMPTY}
    assert sum(document.kind in unusable for document in corpus) == round(count * ratio)
    for document in corpus:
        if document.kind in (DocumentKind.MARKDOWN, DocumentKind.TEXT):
            assert "\x00" not in document.data.decode("utf-8")
        elif document.kind is DocumentKind.PDF:
            assert pdf_is_readable(document.data)
        elif document.kind is DocumentKind.CORRUPT_PDF:
            assert not pdf_is_readable(document.data)


def test_a_sample_corpus_has_every_usable_kind_and_unicode_heavy_texts() -> None:
    corpus = sample_documents(60, seed=5)
    kinds = {document.kind for document in corpus}
    assert {DocumentKind.MARKDOWN, DocumentKind.TEXT, DocumentKind.PDF} <= kinds
    assert {DocumentKind.CORRUPT_PDF, DocumentKind.UNDECODABLE, DocumentKind.EMPTY} <= kinds
    texts = [d.data.decode("utf-8") for d in corpus if d.kind is DocumentKind.MARKDOWN]
    assert any(any(ord(character) > 0x7FF for character in text) for text in texts)
    assert any(text.startswith("# ") and "\n- " in text for text in texts)


@pytest.mark.parametrize(
    ("count", "ratio", "message"),
    [(-1, 0.1, "count must be >= 0"), (5, 1.5, "between 0 and 1"), (5, -0.1, "between 0 and 1")],
)
def test_sample_documents_rejects_bad_arguments(count: int, ratio: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sample_documents(count, corrupt_ratio=ratio)


def test_a_large_document_repr_is_short() -> None:
    document = large_markdown_document(10**6)
    shown = repr(document)
    assert len(shown) < 300
    assert document.sha256[:16] in shown
    assert "size=1000000" in shown


def test_a_small_document_repr_rebuilds_it() -> None:
    document = markdown_document("# Hi\n")
    assert eval(repr(document)) == document


def test_document_rejects_data_that_is_not_bytes_and_unknown_kinds() -> None:
    with pytest.raises(TypeError, match="data must be bytes, not str"):
        Document("a.md", MARKDOWN_TYPE, "text", DocumentKind.MARKDOWN)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'nope' is not one of 'markdown'"):
        Document("a.md", MARKDOWN_TYPE, b"x", "nope")  # type: ignore[arg-type]
    assert Document("a.md", MARKDOWN_TYPE, b"x", "markdown").kind is DocumentKind.MARKDOWN  # type: ignore[arg-type]

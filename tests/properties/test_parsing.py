"""Properties of the fake parser's pure core: normalisation and parse_document."""

from __future__ import annotations

import io
import unicodedata
from functools import cache

import pytest
from fpdf import FPDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pypdf import PdfWriter

from pipeline_models.fakes.parsing import (
    CHARS_PER_TEXT_PAGE,
    ParsedDocument,
    ParseFailure,
    normalise_text,
    parse_document,
)

# Text rich in what normalisation touches: BOMs, CR/LF, combining marks, precomposed forms.
awkward_text = st.lists(
    st.one_of(
        st.sampled_from(["\ufeff", "\r", "\n", "\r\n", "e", "\u0301", "é", "Å", "\u212b", "\x00"]),
        st.characters(codec="utf-8"),
    )
).map("".join)


@cache
def sample_pdf() -> bytes:
    pdf = FPDF()
    for words in ("Quarterly report: revenue grew", "Café crème brûlée, naïve façade"):
        pdf.add_page()
        pdf.set_font("Helvetica", size=12)
        pdf.cell(text=words)
    return bytes(pdf.output())


def outcome(data: bytes, filename: str) -> ParsedDocument | ParseFailure:
    # Any exception other than ParseFailure propagates and fails the test.
    try:
        return parse_document(data, filename=filename)
    except ParseFailure as failure:
        return failure


@given(awkward_text)
def test_normalisation_is_idempotent(text: str) -> None:
    once = normalise_text(text)
    assert normalise_text(once) == once


@given(awkward_text)
def test_normalised_text_has_no_bom_no_cr_and_is_nfc(text: str) -> None:
    normalised = normalise_text(text)
    assert not normalised.startswith("\ufeff")
    assert "\r" not in normalised
    assert unicodedata.is_normalized("NFC", normalised)


@given(st.text(st.characters(codec="utf-8", exclude_characters="\r\ufeff")))
def test_normalisation_changes_nothing_else(text: str) -> None:
    nfc = unicodedata.normalize("NFC", text)
    assert normalise_text(nfc) == nfc


def test_normalisation_turns_every_line_ending_into_lf() -> None:
    assert normalise_text("a\r\nb\rc\n\r\r\nd") == "a\nb\nc\n\n\nd"


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=2048))
def test_parsing_arbitrary_bytes_raises_nothing_but_parse_failure(data: bytes) -> None:
    result = outcome(data, "upload.bin")
    if isinstance(result, ParseFailure):
        assert "upload.bin" in result.reason
    else:
        assert result.pages >= 1


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=200)
@given(st.binary(max_size=4096))
def test_parsing_pdf_prefixed_junk_raises_nothing_but_parse_failure(junk: bytes) -> None:
    result = outcome(b"%PDF-" + junk, "junk.pdf")
    if isinstance(result, ParseFailure):
        assert "junk.pdf" in result.reason
    else:
        assert result.pages >= 1


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=200)
@given(data=st.data())
def test_parsing_a_damaged_real_pdf_raises_nothing_but_parse_failure(data: st.DataObject) -> None:
    pdf = bytearray(sample_pdf())
    cut = data.draw(st.integers(min_value=6, max_value=len(pdf)), label="cut")
    damaged = pdf[:cut]
    for _ in range(data.draw(st.integers(min_value=0, max_value=8), label="flips")):
        where = data.draw(st.integers(min_value=5, max_value=len(damaged) - 1), label="where")
        damaged[where] = data.draw(st.integers(min_value=0, max_value=255), label="byte")
    result = outcome(bytes(damaged), "damaged.pdf")
    assert isinstance(result, ParseFailure) or result.pages >= 1


@given(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1))
def test_utf8_text_passes_through_normalised(text: str) -> None:
    if not text.lstrip("\ufeff"):
        return  # nothing but BOMs: covered by the empty-file test
    parsed = parse_document(text.encode("utf-8"), filename="notes.md")
    assert parsed.markdown == normalise_text(text)


@pytest.mark.parametrize(
    ("chars", "pages"),
    [(1, 1), (CHARS_PER_TEXT_PAGE, 1), (CHARS_PER_TEXT_PAGE + 1, 2), (3 * CHARS_PER_TEXT_PAGE, 3)],
)
def test_a_text_document_is_billed_one_page_per_3000_characters(chars: int, pages: int) -> None:
    assert parse_document(b"x" * chars, filename="a.txt").pages == pages


def test_a_leading_utf8_bom_is_dropped() -> None:
    assert parse_document(b"\xef\xbb\xbfhello", filename="a.txt") == ParsedDocument("hello", 1)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "is empty"),
        (b"\xef\xbb\xbf", "is empty"),
        (b"text\x00more", "NUL byte at offset 4"),
        (b"caf\xe9", "invalid byte at offset 3"),
        (b"\xed\xa0\x80", "invalid byte at offset 0"),  # an encoded surrogate is not UTF-8
    ],
)
def test_unparseable_text_is_a_parse_failure_that_says_why(data: bytes, reason: str) -> None:
    with pytest.raises(ParseFailure, match=reason):
        parse_document(data, filename="a.txt")


def test_a_pdf_is_read_page_by_page_and_joined_by_a_blank_line() -> None:
    parsed = parse_document(sample_pdf(), filename="report.pdf")
    assert parsed.pages == 2
    first, second = parsed.markdown.split("\n\n")
    assert "Quarterly report: revenue grew" in first
    assert "Café crème brûlée, naïve façade" in second


def test_a_pdf_is_recognised_by_content_not_by_name() -> None:
    assert parse_document(sample_pdf(), filename="notes.txt").pages == 2
    assert parse_document(b"plain text", filename="scan.pdf").markdown == "plain text"


def test_an_encrypted_pdf_is_a_parse_failure() -> None:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.cell(text="secret")
    pdf.set_encryption(owner_password="owner", user_password="user")
    with pytest.raises(ParseFailure, match="encrypted PDF"):
        parse_document(bytes(pdf.output()), filename="secret.pdf")


def test_a_pdf_without_pages_is_a_parse_failure() -> None:
    buffer = io.BytesIO()
    PdfWriter().write(buffer)
    with pytest.raises(ParseFailure, match="no pages"):
        parse_document(buffer.getvalue(), filename="empty.pdf")


def test_a_truncated_pdf_is_a_parse_failure_that_names_the_file() -> None:
    with pytest.raises(ParseFailure, match=r"'half\.pdf' is not a readable PDF"):
        parse_document(sample_pdf()[:200], filename="half.pdf")

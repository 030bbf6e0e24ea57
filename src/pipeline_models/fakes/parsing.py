"""What the fake parser makes of a file (pure: the model checker's oracle calls it too).

PDFs are recognised by content (the file starts with ``%PDF-``, whatever its name) and
read with pypdf: each page's text (less any NUL characters, with lone surrogates turned
into U+FFFD, so it stays storable as Postgres text) is normalised and the pages are
joined by a blank line; pages billed = the PDF's page count. Anything else must be
UTF-8 text (an optional BOM, strict decoding, no NUL byte) and passes through
normalised. Everything else is a :class:`ParseFailure`; no other
exception escapes, whatever the bytes.

>>> parse_document(b"\\xef\\xbb\\xbfline one\\r\\nline two\\r", filename="notes.txt")
ParsedDocument(markdown='line one\\nline two\\n', pages=1)
>>> parse_document(b"\\x00\\x01", filename="blob.bin")
Traceback (most recent call last):
...
pipeline_models.fakes.parsing.ParseFailure: 'blob.bin' is binary: NUL byte at offset 0
"""

from __future__ import annotations

import io
import logging
import math
import unicodedata
from dataclasses import dataclass

from pypdf import PdfReader

# This parser reads corrupt PDFs on purpose; pypdf reports each defect through logging,
# which without a configured handler lands on stderr as noise.
logging.getLogger("pypdf").setLevel(logging.ERROR)

PDF_MAGIC = b"%PDF-"
"""A file is a PDF when it starts with this, whatever its name."""

UTF8_BOM = b"\xef\xbb\xbf"

CHARS_PER_TEXT_PAGE = 3000
"""A text file is billed as ceil(characters / 3000) pages, at least one."""

PAGE_SEPARATOR = "\n\n"
"""Joins the text of consecutive PDF pages."""


class ParseFailure(Exception):
    """The file cannot be parsed: a corrupt or encrypted PDF, undecodable or binary text.

    ``reason`` is the message the parser reports as the job's ``error_message``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ParsedDocument:
    """The parser's result: the document as markdown and the pages billed for it."""

    markdown: str
    pages: int


def normalise_text(text: str) -> str:
    """Strip leading BOMs, turn CRLF and CR into LF, and compose to Unicode NFC.

    Nothing else changes (no trimming, no whitespace folding), and it is idempotent.
    Every leading BOM goes, not just one, because a second BOM would otherwise surface
    on the next call.

    >>> normalise_text("\\ufeffe\\u0301\\r\\n")
    'é\\n'
    """
    text = text.lstrip("\ufeff")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return unicodedata.normalize("NFC", text)


def text_pages(markdown: str) -> int:
    """Pages billed for a text document: ceil(characters / 3000), at least one.

    >>> text_pages(""), text_pages("x" * 3000), text_pages("x" * 3001)
    (1, 1, 2)
    """
    return max(1, math.ceil(len(markdown) / CHARS_PER_TEXT_PAGE))


def _storable(text: str) -> str:
    # Text pulled out of a PDF may hold NULs (Postgres text rejects them) and lone
    # surrogates (UTF-8 cannot encode them). The UTF-16 round trip joins valid pairs and
    # turns lone halves into U+FFFD.
    text = text.replace("\x00", "")
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _parse_pdf(data: bytes, filename: str) -> ParsedDocument:
    # pypdf reports damage it repaired through its logger (left alone: it is useful
    # when debugging) and uses warnings only for deprecations (left alone: those are ours
    # to fix).
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            raise ParseFailure(f"{filename!r} is an encrypted PDF")
        texts = [normalise_text(_storable(page.extract_text())) for page in reader.pages]
    except ParseFailure:
        raise
    except Exception as exc:  # pypdf raises many kinds on damaged files; all mean "corrupt"
        raise ParseFailure(
            f"{filename!r} is not a readable PDF ({type(exc).__name__}: {exc})"
        ) from exc
    if not texts:
        raise ParseFailure(f"{filename!r} is a PDF with no pages")
    return ParsedDocument(markdown=PAGE_SEPARATOR.join(texts), pages=len(texts))


def _parse_text(data: bytes, filename: str) -> ParsedDocument:
    body = data.removeprefix(UTF8_BOM)
    if not body:
        raise ParseFailure(f"{filename!r} is empty")
    nul = body.find(b"\x00")
    if nul >= 0:
        raise ParseFailure(
            f"{filename!r} is binary: NUL byte at offset {nul + len(data) - len(body)}"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + len(data) - len(body)
        raise ParseFailure(
            f"{filename!r} is neither a PDF nor UTF-8 text: invalid byte at offset {offset}"
        ) from None
    markdown = normalise_text(text)
    return ParsedDocument(markdown=markdown, pages=text_pages(markdown))


def parse_document(data: bytes, *, filename: str) -> ParsedDocument:
    """Parse ``data`` as the fake parser does, or raise :class:`ParseFailure`.

    ``filename`` only names the file in failure reasons; the type comes from the content.
    An empty file (or a lone BOM) is a failure: there is no document to parse.

    >>> parse_document("# Title\\n".encode(), filename="a.md").markdown
    '# Title\\n'
    """
    if data.startswith(PDF_MAGIC):
        return _parse_pdf(data, filename)
    return _parse_text(data, filename)


__all__ = [
    "CHARS_PER_TEXT_PAGE",
    "PAGE_SEPARATOR",
    "PDF_MAGIC",
    "ParseFailure",
    "ParsedDocument",
    "normalise_text",
    "parse_document",
    "text_pages",
]

"""Documents as uploaded bytes, and deterministic sample corpora.

A :class:`Document` is what a user uploads: a filename, a declared content type and
the raw bytes, plus the :class:`DocumentKind` the generator knows it to be. The kind
is the checker's ground truth (a corrupt PDF is a corrupt PDF whatever its name
says); the pipeline under test only ever sees the filename, type and bytes.

Every builder is deterministic: the same arguments give the same bytes, so a
shrunk failure replays exactly and uploads of equal bytes dedupe.

>>> doc = markdown_document("# Title\\n")
>>> doc  # doctest: +NORMALIZE_WHITESPACE
Document(filename='document.md', content_type='text/markdown',
         data=b'# Title\\n', kind=DocumentKind.MARKDOWN)
>>> doc.size, doc.sha256[:12]
(8, 'e01b17ff9af7')
>>> pdf_document(["Hello, PDF."]).data[:8]
b'%PDF-1.3'
"""

from __future__ import annotations

import functools
import hashlib
import io
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from faker import Faker

MARKDOWN_TYPE = "text/markdown"
TEXT_TYPE = "text/plain"
PDF_TYPE = "application/pdf"

PDF_CREATION_DATE = datetime(2026, 1, 1, tzinfo=UTC)
"""The creation date written into every PDF: fpdf2 would write the current time,
which makes the bytes (and so the document's sha256) differ from run to run."""

PDF_SUBJECT = "pipeline-models test document"
"""The Subject of every PDF's Info dictionary; ``min_size`` pads it."""

# A repr shows the data in full up to this many bytes (and is then valid Python that
# rebuilds the document); beyond it, the repr abbreviates. Shrunk Hypothesis failures
# print documents, and a 10 MB repr would bury the report.
_REPR_DATA_LIMIT = 80


class DocumentKind(StrEnum):
    """What a document really is, whatever its filename or content type claims."""

    MARKDOWN = "markdown"
    """Valid, non-empty UTF-8 markdown."""
    TEXT = "text"
    """Valid, non-empty UTF-8 plain text."""
    PDF = "pdf"
    """A PDF that pypdf reads."""
    CORRUPT_PDF = "corrupt_pdf"
    """Bytes that start like a PDF but that pypdf cannot read."""
    UNDECODABLE = "undecodable"
    """A text file whose bytes are not valid UTF-8."""
    EMPTY = "empty"
    """No bytes at all."""

    def __repr__(self) -> str:
        return f"DocumentKind.{self.name}"


@dataclass(frozen=True, repr=False)
class Document:
    """An upload: filename, declared content type, raw bytes, and the true kind.

    >>> doc = text_document("x" * 1000)
    >>> doc.size
    1000
    >>> doc  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    Document(kind=DocumentKind.TEXT, filename='document.txt', content_type='text/plain',
             size=1000, sha256='...', data=b'xxxxxxxxxxxxxxxxxxxxxxxx'...)
    """

    filename: str
    content_type: str
    data: bytes
    kind: DocumentKind

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes):
            raise TypeError(
                f"Document(filename={self.filename!r}): data must be bytes, "
                f"not {type(self.data).__name__}"
            )
        kind: object = self.kind  # annotated as a DocumentKind, but callers pass str too
        if not isinstance(kind, DocumentKind):
            try:
                object.__setattr__(self, "kind", DocumentKind(str(kind)))
            except ValueError:
                valid = ", ".join(repr(kind.value) for kind in DocumentKind)
                raise ValueError(
                    f"Document(filename={self.filename!r}): kind={kind!r} is not one of {valid}"
                ) from None

    @functools.cached_property
    def sha256(self) -> str:
        """SHA-256 of the bytes, hex (what the upload dedupes on)."""
        return hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        """Length of the bytes."""
        return len(self.data)

    def __repr__(self) -> str:
        if self.size <= _REPR_DATA_LIMIT:
            return (
                f"Document(filename={self.filename!r}, content_type={self.content_type!r}, "
                f"data={self.data!r}, kind={self.kind!r})"
            )
        filename = self.filename if len(self.filename) <= 60 else self.filename[:57] + "..."
        return (
            f"Document(kind={self.kind!r}, filename={filename!r}, "
            f"content_type={self.content_type!r}, size={self.size}, "
            f"sha256={self.sha256[:16]!r}, data={self.data[:24]!r}...)"
        )


def markdown_document(text: str, *, filename: str = "document.md") -> Document:
    """A ``text/markdown`` upload of ``text`` in UTF-8 (kind EMPTY when ``text`` is "").

    >>> markdown_document("").kind
    DocumentKind.EMPTY
    """
    data = text.encode("utf-8")
    return Document(filename, MARKDOWN_TYPE, data, _text_kind(data, DocumentKind.MARKDOWN))


def text_document(text: str, *, filename: str = "document.txt") -> Document:
    """A ``text/plain`` upload of ``text`` in UTF-8 (kind EMPTY when ``text`` is "").

    >>> text_document("héllo").data
    b'h\\xc3\\xa9llo'
    """
    data = text.encode("utf-8")
    return Document(filename, TEXT_TYPE, data, _text_kind(data, DocumentKind.TEXT))


def empty_document(*, filename: str = "empty.txt") -> Document:
    """A ``text/plain`` upload with no bytes.

    >>> empty_document().size
    0
    """
    return Document(filename, TEXT_TYPE, b"", DocumentKind.EMPTY)


def _text_kind(data: bytes, kind: DocumentKind) -> DocumentKind:
    return kind if data else DocumentKind.EMPTY


# -- PDF -----------------------------------------------------------------------------

_NOT_LATIN_1 = re.compile(r"[^\x00-\xff]")
# Controls other than "\n" have no glyph in Helvetica and come back from pypdf as
# themselves, as nothing ("\r") or as cp1252 glyphs (C1 range, e.g. "\x85" -> "…");
# a soft hyphen vanishes or becomes "-\n" at a line break. Spaces keep the words apart.
_PDF_CONTROLS = {code: " " for code in (*range(0x20), *range(0x7F, 0xA0)) if code != 0x0A}
_PDF_CONTROLS[0xAD] = "-"


def pdf_safe_text(text: str) -> str:
    """``text`` as :func:`pdf_document` writes it with the core Helvetica font.

    Helvetica covers latin-1 only: every character outside latin-1 becomes ``"?"``,
    control characters other than ``"\\n"`` become a space, and the soft hyphen
    (U+00AD) becomes ``"-"``. Everything else is kept.

    >>> pdf_safe_text("café 日本\\tok\\u00ad")
    'café ?? ok-'
    """
    return _NOT_LATIN_1.sub("?", text).translate(_PDF_CONTROLS)


def pdf_document(
    pages: Sequence[str], *, filename: str = "document.pdf", min_size: int = 0
) -> Document:
    """A real PDF (fpdf2, Helvetica 11pt) with one page per element of ``pages``.

    Each page's text goes through :func:`pdf_safe_text` and is wrapped to the page
    width with ``multi_cell``. Automatic page breaks are off, so a page keeps all of
    its text even when it runs past the bottom margin (pypdf still extracts it) and
    the page count is exactly ``len(pages)``. The creation date is fixed
    (:data:`PDF_CREATION_DATE`), so equal pages give equal bytes under one fpdf2
    version. ``min_size`` pads the Info dictionary's Subject so that the PDF has at
    least ``min_size`` bytes (at most one more: an offset gaining a digit adds two).

    What pypdf extracts is not the input: lines wrap at the page width ("\\n" where
    a space was), blank lines collapse, and leading spaces of a line disappear.

    >>> doc = pdf_document(["page one", "page two"], min_size=5000)
    >>> doc.kind, doc.content_type, 5000 <= doc.size <= 5001
    (DocumentKind.PDF, 'application/pdf', True)
    """
    if isinstance(pages, str):
        raise TypeError(
            "pdf_document(pages=...): pages must be a sequence of page texts, not a str; "
            "for a one-page PDF pass [text]"
        )
    if not pages:
        raise ValueError("pdf_document(pages=[]): a PDF needs at least one page")
    texts = [pdf_safe_text(page) for page in pages]
    data = _render_pdf(texts, PDF_SUBJECT)
    if len(data) < min_size:
        # Each dot in the Subject (a literal string) adds one byte, and each offset
        # that gains a digit one more: xref entries have a fixed width, but startxref
        # does not. Grow to min_size, then back off any overshoot that a smaller
        # padding also avoids.
        dots = min_size - len(data)
        data = _render_pdf(texts, PDF_SUBJECT + "." * dots)
        while len(data) < min_size:
            dots += min_size - len(data)
            data = _render_pdf(texts, PDF_SUBJECT + "." * dots)
        while len(data) > min_size and dots > 1:
            smaller = _render_pdf(texts, PDF_SUBJECT + "." * (dots - 1))
            if len(smaller) < min_size:
                break
            dots, data = dots - 1, smaller
    return Document(filename, PDF_TYPE, data, DocumentKind.PDF)


@functools.cache
def min_pdf_size() -> int:
    """The size of the smallest PDF :func:`pdf_document` makes (one blank page)."""
    return pdf_document([""]).size


def _render_pdf(texts: Sequence[str], subject: str) -> bytes:
    # Imported here: fpdf2 takes a quarter of a second to import, and most users of
    # this module (the model, the drivers) only need the Document class.
    from fpdf import FPDF

    pdf = FPDF(unit="mm", format="A4")
    pdf.set_creation_date(PDF_CREATION_DATE)
    pdf.set_subject(subject)
    pdf.set_auto_page_break(False)
    pdf.set_font("Helvetica", size=11)
    for text in texts:
        pdf.add_page()
        pdf.multi_cell(0, 5, text)
    return bytes(pdf.output())


def corrupt_pdf(seed: int, *, filename: str = "corrupt.pdf") -> Document:
    """Bytes that start like a PDF (``%PDF-``) but that pypdf cannot read.

    The seed picks one of three damages, each of which makes ``pypdf.PdfReader``
    itself raise, and the damaged content:

    - ``seed % 3 == 0``: a real PDF truncated before its ``%%EOF`` marker;
    - ``seed % 3 == 1``: a PDF header followed by random bytes (never a ``%``);
    - ``seed % 3 == 2``: a real PDF whose cross-reference section and ``startxref``
      pointer are replaced by junk, ``%%EOF`` kept.

    The first two lack the ``%%EOF`` marker, which pypdf needs; the third leaves it
    nowhere to find the document's catalog. The tests check every form against the
    installed pypdf, which recovers from many lesser damages (a bad xref offset, a
    missing ``/Catalog`` type) by scanning the file.

    >>> doc = corrupt_pdf(0)
    >>> doc.kind, doc.data[:5], pdf_is_readable(doc.data)
    (DocumentKind.CORRUPT_PDF, b'%PDF-', False)
    """
    rng = random.Random(f"corrupt-pdf:{seed}")
    damage = seed % 3
    if damage == 1:
        data = _pdf_header_and_junk(rng)
    else:
        fake = _faker(seed)
        pages = [fake.paragraph(nb_sentences=rng.randint(2, 8)) for _ in range(rng.randint(1, 3))]
        whole = _render_pdf([pdf_safe_text(page) for page in pages], PDF_SUBJECT)
        if damage == 0:
            data = whole[: rng.randrange(16, whole.rindex(b"%%EOF"))]
        else:
            xref = whole.rindex(b"\nxref\n") + 1
            data = whole[:xref] + _junk(rng, rng.randint(8, 64)) + b"\n%%EOF\n"
    return Document(filename, PDF_TYPE, data, DocumentKind.CORRUPT_PDF)


def pdf_is_readable(data: bytes) -> bool:
    """Whether pypdf opens ``data`` and extracts the text of every page.

    >>> pdf_is_readable(pdf_document(["ok"]).data), pdf_is_readable(b"%PDF-1.4\\n")
    (True, False)
    """
    import pypdf  # imported here for the reason fpdf is: import cost

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        for page in reader.pages:
            page.extract_text()
    except Exception:  # pypdf raises many types on damaged input; any means unreadable
        return False
    return True


def _pdf_header_and_junk(rng: random.Random) -> bytes:
    return f"%PDF-1.{rng.randint(3, 7)}\n".encode() + _junk(rng, rng.randint(0, 2048))


def _junk(rng: random.Random, size: int) -> bytes:
    # Without a "%" there can be no "%%EOF" marker, and pypdf gives up without one.
    return rng.randbytes(size).replace(b"%", b"#")


# -- undecodable text ----------------------------------------------------------------

INVALID_UTF8 = (
    b"\xff",  # never valid in UTF-8
    b"\x80",  # a continuation byte with no lead
    b"\xc0\xaf",  # an overlong encoding of "/"
    b"\xed\xa0\x80",  # an encoded surrogate (U+D800)
    b"\xe2\x82",  # a 3-byte sequence cut short
    b"\xf4\x90\x80\x80",  # above U+10FFFF
)
"""Byte sequences that are invalid UTF-8 wherever they stand between characters."""


def undecodable_text(seed: int, *, filename: str = "undecodable.txt") -> Document:
    """A ``text/plain`` upload of Faker text with invalid UTF-8 sequences spliced in.

    >>> doc = undecodable_text(3)
    >>> doc.kind, doc.content_type
    (DocumentKind.UNDECODABLE, 'text/plain')
    >>> doc.data.decode("utf-8")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    UnicodeDecodeError: ...
    """
    rng = random.Random(f"undecodable:{seed}")
    fake = _faker(seed)
    words = fake.paragraph(nb_sentences=rng.randint(1, 6)).split(" ")
    for _ in range(rng.randint(1, 3)):
        words.insert(rng.randint(0, len(words)), rng.choice(INVALID_UTF8).decode("latin-1"))
    # latin-1 maps bytes 0-255 to the first 256 code points: the spliced sequences
    # survive as the exact bytes, and Faker's en_US text is ASCII.
    data = " ".join(words).encode("latin-1")
    return Document(filename, TEXT_TYPE, data, DocumentKind.UNDECODABLE)


# -- large markdown --------------------------------------------------------------------


def large_markdown_document(
    size_bytes: int, *, seed: int = 0, filename: str = "large.md"
) -> Document:
    """A markdown upload of exactly ``size_bytes`` bytes of realistic, valid UTF-8.

    Headings, paragraphs, lists and a little non-ASCII text are drawn once from a
    seeded pool and repeated in seeded order, so 10 MB take well under a second. The
    tail is cut at a character boundary and padded with newlines to the exact size.

    >>> doc = large_markdown_document(10_000, seed=1)
    >>> doc.size, doc.kind, doc.data.decode("utf-8").startswith("#")
    (10000, DocumentKind.MARKDOWN, True)
    """
    if size_bytes < 0:
        raise ValueError(f"large_markdown_document(size_bytes={size_bytes}): must be >= 0")
    rng = random.Random(f"large-markdown:{seed}")
    fake = _faker(seed)
    pool = [block.encode("utf-8") for block in _markdown_blocks(fake, rng, 96)]
    title = f"# {fake.catch_phrase()}\n\n".encode()
    pieces = [title]
    total = len(title)
    # Choosing blocks by index in bulk is several times faster than one rng.choice
    # per block, and 10 MB are about 25,000 blocks.
    while total < size_bytes:
        for index in rng.choices(range(len(pool)), k=1024):
            pieces.append(pool[index])
            total += len(pool[index])
            if total >= size_bytes:
                break
    data = _fit_utf8(b"".join(pieces), size_bytes)
    return Document(filename, MARKDOWN_TYPE, data, _text_kind(data, DocumentKind.MARKDOWN))


def _fit_utf8(data: bytes, size: int) -> bytes:
    """``data`` cut to ``size`` bytes at a character boundary, newline-padded to size."""
    cut = min(size, len(data))
    while cut < len(data) and cut > 0 and data[cut] & 0xC0 == 0x80:
        cut -= 1  # data[cut] continues a character: cut before that character
    return data[:cut] + b"\n" * (size - cut)


_UNICODE_SNIPPETS = (
    "café au lait, naïve façade, jalapeño",
    "Grüße aus Köln — „Anführungszeichen“",
    "Ελληνικά κείμενα και σύμβολα: α β γ δ",
    "Русский текст для проверки кодировки",
    "日本語のテキストと漢字の混在",
    "中文文本用于测试分块",
    "emoji: 📄 ✅ 🚀 🧪 — and math: ∑ ∫ √ ≤ ≥",
)


def _markdown_blocks(fake: Faker, rng: random.Random, count: int) -> list[str]:
    blocks: list[str] = []
    for index in range(count):
        shape = index % 8
        if shape == 0:
            blocks.append(f"{'#' * rng.randint(2, 4)} {fake.sentence(nb_words=5)[:-1]}\n\n")
        elif shape == 1:
            items = "".join(f"- {fake.sentence(nb_words=8)}\n" for _ in range(rng.randint(2, 6)))
            blocks.append(items + "\n")
        elif shape == 2:
            items = "".join(
                f"{number}. {fake.sentence(nb_words=6)}\n" for number in range(1, rng.randint(3, 6))
            )
            blocks.append(items + "\n")
        elif shape == 3:
            # Cycled, not drawn: every script (and the 4-byte emoji) is in every pool.
            snippet = _UNICODE_SNIPPETS[index // 8 % len(_UNICODE_SNIPPETS)]
            blocks.append(f"{fake.paragraph(nb_sentences=3)} {snippet}.\n\n")
        elif shape == 4:
            blocks.append(f"> {fake.paragraph(nb_sentences=2)}\n\n")
        else:
            blocks.append(fake.paragraph(nb_sentences=rng.randint(3, 12)) + "\n\n")
    return blocks


# -- sample corpora ----------------------------------------------------------------------

_UNICODE_LOCALES = ("ja_JP", "ru_RU", "el_GR", "zh_CN", "ar_AA")


def sample_documents(count: int, *, seed: int = 0, corrupt_ratio: float = 0.1) -> list[Document]:
    """A deterministic mixed corpus of ``count`` documents with distinct bytes.

    About ``corrupt_ratio`` of them (rounded) are unusable: corrupt PDFs and
    undecodable texts alternate, and the third such document is the empty one (there
    can be only one: bytes are distinct). The rest cycle through markdown with
    headings and lists, plain text, small PDFs of one to three pages and unicode-heavy
    markdown (Japanese, Russian, Greek, Chinese, Arabic, emoji); the order is shuffled.
    Filenames are numbered, so they are distinct too.

    >>> corpus = sample_documents(10, seed=7)
    >>> [doc.sha256 for doc in corpus] == [doc.sha256 for doc in sample_documents(10, seed=7)]
    True
    >>> sorted({doc.kind.value for doc in corpus})
    ['corrupt_pdf', 'markdown', 'pdf', 'text']
    """
    if count < 0:
        raise ValueError(f"sample_documents(count={count}): count must be >= 0")
    if not 0.0 <= corrupt_ratio <= 1.0:
        raise ValueError(
            f"sample_documents(corrupt_ratio={corrupt_ratio}): must be between 0 and 1"
        )
    # Faker's default locale selection reads the global random module when several
    # locales are loaded, so each call below names its locale explicitly.
    from faker import Faker

    rng = random.Random(f"sample-documents:{seed}")
    fake = Faker(["en_US", *_UNICODE_LOCALES])
    fake.seed_instance(seed)
    english = fake["en_US"]
    corrupt = round(count * corrupt_ratio)
    kinds: list[str] = []
    for index in range(corrupt):
        kinds.append("empty" if index == 2 else ("corrupt_pdf", "undecodable")[index % 2])
    for index in range(count - corrupt):
        kinds.append(("markdown", "text", "pdf", "unicode")[index % 4])
    rng.shuffle(kinds)
    documents: list[Document] = []
    seen: set[str] = set()
    for number, kind in enumerate(kinds):
        while True:
            stem = f"{number:04d}-{english.slug()}"
            document = _sample(kind, stem, english, fake, rng)
            if document.sha256 not in seen:
                break
        seen.add(document.sha256)
        documents.append(document)
    return documents


def _sample(kind: str, stem: str, english: Faker, fake: Faker, rng: random.Random) -> Document:
    if kind == "markdown":
        blocks = _markdown_blocks(english, rng, rng.randint(3, 12))
        text = f"# {english.catch_phrase()}\n\n" + "".join(rng.sample(blocks, len(blocks)))
        return markdown_document(text, filename=f"{stem}.md")
    if kind == "text":
        paragraphs = [english.paragraph(nb_sentences=rng.randint(2, 10)) for _ in range(4)]
        return text_document("\n\n".join(paragraphs) + "\n", filename=f"{stem}.txt")
    if kind == "pdf":
        pages = [
            english.paragraph(nb_sentences=rng.randint(3, 15)) for _ in range(rng.randint(1, 3))
        ]
        return pdf_document(pages, filename=f"{stem}.pdf")
    if kind == "unicode":
        parts = [f"# {rng.choice(_UNICODE_SNIPPETS)}\n\n"]
        for _ in range(rng.randint(3, 8)):
            locale = rng.choice(_UNICODE_LOCALES)
            parts.append(f"{fake[locale].paragraph(nb_sentences=rng.randint(2, 6))}\n\n")
            if rng.random() < 0.5:
                parts.append(f"- {english.emoji()} {rng.choice(_UNICODE_SNIPPETS)}\n\n")
        return markdown_document("".join(parts), filename=f"{stem}.md")
    if kind == "corrupt_pdf":
        return corrupt_pdf(rng.randrange(2**32), filename=f"{stem}.pdf")
    if kind == "undecodable":
        return undecodable_text(rng.randrange(2**32), filename=f"{stem}.txt")
    return empty_document(filename=f"{stem}.txt")


def _faker(seed: int) -> Faker:
    from faker import Faker  # imported here: Faker takes a tenth of a second to import

    fake = Faker("en_US")
    fake.seed_instance(seed)
    return fake


__all__ = [
    "INVALID_UTF8",
    "MARKDOWN_TYPE",
    "PDF_CREATION_DATE",
    "PDF_SUBJECT",
    "PDF_TYPE",
    "TEXT_TYPE",
    "Document",
    "DocumentKind",
    "corrupt_pdf",
    "empty_document",
    "large_markdown_document",
    "markdown_document",
    "min_pdf_size",
    "pdf_document",
    "pdf_is_readable",
    "pdf_safe_text",
    "sample_documents",
    "text_document",
    "undecodable_text",
]

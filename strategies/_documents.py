"""Hypothesis strategies for documents: markdown texts, uploads of every kind, large uploads.

Every strategy shrinks towards small, simple, valid markdown: markdown is the first
kind, a document's text shrinks to ``"0"`` (a text with no size floor to ``""``),
words shrink to ASCII, and separators to a plain space.

>>> from hypothesis import given
>>> @given(documents(kinds=[DocumentKind.MARKDOWN, DocumentKind.PDF], max_size=5_000))
... def test_uploads_are_bounded(document):
...     assert document.kind in (DocumentKind.MARKDOWN, DocumentKind.PDF)
...     assert document.size <= 5_000
>>> test_uploads_are_bounded()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import hypothesis.strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.strategies import SearchStrategy

from pipeline_models.documents import (
    INVALID_UTF8,
    MARKDOWN_TYPE,
    PDF_TYPE,
    TEXT_TYPE,
    Document,
    DocumentKind,
    corrupt_pdf,
    min_pdf_size,
    pdf_document,
)

TEXT_CHAR_LIMIT = 4_000
"""At most this many characters of a text document are drawn; larger documents repeat
them. Drawing every character of a 20 kB text would exhaust Hypothesis's choice budget."""

_PDF_MAGIC = b"%PDF-"
_PDF_HEADERS = (b"%PDF-1.4\n", b"%PDF-1.3\n", b"%PDF-1.7\n")
_CORRUPT_MIN_SIZE = len(_PDF_HEADERS[0])


def _characters(low: int, high: int) -> SearchStrategy[str]:
    return st.characters(
        min_codepoint=low,
        max_codepoint=high,
        exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
        exclude_characters="\ufeff",
    )


# Each word draws from one pool: ASCII, 2-, 3- or 4-byte UTF-8 characters, or all of
# them. Hypothesis merges alternative character sets into one and then rarely picks
# 3-byte characters, while real words are mostly of one script (Cyrillic is 2 bytes
# wide, CJK 3, emoji 4); the ASCII pool comes first, so words shrink to ASCII. No
# whitespace (separators supply it), no surrogates (no UTF-8 form), no NUL (Postgres
# text rejects it) and no BOM (the parser strips a leading one).
_DEFAULT_WORDS = st.one_of(
    [
        st.text(_characters(low, high), min_size=1, max_size=8)
        for low, high in (
            (0x30, 0x7E),
            (0x80, 0x7FF),
            (0x800, 0xFFFF),
            (0x10000, 0x10FFFF),
            (0x30, 0x10FFFF),
        )
    ]
)
# Unicode spaces and line separators are whitespace to str.isspace and so to the
# chunker, and "\u2028"/"\x85" are line breaks to str.splitlines but not to "\n" search.
_SEPARATORS = st.sampled_from((" ", "\t", "\xa0", "\u3000", "\u2009", "\u2028", "\x85"))
_LIST_MARKERS = st.sampled_from(("- ", "* ", "1. ", "+ "))
# Latin-1 glyphs only: what Helvetica can draw, so a page's words survive pypdf.
_PDF_WORDS = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_categories=("Cc", "Cf")),
    min_size=1,
    max_size=12,
)
_PDF_PAGES = st.lists(
    st.lists(st.lists(_PDF_WORDS, min_size=1, max_size=15).map(" ".join), max_size=6).map(
        "\n".join
    ),
    min_size=1,
    max_size=3,
)


def markdown_texts(
    *,
    min_size: int = 0,
    max_size: int = 4_000,
    alphabet: str | SearchStrategy[str] | None = None,
) -> SearchStrategy[str]:
    """Markdown texts of ``min_size`` to ``max_size`` characters.

    Texts are blocks: paragraphs, headings, bullet and numbered lists, blank lines,
    fenced code, lines far longer than a chunk and words with no whitespace at all.
    Words are drawn from ``alphabet`` (characters, or a strategy of single
    characters) or by default from all of Unicode but surrogates, controls,
    whitespace and the BOM, weighted so that 1-, 2-, 3- and 4-byte UTF-8 characters
    all appear often. The markdown punctuation, spaces (including Unicode spaces)
    and newlines are added whatever the alphabet. A text over ``max_size`` is cut;
    one under ``min_size`` is padded by repeating a drawn word.

    >>> from hypothesis import given
    >>> @given(markdown_texts(min_size=1, max_size=100, alphabet="ab"))
    ... def test_bounded(text):
    ...     assert 1 <= len(text) <= 100
    >>> test_bounded()
    """
    _check_sizes("markdown_texts", min_size, max_size)
    return _texts(_words(alphabet, "markdown_texts"), min_size, max_size, markdown=True)


def documents(
    *,
    kinds: Iterable[DocumentKind | str] | None = None,
    min_size: int = 0,
    max_size: int = 20_000,
) -> SearchStrategy[Document]:
    """Uploads of the given ``kinds`` whose data has ``min_size`` to ``max_size`` bytes.

    ``kinds`` defaults to every :class:`~pipeline_models.documents.DocumentKind` that
    fits the size bounds (EMPTY only when ``min_size`` is 0; PDF only when
    ``max_size`` leaves room for the smallest PDF and one byte of slack over
    ``min_size``); an explicit kind that cannot fit raises ``InvalidArgument``.
    Markdown and text are valid, non-empty UTF-8 with no NUL byte and never start
    like a PDF; PDFs have one to three pages of latin-1 words; corrupt PDFs start
    with ``%PDF-`` and pypdf cannot read them; undecodable texts hold at least one
    invalid UTF-8 sequence. Texts over :data:`TEXT_CHAR_LIMIT` characters repeat
    their drawn part.

    >>> from hypothesis import given
    >>> @given(documents(kinds=["corrupt_pdf"], max_size=512))
    ... def test_corrupt(document):
    ...     assert document.data.startswith(b"%PDF-") and document.size <= 512
    >>> test_corrupt()
    """
    _check_sizes("documents", min_size, max_size)
    chosen = _resolve_kinds(kinds, min_size, max_size)
    limit = min(max_size, TEXT_CHAR_LIMIT)
    return _documents(
        kinds=chosen,
        markdown=_texts(_DEFAULT_WORDS, 1, limit, markdown=True),
        plain=_texts(_DEFAULT_WORDS, 1, limit, markdown=False),
        min_size=min_size,
        max_size=max_size,
    )


def large_documents(
    *, min_size: int = 1_000_000, max_size: int = 10 * 2**20
) -> SearchStrategy[Document]:
    """Markdown uploads of ``min_size`` to ``max_size`` bytes, cheap to draw.

    One to four short markdown texts are drawn and repeated to the drawn size, so a
    10 MB document costs Hypothesis a few hundred choices. The size shrinks towards
    ``min_size``; repeated text means many chunks share a text and its sha.

    >>> from hypothesis import given, settings
    >>> @settings(max_examples=3)
    ... @given(large_documents(min_size=100_000, max_size=200_000))
    ... def test_large(document):
    ...     assert 100_000 <= document.size <= 200_000
    >>> test_large()
    """
    _check_sizes("large_documents", min_size, max_size)
    if min_size < 1:
        raise InvalidArgument(
            f"large_documents(min_size={min_size!r}): a markdown document has at least one "
            "byte; use min_size >= 1, or documents(kinds=['empty']) for an empty upload"
        )
    texts = st.lists(markdown_texts(min_size=1, max_size=800), min_size=1, max_size=4)
    return _large_documents(texts=texts, min_size=min_size, max_size=max_size)


# -- validation -----------------------------------------------------------------------


def _check_sizes(function: str, min_size: int, max_size: int) -> None:
    for name, value in (("min_size", min_size), ("max_size", max_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidArgument(
                f"{function}({name}={value!r}): {name} must be an int, not {type(value).__name__}"
            )
    if not 0 <= min_size <= max_size:
        raise InvalidArgument(
            f"{function}(min_size={min_size!r}, max_size={max_size!r}): "
            "need 0 <= min_size <= max_size"
        )


def _words(alphabet: str | SearchStrategy[str] | None, function: str) -> SearchStrategy[str]:
    if alphabet is None:
        return _DEFAULT_WORDS
    if isinstance(alphabet, str):
        if not alphabet:
            raise InvalidArgument(
                f"{function}(alphabet=''): the alphabet is empty; pass at least one "
                "character, or alphabet=None for the default"
            )
    elif not isinstance(alphabet, SearchStrategy):
        raise InvalidArgument(
            f"{function}(alphabet={alphabet!r}): alphabet must be a str, a strategy of "
            f"single characters or None, not {type(alphabet).__name__}"
        )
    # st.text checks, as it draws, that a strategy alphabet yields single characters.
    return st.text(alphabet, min_size=1, max_size=8)


def _fits(kind: DocumentKind, min_size: int, max_size: int) -> str | None:
    """Why ``kind`` cannot have min_size..max_size bytes, or None when it can."""
    if kind is DocumentKind.EMPTY:
        return None if min_size == 0 else "an empty document has 0 bytes; use min_size=0"
    if kind is DocumentKind.CORRUPT_PDF:
        if max_size >= _CORRUPT_MIN_SIZE:
            return None
        return f"a corrupt PDF has a {_CORRUPT_MIN_SIZE}-byte header; use max_size >= 9"
    if kind is DocumentKind.PDF:
        # A padded PDF may overshoot min_size by one byte (see pdf_document).
        needed = max(min_pdf_size(), min_size + 1)
        if max_size >= needed:
            return None
        return (
            f"the smallest PDF has {min_pdf_size()} bytes and padding may overshoot "
            f"min_size by one; use max_size >= {needed}"
        )
    return None if max_size >= 1 else f"a {kind.value} document has at least 1 byte"


def _resolve_kinds(
    kinds: Iterable[DocumentKind | str] | None, min_size: int, max_size: int
) -> list[DocumentKind]:
    if kinds is None:
        return [kind for kind in DocumentKind if _fits(kind, min_size, max_size) is None]
    if isinstance(kinds, str | SearchStrategy) or not isinstance(kinds, Iterable):
        raise InvalidArgument(
            f"documents(kinds={kinds!r}): kinds must be a collection of DocumentKind, "
            "e.g. kinds=[DocumentKind.MARKDOWN]"
        )
    valid = ", ".join(repr(kind.value) for kind in DocumentKind)
    chosen: set[DocumentKind] = set()
    for kind in kinds:
        try:
            chosen.add(DocumentKind(kind))
        except ValueError:
            raise InvalidArgument(
                f"documents(kinds=...): {kind!r} is not a DocumentKind; valid kinds: {valid}"
            ) from None
    if not chosen:
        raise InvalidArgument(f"documents(kinds=[]): name at least one kind of {valid}")
    for kind in chosen:
        reason = _fits(kind, min_size, max_size)
        if reason is not None:
            raise InvalidArgument(
                f"documents(kinds=[..., {kind.value!r}], min_size={min_size}, "
                f"max_size={max_size}): {reason}"
            )
    # Enum order, whatever order the caller used: markdown first, so shrinking heads
    # to markdown, and the same arguments give the same strategy.
    return [kind for kind in DocumentKind if kind in chosen]


# -- texts ----------------------------------------------------------------------------


_Block = Callable[[str], str]
"""A block of text, rendered with the text's separator between words."""


def _blocks(words: SearchStrategy[str], *, markdown: bool) -> SearchStrategy[_Block]:
    line = st.lists(words, min_size=1, max_size=8)

    def paragraph(ws: list[str]) -> _Block:
        return lambda separator: separator.join(ws) + "\n"

    # Long lines and long words repeat a drawn part: they must outgrow a chunk
    # (1200 characters by default) without costing a choice per character.
    def long_line(ws: list[str], times: int) -> _Block:
        return lambda separator: separator.join(ws * times) + "\n"

    def long_word(word: str, times: int) -> _Block:
        return lambda separator: word * times + "\n"

    def heading(level: int, ws: list[str]) -> _Block:
        return lambda separator: "#" * level + " " + separator.join(ws) + "\n"

    def bullets(items: list[tuple[str, list[str]]]) -> _Block:
        return lambda separator: "".join(m + separator.join(ws) + "\n" for m, ws in items)

    def fence(ws: list[str]) -> _Block:
        return lambda separator: "```\n" + separator.join(ws) + "\n```\n"

    blocks = [
        line.map(paragraph),
        st.just(lambda separator: "\n"),
        st.builds(long_line, line, st.integers(2, 80)),
        st.builds(long_word, words, st.integers(2, 400)),
    ]
    if markdown:
        items = st.lists(st.tuples(_LIST_MARKERS, line), min_size=1, max_size=5)
        blocks[1:1] = [st.builds(heading, st.integers(1, 6), line), items.map(bullets)]
        blocks.append(line.map(fence))
    return st.one_of(blocks)


def _texts(
    words: SearchStrategy[str], min_size: int, max_size: int, *, markdown: bool
) -> SearchStrategy[str]:
    # Strategies are built here, once per call of a public function, not in the
    # composite: building them on every draw made shrinking several times slower.
    block_lists = st.lists(_blocks(words, markdown=markdown), max_size=30)

    @st.composite
    def texts(draw: st.DrawFn) -> str:
        separator = draw(_SEPARATORS)
        pieces: list[str] = []
        length = 0
        for block in draw(block_lists):
            if length >= max_size:
                break
            pieces.append(block(separator))
            length += len(pieces[-1])
        text = "".join(pieces)[:max_size]
        if len(text) < min_size:
            filler = draw(words) + separator
            text += (filler * (min_size // len(filler) + 1))[: min_size - len(text)]
        return text

    return texts()


# -- documents ------------------------------------------------------------------------


def _resize(data: bytes, size: int) -> bytes:
    """``data`` repeated or cut (at a character boundary) to ``size`` bytes of UTF-8,
    newline-padded where a cut character leaves a gap; ``data`` must not be empty."""
    if len(data) < size:
        data = data * (size // len(data) + 1)
    cut = size
    while 0 < cut < len(data) and data[cut] & 0xC0 == 0x80:
        cut -= 1
    return data[:cut] + b"\n" * (size - cut)


def _not_a_pdf(data: bytes) -> bytes:
    # The parser tells PDFs by their first bytes, not by their name or type: text
    # that starts like a PDF would be parsed (and rejected) as one.
    return b"#" + data[1:] if data.startswith(_PDF_MAGIC) else data


@st.composite
def _documents(
    draw: st.DrawFn,
    *,
    kinds: list[DocumentKind],
    markdown: SearchStrategy[str],
    plain: SearchStrategy[str],
    min_size: int,
    max_size: int,
) -> Document:
    kind = draw(st.sampled_from(kinds))
    if kind is DocumentKind.MARKDOWN:
        data = _text_data(draw(markdown), min_size, max_size)
        return Document("document.md", MARKDOWN_TYPE, data, kind)
    if kind is DocumentKind.TEXT:
        data = _text_data(draw(plain), min_size, max_size)
        return Document("document.txt", TEXT_TYPE, data, kind)
    if kind is DocumentKind.PDF:
        return _pdf(draw, min_size, max_size)
    if kind is DocumentKind.CORRUPT_PDF:
        return _corrupt_pdf(draw, min_size, max_size)
    if kind is DocumentKind.UNDECODABLE:
        return _undecodable(draw, draw(plain), min_size, max_size)
    # The empty document draws a text it does not use. Shrinking prefers fewer
    # choices over lower ones, so a draw-nothing branch would beat markdown, and a
    # failure that any upload triggers would shrink to the empty upload rather than
    # to a one-character markdown file.
    draw(markdown)
    return Document("empty.txt", TEXT_TYPE, b"", DocumentKind.EMPTY)


def _text_data(text: str, min_size: int, max_size: int) -> bytes:
    data = text.encode("utf-8")
    return _not_a_pdf(_resize(data, min(max(len(data), min_size), max_size)))


def _undecodable(draw: st.DrawFn, text: str, min_size: int, max_size: int) -> Document:
    bad = draw(
        st.sampled_from([sequence for sequence in INVALID_UTF8 if len(sequence) <= max_size])
    )
    room = max_size - len(bad)
    body = text.encode("utf-8")
    if len(body) > room:
        body = _resize(body, room)
    at = draw(st.integers(0, len(body)))
    while 0 < at < len(body) and body[at] & 0xC0 == 0x80:
        at -= 1  # between characters: a continuation byte after `bad` could complete it
    data = body[:at] + bad + body[at:]
    data = _not_a_pdf(data + b"\n" * (min_size - len(data)))
    return Document("undecodable.txt", TEXT_TYPE, data, DocumentKind.UNDECODABLE)


def _corrupt_pdf(draw: st.DrawFn, min_size: int, max_size: int) -> Document:
    if draw(st.booleans()):
        # Damaged real PDFs (truncated, or without their cross-reference section).
        data = corrupt_pdf(draw(st.integers(0, 2**16))).data
    else:
        header = draw(st.sampled_from(_PDF_HEADERS))
        junk = draw(st.binary(max_size=min(max_size - len(header), 2048)))
        # No "%", so no "%%EOF" marker, which pypdf cannot do without.
        data = header + junk.replace(b"%", b"#")
    data = data[:max_size] + b"\n" * (min_size - len(data))
    return Document("corrupt.pdf", PDF_TYPE, data, DocumentKind.CORRUPT_PDF)


def _pdf(draw: st.DrawFn, min_size: int, max_size: int) -> Document:
    pages = draw(_PDF_PAGES)
    document = pdf_document(pages, min_size=min_size)
    # Halve the text, then drop pages, until it fits: one blank page always does,
    # since _fits checked max_size against the smallest PDF.
    while document.size > max_size:
        if any(pages):
            pages = [text[: len(text) // 2] for text in pages]
        elif len(pages) > 1:
            pages = pages[:-1]
        else:
            raise AssertionError(f"a blank page PDF has {document.size} > {max_size} bytes")
        document = pdf_document(pages, min_size=min_size)
    return document


@st.composite
def _large_documents(
    draw: st.DrawFn, *, texts: SearchStrategy[list[str]], min_size: int, max_size: int
) -> Document:
    size = draw(st.integers(min_size, max_size))
    unit = ("\n\n".join(draw(texts)) + "\n\n").encode("utf-8")
    data = _not_a_pdf(_resize(unit, size))
    return Document("large.md", MARKDOWN_TYPE, data, DocumentKind.MARKDOWN)


__all__ = ["TEXT_CHAR_LIMIT", "documents", "large_documents", "markdown_texts"]

"""The deterministic chunker of the reference pipeline, whole-text and streaming.

A :class:`Chunker` cuts a text greedily, front to back. From a position ``p``:

1. if fewer than ``max_chars`` characters remain, the rest is the last chunk;
2. otherwise, in the window ``text[p:p + max_chars]``, cut just after the last
   ``"\\n\\n"`` that ends at or after ``min_chars`` characters into the window;
3. else just after the last ``"\\n"`` that ends at or after ``min_chars``;
4. else just after the last whitespace character (``str.isspace``) that ends at or
   after ``min_chars``;
5. else cut hard at ``max_chars``.

Lengths are in characters (code points). Chunks keep their separators, so joining
the chunk texts gives back the text exactly, no chunk is empty, every chunk has at
most ``max_chars`` characters, and every chunk but the last has at least
``min_chars``. Each chunk knows its byte range in the UTF-8 encoding of the whole
document, which is where a streaming run restarts after a crash: the cut depends
only on the text from the chunk's start, so restarting at any chunk's
``(byte_start, ordinal)`` yields exactly the chunks the full run yields from there.

>>> chunker = Chunker(min_chars=8, max_chars=16)
>>> [c.text for c in chunker.split("# Title\\n\\nFirst paragraph here.\\n")]
['# Title\\n\\n', 'First paragraph ', 'here.\\n']
>>> data = "naïve café — déjà vu, ok".encode()
>>> chunks = list(chunker.iter_chunks(lambda offset, size: data[offset : offset + size]))
>>> [(c.ordinal, c.text, c.byte_start, c.byte_end) for c in chunks]
[(0, 'naïve café — ', 0, 17), (1, 'déjà vu, ok', 17, 30)]
>>> chunks == chunker.split(data.decode())
True
"""

from __future__ import annotations

import codecs
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pipeline_models.errors import DocumentRejectedError
from pipeline_models.pipeline import identity

Read = Callable[[int, int], bytes]
"""``read(offset, size)``: up to ``size`` bytes of the blob at ``offset``; ``b""`` at the end."""

# Matched from the window's lower bound, the greedy ``.*`` runs to the window's end
# and backtracks to the last whitespace: a backward search done in C, where a Python
# loop over the window would dominate the run time on texts without newlines.
_UP_TO_LAST_SPACE = re.compile(r".*\s", re.DOTALL)


class ChunkingError(DocumentRejectedError, ValueError):
    """The text cannot be chunked: the blob is not valid UTF-8, or the text has no
    UTF-8 encoding (a lone surrogate).

    It is a :class:`~pipeline_models.errors.DocumentRejectedError` because retrying
    cannot help: the same bytes fail the same way.
    """


@dataclass(frozen=True)
class Chunk:
    """One chunk: its position in the document, its text, and its UTF-8 byte range.

    ``byte_start``/``byte_end`` are offsets in the UTF-8 encoding of the whole
    document, so ``data[chunk.byte_start:chunk.byte_end].decode() == chunk.text``.

    >>> Chunk(0, "héllo", 0, 6).sha == identity.text_sha("héllo")
    True
    """

    ordinal: int
    text: str
    byte_start: int
    byte_end: int

    @property
    def sha(self) -> str:
        """SHA-256 of the chunk's UTF-8 text, hex (the ``chunk_sha`` column)."""
        return identity.text_sha(self.text)


@dataclass(frozen=True)
class Chunker:
    """A greedy, separator-preferring chunker (rules in the module docstring).

    ``name`` and ``version`` enter every chunk id: change the version whenever the
    cutting rule or the bounds change, so that old and new chunks never share ids.

    >>> first, last = Chunker(min_chars=3, max_chars=6).split("ab cd ef gh")
    >>> first
    Chunk(ordinal=0, text='ab cd ', byte_start=0, byte_end=6)
    >>> last.text, last.byte_start, last.byte_end
    ('ef gh', 6, 11)
    """

    name: str = "greedy-markdown"
    version: str = "1"
    min_chars: int = 400
    max_chars: int = 1200

    def __post_init__(self) -> None:
        if not 1 <= self.min_chars <= self.max_chars:
            raise ValueError(
                f"Chunker(min_chars={self.min_chars!r}, max_chars={self.max_chars!r}): "
                "the bounds must satisfy 1 <= min_chars <= max_chars"
            )

    @property
    def read_size(self) -> int:
        """Bytes asked for per read when streaming: enough for ``max_chars`` characters
        of any width (UTF-8 uses at most 4 bytes per character)."""
        return 4 * self.max_chars

    def chunk_id(self, document_id: uuid.UUID | str, ordinal: int) -> uuid.UUID:
        """The stable id of chunk ``ordinal`` of a document under this chunker."""
        return identity.chunk_id(document_id, self.name, self.version, ordinal)

    def split(self, text: str) -> list[Chunk]:
        """All the chunks of a whole text (what the oracle uses).

        >>> [c.text for c in Chunker(min_chars=2, max_chars=4).split("abcdefghij")]
        ['abcd', 'efgh', 'ij']
        """
        chunks: list[Chunk] = []
        position = 0
        byte = 0
        while position < len(text):
            end = self._cut(text, position)
            piece = text[position:end]
            size = _utf8_size(piece, position)
            chunks.append(Chunk(len(chunks), piece, byte, byte + size))
            position = end
            byte += size
        return chunks

    def iter_chunks(
        self,
        read: Read,
        *,
        byte_offset: int = 0,
        ordinal: int = 0,
        read_size: int | None = None,
    ) -> Iterator[Chunk]:
        """Stream the chunks of a UTF-8 blob through ``read``, never holding it whole.

        Start at ``byte_offset`` numbering from ``ordinal``; to resume a run, pass the
        ``byte_start`` and ``ordinal`` of the first chunk not yet persisted. The blob
        is decoded incrementally (a read may end inside a character, and ``read`` may
        return fewer bytes than asked: only ``b""`` means the end). At most
        ``max_chars - 1`` characters plus one read are held at a time. ``read_size``
        defaults to :attr:`read_size`.

        Raises :class:`ChunkingError` on invalid UTF-8, with the blob offset of the
        first bad byte (a resume offset inside a character is such a byte).

        >>> data = b"one two three"
        >>> def read(offset, size):
        ...     return data[offset : offset + size]
        >>> chunker = Chunker(min_chars=2, max_chars=5)
        >>> [c.text for c in chunker.iter_chunks(read, read_size=1)]
        ['one ', 'two ', 'three']
        >>> [(c.ordinal, c.text) for c in chunker.iter_chunks(read, byte_offset=4, ordinal=1)]
        [(1, 'two '), (2, 'three')]
        """
        if byte_offset < 0 or ordinal < 0:
            raise ValueError(
                f"iter_chunks(byte_offset={byte_offset!r}, ordinal={ordinal!r}): both must be >= 0"
            )
        size_per_read = self.read_size if read_size is None else read_size
        if size_per_read < 1:
            raise ValueError(f"iter_chunks(read_size={read_size!r}): read_size must be >= 1")
        return self._iter_chunks(read, byte_offset, ordinal, size_per_read)

    def count_chunks(self, read: Read, *, byte_offset: int = 0) -> int:
        """How many chunks the blob has from ``byte_offset`` on, streaming.

        >>> data = b"abcdefghij"
        >>> Chunker(min_chars=2, max_chars=4).count_chunks(lambda o, n: data[o : o + n])
        3
        """
        return sum(1 for _ in self.iter_chunks(read, byte_offset=byte_offset))

    def _iter_chunks(
        self, read: Read, byte_offset: int, ordinal: int, read_size: int
    ) -> Iterator[Chunk]:
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        buffer = ""
        position = 0  # start of the next chunk in ``buffer``
        next_read = byte_offset  # blob offset of the next byte to read
        byte = byte_offset  # blob offset of the next chunk
        at_end = False
        while True:
            # The cut only looks max_chars characters ahead, so that much (or the end
            # of the blob) is all that must be buffered.
            while not at_end and len(buffer) - position < self.max_chars:
                data = read(next_read, read_size)
                pending = len(decoder.getstate()[0])
                at_end = not data
                try:
                    decoded = decoder.decode(data, final=at_end)
                except UnicodeDecodeError as exc:
                    # exc.start counts from the bytes held back by the previous call.
                    bad = next_read - pending + exc.start
                    raise ChunkingError(
                        f"the blob is not valid UTF-8 at byte {bad} ({exc.reason}); "
                        "if this run resumed at byte_offset="
                        f"{byte_offset}, that offset must be a chunk's byte_start"
                    ) from None
                next_read += len(data)
                if decoded:
                    buffer = buffer[position:] + decoded
                    position = 0
            if position >= len(buffer):
                return
            end = self._cut(buffer, position)
            piece = buffer[position:end]
            size = len(piece) if piece.isascii() else len(piece.encode("utf-8"))
            yield Chunk(ordinal, piece, byte, byte + size)
            ordinal += 1
            byte += size
            position = end

    def _cut(self, text: str, start: int) -> int:
        """Where the chunk starting at ``start`` ends (exclusive index into ``text``).

        ``text[start:]`` holds either at least ``max_chars`` characters or the whole
        rest of the document: the streaming loop guarantees it.
        """
        end = start + self.max_chars
        if len(text) < end:
            return len(text)
        # A separator qualifies when the chunk it closes has at least min_chars
        # characters; rfind's lower bound is where such a separator may begin.
        found = text.rfind("\n\n", start + max(self.min_chars - 2, 0), end)
        if found >= 0:
            return found + 2
        lowest = start + self.min_chars - 1
        found = text.rfind("\n", lowest, end)
        if found >= 0:
            return found + 1
        match = _UP_TO_LAST_SPACE.match(text, lowest, end)
        if match is not None:
            return match.end()
        return end


def _utf8_size(piece: str, position: int) -> int:
    if piece.isascii():
        return len(piece)
    try:
        return len(piece.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ChunkingError(
            f"the text has no UTF-8 encoding: {exc.reason} at character "
            f"{position + exc.start}; pass text decoded from UTF-8"
        ) from None


__all__ = ["Chunk", "Chunker", "ChunkingError", "Read"]

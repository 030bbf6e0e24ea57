"""Properties of the reference chunker: whole-text and streaming forms agree, and cut
exactly where the greedy rule says."""

from __future__ import annotations

import hashlib
import tracemalloc
import uuid
from collections.abc import Callable

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from pipeline_models.pipeline import identity
from pipeline_models.pipeline.chunking import Chunk, Chunker, ChunkingError
from strategies import markdown_texts

Read = Callable[[int, int], bytes]

# Small bounds make a few hundred characters span many chunks and hit every rule.
chunkers = st.builds(
    lambda low, extra: Chunker(min_chars=low, max_chars=low + extra),
    st.integers(1, 40),
    st.integers(0, 60),
)
# Texts dense in the separators the rule looks for, and in multi-byte characters.
dense_texts = st.text(
    st.sampled_from(["a", "b", " ", "\n", "\t", "\u3000", "é", "€", "日", "😀", "\U0010ffff"]),
    max_size=400,
)
texts = st.one_of(dense_texts, markdown_texts(max_size=1500), st.text(max_size=300))


def reader(data: bytes, *, at_most: int | None = None) -> Read:
    """A ``read`` over ``data`` that returns at most ``at_most`` bytes per call."""

    def read(offset: int, size: int) -> bytes:
        assert offset >= 0
        assert size >= 1
        return data[offset : offset + min(size, at_most or size)]

    return read


def reference_split(chunker: Chunker, text: str) -> list[str]:
    """The greedy rule, restated one character at a time (slow and obvious)."""
    pieces = []
    start = 0
    while start < len(text):
        if len(text) - start < chunker.max_chars:
            cut = len(text)
        else:
            window = text[start : start + chunker.max_chars]
            ends = range(chunker.max_chars, chunker.min_chars - 1, -1)  # chunk lengths
            cut = start + next(
                (end for end in ends if end >= 2 and window[end - 2 : end] == "\n\n"),
                next(
                    (end for end in ends if window[end - 1] == "\n"),
                    next((end for end in ends if window[end - 1].isspace()), chunker.max_chars),
                ),
            )
        pieces.append(text[start:cut])
        start = cut
    return pieces


@given(chunkers, texts)
def test_split_follows_the_greedy_rule_exactly(chunker: Chunker, text: str) -> None:
    assert [chunk.text for chunk in chunker.split(text)] == reference_split(chunker, text)


@given(chunkers, texts)
def test_split_is_deterministic(chunker: Chunker, text: str) -> None:
    same = Chunker(chunker.name, chunker.version, chunker.min_chars, chunker.max_chars)
    assert chunker.split(text) == chunker.split(text) == same.split(text)


@given(chunkers, texts)
def test_chunks_reassemble_into_the_whole_text(chunker: Chunker, text: str) -> None:
    assert "".join(chunk.text for chunk in chunker.split(text)) == text


@given(chunkers, texts)
def test_chunks_are_never_empty_and_respect_the_bounds(chunker: Chunker, text: str) -> None:
    chunks = chunker.split(text)
    assert all(1 <= len(chunk.text) <= chunker.max_chars for chunk in chunks)
    assert all(len(chunk.text) >= chunker.min_chars for chunk in chunks[:-1])


@given(chunkers, texts)
def test_ordinals_count_from_zero_and_byte_offsets_slice_the_encoded_text(
    chunker: Chunker, text: str
) -> None:
    data = text.encode("utf-8")
    chunks = chunker.split(text)
    assert [chunk.ordinal for chunk in chunks] == list(range(len(chunks)))
    starts = [0, *(chunk.byte_end for chunk in chunks)][: len(chunks)]
    assert [chunk.byte_start for chunk in chunks] == starts
    assert (chunks[-1].byte_end if chunks else 0) == len(data)
    for chunk in chunks:
        assert data[chunk.byte_start : chunk.byte_end].decode("utf-8") == chunk.text
        assert chunk.sha == identity.text_sha(chunk.text)


@given(chunkers, texts, st.integers(1, 64), st.integers(1, 7))
def test_streaming_chunks_equal_whole_text_chunks(
    chunker: Chunker, text: str, read_size: int, at_most: int
) -> None:
    data = text.encode("utf-8")
    expected = chunker.split(text)
    assert list(chunker.iter_chunks(reader(data), read_size=read_size)) == expected
    # A read may return less than asked, splitting characters anywhere.
    assert list(chunker.iter_chunks(reader(data, at_most=at_most))) == expected
    assert chunker.count_chunks(reader(data)) == len(expected)


@given(
    chunkers,
    st.text(st.characters(min_codepoint=0x80, exclude_categories=["Cs"]), max_size=200),
    st.integers(1, 7),
)
def test_streaming_handles_tiny_reads_of_multibyte_text(
    chunker: Chunker, text: str, read_size: int
) -> None:
    data = text.encode("utf-8")
    chunks = list(chunker.iter_chunks(reader(data), read_size=read_size))
    assert chunks == chunker.split(text)


@given(chunkers, texts, st.data())
def test_restarting_at_any_chunk_yields_the_rest_of_the_full_run(
    chunker: Chunker, text: str, data: st.DataObject
) -> None:
    blob = text.encode("utf-8")
    chunks = list(chunker.iter_chunks(reader(blob)))
    if not chunks:
        assert list(chunker.iter_chunks(reader(blob), byte_offset=len(blob))) == []
        return
    resume = data.draw(st.sampled_from(chunks), label="resume")
    read_size = data.draw(st.integers(1, 16), label="read_size")
    rest = chunker.iter_chunks(
        reader(blob), byte_offset=resume.byte_start, ordinal=resume.ordinal, read_size=read_size
    )
    assert list(rest) == chunks[resume.ordinal :]


@given(chunkers, texts)
def test_streaming_reads_only_a_bounded_window_ahead(chunker: Chunker, text: str) -> None:
    data = text.encode("utf-8")
    furthest = 0

    def read(offset: int, size: int) -> bytes:
        nonlocal furthest
        furthest = max(furthest, offset + size)
        return data[offset : offset + size]

    for chunk in chunker.iter_chunks(read):
        # What was asked for beyond this chunk: under max_chars more characters (at
        # most 4 bytes each) plus one read.
        assert furthest - chunk.byte_end < 4 * chunker.max_chars + chunker.read_size


def test_streaming_memory_stays_bounded_on_a_large_document() -> None:
    paragraph = "Ein Absatz über Daten — with “quotes”, émojis 📄 and 日本語.\n\n" * 3
    data = (paragraph * (4 * 2**20 // len(paragraph.encode()))).encode("utf-8")
    chunker = Chunker()
    tracemalloc.start()
    try:
        count = 0
        for _ in chunker.iter_chunks(reader(data)):
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count > 1000
    # One read (4 * max_chars bytes), its decoded text and a chunk or two: tens of kB
    # where the document is 4 MB.
    assert peak < 200_000


def test_invalid_utf8_raises_chunking_error_with_the_offset() -> None:
    data = "héllo wörld ".encode() + b"\xff" + b" rest"
    with pytest.raises(ChunkingError, match=r"not valid UTF-8 at byte 14"):
        list(Chunker(min_chars=1, max_chars=4).iter_chunks(reader(data), read_size=3))


@given(st.integers(1, 8))
def test_a_character_cut_off_at_the_end_raises_chunking_error(read_size: int) -> None:
    data = "ok €".encode()[:-1]
    with pytest.raises(ChunkingError, match=r"at byte 3 \(unexpected end of data\)"):
        list(Chunker(min_chars=1, max_chars=2).iter_chunks(reader(data), read_size=read_size))


def test_restarting_inside_a_character_raises_chunking_error() -> None:
    data = "€uro".encode()
    with pytest.raises(ChunkingError, match=r"at byte 1 .*must be a chunk's byte_start"):
        list(Chunker(min_chars=1, max_chars=2).iter_chunks(reader(data), byte_offset=1))


def test_chunking_error_is_a_value_error() -> None:
    assert issubclass(ChunkingError, ValueError)


def test_split_rejects_text_without_a_utf8_encoding() -> None:
    with pytest.raises(ChunkingError, match="surrogates not allowed at character 2"):
        Chunker(min_chars=1, max_chars=10).split("ab\ud800cd")


@pytest.mark.parametrize(("min_chars", "max_chars"), [(0, 10), (11, 10), (-1, 5), (1, 0)], ids=str)
def test_chunker_rejects_bounds_out_of_order(min_chars: int, max_chars: int) -> None:
    with pytest.raises(ValueError, match=r"1 <= min_chars <= max_chars"):
        Chunker(min_chars=min_chars, max_chars=max_chars)


def test_iter_chunks_rejects_negative_positions_and_empty_reads() -> None:
    chunker = Chunker()
    with pytest.raises(ValueError, match="must be >= 0"):
        chunker.iter_chunks(reader(b"x"), byte_offset=-1)
    with pytest.raises(ValueError, match="read_size must be >= 1"):
        chunker.iter_chunks(reader(b"x"), read_size=0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A paragraph break past min_chars wins over a later newline and spaces.
        ("aaa\n\nbb\ncc dd", ["aaa\n\n", "bb\ncc dd"]),
        # A paragraph break ending exactly at min_chars counts.
        ("aa\n\nbb\ncc dd", ["aa\n\n", "bb\ncc dd"]),
        # A paragraph break before min_chars does not count; the last newline does.
        ("a\n\nbbbb\ncc dd", ["a\n\nbbbb\n", "cc dd"]),
        # No newline past min_chars: the last whitespace of the window.
        ("a\nbbbb cc\u3000dd", ["a\nbbbb cc\u3000", "dd"]),
        # No whitespace past min_chars: a hard cut at max_chars.
        ("a bbbbbbbbbbbbbbbb", ["a bbbbbbbbb", "bbbbbbb"]),
        # Exactly max_chars left: the window rule still applies.
        ("aaaaaa bbbb", ["aaaaaa ", "bbbb"]),
        # Fewer than max_chars left: one last chunk.
        ("aaaaaa bbb", ["aaaaaa bbb"]),
        ("", []),
    ],
)
def test_each_rule_of_the_greedy_cut(text: str, expected: list[str]) -> None:
    chunker = Chunker(min_chars=4, max_chars=11)
    assert [chunk.text for chunk in chunker.split(text)] == expected


@given(
    st.uuids(),
    st.text(min_size=1, max_size=20),
    st.text(min_size=1, max_size=5),
    st.integers(0, 10**6),
    st.sampled_from(["document", "name", "version", "ordinal"]),
)
def test_chunk_ids_are_stable_and_change_with_every_input(
    document_id: uuid.UUID, name: str, version: str, ordinal: int, changed: str
) -> None:
    chunker = Chunker(name=name, version=version)
    first = chunker.chunk_id(document_id, ordinal)
    assert first == identity.chunk_id(document_id, name, version, ordinal)
    assert first == identity.chunk_id(str(document_id), name, version, ordinal)
    other = {
        "document": (uuid.UUID(int=document_id.int ^ 1), name, version, ordinal),
        "name": (document_id, name + "x", version, ordinal),
        "version": (document_id, name, version + "1", ordinal),
        "ordinal": (document_id, name, version, ordinal + 1),
    }[changed]
    assert identity.chunk_id(*other) != first


def test_chunk_sha_is_the_sha256_of_its_utf8_text() -> None:
    assert Chunk(0, "héllo", 0, 6).sha == hashlib.sha256("héllo".encode()).hexdigest()


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**16))
def test_large_markdown_streams_like_it_splits(seed: int) -> None:
    from pipeline_models.documents import large_markdown_document

    data = large_markdown_document(300_000, seed=seed).data
    chunker = Chunker()
    assert list(chunker.iter_chunks(reader(data))) == chunker.split(data.decode("utf-8"))

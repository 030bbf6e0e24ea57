"""Properties of the fake embeddings and token counts (pure, no I/O)."""

from __future__ import annotations

import base64
import math
import struct
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline_models.fakes.vectors import (
    MAX_INPUTS,
    MAX_TOKENS_PER_INPUT,
    MODEL_DIMENSIONS,
    count_tokens,
    embedding_for,
)

models = st.sampled_from(sorted(MODEL_DIMENSIONS))
# Lone surrogates included: a JSON body can carry them and the fake must not choke.
texts = st.text(st.characters(codec=None, exclude_categories=()), max_size=200)
dimensions = st.integers(min_value=1, max_value=64)


@given(text=texts, model=models, size=dimensions)
def test_an_embedding_is_a_pure_function_of_model_text_and_dimensions(
    text: str, model: str, size: int
) -> None:
    first = embedding_for(text, model=model, dimensions=size)
    assert first == embedding_for(text, model=model, dimensions=size)
    assert len(first) == size


@given(text=texts, model=models, size=dimensions)
def test_an_embedding_has_unit_length(text: str, model: str, size: int) -> None:
    vector = embedding_for(text, model=model, dimensions=size)
    # float32 rounding of each component leaves the norm within a few float32 ulps of 1.
    assert math.isclose(math.fsum(x * x for x in vector), 1.0, abs_tol=1e-5)


@given(text=texts, model=models, size=dimensions)
def test_every_component_survives_float32_storage_exactly(text: str, model: str, size: int) -> None:
    vector = embedding_for(text, model=model, dimensions=size)
    assert tuple(array("f", vector)) == vector
    packed = base64.b64encode(struct.pack(f"<{size}f", *vector))
    assert struct.unpack(f"<{size}f", base64.b64decode(packed)) == vector


@given(a=texts, b=texts, model=models)
def test_different_texts_get_different_vectors(a: str, b: str, model: str) -> None:
    if a != b:
        assert embedding_for(a, model=model, dimensions=8) != embedding_for(
            b, model=model, dimensions=8
        )


def test_different_models_embed_the_same_text_differently() -> None:
    vectors = {embedding_for("same text", model=model, dimensions=16) for model in MODEL_DIMENSIONS}
    assert len(vectors) == len(MODEL_DIMENSIONS)


@given(text=texts, size=st.integers(min_value=1, max_value=1536))
def test_a_shortened_embedding_points_along_the_prefix_of_the_full_one(
    text: str, size: int
) -> None:
    # Like OpenAI's `dimensions`: the short vector is the renormalised prefix.
    full = embedding_for(text, model="text-embedding-3-small", dimensions=1536)
    short = embedding_for(text, model="text-embedding-3-small", dimensions=size)
    prefix_norm = math.sqrt(math.fsum(x * x for x in full[:size]))
    cosine = math.fsum(a * b for a, b in zip(short, full[:size], strict=True)) / prefix_norm
    assert cosine == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "8"])
def test_embedding_for_refuses_dimensions_that_are_not_a_positive_int(bad: object) -> None:
    with pytest.raises(ValueError, match="dimensions must be a positive int"):
        embedding_for("x", model="text-embedding-3-small", dimensions=bad)  # type: ignore[arg-type]


def test_the_models_and_limits_match_openai() -> None:
    assert MODEL_DIMENSIONS == {
        "text-embedding-3-small": 1536,
        "text-embedding-3-large": 3072,
        "text-embedding-ada-002": 1536,
    }
    assert (MAX_INPUTS, MAX_TOKENS_PER_INPUT) == (2048, 8191)


@given(text=texts)
def test_token_counts_are_positive_exactly_for_non_empty_text(text: str) -> None:
    assert (count_tokens(text) >= 1) == bool(text)
    assert count_tokens(text) == count_tokens(text)


@given(a=texts, b=texts)
def test_token_counts_grow_with_the_text_and_split_at_most_one_token_per_join(
    a: str, b: str
) -> None:
    joined = count_tokens(a + b)
    assert max(count_tokens(a), count_tokens(b)) <= joined <= count_tokens(a) + count_tokens(b)


def test_a_token_is_about_four_bytes_of_utf8() -> None:
    assert [count_tokens(s) for s in ["", "a", "abcd", "abcde", "é" * 2, "€"]] == [0, 1, 1, 2, 1, 1]

"""Deterministic fake embeddings and token counts (pure: the model checker's oracle uses them).

A vector is expanded from SHAKE-256 of the model name and the text, read as signed
16-bit integers, scaled to unit L2 norm and rounded to float32. Every component is
exactly a float32, so it survives Postgres ``real[]`` and base64 float32 unchanged.
Because SHAKE is an extendable-output function, a shorter vector is the renormalised
prefix of a longer one, as with OpenAI's ``dimensions`` parameter.

Speed (pure Python, one core of the development machine): 10,000 vectors of 1,536
dimensions in about 1.4 s, i.e. about 0.14 ms a vector.

>>> v = embedding_for("hello", model="text-embedding-3-small", dimensions=4)
>>> len(v), v == embedding_for("hello", model="text-embedding-3-small", dimensions=4)
(4, True)
>>> abs(sum(x * x for x in v) - 1.0) < 1e-6
True
>>> count_tokens("hello world")
3
"""

from __future__ import annotations

import hashlib
import math
import sys
from array import array

MODEL_DIMENSIONS: dict[str, int] = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
"""Native dimensions of the models the fake serves."""

MAX_INPUTS = 2048
"""Most inputs in one embeddings request."""

MAX_TOKENS_PER_INPUT = 8191
"""Most tokens (by :func:`count_tokens`) in one input."""

MAX_TOKENS_PER_REQUEST = 300_000
"""Most tokens summed over the inputs of one request (OpenAI's documented limit)."""

BYTES_PER_TOKEN = 4
"""The approximation behind :func:`count_tokens`."""


def count_tokens(text: str) -> int:
    """A deterministic token count: ceil(UTF-8 bytes / 4).

    OpenAI's rule of thumb is about four characters of English per token; counting
    UTF-8 bytes keeps the count cheap, monotone in the text and higher for scripts that
    tokenise worse. It is 0 only for the empty string.

    >>> count_tokens(""), count_tokens("a"), count_tokens("abcd"), count_tokens("abcde")
    (0, 1, 1, 2)
    """
    # surrogatepass: a JSON body may carry lone surrogates; they still cost tokens.
    return -(-len(text.encode("utf-8", "surrogatepass")) // BYTES_PER_TOKEN)


def embedding_for(text: str, *, model: str, dimensions: int) -> tuple[float, ...]:
    """The fake embedding of ``text`` by ``model``: unit length, float32-exact, stable.

    The same arguments give the same vector on every machine and Python version.
    ``model`` need not be one of :data:`MODEL_DIMENSIONS` (the validation is the
    service's job), and any positive ``dimensions`` works.

    >>> a = embedding_for("x", model="text-embedding-3-small", dimensions=3)
    >>> b = embedding_for("x", model="text-embedding-3-large", dimensions=3)
    >>> a != b
    True
    """
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
        raise ValueError(f"dimensions must be a positive int, got {dimensions!r}")
    seed = f"{model}\x00{text}".encode("utf-8", "surrogatepass")
    components = array("h", hashlib.shake_256(seed).digest(2 * dimensions))
    if sys.byteorder == "big":
        # The digest is read as little-endian on every machine, so vectors agree.
        components.byteswap()
    norm = math.hypot(*components)
    if norm == 0.0:
        # All-zero output has probability 2**-(16 * dimensions); still, never divide by 0.
        return (1.0,) + (0.0,) * (dimensions - 1)
    # map + array("f") keeps the loop in C (several times faster than a comprehension);
    # the float32 array does the rounding that real[] and base64 float32 would do.
    return tuple(array("f", map((1.0 / norm).__mul__, components)))


__all__ = [
    "BYTES_PER_TOKEN",
    "MAX_INPUTS",
    "MAX_TOKENS_PER_INPUT",
    "MAX_TOKENS_PER_REQUEST",
    "MODEL_DIMENSIONS",
    "count_tokens",
    "embedding_for",
]

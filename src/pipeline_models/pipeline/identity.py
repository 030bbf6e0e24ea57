"""Deterministic identities: the same document, chunker and ordinal give the same chunk id.

Ids are uuid5 over ``"{document_id}:{chunker_name}:{chunker_version}:{chunk_ord}"`` in a
fixed namespace (the scheme of the original design), so a retried batch writes the same
rows and ``ON CONFLICT DO NOTHING`` makes the write idempotent.

>>> str(chunk_id("00000000-0000-0000-0000-000000000001", "greedy-markdown", "1", 0))
'e7901e94-e68c-537e-be11-b8a54f989ec4'
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Sequence

CHUNK_NAMESPACE = uuid.UUID("6c8a1e6e-1f0b-4aa8-9f0a-1a7c2e6f2b42")


def chunk_id(
    document_id: uuid.UUID | str, chunker_name: str, chunker_version: str, chunk_ord: int
) -> uuid.UUID:
    """The stable id of chunk ``chunk_ord`` of a document under one chunker version."""
    return uuid.uuid5(
        CHUNK_NAMESPACE, f"{document_id}:{chunker_name}:{chunker_version}:{chunk_ord}"
    )


def text_sha(text: str) -> str:
    """SHA-256 of the UTF-8 text, hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def vector_sha(vector: Sequence[float]) -> str:
    """SHA-256 of the vector as little-endian float32, hex (what `real[]` stores)."""
    return hashlib.sha256(struct.pack(f"<{len(vector)}f", *vector)).hexdigest()


__all__ = ["CHUNK_NAMESPACE", "chunk_id", "text_sha", "vector_sha"]

"""Accepting an upload: what a file is (by content), and creating its document and job.

The blob is written first (content-addressed, so a repeat is free and a crash leaves at
most an unreferenced blob); then the document and its job are inserted in one
transaction, so there is never a document without a job. The same bytes from the same
user are the same document: a repeat, even a concurrent one, returns the existing
document and job.
"""

from __future__ import annotations

import codecs
import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

import asyncpg

from pipeline_models.clock import Clock
from pipeline_models.errors import DocumentRejectedError
from pipeline_models.pipeline.storage import BlobStorage, raw_key
from pipeline_models.queries import QUERIES, Queries

PDF = "application/pdf"
MARKDOWN = "text/markdown"
TEXT = "text/plain"
ACCEPTED_TYPES = (PDF, MARKDOWN, TEXT)
_MARKDOWN_SUFFIXES = (".md", ".markdown", ".mdown", ".mkd")
SNIFF_BYTES = 8192


def detect_type(head: bytes, *, filename: str, declared_type: str | None = None) -> str:
    """The type of a file from its first bytes: PDF, markdown or plain text.

    The content decides; the name and declared type only choose between markdown and
    plain text, which look alike. Anything else is rejected.

    >>> detect_type(b"%PDF-1.7 ...", filename="x.txt")
    'application/pdf'
    >>> detect_type(b"# Title", filename="notes.md")
    'text/markdown'
    """
    if not head:
        raise DocumentRejectedError(f"{filename!r} is empty")
    if head.startswith(b"%PDF-"):
        return PDF
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    try:
        # final=False: the sniffed prefix may end inside a multi-byte character.
        text = decoder.decode(head.removeprefix(codecs.BOM_UTF8), final=False)
    except UnicodeDecodeError as error:
        raise DocumentRejectedError(
            f"{filename!r} is neither PDF nor UTF-8 text (invalid byte at {error.start}); "
            f"accepted types: {', '.join(ACCEPTED_TYPES)}"
        ) from None
    if "\x00" in text:
        raise DocumentRejectedError(
            f"{filename!r} contains NUL bytes: binary data, not text; "
            f"accepted types: {', '.join(ACCEPTED_TYPES)}"
        )
    if declared_type == MARKDOWN or filename.lower().endswith(_MARKDOWN_SUFFIXES):
        return MARKDOWN
    return TEXT


class RejectionReason(StrEnum):
    EMPTY = "empty"
    TOO_LARGE = "too_large"
    UNSUPPORTED_TYPE = "unsupported_type"


class UploadRejectedError(DocumentRejectedError):
    """An upload refused at the door; nothing was stored."""

    def __init__(self, reason: RejectionReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_upload(data: bytes, *, filename: str, declared_type: str | None, max_bytes: int) -> str:
    """The type of an upload, judged on all of its bytes; raises :class:`UploadRejectedError`.

    Stricter than :func:`detect_type` (which sniffs a prefix): text must be valid UTF-8
    throughout. PDFs are only recognised here; whether they parse is the parser's call.
    """
    if not data:
        raise UploadRejectedError(RejectionReason.EMPTY, f"{filename!r} is empty")
    if len(data) > max_bytes:
        raise UploadRejectedError(
            RejectionReason.TOO_LARGE,
            f"{filename!r} has {len(data)} bytes; the limit is {max_bytes}",
        )
    try:
        detected = detect_type(data[:SNIFF_BYTES], filename=filename, declared_type=declared_type)
        if detected != PDF:
            text = data.removeprefix(codecs.BOM_UTF8).decode("utf-8")
            if "\x00" in text:
                raise DocumentRejectedError(f"{filename!r} contains NUL bytes: binary data")
    except UnicodeDecodeError as error:
        raise UploadRejectedError(
            RejectionReason.UNSUPPORTED_TYPE,
            f"{filename!r} is not valid UTF-8 text (invalid byte at {error.start}); "
            f"accepted types: {', '.join(ACCEPTED_TYPES)}",
        ) from None
    except DocumentRejectedError as error:
        raise UploadRejectedError(RejectionReason.UNSUPPORTED_TYPE, str(error)) from None
    return detected


UploadCheckpoint = Callable[[str, asyncpg.Connection], Awaitable[None]]


@dataclass(frozen=True)
class Upload:
    document_id: uuid.UUID
    job_id: uuid.UUID
    created: bool  # False: the same bytes were already uploaded by this user
    file_sha256: str


async def enqueue_upload(
    connection: asyncpg.Connection,
    storage: BlobStorage,
    clock: Clock,
    *,
    user_id: uuid.UUID,
    filename: str,
    declared_type: str,
    data: bytes,
    queries: Queries = QUERIES,
    checkpoint: UploadCheckpoint | None = None,
) -> Upload:
    """Store the bytes and create the document and its job, or return the existing ones.

    ``checkpoint`` is awaited with the connection at each point a crash could interrupt
    the upload ("blob_stored", "document_inserted", "job_inserted"); tests kill it there.
    """

    async def reached(point: str) -> None:
        if checkpoint is not None:
            await checkpoint(point, connection)

    file_sha256 = hashlib.sha256(data).hexdigest()
    key = raw_key(user_id, file_sha256)
    if not storage.exists(key):
        storage.put(key, data)
    await reached("blob_stored")
    now = clock.now()
    async with connection.transaction():
        document_id = await connection.fetchval(
            queries["insert_document"].sql,
            uuid.uuid4(),
            user_id,
            filename,
            declared_type,
            file_sha256,
            len(data),
            key,
            now,
        )
        if document_id is not None:
            await reached("document_inserted")
            job_id = uuid.uuid4()
            await connection.execute(
                queries["insert_job"].sql, job_id, document_id, user_id, uuid.uuid4().hex, now
            )
            await reached("job_inserted")
            return Upload(document_id, job_id, True, file_sha256)
    # The unique (user, sha) index made a concurrent twin wait for our rival's commit; the
    # rival's document and job are visible now.
    existing = await connection.fetchrow(queries["find_upload"].sql, user_id, file_sha256)
    if existing is None:
        raise RuntimeError(
            f"upload of {file_sha256[:12]} by {user_id} conflicted but no document was found"
        )
    return Upload(existing["document_id"], existing["job_id"], False, file_sha256)


__all__ = [
    "ACCEPTED_TYPES",
    "MARKDOWN",
    "PDF",
    "SNIFF_BYTES",
    "TEXT",
    "RejectionReason",
    "Upload",
    "UploadCheckpoint",
    "UploadRejectedError",
    "check_upload",
    "detect_type",
    "enqueue_upload",
]

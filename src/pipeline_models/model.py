"""The oracle: from an upload alone, what the database must hold when the pipeline is done.

Pure, no I/O. Chunking and the fake services are deterministic, so each accepted upload
has exactly one right ending: done with these chunks and these vectors, or dead-lettered
at this stage (a file that is empty, too big, not a PDF or text, unparseable, or with no
text in it). The prediction uses the same pure functions as the system (type sniffing,
the fake parser's parse, the chunker, the fake embeddings), never the system's database.

>>> from pipeline_models.documents import markdown_document
>>> outcome = expected_outcome(uuid.UUID(int=1), markdown_document("# Hello\\n\\nworld"))
>>> outcome.state, len(outcome.chunks)
(<State.DONE: 'done'>, 1)
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipeline_models.documents import Document
from pipeline_models.errors import DocumentRejectedError
from pipeline_models.fakes.parsing import ParseFailure, parse_document
from pipeline_models.fakes.vectors import embedding_for
from pipeline_models.lifecycle import Stage, State
from pipeline_models.pipeline.config import WorkerConfig
from pipeline_models.pipeline.identity import chunk_id, text_sha, vector_sha
from pipeline_models.pipeline.uploads import SNIFF_BYTES, detect_type
from pipeline_models.snapshot import Snapshot


@dataclass(frozen=True)
class ExpectedChunk:
    chunk_id: uuid.UUID
    ordinal: int
    text: str
    chunk_sha: str
    vector: tuple[float, ...]
    vector_sha: str


@dataclass(frozen=True)
class ExpectedOutcome:
    """How one document must end."""

    document_id: uuid.UUID
    state: State  # DONE or DEADLETTER
    stage: Stage  # where it ends: EMBEDDED when done, else where it was dead-lettered
    chunks: tuple[ExpectedChunk, ...] = ()
    reason: str = ""

    def __repr__(self) -> str:
        ending = f"{len(self.chunks)} chunks" if self.state is State.DONE else self.reason
        return f"ExpectedOutcome({self.document_id}, {self.state} at {self.stage}: {ending})"


def expected_outcome(
    document_id: uuid.UUID, document: Document, *, config: WorkerConfig | None = None
) -> ExpectedOutcome:
    """Predict how ``document`` (uploaded as ``document_id``) must end."""
    config = config or WorkerConfig()
    data = document.data

    def dead(stage: Stage, reason: str) -> ExpectedOutcome:
        return ExpectedOutcome(document_id, State.DEADLETTER, stage, reason=reason)

    if len(data) > config.max_upload_bytes:
        return dead(Stage.QUEUED, "over the size limit")
    try:
        detect_type(
            data[:SNIFF_BYTES], filename=document.filename, declared_type=document.content_type
        )
    except DocumentRejectedError as error:
        return dead(Stage.QUEUED, str(error))
    try:
        parsed = parse_document(data, filename=document.filename)
    except ParseFailure as error:
        return dead(Stage.PARSING, str(error))
    if not parsed.markdown.strip():
        return dead(Stage.PARSED, "no text")
    chunker = config.chunker
    chunks = []
    for chunk in chunker.split(parsed.markdown):
        vector = embedding_for(
            chunk.text, model=config.embed_model, dimensions=config.embed_dimensions
        )
        chunks.append(
            ExpectedChunk(
                chunk_id=chunk_id(document_id, chunker.name, chunker.version, chunk.ordinal),
                ordinal=chunk.ordinal,
                text=chunk.text,
                chunk_sha=text_sha(chunk.text),
                vector=vector,
                vector_sha=vector_sha(vector),
            )
        )
    return ExpectedOutcome(document_id, State.DONE, Stage.EMBEDDED, tuple(chunks))


def expected_outcomes(
    uploads: Sequence[tuple[uuid.UUID, Document]], *, config: WorkerConfig | None = None
) -> dict[uuid.UUID, ExpectedOutcome]:
    """Predictions for every accepted upload, by document id."""
    return {
        document_id: expected_outcome(document_id, document, config=config)
        for document_id, document in uploads
    }


def discrepancies(expected: Mapping[uuid.UUID, ExpectedOutcome], snapshot: Snapshot) -> list[str]:
    """Every way the database at the end differs from the predictions (empty: none).

    Each entry names the document, what was expected and what was observed.
    """
    found: list[str] = []
    for document_id in sorted(set(snapshot.documents) - set(expected)):
        found.append(f"document {document_id} exists but no accepted upload created it")
    for document_id, outcome in sorted(expected.items()):
        jobs = snapshot.jobs_of(document_id)
        where = f"document {document_id}"
        if document_id not in snapshot.documents:
            found.append(f"{where}: expected {outcome!r}, but the document row is missing")
            continue
        if len(jobs) != 1:
            found.append(f"{where}: expected exactly one job, observed {len(jobs)}")
            continue
        job = jobs[0]
        if (job.stage, job.state) != (outcome.stage, outcome.state):
            found.append(
                f"{where} job {job.job_id}: expected ({outcome.stage}, {outcome.state}), "
                f"observed ({job.stage}, {job.state}) last_error={job.last_error!r}"
            )
        if outcome.state is State.DEADLETTER and not job.last_error:
            found.append(f"{where} job {job.job_id}: dead-lettered without last_error")
        final = snapshot.final_chunks_of(document_id)
        want = [(c.chunk_id, c.ordinal, c.chunk_sha, c.vector_sha) for c in outcome.chunks]
        got = [(c.chunk_id, c.chunk_ord, c.chunk_sha, c.vector_sha) for c in final]
        if want != got:
            found.append(
                f"{where}: expected {len(want)} final chunks, observed {len(got)}; first "
                f"difference at {_first_difference(want, got)}"
            )
        elif any(
            tuple(c.vector or ()) != e.vector for c, e in zip(final, outcome.chunks, strict=True)
        ):
            found.append(f"{where}: final vectors differ from the expected embeddings")
        buffered = [c for c in snapshot.chunk_buffer if c.document_id == document_id]
        if outcome.state is State.DONE and job.state is State.DONE and buffered:
            found.append(f"{where}: done but {len(buffered)} chunks remain in the buffer")
    return found


def _first_difference(want: Sequence[object], got: Sequence[object]) -> str:
    for index, (a, b) in enumerate(zip(want, got, strict=False)):
        if a != b:
            return f"ordinal {index}: expected {a}, observed {b}"
    return f"ordinal {min(len(want), len(got))} (one list is a prefix of the other)"


__all__ = [
    "ExpectedChunk",
    "ExpectedOutcome",
    "discrepancies",
    "expected_outcome",
    "expected_outcomes",
]

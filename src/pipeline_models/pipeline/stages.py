"""The nine stages of the reference pipeline: one handler per stage, one step per claim.

Each handler does its work outside any transaction, then commits through
:meth:`Step.commit`, writing what justifies the move in the same transaction as the
move. Chunking and embedding work one batch per claim, reading the parsed text by byte
range, so a 10 MB document never sits in memory whole.
"""

from __future__ import annotations

import codecs
import hashlib
import itertools
from collections.abc import Callable

from pipeline_models.errors import DocumentRejectedError, InconsistentStateError, StorageError
from pipeline_models.lifecycle import Stage
from pipeline_models.pipeline.costs import Usage, estimate_pages, estimate_tokens
from pipeline_models.pipeline.identity import chunk_id, vector_sha
from pipeline_models.pipeline.ledger import COUNTING, Charge
from pipeline_models.pipeline.services import EMBEDDINGS, PARSER
from pipeline_models.pipeline.storage import parsed_key
from pipeline_models.pipeline.uploads import SNIFF_BYTES, detect_type
from pipeline_models.pipeline.worker import StageHandler, Step, StepAction, StepResult

_READ_BYTES = 1 << 20


def _reader(step: Step, key: str) -> Callable[[int, int], bytes]:
    def read(offset: int, size: int) -> bytes:
        return step.storage.read(key, offset, size)

    return read


async def validate_upload(step: Step) -> StepResult:
    """queued -> job_validated: the blob is there, within the size limit, of an accepted type."""
    job = step.job
    try:
        size = step.storage.size(job.raw_blob_key)
    except StorageError as error:
        raise DocumentRejectedError(f"the uploaded file is missing: {error}") from None
    if size != job.size_bytes:
        raise DocumentRejectedError(
            f"the stored file has {size} bytes, the upload recorded {job.size_bytes}"
        )
    limit = step.config.max_upload_bytes
    if size > limit:
        raise DocumentRejectedError(f"{job.filename!r} has {size} bytes; the limit is {limit}")
    head = step.storage.read(job.raw_blob_key, 0, SNIFF_BYTES)
    detected = detect_type(head, filename=job.filename, declared_type=job.declared_type)
    async with step.commit() as connection:
        await connection.execute(
            step.queries["set_detected_type"].sql, job.document_id, detected, step.now()
        )
        return await step.advance(connection, detected_type=detected, size=size)


async def submit_to_parser(step: Step) -> StepResult:
    """job_validated -> parsing: hand the file to the parser and record its job id."""
    job = step.job
    # The parser bills its pages at upload but counts them later: the call stands at the
    # estimate until a poll (collect_parse) or the webhook learns the pages.
    estimate = Usage(pages=estimate_pages(job.size_bytes))
    with step.storage.open(job.raw_blob_key) as content:
        parser_job_id = await step.call(
            PARSER,
            lambda: step.services.parser.submit(job.filename, content, job.declared_type),
            estimate=estimate,
            billed=lambda parser_job: Charge(estimate, outcome=COUNTING, reference=parser_job),
        )
    async with step.commit() as connection:
        await connection.execute(
            step.queries["set_parser_job"].sql, job.job_id, parser_job_id, step.now()
        )
        return await step.advance(connection, parser_job_id=parser_job_id)


async def collect_parse(step: Step) -> StepResult:
    """parsing -> parsed: poll the parser; when it is done, store its markdown.

    The parser's signed webhook may get there first; then this worker's fence fails and
    it commits nothing (the webhook advanced the job exactly once).
    """
    job = step.job
    if job.parser_job_id is None:
        raise InconsistentStateError("the job reached parsing without a parser job id")
    parser_job_id = job.parser_job_id
    status = await step.call(PARSER, lambda: step.services.parser.status(parser_job_id))
    if status.status == "ERROR":
        # A parse that failed bills no pages (as the fake parser does; check your plan).
        await step.count_parse(parser_job_id, 0)
        raise DocumentRejectedError(f"the parser could not parse the file: {status.error}")
    if status.pending:
        async with step.commit() as connection:
            return await step.requeue(
                connection,
                delay=step.config.parser_poll_seconds,
                progress=False,
                action="parser_pending",
                parser_status=status.status,
            )
    key = parsed_key(job.document_id)
    with step.storage.writer(key) as out:
        size = await step.call(
            PARSER, lambda: step.services.parser.download_markdown(parser_job_id, out)
        )
    # LlamaParse's status has no page count; its result's job_metadata has what it billed.
    pages = status.pages
    if pages is None:
        pages = await step.call(PARSER, lambda: step.services.parser.result_pages(parser_job_id))
    cost = await step.count_parse(parser_job_id, pages)
    async with step.commit() as connection:
        await connection.execute(
            step.queries["set_parsed_blob"].sql, job.document_id, key, pages, step.now()
        )
        return await step.advance(connection, parsed_bytes=size, pages=pages, cost=str(cost))


async def validate_parsed(step: Step) -> StepResult:
    """parsed -> parse_validated: the parsed text is valid UTF-8 with content; hash it."""
    job = step.job
    key = job.parsed_blob_key or parsed_key(job.document_id)
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    has_content = False
    offset = 0
    try:
        while piece := step.storage.read(key, offset, _READ_BYTES):
            offset += len(piece)
            digest.update(piece)
            text = decoder.decode(piece)
            has_content = has_content or bool(text.strip())
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as error:
        raise DocumentRejectedError(
            f"the parsed text is not valid UTF-8 near byte {offset}: {error.reason}"
        ) from None
    if not has_content:
        # A document with no text would finish with no chunks: the silent "done with
        # empty buffers" failure. It is dead-lettered, visibly, instead.
        raise DocumentRejectedError(
            f"the parser found no text in {job.filename!r} ({offset} bytes of whitespace)"
        )
    parsed_sha = digest.hexdigest()
    async with step.commit() as connection:
        await connection.execute(
            step.queries["set_parsed_sha"].sql, job.document_id, parsed_sha, step.now()
        )
        return await step.advance(connection, parsed_sha256=parsed_sha, parsed_bytes=offset)


async def plan_chunks(step: Step) -> StepResult:
    """parse_validated -> chunking: count the deterministic chunks (streaming)."""
    job = step.job
    key = job.parsed_blob_key or parsed_key(job.document_id)
    total = step.config.chunker.count_chunks(_reader(step, key))
    if total < 1:
        raise DocumentRejectedError("the parsed text yields no chunks")
    async with step.commit() as connection:
        await connection.execute(step.queries["set_chunk_plan"].sql, job.job_id, total, step.now())
        return await step.advance(connection, chunks_total=total)


async def write_chunk_batch(step: Step) -> StepResult:
    """chunking (repeats): buffer the next batch of chunks; advance after the last one."""
    job = step.job
    chunker = step.config.chunker
    total = _planned(step)
    key = job.parsed_blob_key or parsed_key(job.document_id)
    chunks = list(
        itertools.islice(
            chunker.iter_chunks(
                _reader(step, key), byte_offset=job.chunk_cursor, ordinal=job.chunks_done
            ),
            min(step.config.chunk_batch_size, total - job.chunks_done),
        )
    )
    if job.chunks_done < total and not chunks:
        raise InconsistentStateError(
            f"the chunk plan says {total} chunks but the text ended after {job.chunks_done}"
        )
    done = job.chunks_done + len(chunks)
    cursor = chunks[-1].byte_end if chunks else job.chunk_cursor
    async with step.commit() as connection:
        await connection.execute(
            step.queries["insert_chunks"].sql,
            job.document_id,
            chunker.name,
            chunker.version,
            step.now(),
            [chunk_id(job.document_id, chunker.name, chunker.version, c.ordinal) for c in chunks],
            [c.ordinal for c in chunks],
            [c.text for c in chunks],
            [c.sha for c in chunks],
            [c.byte_start for c in chunks],
            [c.byte_end for c in chunks],
        )
        await connection.execute(
            step.queries["set_chunk_progress"].sql, job.job_id, done, cursor, step.now()
        )
        if done >= total:
            return await step.advance(connection, chunks=len(chunks), chunks_done=done)
        return await step.requeue(
            connection,
            delay=0,
            progress=True,
            action="batch_completed",
            chunks=len(chunks),
            chunks_done=done,
        )


async def plan_embeddings(step: Step) -> StepResult:
    """chunks_buffered -> embedding: check the buffer holds every planned chunk."""
    job = step.job
    total = _planned(step)
    chunker = step.config.chunker
    async with step.commit() as connection:
        buffered = await connection.fetchval(
            step.queries["count_buffered_chunks"].sql,
            job.document_id,
            chunker.name,
            chunker.version,
        )
        if buffered != total:
            raise InconsistentStateError(
                f"the chunk buffer holds {buffered} of {total} planned chunks"
            )
        batches = -(-total // step.config.embed_batch_size)
        return await step.advance(connection, chunks=total, batches=batches)


async def embed_batch(step: Step) -> StepResult:
    """embedding (repeats): embed the next micro-batch and buffer its vectors."""
    job = step.job
    config = step.config
    total = _planned(step)
    rows = await _locked_read(
        step,
        step.queries["chunks_to_embed"].sql,
        job.document_id,
        config.chunker.name,
        config.chunker.version,
        job.embeddings_done,
        config.embed_batch_size,
    )
    if not rows:
        raise InconsistentStateError(
            f"no buffered chunks from ordinal {job.embeddings_done} on, {total} planned"
        )
    texts = [str(row["text"]) for row in rows]
    embeddings = await step.call(
        EMBEDDINGS,
        lambda: step.services.embeddings.embed(texts, user=str(job.document_id)),
        estimate=Usage(tokens=estimate_tokens(texts)),
        billed=lambda answer: Charge(Usage(tokens=answer.tokens)),
    )
    done = job.embeddings_done + len(rows)
    async with step.commit() as connection:
        now = step.now()
        await connection.executemany(
            step.queries["insert_vector"].sql,
            [
                (
                    row["chunk_id"],
                    job.document_id,
                    config.embed_model,
                    config.embed_version,
                    vector,
                    vector_sha(vector),
                    now,
                )
                for row, vector in zip(rows, embeddings.vectors, strict=True)
            ],
        )
        await connection.execute(step.queries["set_embedding_progress"].sql, job.job_id, done, now)
        if done >= total:
            return await step.advance(
                connection, vectors=len(rows), embeddings_done=done, tokens=embeddings.tokens
            )
        return await step.requeue(
            connection,
            delay=0,
            progress=True,
            action="batch_completed",
            vectors=len(rows),
            embeddings_done=done,
            tokens=embeddings.tokens,
        )


async def finalize(step: Step) -> StepResult:
    """embedded -> done: promote the buffers to final rows and complete the document.

    All in one transaction: either every final row exists and the job is done, or
    nothing changed. A promotion that does not match the plan raises, rolling back.
    """
    job = step.job
    config = step.config
    total = _planned(step)
    async with step.commit() as connection:
        now = step.now()
        status = await connection.execute(
            step.queries["promote_buffers"].sql,
            job.document_id,
            config.chunker.name,
            config.chunker.version,
            config.embed_model,
            config.embed_version,
            now,
        )
        promoted = int(status.rsplit(" ", 1)[-1])
        if promoted != total:
            raise InconsistentStateError(
                f"finalize found {promoted} chunks with vectors, {total} planned"
            )
        await connection.execute(step.queries["clear_buffers"].sql, job.document_id)
        await connection.execute(
            step.queries["complete_document"].sql, job.document_id, promoted, now
        )
        await step.move(connection, "finish_job", job.job_id, step.worker.name, now)
        await step.event(connection, "finalized", state="done", chunks=promoted)
        return StepResult(StepAction.FINALIZED, job.job_id, job.stage, f"{promoted} chunks")


def _planned(step: Step) -> int:
    total = step.job.chunks_total
    if total is None:
        raise InconsistentStateError(f"the job reached {step.job.stage} without a chunk plan")
    return total


async def _locked_read(step: Step, sql: str, *arguments: object) -> list[dict[str, object]]:
    async with step.worker.connection_lock:
        return [dict(row) for row in await step.worker.db.fetch(sql, *arguments)]


STAGE_HANDLERS: dict[Stage, StageHandler] = {
    Stage.QUEUED: validate_upload,
    Stage.JOB_VALIDATED: submit_to_parser,
    Stage.PARSING: collect_parse,
    Stage.PARSED: validate_parsed,
    Stage.PARSE_VALIDATED: plan_chunks,
    Stage.CHUNKING: write_chunk_batch,
    Stage.CHUNKS_BUFFERED: plan_embeddings,
    Stage.EMBEDDING: embed_batch,
    Stage.EMBEDDED: finalize,
}

__all__ = [
    "STAGE_HANDLERS",
    "collect_parse",
    "embed_batch",
    "finalize",
    "plan_chunks",
    "plan_embeddings",
    "submit_to_parser",
    "validate_parsed",
    "validate_upload",
    "write_chunk_batch",
]

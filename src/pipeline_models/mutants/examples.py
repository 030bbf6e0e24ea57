"""The example-based baseline: the suite a careful team writes by hand, with no search.

This is the kind of test suite the pipeline's original team had: the end-to-end happy
path, each stage once, and the failure scenarios on their list (a parser that errors
once, rate-limits or refuses a file; a corrupt PDF; embeddings that fail or come back
with the wrong dimension; a worker that crashes; a dropped database connection; a
duplicate upload; the parser's webhooks, genuine, duplicated, tampered and stale; an
operator's retry; one user's job hidden from another). It is written as well as such a
suite can be: every scenario checks the rows it should leave behind in detail (stage,
state, counters, retry count, last error, chunk ids, texts and hashes, vector
dimensions, empty buffers), against exact expectations where the team could compute
them, and not only the status an API returned.

What it deliberately is not: there are no generated programs and no interleavings other
than the few written down here. Workers run whole steps (claim to commit), one at a
time, except where a scenario crashes or disconnects a worker at one chosen checkpoint;
time moves only where a scenario moves it. It is the yardstick the model checker is
compared with on the catalog of mutants: a bug this suite misses is one that only an
order of events nobody thought to write down exposes.

Every example runs on a fresh driver (an emptied database, new fakes, a manual clock at
the same instant), so the suite is deterministic: on the reference pipeline it passes
every time.

Example (inside a coroutine)::

    results = await run_examples(database)
    failed = [result.name for result in results if not result.passed]
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pipeline_models.database import Database
from pipeline_models.documents import Document, DocumentKind, corrupt_pdf, markdown_document
from pipeline_models.drivers import CHECK_CONFIG, ReferenceDriver, UploadOutcome, WebhookKind
from pipeline_models.fakes import Fault, FaultPlan
from pipeline_models.fakes.vectors import embedding_for
from pipeline_models.lifecycle import LIVE_STATES, Stage, State
from pipeline_models.model import expected_outcome
from pipeline_models.pipeline.checkpoints import Checkpoint
from pipeline_models.pipeline.identity import text_sha, vector_sha
from pipeline_models.pipeline.worker import StepAction, StepResult
from pipeline_models.scheduler import Outcome, StepReport
from pipeline_models.snapshot import JobRow, Snapshot

ALICE = uuid.UUID("00000000-0000-4000-8000-00000000a11c")
BOB = uuid.UUID("00000000-0000-4000-8000-000000000b0b")

EXAMPLE_TIMEOUT_SECONDS = 30.0
"""How long one example may run before it counts as a hang (a failure, not a wait)."""

# Enough whole steps for any scenario here (a document of a dozen chunks takes about 15,
# a retried one a few more): a pipeline that needs more is looping, which is a failure.
_MAX_STEPS = 200
_LEASE = CHECK_CONFIG.lease_seconds
_BACKOFF = CHECK_CONFIG.retry.base_seconds
_RETRY_LIMIT = CHECK_CONFIG.retry.limit
_DIMENSIONS = CHECK_CONFIG.embed_dimensions
_BATCH = CHECK_CONFIG.chunk_batch_size


@dataclass(frozen=True)
class Example:
    """One fixed scenario: ``run`` drives a set-up driver and raises AssertionError, with
    a message saying what was expected and what was found, when the pipeline misbehaves."""

    name: str
    scenario: str
    run: Callable[[ReferenceDriver], Awaitable[None]]


@dataclass(frozen=True)
class ExampleResult:
    """How one example went on one pipeline; ``message`` says why it failed."""

    name: str
    passed: bool
    message: str | None
    seconds: float


# -- documents -----------------------------------------------------------------------


def article(title: str, paragraphs: int) -> str:
    """A deterministic markdown text of about ``paragraphs`` chunks under CHECK_CONFIG."""
    body = "\n\n".join(
        f"Paragraph {index + 1} of {title}. The pipeline parses, chunks and embeds "
        f"this text; chunk {index + 1} should come back in order."
        for index in range(paragraphs)
    )
    return f"# {title}\n\n{body}\n"


def _expected_texts(text: str) -> list[str]:
    """The chunk texts of a markdown upload: the parser passes plain ASCII markdown
    through unchanged, and the chunker is deterministic."""
    return [chunk.text for chunk in CHECK_CONFIG.chunker.split(text)]


# -- checks --------------------------------------------------------------------------


def _require(condition: bool, message: str) -> None:
    # Not `assert`: the suite must fail on a broken pipeline even under `python -O`.
    if not condition:
        raise AssertionError(message)


def _show(value: object) -> str:
    """A value for a failure message: stages, states and actions by their names."""
    if isinstance(value, StrEnum):
        return str(value)
    if isinstance(value, tuple):
        return f"({', '.join(_show(item) for item in value)})"
    return repr(value)


def _equal(observed: object, expected: object, what: str) -> None:
    if observed != expected:
        raise AssertionError(f"{what}: expected {_show(expected)}, observed {_show(observed)}")


def _only_job(snapshot: Snapshot, document_id: uuid.UUID) -> JobRow:
    jobs = snapshot.jobs_of(document_id)
    _require(len(jobs) == 1, f"document {document_id} has {len(jobs)} jobs, expected one")
    return jobs[0]


def _job(snapshot: Snapshot, job_id: uuid.UUID) -> JobRow:
    _require(job_id in snapshot.jobs, f"job {job_id} is missing from upload_jobs")
    return snapshot.jobs[job_id]


def _position(job: JobRow) -> tuple[Stage, State]:
    return job.stage, job.state


def check_completed(snapshot: Snapshot, document_id: uuid.UUID, document: Document) -> None:
    """Everything a finished document must leave behind, checked by hand and against the
    exact chunks and vectors the deterministic chunker and embeddings give."""
    where = f"document {document_id}"
    _require(document_id in snapshot.documents, f"{where}: the document row is missing")
    row = snapshot.documents[document_id]
    expected = expected_outcome(document_id, document, config=CHECK_CONFIG)
    count = len(expected.chunks)
    job = _only_job(snapshot, document_id)
    _equal(
        _position(job),
        (Stage.EMBEDDED, State.DONE),
        f"{where}: job stage/state (last_error {job.last_error!r})",
    )
    _equal(job.owner, None, f"{where}: owner of the finished job")
    _equal(job.lease_expires_at, None, f"{where}: lease of the finished job")
    _equal(row.status, "complete", f"{where}: document status")
    _equal(row.chunk_count, count, f"{where}: documents.chunk_count")
    _equal(job.chunks_total, count, f"{where}: chunks_total")
    _equal(job.chunks_done, count, f"{where}: chunks_done")
    _equal(job.embeddings_done, count, f"{where}: embeddings_done")
    final = snapshot.final_chunks_of(document_id)
    _equal(len(final), count, f"{where}: number of final chunks")
    _equal([c.chunk_ord for c in final], list(range(count)), f"{where}: chunk ordinals")
    _equal(
        [c.chunk_id for c in final], [e.chunk_id for e in expected.chunks], f"{where}: chunk ids"
    )
    _equal([c.text for c in final], [e.text for e in expected.chunks], f"{where}: chunk texts")
    if document.kind is DocumentKind.MARKDOWN:
        _equal(
            "".join(c.text for c in final),
            document.data.decode("utf-8"),
            f"{where}: the chunks joined",
        )
    for chunk in final:
        at = f"{where} chunk {chunk.chunk_ord}"
        _equal(chunk.chunk_sha, text_sha(chunk.text), f"{at}: chunk_sha")
        vector = chunk.vector or ()
        _equal(len(vector), _DIMENSIONS, f"{at}: vector dimensions")
        _equal(chunk.vector_sha, vector_sha(vector), f"{at}: vector_sha of the stored vector")
        want = embedding_for(chunk.text, model=CHECK_CONFIG.embed_model, dimensions=_DIMENSIONS)
        _require(vector == want, f"{at}: the vector is not the embedding of the chunk's text")
    buffered = [c for c in snapshot.chunk_buffer if c.document_id == document_id]
    vectors = [v for v in snapshot.vector_buffer if v.document_id == document_id]
    _equal(len(buffered), 0, f"{where}: chunk buffer rows left after finalize")
    _equal(len(vectors), 0, f"{where}: vector buffer rows left after finalize")


def check_dead_lettered(
    snapshot: Snapshot, document_id: uuid.UUID, stage: Stage, *error_words: str
) -> JobRow:
    """A dead letter at ``stage``: failed document, the error recorded, nothing final."""
    where = f"document {document_id}"
    job = _only_job(snapshot, document_id)
    _equal(_position(job), (stage, State.DEADLETTER), f"{where}: job stage/state")
    _equal(job.owner, None, f"{where}: owner of the dead letter")
    _equal(job.lease_expires_at, None, f"{where}: lease of the dead letter")
    error = job.last_error or ""
    _require(bool(error), f"{where}: dead-lettered without last_error")
    for word in error_words:
        _require(word.lower() in error.lower(), f"{where}: last_error {error!r} lacks {word!r}")
    _equal(snapshot.documents[document_id].status, "failed", f"{where}: document status")
    _equal(len(snapshot.final_chunks_of(document_id)), 0, f"{where}: final chunks")
    return job


# -- driving -------------------------------------------------------------------------


def _ids(outcome: UploadOutcome, what: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The document and job ids of an accepted upload."""
    if outcome.document_id is None or outcome.job_id is None:
        raise AssertionError(f"{what}: answered {outcome.status} without ids")
    return outcome.document_id, outcome.job_id


async def upload(driver: ReferenceDriver, user: uuid.UUID, document: Document) -> uuid.UUID:
    """Upload ``document`` as ``user``; it must be a new document. Returns the job id."""
    outcome = await driver.upload(user, document)
    what = f"the upload of {document.filename}"
    _equal(outcome.status, 201, f"status of {what}")
    _require(outcome.created, f"{what} was not new")
    return _ids(outcome, what)[1]


async def document_of(driver: ReferenceDriver, job_id: uuid.UUID) -> uuid.UUID:
    return _job(await driver.snapshot(), job_id).document_id


async def step(driver: ReferenceDriver, worker: str) -> StepResult | None:
    """One whole step of ``worker``; None if nothing was due. It must not lose its
    connection or wait on a lock: no other worker is mid-step when this is called."""
    report = await driver.step_whole(worker)
    return _result(report)


def _result(report: StepReport) -> StepResult | None:
    if report.outcome is Outcome.IDLE:
        return None
    if report.outcome is not Outcome.FINISHED or report.result is None:
        raise AssertionError(
            f"a whole step of {report.worker} ended {report}, expected it to finish"
        )
    return report.result


async def step_expecting(
    driver: ReferenceDriver, worker: str, stage: Stage, action: StepAction
) -> StepResult:
    result = await step(driver, worker)
    if result is None:
        raise AssertionError(f"{worker} found nothing due, expected {action} at {stage}")
    _equal((result.stage, result.action), (stage, action), f"{worker}'s step ({result})")
    return result


async def idle(driver: ReferenceDriver, worker: str, why: str) -> None:
    result = await step(driver, worker)
    _require(result is None, f"{worker} should find nothing due ({why}), but did {result}")


def _next_due(snapshot: Snapshot) -> datetime | None:
    due = [
        job.lease_expires_at if job.state is State.WORKING else job.next_attempt_at
        for job in snapshot.jobs.values()
        if job.state in LIVE_STATES
    ]
    return min((when for when in due if when is not None), default=None)


async def run_to_the_end(
    driver: ReferenceDriver, workers: Sequence[str], *, max_steps: int = _MAX_STEPS
) -> list[StepResult]:
    """Step the workers in turn, whole steps, until no job is live; when every worker is
    idle, move the clock to the next due time (a backoff, a lease). Faults stay as set."""
    results: list[StepResult] = []
    steps = 0
    while True:
        progressed = False
        for worker in workers:
            steps += 1
            _require(steps <= max_steps, f"jobs still live after {max_steps} steps")
            result = await step(driver, worker)
            if result is not None:
                results.append(result)
                progressed = True
        if progressed:
            continue
        snapshot = await driver.snapshot()
        due = _next_due(snapshot)
        if due is None:
            return results
        _require(
            due > driver.clock.now(),
            f"every worker is idle but a job is due at {due}: "
            f"{[(str(j.job_id), j.stage, j.state) for j in snapshot.jobs.values()]}",
        )
        driver.clock.set(due)


async def job_status(
    driver: ReferenceDriver, user: uuid.UUID | None, job_id: uuid.UUID
) -> tuple[int, dict[str, object]]:
    headers = driver._auth(user) if user is not None else {}
    response = await driver.api.get(f"/jobs/{job_id}", headers=headers)
    body = response.json() if response.headers.get("content-type") == "application/json" else {}
    return response.status_code, body


# -- the examples --------------------------------------------------------------------


async def happy_path(driver: ReferenceDriver) -> None:
    document = markdown_document(article("Happy path", 8), filename="happy.md")
    job_id = await upload(driver, ALICE, document)
    snapshot = await driver.snapshot()
    document_id = _job(snapshot, job_id).document_id
    job = _job(snapshot, job_id)
    _equal(_position(job), (Stage.QUEUED, State.QUEUED), "the new job")
    _equal(snapshot.documents[document_id].status, "processing", "the new document's status")
    _equal(snapshot.documents[document_id].user_id, ALICE, "the new document's owner")
    _equal(snapshot.documents[document_id].size_bytes, document.size, "size_bytes")
    _equal(snapshot.documents[document_id].file_sha256, document.sha256, "file_sha256")
    await driver.start_worker("w1")
    results = await run_to_the_end(driver, ["w1"])
    snapshot = await driver.snapshot()
    check_completed(snapshot, document_id, document)
    _equal(results[-1].action, StepAction.FINALIZED, "the last step's action")
    _require(
        all(r.action in (StepAction.ADVANCED, StepAction.REQUEUED) for r in results[:-1]),
        f"a healthy run should only advance and requeue batches: {[str(r) for r in results]}",
    )
    job = _job(snapshot, job_id)
    _equal(job.retry_count, 0, "retry_count of a run without failures")
    _equal(job.last_error, None, "last_error of a run without failures")
    status, body = await job_status(driver, ALICE, job_id)
    _equal(status, 200, "GET /jobs/{id} by its owner")
    _equal((body.get("stage"), body.get("state")), ("embedded", "done"), "the API's job status")
    count = len(_expected_texts(document.data.decode()))
    _equal(
        body.get("progress"),
        {"chunks_total": count, "chunks_done": count, "embeddings_done": count},
        "the API's progress",
    )


async def each_stage_once(driver: ReferenceDriver) -> None:
    text = article("Each stage", 9)
    document = markdown_document(text, filename="stages.md")
    job_id = await upload(driver, ALICE, document)
    document_id = await document_of(driver, job_id)
    count = len(_expected_texts(text))
    batches = -(-count // _BATCH)
    _require(batches >= 2, f"the document should span several batches, has {count} chunks")
    await driver.start_worker("w1")

    async def expect_job(stage: Stage, state: State, what: str) -> Snapshot:
        snapshot = await driver.snapshot()
        job = _job(snapshot, job_id)
        _equal(_position(job), (stage, state), f"the job {what}")
        _equal(job.owner, None, f"the job's owner {what}")
        return snapshot

    straight = [
        (Stage.QUEUED, Stage.JOB_VALIDATED),
        (Stage.JOB_VALIDATED, Stage.PARSING),
        (Stage.PARSING, Stage.PARSED),
        (Stage.PARSED, Stage.PARSE_VALIDATED),
        (Stage.PARSE_VALIDATED, Stage.CHUNKING),
    ]
    for stage, following in straight:
        await step_expecting(driver, "w1", stage, StepAction.ADVANCED)
        await expect_job(following, State.QUEUED, f"after {stage}")
    snapshot = await driver.snapshot()
    _equal(_job(snapshot, job_id).chunks_total, count, "chunks_total planned")
    for batch in range(1, batches + 1):
        last = batch == batches
        action = StepAction.ADVANCED if last else StepAction.REQUEUED
        await step_expecting(driver, "w1", Stage.CHUNKING, action)
        stage = Stage.CHUNKS_BUFFERED if last else Stage.CHUNKING
        snapshot = await expect_job(stage, State.QUEUED, f"after chunk batch {batch}")
        done = min(batch * _BATCH, count)
        buffered = sorted(c.chunk_ord for c in snapshot.chunk_buffer)
        _equal(buffered, list(range(done)), f"buffered chunk ordinals after batch {batch}")
        _equal(_job(snapshot, job_id).chunks_done, done, f"chunks_done after batch {batch}")
    await step_expecting(driver, "w1", Stage.CHUNKS_BUFFERED, StepAction.ADVANCED)
    await expect_job(Stage.EMBEDDING, State.QUEUED, "after chunks_buffered")
    for batch in range(1, batches + 1):
        last = batch == batches
        action = StepAction.ADVANCED if last else StepAction.REQUEUED
        await step_expecting(driver, "w1", Stage.EMBEDDING, action)
        stage = Stage.EMBEDDED if last else Stage.EMBEDDING
        snapshot = await expect_job(stage, State.QUEUED, f"after embedding batch {batch}")
        done = min(batch * _BATCH, count)
        _equal(len(snapshot.vector_buffer), done, f"buffered vectors after batch {batch}")
        _require(
            all(len(v.vector) == _DIMENSIONS for v in snapshot.vector_buffer),
            f"a buffered vector without {_DIMENSIONS} dimensions",
        )
        _equal(_job(snapshot, job_id).embeddings_done, done, f"embeddings_done after batch {batch}")
        _equal(len(snapshot.final_chunks), 0, "final chunks before finalize")
    await step_expecting(driver, "w1", Stage.EMBEDDED, StepAction.FINALIZED)
    await idle(driver, "w1", "the only job is done")
    check_completed(await driver.snapshot(), document_id, document)


async def two_users_several_documents(driver: ReferenceDriver) -> None:
    uploads = [
        (ALICE, markdown_document(article("Alice's first", 5), filename="a1.md")),
        (BOB, markdown_document(article("Bob's only", 7), filename="b1.md")),
        (ALICE, markdown_document(article("Alice's second", 3), filename="a2.md")),
    ]
    jobs = [(await upload(driver, user, document), user, document) for user, document in uploads]
    await driver.start_worker("w1")
    await driver.start_worker("w2")
    results = await run_to_the_end(driver, ["w1", "w2"])
    snapshot = await driver.snapshot()
    _equal(len(snapshot.documents), 3, "documents")
    _equal(len(snapshot.jobs), 3, "jobs")
    total = 0
    for job_id, user, document in jobs:
        document_id = _job(snapshot, job_id).document_id
        _equal(snapshot.documents[document_id].user_id, user, f"owner of {document.filename}")
        check_completed(snapshot, document_id, document)
        total += len(_expected_texts(document.data.decode()))
    _equal(len(snapshot.final_chunks), total, "final chunks of all documents")
    finalized = [r.job_id for r in results if r.action is StepAction.FINALIZED]
    _equal(
        sorted(finalized, key=str),
        sorted((job_id for job_id, _, _ in jobs), key=str),
        "jobs finalized, once each",
    )


async def duplicate_upload(driver: ReferenceDriver) -> None:
    document = markdown_document(article("Uploaded twice", 4), filename="twice.md")
    first = await driver.upload(ALICE, document)
    again = await driver.upload(ALICE, document)
    _equal((first.status, first.created), (201, True), "the first upload")
    _equal((again.status, again.created), (200, False), "the same bytes again")
    _equal(again.document_id, first.document_id, "document of the re-upload")
    _equal(again.job_id, first.job_id, "job of the re-upload")
    renamed = markdown_document(article("Uploaded twice", 4), filename="renamed.md")
    third = await driver.upload(ALICE, renamed)
    _equal((third.status, third.document_id), (200, first.document_id), "the same bytes renamed")
    snapshot = await driver.snapshot()
    _equal(len(snapshot.documents), 1, "documents after three uploads of the same bytes")
    _equal(len(snapshot.jobs), 1, "jobs after three uploads of the same bytes")
    driver.advance_clock(1)  # Bob's upload is the newer one
    other = await driver.upload(BOB, document)
    _equal((other.status, other.created), (201, True), "another user's upload of the same bytes")
    _require(other.document_id != first.document_id, "two users' uploads share a document")
    await driver.start_worker("w1")
    await run_to_the_end(driver, ["w1"])
    driver.advance_clock(1)
    again_after = await driver.upload(ALICE, document)
    _equal((again_after.status, again_after.job_id), (200, first.job_id), "a re-upload when done")
    snapshot = await driver.snapshot()
    _equal(len(snapshot.jobs), 2, "jobs after the uploads")
    check_completed(snapshot, _ids(first, "the first upload")[0], document)
    check_completed(snapshot, _ids(other, "another user's upload")[0], document)


async def _fail_once_then_recover(
    driver: ReferenceDriver,
    *,
    service: str,
    fault: Fault,
    endpoint: str,
    stage: Stage,
    wait: float,
    error_words: Iterable[str],
) -> None:
    """One fault at ``stage``: the job waits ``wait`` seconds (not a moment less), with
    the failure counted and recorded, then finishes as if nothing happened."""
    document = markdown_document(article(f"{service} {fault!r}", 6), filename="flaky.md")
    job_id = await upload(driver, ALICE, document)
    document_id = await document_of(driver, job_id)
    await driver.start_worker("w1")
    while _job(await driver.snapshot(), job_id).stage is not stage:
        await step(driver, "w1")
    plan = FaultPlan([fault], endpoints=[endpoint])
    driver.set_faults(service, plan)
    failed_at = driver.clock.now()
    await step_expecting(driver, "w1", stage, StepAction.RETRY_SCHEDULED)
    _equal(len(plan.injected), 1, "faults injected")
    snapshot = await driver.snapshot()
    job = _job(snapshot, job_id)
    _equal(_position(job), (stage, State.RETRYABLE), "the job after the fault")
    _equal(job.retry_count, 1, "retry_count after one failure")
    _equal(job.owner, None, "owner of the retryable job")
    _equal(job.next_attempt_at, failed_at + timedelta(seconds=wait), "next_attempt_at")
    for word in error_words:
        _require(word in (job.last_error or ""), f"last_error {job.last_error!r} lacks {word!r}")
    _equal(snapshot.documents[document_id].status, "processing", "document status meanwhile")
    if stage is Stage.EMBEDDING:
        _equal(len(snapshot.vector_buffer), 0, "vectors buffered by the failed batch")
    driver.advance_clock(wait - 1)
    await idle(driver, "w1", f"the retry is due {wait:g} s after the failure")
    driver.advance_clock(1)
    # The retried step does the work the failed one should have: the whole stage, or the
    # first of several embedding batches.
    count = len(_expected_texts(document.data.decode()))
    more = stage is Stage.EMBEDDING and count > CHECK_CONFIG.embed_batch_size
    await step_expecting(driver, "w1", stage, StepAction.REQUEUED if more else StepAction.ADVANCED)
    _equal(_job(await driver.snapshot(), job_id).retry_count, 0, "retry_count after progress")
    await run_to_the_end(driver, ["w1"])
    check_completed(await driver.snapshot(), document_id, document)


async def parser_server_error_then_recovers(driver: ReferenceDriver) -> None:
    await _fail_once_then_recover(
        driver,
        service="parser",
        fault=Fault.server_error(503),
        endpoint="upload",
        stage=Stage.JOB_VALIDATED,
        wait=_BACKOFF,
        error_words=["job_validated", "503"],
    )


async def parser_rate_limited_then_recovers(driver: ReferenceDriver) -> None:
    await _fail_once_then_recover(
        driver,
        service="parser",
        fault=Fault.rate_limit(retry_after=20),
        endpoint="upload",
        stage=Stage.JOB_VALIDATED,
        wait=20.0,  # the service's Retry-After, longer than the 3 s backoff
        error_words=["job_validated", "429"],
    )


async def embeddings_server_error_then_recovers(driver: ReferenceDriver) -> None:
    await _fail_once_then_recover(
        driver,
        service="embeddings",
        fault=Fault.server_error(500),
        endpoint="embeddings",
        stage=Stage.EMBEDDING,
        wait=_BACKOFF,
        error_words=["embedding", "500"],
    )


async def embeddings_wrong_dimension_once(driver: ReferenceDriver) -> None:
    await _fail_once_then_recover(
        driver,
        service="embeddings",
        fault=Fault.wrong_dimension(),
        endpoint="embeddings",
        stage=Stage.EMBEDDING,
        wait=_BACKOFF,
        error_words=["embedding", "dimension"],
    )


async def embeddings_always_wrong_dimension(driver: ReferenceDriver) -> None:
    document = markdown_document(article("Always wrong", 3), filename="wrong.md")
    job_id = await upload(driver, ALICE, document)
    document_id = await document_of(driver, job_id)
    plan = FaultPlan([Fault.wrong_dimension()], endpoints=["embeddings"], repeat=True)
    driver.set_faults("embeddings", plan)
    await driver.start_worker("w1")
    results = await run_to_the_end(driver, ["w1"])
    retries = [r for r in results if r.action is StepAction.RETRY_SCHEDULED]
    _equal(len(retries), _RETRY_LIMIT, "retries before giving up")
    _equal(results[-1].action, StepAction.DEADLETTERED, "the last step's action")
    _equal(plan.requests["embeddings"], _RETRY_LIMIT + 1, "embeddings requests")
    snapshot = await driver.snapshot()
    job = check_dead_lettered(snapshot, document_id, Stage.EMBEDDING, "dimension", "exhausted")
    _equal(job.retry_count, _RETRY_LIMIT, "retry_count of the dead letter")
    _equal(job.embeddings_done, 0, "embeddings_done")
    _equal(len(snapshot.vector_buffer), 0, "vectors buffered from wrong answers")


async def parser_permanent_error(driver: ReferenceDriver) -> None:
    document = markdown_document(article("Refused", 3), filename="refused.md")
    job_id = await upload(driver, ALICE, document)
    document_id = await document_of(driver, job_id)
    driver.set_faults("parser", FaultPlan([Fault.permanent(400)], endpoints=["upload"]))
    await driver.start_worker("w1")
    await step_expecting(driver, "w1", Stage.QUEUED, StepAction.ADVANCED)
    await step_expecting(driver, "w1", Stage.JOB_VALIDATED, StepAction.DEADLETTERED)
    snapshot = await driver.snapshot()
    job = check_dead_lettered(snapshot, document_id, Stage.JOB_VALIDATED, "400")
    _equal(job.retry_count, 0, "retries of a permanent failure")
    driver.advance_clock(3600)
    await idle(driver, "w1", "a dead letter is never retried by itself")
    _equal(_job(await driver.snapshot(), job_id), job, "the dead letter an hour later")


async def corrupt_pdf_dead_letters(driver: ReferenceDriver) -> None:
    document = corrupt_pdf(1)
    job_id = await upload(driver, ALICE, document)
    document_id = await document_of(driver, job_id)
    await driver.start_worker("w1")
    results = await run_to_the_end(driver, ["w1"])
    _equal(
        [(r.stage, r.action) for r in results],
        [
            (Stage.QUEUED, StepAction.ADVANCED),
            (Stage.JOB_VALIDATED, StepAction.ADVANCED),
            (Stage.PARSING, StepAction.DEADLETTERED),
        ],
        "the corrupt PDF's steps",
    )
    snapshot = await driver.snapshot()
    job = check_dead_lettered(snapshot, document_id, Stage.PARSING, "not a readable PDF")
    _equal(job.chunks_total, None, "chunks planned for an unparseable file")
    _equal(len(snapshot.chunk_buffer), 0, "chunks buffered for an unparseable file")


async def worker_crash_after_claim(driver: ReferenceDriver) -> None:
    document = markdown_document(article("Crash after claim", 9), filename="crash.md")
    job_id = await upload(driver, ALICE, document)
    document_id = await document_of(driver, job_id)
    await driver.start_worker("w1")
    # Up to the middle of the embeddings: a batch done, more to do.
    while _job(await driver.snapshot(), job_id).embeddings_done == 0:
        await step(driver, "w1")
    report = await driver.step("w1")
    _equal((report.outcome, report.stage), (Outcome.PARKED, Stage.EMBEDDING), "w1's claim")
    claimed_at = driver.clock.now()
    before = _job(await driver.snapshot(), job_id)
    _equal((before.state, before.owner), (State.WORKING, "w1"), "the job w1 claimed")
    _equal(before.lease_expires_at, claimed_at + timedelta(seconds=_LEASE), "w1's lease")
    await driver.crash("w1")
    await driver.start_worker("w2")
    driver.advance_clock(_LEASE - 1)
    await idle(driver, "w2", "w1's lease is still live")
    driver.advance_clock(1)
    report = await driver.step("w2")
    _equal((report.outcome, report.stage), (Outcome.PARKED, Stage.EMBEDDING), "w2's claim")
    job = _job(await driver.snapshot(), job_id)
    _equal((job.state, job.owner), (State.WORKING, "w2"), "the job after w2's reclaim")
    _equal(job.retry_count, 1, "retry_count after a lost lease")
    _require("expired" in (job.last_error or ""), f"last_error {job.last_error!r} after reclaim")
    _equal(job.embeddings_done, before.embeddings_done, "embeddings_done kept across the crash")
    _result(await driver.step_whole("w2"))
    await run_to_the_end(driver, ["w2"])
    check_completed(await driver.snapshot(), document_id, document)


async def worker_crash_before_commit(driver: ReferenceDriver) -> None:
    document = markdown_document(article("Crash before commit", 9), filename="rollback.md")
    job_id = await upload(driver, ALICE, document)
    document_id = await document_of(driver, job_id)
    await driver.start_worker("w1")
    while _job(await driver.snapshot(), job_id).chunks_done == 0:
        await step(driver, "w1")
    before = await driver.snapshot()
    while (report := await driver.step("w1")).checkpoint is not Checkpoint.BEFORE_COMMIT:
        _equal(report.outcome, Outcome.PARKED, "w1 on its way to the commit")
    await driver.crash("w1")
    after = await driver.snapshot()
    _equal(after.chunk_buffer, before.chunk_buffer, "the chunk buffer after a rolled back batch")
    _equal(_job(after, job_id).chunks_done, _job(before, job_id).chunks_done, "chunks_done kept")
    await driver.start_worker("w2")
    await idle(driver, "w2", "w1's lease is still live")
    await run_to_the_end(driver, ["w2"])
    check_completed(await driver.snapshot(), document_id, document)


async def dropped_connection(driver: ReferenceDriver) -> None:
    document = markdown_document(article("Dropped connection", 6), filename="dropped.md")
    job_id = await upload(driver, ALICE, document)
    document_id = await document_of(driver, job_id)
    await driver.start_worker("w1")
    await step_expecting(driver, "w1", Stage.QUEUED, StepAction.ADVANCED)
    # Between steps: the next claim finds the connection gone, the one after reconnects.
    await driver.drop_connection("w1")
    lost = await driver.step_whole("w1")
    _equal(lost.outcome, Outcome.CONNECTION_LOST, "w1's step on a dropped connection")
    _equal(
        _position(_job(await driver.snapshot(), job_id)),
        (Stage.JOB_VALIDATED, State.QUEUED),
        "the job after a failed claim",
    )
    await step_expecting(driver, "w1", Stage.JOB_VALIDATED, StepAction.ADVANCED)
    # In the middle of a commit: nothing of the step is kept, the lease runs out, and the
    # reconnected worker takes the job over.
    while _job(await driver.snapshot(), job_id).stage is not Stage.CHUNKING:
        await step(driver, "w1")
    before = await driver.snapshot()
    while (report := await driver.step("w1")).checkpoint is not Checkpoint.BEFORE_COMMIT:
        _equal(report.outcome, Outcome.PARKED, "w1 on its way to the commit")
    await driver.drop_connection("w1")
    lost = await driver.step_whole("w1")
    _equal(lost.outcome, Outcome.CONNECTION_LOST, "w1's commit on a dropped connection")
    after = await driver.snapshot()
    _equal(after.chunk_buffer, before.chunk_buffer, "chunks of the batch that did not commit")
    _equal(_job(after, job_id).chunks_done, 0, "chunks_done of the batch that did not commit")
    await idle(driver, "w1", "the job's lease from the lost step is still live")
    driver.advance_clock(_LEASE)
    await step_expecting(driver, "w1", Stage.CHUNKING, StepAction.REQUEUED)
    _equal(_job(await driver.snapshot(), job_id).retry_count, 0, "retry_count after progress")
    await run_to_the_end(driver, ["w1"])
    check_completed(await driver.snapshot(), document_id, document)


async def _webhook_count(driver: ReferenceDriver, job_id: uuid.UUID) -> int:
    count = await driver.monitor.fetchval(
        "SELECT count(*) FROM events WHERE job_id = $1 AND action = 'webhook_accepted'", job_id
    )
    return int(count)


async def parser_webhooks(driver: ReferenceDriver) -> None:
    document = markdown_document(article("Webhook", 5), filename="webhook.md")
    job_id = await upload(driver, ALICE, document)
    document_id = await document_of(driver, job_id)
    parser = FaultPlan.healthy()
    driver.set_faults("parser", parser)
    await driver.start_worker("w1")
    _equal(await driver.deliver_webhooks(WebhookKind.QUEUED), [], "webhooks before submission")
    await step_expecting(driver, "w1", Stage.QUEUED, StepAction.ADVANCED)
    await step_expecting(driver, "w1", Stage.JOB_VALIDATED, StepAction.ADVANCED)
    _equal(
        _position(_job(await driver.snapshot(), job_id)),
        (Stage.PARSING, State.QUEUED),
        "the job waiting for the parser",
    )
    _equal(await driver.deliver_webhooks(WebhookKind.QUEUED), [200], "the parser's webhook")
    job = _job(await driver.snapshot(), job_id)
    _equal(_position(job), (Stage.PARSED, State.QUEUED), "the job after the webhook")
    _equal(await _webhook_count(driver, job_id), 1, "webhooks accepted")
    # The webhook did the parsing stage's work: the worker goes on from parsed, without
    # asking the parser for the job's status.
    await step_expecting(driver, "w1", Stage.PARSED, StepAction.ADVANCED)
    _equal(parser.requests["status"], 0, "status polls after the webhook")
    moved = _job(await driver.snapshot(), job_id)
    _equal(_position(moved), (Stage.PARSE_VALIDATED, State.QUEUED), "the job after parsed")
    for kind, status in (
        (WebhookKind.DUPLICATE, 200),
        (WebhookKind.TAMPERED, 401),
        (WebhookKind.STALE, 401),
    ):
        _equal(await driver.deliver_webhooks(kind), [status], f"a {kind} webhook")
        _equal(_job(await driver.snapshot(), job_id), moved, f"the job after a {kind} webhook")
    _equal(await _webhook_count(driver, job_id), 1, "webhooks accepted after the replays")
    await run_to_the_end(driver, ["w1"])
    check_completed(await driver.snapshot(), document_id, document)


async def operator_retry(driver: ReferenceDriver) -> None:
    document = markdown_document(article("Retried by an operator", 5), filename="retry.md")
    job_id = await upload(driver, ALICE, document)
    document_id = await document_of(driver, job_id)
    # A parser that is down for good: the job spends its whole retry budget.
    outage = FaultPlan([Fault.server_error(503)], endpoints=["upload"], repeat=True)
    driver.set_faults("parser", outage)
    await driver.start_worker("w1")
    _equal(await driver.operator_retry(ALICE, job_id), 409, "retrying a job that is queued")
    await run_to_the_end(driver, ["w1"])
    snapshot = await driver.snapshot()
    dead = check_dead_lettered(snapshot, document_id, Stage.JOB_VALIDATED, "503", "exhausted")
    _equal(dead.retry_count, _RETRY_LIMIT, "retry_count of the exhausted job")
    _equal(await driver.operator_retry(BOB, job_id), 404, "another user's retry")
    _equal(_job(await driver.snapshot(), job_id), dead, "the dead letter after a refused retry")
    driver.set_faults("parser", FaultPlan.healthy())  # the parser is back
    driver.advance_clock(60)
    _equal(await driver.operator_retry(ALICE, job_id), 200, "the owner's retry")
    snapshot = await driver.snapshot()
    job = _job(snapshot, job_id)
    _equal(_position(job), (Stage.JOB_VALIDATED, State.QUEUED), "the retried job")
    _equal(job.retry_count, 0, "retry budget of the retried job")
    _equal(job.next_attempt_at, driver.clock.now(), "the retried job is due now")
    _equal(job.owner, None, "owner of the retried job")
    _equal(job.last_error, dead.last_error, "last_error kept as the record")
    _equal(snapshot.documents[document_id].status, "processing", "the document again")
    _equal(await driver.operator_retry(ALICE, job_id), 409, "retrying it twice")
    results = await run_to_the_end(driver, ["w1"])
    _equal(
        (results[0].stage, results[0].action),
        (Stage.JOB_VALIDATED, StepAction.ADVANCED),
        "where the retried job resumed",
    )
    snapshot = await driver.snapshot()
    _equal(len(snapshot.jobs), 1, "jobs after the retry (the same job, not a new one)")
    check_completed(snapshot, document_id, document)


async def users_see_only_their_jobs(driver: ReferenceDriver) -> None:
    alices = await upload(driver, ALICE, markdown_document(article("Alice's", 2)))
    bobs = await upload(driver, BOB, markdown_document(article("Bob's", 2)))
    for user, job_id, other in ((ALICE, alices, BOB), (BOB, bobs, ALICE)):
        status, body = await job_status(driver, user, job_id)
        _equal(status, 200, "a job read by its owner")
        _equal(body.get("job_id"), str(job_id), "the job read by its owner")
        _equal((body.get("stage"), body.get("state")), ("queued", "queued"), "the new job")
        status, body = await job_status(driver, other, job_id)
        _equal(status, 404, "a job read by another user")
        _require("stage" not in body, f"a 404 that tells another user the job: {body}")
    status, _ = await job_status(driver, None, alices)
    _equal(status, 401, "a job read without a token")
    status, _ = await job_status(driver, ALICE, uuid.UUID(int=7))
    _equal(status, 404, "a job that does not exist")
    await driver.start_worker("w1")
    await run_to_the_end(driver, ["w1"])
    status, body = await job_status(driver, BOB, alices)
    _equal(status, 404, "a finished job read by another user")
    status, body = await job_status(driver, ALICE, alices)
    _equal((status, body.get("state")), (200, "done"), "the finished job read by its owner")


EXAMPLES: tuple[Example, ...] = (
    Example(
        "happy_path",
        "one markdown document from upload to done: every row, counter, chunk and vector",
        happy_path,
    ),
    Example(
        "each_stage_once",
        "one worker steps one job through the nine stages in order, batches one by one",
        each_stage_once,
    ),
    Example(
        "two_users_several_documents",
        "three documents of two users, two workers taking turns: each ends complete",
        two_users_several_documents,
    ),
    Example(
        "duplicate_upload",
        "the same bytes twice from one user are one document and one job; another user's "
        "are another",
        duplicate_upload,
    ),
    Example(
        "parser_server_error_then_recovers",
        "the parser answers 503 once: retried after the 3 s backoff, then done",
        parser_server_error_then_recovers,
    ),
    Example(
        "parser_rate_limited_then_recovers",
        "the parser answers 429 with Retry-After 20: retried after 20 s, then done",
        parser_rate_limited_then_recovers,
    ),
    Example(
        "parser_permanent_error",
        "the parser refuses the file with a 400: dead-lettered at once with last_error",
        parser_permanent_error,
    ),
    Example(
        "corrupt_pdf_dead_letters",
        "a corrupt PDF is dead-lettered at parsing with the parser's error, nothing chunked",
        corrupt_pdf_dead_letters,
    ),
    Example(
        "embeddings_server_error_then_recovers",
        "the embeddings service answers 500 once: the batch is retried, then done",
        embeddings_server_error_then_recovers,
    ),
    Example(
        "embeddings_wrong_dimension_once",
        "one answer with vectors of the wrong dimension: nothing stored, retried, then done",
        embeddings_wrong_dimension_once,
    ),
    Example(
        "embeddings_always_wrong_dimension",
        "every answer has the wrong dimension: dead-lettered after 3 retries, no vectors",
        embeddings_always_wrong_dimension,
    ),
    Example(
        "worker_crash_after_claim",
        "a worker dies holding a job mid-embedding: after its lease another takes over",
        worker_crash_after_claim,
    ),
    Example(
        "worker_crash_before_commit",
        "a worker dies before committing a chunk batch: the batch rolls back and is redone",
        worker_crash_before_commit,
    ),
    Example(
        "dropped_connection",
        "a worker's database connection drops between steps and mid-commit: it reconnects",
        dropped_connection,
    ),
    Example(
        "parser_webhooks",
        "the parser's webhook moves the job once; duplicate changes nothing, tampered and "
        "stale get 401",
        parser_webhooks,
    ),
    Example(
        "operator_retry",
        "an operator retries a dead letter: queued again with a fresh budget, then done",
        operator_retry,
    ),
    Example(
        "users_see_only_their_jobs",
        "GET /jobs/{id} answers its owner and 404 to anyone else",
        users_see_only_their_jobs,
    ),
)


# -- running -------------------------------------------------------------------------


def example_driver(database: Database, **options: Any) -> ReferenceDriver:
    """The driver the examples run on: as a hand-written test sees the pipeline, time
    moves only where the example moves it. ``options`` go to :class:`ReferenceDriver`
    (a mutant's ``queries`` or ``stages``)."""
    return ReferenceDriver(database, config=CHECK_CONFIG, seconds_per_step=0, **options)


async def run_example(
    example: Example,
    database: Database,
    *,
    driver_factory: Callable[[Database], ReferenceDriver] | None = None,
    timeout: float = EXAMPLE_TIMEOUT_SECONDS,
) -> ExampleResult:
    """Run one example on a fresh driver; any exception or a hang is a failure."""
    factory = driver_factory or example_driver
    started = time.perf_counter()
    message: str | None = None
    driver: ReferenceDriver | None = None
    try:
        async with asyncio.timeout(timeout) as deadline:
            driver = factory(database)
            await driver.setup()
            await example.run(driver)
    except AssertionError as error:
        message = str(error) or "AssertionError"
    except TimeoutError as error:
        if deadline.expired():
            message = f"did not finish within {timeout:g} s (a hang)"
        else:
            message = f"TimeoutError: {error}"
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
    if driver is not None:
        try:
            async with asyncio.timeout(timeout):
                await driver.teardown()
        except Exception as error:
            note = f"teardown failed: {type(error).__name__}: {error}"
            message = note if message is None else f"{message}; {note}"
    return ExampleResult(example.name, message is None, message, time.perf_counter() - started)


async def run_examples(
    database: Database,
    *,
    driver_factory: Callable[[Database], ReferenceDriver] | None = None,
    examples: Sequence[Example] = EXAMPLES,
    timeout: float = EXAMPLE_TIMEOUT_SECONDS,
) -> list[ExampleResult]:
    """Run every example, each on a fresh driver from ``driver_factory`` (the reference
    pipeline's by default), one after another; a result for each, in order."""
    return [
        await run_example(example, database, driver_factory=driver_factory, timeout=timeout)
        for example in examples
    ]


__all__ = [
    "EXAMPLES",
    "EXAMPLE_TIMEOUT_SECONDS",
    "Example",
    "ExampleResult",
    "example_driver",
    "run_example",
    "run_examples",
]

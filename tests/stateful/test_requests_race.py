"""Requests race too: API requests interleaved statement by statement.

The reference pipeline on the checker core runs its uploads and its parser's webhooks
as actions, each an actor of its own whose round trips wait for the scheduler, like a
worker's. Declared ``interleaved``, an action can be started (``start_<action>``: up
to its first round trip) and moved one round trip at a time (``step_an_action``), so a
program decides how two requests, or a request and a worker, interleave.

Each program here is passed by the unmodified pipeline and fails under a bug that only
its interleaving reveals: the same bug passes the same requests made one after the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline_models.core import QueueViolation, close_checker, machine_for, use_server
from pipeline_models.core.machines import QueueMachine
from pipeline_models.database import Database
from pipeline_models.documents import markdown_document
from pipeline_models.pipeline.adapter import ReferenceAdapter
from pipeline_models.queries import QUERIES

SCHEMA = "pm_requests_race"  # its own: other tests drop and remake the pipeline's
Reference = ReferenceAdapter.in_schema(SCHEMA)


@pytest.fixture(autouse=True, scope="module")
def _core_machines_use_the_session_database(pipeline_database: Database) -> Iterator[None]:
    # A checker of its own: one an earlier test left may have lost its sessions (an
    # outage test restarts the session's server).
    close_checker()
    use_server(pipeline_database.url)
    yield
    close_checker()

    async def drop() -> None:
        connection = await pipeline_database.connect()
        try:
            await connection.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        finally:
            await connection.close()

    asyncio.run(drop())


# "Insert where not exists": the upload's check and its insert are one statement, but the
# statement's snapshot does not see a twin's uncommitted insert; the twin's unique index
# then fails the second insert (the API answers 500). One after the other, the second
# upload finds the first's document and answers it, as it should.
INSERT_WHERE_NOT_EXISTS = QUERIES.replace(
    insert_document="""
INSERT INTO documents
    (document_id, user_id, filename, declared_type, file_sha256, size_bytes, raw_blob_key,
     status, created_at, updated_at)
SELECT $1, $2, $3, $4, $5, $6, $7, 'processing', $8, $8
WHERE NOT EXISTS (SELECT 1 FROM documents WHERE user_id = $2 AND file_sha256 = $5)
RETURNING document_id
"""
)


class InsertWhereNotExists(Reference):  # type: ignore[misc,valid-type]
    queries = INSERT_WHERE_NOT_EXISTS


TWICE = markdown_document("# Twice\n\nThe same bytes, sent twice at once.\n", filename="twice.md")


def _run(adapter: type[ReferenceAdapter], program: Any) -> None:
    machine = machine_for(adapter, drain=False)()
    try:
        program(machine)
    finally:
        machine.teardown()


def two_uploads_of_the_same_bytes_at_once(state: QueueMachine) -> None:
    run: Any = state
    run.start_upload_a_document(document=TWICE, by_the_other_user=False)
    run.start_upload_the_same_bytes_again(pick=0, by_the_other_user=False)
    run.step_an_action(pick=0)  # the first inserts its document: before its job's INSERT
    run.step_an_action(pick=1)  # the second's INSERT waits on the first's unique key
    run.step_an_action(pick=0)  # the first: its job inserted, before its COMMIT
    run.step_an_action(pick=0)  # the first commits and answers
    run.step_an_action(pick=0)  # the second goes on: finds the first's document
    run.step_an_action(pick=0)  # and answers


def the_same_uploads_one_after_the_other(state: QueueMachine) -> None:
    run: Any = state
    run.upload_a_document(document=TWICE, by_the_other_user=False)
    run.upload_the_same_bytes_again(pick=0, by_the_other_user=False)


def test_two_uploads_of_the_same_bytes_interleaved_are_one_document() -> None:
    _run(Reference, two_uploads_of_the_same_bytes_at_once)


def test_insert_where_not_exists_fails_the_second_of_two_uploads_at_once() -> None:
    with pytest.raises(QueueViolation) as raised:
        _run(InsertWhereNotExists, two_uploads_of_the_same_bytes_at_once)
    [finding] = raised.value.findings
    assert finding.invariant == "actions"
    assert "upload_the_same_bytes_again #2 raised UniqueViolationError" in finding.message


def test_insert_where_not_exists_passes_the_same_uploads_one_after_the_other() -> None:
    _run(InsertWhereNotExists, the_same_uploads_one_after_the_other)


# The webhook's move without its guard in SQL (the handler still checks, in Python, that
# the job it read is parsing): a worker that moves the job on between the handler's read
# and its write is overwritten. A webhook delivered before or after the worker's work is
# turned away by the handler's own check.
UNGUARDED_WEBHOOK = QUERIES.replace(
    webhook_advance=QUERIES["webhook_advance"].sql.replace(
        "WHERE job_id = $1 AND stage = 'parsing' AND state IN ('queued', 'working', 'retryable')",
        "WHERE job_id = $1",
    )
)


class UnguardedWebhook(Reference):  # type: ignore[misc,valid-type]
    queries = UNGUARDED_WEBHOOK  # the worker's and the API's SQL


def a_webhook_and_the_worker_polling_the_same_parse(state: QueueMachine) -> None:
    run: Any = state
    run.enqueue_job()
    run.run_worker(worker="w1", steps=18)  # validated; parsing, its parser job recorded
    run.start_deliver_parser_webhooks()  # the parser says the parse is done
    for _ in range(6):  # the handler reads the job (parsing), fetches the result and
        run.step_an_action(pick=0)  # stops before its UPDATE of the job
    run.run_worker_until_it_waits(worker="w1")  # w1 polls, parses, chunks, embeds: done
    for _ in range(6):
        run.step_an_action(pick=0)  # the handler's UPDATE, its event, its COMMIT


def the_webhook_after_the_worker(state: QueueMachine) -> None:
    run: Any = state
    run.enqueue_job()
    run.run_worker_until_it_waits(worker="w1")
    run.deliver_parser_webhooks()


def test_a_webhook_interleaved_with_the_worker_changes_nothing_the_worker_did() -> None:
    _run(Reference, a_webhook_and_the_worker_polling_the_same_parse)


def test_an_unguarded_webhook_move_sends_a_finished_job_back() -> None:
    with pytest.raises(QueueViolation) as raised:
        _run(UnguardedWebhook, a_webhook_and_the_worker_polling_the_same_parse)
    first = raised.value.findings[0]
    assert first.invariant == "transitions"
    assert "a finished job changed" in first.message
    assert "by deliver_parser_webhooks #" in str(first.observed)


def test_an_unguarded_webhook_move_passes_the_webhook_after_the_worker() -> None:
    _run(UnguardedWebhook, the_webhook_after_the_worker)

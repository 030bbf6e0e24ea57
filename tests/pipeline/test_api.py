"""The upload API: uploads, job status, operator retries, signed webhooks, health.

Every refusal is checked to leave the database (and the blob store) exactly as it was.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from pipeline_models.clock import ManualClock
from pipeline_models.documents import (
    Document,
    corrupt_pdf,
    markdown_document,
    pdf_document,
    text_document,
)
from pipeline_models.lifecycle import Stage
from pipeline_models.pipeline.api import ApiSettings, create_api
from pipeline_models.pipeline.auth import TokenIssuer
from pipeline_models.pipeline.checkpoints import Checkpoint
from pipeline_models.pipeline.reference import ReferencePipeline
from pipeline_models.pipeline.webhooks import ParserWebhook, sign
from pipeline_models.pipeline.worker import BaseWorker, ClaimedJob, StepAction
from tests.conftest import PipelineFactory

pytestmark = pytest.mark.anyio

TOKEN_SECRET = "token-secret-for-the-api-tests-0123456789"
NEW_SECRET, OLD_SECRET = "webhook-secret-new", "webhook-secret-old"
ALICE, BOB = uuid.UUID(int=1), uuid.UUID(int=2)
LIMIT = 200_000


@dataclass
class Api:
    pipeline: ReferencePipeline
    client: httpx.AsyncClient
    tokens: TokenIssuer
    clock: ManualClock
    app: object

    def auth(self, user: uuid.UUID) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens.issue(user)}"}

    async def upload(self, user: uuid.UUID, document: Document) -> httpx.Response:
        return await self.client.post(
            "/upload",
            headers=self.auth(user),
            files={"file": (document.filename, document.data, document.content_type)},
        )


@pytest.fixture
async def api(make_pipeline: PipelineFactory, clock: ManualClock) -> AsyncIterator[Api]:
    pipeline = make_pipeline()
    settings = ApiSettings(
        token_secret=TOKEN_SECRET,
        webhook_secrets=(NEW_SECRET, OLD_SECRET),
        max_upload_bytes=LIMIT,
    )
    app = create_api(pipeline, settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield Api(pipeline, client, TokenIssuer(TOKEN_SECRET, clock=clock), clock, app)
    await app.state.runtime.close()


async def state_of(db: asyncpg.Connection, blobs: Path) -> tuple[object, ...]:
    """Everything a refused request must leave untouched."""
    tables = []
    for table in ("documents", "upload_jobs", "document_chunk_buffer", "events"):
        rows = await db.fetch(f"SELECT * FROM {table} ORDER BY 1")
        tables.append([dict(r) for r in rows])
    return (tables, _files(blobs))


def _files(blobs: Path) -> list[str]:
    return sorted(str(p.relative_to(blobs)) for p in blobs.rglob("*")) if blobs.exists() else []


def blob_root(api: Api) -> Path:
    return Path(api.pipeline.storage.root)  # type: ignore[attr-defined]


async def test_an_upload_creates_a_document_and_its_job_once(
    api: Api, db: asyncpg.Connection
) -> None:
    document = markdown_document("# Hello\n\nAPI")
    first = await api.upload(ALICE, document)
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["created"], body["stage"], body["state"]) == (True, "queued", "queued")
    assert first.headers["location"] == f"/jobs/{body['job_id']}"
    again = await api.upload(ALICE, document)
    assert again.status_code == 200
    assert again.json()["job_id"] == body["job_id"]
    other = await api.upload(BOB, document)
    assert other.status_code == 201
    assert other.json()["document_id"] != body["document_id"]
    assert await db.fetchval("SELECT count(*) FROM upload_jobs") == 2


async def test_twenty_concurrent_uploads_of_five_files_from_two_users_make_ten_jobs(
    api: Api, db: asyncpg.Connection
) -> None:
    files = [text_document(f"file {index} " * 50) for index in range(5)]
    requests = [api.upload(user, files[i % 5]) for i in range(10) for user in (ALICE, BOB)]
    responses = await asyncio.gather(*requests)
    assert sorted(r.status_code for r in responses) == [200] * 10 + [201] * 10
    assert await db.fetchval("SELECT count(*) FROM documents") == 10
    assert await db.fetchval("SELECT count(*) FROM upload_jobs") == 10
    pairs = {(r.json()["document_id"], r.json()["job_id"]) for r in responses}
    assert len(pairs) == 10


def _oversized() -> Document:
    return text_document("x" * (LIMIT + 1))


def _far_oversized() -> Document:
    return text_document("x" * (LIMIT + 200_000))


def _late_invalid_utf8() -> Document:
    return Document("late.txt", "text/plain", b"a" * 10_000 + b"\xff", markdown_document("").kind)


@pytest.mark.parametrize(
    ("headers", "document", "status", "says"),
    [
        ({}, markdown_document("# x"), 401, "bearer token is required"),
        ({"Authorization": "Bearer nonsense"}, markdown_document("# x"), 401, "invalid token"),
        (
            {"Authorization": "Bearer " + TokenIssuer("another-secret-" * 4).issue(ALICE)},
            markdown_document("# x"),
            401,
            "invalid token",
        ),
        (None, Document("e.txt", "text/plain", b"", markdown_document("").kind), 400, "empty"),
        (
            None,
            Document("b.pdf", "application/pdf", b"\x89PNG\r\n\x1a\n", markdown_document("").kind),
            415,
            "neither PDF",
        ),
        (None, _late_invalid_utf8(), 415, "not valid UTF-8"),
        (None, text_document("nul \x00 inside"), 415, "NUL"),
        (None, _oversized(), 413, "limit"),
        (None, _far_oversized(), 413, "limit"),
    ],
    ids=[
        "no-token",
        "garbage-token",
        "forged-token",
        "empty",
        "binary",
        "invalid-utf8-after-8kb",
        "nul-bytes",
        "oversized",
        "far-oversized",
    ],
)
async def test_a_refused_upload_changes_nothing(
    api: Api,
    db: asyncpg.Connection,
    headers: dict[str, str] | None,
    document: Document,
    status: int,
    says: str,
) -> None:
    before = await state_of(db, blob_root(api))
    response = await api.client.post(
        "/upload",
        headers=api.auth(ALICE) if headers is None else headers,
        files={"file": (document.filename, document.data, document.content_type)},
    )
    assert response.status_code == status, response.text
    assert says in response.json()["detail"]
    assert await state_of(db, blob_root(api)) == before


async def test_an_expired_token_is_refused(api: Api, db: asyncpg.Connection) -> None:
    token = api.tokens.issue(ALICE, ttl_seconds=60)
    api.clock.advance(60)
    response = await api.client.post(
        "/upload",
        headers={"Authorization": f"Bearer {token}"},
        files={"file": ("a.md", b"# a", "text/markdown")},
    )
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]
    assert await db.fetchval("SELECT count(*) FROM documents") == 0


async def test_a_request_without_a_file_is_a_validation_error(
    api: Api, db: asyncpg.Connection
) -> None:
    response = await api.client.post("/upload", headers=api.auth(ALICE), data={"x": "1"})
    assert response.status_code == 422
    assert await db.fetchval("SELECT count(*) FROM documents") == 0


async def test_only_the_owner_sees_a_job_and_others_get_404(api: Api) -> None:
    job_id = (await api.upload(ALICE, markdown_document("# mine"))).json()["job_id"]
    mine = await api.client.get(f"/jobs/{job_id}", headers=api.auth(ALICE))
    assert mine.status_code == 200
    assert mine.json()["progress"] == {"chunks_total": None, "chunks_done": 0, "embeddings_done": 0}
    theirs = await api.client.get(f"/jobs/{job_id}", headers=api.auth(BOB))
    unknown = await api.client.get(f"/jobs/{uuid.uuid4()}", headers=api.auth(BOB))
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json()["detail"] == f"no job {job_id}"


async def drain(api: Api) -> None:
    worker = api.pipeline.worker(name="w")
    await worker.start()
    await api.pipeline.drain([worker])
    await worker.close()


async def test_an_operator_retry_requeues_a_dead_letter_with_a_fresh_budget(
    api: Api, db: asyncpg.Connection
) -> None:
    dead = (await api.upload(ALICE, corrupt_pdf(1))).json()["job_id"]
    done = (await api.upload(ALICE, markdown_document("# fine"))).json()["job_id"]
    await drain(api)
    assert (
        await db.fetchval("SELECT state FROM upload_jobs WHERE job_id = $1", uuid.UUID(dead))
        == "deadletter"
    )
    before = await state_of(db, blob_root(api))
    for job_id, user, status in ((done, ALICE, 409), (dead, BOB, 404)):
        refused = await api.client.post(f"/jobs/{job_id}/retry", headers=api.auth(user))
        assert refused.status_code == status, refused.text
    assert (
        "only a dead-lettered job can be retried"
        in (await api.client.post(f"/jobs/{done}/retry", headers=api.auth(ALICE))).json()["detail"]
    )
    assert await state_of(db, blob_root(api)) == before
    retried = await api.client.post(f"/jobs/{dead}/retry", headers=api.auth(ALICE))
    assert retried.status_code == 200
    assert (retried.json()["state"], retried.json()["retry_count"]) == ("queued", 0)
    assert retried.json()["last_error"]  # the record of what happened stays
    status = await db.fetchval(
        "SELECT status FROM documents d JOIN upload_jobs j USING (document_id) WHERE job_id = $1",
        uuid.UUID(dead),
    )
    assert status == "processing"
    live = await api.client.post(f"/jobs/{dead}/retry", headers=api.auth(ALICE))
    assert live.status_code == 409  # now queued: a live job is not retried again


async def at_parsing(api: Api, db: asyncpg.Connection, text: str = "# Parse me") -> tuple[str, str]:
    """Upload a document and step it to (parsing, queued); its job and parser job ids."""
    job_id = (await api.upload(ALICE, markdown_document(text))).json()["job_id"]
    worker = api.pipeline.worker(name="stepper")
    await worker.start()
    for _ in range(2):
        assert (await worker.run_once()).action is StepAction.ADVANCED
    await worker.close()
    parser_job = await db.fetchval(
        "SELECT parser_job_id FROM upload_jobs WHERE job_id = $1", uuid.UUID(job_id)
    )
    return job_id, parser_job


def signed(
    api: Api,
    parser_job: str,
    *,
    status: str = "SUCCESS",
    secrets: tuple[str, ...] = (NEW_SECRET,),
    age: float = 0,
) -> tuple[bytes, dict[str, str]]:
    error = "unreadable" if status == "ERROR" else None
    body = ParserWebhook(job_id=parser_job, status=status, error_message=error).to_json()
    timestamp = int(api.clock.now().timestamp() - age)
    return body, sign(body, secrets=secrets, timestamp=timestamp)


async def post_webhook(api: Api, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await api.client.post(
        "/webhooks/parser", content=body, headers={**headers, "content-type": "application/json"}
    )


async def test_a_verified_webhook_advances_the_job_once_and_a_duplicate_is_a_no_op(
    api: Api, db: asyncpg.Connection
) -> None:
    job_id, parser_job = await at_parsing(api, db)
    body, headers = signed(api, parser_job)
    first = await post_webhook(api, body, headers)
    assert (first.status_code, first.json()) == (200, {"status": "accepted"})
    job = await db.fetchrow(
        "SELECT stage, state FROM upload_jobs WHERE job_id = $1", uuid.UUID(job_id)
    )
    assert (job["stage"], job["state"]) == ("parsed", "queued")
    before = await state_of(db, blob_root(api))
    again = await post_webhook(api, body, headers)
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    assert await state_of(db, blob_root(api)) == before
    await drain(api)
    assert await db.fetchval("SELECT state FROM upload_jobs") == "done"


async def test_a_webhook_signed_with_the_old_secret_is_accepted_during_rotation(
    api: Api, db: asyncpg.Connection
) -> None:
    _, parser_job = await at_parsing(api, db)
    response = await post_webhook(api, *signed(api, parser_job, secrets=(OLD_SECRET,)))
    assert response.json() == {"status": "accepted"}


@pytest.mark.parametrize(
    ("tamper", "status", "says"),
    [
        ("signature", 401, "webhook rejected"),
        ("body", 401, "webhook rejected"),
        ("secret", 401, "webhook rejected"),
        ("stale", 401, "webhook rejected"),
        ("unsigned", 401, "webhook rejected"),
        ("unknown-job", 404, "no job waits"),
        ("malformed", 400, "malformed webhook"),
    ],
)
async def test_a_bad_webhook_is_rejected_with_nothing_changed(
    api: Api, db: asyncpg.Connection, tamper: str, status: int, says: str
) -> None:
    _, parser_job = await at_parsing(api, db)
    body, headers = signed(api, parser_job)
    if tamper == "signature":
        headers["X-Pipeline-Signature"] = "v1=" + "0" * 64
    elif tamper == "body":
        body = body.replace(b"SUCCESS", b"SUCCEES")
    elif tamper == "secret":
        body, headers = signed(api, parser_job, secrets=("a-removed-secret",))
    elif tamper == "stale":
        body, headers = signed(api, parser_job, age=301)
    elif tamper == "unsigned":
        headers = {}
    elif tamper == "unknown-job":
        body, headers = signed(api, "no-such-parser-job")
    elif tamper == "malformed":
        body = b"{not json"
        headers = sign(body, secrets=(NEW_SECRET,), timestamp=int(api.clock.now().timestamp()))
    before = await state_of(db, blob_root(api))
    response = await post_webhook(api, body, headers)
    assert response.status_code == status, response.text
    assert says in response.json()["detail"]
    assert await state_of(db, blob_root(api)) == before


async def test_an_error_webhook_is_acknowledged_and_left_to_the_poller(
    api: Api, db: asyncpg.Connection
) -> None:
    _, parser_job = await at_parsing(api, db)
    before = await state_of(db, blob_root(api))
    response = await post_webhook(api, *signed(api, parser_job, status="ERROR"))
    assert (response.status_code, response.json()) == (202, {"status": "ignored"})
    assert await state_of(db, blob_root(api)) == before


class Pause:
    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.reached, self.release = asyncio.Event(), asyncio.Event()

    async def __call__(self, worker: str, checkpoint: Checkpoint, job: ClaimedJob | None) -> None:
        if job and job.stage is Stage.PARSING and checkpoint is self.checkpoint:
            self.reached.set()
            await self.release.wait()


@pytest.mark.parametrize("where", [Checkpoint.AFTER_CALL, Checkpoint.BEFORE_COMMIT])
async def test_a_webhook_racing_a_polling_worker_advances_the_job_exactly_once(
    api: Api, db: asyncpg.Connection, where: Checkpoint
) -> None:
    job_id, parser_job = await at_parsing(api, db)
    pause = Pause(where)
    poller: BaseWorker = api.pipeline.worker(name="poller", checkpoints=pause)
    await poller.start()
    polling = asyncio.create_task(poller.run_once())
    await pause.reached.wait()
    delivery = asyncio.create_task(post_webhook(api, *signed(api, parser_job)))
    if where is Checkpoint.AFTER_CALL:
        assert (await delivery).json() == {"status": "accepted"}
        pause.release.set()
        assert (await polling).action is StepAction.LEASE_LOST
    else:  # the poller holds the row lock: the webhook waits, then finds it done
        await asyncio.sleep(0.2)
        assert not delivery.done()
        pause.release.set()
        assert (await polling).action is StepAction.ADVANCED
        assert (await delivery).json() == {"status": "duplicate"}
    await poller.close()
    advances = await db.fetchval(
        "SELECT count(*) FROM events WHERE job_id = $1 AND "
        "(action = 'webhook_accepted' OR (action = 'stage_completed' AND stage = 'parsing'))",
        uuid.UUID(job_id),
    )
    assert advances == 1
    await drain(api)
    assert await db.fetchval("SELECT state FROM upload_jobs") == "done"


@pytest.mark.parametrize("point", ["blob_stored", "document_inserted", "job_inserted"])
async def test_a_crash_at_any_point_of_an_upload_never_leaves_a_document_without_its_job(
    api: Api, db: asyncpg.Connection, point: str
) -> None:
    async def crash(reached: str, connection: asyncpg.Connection) -> None:
        if reached == point:
            await db.execute("SELECT pg_terminate_backend($1)", connection.get_server_pid())

    api.app.state.runtime.upload_checkpoint = crash  # type: ignore[attr-defined]
    document = pdf_document(["crash me"])
    # Killed mid-request; asyncpg may then also fail to roll back on the dead socket.
    died = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
    with pytest.raises(died):
        await api.upload(ALICE, document)  # the database connection died mid-request
    orphans = await db.fetchval(
        "SELECT count(*) FROM documents d WHERE NOT EXISTS "
        "(SELECT 1 FROM upload_jobs j WHERE j.document_id = d.document_id)"
    )
    assert orphans == 0
    assert await db.fetchval("SELECT count(*) FROM documents") == 0
    api.app.state.runtime.upload_checkpoint = None  # type: ignore[attr-defined]
    retried = await api.upload(ALICE, document)
    assert retried.status_code == 201
    assert await db.fetchval("SELECT count(*) FROM upload_jobs") == 1


async def test_health_reports_every_component(api: Api) -> None:
    response = await api.client.get("/health")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["ok"] is True
    assert report["database"]["ok"]
    assert report["storage"]["ok"]
    assert set(report["services"]) == {"parser", "embeddings"}
    for service in report["services"].values():
        assert service["detail"]["reachable"] is True
        assert service["detail"]["circuit"]["state"] == "closed"

"""The upload API: what the reference pipeline looks like from outside.

``POST /upload`` (bearer token, multipart file), ``GET /jobs/{job_id}``,
``POST /jobs/{job_id}/retry``, ``POST /webhooks/parser`` (HMAC-signed),
``PUT /operator/budget`` (operators only), ``GET /health`` and ``GET /metrics``
(Prometheus). Every refusal leaves the database as it was; a job is visible only to
its owner (anyone else gets 404, so ids do not leak).

Example::

    app = create_api(pipeline, ApiSettings(token_secret=..., webhook_secrets=("s1",)))
    uvicorn.run(app, port=8000)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import Depends, FastAPI, File, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline_models import __version__
from pipeline_models.errors import ServiceError
from pipeline_models.lifecycle import Stage, State
from pipeline_models.metrics import CONTENT_TYPE, PipelineMetrics, run_usage
from pipeline_models.pipeline.auth import AuthenticationError, TokenIssuer
from pipeline_models.pipeline.budget import Budget
from pipeline_models.pipeline.costs import Usage
from pipeline_models.pipeline.ledger import Ledger
from pipeline_models.pipeline.reference import ReferencePipeline
from pipeline_models.pipeline.retry import describe
from pipeline_models.pipeline.storage import parsed_key
from pipeline_models.pipeline.uploads import (
    RejectionReason,
    UploadCheckpoint,
    UploadRejectedError,
    check_upload,
    enqueue_upload,
)
from pipeline_models.pipeline.webhooks import ParserWebhook, WebhookRejected, verify
from pipeline_models.queries import QUERIES, Queries

MEBIBYTE = 2**20
# Room for the multipart envelope around the file itself.
_MULTIPART_OVERHEAD = 64 * 1024
_FILENAME_CHARS = 255


@dataclass(frozen=True)
class ApiSettings:
    """What the API needs beyond the pipeline: its secrets and limits."""

    token_secret: str = field(repr=False)
    webhook_secrets: tuple[str, ...] = field(repr=False)
    # Users whose tokens may change the spending budget (PUT /operator/budget).
    operators: frozenset[uuid.UUID] = frozenset()
    max_upload_bytes: int = 25 * MEBIBYTE
    webhook_tolerance_seconds: float = 300.0
    pool_size: int = 10

    def __post_init__(self) -> None:
        if not self.webhook_secrets or not all(self.webhook_secrets):
            raise ValueError("at least one non-empty webhook secret is needed")


class ErrorBody(BaseModel):
    detail: str


class UploadResponse(BaseModel):
    document_id: uuid.UUID
    job_id: uuid.UUID
    created: bool = Field(description="False when the same bytes were uploaded before")
    stage: Stage
    state: State


class Progress(BaseModel):
    chunks_total: int | None
    chunks_done: int
    embeddings_done: int


class JobCost(BaseModel):
    pages_billed: int
    tokens_billed: int
    cost_usd: str = Field(description="Exact decimal, as a string")
    cost_unconfirmed_usd: str = Field(
        description="The part of cost_usd that is estimates: calls in flight, parses whose "
        "pages are not counted yet, calls whose answer was lost (they may have been billed)"
    )


class JobStatus(BaseModel):
    job_id: uuid.UUID
    document_id: uuid.UUID
    filename: str
    stage: Stage
    state: State
    held_for: str | None = Field(
        default=None, description="'budget': queued, waiting for the budget to be raised"
    )
    retry_count: int
    last_error: str | None
    progress: Progress
    cost: JobCost
    created_at: datetime
    updated_at: datetime


class WebhookResult(BaseModel):
    status: Literal["accepted", "duplicate", "ignored"]


class ComponentHealth(BaseModel):
    ok: bool
    detail: dict[str, Any] = Field(default_factory=dict)


class Health(BaseModel):
    ok: bool
    version: str
    database: ComponentHealth
    storage: ComponentHealth
    services: dict[str, ComponentHealth]
    jobs: dict[str, int] = Field(default_factory=dict, description="stage/state: jobs")
    held: dict[str, int] = Field(default_factory=dict, description="stage: jobs held")
    cost: dict[str, str] = Field(default_factory=dict, description="pages, tokens, cost_usd")
    budget: dict[str, str] | None = None


class BudgetChange(BaseModel):
    max_cost_usd: str = Field(description="The new limit, an exact decimal such as '5.00'")


class BudgetReport(BaseModel):
    limit_usd: str
    spent_usd: str
    reserved_usd: str
    remaining_usd: str
    released: int


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in statuses}


class _UploadSizeGuard:
    """Refuse an oversized upload from its Content-Length, before the body is read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/upload" and scope["method"] == "POST":
            for name, value in scope["headers"]:
                if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                    response = JSONResponse(
                        {"detail": f"the upload is over the limit of {self.limit} bytes"},
                        status_code=413,
                    )
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


class ApiRuntime:
    """The API's shared state: the pipeline, its SQL, a connection pool (opened on first
    use)."""

    def __init__(
        self, pipeline: ReferencePipeline, settings: ApiSettings, queries: Queries = QUERIES
    ) -> None:
        self.pipeline = pipeline
        self.settings = settings
        # The SQL it runs (the worker's own, so that a bug planted in one is in both).
        self.queries = queries
        self.tokens = TokenIssuer(settings.token_secret, clock=pipeline.clock)
        self.upload_checkpoint: UploadCheckpoint | None = None
        self._pool: asyncpg.Pool | None = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None
        self._pool_lock = asyncio.Lock()

    def use(self, pipeline: ReferencePipeline) -> None:
        """Serve ``pipeline`` from now on (same database): the checker builds the app once
        and points it at each example's pipeline, since building it costs ~20 ms."""
        if pipeline.database is not self.pipeline.database:
            raise ValueError("an API runtime keeps its database (and its pool)")
        self.pipeline = pipeline
        self.tokens = TokenIssuer(self.settings.token_secret, clock=pipeline.clock)

    async def pool(self) -> asyncpg.Pool:
        """The connection pool, opened on first use in the running event loop.

        ASGITransport runs no lifespan events, and a synchronous test client may run each
        request on a new loop; a pool belongs to one loop, so a new loop gets a new pool.
        """
        loop = asyncio.get_running_loop()
        if self._pool_loop is not loop:
            if self._pool is not None:
                self._pool.terminate()
            self._pool, self._pool_loop, self._pool_lock = None, loop, asyncio.Lock()
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await self.pipeline.database.create_pool(
                    max_size=self.settings.pool_size, application_name="pipeline-models api"
                )
            return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


_bearer = HTTPBearer(auto_error=False, description="A token from TokenIssuer.issue")


async def current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> uuid.UUID:
    """The user the request's bearer token names; 401 otherwise.

    Async although it awaits nothing: FastAPI runs a plain function dependency in a
    thread pool, a thread hop per request for a microsecond of HMAC.
    """
    if credentials is None:
        raise HTTPException(401, "a bearer token is required", {"WWW-Authenticate": "Bearer"})
    runtime: ApiRuntime = request.app.state.runtime
    try:
        return runtime.tokens.verify(credentials.credentials)
    except AuthenticationError as error:
        raise HTTPException(401, str(error), {"WWW-Authenticate": "Bearer"}) from None


User = Annotated[uuid.UUID, Depends(current_user)]


def create_api(
    pipeline: ReferencePipeline, settings: ApiSettings, *, queries: Queries = QUERIES
) -> FastAPI:
    """The upload API of ``pipeline`` running ``queries`` (re-point it with
    ``app.state.runtime.use``)."""
    runtime = ApiRuntime(pipeline, settings, queries)
    metrics = pipeline.metrics or PipelineMetrics()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await runtime.close()

    app = FastAPI(
        title="pipeline-models reference pipeline",
        version=__version__,
        description="Uploads, job status, operator retries and parser webhooks.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.add_middleware(_UploadSizeGuard, limit=settings.max_upload_bytes + _MULTIPART_OVERHEAD)

    @app.post(
        "/upload",
        status_code=201,
        response_model=UploadResponse,
        responses={200: {"model": UploadResponse}, **_errors(400, 401, 413, 415)},
        summary="Upload a PDF, markdown or text file",
    )
    async def upload(user: User, file: Annotated[UploadFile, File()]) -> JSONResponse:
        """Store a file and queue its job; the same bytes from the same user give the same
        document and job (200 instead of 201)."""
        data = await _read_limited(file, settings.max_upload_bytes)
        filename = _clean_filename(file.filename)
        try:
            check_upload(
                data,
                filename=filename,
                declared_type=file.content_type,
                max_bytes=settings.max_upload_bytes,
            )
        except UploadRejectedError as error:
            status = {
                RejectionReason.EMPTY: 400,
                RejectionReason.TOO_LARGE: 413,
                RejectionReason.UNSUPPORTED_TYPE: 415,
            }[error.reason]
            raise HTTPException(status, str(error)) from None
        pool = await runtime.pool()
        async with pool.acquire() as connection:
            accepted = await enqueue_upload(
                connection,
                runtime.pipeline.storage,
                runtime.pipeline.clock,
                user_id=user,
                filename=filename,
                declared_type=file.content_type or "application/octet-stream",
                data=data,
                queries=queries,
                checkpoint=runtime.upload_checkpoint,
            )
            job = await connection.fetchrow(queries["job_for_user"].sql, accepted.job_id, user)
        body = UploadResponse(
            document_id=accepted.document_id,
            job_id=accepted.job_id,
            created=accepted.created,
            stage=Stage(job["stage"]),
            state=State(job["state"]),
        )
        return JSONResponse(
            body.model_dump(mode="json"),
            status_code=201 if accepted.created else 200,
            headers={"Location": f"/jobs/{accepted.job_id}"},
        )

    @app.get(
        "/jobs/{job_id}",
        response_model=JobStatus,
        responses=_errors(401, 404),
        summary="A job's stage, state, progress and last error",
    )
    async def job_status(job_id: uuid.UUID, user: User) -> JobStatus:
        pool = await runtime.pool()
        async with pool.acquire() as connection:
            row = await connection.fetchrow(queries["job_for_user"].sql, job_id, user)
        if row is None:
            raise HTTPException(404, f"no job {job_id}")
        return _job_status(row)

    @app.post(
        "/jobs/{job_id}/retry",
        response_model=JobStatus,
        responses=_errors(401, 404, 409),
        summary="Queue a dead-lettered job again, with a fresh retry budget",
    )
    async def retry(job_id: uuid.UUID, user: User) -> JobStatus:
        now = runtime.pipeline.clock.now()
        pool = await runtime.pool()
        async with pool.acquire() as connection, connection.transaction():
            moved = await connection.fetchrow(queries["operator_retry"].sql, job_id, user, now)
            if moved is None:
                row = await connection.fetchrow(queries["job_for_user"].sql, job_id, user)
                if row is None:
                    raise HTTPException(404, f"no job {job_id}")
                raise HTTPException(
                    409,
                    f"job {job_id} is {row['state']} at {row['stage']}; only a dead-lettered "
                    "job can be retried",
                )
            await connection.execute(
                queries["mark_document_processing"].sql, moved["document_id"], now
            )
            await _event(queries, connection, moved, "operator_retry", now, {"user": str(user)})
            row = await connection.fetchrow(queries["job_for_user"].sql, job_id, user)
        return _job_status(row)

    @app.post(
        "/webhooks/parser",
        response_model=WebhookResult,
        responses={202: {"model": WebhookResult}, **_errors(400, 401, 404, 503)},
        summary="The parser's signed notice that a job finished",
    )
    async def parser_webhook(request: Request) -> JSONResponse:
        body = await request.body()
        now = runtime.pipeline.clock.now()
        try:
            verify(
                request.headers,
                body,
                secrets=settings.webhook_secrets,
                now=now,
                tolerance_seconds=settings.webhook_tolerance_seconds,
            )
        except WebhookRejected as error:
            raise HTTPException(401, f"webhook rejected: {error.reason}") from None
        try:
            notice = ParserWebhook.from_json(body)
        except WebhookRejected as error:
            raise HTTPException(400, f"malformed webhook: {error.reason}") from None
        pool = await runtime.pool()
        async with pool.acquire() as connection:
            job = await connection.fetchrow(queries["job_by_parser_job"].sql, notice.job_id)
            if job is None:
                raise HTTPException(404, f"no job waits for parser job {notice.job_id}")
            if notice.status != "SUCCESS":
                # The poller reads the error from the parser and dead-letters the job.
                return _webhook_result("ignored", 202)
            if job["stage"] != Stage.PARSING or State(job["state"]) not in _LIVE:
                return _webhook_result("duplicate")
            key = parsed_key(job["document_id"])
            parser = runtime.pipeline.services.parser
            try:
                with runtime.pipeline.storage.writer(key) as out:
                    await parser.download_markdown(notice.job_id, out)
                # What the parser billed, from its job result, as the poller records it.
                pages = await parser.result_pages(notice.job_id)
            except ServiceError as error:
                raise HTTPException(503, f"could not fetch the parse result: {error}") from None
            # The pages were billed whatever becomes of this delivery: the parser's call
            # is counted now (once: a duplicate finds it counted).
            await _count_parse(runtime.pipeline, connection, job, notice.job_id, pages, now)
            async with connection.transaction():
                moved = await connection.fetchval(
                    queries["webhook_advance"].sql, job["job_id"], now
                )
                if moved is None:
                    return _webhook_result("duplicate")
                await connection.execute(
                    queries["set_parsed_blob"].sql, job["document_id"], key, pages, now
                )
                detail = {"parser": notice.job_id}
                await _event(queries, connection, job, "webhook_accepted", now, detail)
        return _webhook_result("accepted")

    @app.put(
        "/operator/budget",
        response_model=BudgetReport,
        responses=_errors(401, 403, 422),
        summary="Set the spending cap; raising it releases the jobs held for the budget",
    )
    async def set_budget(change: BudgetChange, user: User) -> BudgetReport:
        if user not in runtime.settings.operators:
            raise HTTPException(403, "only an operator may change the budget")
        try:
            limit = Decimal(change.max_cost_usd)
        except InvalidOperation:
            raise HTTPException(
                422, f"max_cost_usd must be a decimal such as '5.00', got {change.max_cost_usd!r}"
            ) from None
        if not limit.is_finite() or limit < 0:
            raise HTTPException(422, f"max_cost_usd must be 0 or more, got {limit}")
        budget = runtime.pipeline.budget or Budget()
        pool = await runtime.pool()
        async with pool.acquire() as connection:
            state, released = await budget.set_limit(
                connection, limit, runtime.pipeline.clock.now()
            )
        return BudgetReport(**state.as_dict(), released=released)

    @app.get(
        "/metrics",
        response_class=Response,
        summary="Prometheus metrics: jobs, holds, circuits, cost",
    )
    async def prometheus_metrics() -> Response:
        pool = await runtime.pool()
        async with pool.acquire() as connection:
            await metrics.refresh(
                connection,
                breakers=runtime.pipeline.breakers,
                budget=runtime.pipeline.budget or Budget(),
            )
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get(
        "/health",
        response_model=Health,
        responses={503: {"model": Health}},
        summary="Database, storage and each external service",
    )
    async def health() -> JSONResponse:
        report = await _health(runtime)
        return JSONResponse(report.model_dump(mode="json"), status_code=200 if report.ok else 503)

    return app


_LIVE = {State.QUEUED, State.WORKING, State.RETRYABLE}


def _webhook_result(
    status: Literal["accepted", "duplicate", "ignored"], code: int = 200
) -> JSONResponse:
    return JSONResponse(WebhookResult(status=status).model_dump(), status_code=code)


async def _read_limited(file: UploadFile, limit: int) -> bytes:
    pieces, size = [], 0
    while piece := await file.read(1 << 20):
        size += len(piece)
        if size > limit:
            raise HTTPException(413, f"the upload is over the limit of {limit} bytes")
        pieces.append(piece)
    return b"".join(pieces)


def _clean_filename(name: str | None) -> str:
    base = (name or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    printable = "".join(c for c in base if c.isprintable()).strip()
    return (printable or "upload")[:_FILENAME_CHARS]


def _job_status(row: asyncpg.Record) -> JobStatus:
    return JobStatus(
        job_id=row["job_id"],
        document_id=row["document_id"],
        filename=row["filename"],
        stage=Stage(row["stage"]),
        state=State(row["state"]),
        held_for=row["held_for"],
        retry_count=row["retry_count"],
        last_error=row["last_error"],
        progress=Progress(
            chunks_total=row["chunks_total"],
            chunks_done=row["chunks_done"],
            embeddings_done=row["embeddings_done"],
        ),
        cost=JobCost(
            pages_billed=row["pages_billed"],
            tokens_billed=row["tokens_billed"],
            cost_usd=str(row["cost_usd"]),
            cost_unconfirmed_usd=str(row["cost_unconfirmed_usd"]),
        ),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def _count_parse(
    pipeline: ReferencePipeline,
    connection: asyncpg.Connection,
    job: asyncpg.Record,
    parser_job_id: str,
    pages: int,
    now: datetime,
) -> None:
    """The webhook's half of what ``collect_parse`` does when it polls: the parse's call
    in the ledger billed at the pages counted (and the budget moved from its estimate)."""
    cost = pipeline.config.prices.price(Usage(pages=pages))
    await Ledger().count_parse(connection, job["job_id"], parser_job_id, pages, cost, now)


async def _event(
    queries: Queries,
    connection: asyncpg.Connection,
    job: asyncpg.Record,
    action: str,
    now: datetime,
    detail: dict[str, Any],
) -> None:
    await connection.execute(
        queries["insert_event"].sql,
        job["job_id"],
        job["document_id"],
        job["correlation_id"],
        action,
        None,
        None,
        "api",
        detail,
        now,
    )


async def _health(runtime: ApiRuntime) -> Health:
    pipeline = runtime.pipeline
    try:
        started = time.perf_counter()
        pool = await runtime.pool()
        async with pool.acquire() as connection:
            await connection.fetchval("SELECT 1")
        database = ComponentHealth(
            ok=True, detail={"latency_ms": round((time.perf_counter() - started) * 1000, 3)}
        )
    except Exception as error:
        database = ComponentHealth(ok=False, detail={"error": describe(error)})
    storage_report = pipeline.storage.health()
    storage = ComponentHealth(ok=bool(storage_report.get("ok")), detail=storage_report)
    services = {}
    for name, probe in (
        ("parser", _probe_parser(pipeline)),
        ("embeddings", _probe_embeddings(pipeline)),
    ):
        circuit = pipeline.breakers[name].snapshot()
        reachable, problem = await probe
        services[name] = ComponentHealth(
            ok=reachable and circuit["state"] != "open",
            detail={"reachable": reachable, "circuit": circuit, "error": problem},
        )
    ok = database.ok and storage.ok and all(s.ok for s in services.values())
    health = Health(
        ok=ok, version=__version__, database=database, storage=storage, services=services
    )
    if database.ok:
        # What /metrics shows, as JSON: jobs, holds, cost and the budget.
        try:
            async with pool.acquire() as connection:
                jobs = await connection.fetch(runtime.queries["job_counts"].sql)
                held = await connection.fetch(runtime.queries["count_held_jobs"].sql)
                usage = await run_usage(connection)
                budget = await (pipeline.budget or Budget()).state(connection)
        except Exception as error:
            health.database.detail["pipeline_error"] = describe(error)
        else:
            health.jobs = {f"{r['stage']}/{r['state']}": r["jobs"] for r in jobs}
            health.held = {r["stage"]: r["jobs"] for r in held}
            health.cost = {k: str(v) for k, v in usage.items()}
            health.budget = budget.as_dict() if budget is not None else None
    return health


async def _probe_parser(pipeline: ReferencePipeline) -> tuple[bool, str | None]:
    try:
        # Any HTTP answer proves the service is there; only transport failures count.
        await pipeline.services.parser.http.get("/", timeout=2.0)
    except Exception as error:
        return False, describe(error)
    return True, None


async def _probe_embeddings(pipeline: ReferencePipeline) -> tuple[bool, str | None]:
    try:
        await pipeline.services.embeddings.client.with_options(timeout=2.0).models.list()
    except Exception as error:
        return False, describe(error)
    return True, None


__all__ = [
    "ApiRuntime",
    "ApiSettings",
    "BudgetChange",
    "BudgetReport",
    "ErrorBody",
    "Health",
    "JobCost",
    "JobStatus",
    "UploadResponse",
    "WebhookResult",
    "create_api",
]

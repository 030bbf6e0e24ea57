"""A fake LlamaParse (v1 REST subset) as an ASGI app: deterministic, with fault injection.

Endpoints (fault endpoint names in brackets):

- ``POST /api/v1/parsing/upload`` [upload]: multipart field ``file`` (and an optional
  form field ``webhook_url``, recorded on the job) -> ``{"id", "status": "PENDING"}``.
  The file is parsed at once (:func:`~pipeline_models.fakes.parsing.parse_document`).
- ``GET /api/v1/parsing/job/{id}`` [status] -> ``{"id", "status"}``, plus
  ``"error_message"`` when the status is ``ERROR``. The first ``pending_polls`` polls of
  each job answer ``PENDING``; a poll answered by a fault does not count.
- ``GET /api/v1/parsing/job/{id}/result/markdown`` [result] ->
  ``{"markdown", "job_metadata": {"job_pages", "credits_used"}}``.
- ``GET /api/v1/parsing/job/{id}/result/raw/markdown`` [result] -> the markdown as
  ``text/markdown; charset=utf-8``, streamed in 64 KiB pieces.

A result asked for before the job is done, or of a failed job, is a 400; an unknown job
is a 404; a missing or wrong bearer token (when ``api_key`` is set) is a 401; a file
over ``max_file_bytes`` is a 413. Errors are ``{"detail": message}`` as in LlamaParse.
Pages are billed at upload, once per successfully parsed job (one credit a page).

>>> app = create_parser_app(pending_polls=1, api_key="secret")
>>> app.state.fake.uploads
0
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pipeline_models.fakes.faults import (
    FakeService,
    FakeServiceApp,
    Fault,
    FaultKind,
    FaultPlan,
    retry_after_header,
)
from pipeline_models.fakes.parsing import ParsedDocument, ParseFailure, parse_document

PARSER_JOB_NAMESPACE = uuid.UUID("2f0c7d1e-5b8a-4f43-9a51-6a0d1f3c8e27")
"""uuid5 namespace of parser job ids: ``uuid5(ns, f"{sha256}:{submission}")``."""

RAW_CHUNK_BYTES = 64 * 1024
"""The raw markdown endpoint streams the body in pieces of this size."""

JobStatus = Literal["PENDING", "SUCCESS", "ERROR"]


@dataclass
class ParserJob:
    """One submitted file and what the parser made of it."""

    id: str
    filename: str
    sha256: str
    size: int
    submission: int
    webhook_url: str | None
    result: ParsedDocument | None
    error_message: str | None
    pending_polls: int
    polls: int = 0

    @property
    def done(self) -> bool:
        """Whether the job has answered all its PENDING polls."""
        return self.polls >= self.pending_polls

    @property
    def status(self) -> JobStatus:
        """What the next status poll would report (without counting as a poll)."""
        if not self.done:
            return "PENDING"
        return "SUCCESS" if self.result is not None else "ERROR"

    def to_json(self) -> dict[str, Any]:
        """The status endpoint's answer for this job."""
        body: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.status == "ERROR":
            body["error_message"] = self.error_message
        return body


class ParserFake(FakeService):
    """The parser's state, at ``app.state.fake``: jobs, counters and the fault plan."""

    name = "parser"

    def __init__(self, *, faults: FaultPlan | None, pending_polls: int) -> None:
        super().__init__(faults)
        self.pending_polls = pending_polls
        self.jobs: dict[str, ParserJob] = {}
        self.uploads = 0
        self.pages_billed = 0

    def submit(self, data: bytes, *, filename: str, webhook_url: str | None) -> ParserJob:
        """Create a job for ``data``, parsing it now; the id is deterministic."""
        self.uploads += 1
        sha256 = hashlib.sha256(data).hexdigest()
        job_id = str(uuid.uuid5(PARSER_JOB_NAMESPACE, f"{sha256}:{self.uploads}"))
        try:
            result: ParsedDocument | None = parse_document(data, filename=filename)
            error_message = None
        except ParseFailure as failure:
            result, error_message = None, failure.reason
        if result is not None:
            self.pages_billed += result.pages
        job = ParserJob(
            id=job_id,
            filename=filename,
            sha256=sha256,
            size=len(data),
            submission=self.uploads,
            webhook_url=webhook_url,
            result=result,
            error_message=error_message,
            pending_polls=self.pending_polls,
        )
        self.jobs[job_id] = job
        return job

    def stats(self) -> dict[str, Any]:
        return {
            **super().stats(),
            "uploads": self.uploads,
            "pages_billed": self.pages_billed,
            "jobs": {job.id: job.status for job in self.jobs.values()},
        }


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _fault_response(fault: Fault) -> Response:
    status = fault.status or 500
    if fault.kind is FaultKind.RATE_LIMIT:
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = retry_after_header(fault.retry_after)
        return _error(status, "Rate limit exceeded, retry later", headers)
    if fault.kind is FaultKind.SERVER_ERROR:
        return _error(status, "Internal error in the parsing service (injected)")
    return _error(status, f"Request rejected with status {status} (injected permanent error)")


def create_parser_app(
    *,
    faults: FaultPlan | None = None,
    pending_polls: int = 0,
    api_key: str | None = None,
    max_file_bytes: int = 50 * 2**20,
) -> Starlette:
    """Build a fake parser app. See the module docstring for the endpoints.

    ``faults`` is the initial plan (healthy if ``None``; replace it through
    ``app.state.fake.faults`` or ``PUT /_fake/faults``). ``pending_polls`` status polls
    of each job answer PENDING before the real status. With ``api_key`` set, requests
    need ``Authorization: Bearer <api_key>``.

    Example (inside a coroutine)::

        app = create_parser_app(faults=FaultPlan([Fault.server_error()], endpoints=["upload"]))
        async with parser_http_client(app) as client:
            upload = {"file": ("a.md", b"# A")}
            first = await client.post("/api/v1/parsing/upload", files=upload)
            second = await client.post("/api/v1/parsing/upload", files=upload)
        assert (first.status_code, second.status_code) == (503, 200)
    """
    if isinstance(pending_polls, bool) or not isinstance(pending_polls, int) or pending_polls < 0:
        raise ValueError(f"pending_polls must be an int >= 0, got {pending_polls!r}")
    if (
        isinstance(max_file_bytes, bool)
        or not isinstance(max_file_bytes, int)
        or max_file_bytes < 1
    ):
        raise ValueError(f"max_file_bytes must be an int >= 1, got {max_file_bytes!r}")
    fake = ParserFake(faults=faults, pending_polls=pending_polls)

    def unauthorised(request: Request) -> Response | None:
        if api_key is None or request.headers.get("authorization") == f"Bearer {api_key}":
            return None
        return _error(401, "Invalid authentication credentials", {"WWW-Authenticate": "Bearer"})

    def lookup(request: Request) -> ParserJob | Response:
        job_id = request.path_params["job_id"]
        job = fake.jobs.get(job_id)
        return job if job is not None else _error(404, f"Job {job_id} not found")

    def finished(request: Request) -> ParsedDocument | Response:
        job = lookup(request)
        if isinstance(job, Response):
            return job
        if not job.done:
            return _error(400, f"Job {job.id} is still PENDING; poll its status first")
        if job.result is None:
            return _error(400, f"Job {job.id} failed: {job.error_message}")
        return job.result

    async def upload(request: Request) -> Response:
        if (denied := unauthorised(request)) is not None:
            return denied
        async with request.form(max_files=1, max_fields=10) as form:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                return _error(400, "The multipart form needs a file in the field 'file'")
            size = file.size if file.size is not None else 0
            if size > max_file_bytes:
                return _error(413, f"File is {size} bytes; the limit is {max_file_bytes} bytes")
            data = await file.read()
            webhook_url = form.get("webhook_url")
            job = fake.submit(
                data,
                filename=file.filename or "upload",
                webhook_url=webhook_url if isinstance(webhook_url, str) else None,
            )
        # Like LlamaParse, the upload answers PENDING even when the result is ready.
        return JSONResponse({"id": job.id, "status": "PENDING"})

    async def status(request: Request) -> Response:
        if (denied := unauthorised(request)) is not None:
            return denied
        job = lookup(request)
        if isinstance(job, Response):
            return job
        if not job.done:
            job.polls += 1
            return JSONResponse({"id": job.id, "status": "PENDING"})
        return JSONResponse(job.to_json())

    async def result(request: Request) -> Response:
        if (denied := unauthorised(request)) is not None:
            return denied
        parsed = finished(request)
        if isinstance(parsed, Response):
            return parsed
        metadata = {"job_pages": parsed.pages, "credits_used": parsed.pages}
        return JSONResponse({"markdown": parsed.markdown, "job_metadata": metadata})

    async def raw_result(request: Request) -> Response:
        if (denied := unauthorised(request)) is not None:
            return denied
        parsed = finished(request)
        if isinstance(parsed, Response):
            return parsed
        body = parsed.markdown.encode("utf-8", "surrogatepass")

        async def pieces() -> AsyncIterator[bytes]:
            for start in range(0, len(body), RAW_CHUNK_BYTES):
                yield body[start : start + RAW_CHUNK_BYTES]

        return StreamingResponse(
            pieces(),
            media_type="text/markdown; charset=utf-8",
            headers={"Content-Length": str(len(body))},
        )

    routes = [
        Route("/api/v1/parsing/upload", upload, methods=["POST"], name="upload"),
        Route("/api/v1/parsing/job/{job_id}", status, methods=["GET"], name="status"),
        Route(
            "/api/v1/parsing/job/{job_id}/result/markdown",
            result,
            methods=["GET"],
            name="result",
        ),
        Route(
            "/api/v1/parsing/job/{job_id}/result/raw/markdown",
            raw_result,
            methods=["GET"],
            name="raw_result",
        ),
    ]
    return FakeServiceApp(
        routes=routes,
        service=fake,
        endpoint_names={
            "upload": "upload",
            "status": "status",
            "result": "result",
            "raw_result": "result",
        },
        error_response=_fault_response,
    )


__all__ = [
    "PARSER_JOB_NAMESPACE",
    "RAW_CHUNK_BYTES",
    "JobStatus",
    "ParserFake",
    "ParserJob",
    "create_parser_app",
]

"""Clients of the external services, turning every failure into a classified ServiceError.

The parser client speaks a LlamaParse-compatible REST subset over httpx. The embeddings
client is the official ``openai`` SDK (retries off: retrying is the pipeline's job, on its
own clock, recorded in the database). Both take their HTTP client from the caller, so the
same code talks to in-process fakes (``httpx.ASGITransport``) or to real endpoints.
"""

from __future__ import annotations

import codecs
import email.utils
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

import httpx
import openai

from pipeline_models.errors import PermanentServiceError, ServiceError, TransientServiceError
from pipeline_models.pipeline.jsonmember import JsonMemberError, JsonMemberScanner

PARSER = "parser"
EMBEDDINGS = "embeddings"

STREAM_CHUNK_BYTES = 1 << 16
"""Pieces in which the parser's results are read: no result is held whole."""


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Parse a Retry-After header: delta-seconds or an HTTP date. None if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


# A key as services echo it back masked ("sk-proj-****abcd"): kept out of errors too.
_MASKED_KEY = re.compile(r"\b(?:sk|llx)-[A-Za-z0-9_-]*\*{2,}[A-Za-z0-9_-]*")


def redact(text: str, secret: str | None) -> str:
    """``text`` without ``secret`` and without masked echoes of API keys.

    >>> redact("bad key sk-live-123 (sk-l****-123)", "sk-live-123")
    'bad key [redacted] ([redacted key])'
    """
    if secret:
        text = text.replace(secret, "[redacted]")
    return _MASKED_KEY.sub("[redacted key]", text)


def _status_error(
    service: str,
    response_status: int,
    body: str,
    retry_after: float | None,
    secret: str | None = None,
) -> ServiceError:
    detail = redact(body.strip().replace("\n", " "), secret)[:300]
    message = f"HTTP {response_status}: {detail}" if detail else f"HTTP {response_status}"
    if response_status in (408, 409, 425, 429) or response_status >= 500:
        return TransientServiceError(
            service, message, status=response_status, retry_after=retry_after
        )
    return PermanentServiceError(service, message, status=response_status)


@dataclass(frozen=True)
class ParserJobStatus:
    job_id: str
    status: str  # PENDING, SUCCESS, ERROR
    error: str | None = None
    pages: int | None = None

    @property
    def pending(self) -> bool:
        return self.status not in ("SUCCESS", "ERROR", "CANCELED")


class ParserClient:
    """A LlamaParse v1 subset: upload a file, poll its job, stream the markdown result."""

    def __init__(
        self, http: httpx.AsyncClient, *, api_key: str | None = None, webhook_url: str | None = None
    ) -> None:
        self.http = http
        self._api_key = api_key
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.webhook_url = webhook_url

    async def _request(self, method: str, path: str, **options: object) -> httpx.Response:
        try:
            response = await self.http.request(method, path, headers=self._headers, **options)  # type: ignore[arg-type]
        except httpx.TimeoutException as error:
            raise TransientServiceError(PARSER, f"timed out: {type(error).__name__}") from error
        except httpx.TransportError as error:
            raise TransientServiceError(PARSER, f"connection failed: {error!r}") from error
        if response.status_code >= 400:
            raise self._refused(response)
        return response

    def _refused(self, response: httpx.Response) -> ServiceError:
        """The classified error of a read response with an error status."""
        return _status_error(
            PARSER,
            response.status_code,
            response.text,
            retry_after_seconds(response.headers.get("retry-after")),
            self._api_key,
        )

    @staticmethod
    def _json(response: httpx.Response, *fields: str) -> dict[str, object]:
        try:
            payload = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise TransientServiceError(PARSER, f"malformed response body: {error}") from None
        if not isinstance(payload, dict) or any(f not in payload for f in fields):
            raise TransientServiceError(
                PARSER, f"malformed response: expected fields {fields}, got {str(payload)[:200]}"
            )
        return payload

    async def submit(self, filename: str, content: BinaryIO, content_type: str) -> str:
        """Upload a file for parsing; the parser's job id."""
        data = {"webhook_url": self.webhook_url} if self.webhook_url else {}
        response = await self._request(
            "POST",
            "/api/v1/parsing/upload",
            files={"file": (filename, content, content_type)},
            data=data,
        )
        return str(self._json(response, "id")["id"])

    async def status(self, parser_job_id: str) -> ParserJobStatus:
        response = await self._request("GET", f"/api/v1/parsing/job/{parser_job_id}")
        payload = self._json(response, "status")
        pages = payload.get("num_pages")
        return ParserJobStatus(
            job_id=parser_job_id,
            status=str(payload["status"]),
            error=str(payload["error_message"]) if payload.get("error_message") else None,
            pages=pages if isinstance(pages, int) else None,
        )

    async def _stream(self, path: str, consume: Callable[[bytes], object]) -> None:
        """GET ``path`` and hand its body to ``consume`` piece by piece, never whole.

        An error status raises its classified ServiceError (with Retry-After), a timeout
        or a transport failure a TransientServiceError; what ``consume`` raises passes
        through for the caller to classify.
        """
        try:
            async with self.http.stream("GET", path, headers=self._headers) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise self._refused(response)
                async for piece in response.aiter_bytes(STREAM_CHUNK_BYTES):
                    consume(piece)
        except httpx.TimeoutException as error:
            raise TransientServiceError(PARSER, f"timed out: {type(error).__name__}") from error
        except httpx.TransportError as error:
            raise TransientServiceError(PARSER, f"connection failed: {error!r}") from error

    async def result_pages(self, parser_job_id: str) -> int:
        """The pages the parser billed for a finished job (its result's ``job_metadata``).

        The JSON result also holds the whole markdown, so it is streamed through a
        :class:`JsonMemberScanner` that keeps only ``job_metadata``.
        """
        # job_metadata is a few dozen bytes; the limit also bounds how much of the markdown
        # string the JSON parser ever holds (see jsonmember).
        scanner = JsonMemberScanner("job_metadata", max_member_bytes=1 << 16)
        try:
            await self._stream(f"/api/v1/parsing/job/{parser_job_id}/result/markdown", scanner.feed)
            metadata = scanner.finish()
        except JsonMemberError as error:
            raise TransientServiceError(PARSER, f"malformed result: {error}") from None
        pages = metadata.get("job_pages") if isinstance(metadata, dict) else None
        if not isinstance(pages, int) or isinstance(pages, bool) or pages < 0:
            raise TransientServiceError(
                PARSER, f"malformed result: job_metadata.job_pages is {pages!r}"
            )
        return pages

    async def download_markdown(self, parser_job_id: str, out: BinaryIO) -> int:
        """Stream the markdown result into ``out``; the number of bytes written."""
        written = 0
        # Decoding as we go catches a garbled body here, as the service's transient fault
        # it is, rather than later as a "bad document" that would be dead-lettered.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")

        def consume(piece: bytes) -> None:
            nonlocal written
            decoder.decode(piece)
            out.write(piece)
            written += len(piece)

        try:
            await self._stream(f"/api/v1/parsing/job/{parser_job_id}/result/raw/markdown", consume)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as error:
            raise TransientServiceError(
                PARSER, f"malformed result: not valid UTF-8 at byte {written + error.start}"
            ) from None
        return written


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    tokens: int


class EmbeddingsClient:
    """Embeddings through the official openai SDK, with the answer checked before use."""

    def __init__(self, client: openai.AsyncOpenAI, *, model: str, dimensions: int) -> None:
        self.client = client
        self.model = model
        self.dimensions = dimensions

    async def embed(self, texts: Sequence[str], *, user: str | None = None) -> Embeddings:
        """Embed ``texts``; ``user`` tags the request (OpenAI's end-user field)."""
        options: dict[str, Any] = {} if user is None else {"user": user}
        try:
            # No encoding_format: the SDK then asks for base64 and decodes it itself, which
            # is several times cheaper than building a model over a list of floats.
            response = await self.client.embeddings.create(
                model=self.model, input=list(texts), dimensions=self.dimensions, **options
            )
        except openai.APIStatusError as error:
            raise _status_error(
                EMBEDDINGS,
                error.status_code,
                str(error.message),
                retry_after_seconds(error.response.headers.get("retry-after")),
                self.client.api_key,
            ) from None
        except openai.APITimeoutError as error:
            raise TransientServiceError(EMBEDDINGS, "timed out") from error
        except openai.APIConnectionError as error:
            raise TransientServiceError(
                EMBEDDINGS, redact(f"connection failed: {error}", self.client.api_key)
            ) from error
        except (openai.APIError, ValueError, TypeError, KeyError) as error:
            # The SDK could not make sense of the body (malformed JSON, wrong shape).
            raise TransientServiceError(
                EMBEDDINGS,
                redact(f"malformed response: {type(error).__name__}: {error}", self.client.api_key),
            ) from error
        data = sorted(response.data, key=lambda item: item.index)
        if len(data) != len(texts) or [item.index for item in data] != list(range(len(texts))):
            raise TransientServiceError(
                EMBEDDINGS,
                f"asked for {len(texts)} embeddings, got indexes {[d.index for d in data]}",
            )
        vectors = []
        for item in data:
            vector = item.embedding
            if not isinstance(vector, list) or len(vector) != self.dimensions:
                got = len(vector) if isinstance(vector, list) else type(vector).__name__
                raise TransientServiceError(
                    EMBEDDINGS,
                    f"wrong vector dimension for input {item.index}: expected "
                    f"{self.dimensions}, got {got}",
                )
            vectors.append(vector)
        tokens = response.usage.total_tokens if response.usage else 0
        return Embeddings(vectors, tokens)


@dataclass
class Services:
    """The external services one pipeline talks to."""

    parser: ParserClient
    embeddings: EmbeddingsClient

    async def aclose(self) -> None:
        await self.parser.http.aclose()
        await self.embeddings.client.close()


__all__ = [
    "EMBEDDINGS",
    "PARSER",
    "Embeddings",
    "EmbeddingsClient",
    "ParserClient",
    "ParserJobStatus",
    "Services",
    "redact",
    "retry_after_seconds",
]

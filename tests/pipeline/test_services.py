"""The service clients turn every failure of the fakes into a classified ServiceError."""

from __future__ import annotations

import io
import json
import tracemalloc
from collections.abc import AsyncIterator, Iterable, Iterator

import httpx
import openai
import pytest

from pipeline_models.documents import large_markdown_document
from pipeline_models.errors import PermanentServiceError, ServiceError, TransientServiceError
from pipeline_models.fakes import (
    Fault,
    FaultPlan,
    create_embeddings_app,
    create_parser_app,
    openai_http_client,
    parser_http_client,
)
from pipeline_models.pipeline.services import EmbeddingsClient, ParserClient, retry_after_seconds

pytestmark = pytest.mark.anyio

KEY = "k"


def embeddings(fault: Fault | None, dimensions: int = 8) -> EmbeddingsClient:
    app = create_embeddings_app(faults=FaultPlan([fault]), api_key=KEY)
    sdk = openai.AsyncOpenAI(
        api_key=KEY,
        base_url="http://embeddings.fake/v1",
        http_client=openai_http_client(app),
        max_retries=0,
    )
    return EmbeddingsClient(sdk, model="text-embedding-3-small", dimensions=dimensions)


def parser(fault: Fault | None, endpoint: str = "upload") -> ParserClient:
    app = create_parser_app(faults=FaultPlan([fault], endpoints=[endpoint]), api_key=KEY)
    return ParserClient(parser_http_client(app), api_key=KEY)


CASES = [
    (Fault.rate_limit(retry_after=7), TransientServiceError, 7.0),
    (Fault.server_error(503), TransientServiceError, None),
    (Fault.timeout(), TransientServiceError, None),
    (Fault.connection_error(), TransientServiceError, None),
    (Fault.malformed_body(), TransientServiceError, None),
    (Fault.permanent(400), PermanentServiceError, None),
    (Fault.permanent(401), PermanentServiceError, None),
]


@pytest.mark.parametrize(("fault", "error", "retry_after"), CASES, ids=lambda c: repr(c))
async def test_each_embeddings_fault_is_classified(
    fault: Fault, error: type[ServiceError], retry_after: float | None
) -> None:
    client = embeddings(fault)
    with pytest.raises(error) as raised:
        await client.embed(["hello"])
    assert type(raised.value) is error
    assert raised.value.retry_after == retry_after
    assert (await client.embed(["hello"])).vectors  # the plan ran out: healthy again


async def test_a_wrong_vector_dimension_is_a_transient_error() -> None:
    with pytest.raises(TransientServiceError, match="wrong vector dimension"):
        await embeddings(Fault.wrong_dimension()).embed(["a", "b"])


@pytest.mark.parametrize(("fault", "error", "retry_after"), CASES, ids=lambda c: repr(c))
async def test_each_parser_fault_is_classified(
    fault: Fault, error: type[ServiceError], retry_after: float | None
) -> None:
    client = parser(fault)
    with pytest.raises(error) as raised:
        await client.submit("a.md", io.BytesIO(b"# A"), "text/markdown")
    assert raised.value.retry_after == retry_after
    job_id = await client.submit("a.md", io.BytesIO(b"# A"), "text/markdown")
    assert (await client.status(job_id)).status == "SUCCESS"


async def test_a_malformed_markdown_result_is_a_transient_error_not_a_bad_document() -> None:
    client = parser(Fault.malformed_body(), endpoint="result")
    job_id = await client.submit("a.md", io.BytesIO("# Ünïcode".encode()), "text/markdown")
    with pytest.raises(TransientServiceError, match="not valid UTF-8"):
        await client.download_markdown(job_id, io.BytesIO())
    out = io.BytesIO()
    await client.download_markdown(job_id, out)
    assert out.getvalue().decode() == "# Ünïcode"


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert retry_after_seconds("12") == 12.0
    assert retry_after_seconds("1.5") == 1.5
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


# -- the JSON result, streamed for its job_metadata -------------------------------------

RESULT_CASES = [
    *CASES,
    (Fault.rate_limit(retry_after=None), TransientServiceError, None),
    (Fault.server_error(500), TransientServiceError, None),
    (Fault.permanent(404), PermanentServiceError, None),
]


@pytest.mark.parametrize(("fault", "error", "retry_after"), RESULT_CASES, ids=lambda c: repr(c))
async def test_each_fault_of_the_result_endpoint_is_classified(
    fault: Fault, error: type[ServiceError], retry_after: float | None
) -> None:
    client = parser(fault, endpoint="result")
    job_id = await client.submit("a.md", io.BytesIO(b"# A"), "text/markdown")
    with pytest.raises(error) as raised:
        await client.result_pages(job_id)
    assert type(raised.value) is error
    assert raised.value.retry_after == retry_after
    if fault.status is not None:
        assert raised.value.status == fault.status
    assert await client.result_pages(job_id) == 1  # the plan ran out: healthy again


async def test_a_cut_short_json_result_is_a_transient_malformed_result() -> None:
    client = parser(Fault.malformed_body(), endpoint="result")
    job_id = await client.submit("a.md", io.BytesIO(b"# A"), "text/markdown")
    with pytest.raises(TransientServiceError, match="malformed result: truncated body"):
        await client.result_pages(job_id)


async def test_a_result_of_several_megabytes_gives_the_pages_billed() -> None:
    app = create_parser_app(api_key=KEY)
    client = ParserClient(parser_http_client(app), api_key=KEY)
    # Quotes, backslashes and newlines are escaped in the JSON result, non-ASCII is not.
    tail = '\n\n> "Quoted" C:\\path\\to\\file, naïve café 😀 \\u0041\n'.encode()
    document = large_markdown_document(6 * 2**20, seed=3).data + tail * 1000
    job_id = await client.submit("large.md", io.BytesIO(document), "text/markdown")
    billed = app.state.fake.jobs[job_id].result.pages
    assert billed > 2000
    assert await client.result_pages(job_id) == billed
    out = io.BytesIO()
    assert await client.download_markdown(job_id, out) > 6 * 2**20


def streamed_result(
    pieces: Iterable[bytes], status: int = 200, headers: dict[str, str] | None = None
) -> ParserClient:
    """A client whose every request is answered with ``pieces``, streamed as drawn."""

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, content=body())

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://p.fake")
    return ParserClient(http, api_key=KEY)


async def test_the_json_result_is_never_held_whole() -> None:
    markdown_piece = json.dumps("# Page\n\n" + '"quoted" text, café\n' * 3000)[1:-1].encode()
    size = 0

    def pieces() -> Iterator[bytes]:
        nonlocal size
        yield b'{"pages": [{"job_metadata": {"job_pages": 0}}], "markdown": "'
        while size < 32 * 2**20:
            size += len(markdown_piece)
            yield markdown_piece
        yield b'", "job_metadata": {"job_pages": 4096, "credits_used": 4096}}'

    client = streamed_result(pieces())
    tracemalloc.start()
    try:
        pages = await client.result_pages("job")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pages == 4096
    assert size >= 32 * 2**20
    assert peak < 2 * 2**20, f"reading a {size} byte result peaked at {peak} bytes"


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"", "empty body"),
        (b'[{"job_metadata": {"job_pages": 1}}]', "not a JSON object"),
        (b'{"markdown": "# A"}', "no top-level member 'job_metadata'"),
        (b'{"pages": [{"job_metadata": {"job_pages": 1}}]}', "no top-level member"),
        (b'{"markdown": "# A", "job_metadata": {"job_pages": 1}', "truncated body"),
        (b'{"markdown": "# \xff", "job_metadata": {"job_pages": 1}}', "not valid UTF-8 at byte 16"),
        (b'{"job_metadata": {"job_pages": 1}} trailing', "unexpected data after"),
        (b'{"job_metadata": {"job_pages": NaN}}', "malformed JSON"),
        (b'{"job_metadata": [1]}', "job_metadata.job_pages is None"),
        (b'{"job_metadata": {}}', "job_metadata.job_pages is None"),
        (b'{"job_metadata": {"job_pages": "3"}}', "job_metadata.job_pages is '3'"),
        (b'{"job_metadata": {"job_pages": -1}}', "job_metadata.job_pages is -1"),
        (b'{"job_metadata": {"job_pages": true}}', "job_metadata.job_pages is True"),
        (b'{"job_metadata": {"job_pages": 2.0}}', "job_metadata.job_pages is 2.0"),
    ],
)
async def test_a_malformed_json_result_is_a_transient_error(body: bytes, complaint: str) -> None:
    client = streamed_result([body[:7], body[7:]])
    with pytest.raises(TransientServiceError, match=f"malformed result: .*{complaint}") as raised:
        await client.result_pages("job")
    assert raised.value.service == "parser"


async def test_a_result_error_keeps_its_status_and_retry_after_when_streamed() -> None:
    client = streamed_result([b'{"detail": "slow down"}'], status=429, headers={"Retry-After": "3"})
    with pytest.raises(TransientServiceError, match=r"HTTP 429: .*slow down") as raised:
        await client.result_pages("job")
    assert (raised.value.status, raised.value.retry_after) == (429, 3.0)

"""The service clients turn every failure of the fakes into a classified ServiceError."""

from __future__ import annotations

import io

import openai
import pytest

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

"""The fakes' contract, seen through the clients the pipeline uses.

The embeddings fake is driven through the real openai SDK (on httpx2), the parser fake
through httpx; in process over ASGITransport, and once over real loopback sockets.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import types
from collections.abc import Callable
from typing import Any

import httpx
import httpx2
import openai
import pytest
from fpdf import FPDF
from starlette.applications import Starlette

import pipeline_models.fakes as fakes
from pipeline_models.fakes import (
    Fault,
    FaultPlan,
    FaultTransport,
    count_tokens,
    create_embeddings_app,
    create_parser_app,
    embedding_for,
    openai_http_client,
    parser_http_client,
    served_fakes,
)

pytestmark = pytest.mark.anyio

API_KEY = "sk-fake-contract"
SMALL = "text-embedding-3-small"
UPLOAD = "/api/v1/parsing/upload"


def sdk_for(app: Starlette, **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=API_KEY,
        base_url="http://embeddings.fake/v1",
        http_client=openai_http_client(app),
        max_retries=options.pop("max_retries", 0),
        **options,
    )


def parser_for(app: Starlette, *, api_key: str | None = API_KEY) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return parser_http_client(app, headers=headers)


def faulty(plan: FaultPlan, create: Callable[..., Starlette]) -> Starlette:
    return create(faults=plan, api_key=API_KEY)


async def upload(client: httpx.AsyncClient, name: str, data: bytes, **form: str) -> str:
    response = await client.post(UPLOAD, files={"file": (name, data)}, data=form)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "PENDING"
    return str(response.json()["id"])


def make_pdf(*pages: str) -> bytes:
    pdf = FPDF()
    for text in pages:
        pdf.add_page()
        pdf.set_font("Helvetica", size=12)
        pdf.multi_cell(0, 8, text=text)
    return bytes(pdf.output())


def decode_base64(vector: object) -> tuple[float, ...]:
    assert isinstance(vector, str)
    raw = base64.b64decode(vector)
    return struct.unpack(f"<{len(raw) // 4}f", raw)


# -- exports --------------------------------------------------------------------------


def test_the_fakes_package_exports_exactly_its_public_names() -> None:
    public = {
        name
        for name, value in vars(fakes).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    } - {"annotations"}
    assert set(fakes.__all__) == public
    assert all(getattr(fakes, name) is not None for name in fakes.__all__)


# -- embeddings through the openai SDK ------------------------------------------------


async def test_float_and_base64_encodings_carry_bit_identical_vectors() -> None:
    async with sdk_for(create_embeddings_app(api_key=API_KEY)) as sdk:
        floats = await sdk.embeddings.create(input="hello", model=SMALL, encoding_format="float")
        b64 = await sdk.embeddings.create(input="hello", model=SMALL, encoding_format="base64")
        # Without encoding_format the SDK asks for base64 itself and decodes it to floats.
        default = await sdk.embeddings.create(input="hello", model=SMALL)
    expected = embedding_for("hello", model=SMALL, dimensions=1536)
    assert tuple(floats.data[0].embedding) == expected
    # Asked for explicitly, the SDK hands back the base64 string untouched.
    assert decode_base64(b64.data[0].embedding) == expected
    assert tuple(default.data[0].embedding) == expected


@pytest.mark.parametrize(
    ("model", "dimensions", "length"),
    [
        (SMALL, None, 1536),
        (SMALL, 256, 256),
        ("text-embedding-3-large", None, 3072),
        ("text-embedding-3-large", 1, 1),
        ("text-embedding-ada-002", None, 1536),
    ],
)
async def test_dimensions_are_honoured_and_default_to_the_native_size(
    model: str, dimensions: int | None, length: int
) -> None:
    options: dict[str, Any] = {} if dimensions is None else {"dimensions": dimensions}
    async with sdk_for(create_embeddings_app(api_key=API_KEY)) as sdk:
        response = await sdk.embeddings.create(
            input="text", model=model, encoding_format="float", **options
        )
    assert len(response.data[0].embedding) == length
    assert tuple(response.data[0].embedding) == embedding_for(
        "text", model=model, dimensions=length
    )


async def test_embeddings_are_deterministic_across_calls_and_app_instances() -> None:
    texts = ["alpha", "beta", "alpha"]
    answers = []
    for _ in range(2):
        async with sdk_for(create_embeddings_app(api_key=API_KEY)) as sdk:
            for _ in range(2):
                response = await sdk.embeddings.create(
                    input=texts, model=SMALL, dimensions=64, encoding_format="float"
                )
                answers.append([item.embedding for item in response.data])
    assert all(answer == answers[0] for answer in answers)
    assert answers[0][0] == answers[0][2] != answers[0][1]


async def test_a_batch_answers_in_input_order_and_bills_its_tokens() -> None:
    app = create_embeddings_app(api_key=API_KEY)
    texts = ["one", "a somewhat longer input", "é" * 10]
    async with sdk_for(app) as sdk:
        response = await sdk.embeddings.create(
            input=texts, model=SMALL, dimensions=8, encoding_format="float"
        )
    tokens = sum(count_tokens(text) for text in texts)
    assert [item.index for item in response.data] == [0, 1, 2]
    assert [tuple(item.embedding) for item in response.data] == [
        embedding_for(text, model=SMALL, dimensions=8) for text in texts
    ]
    assert response.model == SMALL
    assert (response.usage.prompt_tokens, response.usage.total_tokens) == (tokens, tokens)
    stats = app.state.fake.stats()
    assert (stats["inputs"], stats["tokens_billed"], stats["embedding_requests"]) == (3, tokens, 1)
    assert app.state.fake.embedded_texts["one"] == 1


@pytest.mark.parametrize(
    ("request_options", "error", "code"),
    [
        ({"model": "text-embedding-4-huge"}, openai.NotFoundError, "model_not_found"),
        ({"input": ""}, openai.BadRequestError, None),
        ({"input": ["fine", ""]}, openai.BadRequestError, None),
        ({"input": []}, openai.BadRequestError, None),
        ({"input": ["x"] * 2049}, openai.BadRequestError, None),
        ({"input": "x" * 4 * 8192}, openai.BadRequestError, None),
        ({"input": [[1, 2, 3]]}, openai.BadRequestError, "unsupported_input"),
        ({"input": [1, 2, 3]}, openai.BadRequestError, "unsupported_input"),
        ({"dimensions": 0}, openai.BadRequestError, None),
        ({"dimensions": 1537}, openai.BadRequestError, None),
        (
            {"model": "text-embedding-ada-002", "dimensions": 512},
            openai.BadRequestError,
            None,
        ),
    ],
)
async def test_requests_openai_would_refuse_are_refused_with_openai_errors(
    request_options: dict[str, Any], error: type[openai.APIStatusError], code: str | None
) -> None:
    arguments: dict[str, Any] = {"input": "fine", "model": SMALL, "encoding_format": "float"}
    arguments.update(request_options)
    async with sdk_for(create_embeddings_app(api_key=API_KEY)) as sdk:
        with pytest.raises(error) as raised:
            await sdk.embeddings.create(**arguments)
    assert type(raised.value) is error
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["type"] == "invalid_request_error"
    assert body["code"] == code
    assert body["message"]


async def test_a_wrong_api_key_is_an_authentication_error() -> None:
    app = create_embeddings_app(api_key=API_KEY)
    async with openai.AsyncOpenAI(
        api_key="sk-wrong",
        base_url="http://embeddings.fake/v1",
        http_client=openai_http_client(app),
        max_retries=0,
    ) as sdk:
        with pytest.raises(openai.AuthenticationError) as raised:
            await sdk.embeddings.create(input="x", model=SMALL)
    assert raised.value.code == "invalid_api_key"


async def test_the_three_models_are_listed() -> None:
    async with sdk_for(create_embeddings_app(api_key=API_KEY)) as sdk:
        models = [model.id async for model in sdk.models.list()]
    assert sorted(models) == sorted(fakes.MODEL_DIMENSIONS)


async def test_a_rate_limited_request_carries_retry_after() -> None:
    app = faulty(FaultPlan([Fault.rate_limit(retry_after=2.0)]), create_embeddings_app)
    async with sdk_for(app) as sdk:
        with pytest.raises(openai.RateLimitError) as raised:
            await sdk.embeddings.create(input="x", model=SMALL)
    assert raised.value.status_code == 429
    assert raised.value.response.headers["retry-after"] == "2"
    assert raised.value.code == "rate_limit_exceeded"


async def test_the_sdk_retries_a_rate_limit_after_the_fakes_retry_after() -> None:
    app = faulty(FaultPlan([Fault.rate_limit(retry_after=0.01)]), create_embeddings_app)
    async with sdk_for(app, max_retries=1) as sdk:
        response = await sdk.embeddings.create(input="x", model=SMALL, dimensions=4)
    assert len(response.data[0].embedding) == 4
    assert app.state.fake.faults.requests["embeddings"] == 2
    assert app.state.fake.tokens_billed == 1  # the refused request cost nothing


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.server_error(status=500), openai.InternalServerError),
        (Fault.server_error(status=503), openai.InternalServerError),
        (Fault.permanent(status=400), openai.BadRequestError),
        (Fault.permanent(status=403), openai.PermissionDeniedError),
        (Fault.permanent(status=404), openai.NotFoundError),
    ],
)
async def test_an_http_fault_surfaces_as_the_sdks_status_error(
    fault: Fault, error: type[openai.APIStatusError]
) -> None:
    app = faulty(FaultPlan([fault]), create_embeddings_app)
    async with sdk_for(app) as sdk:
        with pytest.raises(openai.APIStatusError) as raised:
            await sdk.embeddings.create(input="x", model=SMALL)
    assert type(raised.value) is error
    assert raised.value.status_code == fault.status
    assert app.state.fake.tokens_billed == 0


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.timeout(), openai.APITimeoutError),
        (Fault.connection_error(), openai.APIConnectionError),
    ],
)
async def test_a_network_fault_surfaces_as_the_sdks_connection_error(
    fault: Fault, error: type[openai.APIConnectionError]
) -> None:
    app = faulty(FaultPlan([fault]), create_embeddings_app)
    async with sdk_for(app) as sdk:
        with pytest.raises(openai.APIConnectionError) as raised:
            await sdk.embeddings.create(input="x", model=SMALL)
        # APITimeoutError subclasses APIConnectionError: check the exact class.
        assert type(raised.value) is error
        # The next request is healthy: the plan is spent.
        assert (await sdk.embeddings.create(input="x", model=SMALL)).data


async def test_a_malformed_body_escapes_the_sdk_as_a_json_decode_error() -> None:
    app = faulty(FaultPlan([Fault.malformed_body()]), create_embeddings_app)
    async with sdk_for(app) as sdk:
        # The SDK parses the body after its retry loop and does not wrap the failure.
        with pytest.raises(json.JSONDecodeError):
            await sdk.embeddings.create(input="x", model=SMALL, encoding_format="float")
    assert app.state.fake.tokens_billed == 1  # served, then mangled: still billed


async def test_a_wrong_dimension_fault_returns_one_component_too_many() -> None:
    app = faulty(FaultPlan([Fault.wrong_dimension()]), create_embeddings_app)
    async with sdk_for(app) as sdk:
        response = await sdk.embeddings.create(
            input=["a", "b"], model=SMALL, dimensions=16, encoding_format="float"
        )
    assert [len(item.embedding) for item in response.data] == [17, 17]


async def test_latency_delays_the_answer_but_not_its_content() -> None:
    app = faulty(FaultPlan([Fault.latency(0.05)], latency=0.02), create_embeddings_app)
    async with sdk_for(app) as sdk:
        started = time.perf_counter()
        response = await sdk.embeddings.create(input="x", model=SMALL, dimensions=4)
        elapsed = time.perf_counter() - started
    assert elapsed >= 0.07
    assert tuple(response.data[0].embedding) == embedding_for("x", model=SMALL, dimensions=4)


async def test_a_plan_on_one_endpoint_leaves_the_others_healthy() -> None:
    app = faulty(FaultPlan([Fault.server_error()], endpoints=["models"]), create_embeddings_app)
    async with sdk_for(app) as sdk:
        assert (await sdk.embeddings.create(input="x", model=SMALL)).data
        with pytest.raises(openai.InternalServerError):
            await sdk.models.list()
    assert app.state.fake.faults.injected == [("models", Fault.server_error())]


# -- the parser through httpx ---------------------------------------------------------


async def test_a_markdown_upload_is_parsed_polled_and_returned() -> None:
    app = create_parser_app(api_key=API_KEY)
    async with parser_for(app) as client:
        job_id = await upload(client, "notes.md", b"# Title\r\n\r\nBody text.\r\n")
        status = await client.get(f"/api/v1/parsing/job/{job_id}")
        result = await client.get(f"/api/v1/parsing/job/{job_id}/result/markdown")
        raw = await client.get(f"/api/v1/parsing/job/{job_id}/result/raw/markdown")
    assert status.json() == {"id": job_id, "status": "SUCCESS"}
    assert result.json() == {
        "markdown": "# Title\n\nBody text.\n",
        "job_metadata": {"job_pages": 1, "credits_used": 1},
    }
    assert raw.headers["content-type"] == "text/markdown; charset=utf-8"
    assert raw.content == b"# Title\n\nBody text.\n"


async def test_a_text_upload_loses_its_bom_and_is_billed_per_3000_characters() -> None:
    app = create_parser_app(api_key=API_KEY)
    text = "\ufeff" + "é" * 6500
    async with parser_for(app) as client:
        job_id = await upload(client, "long.txt", text.encode())
        result = (await client.get(f"/api/v1/parsing/job/{job_id}/result/markdown")).json()
    assert result["markdown"] == "é" * 6500
    assert result["job_metadata"] == {"job_pages": 3, "credits_used": 3}
    assert app.state.fake.pages_billed == 3


async def test_a_pdf_upload_returns_the_text_of_its_pages() -> None:
    app = create_parser_app(api_key=API_KEY)
    pdf = make_pdf("Crème brûlée for the façade team", "Second page: naïve café résumé")
    async with parser_for(app) as client:
        job_id = await upload(client, "menu.pdf", pdf)
        result = (await client.get(f"/api/v1/parsing/job/{job_id}/result/markdown")).json()
    for word in ("Crème", "brûlée", "façade", "Second", "naïve", "café", "résumé"):
        assert word in result["markdown"]
    assert result["job_metadata"]["job_pages"] == 2


async def test_a_corrupt_pdf_job_ends_in_error_with_a_message() -> None:
    app = create_parser_app(api_key=API_KEY)
    async with parser_for(app) as client:
        job_id = await upload(client, "broken.pdf", make_pdf("text")[:300])
        status = (await client.get(f"/api/v1/parsing/job/{job_id}")).json()
        result = await client.get(f"/api/v1/parsing/job/{job_id}/result/markdown")
    assert status["status"] == "ERROR"
    assert "'broken.pdf' is not a readable PDF" in status["error_message"]
    assert result.status_code == 400
    assert "failed" in result.json()["detail"]
    assert app.state.fake.pages_billed == 0


async def test_a_job_answers_pending_for_its_first_polls() -> None:
    app = create_parser_app(api_key=API_KEY, pending_polls=2)
    async with parser_for(app) as client:
        job_id = await upload(client, "a.md", b"# A")
        early = await client.get(f"/api/v1/parsing/job/{job_id}/result/markdown")
        statuses = [
            (await client.get(f"/api/v1/parsing/job/{job_id}")).json()["status"] for _ in range(3)
        ]
        late = await client.get(f"/api/v1/parsing/job/{job_id}/result/markdown")
    assert early.status_code == 400
    assert "PENDING" in early.json()["detail"]
    assert statuses == ["PENDING", "PENDING", "SUCCESS"]
    assert late.json()["markdown"] == "# A"


async def test_requests_without_the_right_bearer_token_are_401() -> None:
    app = create_parser_app(api_key=API_KEY)
    for api_key in (None, "wrong"):
        async with parser_for(app, api_key=api_key) as client:
            response = await client.post(UPLOAD, files={"file": ("a.md", b"# A")})
            assert response.status_code == 401
            assert response.json() == {"detail": "Invalid authentication credentials"}
            # The admin endpoints are for the test harness and need no token.
            assert (await client.get("/_fake/stats")).status_code == 200
    assert app.state.fake.uploads == 0


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/parsing/job/nope",
        "/api/v1/parsing/job/nope/result/markdown",
        "/api/v1/parsing/job/nope/result/raw/markdown",
    ],
)
async def test_an_unknown_job_is_404(path: str) -> None:
    async with parser_for(create_parser_app(api_key=API_KEY)) as client:
        response = await client.get(path)
    assert response.status_code == 404
    assert response.json() == {"detail": "Job nope not found"}


async def test_a_file_over_the_size_limit_is_413_and_creates_no_job() -> None:
    app = create_parser_app(api_key=API_KEY, max_file_bytes=1000)
    async with parser_for(app) as client:
        accepted = await client.post(UPLOAD, files={"file": ("ok.md", b"x" * 1000)})
        refused = await client.post(UPLOAD, files={"file": ("big.md", b"x" * 1001)})
    assert accepted.status_code == 200
    assert refused.status_code == 413
    assert refused.json() == {"detail": "File is 1001 bytes; the limit is 1000 bytes"}
    assert len(app.state.fake.jobs) == 1


async def test_an_upload_without_a_file_field_is_400() -> None:
    async with parser_for(create_parser_app(api_key=API_KEY)) as client:
        response = await client.post(UPLOAD, files={"document": ("a.md", b"# A")})
    assert response.status_code == 400
    assert "'file'" in response.json()["detail"]


async def test_job_ids_depend_only_on_the_content_and_the_submission_order() -> None:
    runs = []
    for _ in range(2):
        async with parser_for(create_parser_app(api_key=API_KEY)) as client:
            runs.append([await upload(client, name, b"same bytes") for name in ("a", "b")])
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[0][1]


async def test_a_large_raw_result_streams_whole_and_a_webhook_url_is_recorded() -> None:
    app = create_parser_app(api_key=API_KEY)
    text = "".join(f"line {i} ✓\n" for i in range(20_000))  # well over 64 KiB
    async with parser_for(app) as client:
        job_id = await upload(client, "big.md", text.encode(), webhook_url="http://hook/x")
        async with client.stream(
            "GET", f"/api/v1/parsing/job/{job_id}/result/raw/markdown"
        ) as response:
            body = b"".join([piece async for piece in response.aiter_bytes()])
    assert body.decode("utf-8") == text
    assert int(response.headers["content-length"]) == len(body)
    assert app.state.fake.jobs[job_id].webhook_url == "http://hook/x"


async def test_parser_stats_count_uploads_pages_and_requests() -> None:
    app = create_parser_app(api_key=API_KEY)
    async with parser_for(app) as client:
        job_id = await upload(client, "a.md", b"# A")
        await client.get(f"/api/v1/parsing/job/{job_id}")
        await client.get(f"/api/v1/parsing/job/{job_id}/result/markdown")
        await client.get(f"/api/v1/parsing/job/{job_id}/result/raw/markdown")
        stats = (await client.get("/_fake/stats")).json()
    assert stats["uploads"] == 1
    assert stats["pages_billed"] == 1
    assert stats["requests"] == {"result": 2, "status": 1, "upload": 1}
    assert stats["jobs"] == {job_id: "SUCCESS"}


async def test_a_rate_limited_parser_request_carries_retry_after() -> None:
    app = faulty(FaultPlan([Fault.rate_limit(retry_after=1.5)]), create_parser_app)
    async with parser_for(app) as client:
        response = await client.post(UPLOAD, files={"file": ("a.md", b"# A")})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1.5"
    assert "detail" in response.json()
    assert app.state.fake.uploads == 0


@pytest.mark.parametrize("fault", [Fault.server_error(status=502), Fault.permanent(status=422)])
async def test_an_http_fault_on_the_parser_is_that_status_with_a_json_body(fault: Fault) -> None:
    app = faulty(FaultPlan([fault], endpoints=["status"]), create_parser_app)
    async with parser_for(app) as client:
        job_id = await upload(client, "a.md", b"# A")
        response = await client.get(f"/api/v1/parsing/job/{job_id}")
    assert response.status_code == fault.status
    assert "injected" in response.json()["detail"]


@pytest.mark.parametrize(
    ("fault", "error"),
    [(Fault.timeout(), httpx.ReadTimeout), (Fault.connection_error(), httpx.ConnectError)],
)
async def test_a_network_fault_on_the_parser_is_the_httpx_error(
    fault: Fault, error: type[httpx.TransportError]
) -> None:
    app = faulty(FaultPlan([fault]), create_parser_app)
    async with parser_for(app) as client:
        with pytest.raises(error):
            await client.post(UPLOAD, files={"file": ("a.md", b"# A")})
    assert app.state.fake.uploads == 0


async def test_a_malformed_parser_body_is_broken_json_or_broken_utf8() -> None:
    plan = FaultPlan([Fault.malformed_body()] * 2, endpoints=["result"])
    app = faulty(plan, create_parser_app)
    async with parser_for(app) as client:
        job_id = await upload(client, "a.md", "# Überschrift\n\nText.".encode())
        result = await client.get(f"/api/v1/parsing/job/{job_id}/result/markdown")
        raw = await client.get(f"/api/v1/parsing/job/{job_id}/result/raw/markdown")
    assert result.status_code == raw.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        result.json()
    assert raw.content.endswith(b"\xff")
    with pytest.raises(UnicodeDecodeError):
        raw.content.decode("utf-8")


async def test_a_fault_plan_can_be_put_and_inspected_over_http() -> None:
    app = create_parser_app(api_key=API_KEY)
    plan = FaultPlan([Fault.server_error(status=504)], endpoints=["upload"])
    async with parser_for(app) as client:
        put = await client.put("/_fake/faults", json=plan.to_json())
        refused = await client.post(UPLOAD, files={"file": ("a.md", b"# A")})
        bad = await client.put("/_fake/faults", json={"script": [{"kind": "explode"}]})
        stats = (await client.get("/_fake/stats")).json()
    assert put.status_code == 200
    assert put.json() == {"faults": plan.to_json()}
    assert refused.status_code == 504
    assert bad.status_code == 400
    assert "unknown fault kind 'explode'" in bad.json()["detail"]
    assert stats["injected"] == [["upload", Fault.server_error(status=504).to_json()]]


def test_a_fault_transport_refuses_something_that_is_not_a_transport() -> None:
    with pytest.raises(TypeError, match="wraps an httpx or httpx2 AsyncBaseTransport"):
        FaultTransport(object())  # type: ignore[arg-type]


# -- over real loopback sockets -------------------------------------------------------


async def test_served_fakes_answer_and_fail_like_real_services_over_sockets() -> None:
    async with served_fakes(parser_port=0, embeddings_port=0, api_key=API_KEY) as endpoints:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with (
            httpx.AsyncClient(base_url=endpoints.parser, headers=headers, timeout=0.5) as parser,
            openai.AsyncOpenAI(
                api_key=API_KEY, base_url=endpoints.embeddings, max_retries=0, timeout=0.5
            ) as sdk,
        ):
            # Healthy calls.
            job_id = await upload(parser, "a.md", b"# Served")
            result = await parser.get(f"/api/v1/parsing/job/{job_id}/result/markdown")
            assert result.json()["markdown"] == "# Served"
            vectors = await sdk.embeddings.create(input="x", model=SMALL, dimensions=4)
            assert tuple(vectors.data[0].embedding) == embedding_for("x", model=SMALL, dimensions=4)

            # Network faults, put on the parser over HTTP and on the embeddings in process.
            script = [Fault.connection_error(), Fault.timeout(seconds=5), Fault.timeout(0.1)]
            put = await parser.put("/_fake/faults", json=FaultPlan(script).to_json())
            assert put.status_code == 200
            endpoints.embeddings_app.state.fake.faults = FaultPlan(script[:2])

            # A dropped connection: the headers of a 200 arrive, then the socket closes.
            with pytest.raises(httpx.RemoteProtocolError, match="peer closed connection"):
                await parser.get(f"/api/v1/parsing/job/{job_id}")
            with pytest.raises(openai.APIConnectionError) as dropped:
                await sdk.embeddings.create(input="x", model=SMALL)
            assert type(dropped.value) is openai.APIConnectionError
            assert isinstance(dropped.value.__cause__, httpx2.RemoteProtocolError)

            # A held request: the client's own read timeout fires.
            with pytest.raises(httpx.ReadTimeout):
                await parser.get(f"/api/v1/parsing/job/{job_id}")
            with pytest.raises(openai.APITimeoutError):
                await sdk.embeddings.create(input="x", model=SMALL)

            # A hold shorter than the client's patience ends in a dropped connection.
            started = time.perf_counter()
            with pytest.raises(httpx.RemoteProtocolError):
                await parser.get(f"/api/v1/parsing/job/{job_id}")
            assert time.perf_counter() - started >= 0.1

            # And the services carry on.
            assert (await parser.get(f"/api/v1/parsing/job/{job_id}")).json()["status"] == (
                "SUCCESS"
            )
            assert (await sdk.embeddings.create(input="x", model=SMALL)).data
    # Held requests end with their client, so leaving the block is quick.
    assert endpoints.parser_app.state.fake.faults.exhausted

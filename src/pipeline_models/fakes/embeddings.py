"""A fake OpenAI embeddings API as an ASGI app: deterministic, with fault injection.

``POST /v1/embeddings`` [fault endpoint "embeddings"] takes
``{"input": str | [str], "model", "dimensions"?, "encoding_format"?, "user"?}`` and
answers as OpenAI does, with vectors from
:func:`~pipeline_models.fakes.vectors.embedding_for`. ``GET /v1/models`` [fault
endpoint "models"] lists the three models. Requests are validated as OpenAI does and
refused with OpenAI-shaped errors
``{"error": {"message", "type": "invalid_request_error", "param", "code"}}``:

- unknown model: 404, code ``model_not_found``
- empty string input, empty list, non-string items: 400
- token-array inputs (lists of ints): 400, code ``unsupported_input``; OpenAI accepts
  them but this fake cannot embed tokens it cannot turn back into text
- more than ``MAX_INPUTS`` inputs; an input over ``MAX_TOKENS_PER_INPUT`` tokens; more
  than ``MAX_TOKENS_PER_REQUEST`` tokens in all: 400
- ``dimensions`` outside 1..native, or given for ``text-embedding-ada-002``: 400
- an ``encoding_format`` other than ``float`` or ``base64``; unknown fields: 400
- a missing or wrong bearer token (when ``api_key`` is set): 401, code ``invalid_api_key``

``encoding_format="base64"`` returns each vector as base64 of little-endian float32,
bit-identical to the float list. The fault ``WRONG_DIMENSION`` returns vectors one
component longer than asked. Every answered request that computed vectors is billed
(``inputs``, ``tokens_billed``), including those whose body a fault then mangled.

>>> app = create_embeddings_app(api_key="sk-test")
>>> app.state.fake.tokens_billed
0
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections import Counter, defaultdict
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline_models.fakes.faults import (
    FakeService,
    FakeServiceApp,
    Fault,
    FaultKind,
    FaultPlan,
    current_fault,
    retry_after_header,
)
from pipeline_models.fakes.vectors import (
    MAX_INPUTS,
    MAX_TOKENS_PER_INPUT,
    MAX_TOKENS_PER_REQUEST,
    MODEL_DIMENSIONS,
    count_tokens,
    embedding_for,
)

MODELS_WITHOUT_DIMENSIONS = frozenset({"text-embedding-ada-002"})
"""Models that refuse the ``dimensions`` parameter."""

MODEL_CREATED = {
    "text-embedding-3-small": 1705948997,
    "text-embedding-3-large": 1705953180,
    "text-embedding-ada-002": 1671217299,
}
"""The ``created`` timestamps ``GET /v1/models`` reports (fixed: answers are deterministic)."""

_REQUEST_FIELDS = frozenset({"input", "model", "dimensions", "encoding_format", "user"})


class EmbeddingsFake(FakeService):
    """The embeddings service's state, at ``app.state.fake``: counters and the fault plan.

    ``embedded_texts`` counts how often each text was embedded, so a test can bound the
    cost of retries per chunk.
    """

    name = "embeddings"

    def __init__(self, *, faults: FaultPlan | None) -> None:
        super().__init__(faults)
        self.embedding_requests = 0
        self.inputs = 0
        self.tokens_billed = 0
        # When each billed request arrived (time.monotonic()) and its tokens.
        self.token_arrivals: list[tuple[float, int]] = []
        self.embedded_texts: Counter[str] = Counter()
        # OpenAI's optional ``user`` field tags a request with an end user; the pipeline
        # sends its document id there, so cost can be counted per document.
        self.inputs_by_user: Counter[str] = Counter()
        # Every text answered, in order, by user tag: which chunks were paid for again.
        self.texts_by_user: defaultdict[str, list[str]] = defaultdict(list)

    def bill(self, texts: list[str], tokens: int, user: str | None = None) -> None:
        """Record one answered embeddings request (``user``: the caller's end-user tag)."""
        if user is not None:
            self.inputs_by_user[user] += len(texts)
            self.texts_by_user[user].extend(texts)
        self.embedding_requests += 1
        self.inputs += len(texts)
        self.tokens_billed += tokens
        self.token_arrivals.append((time.monotonic(), tokens))
        self.embedded_texts.update(texts)

    def stats(self) -> dict[str, Any]:
        return {
            **super().stats(),
            "embedding_requests": self.embedding_requests,
            "inputs": self.inputs,
            "tokens_billed": self.tokens_billed,
        }


class InvalidRequest(Exception):
    """A request OpenAI would refuse; rendered as an OpenAI-shaped error body."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.error_type = error_type

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return openai_error(
            self.status,
            self.message,
            param=self.param,
            code=self.code,
            error_type=self.error_type,
            headers=headers,
        )


def openai_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    error_type: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error response in OpenAI's shape."""
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _fault_response(fault: Fault) -> Response:
    status = fault.status or 500
    if fault.kind is FaultKind.RATE_LIMIT:
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = retry_after_header(
                fault.retry_after, as_date=fault.retry_after_date
            )
        return openai_error(
            status,
            "Rate limit reached for requests (injected by the fake's fault plan)",
            code="rate_limit_exceeded",
            error_type="requests",
            headers=headers,
        )
    if fault.kind is FaultKind.SERVER_ERROR:
        return openai_error(
            status,
            "The server had an error while processing your request (injected)",
            error_type="server_error",
        )
    return openai_error(status, f"Request refused with status {status} (injected permanent error)")


def _parse_inputs(value: object) -> list[str]:
    if isinstance(value, str):
        items: list[object] = [value]
    elif isinstance(value, list):
        items = value
    else:
        raise InvalidRequest(
            f"'input' must be a string or a list of strings, got {type(value).__name__}",
            param="input",
        )
    if not items:
        raise InvalidRequest("'input' must not be an empty list", param="input")
    if any(isinstance(item, int) and not isinstance(item, bool) for item in items) or any(
        isinstance(item, list) for item in items
    ):
        raise InvalidRequest(
            "token-array inputs are not supported by this fake; send strings",
            param="input",
            code="unsupported_input",
        )
    if len(items) > MAX_INPUTS:
        raise InvalidRequest(
            f"'input' has {len(items)} items; the maximum is {MAX_INPUTS} per request",
            param="input",
        )
    texts: list[str] = []
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidRequest(
                f"'input[{index}]' must be a string, got {type(item).__name__}", param="input"
            )
        if not item:
            raise InvalidRequest(
                f"'input[{index}]' is an empty string; inputs must be non-empty",
                param="input",
            )
        texts.append(item)
    return texts


def _parse_dimensions(value: object, model: str) -> int:
    native = MODEL_DIMENSIONS[model]
    if value is None:
        return native
    if model in MODELS_WITHOUT_DIMENSIONS:
        raise InvalidRequest(
            f"This model ({model}) does not support specifying dimensions.", param="dimensions"
        )
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= native:
        raise InvalidRequest(
            f"'dimensions' must be an integer from 1 to {native} for {model}, got {value!r}",
            param="dimensions",
        )
    return value


def _encode(vector: tuple[float, ...], encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return list(vector)
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def create_embeddings_app(
    *, faults: FaultPlan | None = None, api_key: str | None = None
) -> Starlette:
    """Build a fake OpenAI embeddings app. See the module docstring for the contract.

    Example (inside a coroutine)::

        app = create_embeddings_app(faults=FaultPlan([Fault.rate_limit(retry_after=2)]))
        sdk = openai.AsyncOpenAI(
            api_key="sk-test",
            base_url="http://embeddings.fake/v1",
            http_client=openai_http_client(app),
            max_retries=0,
        )
        with pytest.raises(openai.RateLimitError):
            await sdk.embeddings.create(input="hello", model="text-embedding-3-small")
    """
    fake = EmbeddingsFake(faults=faults)

    def unauthorised(request: Request) -> Response | None:
        if api_key is None:
            return None
        header = request.headers.get("authorization")
        if header is None:
            return openai_error(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
            )
        if header != f"Bearer {api_key}":
            # Like OpenAI, echo the key masked (its head and last four characters): the
            # client must keep even this out of its errors.
            sent = header.removeprefix("Bearer ")
            return openai_error(
                401,
                f"Incorrect API key provided: {sent[:8]}{'*' * 20}{sent[-4:]}.",
                code="invalid_api_key",
            )
        return None

    async def embeddings(request: Request) -> Response:
        if (denied := unauthorised(request)) is not None:
            return denied
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):
            return openai_error(
                400, "We could not parse the JSON body of your request: it is not valid JSON."
            )
        try:
            texts, model, dimensions, encoding_format = _validate(body)
        except InvalidRequest as invalid:
            return invalid.response()
        fault = current_fault(request.scope)
        if fault is not None and fault.kind is FaultKind.WRONG_DIMENSION:
            dimensions += 1
        tokens = sum(count_tokens(text) for text in texts)
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": _encode(
                    embedding_for(text, model=model, dimensions=dimensions), encoding_format
                ),
            }
            for index, text in enumerate(texts)
        ]
        fake.bill(texts, tokens, body.get("user") if isinstance(body, dict) else None)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def models(request: Request) -> Response:
        if (denied := unauthorised(request)) is not None:
            return denied
        listing = [
            {"id": model, "object": "model", "created": MODEL_CREATED[model], "owned_by": "system"}
            for model in MODEL_DIMENSIONS
        ]
        return JSONResponse({"object": "list", "data": listing})

    routes = [
        Route("/v1/embeddings", embeddings, methods=["POST"], name="embeddings"),
        Route("/v1/models", models, methods=["GET"], name="models"),
    ]
    return FakeServiceApp(
        routes=routes,
        service=fake,
        endpoint_names={"embeddings": "embeddings", "models": "models"},
        error_response=_fault_response,
    )


def _validate(body: object) -> tuple[list[str], str, int, str]:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    unknown = sorted(set(body) - _REQUEST_FIELDS)
    if unknown:
        raise InvalidRequest(f"Unrecognized request argument supplied: {', '.join(unknown)}")
    model = body.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter.", param="model")
    if not isinstance(model, str) or model not in MODEL_DIMENSIONS:
        raise InvalidRequest(
            f"The model `{model}` does not exist or you do not have access to it.",
            status=404,
            code="model_not_found",
        )
    if "input" not in body:
        raise InvalidRequest("You must provide an input parameter.", param="input")
    texts = _parse_inputs(body["input"])
    token_counts = [count_tokens(text) for text in texts]
    for index, tokens in enumerate(token_counts):
        if tokens > MAX_TOKENS_PER_INPUT:
            raise InvalidRequest(
                f"'input[{index}]' has {tokens} tokens; this model's maximum is "
                f"{MAX_TOKENS_PER_INPUT} tokens per input.",
                param="input",
            )
    if sum(token_counts) > MAX_TOKENS_PER_REQUEST:
        raise InvalidRequest(
            f"The inputs have {sum(token_counts)} tokens in all; the maximum is "
            f"{MAX_TOKENS_PER_REQUEST} tokens per request.",
            param="input",
            code="max_tokens_per_request",
        )
    dimensions = _parse_dimensions(body.get("dimensions"), model)
    encoding_format = body.get("encoding_format")
    if encoding_format is None:
        encoding_format = "float"
    if encoding_format not in ("float", "base64"):
        raise InvalidRequest(
            f"'encoding_format' must be 'float' or 'base64', got {encoding_format!r}",
            param="encoding_format",
        )
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("'user' must be a string.", param="user")
    return texts, model, dimensions, encoding_format


__all__ = [
    "MODELS_WITHOUT_DIMENSIONS",
    "MODEL_CREATED",
    "EmbeddingsFake",
    "InvalidRequest",
    "create_embeddings_app",
    "openai_error",
]

"""Deterministic fake parser and embeddings services, with fault injection.

Two ASGI apps stand in for the external services of the pipeline: a LlamaParse-like
parser (:func:`create_parser_app`) and the OpenAI embeddings API
(:func:`create_embeddings_app`). Their answers are pure functions of the input
(:func:`parse_document`, :func:`embedding_for`), so the model checker's oracle can
predict them. A :class:`FaultPlan` scripts what goes wrong. Use them in process through
:func:`parser_http_client` and :func:`openai_http_client`, or on loopback sockets
through :func:`served_fakes`.

Example (inside a coroutine)::

    app = create_embeddings_app(faults=FaultPlan([Fault.timeout()]))
    sdk = openai.AsyncOpenAI(
        api_key="k",
        base_url="http://embeddings.fake/v1",
        http_client=openai_http_client(app),
        max_retries=0,
    )
    with pytest.raises(openai.APITimeoutError):
        await sdk.embeddings.create(input="hello", model="text-embedding-3-small")
"""

from __future__ import annotations

from pipeline_models.fakes.embeddings import EmbeddingsFake, create_embeddings_app
from pipeline_models.fakes.faults import (
    EMBEDDINGS_ENDPOINTS,
    PARSER_ENDPOINTS,
    FakeService,
    FakeServiceApp,
    Fault,
    FaultKind,
    FaultPlan,
    FaultTransport,
    NetworkFault,
    openai_http_client,
    parser_http_client,
)
from pipeline_models.fakes.parser import (
    DeliveryResult,
    ParserFake,
    ParserJob,
    WebhookDelivery,
    create_parser_app,
)
from pipeline_models.fakes.parsing import (
    ParsedDocument,
    ParseFailure,
    normalise_text,
    parse_document,
)
from pipeline_models.fakes.serve import FakeEndpoints, run_fakes, served_fakes
from pipeline_models.fakes.vectors import (
    MAX_INPUTS,
    MAX_TOKENS_PER_INPUT,
    MAX_TOKENS_PER_REQUEST,
    MODEL_DIMENSIONS,
    count_tokens,
    embedding_for,
)

__all__ = [
    "EMBEDDINGS_ENDPOINTS",
    "MAX_INPUTS",
    "MAX_TOKENS_PER_INPUT",
    "MAX_TOKENS_PER_REQUEST",
    "MODEL_DIMENSIONS",
    "PARSER_ENDPOINTS",
    "DeliveryResult",
    "EmbeddingsFake",
    "FakeEndpoints",
    "FakeService",
    "FakeServiceApp",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "FaultTransport",
    "NetworkFault",
    "ParseFailure",
    "ParsedDocument",
    "ParserFake",
    "ParserJob",
    "WebhookDelivery",
    "count_tokens",
    "create_embeddings_app",
    "create_parser_app",
    "embedding_for",
    "normalise_text",
    "openai_http_client",
    "parse_document",
    "parser_http_client",
    "run_fakes",
    "served_fakes",
]

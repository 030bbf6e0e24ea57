"""Keys stay secret: a whole cluster run, with a known key, never prints or returns it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from pipeline_models.cluster import LocalCluster
from pipeline_models.database import Database
from pipeline_models.documents import markdown_document, pdf_document
from pipeline_models.errors import ServiceError
from pipeline_models.fakes import create_embeddings_app, openai_http_client
from pipeline_models.pipeline.auth import TokenIssuer
from pipeline_models.pipeline.services import EmbeddingsClient
from pipeline_models.queries import QUERIES
from tests.conftest import cluster_settings

KEY = "sk-test-KNOWN-5c1f0e9a7d3b42e8a6f1"
USER = uuid.UUID(int=7)


def leaks(outputs: dict[str, str]) -> list[str]:
    """Where the key (or a tell-tale part of it) appears: the names of the outputs."""
    tells = (KEY, KEY[-12:], KEY.removeprefix("sk-test-"))
    return sorted(name for name, text in outputs.items() if any(t in text for t in tells))


def test_the_grep_finds_a_key_that_was_printed() -> None:
    # The negative: a leak is found, wherever in the output it is.
    assert leaks({"ok": "nothing here", "bad": f"Authorization: Bearer {KEY}\n"}) == ["bad"]
    assert leaks({"tail": f"key ends {KEY[-12:]}"}) == ["tail"]


async def _wait_done(database: Database, count: int) -> list[str]:
    connection = await database.connect()
    try:
        async with asyncio.timeout(60):
            while await connection.fetchval(QUERIES["count_live_jobs"].sql) or (
                await connection.fetchval("SELECT count(*) FROM upload_jobs") < count
            ):
                await asyncio.sleep(0.05)
        rows = await connection.fetch(
            "SELECT coalesce(last_error, '') AS e FROM upload_jobs UNION ALL "
            "SELECT detail::text FROM events"
        )
        return [str(row[0]) for row in rows]
    finally:
        await connection.close()


def test_no_api_key_appears_in_any_output_of_a_cluster_run(
    clean_pipeline_database: Database, tmp_path: Path
) -> None:
    database = clean_pipeline_database
    settings = cluster_settings(database, tmp_path / "blobs", parser_key=KEY, embeddings_key=KEY)
    outputs: dict[str, str] = {"settings repr": repr(settings)}
    tokens = TokenIssuer(settings.token_secret)
    documents = [markdown_document("# Secret\n\nNothing secret here.\n"), pdf_document(["one"])]
    with LocalCluster(
        settings, workers=2, slots=2, log_level="debug", worker_metrics=True, logs=tmp_path / "logs"
    ) as cluster:
        outputs["cluster settings repr"] = repr(cluster.settings)
        headers = {"Authorization": f"Bearer {tokens.issue(USER)}"}
        with httpx.Client(base_url=cluster.api_url, timeout=30) as client:
            job_ids = []
            for document in documents:
                response = client.post(
                    "/upload",
                    headers=headers,
                    files={"file": (document.filename, document.data, document.content_type)},
                )
                assert response.status_code == 201, response.text
                job_ids.append(response.json()["job_id"])
            outputs |= {
                f"db row {i}": t for i, t in enumerate(asyncio.run(_wait_done(database, 2)))
            }
            for path in ("/health", "/metrics", "/openapi.json", *(f"/jobs/{j}" for j in job_ids)):
                response = client.get(path, headers=headers)
                assert response.status_code == 200, (path, response.text)
                outputs[f"api {path}"] = response.text + str(response.headers)
            outputs["api 401"] = client.get("/jobs/x", headers={"Authorization": KEY}).text
            outputs["api 404"] = client.get(f"/jobs/{uuid.uuid4()}", headers=headers).text
        for url in cluster.metrics_urls:
            outputs[f"worker {url}"] = httpx.get(url).text
        assert len(cluster.metrics_urls) == 2
        members = [*cluster.workers, cluster.api, cluster.fakes]
    for member in members:
        assert member is not None
        outputs[f"{member.name} stdout"] = "\n".join(member.ready_lines)
    for log in sorted(cluster.logs.glob("*.log")):
        outputs[f"log {log.name}"] = log.read_text(errors="replace")
    # The run did log at debug: the grep read real output, not empty files.
    assert sum(len(t) for name, t in outputs.items() if name.startswith("log ")) > 1000
    assert leaks(outputs) == []


@pytest.mark.anyio
async def test_a_wrong_key_error_names_neither_key() -> None:
    # The fake, like OpenAI, echoes a masked copy of a wrong key in its 401 message.
    app = create_embeddings_app(api_key="the-right-key")
    sdk = openai.AsyncOpenAI(
        api_key=KEY,
        base_url="http://embeddings.fake/v1",
        http_client=openai_http_client(app, base_url="http://embeddings.fake"),
        max_retries=0,
    )
    client = EmbeddingsClient(sdk, model="text-embedding-3-small", dimensions=8)
    with pytest.raises(ServiceError) as raised:
        await client.embed(["hello"])
    await sdk.close()
    message = f"{raised.value}\n{raised.value!r}\n{raised.value.__cause__!r}"
    assert "401" in message
    assert "****" not in message  # the masked echo is gone too
    assert leaks({"error": message}) == []

"""Uploads per second through the API, 8 concurrent clients on loopback.

    python benchmarks/upload_throughput.py [--clients 8] [--uploads 1600]

The API runs as its own process (``pipeline-models serve``, one uvicorn worker) in
front of the database; clients are asyncio tasks in this process, each with its own
HTTP connection, uploading distinct ~2 KB markdown files with bearer tokens. No pipeline
workers run, so the figure is the door alone: auth, content checks, blob write, dedupe
and the document+job transaction.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from common import database, describe_machine

from pipeline_models.cluster import LocalCluster
from pipeline_models.pipeline.auth import TokenIssuer
from pipeline_models.settings import Settings


async def client_loop(url: str, token: str, bodies: list[bytes]) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        statuses = []
        for index, body in enumerate(bodies):
            response = await client.post(
                "/upload",
                headers={"Authorization": f"Bearer {token}"},
                files={"file": (f"note-{index}.md", body, "text/markdown")},
            )
            statuses.append(response.status_code)
        return statuses


async def main(clients: int, uploads: int) -> None:
    with database() as db, tempfile.TemporaryDirectory() as blobs:
        await db.ensure_schema()
        connection = await db.connect()
        await db.reset(connection)
        await connection.close()
        settings = Settings(database_url=db.url, schema=db.schema, storage_root=Path(blobs))
        with LocalCluster(settings, workers=0) as cluster:
            tokens = TokenIssuer(settings.token_secret)
            per_client = uploads // clients
            batches = [
                [
                    (f"# Note {c}-{i}\n\n" + "Some words of an uploaded note. " * 64).encode()
                    for i in range(per_client)
                ]
                for c in range(clients)
            ]
            users = [uuid.UUID(int=c + 1) for c in range(clients)]
            # Warm up the API's connection pool and code paths.
            await client_loop(cluster.api_url, tokens.issue(users[0]), [b"# warm"])
            started = time.perf_counter()
            results = await asyncio.gather(
                *(
                    client_loop(cluster.api_url, tokens.issue(user), batch)
                    for user, batch in zip(users, batches, strict=True)
                )
            )
            elapsed = time.perf_counter() - started
        statuses = [status for result in results for status in result]
        assert statuses.count(201) == len(statuses), f"not all created: {set(statuses)}"
        print(f"uploads through the API ({describe_machine(db)})")
        print(
            f"  {len(statuses)} uploads of ~2 KB by {clients} concurrent clients in {elapsed:.2f} s"
        )
        print(f"  {len(statuses) / elapsed:.0f} uploads/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--uploads", type=int, default=1600)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.clients, arguments.uploads))

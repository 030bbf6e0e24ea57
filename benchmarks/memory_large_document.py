"""Peak memory of a worker while it processes one 10 MB document.

    python benchmarks/memory_large_document.py [--size-mb 10]

The fakes run in their own process (``pipeline-models serve-fakes`` on loopback), so
the figure is the worker process alone: its resident set sampled every 5 ms while one
worker takes the document through all nine stages, minus its resident set when idle
(started, connected, warmed up on a small document). Target: under 150 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import psutil
from common import database, describe_machine

from pipeline_models.documents import large_markdown_document, markdown_document
from pipeline_models.pipeline.config import WorkerConfig
from pipeline_models.pipeline.reference import ReferencePipeline

API_KEY = "benchmark-key"
MB = 2**20


class PeakSampler:
    def __init__(self, interval: float = 0.005) -> None:
        self.process = psutil.Process()
        self.interval = interval
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def start_fakes() -> tuple[subprocess.Popen[str], str, str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline_models.cli",
            "serve-fakes",
            "--parser-port",
            "0",
            "--embeddings-port",
            "0",
            "--api-key",
            API_KEY,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    parser_url = process.stdout.readline().split()[-1]
    embeddings_url = process.stdout.readline().split()[-1]
    return process, parser_url, embeddings_url


async def main(size_mb: int) -> None:
    fakes, parser_url, embeddings_url = start_fakes()
    try:
        with database() as db, tempfile.TemporaryDirectory() as blobs:
            await db.ensure_schema()
            connection = await db.connect()
            await db.reset(connection)
            config = WorkerConfig(parser_poll_seconds=0.05, idle_seconds=0.01)
            async with ReferencePipeline.over_http(
                db,
                storage_root=blobs,
                parser_url=parser_url,
                embeddings_url=embeddings_url,
                parser_key=API_KEY,
                embeddings_key=API_KEY,
                config=config,
            ) as pipeline:
                user = uuid.UUID(int=1)
                await pipeline.upload(
                    connection, user_id=user, document=markdown_document("# Warm")
                )
                await pipeline.run_workers(1)
                document = large_markdown_document(size_mb * MB, seed=0)
                await pipeline.upload(connection, user_id=user, document=document)
                del document
                gc.collect()
                idle = psutil.Process().memory_info().rss
                started = time.perf_counter()
                with PeakSampler() as sampler:
                    await pipeline.run_workers(1, timeout=1800)
                elapsed = time.perf_counter() - started
                chunks = await connection.fetchval(
                    "SELECT chunk_count FROM documents WHERE status = 'complete' "
                    "ORDER BY size_bytes DESC LIMIT 1"
                )
            await connection.close()
            print(f"peak memory for one {size_mb} MB document ({describe_machine(db)})")
            print(f"  {chunks} chunks, {config.embed_dimensions}-dim vectors, {elapsed:.1f} s")
            print(f"  worker idle RSS {idle / MB:.0f} MB, peak {sampler.peak / MB:.0f} MB")
            print(f"  peak above idle: {(sampler.peak - idle) / MB:.1f} MB  (target: under 150 MB)")
    finally:
        fakes.terminate()
        fakes.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=10)
    asyncio.run(main(parser.parse_args().size_mb))

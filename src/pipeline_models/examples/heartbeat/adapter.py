"""The heartbeat worker's spec (in Python this time) and adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg

from pipeline_models.core import Adapter, Attempts, Holder, Spec, States
from pipeline_models.examples.heartbeat import worker

HERE = Path(__file__).parent


class HeartbeatAdapter(Adapter):
    spec = Spec(
        table="beats.jobs",
        states=States(claimable=["queued"], in_progress=["running"], failed=["failed"]),
        holder=Holder("heartbeat", column="heartbeat_at", timeout_seconds=30),
        attempts=Attempts("attempts", limit=3),
        finished="deleted",  # a finished job's row is deleted by its holder
    )
    fence_completion = True

    async def setup(self, connection: asyncpg.Connection) -> None:
        await connection.execute((HERE / "schema.sql").read_text())
        await connection.execute("TRUNCATE beats.jobs RESTART IDENTITY")

    async def enqueue(self, connection: asyncpg.Connection, number: int) -> Any:
        return await connection.fetchval(
            "INSERT INTO beats.jobs (payload) VALUES ($1) RETURNING id", f"job {number}"
        )

    async def run_worker(self, name: str, dsn: str) -> None:
        await worker.run(dsn, fence_completion=self.fence_completion)


class UnfencedCompletionAdapter(HeartbeatAdapter):
    """The bug: a worker whose job was put back and taken by another deletes it anyway."""

    fence_completion = False

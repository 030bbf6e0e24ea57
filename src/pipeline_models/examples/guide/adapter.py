"""How the checker drives the guide's worker: its spec and three verbs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg

from pipeline_models.core import Adapter, Spec
from pipeline_models.examples.guide import fixed, worker

HERE = Path(__file__).parent


class GuideAdapter(Adapter):
    spec = Spec.from_toml(HERE / "spec.toml")
    worker = worker

    async def setup(self, connection: asyncpg.Connection) -> None:
        await connection.execute((HERE / "schema.sql").read_text())
        await connection.execute("TRUNCATE guide.jobs RESTART IDENTITY")

    async def enqueue(self, connection: asyncpg.Connection, number: int) -> Any:
        return await connection.fetchval(
            "INSERT INTO guide.jobs (payload) VALUES ($1) RETURNING id", f"job {number}"
        )

    async def run_worker(self, name: str, dsn: str) -> None:
        await self.worker.run(dsn)


class FixedGuideAdapter(GuideAdapter):
    worker = fixed

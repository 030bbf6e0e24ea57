"""procrastinate, as it is: its job table's spec, and how the checker drives its worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import replace
from typing import Any, ClassVar

import asyncpg
import procrastinate
from procrastinate.psycopg_connector import PsycopgConnector

from pipeline_models.core import Adapter, Attempts, Holder, Spec, States

SCHEMA = f"procrastinate_{os.getpid()}"  # one per process: checks side by side never meet
WORKERS = f"{SCHEMA}.procrastinate_workers"  # the heartbeats: a job names its worker
STALLED = 30  # s: the worker's stalled_worker_timeout, get_stalled_jobs' default
HOLDER = Holder("heartbeat", "worker_id", STALLED, beats_in=WORKERS, beat="last_heartbeat")
RETRY = procrastinate.RetryStrategy(max_attempts=2, wait=5)
for noisy in ("psycopg.pool", "procrastinate"):  # crashed workers, jobs failing: the plan
    logging.getLogger(noisy).setLevel(logging.CRITICAL)


async def work(context: procrastinate.JobContext, n: int) -> None:
    await asyncio.sleep(5)  # the work takes time
    if n == 3 or (n % 2 and context.job.attempts == 0):
        raise RuntimeError("an odd job fails its first attempt, the fourth every one")


def app_for(dsn: str, size: int) -> procrastinate.App:  # one a worker (a process in production)
    options = {"options": f"-c search_path={SCHEMA}"}
    # A wait for a free connection runs on the wall clock: none times out while parked.
    connector = PsycopgConnector(conninfo=dsn, kwargs=options, min_size=size, timeout=3600)
    app = procrastinate.App(connector=connector)
    app.task(name="work", pass_context=True, retry=RETRY)(work)
    return app


async def retry_stalled_jobs(app: procrastinate.App, bounded: bool) -> None:
    """procrastinate's recipe for stalled jobs, a periodic task (a run that raises fails alone)."""
    while True:
        await asyncio.sleep(STALLED / 3)
        with contextlib.suppress(procrastinate.exceptions.ConnectorException):
            for job in await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=STALLED):
                if bounded and job.attempts >= (RETRY.max_attempts or 0):
                    await app.job_manager.finish_job(job, procrastinate.jobs.Status.FAILED, False)
                else:
                    await app.job_manager.retry_job(job)


class ProcrastinateAdapter(Adapter):
    spec = Spec(
        table=f"{SCHEMA}.procrastinate_jobs",
        state="status",
        states=States(["todo"], ["doing"], ["succeeded"], ["failed", "cancelled", "aborted"]),
        holder=HOLDER,
        attempts=Attempts("attempts", limit=RETRY.max_attempts or 0, counts="returns"),
        due="scheduled_at",
    )
    enqueuer: ClassVar[Any] = None  # procrastinate.App, opened once a process
    bounded: ClassVar[bool] = False  # the docs' recipe, as it is

    async def setup(self, connection: asyncpg.Connection) -> None:
        if ProcrastinateAdapter.enqueuer is None:  # once a process: its schema, its way
            await self.teardown(connection)  # what a process of the same pid left
            await connection.execute(f"CREATE SCHEMA {SCHEMA}")
            ProcrastinateAdapter.enqueuer = await app_for(self.dsn, 1).open_async()
            await ProcrastinateAdapter.enqueuer.schema_manager.apply_schema_async()
        await connection.execute(f"TRUNCATE {WORKERS} RESTART IDENTITY CASCADE")  # and all else
        # A DEFAULT now() reads Postgres's clock: bound again where the checker's is first.
        await connection.execute(f"ALTER TABLE {WORKERS} ALTER last_heartbeat SET DEFAULT now()")

    async def teardown(self, connection: asyncpg.Connection) -> None:  # before the server goes
        app, ProcrastinateAdapter.enqueuer = ProcrastinateAdapter.enqueuer, None
        await (app.close_async() if app else asyncio.sleep(0))
        await connection.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")

    async def enqueue(self, connection: asyncpg.Connection, number: int) -> Any:
        return await self.enqueuer.configure_task("work").defer_async(n=number)

    async def run_worker(self, name: str, dsn: str) -> None:
        # Polling, not LISTEN: a notification's arrival is no round trip to step.
        options = {"name": name, "listen_notify": False, "install_signal_handlers": False}
        async with app_for(dsn, 4).open_async() as app:
            recipe = asyncio.create_task(retry_stalled_jobs(app, self.bounded))
            try:  # a worker that stops (a side task failed) ends its process
                await app.run_worker_async(**options)  # type: ignore[arg-type]
            finally:
                recipe.cancel()


class ProcrastinateAsPromised(ProcrastinateAdapter):
    """As promised: unfenced (a stalled job's old worker may still finish it), bounded."""

    bounded = True
    spec = replace(ProcrastinateAdapter.spec, holder=replace(HOLDER, fenced=False))

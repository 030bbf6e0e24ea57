"""The BaseWorker: claim a job with a lease, run one step of its stage, commit or fail.

One worker is one asyncpg connection and one job at a time; a process runs several
workers for several slots. A step is:

1. claim (``claim_job``: FOR UPDATE SKIP LOCKED, a lease, expired leases reclaimed);
2. the stage's work outside any transaction (reads, external calls, with the lease
   renewed while a call is in flight);
3. one transaction that starts with the fence (``lock_owned_job``: this owner, live
   lease, same stage), writes what the work produced, and moves the job.

A failure is classified (transient, permanent, deferred) and recorded through the same
fence. Whatever happens, a job is never marked done without its rows, and a worker that
lost its lease cannot commit.

Example::

    async with BaseWorker(database, services=services, storage=storage) as worker:
        result = await worker.run_once()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, TypeVar

import asyncpg
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential, wait_random

from pipeline_models.clock import Clock, SystemClock
from pipeline_models.database import Database
from pipeline_models.errors import (
    BudgetExhaustedError,
    CircuitOpenError,
    DatabaseConfigurationError,
    DatabaseUnavailableError,
    LeaseLostError,
    ServiceError,
)
from pipeline_models.lifecycle import BUDGET_HOLD, Stage, State, next_stage
from pipeline_models.metrics import PipelineMetrics
from pipeline_models.pipeline.budget import Budget
from pipeline_models.pipeline.checkpoints import Checkpoint, CheckpointHook
from pipeline_models.pipeline.circuit import CircuitBreaker
from pipeline_models.pipeline.config import WorkerConfig
from pipeline_models.pipeline.costs import Usage
from pipeline_models.pipeline.ledger import NOT_BILLED, UNCONFIRMED, Charge, Ledger
from pipeline_models.pipeline.ratelimit import RateLimits
from pipeline_models.pipeline.retry import Failure, FailureKind, classify, describe
from pipeline_models.pipeline.services import EMBEDDINGS, PARSER, Services
from pipeline_models.pipeline.storage import BlobStorage
from pipeline_models.queries import QUERIES, Queries

logger = logging.getLogger("pipeline_models.worker")

T = TypeVar("T")


@dataclass(frozen=True)
class ClaimedJob:
    """A job as the claim returned it, with the document fields its stages need."""

    job_id: uuid.UUID
    document_id: uuid.UUID
    user_id: uuid.UUID
    stage: Stage
    state: State
    owner: str | None
    lease_expires_at: datetime | None
    retry_count: int
    parser_job_id: str | None
    chunks_total: int | None
    chunks_done: int
    chunk_cursor: int
    embeddings_done: int
    correlation_id: str
    last_error: str | None
    previous_state: State
    previous_owner: str | None
    filename: str
    declared_type: str
    size_bytes: int
    raw_blob_key: str
    parsed_blob_key: str | None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ClaimedJob:
        values = {f.name: record[f.name] for f in fields(cls)}
        values["stage"] = Stage(values["stage"])
        values["state"] = State(values["state"])
        values["previous_state"] = State(values["previous_state"])
        return cls(**values)

    @property
    def reclaimed(self) -> bool:
        """The previous owner's lease had expired: this claim took the job over."""
        return self.previous_state is State.WORKING


class StepAction(StrEnum):
    IDLE = "idle"  # nothing was due
    ADVANCED = "advanced"  # the stage is done; the job moved to the next one
    REQUEUED = "requeued"  # a batch was written or the parser is busy; same stage again
    DEFERRED = "deferred"  # a circuit is open; try later without counting a retry
    RETRY_SCHEDULED = "retry_scheduled"  # transient failure, backoff
    DEADLETTERED = "deadlettered"  # permanent failure or retries exhausted
    FINALIZED = "finalized"  # the document is complete, the job done
    LEASE_LOST = "lease_lost"  # another owner has the job now; nothing committed
    HELD = "held"  # the budget cannot cover the next billed call; queued, held


@dataclass(frozen=True)
class StepResult:
    action: StepAction
    job_id: uuid.UUID | None = None
    stage: Stage | None = None
    detail: str = ""

    def __str__(self) -> str:
        where = f" {self.job_id} at {self.stage}" if self.job_id else ""
        return f"{self.action}{where}{': ' + self.detail if self.detail else ''}"


StageHandler = Callable[["Step"], Awaitable[StepResult]]

_CONNECTION_ERRORS = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    # asyncpg's own state error when a transaction's socket died under it.
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
    OSError,
)


class Step:
    """One claimed job being worked on: the stage handlers' whole view of the world."""

    def __init__(self, worker: BaseWorker, job: ClaimedJob) -> None:
        self.worker = worker
        self.job = job
        self.started = time.perf_counter()
        self.lease_lost = False

    @property
    def config(self) -> WorkerConfig:
        return self.worker.config

    @property
    def storage(self) -> BlobStorage:
        return self.worker.storage

    @property
    def services(self) -> Services:
        return self.worker.services

    @property
    def queries(self) -> Queries:
        return self.worker.queries

    def now(self) -> datetime:
        return self.worker.clock.now()

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        await self.worker.checkpoint(checkpoint, self.job)

    def price(self, usage: Usage) -> Decimal:
        """What ``usage`` costs at this worker's prices (one function for budget and job)."""
        return self.config.prices.price(usage, embed_model=self.config.embed_model)

    async def call(
        self,
        service: str,
        operation: Callable[[], Awaitable[T]],
        *,
        estimate: Usage | None = None,
        billed: Callable[[T], Charge] | None = None,
    ) -> T:
        """Call an external service through its circuit breaker, renewing the lease meanwhile.

        A billed call gives its ``estimate`` and ``billed``, what its answer says it cost.
        Before the request, the call is recorded in the ledger with its estimate, which
        is reserved from the budget (and counted by the rate limits); if the budget cannot
        cover it, :class:`BudgetExhaustedError` is raised and no request is sent. After
        it, the call is settled: at ``billed(answer)``; at nothing when the service
        refused it with an error status or it was never sent; at the estimate when the
        answer was lost or garbled (the service may have billed it). A step cancelled
        mid-call settles nothing: the claim that takes the job over settles it.
        ``after_call`` is awaited whether the call succeeded or failed (a failed call may
        still have had its effect), but not when the step itself is being cancelled.

        What no worker can promise: a pause between the lease check here and the request
        (a GC pause, a stopped process) may outlast the lease, and the request then goes
        out after another worker took the job over and perhaps made the same call. What
        this worker does promise instead, and the checker holds it to (``cost``,
        ``fencing``, ``billing``): such a zombie sends that one request and commits
        nothing of it; the take-over settles its call at the estimate (its late answer
        corrects it); the waste is one call per lost lease.
        """
        if self.config.renew_leases:
            await self.renew_lease()
        breaker = self.worker.breakers[service]
        opened = await self._open_call(service, estimate)
        sent = False
        try:
            breaker.before_call()
            try:
                waited = await self.worker.rate_limits.acquire(
                    service, tokens=estimate.tokens if estimate is not None else 0
                )
            except BaseException:
                breaker.release_trial()
                raise
            if waited > 0.1 and self.config.renew_leases:
                # A wait for the rate limit may have used up much of the lease: renew it
                # now, or the call's result could not be committed.
                await self.renew_lease()
            sent = True
            result = await self._call(service, breaker, operation)
        except ServiceError as error:
            self._count_call(service, "transient" if error.transient else "permanent")
            # An error status is the service refusing the request, unbilled; a circuit
            # that was open sent nothing. Anything else may have been billed.
            refused = error.status is not None or isinstance(error, CircuitOpenError)
            await self._settle(opened, None if refused else estimate)
            if error.retry_after:
                # After the settle: shared limits that cannot be reached must not leave
                # the call in flight.
                await self.worker.rate_limits.pause(service, error.retry_after)
            raise
        except Exception:
            self._count_call(service, "error")
            # Sent and lost: the service may have billed it. Not sent (the rate limits'
            # database was unreachable, a call too large for them): it cost nothing.
            await self._settle(opened, estimate if sent else None)
            raise
        self._count_call(service, "ok")
        if billed is not None:
            await self._settle(opened, billed(result))
        return result

    def _count_call(self, service: str, outcome: str) -> None:
        if self.worker.metrics is not None:
            self.worker.metrics.external_calls.labels(service=service, outcome=outcome).inc()

    async def _open_call(self, service: str, estimate: Usage | None) -> tuple[int, Usage] | None:
        """Record a billed call in the ledger, reserving its estimate; None if not billed."""
        if estimate is None:
            return None
        async with self.worker.connection_lock:
            call_id = await self.worker.ledger.open(
                self.worker.db,
                self.job.job_id,
                self.worker.name,
                service,
                self.price(estimate),
                self.now(),
            )
        return call_id, estimate

    async def _settle(
        self, opened: tuple[int, Usage] | None, charge: Charge | Usage | None
    ) -> None:
        """Settle an opened call: at ``charge``, at the estimate it was opened with when
        ``charge`` is that estimate (``unconfirmed``), at nothing when None."""
        if opened is None:
            return
        call_id, estimate = opened
        if charge is None:
            charge = Charge(Usage(), outcome=NOT_BILLED)
        elif isinstance(charge, Usage):
            charge = Charge(estimate, outcome=UNCONFIRMED)
        async with self.worker.connection_lock:
            await self.worker.ledger.settle(
                self.worker.db,
                call_id,
                charge.outcome,
                self.price(charge.usage),
                self.now(),
                usage=charge.usage,
                reference=charge.reference,
            )

    async def count_parse(self, parser_job_id: str, pages: int) -> Decimal:
        """The parser counted ``pages`` for ``parser_job_id``: bill its call at them (at
        once, not with the step: the parser billed them whether or not the step commits).
        What the pages cost."""
        cost = self.price(Usage(pages=pages))
        async with self.worker.connection_lock:
            await self.worker.ledger.count_parse(
                self.worker.db, self.job.job_id, parser_job_id, pages, cost, self.now()
            )
        return cost

    async def _call(
        self, service: str, breaker: CircuitBreaker, operation: Callable[[], Awaitable[T]]
    ) -> T:
        await self.checkpoint(Checkpoint.BEFORE_CALL)
        self.worker.stats[f"calls_{service}"] += 1
        stop_heartbeat = asyncio.Event()
        heartbeat = (
            asyncio.create_task(self._heartbeat(stop_heartbeat), name=f"{self.worker.name}-lease")
            if self.config.renew_leases
            else None
        )
        try:
            result = await operation()
        except ServiceError as error:
            if error.transient:
                breaker.record_failure(str(error))
            else:
                breaker.release_trial()
            await self._end_call(stop_heartbeat, heartbeat)
            raise
        except Exception:
            breaker.release_trial()
            await self._end_call(stop_heartbeat, heartbeat)
            raise
        except BaseException:  # cancelled: the worker is being crashed or stopped
            breaker.release_trial()
            if heartbeat is not None:
                heartbeat.cancel()
            raise
        breaker.record_success()
        await self._end_call(stop_heartbeat, heartbeat)
        return result

    async def renew_lease(self) -> None:
        """A full lease for what comes next; :class:`LeaseLostError` if it is gone already
        (then the external call is not made: its result could not be committed)."""
        if not await self._renew():
            raise LeaseLostError(
                f"{self.worker.name} lost job {self.job.job_id} before calling a service"
            )

    async def _renew(self) -> bool:
        """Extend this worker's live lease by a full lease; False if it is gone."""
        now = self.now()
        async with self.worker.connection_lock:
            renewed = await self.worker.db.fetchval(
                self.queries["renew_lease"].sql,
                self.job.job_id,
                self.worker.name,
                now,
                now + timedelta(seconds=self.config.lease_seconds),
            )
        return renewed is not None

    async def _end_call(self, stop: asyncio.Event, heartbeat: asyncio.Task[None] | None) -> None:
        stop.set()
        if heartbeat is not None:
            await heartbeat
        await self.checkpoint(Checkpoint.AFTER_CALL)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        """Renew the lease every third of its length until told to stop."""
        interval = self.config.lease_seconds / 3
        while True:
            sleeper = asyncio.ensure_future(self.worker.clock.sleep(interval))
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                stopper.cancel()
            if stop.is_set():
                return
            try:
                renewed = await self._renew()
            except Exception as error:  # the commit's fence will tell the step
                renewed = False
                self.worker.log("lease_renewal_failed", self.job, describe(error))
            if not renewed:
                self.lease_lost = True
                self.worker.log("lease_lost", self.job, "lease could not be renewed")
                return

    @contextlib.asynccontextmanager
    async def commit(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction that holds the job only if this worker still owns it.

        The fence runs first; if the lease was lost, :class:`LeaseLostError` is raised and
        nothing is written. ``before_commit`` is awaited inside the transaction after the
        writes; ``committed`` after the commit.
        """
        connection = self.worker.db
        async with self.worker.connection_lock, connection.transaction():
            fenced = await connection.fetchval(
                self.queries["lock_owned_job"].sql,
                self.job.job_id,
                self.worker.name,
                self.now(),
                self.job.stage.value,
            )
            if fenced is None:
                raise LeaseLostError(
                    f"{self.worker.name} no longer holds job {self.job.job_id} at "
                    f"{self.job.stage}: its lease expired and moved, or the job changed"
                )
            yield connection
            await self.checkpoint(Checkpoint.BEFORE_COMMIT)
        await self.checkpoint(Checkpoint.COMMITTED)

    async def event(self, connection: asyncpg.Connection, action: str, **detail: Any) -> None:
        await connection.execute(
            self.queries["insert_event"].sql,
            self.job.job_id,
            self.job.document_id,
            self.job.correlation_id,
            action,
            self.job.stage.value,
            detail.pop("state", None),
            self.worker.name,
            {"seconds": round(time.perf_counter() - self.started, 6), **detail},
            self.now(),
        )

    async def move(self, connection: asyncpg.Connection, query: str, *arguments: Any) -> None:
        """Run a query that moves this job; it must move exactly this one row.

        The fence already holds the row, so this cannot fail in the reference pipeline;
        it is the second lock on the door, should a query be changed.
        """
        status = await connection.execute(self.queries[query].sql, *arguments)
        if status.rsplit(" ", 1)[-1] != "1":
            raise LeaseLostError(
                f"{self.worker.name} could not move job {self.job.job_id} ({query}: {status})"
            )

    async def advance(self, connection: asyncpg.Connection, **detail: Any) -> StepResult:
        """The stage is done (call inside :meth:`commit`)."""
        following = next_stage(self.job.stage)
        if following is None:
            raise ValueError(f"{self.job.stage} is the last stage; finalize instead")
        await self.move(
            connection,
            "advance_job",
            self.job.job_id,
            self.worker.name,
            self.now(),
            following.value,
        )
        await self.event(connection, "stage_completed", state=State.QUEUED.value, **detail)
        return StepResult(StepAction.ADVANCED, self.job.job_id, self.job.stage, str(following))

    async def requeue(
        self,
        connection: asyncpg.Connection,
        *,
        delay: float,
        progress: bool,
        action: str,
        **detail: Any,
    ) -> StepResult:
        """Same stage again after ``delay`` seconds (call inside :meth:`commit`)."""
        now = self.now()
        await self.move(
            connection,
            "requeue_job",
            self.job.job_id,
            self.worker.name,
            now,
            now + timedelta(seconds=delay),
            progress,
        )
        await self.event(connection, action, state=State.QUEUED.value, **detail)
        result = StepAction.REQUEUED if action != "deferred" else StepAction.DEFERRED
        return StepResult(result, self.job.job_id, self.job.stage, action)


class BaseWorker:
    """Claims jobs from Postgres and moves each through the nine stages, one step a claim.

    ``checkpoints`` is the model checker's scheduler hook; ``stages`` and ``queries``
    default to the reference pipeline's and are how mutants change its behaviour.
    """

    def __init__(
        self,
        database: Database,
        *,
        services: Services,
        storage: BlobStorage,
        clock: Clock | None = None,
        config: WorkerConfig | None = None,
        name: str | None = None,
        queries: Queries = QUERIES,
        stages: Mapping[Stage, StageHandler] | None = None,
        checkpoints: CheckpointHook | None = None,
        breakers: Mapping[str, CircuitBreaker] | None = None,
        budget: Budget | None = None,
        rate_limits: RateLimits | None = None,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        from pipeline_models.pipeline.stages import STAGE_HANDLERS

        self.database = database
        self.services = services
        self.storage = storage
        self.clock = clock or SystemClock()
        self.config = config or WorkerConfig()
        self.name = name or f"worker-{uuid.uuid4().hex[:8]}"
        self.queries = queries
        self.stages = dict(stages or STAGE_HANDLERS)
        self.checkpoints = checkpoints
        self.breakers = dict(breakers or default_breakers(self.clock, self.config))
        # None: no spending cap (billed calls are still recorded in the ledger).
        self.budget = budget
        self.rate_limits = rate_limits or RateLimits()
        self.metrics = metrics
        self.connection_lock = asyncio.Lock()
        self.stats: Counter[str] = Counter()
        self._connection: asyncpg.Connection | None = None
        self.current_job: ClaimedJob | None = None
        # True while the claim query runs: a claim must never wait on a row lock (the
        # scheduler reads this when it finds the worker waiting).
        self.claiming = False

    @property
    def ledger(self) -> Ledger:
        """The ledger of billed calls, reserving from this worker's budget (if any)."""
        budget_id = self.budget.budget_id if self.budget is not None else None
        return Ledger(budget_id=budget_id, queries=self.queries)

    @property
    def db(self) -> asyncpg.Connection:
        if self._connection is None:
            raise RuntimeError(f"{self.name} is not started: use 'async with' or await start()")
        return self._connection

    async def start(self, connection: asyncpg.Connection | None = None) -> None:
        """Connect (named after the worker), or work on ``connection`` if given: it must
        be set up like :meth:`Database.connect` sets one up, under the worker's name."""
        if self._connection is None or self._connection.is_closed():
            if connection is None:
                connection = await self.database.connect(application_name=self.name)
            self._connection = connection

    def detach(self) -> asyncpg.Connection | None:
        """Hand the connection over without closing it (for reuse); the worker stops."""
        connection, self._connection = self._connection, None
        return connection

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed():
            await self._connection.close()
        self._connection = None

    async def __aenter__(self) -> BaseWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def backend_pid(self) -> int:
        """The server process of this worker's connection (what a crash terminates)."""
        return int(self.db.get_server_pid())

    async def checkpoint(self, checkpoint: Checkpoint, job: ClaimedJob | None) -> None:
        if self.checkpoints is not None:
            await self.checkpoints(self.name, checkpoint, job)

    def log(self, action: str, job: ClaimedJob | None, message: str, **extra: Any) -> None:
        logger.info(
            message,
            extra={
                "action": action,
                "worker": self.name,
                "job_id": str(job.job_id) if job else None,
                "stage": job.stage.value if job else None,
                "correlation_id": job.correlation_id if job else None,
                **extra,
            },
        )

    async def claim(self) -> ClaimedJob | None:
        now = self.clock.now()
        async with self.connection_lock:
            self.claiming = True
            try:
                record = await self.db.fetchrow(
                    self.queries["claim_job"].sql,
                    self.name,
                    now,
                    now + timedelta(seconds=self.config.lease_seconds),
                    self.config.retry.limit,
                )
            finally:
                self.claiming = False
        return None if record is None else ClaimedJob.from_record(record)

    async def run_once(self) -> StepResult:
        """Claim one due job and run one step of it; ``IDLE`` if nothing was due.

        Raises :class:`DatabaseUnavailableError` if the connection is lost; the job's
        lease then expires and another claim takes it over.
        """
        try:
            job = await self.claim()
        except _CONNECTION_ERRORS as error:
            raise self._unavailable(error) from error
        if job is None:
            self.stats["idle"] += 1
            return StepResult(StepAction.IDLE)
        if job.state is State.DEADLETTER:
            # The claim found an expired lease with no retries left and dead-lettered it;
            # its document is failed too, as on every other way to the dead-letter.
            try:
                await self._dead_lettered_by_claim(job)
            except _CONNECTION_ERRORS as error:
                raise self._unavailable(error) from error
            self.stats["deadlettered"] += 1
            self.log("deadlettered", job, "lease expired with retries exhausted")
            return StepResult(StepAction.DEADLETTERED, job.job_id, job.stage, job.last_error or "")
        if job.reclaimed:
            self.log("reclaimed", job, f"took over from {job.previous_owner}")
        self.current_job = job
        try:
            result = await self._run_step(job)
        except asyncio.CancelledError:
            # The lease is still ours: release_current_job() can give the job back.
            raise
        except BaseException:
            self.current_job = None
            raise
        self.current_job = None
        return result

    async def _dead_lettered_by_claim(self, job: ClaimedJob) -> None:
        now = self.clock.now()
        async with self.connection_lock, self.db.transaction():
            await self.db.execute(self.queries["mark_document_failed"].sql, job.document_id, now)
            await self.db.execute(
                self.queries["insert_event"].sql,
                job.job_id,
                job.document_id,
                job.correlation_id,
                "deadlettered",
                job.stage.value,
                State.DEADLETTER.value,
                self.name,
                {"error": job.last_error},
                now,
            )

    async def _run_step(self, job: ClaimedJob) -> StepResult:
        step = Step(self, job)
        await self.checkpoint(Checkpoint.CLAIMED, job)
        handler = self.stages[job.stage]
        try:
            result = await handler(step)
        except LeaseLostError as error:
            return self._lease_lost(job, error)
        except BudgetExhaustedError as error:
            try:
                result = await self._hold(step, error)
            except LeaseLostError as lost:
                return self._lease_lost(job, lost)
            except _CONNECTION_ERRORS as lost_connection:
                raise self._unavailable(lost_connection) from lost_connection
        except Exception as error:
            if self._connection is None or self._connection.is_closed():
                raise self._unavailable(error) from error
            if isinstance(error, _CONNECTION_ERRORS) and not isinstance(error, ServiceError):
                raise self._unavailable(error) from error
            try:
                result = await self._record_failure(step, classify(error))
            except LeaseLostError as lost:
                return self._lease_lost(job, lost)
            except _CONNECTION_ERRORS as lost_connection:
                raise self._unavailable(lost_connection) from lost_connection
        self.stats[result.action.value] += 1
        if self.metrics is not None:
            self.metrics.steps.labels(stage=job.stage.value, action=result.action.value).inc()
            self.metrics.stage_seconds.labels(stage=job.stage.value).observe(
                time.perf_counter() - step.started
            )
        self.log(result.action.value, job, str(result))
        return result

    def _lease_lost(self, job: ClaimedJob, error: LeaseLostError) -> StepResult:
        self.stats[StepAction.LEASE_LOST.value] += 1
        self.log("lease_lost", job, str(error))
        return StepResult(StepAction.LEASE_LOST, job.job_id, job.stage, str(error))

    def _unavailable(self, error: BaseException) -> DatabaseUnavailableError:
        self.stats["database_errors"] += 1
        logger.warning(
            "database connection lost",
            extra={"action": "database_lost", "worker": self.name, "error": describe(error)},
        )
        return DatabaseUnavailableError(
            f"{self.name} lost its database connection: {describe(error)}"
        )

    async def _hold(self, step: Step, refused: BudgetExhaustedError) -> StepResult:
        """Give the job back held for the budget: not failed, not counted, not claimable.

        Unless the budget was raised since it refused the call: a raise releases only
        the jobs already held, so holding this one now would leave it held until the
        next raise. The check and the hold are one transaction under the budget's row
        lock, which the raise takes too."""
        job = step.job
        async with step.commit() as connection:
            still_short = (
                refused.budget_id is None
                or refused.estimate_usd is None
                or await connection.fetchval(
                    self.queries["budget_still_short"].sql,
                    refused.budget_id,
                    refused.estimate_usd,
                )
                is not False
            )
            if not still_short:
                return await step.requeue(
                    connection, delay=0, progress=False, action="budget_raised"
                )
            await step.move(connection, "hold_job", job.job_id, self.name, step.now(), BUDGET_HOLD)
            await step.event(connection, "held", state=State.QUEUED.value, held_for=BUDGET_HOLD)
        return StepResult(StepAction.HELD, job.job_id, job.stage, str(refused))

    async def _record_failure(self, step: Step, failure: Failure) -> StepResult:
        job = step.job
        retry = self.config.retry
        async with step.commit() as connection:
            now = step.now()
            if failure.kind is FailureKind.DEFERRED:
                return await step.requeue(
                    connection,
                    delay=failure.retry_after or self.config.circuit_reset_seconds,
                    progress=False,
                    action="deferred",
                    error=failure.message,
                )
            if failure.kind is FailureKind.PERMANENT or retry.exhausted(job.retry_count):
                reason = failure.message
                if failure.kind is FailureKind.TRANSIENT:
                    reason = f"retries exhausted ({job.retry_count} of {retry.limit}): {reason}"
                error_text = f"{job.stage}: {reason}"
                await step.move(
                    connection, "fail_job_permanent", job.job_id, self.name, now, error_text
                )
                await connection.execute(
                    self.queries["mark_document_failed"].sql, job.document_id, now
                )
                await step.event(
                    connection, "deadlettered", state=State.DEADLETTER.value, error=error_text
                )
                return StepResult(StepAction.DEADLETTERED, job.job_id, job.stage, error_text)
            delay = retry.delay_seconds(job.retry_count, failure.retry_after)
            await step.move(
                connection,
                "fail_job_transient",
                job.job_id,
                self.name,
                now,
                now + timedelta(seconds=delay),
                f"{job.stage}: {failure.message}",
            )
            await step.event(
                connection,
                "retry_scheduled",
                state=State.RETRYABLE.value,
                error=failure.message,
                delay=delay,
                retry_count=job.retry_count + 1,
            )
            return StepResult(
                StepAction.RETRY_SCHEDULED,
                job.job_id,
                job.stage,
                f"in {delay:g} s: {failure.message}",
            )

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Work until ``stop`` is set; the current step always finishes first."""
        stop = stop or asyncio.Event()
        await self.start()
        while not stop.is_set():
            try:
                result = await self.run_once()
            except DatabaseUnavailableError:
                await self._reconnect(stop)
                continue
            if result.action is StepAction.IDLE:
                await _sleep_unless(stop, self.clock, self.config.idle_seconds)

    async def _reconnect(self, stop: asyncio.Event) -> None:
        with contextlib.suppress(Exception):
            await self.close()
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(DatabaseConfigurationError),
            wait=wait_exponential(multiplier=0.1, max=5.0) + wait_random(0, 0.1),
            reraise=True,
        ):
            with attempt:
                if stop.is_set():
                    return
                await self.start()
                logger.info(
                    "database connection restored",
                    extra={"action": "database_restored", "worker": self.name},
                )

    async def release_current_job(self) -> bool:
        """Give the job this worker holds back to the queue (after its task was cancelled).

        Uses a fresh connection: the worker's own may have been cut mid-query. True if a
        lease was released.
        """
        job = self.current_job
        if job is None:
            return False
        # Under the worker's own name: it is the worker's write, and audits must say so.
        connection = await self.database.connect(application_name=self.name)
        try:
            status = await connection.execute(
                self.queries["release_job"].sql, job.job_id, self.name, self.clock.now()
            )
        finally:
            await connection.close()
        released = bool(status.endswith(" 1"))
        if released:
            self.log("lease_released", job, "lease released on shutdown")
        return released

    async def health(self) -> dict[str, Any]:
        """Database, storage and each service's circuit, as this worker sees them."""
        database: dict[str, Any]
        try:
            started = time.perf_counter()
            async with self.connection_lock:
                await self.db.fetchval("SELECT 1")
            database = {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 3)}
        except Exception as error:
            database = {"ok": False, "error": describe(error)}
        jobs: dict[str, int] = {}
        if database["ok"]:
            async with self.connection_lock:
                for row in await self.db.fetch(self.queries["job_counts"].sql):
                    jobs[f"{row['stage']}/{row['state']}"] = row["jobs"]
        storage = self.storage.health()
        services = {name: breaker.snapshot() for name, breaker in sorted(self.breakers.items())}
        healthy = (
            database["ok"]
            and bool(storage.get("ok"))
            and all(s["state"] != "open" for s in services.values())
        )
        return {
            "ok": healthy,
            "worker": self.name,
            "database": database,
            "storage": storage,
            "services": services,
            "current_job": str(self.current_job.job_id) if self.current_job else None,
            "jobs": dict(sorted(jobs.items())),
            "steps": dict(sorted(self.stats.items())),
        }

    def __repr__(self) -> str:
        return f"BaseWorker({self.name!r})"


def default_breakers(clock: Clock, config: WorkerConfig) -> dict[str, CircuitBreaker]:
    """One circuit breaker per external service, shared by the workers given them."""
    return {
        service: CircuitBreaker(
            service,
            clock,
            failure_threshold=config.circuit_failure_threshold,
            reset_seconds=config.circuit_reset_seconds,
        )
        for service in (PARSER, EMBEDDINGS)
    }


async def _sleep_unless(stop: asyncio.Event, clock: Clock, seconds: float) -> None:
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
    sleeper.cancel()
    stopper.cancel()


__all__ = [
    "BaseWorker",
    "ClaimedJob",
    "StageHandler",
    "Step",
    "StepAction",
    "StepResult",
    "default_breakers",
]

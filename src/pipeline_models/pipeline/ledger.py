"""The ledger of billed calls: every call that costs money, recorded before it is sent.

A worker opens a call before each billed request (``billed_calls``, outcome
``in_flight``), reserving its estimate from the budget in the same statement, and settles
it when the answer is known. The row outlives the worker: if the worker dies mid-call,
the claim that takes the job over settles the call at its estimate (``unconfirmed``: the
service may have billed it), so a crash neither leaks a reservation nor drops money from
the record. A call's money is spent whether or not its step commits, so the ledger is
written outside the step's transaction, and a job's cost is the sum of its calls.

The parser bills a document's pages when it takes the document but counts them later:
its call is settled as ``counting`` at the estimate, and :meth:`Ledger.count_parse` bills
it at the real pages when a poll learns them.

Example::

    ledger = Ledger(budget_id="run")
    opened = await ledger.open(connection, job_id, "worker-1", "embeddings", estimate, now)
    ...  # the request
    await ledger.settle(connection, opened, BILLED, cost, now, usage=usage)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import asyncpg

from pipeline_models.errors import BudgetExhaustedError, LeaseLostError
from pipeline_models.pipeline.costs import Usage
from pipeline_models.queries import QUERIES, Queries

IN_FLIGHT = "in_flight"
BILLED = "billed"
COUNTING = "counting"
NOT_BILLED = "not_billed"
UNCONFIRMED = "unconfirmed"


@dataclass(frozen=True)
class Charge:
    """What a billed call's answer says it cost: its ``usage``, settled as ``outcome``
    (``counting`` for a parse whose pages are not counted yet), and the service's own
    ``reference`` for the work (the parser job id)."""

    usage: Usage
    outcome: str = BILLED
    reference: str | None = None


@dataclass(frozen=True)
class Ledger:
    """The ledger's queries, run on the caller's connection.

    ``budget_id`` is the budget calls reserve from; None when no cap is configured (the
    calls are still recorded). A budget id whose row does not exist caps nothing.
    """

    budget_id: str | None = None
    queries: Queries = field(default_factory=lambda: QUERIES, repr=False)

    async def open(
        self,
        connection: asyncpg.Connection,
        job_id: uuid.UUID,
        caller: str,
        service: str,
        estimate_usd: Decimal,
        now: datetime,
    ) -> int:
        """Record a call about to be made and reserve its estimate; its call id.

        Raises :class:`LeaseLostError` if ``caller`` no longer holds the job with a live
        lease, :class:`BudgetExhaustedError` if the budget cannot cover the estimate;
        then nothing is recorded or reserved, and the request must not be sent.
        """
        row = await connection.fetchrow(
            self.queries["open_call"].sql,
            job_id,
            caller,
            now,
            service,
            estimate_usd,
            self.budget_id,
        )
        if not row["owned"]:
            raise LeaseLostError(f"{caller} lost job {job_id} before calling {service}")
        if row["call_id"] is None:
            raise BudgetExhaustedError(
                f"the budget cannot cover the next {service} call of {job_id} "
                f"(estimated {estimate_usd} USD): raise it with 'pipeline-models budget "
                "--max-cost'",
                budget_id=self.budget_id,
                estimate_usd=estimate_usd,
            )
        return int(row["call_id"])

    async def settle(
        self,
        connection: asyncpg.Connection,
        call_id: int,
        outcome: str,
        cost_usd: Decimal,
        now: datetime,
        *,
        usage: Usage | None = None,
        reference: str | None = None,
    ) -> bool:
        """Record what call ``call_id`` cost and end its reservation; False if it was
        settled for good already (nothing changes then)."""
        usage = usage or Usage()
        settled = await connection.fetchval(
            self.queries["settle_call"].sql,
            call_id,
            outcome,
            usage.pages,
            usage.tokens,
            cost_usd,
            now,
            reference,
        )
        return settled is not None

    async def count_parse(
        self,
        connection: asyncpg.Connection,
        job_id: uuid.UUID,
        parser_job_id: str,
        pages: int,
        cost_usd: Decimal,
        now: datetime,
    ) -> bool:
        """Bill the parse ``parser_job_id`` at the ``pages`` the parser counted; False if
        no call of the job awaits that count (counted already, or never recorded)."""
        counted = await connection.fetchval(
            self.queries["count_parse"].sql, job_id, parser_job_id, pages, cost_usd, now
        )
        return counted is not None


__all__ = ["BILLED", "COUNTING", "IN_FLIGHT", "NOT_BILLED", "UNCONFIRMED", "Charge", "Ledger"]

"""The spending budget: a cap on what a run may spend on external services, in Postgres.

One row of ``spending_budget`` holds the limit, what was spent and what is reserved, so
every worker of a deployment shares it. The ledger of billed calls
(:mod:`pipeline_models.pipeline.ledger`) moves those sums: a call's estimate is reserved,
atomically and only if it fits under the limit, in the statement that records the call,
and moved to spent when the call is settled (by its worker, or by the claim that takes
over a job whose worker died mid-call). So ``reserved_usd`` is always the estimates of
the calls in flight and ``spent_usd`` what the settled calls cost. A worker whose
reservation fails holds the job (``held_for = 'budget'``: queued, skipped by the claim,
not failed and not lost) and raising the limit releases every held job.

Example::

    budget = Budget()
    await budget.set_limit(connection, Decimal("0.50"), now)
    await budget.state(connection)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import asyncpg

from pipeline_models.lifecycle import BUDGET_HOLD
from pipeline_models.queries import QUERIES, Queries

DEFAULT_BUDGET_ID = "run"


@dataclass(frozen=True)
class BudgetState:
    """The budget as stored: its limit, what was spent and what is reserved."""

    limit_usd: Decimal
    spent_usd: Decimal
    reserved_usd: Decimal

    @property
    def remaining_usd(self) -> Decimal:
        return self.limit_usd - self.spent_usd - self.reserved_usd

    def as_dict(self) -> dict[str, str]:
        """Decimal amounts as strings, so JSON and logs keep them exact."""
        return {
            "limit_usd": str(self.limit_usd),
            "spent_usd": str(self.spent_usd),
            "reserved_usd": str(self.reserved_usd),
            "remaining_usd": str(self.remaining_usd),
        }


@dataclass(frozen=True)
class Budget:
    """The queries on one budget row (``budget_id``), run on the caller's connection."""

    budget_id: str = DEFAULT_BUDGET_ID
    queries: Queries = field(default_factory=lambda: QUERIES, repr=False)

    async def set_limit(
        self, connection: asyncpg.Connection, limit_usd: Decimal, now: datetime
    ) -> tuple[BudgetState, int]:
        """Set the limit (creating the budget) and release the held jobs if it now has room.

        Returns the budget and how many held jobs were released. Held jobs go back to the
        queue even if the new limit is still small: a worker that still cannot reserve
        holds its job again, so a release never loses or fails a job.
        """
        if limit_usd < 0:
            raise ValueError(f"a budget limit must not be negative, got {limit_usd}")
        async with connection.transaction():
            row = await connection.fetchrow(
                self.queries["set_budget_limit"].sql, self.budget_id, limit_usd, now
            )
            state = BudgetState(row["limit_usd"], row["spent_usd"], row["reserved_usd"])
            released = 0
            if state.remaining_usd > 0:
                released = await self.release_held(connection, now)
        return state, released

    async def ensure(
        self, connection: asyncpg.Connection, limit_usd: Decimal, now: datetime
    ) -> BudgetState:
        """Create the budget with ``limit_usd`` unless it exists (then it is left alone)."""
        await connection.execute(self.queries["create_budget"].sql, self.budget_id, limit_usd, now)
        state = await self.state(connection)
        assert state is not None  # created just now, or already there; never deleted
        return state

    async def release_held(self, connection: asyncpg.Connection, now: datetime) -> int:
        """Make every job held for the budget claimable again; how many there were."""
        status = await connection.execute(self.queries["release_held_jobs"].sql, BUDGET_HOLD, now)
        return int(status.rsplit(" ", 1)[-1])

    async def state(self, connection: asyncpg.Connection) -> BudgetState | None:
        """The budget, or None if no limit was ever set."""
        row = await connection.fetchrow(self.queries["read_budget"].sql, self.budget_id)
        if row is None:
            return None
        return BudgetState(row["limit_usd"], row["spent_usd"], row["reserved_usd"])


__all__ = ["DEFAULT_BUDGET_ID", "Budget", "BudgetState"]

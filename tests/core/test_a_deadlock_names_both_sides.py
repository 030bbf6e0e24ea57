"""Two requests that lock the same rows in opposite orders deadlock: Postgres ends one
of them, and the finding names both sides by their actors, not by backend pids."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import pytest
from hypothesis import strategies as st

from pipeline_models.core import QueueViolation, Spec, States, action, machine_for
from pipeline_models.core.adapter import Adapter


class Transfers(Adapter):
    """Jobs are transfers between two accounts; each locks both, in its own order."""

    spec = Spec("ledger.jobs", States(claimable=["queued"], in_progress=["running"]))

    async def setup(self, connection: asyncpg.Connection) -> None:
        await connection.execute(
            "CREATE SCHEMA IF NOT EXISTS ledger;"
            "CREATE TABLE IF NOT EXISTS ledger.jobs (id bigint PRIMARY KEY, state text);"
            "CREATE TABLE IF NOT EXISTS ledger.accounts (id int PRIMARY KEY, balance int);"
            "TRUNCATE ledger.jobs, ledger.accounts;"
            "INSERT INTO ledger.accounts VALUES (1, 100), (2, 100)"
        )

    async def enqueue(self, connection: asyncpg.Connection, number: int) -> Any:
        return number

    async def run_worker(self, name: str, dsn: str) -> None:
        return None

    @action(interleaved=True, source=st.sampled_from([1, 2]))
    async def transfer(self, source: int) -> None:
        connection = await asyncpg.connect(self.dsn)
        try:
            async with connection.transaction():
                for account, amount in ((source, -10), (3 - source, 10)):
                    await connection.execute(
                        "UPDATE ledger.accounts SET balance = balance + $2 WHERE id = $1",
                        account,
                        amount,
                    )
        finally:
            await connection.close()


def deadlock(machine: Any) -> None:
    machine.start_transfer(source=1)
    machine.start_transfer(source=2)
    machine.step_an_action(pick=0)  # #1 holds account 1
    machine.step_an_action(pick=1)  # #2 holds account 2
    machine.step_an_action(pick=0)  # #1 waits for account 2
    deadline = time.monotonic() + 10  # Postgres looks after deadlock_timeout (1 s)
    while time.monotonic() < deadline:
        machine.step_an_action(pick=1)  # #2 waits for account 1: a deadlock
        time.sleep(0.2)


def test_a_deadlock_between_two_requests_names_both_actors() -> None:
    machine = machine_for(Transfers, drain=False)()
    try:
        with pytest.raises(QueueViolation) as raised:
            deadlock(machine)
    finally:
        machine.teardown()
    [finding] = [f for f in raised.value.findings if "Deadlock" in f.message]
    assert finding.invariant == "actions"
    assert "(transfer #1)" in finding.message
    assert "(transfer #2)" in finding.message

"""Idle database connections kept from one example to the next.

A new Postgres connection forks a backend and costs a few milliseconds, as much as a
dozen rules; the checker opens six or more per example. Connections left clean by an
example (not in a transaction, not cut by a crash) are kept here and handed to the next
example's workers under their new names, in the same event loop.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from pipeline_models.database import Database

_BROKEN = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


class SpareConnections:
    """Connections to one database, idle, for reuse in the event loop that opened them."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._idle: list[asyncpg.Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.opened = 0
        self.reused = 0

    def __len__(self) -> int:
        return len(self._idle)

    async def take(self, application_name: str) -> asyncpg.Connection:
        """An idle connection renamed ``application_name`` (audits name actors by it), or
        a new one."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A connection belongs to the loop that opened it.
            self._discard_all()
            self._loop = loop
        while self._idle:
            connection = self._idle.pop()
            if connection.is_closed():
                continue
            try:
                await connection.execute(
                    "SELECT set_config('application_name', $1, false)", application_name
                )
            except _BROKEN:  # its backend was terminated while it sat here
                connection.terminate()
                continue
            self.reused += 1
            return connection
        self.opened += 1
        return await self.database.connect(application_name=application_name)

    def give(self, connection: asyncpg.Connection | None) -> None:
        """Keep ``connection`` if it is clean; otherwise drop it."""
        if connection is None or connection.is_closed():
            return
        if connection.is_in_transaction():
            connection.terminate()
            return
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._discard_all()
            self._loop = loop
        self._idle.append(connection)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(*_BROKEN):
                await connection.close(timeout=2)

    def _discard_all(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.terminate()


__all__ = ["SpareConnections"]

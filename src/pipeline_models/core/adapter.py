"""How the checker drives a system it did not write: the spec, and three verbs.

An adapter is small: its :class:`~pipeline_models.core.spec.Spec`, how to make the
system's tables ready and empty, how to enqueue a job, and how to run one worker (its
own main loop, unchanged: the checker runs it as tasks of its own and interposes where
it talks to the world). Crashing a worker needs nothing from the adapter: the checker
terminates its database sessions and cancels its tasks.

Example (the guide's worker, ``docs/own-worker.md``)::

    class GuideAdapter(Adapter):
        spec = Spec.from_toml(Path(__file__).with_name("spec.toml"))

        async def setup(self, connection):
            await connection.execute(SCHEMA)
            await connection.execute("TRUNCATE guide.jobs RESTART IDENTITY")

        async def enqueue(self, connection, number):
            return await connection.fetchval(
                "INSERT INTO guide.jobs (payload) VALUES ($1) RETURNING id", f"job {number}"
            )

        async def run_worker(self, name, dsn):
            await guide_worker.run(dsn)
"""

from __future__ import annotations

from typing import Any, ClassVar

import asyncpg

from pipeline_models.core.invariants import Finding
from pipeline_models.core.spec import Spec


class Adapter:
    """Subclass it, set :attr:`spec`, write the three verbs."""

    spec: ClassVar[Spec]
    # The database being checked (set by the checker before :meth:`setup`): where an
    # adapter opens connections of its own, e.g. to create its tables.
    dsn: str = ""

    async def setup(self, connection: asyncpg.Connection) -> None:
        """Make the system's tables exist and be empty: each example starts from nothing.
        Called before every example, on a connection of the checker's."""
        raise NotImplementedError

    async def enqueue(self, connection: asyncpg.Connection, number: int) -> Any:
        """Add the ``number``-th job of this example (0, 1, ...) as the system's users
        would; return its id."""
        raise NotImplementedError

    async def run_worker(self, name: str, dsn: str) -> None:
        """Run one worker's main loop until it is cancelled. ``name`` is the checker's
        name for it; ``dsn`` the database to connect to (``asyncpg.connect(dsn)`` and
        ``asyncpg.create_pool(dsn)`` hand out checked connections while checking)."""
        raise NotImplementedError

    async def findings_at_end(self, connection: asyncpg.Connection) -> list[Finding]:
        """The system's own invariants beyond the queue, judged once the drain has
        finished every job: its other tables, read on a connection of the checker's (a
        document pipeline's chunks and vectors, say). Reported with the queue's findings,
        after them. None by default."""
        return []

    async def teardown(self, connection: asyncpg.Connection) -> None:
        """After the last example (optional)."""


__all__ = ["Adapter"]

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

Besides enqueueing, a system has other users: an API that takes the same upload twice, a
webhook, an operator, a service that fails. Each is an :func:`action`, a coroutine method
of the adapter that the machine draws as a rule of its own, with strategies for its
arguments::

        @action(kind=st.sampled_from(["timeout", "500"]))
        async def fail_the_next_call(self, kind):
            self.service.fail_next(kind)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import asyncpg
from hypothesis.strategies import SearchStrategy

from pipeline_models.core.invariants import Finding
from pipeline_models.core.spec import Spec

F = TypeVar("F", bound=Callable[..., Any])
ACTION = "_pipeline_models_action"
INTERLEAVED = "_pipeline_models_interleaved"


def action(*, interleaved: bool = False, **arguments: SearchStrategy[Any]) -> Callable[[F], F]:
    """Make an adapter's coroutine method a rule of the queue machine, its ``arguments``
    drawn from the strategies given.

    The action runs as an actor of its own (named after it: ``upload_again #3``), round
    trip by round trip like a worker, so its writes are told apart from the workers'
    and a statement that waits on a worker's row lock does not hang the program: the
    action finishes when the lock is released (and before the drain ends). It may return
    :class:`~pipeline_models.core.invariants.Finding` objects (a status code the system
    must not answer, say): they are reported with the queue's, after them. An exception
    it raises is a finding too (``actions``: the system failed one of its users).

    ``interleaved``: the machine also draws ``start_<name>``, which starts the action and
    leaves it before its first round trip, and ``step_an_action``, which moves a started
    action one round trip on: two requests (two uploads of the same bytes, a webhook and
    a worker) race statement by statement, as the program says. The drain lets every
    started action finish."""

    def mark(method: F) -> F:
        setattr(method, ACTION, arguments)
        setattr(method, INTERLEAVED, interleaved)
        return method

    return mark


def actions_of(adapter: type[Adapter]) -> dict[str, dict[str, SearchStrategy[Any]]]:
    """Every :func:`action` of ``adapter`` (its own and inherited), by name."""
    found = {}
    for name in dir(adapter):
        arguments = getattr(getattr(adapter, name, None), ACTION, None)
        if arguments is not None:
            found[name] = arguments
    return found


def interleaved_actions_of(adapter: type[Adapter]) -> list[str]:
    """The actions of ``adapter`` declared ``interleaved`` (see :func:`action`)."""
    return [name for name in actions_of(adapter) if getattr(getattr(adapter, name), INTERLEAVED)]


class Adapter:
    """Subclass it, set :attr:`spec`, write the three verbs."""

    spec: ClassVar[Spec]
    # The database being checked (set by the checker before :meth:`setup`): where an
    # adapter opens connections of its own, e.g. to create its tables.
    dsn: str = ""
    # The checker's time one round trip of a worker takes. 0: time moves only when the
    # program moves it (and by sleeps). A system whose leases must outlast its work sets
    # it (the reference: 1 s), so that a lease taken at the claim runs down while the
    # worker works, as it would in production.
    seconds_per_round_trip: ClassVar[float] = 0.0
    # The worker reconnects when the server ends its database sessions (a failover, an
    # idle timeout). True: the machine draws lose_the_connection, which ends a worker's
    # sessions and lets it live on, and it must lose nothing.
    reconnects: ClassVar[bool] = False
    # More seconds advance_clock may step, beside those around the spec's timeout: the
    # durations only the system knows (its backoffs, its poll interval, a signature's
    # replay window), each and a second before, so that each runs out one rule away.
    clock_steps: ClassVar[tuple[int, ...]] = ()
    # Loggers of the system held to errors while it is checked: the machine crashes its
    # workers and cuts their connections on purpose, and warnings about that (the
    # reference's "database connection lost") are the plan, not news.
    quiet_loggers: ClassVar[tuple[str, ...]] = ()

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

    async def heal(self) -> None:
        """When the drain gets no further: the outside world recovers (faults end, a
        spending cap is lifted), so that every job can finish. The drain first runs the
        world as the program left it (what the program set up for work it never ran meets
        the drain's), and heals it once a few rounds in a row changed no job. Run as an
        action (``heal``): its writes are observed and judged like any other. Nothing by
        default."""

    async def arrive_late(self) -> None:
        """Once the drain has finished every job: what the outside world still owes
        arrives, late, as at-least-once delivery allows (a provider's queued webhooks, a
        notice sent again). Run as an action (``arrive_late``), its writes observed and
        judged like any other; then the workers run on and the drain judges liveness
        again. A late notice for a finished job must change nothing. Nothing by default
        (and then the drain ends at once)."""

    async def findings_after_each_step(self, connection: asyncpg.Connection) -> list[Finding]:
        """The system's own invariants that hold between any two round trips, judged after
        every rule and every step of the drain, on a connection of the checker's (so on
        committed rows only): a counter equal to the rows it counts, no result row before
        its job is done, a ledger that adds up. A bug whose harm the drain later hides (a
        counter that overcounts and is then corrected, a row written and later replaced)
        is seen only here. Reported with the queue's findings, after them. None by
        default (and then no round trip is spent on it)."""
        return []

    async def findings_at_end(self, connection: asyncpg.Connection) -> list[Finding]:
        """The system's own invariants beyond the queue, judged once the drain has
        finished every job: its other tables, read on a connection of the checker's (a
        document pipeline's chunks and vectors, say). Reported with the queue's findings,
        after them. None by default."""
        return []

    async def teardown(self, connection: asyncpg.Connection) -> None:
        """After the last example, before the checker's connections and server go:
        close what outlives one example (a pool, an in-process API). Optional."""


__all__ = ["Adapter", "action", "actions_of"]

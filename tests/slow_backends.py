"""Backends made slow on purpose: a Postgres backend stopped (SIGSTOP) for a while, as a
machine under load leaves a process unscheduled.

A backend the lock manager has just released from a lock wait still reports
``wait_event_type = 'Lock'`` until it runs again (the waiter clears its own wait event),
so a stopped one shows what a loaded machine shows now and then: a statement on its way
that reads as blocked. Only for a server on this machine (an embedded one, or a
DATABASE_URL on localhost whose backends this process may signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator

import pytest


def local_backend(pid: int) -> bool:
    """Whether ``pid`` is a Postgres backend on this machine that we may stop."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            command = cmdline.read()
    except OSError:
        return False
    return b"postgres" in command or b"postmaster" in command


def require_local_backend(pid: int) -> None:
    if not local_backend(pid):
        # A server on another machine (a DATABASE_URL elsewhere): its backends cannot be
        # stopped from here. The embedded server's and CI's local server's always can.
        pytest.skip(f"backend {pid} is not a Postgres process of this machine")


@contextlib.contextmanager
def stopped_for(
    pid: int, seconds: float, loop: asyncio.AbstractEventLoop | None = None
) -> Iterator[None]:
    """Stop backend ``pid`` now and let it run again ``seconds`` later (on ``loop``, by
    default the running one: while it runs), or at the latest when the block ends."""
    loop = loop or asyncio.get_running_loop()
    os.kill(pid, signal.SIGSTOP)
    handle = loop.call_later(seconds, os.kill, pid, signal.SIGCONT)
    try:
        yield
    finally:
        handle.cancel()
        os.kill(pid, signal.SIGCONT)

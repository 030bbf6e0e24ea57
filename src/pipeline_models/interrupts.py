"""Ctrl-C stops a long command; it is not a failure.

A command stopped by Ctrl-C says what it did until then and exits 130 (128 + SIGINT, what
a shell reports for a job it interrupted), never 1, which says a failure was found. A run
that keeps a report (``check``, ``fuzz``) raises :class:`Interrupted` with what it had
done: still a KeyboardInterrupt to a caller that knows nothing more.

The machines stop where it is safe: inside :func:`deferred_ctrl_c`, Ctrl-C only asks,
and a machine raises KeyboardInterrupt at its next example or rule
(:func:`stop_if_asked`). Raised wherever the main thread happens to be, in the middle of
the event loop, it could land in a library that swallows it (the run went on to its
end) or leave tasks whose errors asyncio then prints as tracebacks.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from hypothesis.reporting import current_reporter, with_reporter

EXIT_CODE = 130

# What Hypothesis prints when something other than a failure (Ctrl-C) ends a test whose
# seed it chose itself.
_SEED_ADVICE = "You can reproduce this failure by adding @seed("


class _Request:
    asked = False


def stop_if_asked() -> None:
    """Raise KeyboardInterrupt if Ctrl-C asked to stop (inside :func:`deferred_ctrl_c`):
    called by the machines where stopping leaves nothing half done."""
    if _Request.asked:
        _Request.asked = False
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred_ctrl_c() -> Iterator[None]:
    """Within the block, Ctrl-C asks the machines to stop at their next safe point
    (:func:`stop_if_asked`) instead of interrupting whatever runs; a second Ctrl-C, for a
    run that does not get there, raises at once. Without effect outside the main thread,
    or where SIGINT is ignored (a background job of a script)."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous in (
        signal.SIG_IGN,
        None,
    ):
        yield
        return

    def ask(signum: int, frame: object) -> None:
        if _Request.asked:
            raise KeyboardInterrupt
        _Request.asked = True

    signal.signal(signal.SIGINT, ask)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _Request.asked = False


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; ``report`` is what it did until then."""

    def __init__(self, report: Any) -> None:
        super().__init__()
        self.report = report


def search_so_far(examples: int, failures: int, *, again: str) -> str:
    """What an interrupted search can say: how many examples it began (the last one
    perhaps cut short), and whether an invariant had failed (then Hypothesis was still
    shrinking the failure: ``again`` shows it).

    >>> search_so_far(3, 0, again="check again")
    'STOPPED by Ctrl-C after 3 examples: no invariant failed so far'
    """
    if not examples:
        return "STOPPED by Ctrl-C before the first example: nothing was checked"
    stopped = f"STOPPED by Ctrl-C after {examples} example{'s' if examples > 1 else ''}"
    if not failures:
        return f"{stopped}: no invariant failed so far"
    return (
        f"{stopped}: an invariant had failed, and Hypothesis was still shrinking the "
        f"failure; run {again} to see it"
    )


@contextlib.contextmanager
def without_seed_advice() -> Iterator[None]:
    """Hypothesis, stopped by Ctrl-C, calls it a failure and advises adding ``@seed(...)``
    to the test to reproduce it: a command was interrupted, not failed, and has no test
    to add a decorator to (``check --seed`` is how a search is repeated)."""
    report = current_reporter()

    def everything_else(value: object) -> None:
        if not str(value).startswith(_SEED_ADVICE):
            report(value)

    with with_reporter(everything_else):
        yield


__all__ = [
    "EXIT_CODE",
    "Interrupted",
    "deferred_ctrl_c",
    "search_so_far",
    "stop_if_asked",
    "without_seed_advice",
]

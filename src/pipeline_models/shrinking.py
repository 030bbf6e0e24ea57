"""How long Hypothesis may shrink a failure, and what a run says when it stops there.

Hypothesis's bound on shrinking is an engine constant (``MAX_SHRINKING_SECONDS``, 300 s),
not a setting. When a shrink reaches it, Hypothesis prints a warning that says "more than
five minutes" whatever the bound was, and asks the reader to report a Hypothesis bug.
Within :func:`shrink_limit` the bound is the caller's, and that warning is said once, in
words that fit: the shrink stopped at its limit and the program may be longer than it
needs to be.

>>> shrink_stopped(20).split(":")[0]
'shrinking stopped at its limit of 20 s (--shrink-seconds)'
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis.internal.conjecture import engine
from hypothesis.reporting import current_reporter, with_reporter

_HYPOTHESIS_SAYS = "WARNING: Hypothesis has spent more than five minutes working to shrink"


def shrink_stopped(seconds: float) -> str:
    return (
        f"shrinking stopped at its limit of {seconds:g} s (--shrink-seconds): "
        "a program may be longer than it needs to be"
    )


@contextmanager
def shrink_limit(seconds: float, said: list[str] | None = None) -> Iterator[None]:
    """Shrink each failure for at most ``seconds``; if a shrink stops there, append the
    warning to ``said`` (None: print it to stderr), once."""
    passed_on = current_reporter()

    def reporter(value: object) -> None:
        if not str(value).startswith(_HYPOTHESIS_SAYS):
            passed_on(value)
            return
        warning = shrink_stopped(seconds)
        if said is None:
            print(f"warning: {warning}", file=sys.stderr)
        elif warning not in said:
            said.append(warning)

    previous = engine.MAX_SHRINKING_SECONDS
    # Typed int, but only ever added to a clock.
    engine.MAX_SHRINKING_SECONDS = seconds  # type: ignore[assignment]
    try:
        with with_reporter(reporter):
            yield
    finally:
        engine.MAX_SHRINKING_SECONDS = previous

"""Where failures are kept: Hypothesis's example database, chosen by one string.

A fuzz session saves what it finds there; CI and ``pipeline-models repro`` read it back.
The string is a directory (the default: ``.hypothesis/examples``, Hypothesis's own) or a
Redis URL, so that many machines fuzz into one database and any of them, or CI, replays
what another found::

    redis://127.0.0.1:6379/0                     # keys under "hypothesis-example:"
    redis://127.0.0.1:6379/0?prefix=team-a:      # keys under "team-a:"

>>> example_database(None)
DirectoryBasedExampleDatabase(PosixPath('.hypothesis/examples'))
>>> example_database("/tmp/x", read_only=True)
ReadOnlyDatabase(DirectoryBasedExampleDatabase(PosixPath('/tmp/x')))
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit, urlunsplit

from hypothesis.database import (
    DirectoryBasedExampleDatabase,
    ExampleDatabase,
    ReadOnlyDatabase,
)
from hypothesis.internal.reflection import function_digest
from hypothesis.stateful import RuleBasedStateMachine, get_state_machine_test

DEFAULT_DIRECTORY = ".hypothesis/examples"
ENVIRONMENT_VARIABLE = "PIPELINE_MODELS_EXAMPLE_DATABASE"
REDIS_SCHEMES = ("redis", "rediss", "unix")


def example_database(spec: str | None, *, read_only: bool = False) -> ExampleDatabase:
    """The example database ``spec`` names (a directory or a Redis URL).

    ``read_only`` wraps it in :class:`~hypothesis.database.ReadOnlyDatabase`: a replaying
    run (CI) neither adds its own failures nor deletes what no longer fails.
    """
    spec = (spec or "").strip() or DEFAULT_DIRECTORY
    database: ExampleDatabase
    if urlsplit(spec).scheme in REDIS_SCHEMES:
        database = _redis_database(spec)
    else:
        database = DirectoryBasedExampleDatabase(spec)
    return ReadOnlyDatabase(database) if read_only else database


def resolve_spec(explicit: str | None = None) -> str | None:
    """``explicit``, else ``PIPELINE_MODELS_EXAMPLE_DATABASE``, else None (not configured)."""
    return explicit or os.environ.get(ENVIRONMENT_VARIABLE) or None


def _redis_database(url: str) -> ExampleDatabase:
    try:
        import redis
        from hypothesis.extra.redis import RedisExampleDatabase
    except ImportError as error:  # pragma: no cover - depends on the install
        raise RuntimeError(
            f"the example database {url!r} needs the redis client: "
            "pip install 'pipeline-models[fuzz]'"
        ) from error
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    prefix = query.pop("prefix", ["hypothesis-example:"])[0]
    rest = "&".join(f"{key}={value}" for key, values in query.items() for value in values)
    client = redis.Redis.from_url(urlunsplit(parts._replace(query=rest)))
    return RedisExampleDatabase(client, key_prefix=prefix.encode())


def machine_database_key(machine: type[RuleBasedStateMachine]) -> bytes:
    """The key under which Hypothesis (and HypoFuzz) keep ``machine``'s examples.

    It is the digest of the machine's source, so a fuzz session, a pytest run and a
    planted mutant (whose machines are unchanged) share it, and an edit of the machine's
    class starts a new one (the repro files are what survives such an edit).
    """
    test = get_state_machine_test(machine)
    return function_digest(test.hypothesis.inner_test)  # type: ignore[attr-defined]


__all__ = [
    "DEFAULT_DIRECTORY",
    "ENVIRONMENT_VARIABLE",
    "example_database",
    "machine_database_key",
    "resolve_spec",
]

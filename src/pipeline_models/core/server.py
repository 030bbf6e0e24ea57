"""The Postgres server a check runs on: ``DATABASE_URL``, or an embedded throwaway one.

Without a URL (argument, then ``DATABASE_URL``) an embedded server starts on first use
and stops with the process (:mod:`pipeline_models.embedded`). A bad URL fails fast,
before any work, with a message that names the URL (password hidden) and what to do.

>>> redact("postgresql://me:secret@db:5432/jobs")
'postgresql://me:***@db:5432/jobs'
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from pipeline_models.embedded import EmbeddedPostgres
from pipeline_models.errors import DatabaseConfigurationError

ENVIRONMENT_VARIABLE = "DATABASE_URL"
CONNECT_TIMEOUT = 5.0
_SCHEMES = ("postgresql", "postgres")


def redact(url: str) -> str:
    """The URL with its password replaced by ``***``: safe to print."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    host = netloc[1] if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def resolve_url(explicit: str | None = None) -> str | None:
    """The URL to use: ``explicit``, else ``DATABASE_URL``, else None (embedded)."""
    url = explicit or os.environ.get(ENVIRONMENT_VARIABLE) or None
    return url.strip() if url else None


def _validate_url(url: str) -> None:
    try:
        scheme = urlsplit(url).scheme
    except ValueError as error:
        raise DatabaseConfigurationError(
            f"DATABASE_URL {redact(url)!r} is not a URL ({error}); expected "
            "postgresql://user:password@host:5432/database"
        ) from None
    if scheme not in _SCHEMES:
        raise DatabaseConfigurationError(
            f"DATABASE_URL {redact(url)!r} has scheme {scheme or '(none)'!r}; pipeline-models "
            "needs Postgres: postgresql://user:password@host:5432/database, or unset "
            "DATABASE_URL to use the embedded Postgres"
        )


def _explain_connect_error(url: str, error: BaseException) -> DatabaseConfigurationError:
    shown = redact(url)
    fallback = "Fix DATABASE_URL, or unset it to use the embedded Postgres."
    if isinstance(
        error, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        why = f"Postgres at {shown!r} refused the credentials: {error}. Check user and password."
    elif isinstance(error, asyncpg.InvalidCatalogNameError):
        why = f"Postgres at {shown!r} has no such database: {error}. Create it (createdb)."
    elif isinstance(error, TimeoutError | asyncio.TimeoutError):
        why = f"Postgres at {shown!r} did not answer within {CONNECT_TIMEOUT:g} s."
    elif isinstance(error, socket.gaierror):
        why = f"the host in {shown!r} does not resolve ({error})."
    elif isinstance(error, ConnectionRefusedError):
        why = f"nothing accepts connections at {shown!r} (connection refused). Is Postgres running?"
    elif isinstance(error, OSError):
        why = f"could not reach Postgres at {shown!r}: {error}."
    else:
        why = f"could not connect to Postgres at {shown!r}: {type(error).__name__}: {error}."
    return DatabaseConfigurationError(f"{why} {fallback}")


async def connect(url: str, **server_settings: str) -> asyncpg.Connection:
    """A new connection to ``url`` with these server settings; a wrong or unreachable URL
    fails within seconds, naming the URL (password hidden) and the fix."""
    try:
        return await asyncpg.connect(
            url, timeout=CONNECT_TIMEOUT, server_settings=dict(server_settings)
        )
    except (asyncpg.PostgresError, OSError, TimeoutError, asyncpg.InterfaceError) as error:
        raise _explain_connect_error(url, error) from error
    except ValueError as error:  # asyncpg's DSN parser
        raise DatabaseConfigurationError(
            f"DATABASE_URL {redact(url)!r} is malformed: {error}"
        ) from None


@dataclass
class Server:
    """A Postgres server: the URL's, or an embedded one this object started (and stops
    on :meth:`close`, or at the end of a ``with`` block)."""

    url: str
    embedded: EmbeddedPostgres | None = None

    @classmethod
    def from_environment(cls, url: str | None = None) -> Server:
        resolved = resolve_url(url)
        if resolved is None:
            server = EmbeddedPostgres.start()
            return cls(server.url, embedded=server)
        _validate_url(resolved)
        return cls(resolved)

    @property
    def display_url(self) -> str:
        return "embedded Postgres" if self.embedded else redact(self.url)

    async def connect(self, *, application_name: str, **settings: str) -> asyncpg.Connection:
        """A new connection named ``application_name``, with these server settings."""
        return await connect(self.url, application_name=application_name, **settings)

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = ["CONNECT_TIMEOUT", "ENVIRONMENT_VARIABLE", "Server", "connect", "redact", "resolve_url"]

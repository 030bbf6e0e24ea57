"""Signed parser webhooks: the scheme both the sender (the fake parser) and the receiver
(the pipeline's API) use. Pure: no I/O, no clock of its own.

A webhook is an HTTP POST whose body is signed together with a timestamp::

    X-Pipeline-Timestamp: 1767225600
    X-Pipeline-Signature: v1=<hex>[,v1=<hex>...]

Each ``v1`` entry is the lowercase hex HMAC-SHA256, under one secret, of
``f"{timestamp}.".encode() + body``. Signing the timestamp with the body stops a replayed
webhook from being passed off as fresh; the receiver accepts a timestamp within a
tolerance (300 s by default) of its own clock, in both directions. A sender that
rotates its secret signs with the new and the old one, so a receiver that knows
either accepts the webhook; a receiver lists the secrets it still accepts in
:class:`WebhookSecrets`, current first.

The body is a :class:`ParserWebhook` as compact JSON.

>>> from datetime import UTC, datetime
>>> secrets = WebhookSecrets.from_env("new-secret,old-secret")
>>> body = ParserWebhook(job_id="job-1", status="SUCCESS").to_json()
>>> body
b'{"error_message":null,"job_id":"job-1","status":"SUCCESS"}'
>>> headers = sign(body, secrets=secrets, timestamp=1767225600)
>>> sorted(headers)
['X-Pipeline-Signature', 'X-Pipeline-Timestamp']
>>> a_minute_later = datetime.fromtimestamp(1767225660, UTC)
>>> verify(headers, body, secrets=secrets, now=a_minute_later)
1767225600
>>> ParserWebhook.from_json(body)
ParserWebhook(job_id='job-1', status='SUCCESS', error_message=None)
>>> tampered = body.replace(b"SUCCESS", b"ERROR__")
>>> try:
...     verify(headers, tampered, secrets=secrets, now=a_minute_later)
... except WebhookRejected as rejected:
...     print(rejected.code)
signature_mismatch
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from fractions import Fraction
from typing import Any, Literal, overload

from pipeline_models.errors import PipelineModelsError

TIMESTAMP_HEADER = "X-Pipeline-Timestamp"
"""Header carrying the signing time, in integer unix seconds."""

SIGNATURE_HEADER = "X-Pipeline-Signature"
"""Header carrying one ``v1=<hex>`` entry per signing secret, comma-separated."""

SIGNATURE_SCHEME = "v1"
"""The signature scheme this module writes and checks: HMAC-SHA256, lowercase hex."""

DEFAULT_TOLERANCE_SECONDS = 300.0
"""How far a webhook's timestamp may be from the receiver's clock, either way."""

WEBHOOK_STATUSES = ("SUCCESS", "ERROR")
"""The job statuses a parser webhook announces (a pending job sends none)."""

WebhookStatus = Literal["SUCCESS", "ERROR"]

# Canonical integers only: a timestamp with a sign, leading zeros or non-ASCII digits
# would have more than one spelling for the same signed value. Fifteen digits reach
# thirty million years, and keep a hostile header from costing a huge int parse.
_TIMESTAMP = re.compile(r"0|[1-9][0-9]{0,14}")
_HEX_SIGNATURE = re.compile(r"[0-9a-f]{64}")


class Rejection(StrEnum):
    """Why a webhook was rejected: :attr:`WebhookRejected.code`."""

    MISSING_HEADER = "missing_header"
    MALFORMED_TIMESTAMP = "malformed_timestamp"
    MALFORMED_SIGNATURE = "malformed_signature"
    SIGNATURE_MISMATCH = "signature_mismatch"
    STALE_TIMESTAMP = "stale_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    MALFORMED_PAYLOAD = "malformed_payload"
    OTHER = "other"
    """Raised by the receiver's own checks (an unknown job, say), not by this module."""


class WebhookRejected(PipelineModelsError):
    """A webhook failed verification or its payload is unusable; it must not be acted on.

    ``reason`` says what was wrong, for logs and the error response (it never contains
    a secret); ``code`` is the :class:`Rejection`, for code that branches on it.

    >>> WebhookRejected("no signature", code=Rejection.SIGNATURE_MISMATCH).code
    <Rejection.SIGNATURE_MISMATCH: 'signature_mismatch'>
    """

    def __init__(self, reason: str, *, code: Rejection = Rejection.OTHER) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


def _fingerprint(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode("utf-8")).hexdigest()[:8]


def _check_secrets(secrets: Sequence[str], where: str) -> tuple[str, ...]:
    # A bare string is a Sequence[str] too: "abc" would mean three one-letter secrets.
    if isinstance(secrets, str | bytes):
        raise TypeError(
            f"{where}: secrets must be a sequence of strings such as [current, previous], "
            "not a single string; use WebhookSecrets.from_env('new,old') to parse one"
        )
    checked = tuple(secrets)
    if not checked:
        raise ValueError(f"{where}: at least one secret is needed")
    for index, secret in enumerate(checked):
        if not isinstance(secret, str):
            raise TypeError(f"{where}: secret #{index + 1} is a {type(secret).__name__}, not str")
        if not secret:
            raise ValueError(f"{where}: secret #{index + 1} is empty")
        try:
            secret.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"{where}: secret #{index + 1} is not valid Unicode (it holds a lone surrogate)"
            ) from None
    return checked


@dataclass(frozen=True, repr=False)
class WebhookSecrets(Sequence[str]):
    """The webhook secrets in force: the first is current, the rest are still accepted
    while a rotation completes. It is a sequence of strings, so it can be passed as
    ``secrets=`` to :func:`sign` and :func:`verify`. Its repr shows how many secrets
    there are and a short SHA-256 fingerprint of each, never a secret.

    >>> secrets = WebhookSecrets.from_env(" new-secret , old-secret ")
    >>> secrets.current
    'new-secret'
    >>> secrets
    WebhookSecrets(2 secrets: sha256:fc97bb52, sha256:5d865dea)
    >>> WebhookSecrets.from_env("new-secret,")
    Traceback (most recent call last):
    ...
    ValueError: webhook secrets: secret #2 of 2 is empty; expected "current[,previous...]"
    """

    secrets: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "secrets", _check_secrets(self.secrets, "WebhookSecrets"))

    @classmethod
    def from_env(cls, value: str) -> WebhookSecrets:
        """Parse ``"current[,previous...]"`` (an environment variable's value).

        Whitespace around each secret is dropped; an empty secret is an error (a
        trailing comma would otherwise accept webhooks signed with the empty key). The
        error never shows a secret.
        """
        if not isinstance(value, str):
            raise TypeError(f"webhook secrets: expected a string, got {type(value).__name__}")
        parts = [part.strip() for part in value.split(",")]
        for index, part in enumerate(parts):
            if not part:
                raise ValueError(
                    f"webhook secrets: secret #{index + 1} of {len(parts)} is empty; "
                    'expected "current[,previous...]"'
                )
        return cls(tuple(parts))

    @property
    def current(self) -> str:
        """The secret a sender signs with first (and, after a rotation, only)."""
        return self.secrets[0]

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...

    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return self.secrets[index]

    def __len__(self) -> int:
        return len(self.secrets)

    def __iter__(self) -> Iterator[str]:
        return iter(self.secrets)

    def __repr__(self) -> str:
        count = len(self.secrets)
        noun = "secret" if count == 1 else "secrets"
        prints = ", ".join(_fingerprint(secret) for secret in self.secrets)
        return f"WebhookSecrets({count} {noun}: {prints})"


def _seconds(value: Fraction | float) -> str:
    # Microsecond precision without float noise: "301", "300.000001".
    return f"{float(value):.6f}".rstrip("0").rstrip(".")


def _signature(secret: str, timestamp: int, body: bytes) -> str:
    message = f"{timestamp}.".encode("ascii") + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign(body: bytes, *, secrets: Sequence[str], timestamp: int) -> dict[str, str]:
    """The two signature headers for ``body`` sent at ``timestamp`` (unix seconds),
    with one ``v1`` entry per secret, in the order given (duplicates once).

    >>> headers = sign(b"{}", secrets=["k"], timestamp=0)
    >>> headers["X-Pipeline-Timestamp"], headers["X-Pipeline-Signature"][:7]
    ('0', 'v1=c847')
    """
    if not isinstance(body, bytes):
        raise TypeError(f"sign: body must be bytes, got {type(body).__name__}")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError(f"sign: timestamp must be an int of unix seconds >= 0, got {timestamp!r}")
    if _TIMESTAMP.fullmatch(str(timestamp)) is None:
        raise ValueError(f"sign: timestamp {timestamp} has more than 15 digits")
    accepted = dict.fromkeys(_check_secrets(secrets, "sign"))
    entries = [f"{SIGNATURE_SCHEME}={_signature(s, timestamp, body)}" for s in accepted]
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: ",".join(entries)}


def _header(headers: Mapping[str, str], name: str) -> str:
    # Starlette's and httpx's Headers look names up case-insensitively and yield every
    # field line from items(); a plain dict does neither. Scanning items() handles both,
    # and joins repeated lines with commas as HTTP does for list-valued fields.
    wanted = name.lower()
    values = [value for key, value in headers.items() if key.lower() == wanted]
    if not values:
        raise WebhookRejected(f"the {name} header is missing", code=Rejection.MISSING_HEADER)
    return ",".join(values)


def _timestamp(value: str) -> int:
    text = value.strip()
    if _TIMESTAMP.fullmatch(text) is None:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise WebhookRejected(
            f"the {TIMESTAMP_HEADER} header must be integer unix seconds, got {shown!r}",
            code=Rejection.MALFORMED_TIMESTAMP,
        )
    return int(text)


def _v1_signatures(value: str) -> list[str]:
    found = []
    for entry in value.split(","):
        scheme, equals, signature = entry.strip().partition("=")
        if not equals:
            raise WebhookRejected(
                f"each {SIGNATURE_HEADER} entry must look like v1=<hex>; "
                f"an entry has no '=' ({len(entry)} characters)",
                code=Rejection.MALFORMED_SIGNATURE,
            )
        if scheme != SIGNATURE_SCHEME:
            continue  # another scheme, for receivers that know it
        if _HEX_SIGNATURE.fullmatch(signature) is None:
            raise WebhookRejected(
                f"a {SIGNATURE_HEADER} v1 entry must be 64 lowercase hex digits "
                f"(HMAC-SHA256), got {len(signature)} characters",
                code=Rejection.MALFORMED_SIGNATURE,
            )
        found.append(signature)
    if not found:
        raise WebhookRejected(
            f"the {SIGNATURE_HEADER} header has no v1 entry", code=Rejection.MALFORMED_SIGNATURE
        )
    return found


def _exact_seconds(when: datetime) -> Fraction:
    # Exact arithmetic, so that a timestamp exactly at the tolerance is accepted whatever
    # the float rounding of datetime.timestamp() would make of it.
    offset = when.utcoffset()
    if offset is None:
        raise ValueError(
            f"verify: now must be timezone-aware, got {when!r}; pass clock.now() or "
            "datetime.now(UTC)"
        )
    naive_utc = when.replace(tzinfo=None) - offset
    delta = naive_utc - datetime(1970, 1, 1)
    return Fraction(delta.days * 86_400 + delta.seconds) + Fraction(delta.microseconds, 10**6)


def verify(
    headers: Mapping[str, str],
    body: bytes,
    *,
    secrets: Sequence[str],
    now: datetime,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
) -> int:
    """Check a webhook's signature and freshness; its timestamp, or :class:`WebhookRejected`.

    ``headers`` may be any mapping (names are matched case-insensitively); ``body`` is
    the raw request body, exactly as received. The webhook is accepted when some ``v1``
    entry matches some secret in ``secrets`` and the timestamp is within
    ``tolerance_seconds`` of ``now`` (a timezone-aware time: pass the receiver's
    ``clock.now()``), boundaries included. The signature is checked before the time,
    so a stale or future rejection is only ever reported for an authentic webhook.

    >>> from datetime import UTC, datetime
    >>> headers = sign(b"{}", secrets=["k"], timestamp=1000)
    >>> verify(headers, b"{}", secrets=["k"], now=datetime.fromtimestamp(1300, UTC))
    1000
    >>> try:
    ...     verify(headers, b"{}", secrets=["k"], now=datetime.fromtimestamp(1301, UTC))
    ... except WebhookRejected as rejected:
    ...     print(rejected.code, "-", rejected.reason)
    stale_timestamp - the webhook was signed 301 s ago; at most 300 s are accepted
    """
    accepted = _check_secrets(secrets, "verify")
    if (
        isinstance(tolerance_seconds, bool)
        or not isinstance(tolerance_seconds, int | float)
        or not math.isfinite(tolerance_seconds)
        or tolerance_seconds < 0
    ):
        raise ValueError(
            f"verify: tolerance_seconds must be a finite number >= 0, got {tolerance_seconds!r}"
        )
    if not isinstance(body, bytes):
        raise TypeError(f"verify: body must be the raw bytes, got {type(body).__name__}")
    now_seconds = _exact_seconds(now)
    timestamp_value = _header(headers, TIMESTAMP_HEADER)
    signature_value = _header(headers, SIGNATURE_HEADER)
    timestamp = _timestamp(timestamp_value)
    offered = _v1_signatures(signature_value)

    expected = [_signature(secret, timestamp, body) for secret in accepted]
    # compare_digest for every pair: the time taken says nothing about how many leading
    # characters of a forged signature were right.
    matched = False
    for candidate in offered:
        for signature in expected:
            matched |= hmac.compare_digest(candidate, signature)
    if not matched:
        raise WebhookRejected(
            f"no {SIGNATURE_HEADER} v1 entry ({len(offered)} offered) matches any of the "
            f"{len(accepted)} accepted secrets: the body, the timestamp or the secret differs "
            "from what the sender signed",
            code=Rejection.SIGNATURE_MISMATCH,
        )

    age = now_seconds - timestamp
    tolerance = Fraction(tolerance_seconds)
    if age > tolerance:
        raise WebhookRejected(
            f"the webhook was signed {_seconds(age)} s ago; at most {_seconds(tolerance)} s "
            "are accepted",
            code=Rejection.STALE_TIMESTAMP,
        )
    if -age > tolerance:
        raise WebhookRejected(
            f"the webhook's timestamp is {_seconds(-age)} s in the future; at most "
            f"{_seconds(tolerance)} s of clock skew are accepted",
            code=Rejection.FUTURE_TIMESTAMP,
        )
    return timestamp


@dataclass(frozen=True)
class ParserWebhook:
    """What a parser webhook says: which job finished, and how.

    ``status`` is ``"SUCCESS"`` or ``"ERROR"``; an ``ERROR`` carries the parser's
    ``error_message`` (what the job dead-letters with), a ``SUCCESS`` carries none.

    >>> ParserWebhook(job_id="j", status="ERROR", error_message="not a PDF").to_json()
    b'{"error_message":"not a PDF","job_id":"j","status":"ERROR"}'
    """

    job_id: str
    status: WebhookStatus
    error_message: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.job_id, str) or not self.job_id:
            raise ValueError(f"ParserWebhook.job_id must be a non-empty str, got {self.job_id!r}")
        if self.status not in WEBHOOK_STATUSES:
            raise ValueError(
                f"ParserWebhook.status must be one of {', '.join(WEBHOOK_STATUSES)}, "
                f"got {self.status!r}"
            )
        if self.status == "SUCCESS" and self.error_message is not None:
            raise ValueError("ParserWebhook: a SUCCESS carries no error_message")
        if self.status == "ERROR" and not isinstance(self.error_message, str):
            raise ValueError(
                f"ParserWebhook: an ERROR needs an error_message str, got {self.error_message!r}"
            )

    def to_json(self) -> bytes:
        """The body: compact ASCII JSON with sorted keys, so the bytes are deterministic."""
        payload = {
            "job_id": self.job_id,
            "status": self.status,
            "error_message": self.error_message,
        }
        # ASCII escapes: any str serialises, lone surrogates in an error message included.
        return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("ascii")

    @classmethod
    def from_json(cls, body: bytes) -> ParserWebhook:
        """Read a verified body; :class:`WebhookRejected` (``malformed_payload``) if it is
        not a JSON object with a valid ``job_id``, ``status`` and ``error_message``.
        Unknown fields are ignored, so a sender may add some."""
        try:
            payload: Any = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise WebhookRejected(
                f"the webhook body is not UTF-8 JSON: {error}", code=Rejection.MALFORMED_PAYLOAD
            ) from None
        if not isinstance(payload, dict):
            raise WebhookRejected(
                f"the webhook body must be a JSON object, got {type(payload).__name__}",
                code=Rejection.MALFORMED_PAYLOAD,
            )
        # Typed Any: __post_init__ checks the types of what the JSON held.
        job_id: Any = payload.get("job_id")
        status: Any = payload.get("status")
        error_message: Any = payload.get("error_message")
        try:
            return cls(job_id=job_id, status=status, error_message=error_message)
        except ValueError as error:
            raise WebhookRejected(
                f"the webhook body has invalid fields: {error}", code=Rejection.MALFORMED_PAYLOAD
            ) from None


__all__ = [
    "DEFAULT_TOLERANCE_SECONDS",
    "SIGNATURE_HEADER",
    "SIGNATURE_SCHEME",
    "TIMESTAMP_HEADER",
    "WEBHOOK_STATUSES",
    "ParserWebhook",
    "Rejection",
    "WebhookRejected",
    "WebhookSecrets",
    "WebhookStatus",
    "sign",
    "verify",
]

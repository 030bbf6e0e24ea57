"""Bearer tokens for the upload API: signed JWTs (HS256) that name one user.

Expiry is checked against the pipeline's Clock, not the wall clock, so a test that owns
time owns token expiry too.

>>> from pipeline_models.clock import ManualClock
>>> tokens = TokenIssuer("a-long-enough-secret-for-tests-0123456789", clock=ManualClock())
>>> user = uuid.UUID(int=7)
>>> tokens.verify(tokens.issue(user)) == user
True
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field

import jwt

from pipeline_models.clock import Clock, SystemClock
from pipeline_models.errors import PipelineModelsError

_ISSUER = "pipeline-models"
_MIN_SECRET_BYTES = 32


class AuthenticationError(PipelineModelsError):
    """A missing, malformed, forged or expired bearer token."""


@dataclass(frozen=True)
class TokenIssuer:
    """Issues and verifies the API's bearer tokens."""

    secret: str = field(repr=False)
    ttl_seconds: int = 3600
    clock: Clock = field(default_factory=SystemClock)

    def __post_init__(self) -> None:
        if len(self.secret.encode()) < _MIN_SECRET_BYTES:
            raise ValueError(
                f"the token secret must have at least {_MIN_SECRET_BYTES} bytes "
                "(set PIPELINE_TOKEN_SECRET to a long random string)"
            )

    def issue(self, user_id: uuid.UUID, *, ttl_seconds: int | None = None) -> str:
        """A token for ``user_id``, valid for ``ttl_seconds`` from the clock's now."""
        now = int(self.clock.now().timestamp())
        claims = {
            "sub": str(user_id),
            "iss": _ISSUER,
            "iat": now,
            "exp": now + (self.ttl_seconds if ttl_seconds is None else ttl_seconds),
        }
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def verify(self, token: str) -> uuid.UUID:
        """The user a valid token names; :class:`AuthenticationError` otherwise."""
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                issuer=_ISSUER,
                options={"verify_exp": False, "require": ["sub", "exp", "iss"]},
            )
        except jwt.InvalidTokenError as error:
            raise AuthenticationError(f"invalid token: {error}") from None
        if claims["exp"] <= self.clock.now().timestamp():
            raise AuthenticationError("the token has expired")
        try:
            return uuid.UUID(str(claims["sub"]))
        except ValueError:
            raise AuthenticationError("the token does not name a user") from None

    def __repr__(self) -> str:
        digest = hashlib.sha256(self.secret.encode()).hexdigest()[:8]
        return f"TokenIssuer(secret=<sha256 {digest}…>, ttl_seconds={self.ttl_seconds})"


__all__ = ["AuthenticationError", "TokenIssuer"]

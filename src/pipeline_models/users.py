"""The users who upload documents.

Uploads dedupe per user: the same bytes uploaded twice by one user are one document,
by two users two documents. The API authenticates a request as one of these users.

>>> import uuid
>>> alice = User(uuid.UUID(int=1), "alice")
>>> alice
User(user_id=UUID('00000000-0000-0000-0000-000000000001'), name='alice')
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class User:
    """A user of the pipeline: a stable id and a display name (names need not be unique)."""

    user_id: uuid.UUID
    name: str


__all__ = ["User"]

"""Hypothesis strategies for the users who upload documents.

>>> from hypothesis import given
>>> @given(distinct_users(min_size=2, max_size=3))
... def test_ids_differ(users):
...     assert len({user.user_id for user in users}) == len(users)
>>> test_ids_differ()
"""

from __future__ import annotations

import string

import hypothesis.strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.strategies import SearchStrategy

from pipeline_models.users import User

# A small alphabet keeps shrunk names short and readable ("a", "ab") in reports.
_NAMES = st.text(string.ascii_lowercase[:8], min_size=1, max_size=8)


def users(*, names: SearchStrategy[str] | None = None) -> SearchStrategy[User]:
    """Users with an id from ``st.uuids()`` and a name from ``names``.

    ``names`` defaults to one to eight letters from ``a`` to ``h``. Two draws may give
    the same user; use :func:`distinct_users` for several users in one test.
    """
    if names is None:
        names = _NAMES
    elif not isinstance(names, SearchStrategy):
        raise InvalidArgument(
            f"users(names={names!r}): names must be a strategy of str, "
            f"e.g. st.sampled_from(['alice', 'bob']), not {type(names).__name__}"
        )
    return st.builds(User, user_id=st.uuids(), name=names)


def distinct_users(*, min_size: int = 1, max_size: int = 5) -> SearchStrategy[list[User]]:
    """Lists of ``min_size`` to ``max_size`` users with distinct ids and distinct names.

    Distinct names keep a shrunk failure readable: each user is told apart by name.
    """
    for name, value in (("min_size", min_size), ("max_size", max_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidArgument(
                f"distinct_users({name}={value!r}): {name} must be an int, "
                f"not {type(value).__name__}"
            )
    if not 0 <= min_size <= max_size:
        raise InvalidArgument(
            f"distinct_users(min_size={min_size!r}, max_size={max_size!r}): "
            "need 0 <= min_size <= max_size"
        )
    return st.lists(
        users(),
        min_size=min_size,
        max_size=max_size,
        unique_by=(lambda user: user.user_id, lambda user: user.name),
    )


__all__ = ["distinct_users", "users"]

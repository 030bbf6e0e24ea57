"""Strategies for fault plans: what an unreliable parser or embeddings service does."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.strategies import SearchStrategy

from pipeline_models.fakes import Fault, FaultPlan

_NETWORK_AND_HTTP = (
    st.builds(Fault.rate_limit, retry_after=st.sampled_from([None, 1.0, 7.0, 60.0])),
    st.builds(Fault.server_error, status=st.sampled_from([500, 502, 503])),
    st.just(Fault.timeout()),
    st.just(Fault.connection_error()),
    st.just(Fault.malformed_body()),
    st.builds(Fault.permanent, status=st.sampled_from([400, 401, 404, 422])),
)


def faults(*, wrong_dimension: bool = False) -> SearchStrategy[Fault]:
    """One injected fault; ``wrong_dimension`` adds the embeddings-only fault.

    Latency is left out: under the checker time is the machine's, and a real sleep only
    slows the search down.
    """
    choices = list(_NETWORK_AND_HTTP)
    if wrong_dimension:
        choices.append(st.just(Fault.wrong_dimension()))
    return st.one_of(choices)


def fault_plans(
    *,
    faults: SearchStrategy[Fault] | None = None,
    min_size: int = 1,
    max_size: int = 4,
    endpoints: SearchStrategy[frozenset[str] | None] | None = None,
) -> SearchStrategy[FaultPlan]:
    """A short script of faults and healthy requests, consumed one per request.

    Shrinks towards a single fault on every endpoint.
    """
    if min_size < 0 or max_size < min_size:
        raise InvalidArgument(f"need 0 <= min_size <= max_size, got {min_size} and {max_size}")
    fault = globals()["faults"]() if faults is None else faults
    steps = st.lists(st.one_of(fault, st.none()), min_size=min_size, max_size=max_size)
    where = st.none() if endpoints is None else endpoints
    return st.builds(lambda script, at: FaultPlan(script, endpoints=at), steps, where)


__all__ = ["fault_plans", "faults"]

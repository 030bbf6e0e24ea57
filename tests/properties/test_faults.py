"""Properties of faults and fault plans (pure: no app, no I/O)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline_models.fakes.faults import (
    ENDPOINTS,
    Fault,
    FaultKind,
    FaultPlan,
    NetworkFault,
    retry_after_header,
)

seconds = st.floats(min_value=0.001, max_value=120, allow_nan=False, allow_infinity=False)
faults = st.one_of(
    st.builds(Fault.rate_limit, st.none() | st.floats(min_value=0, max_value=120)),
    st.builds(Fault.server_error, st.integers(min_value=500, max_value=599)),
    st.builds(Fault.timeout, seconds),
    st.just(Fault.connection_error()),
    st.just(Fault.malformed_body()),
    st.just(Fault.wrong_dimension()),
    st.builds(
        Fault.permanent,
        st.integers(min_value=400, max_value=499).filter(lambda s: s not in (408, 409, 429)),
    ),
    st.builds(Fault.latency, seconds),
)
endpoint_names = st.sampled_from(sorted(ENDPOINTS))
plans = st.builds(
    FaultPlan,
    st.lists(st.none() | faults, max_size=8),
    endpoints=st.none() | st.frozensets(endpoint_names),
    repeat=st.booleans(),
    latency=st.sampled_from([0.0, 0.01, 0.5]),
)


@given(faults)
def test_a_fault_survives_a_json_round_trip(fault: Fault) -> None:
    assert Fault.from_json(json.loads(json.dumps(fault.to_json()))) == fault


@given(faults)
def test_a_fault_reprs_as_the_code_that_builds_it(fault: Fault) -> None:
    assert eval(repr(fault), {"Fault": Fault}) == fault


@given(plans)
def test_a_plan_survives_a_json_round_trip(plan: FaultPlan) -> None:
    again = FaultPlan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again.to_json() == plan.to_json()


@given(plans)
def test_a_plan_reprs_as_the_code_that_builds_it(plan: FaultPlan) -> None:
    again = eval(repr(plan), {"Fault": Fault, "FaultPlan": FaultPlan})
    assert again.to_json() == plan.to_json()


@given(plans, st.lists(endpoint_names, max_size=30))
def test_a_plan_and_its_json_copy_give_the_same_faults(
    plan: FaultPlan, requests: list[str]
) -> None:
    copy = FaultPlan.from_json(plan.to_json())
    assert [plan.next_fault(e) for e in requests] == [copy.next_fault(e) for e in requests]


@given(plans, st.lists(endpoint_names, max_size=30))
def test_a_plan_records_every_request_and_every_injected_fault(
    plan: FaultPlan, requests: list[str]
) -> None:
    given_out = [(endpoint, plan.next_fault(endpoint)) for endpoint in requests]
    assert plan.requests == Counter(requests)
    assert plan.injected == [(e, f) for e, f in given_out if f is not None]


@given(st.lists(st.none() | faults, min_size=1, max_size=8), st.integers(1, 30))
def test_a_plan_hands_out_its_script_in_order_then_stays_healthy(
    script: list[Fault | None], extra: int
) -> None:
    plan = FaultPlan(script)
    assert [plan.next_fault("upload") for _ in script] == script
    assert plan.exhausted
    assert [plan.next_fault("upload") for _ in range(extra)] == [None] * extra


@given(st.lists(st.none() | faults, min_size=1, max_size=5), st.integers(1, 20))
def test_a_repeating_plan_loops_its_script(script: list[Fault | None], rounds: int) -> None:
    plan = FaultPlan(script, repeat=True)
    assert [plan.next_fault("embeddings") for _ in range(rounds * len(script))] == script * rounds
    assert not plan.exhausted


def test_endpoints_outside_the_plan_are_healthy_and_do_not_consume_the_script() -> None:
    plan = FaultPlan([Fault.server_error(), Fault.timeout()], endpoints=["status"])
    assert plan.next_fault("upload") is None
    assert plan.next_fault("result") is None
    assert plan.next_fault("status") == Fault.server_error()
    assert plan.next_fault("upload") is None
    assert plan.next_fault("status") == Fault.timeout()
    assert plan.requests == Counter({"upload": 2, "status": 2, "result": 1})
    assert plan.injected == [("status", Fault.server_error()), ("status", Fault.timeout())]


def test_a_healthy_plan_never_injects() -> None:
    plan = FaultPlan.healthy()
    assert all(plan.next_fault(endpoint) is None for endpoint in sorted(ENDPOINTS) * 3)
    assert repr(plan) == "FaultPlan.healthy()"


def test_a_plan_hands_each_fault_to_exactly_one_of_many_threads() -> None:
    plan = FaultPlan([Fault.server_error(status=500 + i) for i in range(100)] + [None] * 100)
    received: list[Fault | None] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            fault = plan.next_fault("embeddings")
            with lock:
                received.append(fault)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    injected = [fault for fault in received if fault is not None]
    assert sorted(f.status or 0 for f in injected) == list(range(500, 600))
    assert plan.requests["embeddings"] == 400


def test_a_plan_reads_well_in_a_failure_report() -> None:
    plan = FaultPlan(
        [Fault.rate_limit(retry_after=2.0), None, Fault.timeout()],
        endpoints=["embeddings"],
        repeat=True,
        latency=0.25,
    )
    assert repr(plan) == (
        "FaultPlan([Fault.rate_limit(retry_after=2.0), None, Fault.timeout()], "
        "endpoints=['embeddings'], repeat=True, latency=0.25)"
    )


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Fault.server_error(status=404), "needs a 5xx status"),
        (lambda: Fault.permanent(status=503), "needs a 4xx status"),
        (lambda: Fault.permanent(status=408), "408 is retried by clients"),
        (lambda: Fault.permanent(status=409), "409 is retried by clients"),
        (lambda: Fault.permanent(status=429), "use Fault.rate_limit"),
        (lambda: Fault.rate_limit(retry_after=-1), "must be finite and >= 0"),
        (lambda: Fault.rate_limit(retry_after=float("inf")), "must be finite"),
        (lambda: Fault.latency(0), "must be finite and > 0"),
        (lambda: Fault.timeout(seconds=-5), "must be finite and > 0"),
        (lambda: Fault(FaultKind.MALFORMED_BODY, status=500), "status must be None"),
        (lambda: Fault(FaultKind.SERVER_ERROR, status=500, retry_after=1.0), "only a rate limit"),
        (lambda: Fault(FaultKind.WRONG_DIMENSION, seconds=1.0), "only latency and timeout"),
    ],
)
def test_a_fault_with_bad_arguments_says_what_is_wrong(
    build: Callable[[], object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    "build",
    [
        lambda: Fault.server_error(status=True),
        lambda: Fault.latency("1"),  # type: ignore[arg-type]
        lambda: Fault("rate_limit", status=429),  # type: ignore[arg-type]
        lambda: FaultPlan(["timeout"]),  # type: ignore[list-item]
        lambda: FaultPlan(endpoints="embeddings"),
    ],
)
def test_a_fault_or_plan_of_the_wrong_type_is_a_type_error(build: Callable[[], object]) -> None:
    with pytest.raises(TypeError):
        build()


def test_json_with_defaults_left_out_builds_the_default_fault() -> None:
    assert Fault.from_json({"kind": "rate_limit"}) == Fault.rate_limit()
    assert Fault.from_json({"kind": "server_error"}) == Fault.server_error(status=503)
    assert FaultPlan.from_json({}).to_json() == FaultPlan.healthy().to_json()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "explode"}, "unknown fault kind 'explode'; valid kinds: rate_limit"),
        ({"kind": "timeout", "colour": 1}, r"unknown fault fields \['colour'\]"),
        ({"kind": "rate_limit", "status": 500}, "status must be 429"),
    ],
)
def test_bad_fault_json_is_refused_with_the_valid_values(
    data: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Fault.from_json(data)


def test_a_plan_naming_an_unknown_endpoint_lists_the_real_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown endpoints \['embedding'\]; parser endpoints"):
        FaultPlan([Fault.timeout()], endpoints=["embedding"])
    with pytest.raises(ValueError, match="unknown fault plan fields"):
        FaultPlan.from_json({"script": [], "loop": True})


def test_only_network_faults_make_a_network_fault() -> None:
    assert NetworkFault(Fault.timeout(), endpoint="upload").fault == Fault.timeout()
    with pytest.raises(ValueError, match="needs a timeout or connection_error fault"):
        NetworkFault(Fault.server_error())


def test_retry_after_is_written_as_delta_seconds() -> None:
    assert [retry_after_header(s) for s in (1.0, 0.0, 2.5, 60)] == ["1", "0", "2.5", "60"]

"""The webhook signing scheme: what verifies, what is rejected, and why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import Headers

from pipeline_models.errors import PipelineModelsError
from pipeline_models.pipeline.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    ParserWebhook,
    Rejection,
    WebhookRejected,
    WebhookSecrets,
    sign,
    verify,
)

# Up to the year 2096: any instant a receiver's clock can show, and room for the window.
timestamps = st.integers(min_value=0, max_value=4_000_000_000)
bodies = st.binary(max_size=512)
secret_texts = st.text(min_size=1, max_size=40)
secret_lists = st.lists(secret_texts, min_size=1, max_size=3)
PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


def at(timestamp: int, offset: timedelta = timedelta(0)) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC) + offset


def rejection(headers: dict[str, str], body: bytes, secrets: list[str], now: datetime) -> Rejection:
    with pytest.raises(WebhookRejected) as caught:
        verify(headers, body, secrets=secrets, now=now)
    return caught.value.code


@given(
    body=bodies,
    secrets=secret_lists,
    timestamp=timestamps,
    skew=st.integers(min_value=-300_000_000, max_value=300_000_000),
)
def test_a_signed_webhook_verifies_within_the_window(
    body: bytes, secrets: list[str], timestamp: int, skew: int
) -> None:
    headers = sign(body, secrets=secrets, timestamp=timestamp)
    now = at(timestamp, timedelta(microseconds=skew))
    assert verify(headers, body, secrets=secrets, now=now) == timestamp


@given(body=bodies, secrets=secret_lists, timestamp=timestamps)
def test_signing_is_deterministic_with_one_v1_entry_per_distinct_secret(
    body: bytes, secrets: list[str], timestamp: int
) -> None:
    headers = sign(body, secrets=secrets, timestamp=timestamp)
    assert headers == sign(body, secrets=secrets, timestamp=timestamp)
    assert headers[TIMESTAMP_HEADER] == str(timestamp)
    entries = headers[SIGNATURE_HEADER].split(",")
    assert len(entries) == len(set(secrets))
    assert all(entry.startswith("v1=") and len(entry) == 67 for entry in entries)


@given(body=bodies, secret=secret_texts, timestamp=timestamps, data=st.data())
def test_any_single_byte_change_of_the_body_is_rejected(
    body: bytes, secret: str, timestamp: int, data: st.DataObject
) -> None:
    headers = sign(body, secrets=[secret], timestamp=timestamp)
    edit = data.draw(st.sampled_from(["change", "insert", "delete"] if body else ["insert"]))
    if edit == "insert":
        index = data.draw(st.integers(0, len(body)))
        changed = body[:index] + bytes([data.draw(st.integers(0, 255))]) + body[index:]
    else:
        index = data.draw(st.integers(0, len(body) - 1))
        if edit == "delete":
            changed = body[:index] + body[index + 1 :]
        else:
            new_byte = data.draw(st.integers(0, 255).filter(lambda b: b != body[index]))
            changed = body[:index] + bytes([new_byte]) + body[index + 1 :]
    code = rejection(headers, changed, [secret], at(timestamp))
    assert code is Rejection.SIGNATURE_MISMATCH


@given(
    body=bodies,
    secret=secret_texts,
    timestamp=timestamps,
    header=st.sampled_from([TIMESTAMP_HEADER, SIGNATURE_HEADER]),
    data=st.data(),
)
def test_any_single_character_change_of_a_signature_header_is_rejected(
    body: bytes, secret: str, timestamp: int, header: str, data: st.DataObject
) -> None:
    headers = sign(body, secrets=[secret], timestamp=timestamp)
    value = headers[header]
    index = data.draw(st.integers(0, len(value) - 1))
    new_char = data.draw(PRINTABLE.filter(lambda c: c != value[index]))
    tampered = {**headers, header: value[:index] + new_char + value[index + 1 :]}
    # Whatever the change makes of it (another time, a broken entry), it never passes.
    rejection(tampered, body, [secret], at(timestamp))


@given(
    body=bodies,
    pair=st.lists(secret_texts, min_size=2, max_size=2, unique=True),
    signed_with=st.sampled_from(["new", "old", "new,old", "old,new"]),
    timestamp=timestamps,
)
def test_during_a_rotation_either_secret_verifies_and_a_retired_one_does_not(
    body: bytes, pair: list[str], signed_with: str, timestamp: int
) -> None:
    new, old = pair
    names = {"new": new, "old": old}
    signing = [names[name] for name in signed_with.split(",")]
    headers = sign(body, secrets=signing, timestamp=timestamp)
    now = at(timestamp)
    assert verify(headers, body, secrets=WebhookSecrets((new, old)), now=now) == timestamp
    if "new" in signed_with:
        assert verify(headers, body, secrets=[new], now=now) == timestamp
    else:
        # The rotation is over: the old secret is no longer accepted.
        assert rejection(headers, body, [new], now) is Rejection.SIGNATURE_MISMATCH


@given(body=bodies, old=secret_texts, timestamp=timestamps)
def test_a_webhook_signed_only_with_a_removed_secret_is_rejected(
    body: bytes, old: str, timestamp: int
) -> None:
    current = old + "-rotated"
    headers = sign(body, secrets=[old], timestamp=timestamp)
    assert rejection(headers, body, [current], at(timestamp)) is Rejection.SIGNATURE_MISMATCH


@given(
    timestamp=timestamps,
    tolerance=st.one_of(st.just(300), st.integers(min_value=0, max_value=86_400)),
    beyond=st.integers(min_value=1, max_value=10**12),
)
def test_the_window_includes_its_edges_and_nothing_beyond_in_either_direction(
    timestamp: int, tolerance: int, beyond: int
) -> None:
    headers = sign(b"{}", secrets=["k"], timestamp=timestamp)
    edge = timedelta(seconds=tolerance)
    over = edge + timedelta(microseconds=beyond)

    def check(now: datetime) -> int:
        return verify(headers, b"{}", secrets=["k"], now=now, tolerance_seconds=tolerance)

    assert check(at(timestamp, edge)) == timestamp
    assert check(at(timestamp, -edge)) == timestamp
    with pytest.raises(WebhookRejected) as stale:
        check(at(timestamp, over))
    assert stale.value.code is Rejection.STALE_TIMESTAMP
    with pytest.raises(WebhookRejected) as future:
        check(at(timestamp, -over))
    assert future.value.code is Rejection.FUTURE_TIMESTAMP


def test_the_default_window_is_300_seconds_and_the_reasons_say_how_far_off() -> None:
    headers = sign(b"{}", secrets=["k"], timestamp=1_000_000)
    assert verify(headers, b"{}", secrets=["k"], now=at(1_000_300)) == 1_000_000
    assert verify(headers, b"{}", secrets=["k"], now=at(999_700)) == 1_000_000
    with pytest.raises(WebhookRejected, match=r"signed 300\.000001 s ago; at most 300 s"):
        verify(headers, b"{}", secrets=["k"], now=at(1_000_300, timedelta(microseconds=1)))
    with pytest.raises(WebhookRejected, match=r"301 s in the future; at most 300 s of clock skew"):
        verify(headers, b"{}", secrets=["k"], now=at(999_699))


@given(
    body=bodies,
    secret=secret_texts,
    timestamp=timestamps,
    cases=st.lists(st.booleans(), min_size=40, max_size=40),
)
def test_header_names_match_whatever_their_case(
    body: bytes, secret: str, timestamp: int, cases: list[bool]
) -> None:
    def recase(name: str) -> str:
        return "".join(c.upper() if up else c.lower() for c, up in zip(name, cases, strict=False))

    signed = sign(body, secrets=[secret], timestamp=timestamp)
    as_dict = {recase(name): value for name, value in signed.items()}
    as_starlette = Headers(raw=[(k.lower().encode(), v.encode()) for k, v in signed.items()])
    as_httpx = httpx.Headers(as_dict)
    for headers in (as_dict, as_starlette, as_httpx):
        assert verify(headers, body, secrets=[secret], now=at(timestamp)) == timestamp


def test_repeated_signature_lines_count_as_one_list_and_unknown_schemes_are_skipped() -> None:
    good = sign(b"x", secrets=["k"], timestamp=5)
    forged = sign(b"x", secrets=["not-k"], timestamp=5)[SIGNATURE_HEADER]
    lines = httpx.Headers(
        [
            (TIMESTAMP_HEADER, "5"),
            (SIGNATURE_HEADER, f"v0=whatever,{forged}"),
            (SIGNATURE_HEADER, good[SIGNATURE_HEADER]),
        ]
    )
    assert verify(lines, b"x", secrets=["k"], now=at(5)) == 5


def test_each_missing_header_is_named() -> None:
    headers = sign(b"x", secrets=["k"], timestamp=5)
    for name in headers:
        partial = {key: value for key, value in headers.items() if key != name}
        with pytest.raises(WebhookRejected, match=f"the {name} header is missing") as caught:
            verify(partial, b"x", secrets=["k"], now=at(5))
        assert caught.value.code is Rejection.MISSING_HEADER


@pytest.mark.parametrize("value", ["", " ", "-5", "+5", "05", "5.0", "1e3", "five", "٥", "1" * 16])
def test_a_timestamp_that_is_not_canonical_integer_seconds_is_malformed(value: str) -> None:
    headers = {**sign(b"x", secrets=["k"], timestamp=5), TIMESTAMP_HEADER: value}
    assert rejection(headers, b"x", ["k"], at(5)) is Rejection.MALFORMED_TIMESTAMP


@pytest.mark.parametrize(
    "value",
    ["", "v1", "v1=", "v1=" + "a" * 63, "v1=" + "A" * 64, "v1=" + "g" * 64, "v0=" + "a" * 64],
)
def test_a_signature_header_without_a_well_formed_v1_entry_is_malformed(value: str) -> None:
    headers = {**sign(b"x", secrets=["k"], timestamp=5), SIGNATURE_HEADER: value}
    assert rejection(headers, b"x", ["k"], at(5)) is Rejection.MALFORMED_SIGNATURE


def test_the_signature_is_checked_before_the_time() -> None:
    # A forged, stale webhook is reported as forged: "stale" always means authentic.
    headers = sign(b"x", secrets=["forger"], timestamp=5)
    assert rejection(headers, b"x", ["k"], at(5 + 10_000)) is Rejection.SIGNATURE_MISMATCH


def test_misuse_is_a_programming_error_not_a_rejection() -> None:
    headers = sign(b"x", secrets=["k"], timestamp=5)
    with pytest.raises(TypeError, match="not a single string"):
        sign(b"x", secrets="k", timestamp=5)
    with pytest.raises(ValueError, match="at least one secret"):
        verify(headers, b"x", secrets=[], now=at(5))
    with pytest.raises(ValueError, match="secret #2 is empty"):
        sign(b"x", secrets=["k", ""], timestamp=5)
    with pytest.raises(ValueError, match="lone surrogate"):
        sign(b"x", secrets=["\ud800"], timestamp=5)
    with pytest.raises(ValueError, match="timestamp must be an int"):
        sign(b"x", secrets=["k"], timestamp=-1)
    with pytest.raises(ValueError, match="timezone-aware"):
        verify(headers, b"x", secrets=["k"], now=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="tolerance_seconds"):
        verify(headers, b"x", secrets=["k"], now=at(5), tolerance_seconds=float("nan"))


def test_a_rejection_is_a_pipeline_models_error_with_a_reason_and_a_code() -> None:
    rejected = WebhookRejected("unknown parser job j-1")
    assert isinstance(rejected, PipelineModelsError)
    assert (rejected.reason, rejected.code, str(rejected)) == (
        "unknown parser job j-1",
        Rejection.OTHER,
        "unknown parser job j-1",
    )


@given(secrets=st.lists(st.text(min_size=8, max_size=40), min_size=1, max_size=4))
def test_the_repr_of_the_secrets_never_shows_a_secret(secrets: list[str]) -> None:
    held = WebhookSecrets(tuple(secrets))
    shown = [repr(held), str(held), f"{held}", repr([held]), repr({"secrets": held})]
    for text in shown:
        for secret in secrets:
            assert secret not in text
    assert f"WebhookSecrets({len(secrets)} secret" in repr(held)
    assert repr(held).count("sha256:") == len(secrets)


@given(
    secrets=st.lists(
        st.text(st.characters(exclude_characters=","), min_size=1, max_size=20).filter(
            lambda s: s.strip() == s and s != ""
        ),
        min_size=1,
        max_size=4,
    )
)
def test_secrets_from_the_environment_are_current_first_and_verify_as_listed(
    secrets: list[str],
) -> None:
    held = WebhookSecrets.from_env(" , ".join(secrets))
    assert list(held) == secrets
    assert held.current == secrets[0]
    assert len(held) == len(secrets)
    assert held == WebhookSecrets(tuple(secrets))
    headers = sign(b"x", secrets=held, timestamp=5)
    assert verify(headers, b"x", secrets=held, now=at(5)) == 5


@pytest.mark.parametrize("value", ["", " ", ",", "hunter2-new,", ",hunter2-old", "a,,b", "a, ,b"])
def test_an_empty_secret_in_the_environment_is_refused_without_echoing_any(value: str) -> None:
    with pytest.raises(ValueError, match="is empty") as caught:
        WebhookSecrets.from_env(value)
    assert "hunter2" not in str(caught.value)


def test_webhook_secrets_refuse_a_bare_string_and_an_empty_list() -> None:
    with pytest.raises(TypeError, match="not a single string"):
        WebhookSecrets("secret")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one secret"):
        WebhookSecrets(())


webhooks = st.one_of(
    st.builds(ParserWebhook, job_id=st.text(min_size=1), status=st.just("SUCCESS")),
    st.builds(
        ParserWebhook, job_id=st.text(min_size=1), status=st.just("ERROR"), error_message=st.text()
    ),
)


@given(webhook=webhooks)
def test_a_parser_webhook_reads_back_what_it_wrote(webhook: ParserWebhook) -> None:
    body = webhook.to_json()
    assert body.isascii()
    assert ParserWebhook.from_json(body) == webhook


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"\xff{}", "not UTF-8 JSON"),
        (b'{"job_id": "j", "status": "SUCCESS"', "not UTF-8 JSON"),
        (b'["j", "SUCCESS"]', "must be a JSON object, got list"),
        (b'{"status": "SUCCESS"}', "job_id must be a non-empty str"),
        (b'{"job_id": 7, "status": "SUCCESS"}', "job_id must be a non-empty str"),
        (b'{"job_id": "j", "status": "PENDING"}', "status must be one of SUCCESS, ERROR"),
        (b'{"job_id": "j", "status": "SUCCESS", "error_message": "x"}', "carries no error"),
        (b'{"job_id": "j", "status": "ERROR"}', "an ERROR needs an error_message"),
    ],
)
def test_a_malformed_payload_is_rejected_with_what_is_wrong(body: bytes, complaint: str) -> None:
    with pytest.raises(WebhookRejected, match=complaint) as caught:
        ParserWebhook.from_json(body)
    assert caught.value.code is Rejection.MALFORMED_PAYLOAD


def test_unknown_payload_fields_are_ignored() -> None:
    body = b'{"job_id": "j", "status": "SUCCESS", "error_message": null, "pages": 3}'
    assert ParserWebhook.from_json(body) == ParserWebhook(job_id="j", status="SUCCESS")

"""Properties of JsonMemberScanner: fed any split of a JSON object, it finds exactly the
top-level member json.loads would, and it rejects what strict JSON rejects."""

from __future__ import annotations

import contextlib
import decimal
import itertools
import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline_models.pipeline.jsonmember import JsonMemberError, JsonMemberScanner, read_member

MEMBER = "job_metadata"

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    # Quotes, backslashes, controls and non-BMP characters are what escapes are for. No
    # lone surrogates (codec="utf-8"): see unpaired_surrogates.
    | st.text(st.sampled_from('"\\/\b\f\n\r\t\x00\x1f é€😀') | st.characters(codec="utf-8"))
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
other_members = st.dictionaries(st.text(max_size=8).filter(lambda k: k != MEMBER), json_values)


@st.composite
def encodings(draw: st.DrawFn, value: Any) -> bytes:
    """``value`` as JSON bytes, in one of the layouts a server might choose."""
    ensure_ascii = draw(st.booleans())
    indent = draw(st.none() | st.integers(0, 2))
    separators = draw(st.sampled_from([None, (",", ":"), (" , ", " : ")]))
    text = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators)
    return text.encode("utf-8")


@st.composite
def bodies(draw: st.DrawFn, metadata: st.SearchStrategy[Any] = json_values) -> tuple[bytes, Any]:
    """A JSON object with MEMBER at any place among other top-level members."""
    members = list(draw(other_members).items())
    value = draw(metadata)
    members.insert(draw(st.integers(0, len(members))), (MEMBER, value))
    return draw(encodings(dict(members))), value


# Strings longer than the scanner's limit (max_member_bytes=LIMIT below), which it cuts
# short before ijson sees them: quotes, backslashes, controls, 2- to 4-byte characters.
LIMIT = 1000
long_texts = st.text(st.sampled_from('"\\\n\x00 aé€😀'), min_size=1, max_size=8).map(
    lambda text: text * (2 * LIMIT // len(text) + 1)
)
small_values = json_values.filter(lambda value: len(json.dumps(value)) < LIMIT // 2)


@st.composite
def bodies_with_long_strings(draw: st.DrawFn) -> tuple[bytes, Any]:
    """bodies() with long strings as values and keys, at the top and nested."""
    members = list(draw(other_members).items())
    for _ in range(draw(st.integers(1, 3))):
        text = draw(long_texts)
        value = draw(st.sampled_from([text, [text], {"k": text}, {text: 1}]))
        key = draw(st.sampled_from(["markdown", text]))
        members.insert(draw(st.integers(0, len(members))), (key, value))
    value = draw(small_values)
    members.insert(draw(st.integers(0, len(members))), (MEMBER, value))
    return draw(encodings(dict(members))), value


@st.composite
def splits(draw: st.DrawFn, body: bytes) -> list[bytes]:
    """``body`` cut at arbitrary byte offsets (inside keys, escapes, UTF-8 sequences)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=12)))
    edges = [0, *cuts, len(body)]
    return [body[start:end] for start, end in itertools.pairwise(edges)]


def scan(pieces: Sequence[bytes], member: str = MEMBER, **options: int) -> Any:
    scanner = JsonMemberScanner(member, **options)
    for piece in pieces:
        scanner.feed(piece)
    return scanner.finish()


def strict_json(body: bytes) -> Any:
    """json.loads as RFC 8259 reads it: UTF-8 only, no NaN or Infinity. And as ijson reads
    a number with a fraction or an exponent, through Decimal, which refuses an exponent
    past about 10**18 (json.loads gives inf or 0.0): RFC 8259 lets a parser limit range."""

    def reject(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    def number(text: str) -> float:
        try:
            decimal.Decimal(text)
        except decimal.InvalidOperation:
            raise ValueError(f"exponent out of range: {text}") from None
        return float(text)

    return json.loads(body.decode("utf-8"), parse_constant=reject, parse_float=number)


def unpaired_surrogates(value: Any) -> bool:
    """Whether ``value`` holds a lone surrogate, as json.loads reads an unpaired
    \\ud800-\\udfff escape. yajl, ijson's C backend, reads such an escape as '?', pairs
    it with the next \\u escape, or refuses it; RFC 8259 leaves the string undefined and
    I-JSON forbids it, so no value is expected of the scanner for such a body."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@given(st.data())
def test_any_split_of_any_object_gives_the_member_json_loads_gives(data: st.DataObject) -> None:
    body, _ = data.draw(bodies())
    assert scan(data.draw(splits(body))) == json.loads(body)[MEMBER]


@given(st.data())
def test_a_member_of_the_same_name_nested_deeper_is_ignored(data: st.DataObject) -> None:
    value = data.draw(json_values)
    decoy = data.draw(json_values.filter(lambda v: v != value))
    nested: Any = {MEMBER: decoy}
    for wrap in data.draw(st.lists(st.sampled_from(["list", "dict"]), max_size=3)):
        nested = [nested] if wrap == "list" else {"pages": nested}
    obj = data.draw(other_members)
    items = [("pages", nested), (MEMBER, value)]
    if data.draw(st.booleans()):
        items.reverse()  # the decoy before or after the real member
    body = data.draw(encodings({**obj, **dict(items)}))
    assert scan(data.draw(splits(body))) == value


@given(st.data())
def test_an_object_with_the_member_only_nested_has_no_member(data: st.DataObject) -> None:
    obj = data.draw(other_members)
    body = data.draw(encodings({**obj, "pages": [{MEMBER: data.draw(json_values)}]}))
    with pytest.raises(JsonMemberError, match="no top-level member 'job_metadata'"):
        scan(data.draw(splits(body)))


@given(st.data())
def test_every_truncation_is_an_error(data: st.DataObject) -> None:
    body, _ = data.draw(bodies())
    cut = data.draw(st.integers(0, len(body) - 1))
    with pytest.raises(ValueError, match=r"truncated|empty|UTF-8"):
        scan(data.draw(splits(body[:cut])))


@given(st.data())
def test_long_strings_cut_short_leave_the_member_as_json_loads_reads_it(
    data: st.DataObject,
) -> None:
    body, _ = data.draw(bodies_with_long_strings())
    pieces = data.draw(splits(body))
    assert scan(pieces, max_member_bytes=LIMIT) == json.loads(body)[MEMBER]


@pytest.mark.parametrize("limit", range(200, 213))
def test_a_long_string_is_cut_between_characters_and_escapes(limit: int) -> None:
    # Twelve limits in a row: a cut at every offset of 6-byte escapes and 4-byte characters.
    for ensure_ascii in (True, False):
        text = '\\"é😀\n\u00e9' * 60
        body = json.dumps({"markdown": text, MEMBER: 1}, ensure_ascii=ensure_ascii).encode()
        assert scan([body], max_member_bytes=limit) == 1
        assert scan([body[i : i + 7] for i in range(0, len(body), 7)], max_member_bytes=limit) == 1


def test_a_string_cut_short_in_the_member_makes_it_too_large() -> None:
    body = json.dumps({MEMBER: {"note": "x" * 300}}).encode()
    with pytest.raises(JsonMemberError, match="larger than the 200 bytes allowed"):
        scan([body], max_member_bytes=200)
    long_key = json.dumps({MEMBER + "x" * 300: 1}).encode()  # the member's name, cut short
    with pytest.raises(JsonMemberError, match="no top-level member"):
        scan([long_key], max_member_bytes=0)


@given(st.data())
def test_a_damaged_body_is_read_as_strict_json_reads_it(data: st.DataObject) -> None:
    long_strings = data.draw(st.booleans())
    body = bytearray(data.draw(bodies_with_long_strings() if long_strings else bodies())[0])
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(body)))
        byte = data.draw(st.sampled_from(b'{}[]:,"\\ 0-.eu\x00\xff\xc3') | st.integers(0, 255))
        if data.draw(st.booleans()) and at < len(body):
            body[at] = byte
        else:
            body.insert(at, byte)
    damaged = bytes(body)
    pieces = data.draw(splits(damaged))
    options = {"max_member_bytes": LIMIT} if long_strings else {}
    try:
        expected = strict_json(damaged)
    except ValueError:
        with pytest.raises(JsonMemberError):
            scan(pieces, **options)
        return
    if unpaired_surrogates(expected):
        with contextlib.suppress(JsonMemberError):
            scan(pieces, **options)  # any value, or JsonMemberError, but no crash
        return
    if not (isinstance(expected, dict) and MEMBER in expected):
        with pytest.raises(JsonMemberError):
            scan(pieces, **options)
    elif long_strings and len(json.dumps(expected[MEMBER])) >= LIMIT // 2:
        # The damage took a long string into the member: its value, or refused as too large.
        outcome: Any
        try:
            outcome = scan(pieces, **options)
        except JsonMemberError as error:
            outcome = error
        if isinstance(outcome, JsonMemberError):
            assert "bytes allowed" in str(outcome)
        else:
            assert outcome == expected[MEMBER]
    else:
        assert scan(pieces, **options) == expected[MEMBER]


@given(st.lists(json_values, min_size=2, max_size=4), st.data())
def test_a_repeated_member_reads_as_its_last_occurrence(
    values: list[Any], data: st.DataObject
) -> None:
    # json.dumps cannot repeat a key, so the members are written out by hand.
    members = [f'"{MEMBER}": {json.dumps(value)}' for value in values]
    body = ("{" + ", ".join(members) + "}").encode()
    assert scan(data.draw(splits(body))) == json.loads(body)[MEMBER] == values[-1]


# A grammar error: by which byte, and the parser's reason in brackets (ijson's words).
MALFORMED = r"malformed JSON before byte \d+ \(.+\)$"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty body"),
        (b" \n", "empty body"),
        (b'[{"job_metadata": 1}]', "not a JSON object"),
        (b'"job_metadata"', "not a JSON object"),
        (b"\xef\xbb\xbf{}", "not a JSON object"),  # RFC 8259: no byte order mark
        (b'{"job_metadata": 1', "truncated body"),
        (b'{"job_metadata": {"job_pages": 1}', "truncated body: .* at depth 1"),
        (b'{"markdown": "# A', "truncated body: .* at depth 1"),
        (b'{"markdown": "\\u00', "truncated body: .* at depth 1"),
        (b'{"job_metadata": 1}}', "unexpected data after the top-level object"),
        (b'{"job_metadata": 1} {}', "unexpected data after"),
        # yajl itself lets a string left open after the object pass.
        (b'{"job_metadata": 1} "a', "unexpected data after the top-level object at byte 20"),
        (b'{"job_metadata": 1} "a}', "unexpected data after the top-level object"),
        (b'{"markdown": "caf\xe9"}', "not valid UTF-8 at byte 17"),
        (b'{"markdown": "caf\xc3', "not valid UTF-8"),
        (b'{"job_metadata": NaN}', MALFORMED),
        (b'{"job_metadata": -Infinity}', MALFORMED),
        (b'{"job_metadata": 01}', MALFORMED),
        (b'{"job_metadata": [1,]}', MALFORMED),
        (b'{"job_metadata": 1,}', MALFORMED),
        (b'{"job_metadata": {"a" 1}}', MALFORMED),
        (b'{"job_metadata": {,}}', MALFORMED),
        (b'{"markdown": "\\x"}', MALFORMED),
        (b'{"markdown": "\\u12G4"}', MALFORMED),
        (b'{"markdown": "tab\there"}', MALFORMED),
        (b'{"markdown": "tab\vhere"}', r"control character \(0x0b\) at byte 17"),
        (b'{"job_metadata":\f1}', r"\(0x0c\) at byte 16"),  # yajl's whitespace, not JSON's
        (b'{"markdown": "nul\x00"}', r"\(0x00\) at byte 17"),
        (b'{"job_metadata": trve}', MALFORMED),
        (b'{"pages": [1, 2}', MALFORMED),
        (b'{"pages": 1}', "no top-level member 'job_metadata'"),
        (b"{}", "no top-level member 'job_metadata'"),
        (b'{"job_metadata": ' + b"[" * 300 + b"]" * 300 + b"}", "nested deeper than 256"),
        (b'{"job_metadata": ' + b"1" * 5000 + b"}", "cannot be decoded"),
        (b'{"pages": 1e1000000000000000000, "job_metadata": 1}', "exponent is past"),
        # An integer past Python's 4,300 digits crashed a callback of ijson's C backend.
        (b'{"pages": ' + b"1" * 5000 + b', "job_metadata": 1}', "cannot be decoded"),
        (b'{"job_metadata": ' + b"1" * 5000, "cannot be decoded"),
    ],
)
def test_a_malformed_body_is_a_value_error_that_says_what_is_wrong(
    body: bytes, message: str
) -> None:
    with pytest.raises(JsonMemberError, match=message) as raised:
        read_member(body, MEMBER)
    assert isinstance(raised.value, ValueError)


def test_the_member_may_be_spelled_with_escapes() -> None:
    assert read_member(b'{"job\\u005fmetadata": {"job_pages": 3}}', MEMBER) == {"job_pages": 3}
    assert read_member(b'{"\\ud83d\\ude00": 1}', "😀") == 1
    assert read_member('{"😀": 2}'.encode(), "😀") == 2


def test_a_member_larger_than_allowed_is_refused_not_kept() -> None:
    scanner = JsonMemberScanner(MEMBER, max_member_bytes=10)
    scanner.feed(b'{"job_metadata": "0123')
    with pytest.raises(JsonMemberError, match="larger than the 10 bytes allowed"):
        scanner.feed(b'456789"}')


def test_a_failed_scanner_stays_failed() -> None:
    scanner = JsonMemberScanner(MEMBER)
    with pytest.raises(JsonMemberError, match="not a JSON object") as first:
        scanner.feed(b"[")
    with pytest.raises(JsonMemberError) as again:
        scanner.feed(b'{"job_metadata": 1}')
    assert again.value is first.value
    with pytest.raises(JsonMemberError) as finished:
        scanner.finish()
    assert finished.value is first.value


def test_a_huge_string_is_skipped_one_byte_at_a_time_too() -> None:
    # Pieces of one byte are the worst split: every escape is cut in the middle.
    body = json.dumps({"markdown": 'a"\\\n\u00e9😀' * 200, MEMBER: [1]}).encode()
    assert scan([body[i : i + 1] for i in range(len(body))]) == [1]

"""Read one member of a streamed JSON object without holding the whole body.

Why this exists: the parser's JSON result (``GET .../result/markdown``) carries the
whole markdown of a document, megabytes for a large one, next to a small
``job_metadata`` object with the pages billed. The worker needs only that object, but
``response.json()`` would hold the raw body, its decoded text and the parsed markdown
at once. :class:`JsonMemberScanner` is fed the body piece by piece, walks the JSON
grammar as a push state machine, skips every string it does not need without copying
it, and keeps only the bytes of the wanted top-level member's value, which it decodes
with :func:`json.loads` at the end. Its memory is bounded by the chunk size, the
nesting depth and the size of that one value, whatever the size of the body.

It validates the whole body as strict JSON (RFC 8259): UTF-8, one top-level object, no
``NaN``/``Infinity``, nothing but whitespace after the object. So a truncated or garbled
body is noticed even when the member came before the damage. When the member occurs
more than once the last occurrence wins, as with :func:`json.loads`. A member of the
same name inside a nested value is not the top-level member and is ignored.

>>> scanner = JsonMemberScanner("job_metadata")
>>> for piece in (b'{"markdown": "# A\\\\n", "job_meta', b'data": {"job_pages": 2}}'):
...     scanner.feed(piece)
>>> scanner.finish()
{'job_pages': 2}
"""

from __future__ import annotations

import codecs
import enum
import json
import re
from typing import Any, Final, NoReturn

__all__ = ["JsonMemberError", "JsonMemberScanner", "read_member"]

_WHITESPACE: Final = re.compile(rb"[ \t\n\r]*+")
# The body of a string up to its closing quote: any run of plain bytes (UTF-8 is checked
# separately) and complete valid escapes. It stops at the closing quote, at a control
# character, at an invalid escape, and at an escape cut off by the end of the chunk;
# the state machine takes over there, one byte at a time.
_STRING_BODY: Final = re.compile(rb'(?:[^"\\\x00-\x1f]++|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*+')
_DIGITS: Final = re.compile(rb"[0-9]*+")
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_SIMPLE_ESCAPES: Final = frozenset(b'"\\/bfnrt')
_DIGIT: Final = frozenset(b"0123456789")
_LITERALS: Final = {ord("t"): b"true", ord("f"): b"false", ord("n"): b"null"}
_OPEN_OBJECT, _CLOSE_OBJECT = ord("{"), ord("}")
_OPEN_ARRAY, _CLOSE_ARRAY = ord("["), ord("]")
_QUOTE, _BACKSLASH, _COLON, _COMMA, _MINUS = (ord(c) for c in '"\\:,-')


class JsonMemberError(ValueError):
    """The body is not a JSON object with the wanted top-level member."""


class _State(enum.Enum):
    """Where the scanner is in the grammar; each names what it expects next."""

    START = "the top-level object"
    OBJECT_OPEN = "a key or '}'"
    OBJECT_KEY = "a key"
    COLON = "':'"
    ARRAY_OPEN = "a value or ']'"
    VALUE = "a value"
    AFTER_VALUE = "',' or the end of the enclosing object or array"
    STRING = "the end of a string"
    ESCAPE = "an escape sequence"
    UNICODE = "the hex digits of a \\u escape"
    NUMBER = "the rest of a number"
    LITERAL = "the rest of true, false or null"
    END = "nothing but whitespace"


class _Number(enum.Enum):
    """Positions inside a number, by the grammar -?(0|[1-9]d*)(.d+)?([eE][+-]?d+)?."""

    MINUS = enum.auto()  # after '-': a digit must follow
    ZERO = enum.auto()  # a leading 0: '.', 'e' or the end
    INTEGER = enum.auto()  # in [1-9]d*
    POINT = enum.auto()  # after '.': a digit must follow
    FRACTION = enum.auto()
    EXPONENT_MARK = enum.auto()  # after 'e': a sign or a digit
    EXPONENT_SIGN = enum.auto()  # a digit must follow
    EXPONENT = enum.auto()


_NUMBER_ENDS: Final = frozenset({_Number.ZERO, _Number.INTEGER, _Number.FRACTION, _Number.EXPONENT})
_NUMBER_DIGIT_RUNS: Final = frozenset({_Number.INTEGER, _Number.FRACTION, _Number.EXPONENT})


class JsonMemberScanner:
    """Push parser that keeps one top-level member of a JSON object.

    Feed the body with :meth:`feed` in pieces of any size, split anywhere (inside a
    key, an escape or a UTF-8 sequence), then call :meth:`finish` for the member's
    decoded value. Any problem raises :class:`JsonMemberError` (a ``ValueError``)
    saying what and at which byte; after an error the scanner stays failed.

    ``max_member_bytes`` bounds the bytes kept for the member's value and
    ``max_depth`` the nesting of objects and arrays, so that no body, however large
    or hostile, makes the scanner hold more than that.

    >>> scanner = JsonMemberScanner("m")
    >>> scanner.feed(b'{"x": {"m": 1}, "m": [true, "\\\\u00e9"]}')
    >>> scanner.finish()
    [True, 'é']
    >>> scanner = JsonMemberScanner("m")
    >>> scanner.feed(b'{"x": {"m": 1}}')
    >>> scanner.finish()
    Traceback (most recent call last):
    ...
    pipeline_models.pipeline.jsonmember.JsonMemberError: the object has no top-level member 'm'
    """

    def __init__(
        self, member: str, *, max_member_bytes: int = 1 << 20, max_depth: int = 256
    ) -> None:
        if max_member_bytes < 0 or max_depth < 1:
            raise ValueError("max_member_bytes must be >= 0 and max_depth >= 1")
        self.member = member
        self.max_member_bytes = max_member_bytes
        self.max_depth = max_depth
        # A key longer than this, escaped, cannot decode to the member: at most 12 bytes
        # (a surrogate pair of \u escapes) stand for one character.
        self._max_key_bytes = 12 * len(member)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self._state = _State.START
        self._stack = bytearray()  # b"{" or b"[" for each open container
        self._offset = 0  # bytes fed before the current chunk
        self._in_key = False  # the current string is an object key
        self._hex_left = 0  # hex digits still due in a \u escape
        self._number = _Number.MINUS
        self._literal = b""
        self._literal_matched = 0
        self._key: bytearray | None = None  # raw bytes of a top-level key being read
        self._key_start = 0
        self._key_matches = False  # the last top-level key read was the member
        self._capture: bytearray | None = None  # the member's value being read
        self._capture_start = 0
        self._value: bytes | None = None  # the member's value, once complete
        self._error: JsonMemberError | None = None
        self._finished = False

    # -- public API -------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        """Scan the next piece of the body; :class:`JsonMemberError` if it is wrong."""
        if self._error is not None:
            raise self._error
        if self._finished:
            raise JsonMemberError("feed() after finish()")
        chunk = bytes(chunk)
        pending = len(self._utf8.getstate()[0])
        try:
            self._utf8.decode(chunk)
        except UnicodeDecodeError as error:
            self._fail(f"not valid UTF-8 at byte {self._offset - pending + error.start}")
        self._scan(chunk)
        self._offset += len(chunk)

    def finish(self) -> Any:
        """The decoded value of the member, once the whole body has been fed."""
        if self._error is not None:
            raise self._error
        self._finished = True
        try:
            self._utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            self._fail(f"not valid UTF-8: the body ends inside a character at byte {self._offset}")
        if self._state is _State.START:
            self._fail("empty body: expected a JSON object")
        if self._state is not _State.END:
            where = f"at depth {len(self._stack)}" if self._stack else "at the top level"
            self._fail(
                f"truncated body: it ends after {self._offset} bytes {where}, "
                f"expecting {self._state.value}"
            )
        if self._value is None:
            self._fail(f"the object has no top-level member {self.member!r}")
        try:
            return json.loads(self._value)
        except (ValueError, RecursionError) as error:  # e.g. an integer of 5,000 digits
            self._fail(f"member {self.member!r} cannot be decoded: {error}")

    # -- the state machine --------------------------------------------------------------

    def _fail(self, message: str) -> NoReturn:
        self._error = JsonMemberError(message)
        raise self._error

    def _unexpected(self, chunk: bytes, at: int) -> NoReturn:
        found = chunk[at : at + 1]
        self._fail(f"expected {self._state.value} at byte {self._offset + at}, found {found!r}")

    def _scan(self, chunk: bytes) -> None:
        at, end = 0, len(chunk)
        while at < end:
            state = self._state
            if state is _State.STRING:
                at = _STRING_BODY.match(chunk, at).end()  # type: ignore[union-attr]
                if at == end:
                    break
                byte = chunk[at]
                if byte == _QUOTE:
                    self._end_string(chunk, at)
                elif byte == _BACKSLASH:
                    self._state = _State.ESCAPE
                else:
                    self._fail(
                        f"unescaped control character in a string at byte {self._offset + at}"
                    )
                at += 1
            elif state is _State.ESCAPE:
                byte = chunk[at]
                if byte in _SIMPLE_ESCAPES:
                    self._state = _State.STRING
                elif byte == ord("u"):
                    self._state, self._hex_left = _State.UNICODE, 4
                else:
                    self._unexpected(chunk, at)
                at += 1
            elif state is _State.UNICODE:
                if chunk[at] not in _HEX:
                    self._unexpected(chunk, at)
                self._hex_left -= 1
                if not self._hex_left:
                    self._state = _State.STRING
                at += 1
            elif state is _State.NUMBER:
                at = self._scan_number(chunk, at)
            elif state is _State.LITERAL:
                if chunk[at] != self._literal[self._literal_matched]:
                    self._unexpected(chunk, at)
                self._literal_matched += 1
                at += 1
                if self._literal_matched == len(self._literal):
                    self._end_value(chunk, at)
            else:
                at = _WHITESPACE.match(chunk, at).end()  # type: ignore[union-attr]
                if at < end:
                    self._structural(chunk, at)
                    at += 1
        self._carry_over(chunk)

    def _structural(self, chunk: bytes, at: int) -> None:
        """Take the non-whitespace byte at ``at`` in a state between tokens."""
        byte, state = chunk[at], self._state
        if state is _State.START:
            if byte != _OPEN_OBJECT:
                self._fail(
                    f"the body is not a JSON object: it starts with {chunk[at : at + 1]!r} "
                    f"at byte {self._offset + at}"
                )
            self._push(byte, at)
            self._state = _State.OBJECT_OPEN
        elif state in (_State.OBJECT_OPEN, _State.OBJECT_KEY):
            if byte == _QUOTE:
                self._start_key(at)
            elif byte == _CLOSE_OBJECT and state is _State.OBJECT_OPEN:
                self._pop()
                self._end_value(chunk, at + 1)
            else:
                self._unexpected(chunk, at)
        elif state is _State.COLON:
            if byte != _COLON:
                self._unexpected(chunk, at)
            self._state = _State.VALUE
        elif state in (_State.VALUE, _State.ARRAY_OPEN):
            if byte == _CLOSE_ARRAY and state is _State.ARRAY_OPEN:
                self._pop()
                self._end_value(chunk, at + 1)
            else:
                self._start_value(chunk, at)
        elif state is _State.AFTER_VALUE:
            container = self._stack[-1]
            if byte == _COMMA:
                self._state = _State.OBJECT_KEY if container == _OPEN_OBJECT else _State.VALUE
            elif (container, byte) in ((_OPEN_OBJECT, _CLOSE_OBJECT), (_OPEN_ARRAY, _CLOSE_ARRAY)):
                self._pop()
                self._end_value(chunk, at + 1)
            else:
                self._unexpected(chunk, at)
        else:  # _State.END
            self._fail(f"unexpected data after the top-level object at byte {self._offset + at}")

    def _start_key(self, at: int) -> None:
        self._state, self._in_key = _State.STRING, True
        if len(self._stack) == 1:  # a key of the top-level object
            self._key, self._key_start = bytearray(), at + 1
        else:
            self._key = None

    def _start_value(self, chunk: bytes, at: int) -> None:
        if len(self._stack) == 1 and self._key_matches:
            self._capture, self._capture_start = bytearray(), at
            self._key_matches = False
        byte = chunk[at]
        if byte in (_OPEN_OBJECT, _OPEN_ARRAY):
            self._push(byte, at)
            self._state = _State.OBJECT_OPEN if byte == _OPEN_OBJECT else _State.ARRAY_OPEN
        elif byte == _QUOTE:
            self._state, self._in_key = _State.STRING, False
        elif byte == _MINUS:
            self._state, self._number = _State.NUMBER, _Number.MINUS
        elif byte in _DIGIT:
            self._state = _State.NUMBER
            self._number = _Number.ZERO if byte == ord("0") else _Number.INTEGER
        elif byte in _LITERALS:
            self._state, self._literal, self._literal_matched = _State.LITERAL, _LITERALS[byte], 1
        else:
            self._unexpected(chunk, at)

    def _end_string(self, chunk: bytes, at: int) -> None:
        """The closing quote of a string is at ``at``."""
        if not self._in_key:
            self._end_value(chunk, at + 1)
            return
        self._state = _State.COLON
        self._key_matches = False
        if self._key is not None:
            self._key += chunk[self._key_start : at]
            self._key_matches = self._key_is_member(bytes(self._key))
            self._key = None

    def _key_is_member(self, raw: bytes) -> bool:
        if len(raw) > self._max_key_bytes:
            return False
        decoded: str = json.loads(b'"' + raw + b'"')  # raw was checked: escapes are valid
        return decoded == self.member

    def _end_value(self, chunk: bytes, end: int) -> None:
        """A value ended just before ``end``; close the capture if it was the member."""
        if len(self._stack) == 1 and self._capture is not None:
            self._extend_capture(chunk[self._capture_start : end])
            self._value, self._capture = bytes(self._capture), None
        self._state = _State.AFTER_VALUE if self._stack else _State.END

    def _scan_number(self, chunk: bytes, at: int) -> int:
        """Consume number bytes from ``at``; where the scan goes on."""
        number, byte = self._number, chunk[at]
        if number in _NUMBER_DIGIT_RUNS and byte in _DIGIT:
            return _DIGITS.match(chunk, at).end()  # type: ignore[union-attr]
        digit = byte in _DIGIT
        following: _Number | None = None
        if number is _Number.MINUS and digit:
            following = _Number.ZERO if byte == ord("0") else _Number.INTEGER
        elif number in (_Number.ZERO, _Number.INTEGER) and byte == ord("."):
            following = _Number.POINT
        elif number in (_Number.ZERO, _Number.INTEGER, _Number.FRACTION) and byte in b"eE":
            following = _Number.EXPONENT_MARK
        elif number is _Number.POINT and digit:
            following = _Number.FRACTION
        elif number is _Number.EXPONENT_MARK and byte in b"+-":
            following = _Number.EXPONENT_SIGN
        elif number in (_Number.EXPONENT_MARK, _Number.EXPONENT_SIGN) and digit:
            following = _Number.EXPONENT
        if following is not None:
            self._number = following
            return at + 1
        if number not in _NUMBER_ENDS:
            self._unexpected(chunk, at)
        self._end_value(chunk, at)  # the byte after the number is read in the next state
        return at

    def _push(self, byte: int, at: int) -> None:
        if len(self._stack) >= self.max_depth:
            self._fail(f"nested deeper than {self.max_depth} levels at byte {self._offset + at}")
        self._stack.append(byte)

    def _pop(self) -> None:
        self._stack.pop()

    def _extend_capture(self, piece: bytes) -> None:
        assert self._capture is not None
        if len(self._capture) + len(piece) > self.max_member_bytes:
            self._fail(
                f"member {self.member!r} is larger than the {self.max_member_bytes} bytes allowed"
            )
        self._capture += piece

    def _carry_over(self, chunk: bytes) -> None:
        """At the end of a chunk, keep what is still being read of a key or the member."""
        if self._capture is not None:
            self._extend_capture(chunk[self._capture_start :])
            self._capture_start = 0
        if self._key is not None:
            self._key += chunk[self._key_start :]
            self._key_start = 0
            if len(self._key) > self._max_key_bytes:
                self._key = None  # too long to be the member: stop keeping it


def read_member(body: bytes, member: str) -> Any:
    """The decoded value of ``body``'s top-level ``member``, read as the scanner does.

    >>> read_member(b'{"a": {"b": 1}, "b": 2}', "b")
    2
    """
    scanner = JsonMemberScanner(member)
    scanner.feed(body)
    return scanner.finish()

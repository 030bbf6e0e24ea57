"""Read one member of a streamed JSON object without holding the whole body.

Why this exists: the parser's JSON result (``GET .../result/markdown``) carries the
whole markdown of a document, megabytes for a large one, next to a small
``job_metadata`` object with the pages billed. The worker needs only that object, but
``response.json()`` would hold the raw body, its decoded text and the parsed markdown
at once. :class:`JsonMemberScanner` is fed the body piece by piece and pushes it into
ijson's event parser (its ``yajl2_c`` backend, which the ijson wheels bundle; failing
that, whichever backend ijson finds, or the one ``IJSON_BACKEND`` names). Only the
events of the wanted top-level member's value are built into Python objects; every
other value is dropped as its events go by.

Memory: the member's value, plus the largest single token of the body. ijson (yajl)
does not stream inside a token, so each string, the long markdown included, is held
whole, once as bytes in yajl's buffer and once as the ``str`` of its event, before it is
dropped. A container is never held unless it is the member.

It reads the body as strict JSON (RFC 8259): UTF-8, one top-level object, no
``NaN``/``Infinity``, nothing but whitespace after the object, so a truncated or garbled
body is noticed even when the member came before the damage. When the member occurs
more than once the last occurrence wins, as with :func:`json.loads`. A member of the
same name inside a nested value is not the top-level member and is ignored. One
difference from :func:`json.loads`, yajl's: an unpaired surrogate escape (``"\\ud800"``,
which RFC 8259 leaves undefined and I-JSON forbids) is refused, or read as ``'?'``, or
paired with the next ``\\u`` escape, where :func:`json.loads` keeps a lone surrogate.

>>> scanner = JsonMemberScanner("job_metadata")
>>> for piece in (b'{"markdown": "# A\\\\n", "job_meta', b'data": {"job_pages": 2}}'):
...     scanner.feed(piece)
>>> scanner.finish()
{'job_pages': 2}
"""

from __future__ import annotations

import codecs
import contextlib
from decimal import Decimal
from typing import Any, Final, NoReturn

import ijson

__all__ = ["JsonMemberError", "JsonMemberScanner", "read_member"]

_MISSING: Final = object()
_WHITESPACE: Final = b" \t\n\r"  # JSON's; yajl's has \v and \f too
_OPENS: Final = frozenset({"start_map", "start_array"})
_CLOSES: Final = frozenset({"end_map", "end_array"})
# What a top-level value other than an object is, for the error that refuses it.
_NOT_AN_OBJECT: Final = {
    "start_array": "an array",
    "string": "a string",
    "number": "a number",
    "boolean": "a boolean",
    "null": "null",
}


class JsonMemberError(ValueError):
    """The body is not a JSON object with the wanted top-level member."""


class JsonMemberScanner:
    """Push parser that keeps one top-level member of a JSON object.

    Feed the body with :meth:`feed` in pieces of any size, split anywhere (inside a
    key, an escape or a UTF-8 sequence), then call :meth:`finish` for the member's
    decoded value. Any problem raises :class:`JsonMemberError` (a ``ValueError``)
    saying what and where; after an error the scanner stays failed.

    ``max_member_bytes`` bounds the member's value (counted about as its compact JSON
    would be, from the events) and ``max_depth`` the nesting of objects and arrays.

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
        # yajl checks UTF-8 inside strings only, and lets some bad sequences through;
        # the codec checks every byte and says where the first bad one is.
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="strict")
        # ijson appends the events of each piece to a list, which is read after the
        # piece. Not a Python callback per event: yajl2_c sends an integer of more than
        # 4,300 digits (Python's limit) as a NULL value with the ValueError pending,
        # which crashes the interpreter in a Python callback; list.append turns it into
        # a SystemError, and the list is then never read.
        self._events = ijson.sendable_list()
        self._parser: Any = ijson.basic_parse_coro(self._events)
        self._offset = 0  # bytes fed before the current chunk
        self._any_data = False  # a byte other than whitespace was fed
        self._depth = 0  # open objects and arrays; the top-level object is depth 1
        self._started = False  # the top-level object has opened
        self._ended = False  # ... and closed
        self._key_matches = False  # the last top-level key read was the member
        self._builder: ijson.ObjectBuilder | None = None  # the member's value being built
        self._size = 0
        self._value: Any = _MISSING
        self._error: JsonMemberError | None = None
        self._finished = False

    def feed(self, chunk: bytes) -> None:
        """Scan the next piece of the body; :class:`JsonMemberError` if it is wrong."""
        if self._error is not None:
            raise self._error
        if self._finished:
            raise JsonMemberError("feed() after finish()")
        if not chunk:
            return  # ijson would take an empty piece for the end of the body
        chunk = bytes(chunk)
        pending = len(self._utf8.getstate()[0])
        try:
            self._utf8.decode(chunk)
        except UnicodeDecodeError as error:
            self._fail(f"not valid UTF-8 at byte {self._offset - pending + error.start}")
        # yajl takes a vertical tab or a form feed for whitespace; JSON allows neither
        # between tokens, nor raw inside a string, so such a byte is wrong anywhere.
        for byte, name in ((b"\v", "vertical tab"), (b"\f", "form feed")):
            if (at := chunk.find(byte)) >= 0:
                self._fail(f"not JSON: a {name} at byte {self._offset + at}")
        if not self._any_data:
            self._any_data = bool(chunk.strip(_WHITESPACE))
        if self._ended:
            self._expect_whitespace(chunk, 0)
        elif (brace := chunk.rfind(b"}")) < 0:
            self._push(chunk, self._offset)
        else:
            # yajl says nothing of a string left open after the top-level object
            # (b'{} "abc}'), so the last '}' of a piece goes to it alone: if the object
            # ends there, what follows is checked here; if it ended before, that '}' is
            # past its end.
            if self._push(chunk[:brace], self._offset):
                self._fail(
                    "unexpected data after the top-level object: "
                    f"byte {self._offset + brace} is past its end"
                )
            if self._push(chunk[brace : brace + 1], self._offset + brace):
                self._expect_whitespace(chunk, brace + 1)
            else:
                self._push(chunk[brace + 1 :], self._offset + brace + 1)
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
        if not self._ended:
            self._push(None, self._offset)
        if self._value is _MISSING:
            self._fail(f"the object has no top-level member {self.member!r}")
        return self._value

    def _fail(self, message: str) -> NoReturn:
        self._error = JsonMemberError(message)
        # Closed now, not when collected: ijson's pure Python parser would then complain
        # of the unfinished body as an exception nobody can catch.
        parser, self._parser = self._parser, None
        with contextlib.suppress(Exception):
            parser.close()
        raise self._error

    def _expect_whitespace(self, chunk: bytes, start: int) -> None:
        """Only whitespace may follow the top-level object: none of it goes to ijson."""
        rest = chunk[start:]
        if stripped := rest.lstrip(_WHITESPACE):
            at = self._offset + start + len(rest) - len(stripped)
            self._fail(f"unexpected data after the top-level object at byte {at}")

    def _push(self, piece: bytes | None, at: int) -> bool:
        """Give ijson the piece of the body at byte ``at``, or None for the end; its
        errors made ours. Whether the top-level object has ended."""
        if piece == b"":
            return self._ended  # ijson would take it for the end of the body
        try:
            if piece is None:
                self._parser.close()
            else:
                self._parser.send(piece)
        except ijson.JSONError as error:
            self._take_events()  # those before the error: they tell where it is
            reason = str(error).partition("\n")[0].rstrip(".")[:200]  # no copy of the body
            self._fail(self._describe(piece, at, reason))
        except UnicodeDecodeError:
            # The bytes were UTF-8 (checked in feed): yajl2_c made this one by writing an
            # unpaired \udc00-\udfff escape as UTF-8, which Python refuses to decode.
            self._fail("a string holds an unpaired surrogate escape")
        except SystemError as error:  # see __init__; the last event is not to be read
            if not isinstance(error.__cause__, ValueError):
                raise
            self._fail(f"a value cannot be decoded: {error.__cause__}")
        except ValueError as error:  # the same from the pure Python backend
            self._fail(f"a value cannot be decoded: {error}")
        self._take_events()
        return self._ended

    def _take_events(self) -> None:
        for event in self._events:
            self._event(event)
        self._events.clear()

    def _describe(self, piece: bytes | None, at: int, reason: str) -> str:
        """What is wrong with the body, given ijson's ``reason`` and where it stopped."""
        if not self._any_data:
            return "empty body: expected a JSON object"
        if not self._started:
            return f"the body is not a JSON object: {reason}"
        if piece is None:
            return f"truncated body: it ends after {at} bytes at depth {self._depth} ({reason})"
        if self._ended:
            return f"unexpected data after the top-level object ({reason})"
        # Where ijson noticed it: the token at fault may have begun in an earlier piece.
        return f"malformed JSON before byte {at + len(piece)} ({reason})"

    def _event(self, event: tuple[str, Any]) -> None:
        """Take one parsing event; build it into the member's value if it is part of it."""
        kind, value = event
        if not self._started:  # the first event: ijson refuses a second top-level value
            if kind != "start_map":
                self._fail(f"the body is not a JSON object: it is {_NOT_AN_OBJECT[kind]}")
            self._started, self._depth = True, 1
            return
        if self._depth == 1 and kind == "map_key":
            self._key_matches = value == self.member
            return
        if self._depth == 1 and kind == "end_map":
            self._ended, self._depth = True, 0
            return
        # Any other event belongs to a value: it starts one at depth 1, or is inside one.
        if self._depth == 1 and self._key_matches:
            self._builder, self._size, self._key_matches = ijson.ObjectBuilder(), 0, False
        if kind in _OPENS:
            self._depth += 1
            if self._depth > self.max_depth:
                self._fail(f"nested deeper than {self.max_depth} levels")
        elif kind in _CLOSES:
            self._depth -= 1
        if self._builder is None:
            return
        if isinstance(value, Decimal):  # ijson's number with a fraction or an exponent:
            value = float(value)  # a float, as json.loads reads it (and 1e400 is inf)
        # About the member's size as compact JSON: a string or key with its quotes and a
        # separator, any other token as its Python text (None, True, 1.5) and a separator.
        self._size += len(value) + 3 if isinstance(value, str) else len(str(value)) + 1
        if self._size > self.max_member_bytes:
            self._fail(
                f"member {self.member!r} is larger than the {self.max_member_bytes} bytes allowed"
            )
        self._builder.event(kind, value)
        if self._depth == 1:  # the member's value is complete
            self._value, self._builder = self._builder.value, None


def read_member(body: bytes, member: str) -> Any:
    """The decoded value of ``body``'s top-level ``member``, read as the scanner does.

    >>> read_member(b'{"a": {"b": 1}, "b": 2}', "b")
    2
    """
    scanner = JsonMemberScanner(member)
    scanner.feed(body)
    return scanner.finish()

"""Read one member of a streamed JSON object without holding the whole body.

Why this exists: the parser's JSON result (``GET .../result/markdown``) carries the
whole markdown of a document, megabytes for a large one, next to a small
``job_metadata`` object with the pages billed. The worker needs only that object, but
``response.json()`` would hold the raw body, its decoded text and the parsed markdown
at once. :class:`JsonMemberScanner` is fed the body piece by piece and pushes it into
ijson's event parser (its ``yajl2_c`` backend, which the ijson wheels bundle; failing
that, whichever backend ijson finds, or the one ``IJSON_BACKEND`` names: the pure
Python one takes any Unicode space between tokens, and words its errors otherwise). Only the
events of the wanted top-level member's value are built into Python objects; every
other value is dropped as its events go by.

ijson does not stream inside a token: yajl would hold each string whole, the markdown
included, once in its buffer and once as the ``str`` of its event. So every string is
cut down to ``max_member_bytes`` before ijson sees it (:class:`_StringTrimmer`): a string
that long cannot be in the member without making it too large, which is then the error.
Memory: the member's value, a few times ``max_member_bytes`` for the string being read,
and the events of one piece. A number is not cut: a number of megabytes would be held.

It reads the body as strict JSON (RFC 8259): UTF-8, one top-level object, no
``NaN``/``Infinity``, nothing but whitespace after the object, so a truncated or garbled
body is noticed even when the member came before the damage. When the member occurs
more than once the last occurrence wins, as with :func:`json.loads`. A member of the
same name inside a nested value is not the top-level member and is ignored. Two
differences from :func:`json.loads`. yajl's: an unpaired surrogate escape (``"\\ud800"``,
which RFC 8259 leaves undefined and I-JSON forbids) is refused, or read as ``'?'``, or
paired with the next ``\\u`` escape, where :func:`json.loads` keeps a lone surrogate.
And ijson's: a number with an exponent past :class:`~decimal.Decimal`'s range (about
10**18) is refused, where :func:`json.loads` reads ``inf`` or ``0.0``.

>>> scanner = JsonMemberScanner("job_metadata")
>>> for piece in (b'{"markdown": "# A\\\\n", "job_meta', b'data": {"job_pages": 2}}'):
...     scanner.feed(piece)
>>> scanner.finish()
{'job_pages': 2}
"""

from __future__ import annotations

import codecs
import contextlib
import re
from collections import deque
from decimal import Decimal
from typing import Any, Final, NoReturn

import ijson

__all__ = ["JsonMemberError", "JsonMemberScanner", "read_member"]

_MISSING: Final = object()
_WHITESPACE: Final = b" \t\n\r"  # JSON's; yajl's has \v and \f too
_CONTROL: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")
# The inside of a string up to its closing quote: plain bytes (UTF-8 is checked apart)
# and whole escapes. It stops at the quote, at a control character, at a bad escape, and
# at an escape cut off by the end of a piece.
_STRING_BODY: Final = re.compile(rb'(?:[^"\\\x00-\x1f]++|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*+')
_CUT_ESCAPE: Final = re.compile(rb"\\(?:u[0-9a-fA-F]{0,3})?")
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


class _StringTrimmer:
    """Cuts every string of the body down to ``limit`` bytes before ijson sees it.

    Why: yajl holds each string token whole, and the body's markdown is one string of
    megabytes. This keeps track of where strings begin and end (nothing else of the
    grammar) and passes only the first ``limit`` bytes of a longer one, cut between two
    characters or escapes, so the string stays a string. The bytes it drops are checked
    as yajl would (the pattern); at anything else it stops dropping, and yajl complains.
    ``trimmed`` lists, by their rank among the body's strings and keys, those it cut.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.trimmed: deque[int] = deque()
        self._rank = 0  # strings and keys opened so far
        self._inside = False
        self._kept = 0  # bytes of the current string passed on
        self._held = b""  # an escape cut off by the end of the last piece

    def __call__(self, piece: bytes) -> list[bytes]:
        """The parts of ``piece`` (after what was held back) that ijson is to see."""
        piece = self._held + piece
        # A character cut off by the end of the piece waits for the next one, so that a
        # string is only ever cut between two characters.
        complete = _complete_utf8(piece)
        piece, self._held = piece[:complete], piece[complete:]
        parts: list[bytes] = []
        at, end = 0, len(piece)
        while at < end:
            if not self._inside:
                quote = piece.find(b'"', at)
                if quote < 0:
                    parts.append(piece[at:])
                    break
                parts.append(piece[at : quote + 1])
                at, self._inside, self._kept = quote + 1, True, 0
                self._rank += 1
                continue
            stop = _STRING_BODY.match(piece, at).end()  # type: ignore[union-attr]
            room = self.limit - self._kept
            if stop - at <= room:
                parts.append(piece[at:stop])
                self._kept += stop - at
            elif room >= 0:  # this run goes past the limit: keep what fits, drop the rest
                parts.append(piece[at : self._cut(piece, at, at + room)])
                self._kept = self.limit + 1
                self.trimmed.append(self._rank)
            at = stop
            if at == end:
                break
            if piece[at] == ord('"'):
                parts.append(b'"')
                at, self._inside = at + 1, False
            elif _CUT_ESCAPE.fullmatch(piece, at):
                self._held = piece[at:] + self._held  # decided with the next piece
                break
            else:  # a control character or a bad escape: yajl is to say so
                parts.append(piece[at:])
                break
        return parts

    @staticmethod
    def _cut(piece: bytes, start: int, cut: int) -> int:
        """The last place at or before ``cut`` that is not inside a character or an
        escape, in a run of valid string bytes that begins at ``start``."""
        while 0x80 <= piece[cut] < 0xC0:  # a UTF-8 continuation byte: back to its lead
            cut -= 1
        backslash = piece.rfind(b"\\", max(start, cut - 6), cut)
        if backslash < 0:
            return cut
        first = backslash
        while first > start and piece[first - 1] == ord("\\"):
            first -= 1
        if (backslash - first) % 2:  # the second byte of an escaped backslash
            return cut
        length = 6 if piece[backslash + 1] == ord("u") else 2
        return backslash if cut < backslash + length else cut


def _complete_utf8(piece: bytes) -> int:
    """Where a UTF-8 sequence left incomplete at the end of ``piece`` begins (its length
    if none is). The bytes are valid UTF-8 as far as they go: checked before."""
    for back in range(1, min(3, len(piece)) + 1):
        byte = piece[-back]
        if byte < 0x80:
            break
        if byte >= 0xC0:  # the lead byte, which tells the length
            needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(piece) - back if needed > back else len(piece)
    return len(piece)


class JsonMemberScanner:
    """Push parser that keeps one top-level member of a JSON object.

    Feed the body with :meth:`feed` in pieces of any size, split anywhere (inside a
    key, an escape or a UTF-8 sequence), then call :meth:`finish` for the member's
    decoded value. Any problem raises :class:`JsonMemberError` (a ``ValueError``)
    saying what and where; after an error the scanner stays failed.

    ``max_member_bytes`` bounds the member's value (counted about as its compact JSON
    would be, from the events) and the bytes of any one string that reach the parser;
    ``max_depth`` bounds the nesting of objects and arrays.

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
        # A key longer than 12 bytes a character (a surrogate pair of \u escapes) cannot
        # be the member, nor a string longer than max_member_bytes be in it.
        self._trim = _StringTrimmer(max(max_member_bytes, 12 * len(member)))
        self._strings = 0  # string and key events read
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
        # JSON allows no control character but \t, \n and \r, raw in a string or between
        # tokens, and yajl takes \v and \f for whitespace (the pure Python backend, \x1c
        # to \x1f too): such a byte is refused here, wherever it is.
        if control := _CONTROL.search(chunk):
            at = self._offset + control.start()
            self._fail(f"not JSON: a control character (0x{control[0][0]:02x}) at byte {at}")
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
                for part in self._trim(piece):
                    if part:
                        self._parser.send(part)
        except ijson.JSONError as error:
            self._take_events()  # those before the error: they tell where it is
            reason = str(error).partition("\n")[0].rstrip(".")[:200]  # no copy of the body
            self._fail(self._describe(piece, at, reason))
        except UnicodeDecodeError:
            # The bytes were UTF-8 (checked in feed): yajl2_c made this one by writing an
            # unpaired \udc00-\udfff escape as UTF-8, which Python refuses to decode.
            self._fail("a string holds an unpaired surrogate escape")
        except ArithmeticError:  # decimal.InvalidOperation, where json.loads reads inf or 0.0
            self._fail("a value cannot be decoded: a number's exponent is past Decimal's range")
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
        trimmed = False
        if kind in ("string", "map_key"):
            self._strings += 1
            if self._trim.trimmed and self._trim.trimmed[0] == self._strings:
                self._trim.trimmed.popleft()
                trimmed = True
        if not self._started:  # the first event: ijson refuses a second top-level value
            if kind != "start_map":
                self._fail(f"the body is not a JSON object: it is {_NOT_AN_OBJECT[kind]}")
            self._started, self._depth = True, 1
            return
        if self._depth == 1 and kind == "map_key":
            self._key_matches = value == self.member and not trimmed
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
        if self._size > self.max_member_bytes or trimmed:
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

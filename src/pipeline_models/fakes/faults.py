"""Fault injection for the fake services: what goes wrong, when, and how a client sees it.

A :class:`FaultPlan` is a script of :class:`Fault` values (``None`` = a healthy request)
consumed one per request, in order, by the endpoints it names. The fake apps are
:class:`FakeServiceApp` instances: before a request reaches a route, a gate asks the
plan for the next fault and applies it (an HTTP error, a mangled body, latency), or
raises :class:`NetworkFault` for the failures that happen below HTTP. In process,
:class:`FaultTransport` turns that exception into the client library's own
``ReadTimeout`` or ``ConnectError``; over sockets, ``serve.py`` turns it into real
socket behaviour.

>>> plan = FaultPlan([Fault.rate_limit(retry_after=2.0), None], endpoints=["embeddings"])
>>> plan.next_fault("upload") is None  # not named: healthy, and the script is untouched
True
>>> plan.next_fault("embeddings")
Fault.rate_limit(retry_after=2.0)
>>> plan.next_fault("embeddings") is None
True
>>> plan
FaultPlan([Fault.rate_limit(retry_after=2.0), None], endpoints=['embeddings'])
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar

import httpx
import httpx2
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PARSER_ENDPOINTS = ("upload", "status", "result")
"""Fault endpoint names of the parser fake."""

EMBEDDINGS_ENDPOINTS = ("embeddings", "models")
"""Fault endpoint names of the embeddings fake."""

ENDPOINTS = frozenset(PARSER_ENDPOINTS + EMBEDDINGS_ENDPOINTS)
"""Every endpoint name a :class:`FaultPlan` may target."""

DEFAULT_TIMEOUT_HOLD = 30.0
"""Seconds a served fake holds a timed-out request (the client's own timeout fires first)."""

FAULT_SCOPE_KEY = "pipeline_models.fault"
"""ASGI scope key under which the gate hands a served-normally fault to the route."""


class FaultKind(StrEnum):
    """What goes wrong with one request."""

    RATE_LIMIT = "rate_limit"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    MALFORMED_BODY = "malformed_body"
    WRONG_DIMENSION = "wrong_dimension"
    PERMANENT_ERROR = "permanent_error"
    LATENCY = "latency"


NETWORK_KINDS = frozenset({FaultKind.TIMEOUT, FaultKind.CONNECTION_ERROR})
"""Fault kinds that happen below HTTP and surface as :class:`NetworkFault`."""

# The openai SDK retries 408 (request timeout) and 409 (lock timeout) and 429 on its
# own, so a "permanent" fault with one of those codes would not be permanent.
_RETRIED_4XX = frozenset({408, 409, 429})


def _check_number(value: object, name: str, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return number


def _check_offset(value: object, name: str) -> float:
    """Seconds from now, either way (a Retry-After date may be in the past)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _check_status(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int HTTP status, got {value!r}")
    return value


def retry_after_header(seconds: float, *, as_date: bool = False) -> str:
    """The Retry-After value for ``seconds``: ``"1"`` for 1.0, ``"0.25"`` for 0.25.

    Integral delays are standard HTTP delta-seconds; fractional ones are a nonstandard
    extension that the openai SDK accepts (it parses the header as a float). ``as_date``:
    the HTTP date ``seconds`` from now (the process's clock, the checker's under it).

    >>> retry_after_header(-1.0, as_date=True).endswith(" GMT")
    True
    """
    if as_date:
        when = datetime.now(UTC) + timedelta(seconds=seconds)
        return email.utils.format_datetime(when, usegmt=True)
    return str(int(seconds)) if seconds == int(seconds) else repr(seconds)


@dataclass(frozen=True, repr=False)
class Fault:
    """One injected failure. Build it with a constructor, which validates its arguments.

    ``status`` is the HTTP status of HTTP-level faults, ``retry_after`` the Retry-After of
    a rate limit (``None`` = no header), ``seconds`` the delay of a latency fault or how
    long a served fake holds a timed-out request. ``retry_after_date``: the Retry-After is
    sent as an HTTP date ``retry_after`` seconds from the fake's now (negative: a date
    already past, which a client must take as "now", not as a wait).

    >>> Fault.server_error(status=502)
    Fault.server_error(status=502)
    >>> Fault.from_json(Fault.timeout().to_json()) == Fault.timeout()
    True
    >>> Fault.permanent(status=404)
    Fault.permanent(status=404)
    """

    kind: FaultKind
    status: int | None = None
    retry_after: float | None = None
    seconds: float = 0.0
    retry_after_date: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.kind, FaultKind):
            raise TypeError(
                f"Fault.kind must be a FaultKind, got {self.kind!r}; "
                f"valid kinds: {', '.join(kind.value for kind in FaultKind)}"
            )
        name = f"Fault({self.kind.value})"
        expected_status = {FaultKind.RATE_LIMIT: 429}.get(self.kind)
        if self.kind is FaultKind.SERVER_ERROR:
            status = _check_status(self.status, f"{name}.status")
            if not 500 <= status <= 599:
                raise ValueError(
                    f"Fault.server_error(status={status}): a server error needs a 5xx status, "
                    "such as 500, 502, 503 or 504"
                )
        elif self.kind is FaultKind.PERMANENT_ERROR:
            status = _check_status(self.status, f"{name}.status")
            if not 400 <= status <= 499:
                raise ValueError(
                    f"Fault.permanent(status={status}): a permanent error needs a 4xx status, "
                    "such as 400, 401, 403, 404, 413 or 422"
                )
            if status in _RETRIED_4XX:
                raise ValueError(
                    f"Fault.permanent(status={status}): {status} is retried by clients, so it "
                    "is not permanent; use Fault.rate_limit(...) or another 4xx such as "
                    "400, 401, 403, 404, 413, 422"
                )
        elif self.status != expected_status:
            raise ValueError(
                f"{name}: status must be {expected_status}, got {self.status!r}; "
                "build faults with the Fault.<kind>(...) constructors"
            )
        if self.retry_after is not None:
            if self.kind is not FaultKind.RATE_LIMIT:
                raise ValueError(f"{name}: only a rate limit carries retry_after")
            if self.retry_after_date:
                _check_offset(self.retry_after, "Fault.rate_limit(retry_after=...)")
            else:
                _check_number(self.retry_after, "Fault.rate_limit(retry_after=...)", positive=False)
        elif self.retry_after_date:
            raise ValueError(f"{name}: a Retry-After date needs retry_after (seconds from now)")
        if self.kind in (FaultKind.LATENCY, FaultKind.TIMEOUT):
            _check_number(self.seconds, f"{name}.seconds", positive=True)
        elif self.seconds != 0.0:
            raise ValueError(f"{name}: only latency and timeout faults take seconds")

    @classmethod
    def rate_limit(cls, retry_after: float | None = 1.0, *, as_date: bool = False) -> Fault:
        """429 Too Many Requests with ``Retry-After: retry_after`` (no header if ``None``);
        ``as_date``: the header is the HTTP date ``retry_after`` seconds from now, which
        may be negative (a date in the past).

        >>> Fault.rate_limit(-30.0, as_date=True)
        Fault.rate_limit(retry_after=-30.0, as_date=True)
        """
        if retry_after is not None:
            name = "Fault.rate_limit(retry_after=...)"
            retry_after = (
                _check_offset(retry_after, name)
                if as_date
                else _check_number(retry_after, name, positive=False)
            )
        return cls(
            FaultKind.RATE_LIMIT, status=429, retry_after=retry_after, retry_after_date=as_date
        )

    @classmethod
    def server_error(cls, status: int = 503) -> Fault:
        """A transient 5xx with a JSON error body."""
        return cls(FaultKind.SERVER_ERROR, status=status)

    @classmethod
    def timeout(cls, seconds: float = DEFAULT_TIMEOUT_HOLD) -> Fault:
        """No answer. In process the client times out at once; served, the request is held
        for ``seconds`` (so the client's own timeout fires) and then dropped."""
        return cls(
            FaultKind.TIMEOUT,
            seconds=_check_number(seconds, "Fault.timeout(seconds=...)", positive=True),
        )

    @classmethod
    def connection_error(cls) -> Fault:
        """The connection fails: ``ConnectError`` in process, a dropped connection served."""
        return cls(FaultKind.CONNECTION_ERROR)

    @classmethod
    def malformed_body(cls) -> Fault:
        """The request is served (side effects happen) but the 200 body is cut short.

        JSON bodies become their first half, never valid JSON; other bodies (raw markdown)
        become their first half followed by ``\\xff``, never valid UTF-8.
        """
        return cls(FaultKind.MALFORMED_BODY)

    @classmethod
    def wrong_dimension(cls) -> Fault:
        """Embeddings one component longer than asked (the parser serves normally)."""
        return cls(FaultKind.WRONG_DIMENSION)

    @classmethod
    def permanent(cls, status: int = 400) -> Fault:
        """A 4xx that no retry will fix (not 408, 409 or 429, which clients retry)."""
        return cls(FaultKind.PERMANENT_ERROR, status=status)

    @classmethod
    def latency(cls, seconds: float) -> Fault:
        """Wait ``seconds`` and then serve normally."""
        return cls(
            FaultKind.LATENCY,
            seconds=_check_number(seconds, "Fault.latency(seconds)", positive=True),
        )

    @property
    def is_network(self) -> bool:
        """True for faults below HTTP (timeout, connection error)."""
        return self.kind in NETWORK_KINDS

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_json` reads it back."""
        data = {
            "kind": self.kind.value,
            "status": self.status,
            "retry_after": self.retry_after,
            "seconds": self.seconds,
        }
        if self.retry_after_date:
            data["retry_after_date"] = True
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fault:
        """Read a fault from :meth:`to_json` output. Absent fields take the constructor's
        defaults, so ``{"kind": "rate_limit"}`` is a valid fault."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a fault must be a JSON object, got {data!r}")
        unknown = set(data) - {"kind", "status", "retry_after", "seconds", "retry_after_date"}
        if unknown:
            raise ValueError(
                f"unknown fault fields {sorted(unknown)} in {dict(data)!r}; "
                "valid fields: kind, status, retry_after, seconds, retry_after_date"
            )
        try:
            kind = FaultKind(str(data.get("kind")))
        except ValueError:
            raise ValueError(
                f"unknown fault kind {data.get('kind')!r}; "
                f"valid kinds: {', '.join(kind.value for kind in FaultKind)}"
            ) from None
        builders: dict[FaultKind, Callable[[], Fault]] = {
            FaultKind.RATE_LIMIT: lambda: cls.rate_limit(
                data.get("retry_after", 1.0), as_date=bool(data.get("retry_after_date", False))
            ),
            FaultKind.SERVER_ERROR: lambda: cls.server_error(data.get("status", 503)),
            FaultKind.TIMEOUT: lambda: cls.timeout(data.get("seconds", DEFAULT_TIMEOUT_HOLD)),
            FaultKind.CONNECTION_ERROR: cls.connection_error,
            FaultKind.MALFORMED_BODY: cls.malformed_body,
            FaultKind.WRONG_DIMENSION: cls.wrong_dimension,
            FaultKind.PERMANENT_ERROR: lambda: cls.permanent(data.get("status", 400)),
            FaultKind.LATENCY: lambda: cls.latency(data.get("seconds", 0.0)),
        }
        fault = builders[kind]()
        # Fields the kind fixes may be present (to_json writes them all) but must agree.
        for field, value in fault.to_json().items():
            if field in data and data[field] != value:
                raise ValueError(
                    f"fault {dict(data)!r}: {field} must be {value!r} for kind {kind.value!r}"
                )
        return fault

    def __repr__(self) -> str:
        match self.kind:
            case FaultKind.RATE_LIMIT if self.retry_after_date:
                return f"Fault.rate_limit(retry_after={self.retry_after!r}, as_date=True)"
            case FaultKind.RATE_LIMIT:
                return f"Fault.rate_limit(retry_after={self.retry_after!r})"
            case FaultKind.SERVER_ERROR:
                return f"Fault.server_error(status={self.status})"
            case FaultKind.PERMANENT_ERROR:
                return f"Fault.permanent(status={self.status})"
            case FaultKind.LATENCY:
                return f"Fault.latency({self.seconds!r})"
            case FaultKind.TIMEOUT if self.seconds != DEFAULT_TIMEOUT_HOLD:
                return f"Fault.timeout(seconds={self.seconds!r})"
            case _:
                return f"Fault.{self.kind.value}()"


def _check_endpoints(endpoints: Iterable[str] | None) -> frozenset[str] | None:
    if endpoints is None:
        return None
    if isinstance(endpoints, str):
        raise TypeError(f"endpoints must be a list of names, not the string {endpoints!r}")
    names = frozenset(endpoints)
    unknown = names - ENDPOINTS
    if unknown:
        raise ValueError(
            f"unknown endpoints {sorted(unknown)}; parser endpoints are "
            f"{', '.join(PARSER_ENDPOINTS)} and embeddings endpoints are "
            f"{', '.join(EMBEDDINGS_ENDPOINTS)}"
        )
    return names


class FaultPlan:
    """A script of faults consumed one per request, in order, by the named endpoints.

    ``script`` holds ``Fault`` or ``None`` (a healthy request). Requests to endpoints not
    in ``endpoints`` (``None`` = every endpoint) are healthy and leave the script alone.
    ``repeat`` loops the script; otherwise requests after its end are healthy.
    ``latency`` seconds are added to every request to a service endpoint, named or not
    (the ``/_fake`` admin endpoints never see faults or latency). The plan records the
    requests it saw (``requests``, by endpoint) and the faults it gave out
    (``injected``). It is thread-safe: a served fake may run in another thread.

    >>> plan = FaultPlan([None, Fault.server_error()], repeat=True)
    >>> [plan.next_fault("status") for _ in range(3)]
    [None, Fault.server_error(status=503), None]
    >>> plan.injected
    [('status', Fault.server_error(status=503))]
    """

    def __init__(
        self,
        script: Iterable[Fault | None] = (),
        *,
        endpoints: Iterable[str] | None = None,
        repeat: bool = False,
        latency: float = 0.0,
    ) -> None:
        steps = tuple(script)
        for index, step in enumerate(steps):
            if step is not None and not isinstance(step, Fault):
                raise TypeError(
                    f"FaultPlan script[{index}] is {step!r}; each step must be a Fault or None"
                )
        if not isinstance(repeat, bool):
            raise TypeError(f"FaultPlan repeat must be a bool, got {repeat!r}")
        self._script = steps
        self._endpoints = _check_endpoints(endpoints)
        self._repeat = repeat
        self._latency = _check_number(latency, "FaultPlan latency", positive=False)
        self._lock = threading.Lock()
        self._position = 0
        self._requests: Counter[str] = Counter()
        self._injected: list[tuple[str, Fault]] = []

    @classmethod
    def healthy(cls) -> FaultPlan:
        """A plan that never injects anything."""
        return cls()

    @property
    def script(self) -> tuple[Fault | None, ...]:
        return self._script

    @property
    def endpoints(self) -> frozenset[str] | None:
        return self._endpoints

    @property
    def repeat(self) -> bool:
        return self._repeat

    @property
    def latency(self) -> float:
        return self._latency

    @property
    def position(self) -> int:
        """How many script steps have been consumed (modulo the length when repeating)."""
        with self._lock:
            return self._position

    @property
    def exhausted(self) -> bool:
        """True once every later request is healthy (apart from ``latency``)."""
        with self._lock:
            return not self._repeat and self._position >= len(self._script)

    @property
    def requests(self) -> Counter[str]:
        """Requests seen, by endpoint, including endpoints the plan does not name."""
        with self._lock:
            return Counter(self._requests)

    @property
    def injected(self) -> list[tuple[str, Fault]]:
        """The faults given out so far, with the endpoint that received each."""
        with self._lock:
            return list(self._injected)

    def next_fault(self, endpoint: str) -> Fault | None:
        """Record a request to ``endpoint`` and return its fault (``None`` = healthy)."""
        with self._lock:
            self._requests[endpoint] += 1
            if self._endpoints is not None and endpoint not in self._endpoints:
                return None
            if self._position >= len(self._script):
                return None
            fault = self._script[self._position]
            self._position += 1
            if self._repeat and self._position == len(self._script):
                self._position = 0
            if fault is not None:
                self._injected.append((endpoint, fault))
            return fault

    def to_json(self) -> dict[str, Any]:
        """The plan's configuration as a JSON-ready dict (not its progress)."""
        return {
            "script": [None if step is None else step.to_json() for step in self._script],
            "endpoints": None if self._endpoints is None else sorted(self._endpoints),
            "repeat": self._repeat,
            "latency": self._latency,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FaultPlan:
        """A fresh plan from :meth:`to_json` output; absent fields take their defaults."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a fault plan must be a JSON object, got {data!r}")
        unknown = set(data) - {"script", "endpoints", "repeat", "latency"}
        if unknown:
            raise ValueError(
                f"unknown fault plan fields {sorted(unknown)}; "
                "valid fields: script, endpoints, repeat, latency"
            )
        script = data.get("script", [])
        if not isinstance(script, list):
            raise TypeError(f"fault plan script must be a list, got {script!r}")
        return cls(
            [None if step is None else Fault.from_json(step) for step in script],
            endpoints=data.get("endpoints"),
            repeat=data.get("repeat", False),
            latency=data.get("latency", 0.0),
        )

    def __repr__(self) -> str:
        if self.to_json() == _HEALTHY_JSON:
            return "FaultPlan.healthy()"
        parts = [repr(list(self._script))]
        if self._endpoints is not None:
            parts.append(f"endpoints={sorted(self._endpoints)!r}")
        if self._repeat:
            parts.append("repeat=True")
        if self._latency:
            parts.append(f"latency={self._latency!r}")
        return f"FaultPlan({', '.join(parts)})"


_HEALTHY_JSON = FaultPlan().to_json()


class NetworkFault(Exception):
    """Raised by a fake app for a failure below HTTP (a timeout or a connection error).

    Nothing has been sent when it is raised. :class:`FaultTransport` turns it into the
    client library's exception; the served middleware turns it into socket behaviour.
    """

    def __init__(self, fault: Fault, *, endpoint: str | None = None) -> None:
        if not fault.is_network:
            raise ValueError(
                f"NetworkFault needs a timeout or connection_error fault, got {fault!r}"
            )
        where = f" on endpoint {endpoint!r}" if endpoint else ""
        super().__init__(f"injected {fault!r}{where}")
        self.fault = fault
        self.endpoint = endpoint


def current_fault(scope: Scope) -> Fault | None:
    """The fault the gate let through to the route (wrong dimension, latency), if any."""
    fault = scope.get(FAULT_SCOPE_KEY)
    return fault if isinstance(fault, Fault) else None


class FakeService:
    """State every fake shares: a settable fault plan and request counters.

    The served app reads ``faults`` on every request, so assigning a new plan takes
    effect at the next request (``PUT /_fake/faults`` does the same over HTTP).
    """

    name: ClassVar[str] = "fake"

    def __init__(self, faults: FaultPlan | None = None) -> None:
        self.faults = FaultPlan.healthy() if faults is None else faults
        # Lifetime counters; the plan's own counters restart with each new plan.
        self.requests: Counter[str] = Counter()
        # When each request arrived (time.monotonic(), endpoint): what a rate limit counts.
        self.arrivals: list[tuple[float, str]] = []

    @property
    def faults(self) -> FaultPlan:
        return self._faults

    @faults.setter
    def faults(self, plan: FaultPlan) -> None:
        if not isinstance(plan, FaultPlan):
            raise TypeError(f"{self.name} faults must be a FaultPlan, got {plan!r}")
        self._faults = plan

    def stats(self) -> dict[str, Any]:
        """Counters as JSON (``GET /_fake/stats``); subclasses add their own."""
        plan = self.faults
        return {
            "service": self.name,
            "requests": dict(sorted(self.requests.items())),
            "faults": plan.to_json(),
            "injected": [[endpoint, fault.to_json()] for endpoint, fault in plan.injected],
        }


ErrorResponder = Callable[[Fault], Response]


def _mangle(body: bytes, content_type: str) -> bytes:
    # Every JSON body of the fakes is an object, and no strict prefix of an object is
    # valid JSON. Text gets a byte that is never valid UTF-8, so a client that decodes
    # strictly (the charset is declared) notices the damage.
    half = body[: len(body) // 2]
    if "json" in content_type:
        return half or b"{"
    return half + b"\xff"


class _FaultGate:
    """ASGI middleware in front of the whole app, outside Starlette's error middleware,
    so a NetworkFault leaves the app before anything (not even a 500) was sent."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Sequence[BaseRoute],
        service: FakeService,
        endpoint_names: Mapping[str, str],
        error_response: ErrorResponder,
    ) -> None:
        self.app = app
        self.routes = routes
        self.service = service
        self.endpoint_names = endpoint_names
        self.error_response = error_response

    def endpoint(self, scope: Scope) -> str | None:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                name = getattr(route, "name", None)
                return self.endpoint_names.get(name) if isinstance(name, str) else None
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoint(scope) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        self.service.requests[endpoint] += 1
        self.service.arrivals.append((time.monotonic(), endpoint))
        plan = self.service.faults
        fault = plan.next_fault(endpoint)
        delay = plan.latency
        if fault is not None and fault.kind is FaultKind.LATENCY:
            delay += fault.seconds
        if delay > 0:
            await asyncio.sleep(delay)
        if fault is None or fault.kind in (FaultKind.LATENCY, FaultKind.WRONG_DIMENSION):
            scope[FAULT_SCOPE_KEY] = fault
            await self.app(scope, receive, send)
        elif fault.is_network:
            raise NetworkFault(fault, endpoint=endpoint)
        elif fault.kind is FaultKind.MALFORMED_BODY:
            await self._serve_malformed(scope, receive, send)
        else:
            await self.error_response(fault)(scope, receive, send)

    async def _serve_malformed(self, scope: Scope, receive: Receive, send: Send) -> None:
        start: Message = {"type": "http.response.start", "status": 200, "headers": []}
        body = bytearray()

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))

        await self.app(scope, receive, capture)
        headers = MutableHeaders(raw=list(start.get("headers", [])))
        mangled = _mangle(bytes(body), headers.get("content-type", ""))
        headers["content-length"] = str(len(mangled))
        await send({"type": "http.response.start", "status": 200, "headers": headers.raw})
        await send({"type": "http.response.body", "body": mangled, "more_body": False})


class FakeServiceApp(Starlette):
    """A Starlette app whose requests pass the fault gate first, plus admin routes.

    ``endpoint_names`` maps route names to fault endpoint names; other routes (the admin
    ones included) never see a fault. ``error_response`` renders HTTP faults (rate limit,
    server error, permanent error) in the service's own error shape. The admin routes
    ``PUT /_fake/faults`` (a plan as JSON) and ``GET /_fake/stats`` need no auth.
    Faults come before authentication and validation, as an outage would.
    """

    def __init__(
        self,
        *,
        routes: Sequence[BaseRoute],
        service: FakeService,
        endpoint_names: Mapping[str, str],
        error_response: ErrorResponder,
    ) -> None:
        admin = [
            Route("/_fake/faults", self._put_faults, methods=["PUT"], name="fake_faults"),
            Route("/_fake/stats", self._get_stats, methods=["GET"], name="fake_stats"),
        ]
        super().__init__(routes=[*routes, *admin])
        self.state.fake = service
        self._service = service
        self._endpoint_names = dict(endpoint_names)
        self._error_response = error_response

    def build_middleware_stack(self) -> ASGIApp:
        return _FaultGate(
            super().build_middleware_stack(),
            routes=self.routes,
            service=self._service,
            endpoint_names=self._endpoint_names,
            error_response=self._error_response,
        )

    async def _put_faults(self, request: Request) -> Response:
        try:
            plan = FaultPlan.from_json(await request.json())
        except (TypeError, ValueError) as exc:
            return JSONResponse({"detail": f"invalid fault plan: {exc}"}, status_code=400)
        self._service.faults = plan
        return JSONResponse({"faults": plan.to_json()})

    async def _get_stats(self, request: Request) -> Response:
        return JSONResponse(self._service.stats())


class FaultTransport(httpx.AsyncBaseTransport, httpx2.AsyncBaseTransport):
    """Wrap an httpx or httpx2 async transport; turn :class:`NetworkFault` into the
    wrapped library's own ``ReadTimeout`` (timeout) or ``ConnectError`` (connection
    error), so the client code under test handles exactly what it would in production.

    It subclasses both libraries' base transport so either client accepts it; the
    exceptions come from the library of the transport it wraps.

    >>> import httpx2
    >>> from pipeline_models.fakes import create_embeddings_app
    >>> transport = FaultTransport(httpx2.ASGITransport(app=create_embeddings_app()))
    >>> client = httpx2.AsyncClient(transport=transport)  # e.g. AsyncOpenAI(http_client=client)
    """

    _timeout_error: type[httpx.ReadTimeout] | type[httpx2.ReadTimeout]
    _connect_error: type[httpx.ConnectError] | type[httpx2.ConnectError]

    def __init__(self, transport: httpx.AsyncBaseTransport | httpx2.AsyncBaseTransport) -> None:
        self._transport = transport
        if isinstance(transport, FaultTransport):
            self._timeout_error, self._connect_error = (
                transport._timeout_error,
                transport._connect_error,
            )
        elif isinstance(transport, httpx2.AsyncBaseTransport):
            self._timeout_error, self._connect_error = httpx2.ReadTimeout, httpx2.ConnectError
        elif isinstance(transport, httpx.AsyncBaseTransport):
            self._timeout_error, self._connect_error = httpx.ReadTimeout, httpx.ConnectError
        else:
            raise TypeError(
                f"FaultTransport wraps an httpx or httpx2 AsyncBaseTransport, got {transport!r}"
            )

    @property
    def transport(self) -> httpx.AsyncBaseTransport | httpx2.AsyncBaseTransport:
        return self._transport

    # Typed Any because the request and response are httpx or httpx2 objects, matching
    # the wrapped transport; the two libraries' types are unrelated.
    async def handle_async_request(self, request: Any) -> Any:
        try:
            return await self._transport.handle_async_request(request)
        except NetworkFault as fault:
            if fault.fault.kind is FaultKind.TIMEOUT:
                raise self._timeout_error(str(fault), request=request) from fault
            raise self._connect_error(str(fault), request=request) from fault

    async def aclose(self) -> None:
        await self._transport.aclose()


def parser_http_client(
    app: ASGIApp, *, base_url: str = "http://parser.fake", **options: Any
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` that talks to ``app`` in process, with network faults.

    ``options`` go to ``httpx.AsyncClient`` (headers, timeout, ...). ASGITransport runs
    no lifespan events; the fakes need none.

    >>> from pipeline_models.fakes import create_parser_app
    >>> client = parser_http_client(create_parser_app(), headers={"Authorization": "Bearer k"})
    """
    transport = FaultTransport(httpx.ASGITransport(app=app))
    return httpx.AsyncClient(transport=transport, base_url=base_url, **options)


def openai_http_client(
    app: ASGIApp, *, base_url: str = "http://embeddings.fake", **options: Any
) -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` for ``openai.AsyncOpenAI(http_client=...)`` that talks
    to ``app`` in process, with network faults. The SDK builds absolute URLs from its
    own ``base_url``, so pass ``base_url="http://embeddings.fake/v1"`` to the SDK.

    >>> import openai
    >>> from pipeline_models.fakes import create_embeddings_app
    >>> sdk = openai.AsyncOpenAI(
    ...     api_key="k",
    ...     base_url="http://embeddings.fake/v1",
    ...     http_client=openai_http_client(create_embeddings_app()),
    ...     max_retries=0,
    ... )
    """
    transport = FaultTransport(httpx2.ASGITransport(app=app))
    return httpx2.AsyncClient(transport=transport, base_url=base_url, **options)


__all__ = [
    "DEFAULT_TIMEOUT_HOLD",
    "EMBEDDINGS_ENDPOINTS",
    "ENDPOINTS",
    "FAULT_SCOPE_KEY",
    "NETWORK_KINDS",
    "PARSER_ENDPOINTS",
    "FakeService",
    "FakeServiceApp",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "FaultTransport",
    "NetworkFault",
    "current_fault",
    "openai_http_client",
    "parser_http_client",
    "retry_after_header",
]

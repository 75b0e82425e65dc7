"""The one pure-ASGI layer at the edge of the service: request ids and telemetry, requests in
flight, body size and time, and strict JSON.

``EdgeMiddleware`` runs before routing, so every route, present or added later, is covered
without any per-route work. For each HTTP request, in this order:

- it gives the request an id (``X-Request-ID`` honoured when plain, else generated; echoed in
  the answer and in problem details), and when the answer is done counts it in the metrics and
  logs one JSON line for it (``service.telemetry``), whatever answered: a route, a guard below,
  or a 500; an answer of the API gets ``Cache-Control: no-store``, an HTML page (the docs) a
  Content-Security-Policy that keeps the browser on this server (``PAGE_POLICY``);
- a body whose ``Content-Length`` is over the limit is refused with a 413 at once, unread;
- a body sent with a content coding (``Content-Encoding: gzip``, anything but ``identity``)
  to a route that takes a body is refused with a 415 at once, unread (once the caller's key
  is admitted): the service decodes no coding, and would otherwise read the compressed bytes
  as JSON;
- a request that arrives while the worker already holds its limit of requests is answered 503
  (with ``Retry-After``) before its body is read: whatever the load, a worker holds at most that
  many bodies and answers in memory. The health probes and metrics are exempt, so an
  overloaded worker is not mistaken for a dead one;
- a body of ``LARGE_BODY`` or more takes its bytes from the worker's budget of large bodies
  (``BodyBudget``) before it is read when it declares its length, as it streams in when it
  does not; one that does not fit is a 503 too. A parsed JSON body takes several times its
  size, so this, not the count of requests, bounds what large bodies cost a worker;
- a JSON body is read whole, counted against the limit as it streams in (a chunked body is
  refused as soon as the count passes it, never buffered first) and parsed once with a strict
  parser, which refuses with a 422 what Python's ``json`` module would let through: the ``NaN``,
  ``Infinity`` and ``-Infinity`` tokens, numbers too large for a float64 (``1e400``, a
  5,000-digit integer), nesting deeper than 1024 levels and invalid UTF-8, wherever they appear;
- any body that has not fully arrived within the time limit is a 408, so a client trickling
  bytes cannot hold a connection and its buffer forever (``service/deadlines.py``).

Besides, a query string whose percent-escapes decode to bytes that are not UTF-8
(``?student_id=%FF``) is found here, on the raw bytes: Starlette decodes each one to U+FFFD,
so ``%FF`` and ``%FE`` would read as the same student id. Its 422 is left in the scope
(``QUERY_PROBLEM``) and answered by the route once its key rule has admitted the caller, as
a refused body is.

Why one layer and not one middleware per concern: each ASGI layer costs a call, a closure
over ``receive`` or ``send`` and a header scan on every request, and the service answers
thousands of small requests (``/v1/shapes/conv``) whose own work is a few microseconds. One
layer reads the headers once and sets one deadline per body; the benchmark in ``bench/``
measures what it costs against a bare endpoint.

The guard is the one JSON parser of the service. It decides what is JSON as FastAPI does (an
``application/json`` or ``+json`` content type; FastAPI does not parse a body without one), and
leaves the parsed value in the request's scope under ``PARSED_JSON``, where the routes' request
class (``service.routing.FastJSONRequest``) takes it instead of parsing the body a second
time. A refused body is explained by ``json_problem``, the one wording of every malformed or
non-finite body, whichever part of the service finds it. That problem is left in the scope
(``JSON_PROBLEM``) rather than answered here: the route answers it once its API key rule has
admitted the caller, so a request without a key is a 401 whatever its body (API.md, Roles),
and a path that does not exist a 404.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import unquote_to_bytes

import anyio
import orjson
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import edge_caller, edge_identity, forbidden
from service.deadlines import BodyDeadlines, BodyTimeout
from service.mediatypes import is_json as is_json  # here since the guard decides with it
from service.problems import (
    Problem,
    ProblemException,
    body_problem,
    problem_response,
    unsupported_coding,
    validation_problem,
)
from service.ratelimit import CHARGED, charge
from service.requestid import accept_request_id, set_request_id
from service.settings import SMALL_BODY_BYTES
from service.telemetry import record_request_done


def _too_large(detail: str) -> Problem:
    # Connection: close, because the rest of the body is never read.
    return Problem(
        413,
        detail,
        kind="body-too-large",
        title="The request body is too large",
        headers={"Connection": "close"},
    )


LARGE_BODY = 1 << 20
"""Bodies of this many bytes or more, declared or streamed, share the worker's budget of
large bodies (``BodyBudget``); smaller ones only count against the requests in flight."""


class BodyBusy(ProblemException):
    """Raised from ``receive`` when a streamed body grows large while the worker's budget of
    large bodies is held by others."""

    def __init__(self, held: int) -> None:
        super().__init__(_overloaded(f"holds {held:,} bytes of large request bodies"))


class BodyBudget:
    """The bytes of large bodies one worker holds at once, each from its first large byte
    until its request is answered (a body parsed takes several times its size, and lives as
    long as the request). One event loop per worker: no lock.

    Args:
        limit: the bytes taken at once; one body alone is taken whatever its size (up to the
            body limit), so that the largest request the service accepts can still run.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int, own: int = 0) -> bool:
        """Take ``size`` more bytes for a body that holds ``own`` already: granted when they
        fit under the limit, or when no other body holds any."""
        if self.held == own or self.held + size <= self.limit:
            self.held += size
            return True
        return False

    def give(self, size: int) -> None:
        self.held -= size


class Held:
    """What one request holds of the budget (grown as an undeclared body streams in)."""

    __slots__ = ("size",)

    def __init__(self) -> None:
        self.size = 0


class BodyTooLarge(ProblemException):
    """Raised from ``receive`` when a streamed body passes the limit.

    When it surfaces inside the app (a route reading its body), the app's handlers answer it;
    when it surfaces outside them (the JSON guard reading), the edge middleware does.
    """

    def __init__(self, limit: int, route: str | None = None) -> None:
        whose = f"the {limit:,} bytes {route} takes" if route else f"the limit of {limit:,} bytes"
        super().__init__(_too_large(f"the request body is larger than {whose}; send less"))


EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""Probes and metrics: cheap, and they must answer most of all when the worker is busy."""


PARSED_JSON = "tensorgrade.parsed_json"
"""Scope key of the body as ``EdgeMiddleware`` parsed it (absent for an empty body)."""

RAW_JSON = "tensorgrade.raw_json"
"""Scope key of the JSON body's bytes as ``EdgeMiddleware`` read them (empty or not)."""

JSON_PROBLEM = "tensorgrade.json_problem"
"""Scope key of the 422 ``Problem`` of a JSON body the strict parser refused."""

NON_FINITE = "non-finite-number"
"""The kind of that problem where the body holds ``NaN``, ``Infinity`` or an overflowing number."""


CLIENT_GONE = "tensorgrade.client_gone"
"""Scope key set when the client disconnected before its body was whole: the request is counted
and logged as a 499 (nginx's "client closed request"), not as the 500 of a request the app
never answered, nor as the 400 FastAPI answers a body it could not read whole."""
CLIENT_CLOSED_REQUEST = 499

QUERY_PROBLEM = "tensorgrade.query_problem"
"""Scope key of the 422 ``Problem`` of a query parameter that is not UTF-8."""


def query_problem(query_string: bytes) -> Problem | None:
    """The 422 of the first query parameter whose name or value is not UTF-8 once its
    percent-escapes are decoded, located at it (``["query", "student_id"]``); None when all are.

    Read from the raw query string as Starlette splits it (on ``&``, ``+`` a space), because
    Starlette itself decodes with ``errors="replace"``: every invalid byte becomes U+FFFD.
    Only an escape can decode to such a byte (Starlette reads the raw bytes as Latin-1), so a
    query without ``%``, nearly every one, costs one scan.
    """
    if b"%" not in query_string:
        return None
    for field in query_string.split(b"&"):
        if b"%" not in field:
            continue
        raw_name, _, raw_value = field.partition(b"=")
        name = unquote_to_bytes(raw_name.replace(b"+", b" "))
        value = unquote_to_bytes(raw_value.replace(b"+", b" "))
        shown = name.decode("utf-8", "replace")
        for text, what in ((name, "its name is not"), (value, "not")):
            try:
                text.decode("utf-8")
            except UnicodeDecodeError as error:
                msg = (
                    f"{what} valid UTF-8 once its percent-escapes are decoded (0x"
                    f"{text[error.start]:02X} at byte {error.start}): percent-encode the text's "
                    "UTF-8 bytes (`é` is `%C3%A9`)"
                )
                error_at = {"loc": ["query", shown], "msg": msg, "type": "string_unicode"}
                return validation_problem([error_at])
    return None


def _not_utf8(body: bytes) -> str:
    """Where a body stops being UTF-8 (orjson says only that it is not, at column 1)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as error:
        line = body.count(b"\n", 0, error.start) + 1
        column = error.start - (body.rfind(b"\n", 0, error.start) + 1) + 1
        return (
            f"the body is not valid UTF-8: byte 0x{body[error.start]:02x} at line {line} "
            f"column {column} (byte {error.start})"
        )
    return "the body is not valid UTF-8 (it holds a lone surrogate escape)"


def json_problem(body: bytes, error: orjson.JSONDecodeError) -> Problem:
    """A 422 that says what is wrong with a body the strict parser refused, and where."""
    where = f"line {error.lineno} column {error.colno}"
    # The parser stops at the letter, so the sign of `-Infinity` is one byte before.
    found = [
        (token.decode(), error.colno - back)
        for token, back in ((b"-Infinity", 1), (b"NaN", 0), (b"Infinity", 0))
        if error.pos >= back and body.startswith(token, error.pos - back)
    ]
    if found:
        token, column = found[0]
        message = (
            f"`{token}` at line {error.lineno} column {column} is not a JSON number: only "
            "finite numbers are accepted, so send a finite value instead"
        )
        kind = NON_FINITE
    elif error.msg.startswith("number is infinity"):
        message = (
            f"the number at {where} is too large for a float64 (it would be infinite): "
            "only finite numbers are accepted"
        )
        kind = NON_FINITE
    elif error.msg.startswith("str is not valid UTF-8"):  # not the BOM's own message
        message, kind = _not_utf8(body), "invalid-json"
    elif error.msg.startswith("depth limit"):
        message = f"the body is nested more than 1024 levels deep ({where})"
        kind = "invalid-json"
    else:
        message = f"the body is not valid JSON: {error.msg} at {where}"
        kind = "invalid-json"
    return body_problem(message, kind, "The body is not valid JSON", "json_invalid")


_REQUEST_ID = b"x-request-id"
_CACHE_CONTROL = b"cache-control"
_CONTENT_ENCODING = b"content-encoding"
_CONTENT_TYPE = b"content-type"
_CONTENT_SECURITY_POLICY = b"content-security-policy"

PAGE_POLICY = (
    b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)
"""The Content-Security-Policy of every HTML page the service answers (/docs, /redoc): the
browser fetches nothing from another host.

The pages' bundles are served by the app, but a bundle may still reach out by itself: ReDoc's
sidebar shows Redocly's logo from cdn.redoc.ly, and ReDoc has no option to leave it out. A
policy is kept by the browser whatever a bundle does, this one or the next version, before any
request is made, where hiding an element or patching a bundle would follow one release. The
logo, refused, is left out of the page (ReDoc drops it when it fails to load), and the browser
notes the refusal in its console. Inline scripts and styles are the pages' own (Swagger UI's
start-up script, both bundles' styles), data: images the bundles' icons, and a blob: worker
ReDoc's search."""

_BODILESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE"})
"""Methods whose routes read no body (``HEAD`` is a ``GET`` by the time the guards run)."""


def content_coding(header: bytes | None) -> str | None:
    """The first content coding of a ``Content-Encoding`` header other than ``identity`` (the
    body as it is), or None when there is none: RFC 9110 lists the codings in the order they
    were applied, comma-separated, in any case."""
    if not header:
        return None
    for coding in header.decode("latin-1").split(","):
        coding = coding.strip()
        if coding and coding.lower() != "identity":
            return coding
    return None


def _overloaded(holding: str) -> Problem:
    """The 503 of a worker at one of its limits: ``holding`` says which ("holds 64 requests")."""
    return Problem(
        503,
        f"this worker {holding}, its limit; retry after the time in Retry-After",
        kind="overloaded",
        title="The service is overloaded",
        # No Connection: close. The server reads and drops the unread body, so a client still
        # sending it reads this answer instead of a reset connection.
        headers={"Retry-After": "1"},
    )


def _has_route(app: object, scope: Scope) -> bool:
    """Whether one of ``app``'s routes answers this method and path (looked up only for a
    request the edge may refuse: the router does it again for the others)."""
    router = getattr(app, "router", None)
    return any(route.matches(scope)[0] is Match.FULL for route in getattr(router, "routes", ()))


class BodyLimit:
    """The body limit in force for one request, and the route it is the limit of (``None``
    for the service's limit)."""

    __slots__ = ("bytes", "route")

    def __init__(self, limit: int, route: str | None = None) -> None:
        self.bytes = limit
        self.route = route


def _route_body_limit(app: object, scope: Scope, default: int) -> BodyLimit | None:
    """The body limit of the route that answers this method and path: its own where the app
    lists one (``state.body_limits``), else ``default``; ``None`` where no route answers (the
    router's 404 or 405, which reads no body, so none is read or parsed for it)."""
    if getattr(app, "router", None) is None:  # an app without routes of its own to look up
        return BodyLimit(default)
    for route, name, limit in getattr(getattr(app, "state", None), "body_limits", ()):
        if route.matches(scope)[0] is Match.FULL:
            return BodyLimit(limit, name)
    return BodyLimit(default) if _has_route(app, scope) else None


def _instructors_only(app: object, scope: Scope) -> bool:
    """Whether the route of this method and path admits instructor keys alone (the app lists
    those routes in ``state.instructor_routes``)."""
    routes = getattr(getattr(app, "state", None), "instructor_routes", ())
    return any(route.matches(scope)[0] is Match.FULL for route in routes)


def _rate_limited(app: object, scope: Scope) -> bool:
    """Whether the route of this method and path counts against the check rate limit (the
    app lists those routes in ``state.rate_limited_routes``)."""
    state = getattr(app, "state", None)
    # The static starts of their paths first: most requests (a grading run's thousands of
    # shapes) go elsewhere, and are then not matched against each route.
    path = scope["path"].removeprefix(scope.get("root_path", ""))  # as the routes match it
    if not path.startswith(getattr(state, "rate_limited_prefixes", ())):
        return False
    routes = getattr(state, "rate_limited_routes", ())
    return any(route.matches(scope)[0] is Match.FULL for route in routes)


async def _charge(app: object, scope: Scope) -> Problem | None:
    """Count a check of a rate-limited caller before its body is read: a caller over the limit
    gets its 429 without the server reading and parsing the body, and a body that turns out
    not to be JSON is counted too. The route's dependency then counts it no more."""
    state = getattr(app, "state", None)
    keyring = getattr(state, "keyring", None)
    identity = edge_identity(keyring, scope["headers"], scope.get("client"))
    limiter = getattr(state, "check_limiter", None)
    if identity is None or limiter is None:
        return None
    if limiter.remote:  # a Redis: its round trip is kept off the event loop
        refused = await anyio.to_thread.run_sync(charge, limiter, identity)
    else:
        refused = charge(limiter, identity)
    if refused is None:
        scope.setdefault("state", {})[CHARGED] = True
    return refused


def _is_html(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether an answer's headers say it is an HTML page."""
    return any(
        name.lower() == _CONTENT_TYPE and value.lower().startswith(b"text/html")
        for name, value in headers
    )


class EdgeMiddleware:
    """Request ids and telemetry, the in-flight limit, body limits and strict JSON, in one
    pure-ASGI layer (see the module's docstring for what each does and in which order).

    Args:
        app: the application it guards.
        max_bytes: the largest request body accepted, declared or streamed.
        timeout: seconds from the start of a request within which its body must have arrived.
        max_in_flight: requests this worker answers at once (probes and metrics aside).
        max_body_bytes_in_flight: bytes of large bodies (``LARGE_BODY`` or more) this worker
            holds at once; one body alone is taken whatever its size.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        timeout: float,
        max_in_flight: int,
        max_body_bytes_in_flight: int = 64 << 20,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # one event loop per worker: no lock needed
        self.bodies = BodyBudget(max_body_bytes_in_flight)
        # One set of deadlines per event loop: a worker has one; tests start several.
        self._deadlines: dict[asyncio.AbstractEventLoop, BodyDeadlines] = {}
        self._tick = min(1.0, timeout / 4)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        content_type = content_length = incoming_id = content_encoding = None
        for name, value in scope["headers"]:  # one pass over the headers, for every guard
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                content_length = value
            elif name == _REQUEST_ID:
                incoming_id = value
            elif name == _CONTENT_ENCODING:  # sent twice, the codings of both lines count
                content_encoding = (
                    value if content_encoding is None else b",".join((content_encoding, value))
                )
        request_id = accept_request_id(incoming_id.decode("latin-1") if incoming_id else None)
        set_request_id(request_id)
        start = time.perf_counter()
        # What the route label needs, before the router rewrites the scope (mounts do).
        path, method, root_path = scope["path"], scope["method"], scope.get("root_path", "")
        status = 500  # what the server answers if the app raises before answering
        started = False
        head = method == "HEAD"
        if head:  # RFC 9110: a GET without its body; the routes declare GET only
            scope = {**scope, "method": "GET"}

        api = path.removeprefix(root_path).startswith("/v1/")  # behind a proxy's prefix too

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if head and message["type"] == "http.response.body" and message.get("body"):
                message = {**message, "body": b""}  # Content-Length stays the GET's
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                headers = message.get("headers", ())
                names = {name.lower() for name, _ in headers}
                added = (
                    [] if _REQUEST_ID in names else [(_REQUEST_ID, request_id.encode("latin-1"))]
                )
                if api and _CACHE_CONTROL not in names:
                    # An answer of the API is for its caller alone (a variant, feedback, a
                    # reference): no shared cache may keep it and hand it to another.
                    added.append((_CACHE_CONTROL, b"no-store"))
                elif not api and _CONTENT_SECURITY_POLICY not in names and _is_html(headers):
                    added.append((_CONTENT_SECURITY_POLICY, PAGE_POLICY))
                if added:  # a new list: the response's own may be sent again
                    message = {**message, "headers": [*headers, *added]}
            await send(message)

        try:
            await self._guard(
                scope,
                receive,
                send_with_id,
                content_type,
                content_length,
                content_encoding,
                lambda: started,
            )
        finally:
            if scope.get(CLIENT_GONE):  # whatever the app answered, nobody read it
                status = CLIENT_CLOSED_REQUEST
            record_request_done(
                scope, path, method, root_path, status, time.perf_counter() - start, request_id
            )

    async def _guard(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        content_type: bytes | None,
        content_length: bytes | None,
        content_encoding: bytes | None,
        started: Callable[[], bool],
    ) -> None:
        # Not the probes' and metrics': they read no parameter, and a stray one from a probe's
        # configuration must not make a healthy worker fail its probes.
        if scope["path"] not in EXEMPT_PATHS:
            bad_query = query_problem(scope.get("query_string", b""))
            if bad_query is not None:  # for the route to answer, after its key rule
                scope[QUERY_PROBLEM] = bad_query
        if content_length is not None and content_length.isdigit():
            declared = int(content_length)
            if declared > self.max_bytes:
                problem = _too_large(
                    f"the request body declares {declared:,} bytes; the limit is {self.max_bytes:,}"
                )
                await problem_response(problem)(scope, receive, send)
                return
        # A GET (HEAD, DELETE, ...) route reads no body: one sent anyway is never parsed (20 MB
        # of JSON sent with GET /healthz held the event loop 3 s).
        json_body = is_json(content_type) and scope["method"] not in _BODILESS_METHODS
        limited = False  # a check counted against the rate limit, before its body is read
        if json_body or scope["method"] == "POST":
            # A caller without a key (keys configured) never has its body read or parsed (see
            # ``edge_caller``): a POST route answers its 401 here, at once; any other
            # request goes on without the JSON guard, so that a path no route answers stays
            # the router's 404 (or 405), and a route without a key rule its own answer, none
            # of which reads the body. A student key on an instructors' POST route gets its
            # 403 here too.
            app = scope.get("app")
            keyring = getattr(getattr(app, "state", None), "keyring", None)
            caller = edge_caller(keyring, scope["headers"])
            if isinstance(caller, Problem):
                if scope["method"] == "POST" and _has_route(app, scope):
                    await problem_response(caller)(scope, receive, send)
                    return
                json_body = False
            elif caller == "student" and _instructors_only(app, scope):
                # Before its body is read.
                await problem_response(forbidden())(scope, receive, send)
                return
            elif caller == "student" and not _has_route(app, scope):
                json_body = False  # the router's 404, 405 or 307 reads no body
            else:
                limited = scope["method"] == "POST" and _rate_limited(app, scope)
        coding = content_coding(content_encoding)
        if coding is not None:
            json_body = False  # coded bytes are not JSON: never parsed
            # Here, after the key checks (a caller who may not call the route learns nothing
            # of its body), and only where a route takes a body: a path no route answers
            # stays the router's 404 or 405.
            if scope["method"] not in _BODILESS_METHODS and _has_route(scope.get("app"), scope):
                await problem_response(unsupported_coding(coding))(scope, receive, send)
                return
        limit = BodyLimit(self.max_bytes)
        declared = int(content_length) if content_length and content_length.isdigit() else 0
        # A body declared larger than the smallest route limit, or not declared (chunked), is
        # held to its route's limit before it is read (``Settings.route_body_limits``), and not
        # read at all where no route answers: a small one is cheaper to read than to route.
        if scope["method"] not in _BODILESS_METHODS and (
            declared > SMALL_BODY_BYTES or content_length is None
        ):
            found = _route_body_limit(scope.get("app"), scope, self.max_bytes)
            if found is None:
                json_body = False  # the router's 404 or 405 reads none of it
            else:
                limit = found
                if declared > limit.bytes:  # after the key checks: the route is the caller's
                    problem = _too_large(
                        f"the request body declares {declared:,} bytes; {limit.route} takes "
                        f"at most {limit.bytes:,}"
                    )
                    await problem_response(problem)(scope, receive, send)
                    return
        counted = scope["path"] not in EXEMPT_PATHS
        if counted:
            if self.in_flight >= self.max_in_flight:
                holding = f"is answering {self.in_flight} requests"
                await problem_response(_overloaded(holding))(scope, receive, send)
                return
            self.in_flight += 1
        loop = asyncio.get_running_loop()
        deadlines = self._deadlines.get(loop)
        if deadlines is None:
            # Forget the loops that are gone (no weak references: not every loop takes them).
            self._deadlines = {old: d for old, d in self._deadlines.items() if not old.is_closed()}
            deadlines = self._deadlines[loop] = BodyDeadlines(loop, self._tick)
        deadline = loop.time() + self.timeout
        held = Held()
        try:
            if declared >= LARGE_BODY:  # taken before a byte is read, or refused unread
                if not self.bodies.take(declared):
                    raise BodyBusy(self.bodies.held)
                held.size = declared
            if limited:  # here: a request the worker sheds (503) costs the caller nothing
                refused = await _charge(scope.get("app"), scope)
                if refused is not None:
                    await problem_response(refused)(scope, receive, send)
                    return
            if json_body:
                await self._json(scope, receive, send, deadlines, deadline, held, limit)
            else:
                counting = self._counting(scope, receive, deadlines, deadline, held, limit)
                await self.app(scope, counting, send)
        except (BodyTooLarge, BodyTimeout, BodyBusy) as error:
            if started():
                raise
            await problem_response(error.problem)(scope, receive, send)
        finally:
            self.bodies.give(held.size)
            if counted:
                self.in_flight -= 1

    async def _json(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        deadlines: BodyDeadlines,
        deadline: float,
        held: Held,
        limit: BodyLimit,
    ) -> None:
        """Read the body whole within the deadline, parse it strictly, and hand it on."""
        chunks: list[bytes] = []
        received = 0
        with deadlines.watching(deadline, self.timeout):  # once for the whole body
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    scope[CLIENT_GONE] = True
                    return
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit.bytes:
                    raise BodyTooLarge(limit.bytes, limit.route)
                self._hold(held, received)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        del chunks  # the joined copy is all that is kept for the rest of the request
        scope[RAW_JSON] = body
        if body:
            try:
                scope[PARSED_JSON] = orjson.loads(body)
            except orjson.JSONDecodeError as error:
                scope[JSON_PROBLEM] = json_problem(body, error)  # answered after the key check
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _hold(self, held: Held, received: int) -> None:
        """Grow what an undeclared (or under-declared) body holds of the budget as it streams
        in, from its first large byte; ``BodyBusy`` when others hold the budget."""
        if received >= LARGE_BODY and received > held.size:
            if not self.bodies.take(received - held.size, own=held.size):
                raise BodyBusy(self.bodies.held)
            held.size = received

    def _counting(
        self,
        scope: Scope,
        receive: Receive,
        deadlines: BodyDeadlines,
        deadline: float,
        held: Held,
        limit: BodyLimit,
    ) -> Callable[[], Awaitable[Message]]:
        """``receive`` for a body the app reads itself: counted against the limit, and timed
        until the body is complete (after that, receive only waits for a disconnect)."""
        received = 0
        complete = False

        async def counting_receive() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()
            with deadlines.watching(deadline, self.timeout):
                message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.bytes:
                    raise BodyTooLarge(limit.bytes, limit.route)
                self._hold(held, received)
                complete = not message.get("more_body", False)
            elif message["type"] == "http.disconnect":
                scope[CLIENT_GONE] = True
            return message

        return counting_receive

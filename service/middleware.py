"""Pure-ASGI guards at the edge of the service: requests in flight, body size and time, and
strict JSON.

They run before routing, so every route, present or added later, is covered without any
per-route work:

- ``InFlightLimitMiddleware`` answers 503 (with ``Retry-After``) to a request that arrives
  while a worker already holds its limit of requests, before reading its body: whatever the
  load, a worker holds at most that many bodies and answers in memory. The health probes are
  exempt, so an overloaded worker is not mistaken for a dead one.
- ``BodyLimitMiddleware`` refuses a body over the limit with a 413 problem detail: at once when
  ``Content-Length`` declares it, and as soon as the count passes the limit when the body is
  chunked (bytes are counted as they stream in, never buffered first). A body that has not
  fully arrived within the time limit is a 408, so a client trickling bytes cannot hold a
  connection and its buffer forever.
- ``JSONGuardMiddleware`` reads a JSON body once with a strict parser and refuses with a 422
  what Python's ``json`` module would let through: the ``NaN``, ``Infinity`` and ``-Infinity``
  tokens, numbers too large for a float64 (``1e400``, a 5,000-digit integer), nesting deeper
  than 1024 levels and invalid UTF-8, wherever they appear in the body.

The guard is the one JSON parser of the service. It decides what is JSON as FastAPI does (an
``application/json`` or ``+json`` content type; FastAPI does not parse a body without one), and
leaves the parsed value in the request's scope under ``PARSED_JSON``, where the routes' request
class (``service.routing.FastJSONRequest``) takes it instead of parsing the body a second
time. A refused body is explained by ``json_problem``, the one wording of every malformed or
non-finite body, whichever part of the service finds it.
"""

from __future__ import annotations

from email.message import Message as MimeMessage

import anyio
import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.problems import Problem, ProblemException, problem_response


def _too_large(detail: str) -> Problem:
    # Connection: close, because the rest of the body is never read.
    return Problem(
        413,
        detail,
        kind="body-too-large",
        title="The request body is too large",
        headers={"Connection": "close"},
    )


class BodyTimeout(ProblemException):
    """Raised from ``receive`` when the body has not arrived within the time limit."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            Problem(
                408,
                f"the request body did not arrive within {seconds:g} s; send it faster",
                kind="body-timeout",
                title="The request body took too long",
                headers={"Connection": "close"},
            )
        )


class BodyTooLarge(ProblemException):
    """Raised from ``receive`` when a streamed body passes the limit.

    When it surfaces inside the app (a route reading its body), the app's handlers answer it;
    when it surfaces outside them (the JSON guard reading), the limit middleware does.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(
            _too_large(f"the request body is larger than the limit of {limit:,} bytes; send less")
        )


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


class BodyLimitMiddleware:
    """Answer 413 to a request body larger than ``max_bytes``, declared or streamed, and 408
    to one that is not complete ``timeout`` seconds after the request started."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(Headers(scope=scope))
        if declared is not None and declared > self.max_bytes:
            problem = _too_large(
                f"the request body declares {declared:,} bytes; the limit is {self.max_bytes:,}"
            )
            await problem_response(problem)(scope, receive, send)
            return
        received = 0
        complete = False
        started = False
        deadline = anyio.current_time() + self.timeout

        async def counting_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body, receive only waits for a disconnect: no deadline
                return await receive()
            try:
                with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(self.timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
                complete = not message.get("more_body", False)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except (BodyTooLarge, BodyTimeout) as error:
            if started:
                raise
            await problem_response(error.problem)(scope, receive, send)


EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""Probes and metrics: cheap, and they must answer most of all when the worker is busy."""


class InFlightLimitMiddleware:
    """Answer 503 to requests beyond ``limit`` at once in this worker (probes exempt)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0  # one event loop per worker: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            problem = Problem(
                503,
                f"this worker is answering {self.in_flight} requests, its limit; "
                "retry after the time in Retry-After",
                kind="overloaded",
                title="The service is overloaded",
                # No Connection: close. The server reads and drops the unread body, so a client
                # still sending it reads this answer instead of a reset connection.
                headers={"Retry-After": "1"},
            )
            await problem_response(problem)(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def is_json(headers: Headers) -> bool:
    """Whether the body is JSON by its content type, as FastAPI decides (``*/json``, ``+json``)."""
    value = headers.get("content-type")
    if not value:
        return False
    mime = MimeMessage()
    mime["content-type"] = value
    subtype = mime.get_content_subtype()
    return mime.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


PARSED_JSON = "tensorgrade.parsed_json"
"""Scope key of the body as ``JSONGuardMiddleware`` parsed it (absent for an empty body)."""


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
        kind = "non-finite-number"
    elif error.msg.startswith("number is infinity"):
        message = (
            f"the number at {where} is too large for a float64 (it would be infinite): "
            "only finite numbers are accepted"
        )
        kind = "non-finite-number"
    elif error.msg.startswith("depth limit"):
        message = f"the body is nested more than 1024 levels deep ({where})"
        kind = "invalid-json"
    else:
        message = f"the body is not valid JSON: {error.msg} at {where}"
        kind = "invalid-json"
    return Problem(
        422,
        message,
        kind=kind,
        title="The body is not valid JSON",
        errors=[{"loc": ["body"], "msg": message, "type": "json_invalid"}],
    )


class JSONGuardMiddleware:
    """Refuse JSON bodies that a strict parser rejects; hand the parsed value on to the app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_json(Headers(scope=scope)):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        del chunks  # the joined copy is all that is kept for the rest of the request
        if body:
            try:
                scope[PARSED_JSON] = orjson.loads(body)
            except orjson.JSONDecodeError as error:
                await problem_response(json_problem(body, error))(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

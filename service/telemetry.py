"""One pure ASGI middleware for what operators see of each request: its id, metrics and log line.

Pure ASGI (no ``BaseHTTPMiddleware``) so it adds no task or body buffering to the request
path. It must be the outermost middleware the app adds, so that it also sees the answers other
middleware give on their own (413 from a body limit, 429 from a rate limit).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import ACCESS_LOGGER
from service.metrics import record_request
from service.requestid import HEADER, accept_request_id, set_request_id

access_log = logging.getLogger(ACCESS_LOGGER)

UNMATCHED = "unmatched"
"""The route label of a request that matched no route (a 404)."""

_HEADER_KEY = HEADER.lower().encode("latin-1")

# Any token is a valid HTTP method; labelling others as one value keeps the series bounded.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_label(scope: Scope, request: Scope) -> str:
    """The template of the route that served the request (``/v1/models/{model}/forward``).

    The raw path is never a label: every distinct model name or typo would be a new series.

    Args:
        scope: the request's scope after the app ran: the router left the route in it.
        request: the request's path and method as they arrived, to match them against the
            app's routes where the router did not say (FastAPI records only its own routes,
            not plain Starlette ones like ``/openapi.json`` or mounts like the docs' assets).

    Returns:
        The route's path template, or ``unmatched``.
    """
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str) and path:
        return path
    for route in _flat_routes(getattr(scope.get("app"), "routes", ())):
        match, _ = route.matches(request)
        if match is not Match.NONE:
            return str(route.path)
    return UNMATCHED


def _flat_routes(routes: Iterable[Any]) -> Iterator[Any]:
    """Routes with a path, looking inside included routers (FastAPI keeps those as wrappers
    around the original router, whose routes carry the full path)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flat_routes(inner.routes)
        elif isinstance(getattr(route, "path", None), str):
            yield route


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == _HEADER_KEY:
            return str(value.decode("latin-1"))
    return None


class Telemetry:
    """Gives each HTTP request an id (``X-Request-ID`` honoured or generated, echoed in the
    answer), counts it in the metrics and logs one JSON line for it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = accept_request_id(_incoming_id(scope))
        set_request_id(request_id)
        start = time.perf_counter()
        # What the router needs to match a route, before it rewrites the scope (mounts do).
        request = {
            "type": "http",
            "path": scope["path"],
            "root_path": scope.get("root_path", ""),
            "method": scope["method"],
        }
        status = 500  # what the server answers if the app raises before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                if HEADER not in headers:
                    headers.append(HEADER, request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            route = route_label(scope, request)
            record_request(method, route, status, seconds)
            if access_log.isEnabledFor(logging.INFO):  # else skip building the record
                client = scope.get("client")
                access_log.info(
                    "%s %s %d",
                    method,
                    scope["path"],
                    status,
                    extra={
                        "request_id": request_id,
                        "method": method,
                        "route": route,
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round(seconds * 1000, 3),
                        "client": client[0] if client else None,
                    },
                )

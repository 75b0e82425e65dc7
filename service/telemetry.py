"""What operators see of each request once it is answered: its metrics and its log line.

Called by the edge middleware (``service.middleware.EdgeMiddleware``), the outermost layer the
app adds, so that it also sees the answers given before any route runs (413 from a body limit,
503 from the in-flight limit) and those of the app's own handlers (429 from a rate limit).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from starlette.routing import Match
from starlette.types import Scope

from service.logs import ACCESS_LOGGER
from service.metrics import record_request

access_log = logging.getLogger(ACCESS_LOGGER)

UNMATCHED = "unmatched"
"""The route label of a request that matched no route (a 404)."""

# Any token is a valid HTTP method; labelling others as one value keeps the series bounded.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_label(scope: Scope, path: str, method: str, root_path: str) -> str:
    """The template of the route that served the request (``/v1/models/{model}/forward``).

    The raw path is never a label: every distinct model name or typo would be a new series.

    Args:
        scope: the request's scope after the app ran: the router left the route in it.
        path, method, root_path: the request's as they arrived, to match them against the
            app's routes where the router did not say (FastAPI records only its own routes,
            not plain Starlette ones like ``/openapi.json`` or mounts like the docs' assets).

    Returns:
        The route's path template, or ``unmatched``.
    """
    template = getattr(scope.get("route"), "path", None)
    if isinstance(template, str) and template:
        return template
    request = {"type": "http", "path": path, "root_path": root_path, "method": method}
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


def record_request_done(
    scope: Scope,
    path: str,
    method: str,
    root_path: str,
    status: int,
    seconds: float,
    request_id: str,
) -> None:
    """Count an answered request in the metrics and log its access line.

    Args:
        scope: the request's scope after the app ran (the router left the route in it).
        path, method, root_path: the request's as it arrived, before routing rewrote the scope.
        status: the status answered (500 when the app raised before answering).
        seconds: from the request's arrival to the end of its answer.
        request_id: the id the request is known by.
    """
    label = method if method in _METHODS else "OTHER"
    route = route_label(scope, path, method, root_path)
    record_request(label, route, status, seconds)
    if access_log.isEnabledFor(logging.INFO):  # else skip building the record
        client = scope.get("client")
        access_log.info(
            "%s %s %d",
            label,
            path,
            status,
            extra={
                "request_id": request_id,
                "method": label,
                "route": route,
                "path": path,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "client": client[0] if client else None,
            },
        )

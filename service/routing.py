"""Request bodies parsed by orjson instead of the standard library's ``json`` module.

A request carrying a large tensor as nested lists (a million numbers) spends most of its time
turning the body into Python objects; orjson does that several times faster than ``json``.
Routers opt in with ``APIRouter(route_class=FastJSONRoute)``; everything else about FastAPI's
request handling (validation, problem details) is unchanged.

orjson is stricter than ``json`` in one way that matters here: ``NaN`` and ``Infinity`` are
not JSON, and orjson refuses them while parsing. That refusal keeps its clear message (the
same 422 problem detail as any malformed body, saying that only finite numbers are accepted
and where the token is).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

# Longest first: the first that matches names the token in the message.
_NON_FINITE_TOKENS = (b"Infinity", b"infinity", b"NaN", b"nan", b"inf")


class FastJSONRequest(Request):
    """A request whose ``json()`` is parsed by orjson."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


def parse_json(body: bytes) -> Any:
    """The JSON value of a body.

    Args:
        body: the raw request body.

    Returns:
        The parsed value.

    Raises:
        json.JSONDecodeError: the body is not JSON; the message says what is wrong and where
            (FastAPI answers it as a 422 validation problem).
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        doc = body.decode("utf-8", errors="replace")
        message = error.msg
        token = next((t for t in _NON_FINITE_TOKENS if body.startswith(t, error.pos)), None)
        if token is not None:
            sign = "-" if body[max(error.pos - 1, 0) : error.pos] == b"-" else ""
            message = (
                f"{sign}{token.decode()} is not a JSON number; only finite numbers are accepted"
            )
        raise json.JSONDecodeError(
            f"{message} (line {error.lineno} column {error.colno})", doc, error.pos
        ) from None


class FastJSONRoute(APIRoute):
    """An ``APIRoute`` whose handler sees a ``FastJSONRequest``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def fast_json_handler(request: Request) -> Response:
            return await handler(FastJSONRequest(request.scope, request.receive))

        return fast_json_handler

"""Fast request bodies: orjson for large ones, pydantic-core straight from bytes for small ones.

A request carrying a large tensor as nested lists (a million numbers) spends most of its time
turning the body into Python objects; orjson does that several times faster than ``json``.
Routers opt in with ``APIRouter(route_class=FastJSONRoute)``; everything else about FastAPI's
request handling (validation, problem details) is unchanged. Small requests sent by the
thousand (``/v1/shapes/conv``) take a shorter path still: ``validate_body``.

orjson is stricter than ``json`` in one way that matters here: ``NaN`` and ``Infinity`` are
not JSON, and orjson refuses them while parsing. That refusal keeps its clear message (the
same 422 problem detail as any malformed body, saying that only finite numbers are accepted
and where the token is).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
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


ModelT = TypeVar("ModelT", bound=BaseModel)


async def validate_body(request: Request, model: type[ModelT]) -> ModelT:
    """The request's JSON body validated by ``model`` in one pass of pydantic-core.

    The fast path for small, frequent requests: the raw bytes go straight to pydantic's own
    JSON parser, with no Python dict in between and none of FastAPI's per-request body
    machinery. Errors are the ``RequestValidationError`` FastAPI would raise (field errors
    located under ``body``; a malformed body explained by ``parse_json``), so they become the
    same problem details. Pair it with ``openapi_extra=documented_body(model, ...)``.

    Args:
        request: the request.
        model: the body's pydantic model.

    Returns:
        The validated body.

    Raises:
        RequestValidationError: the body is not JSON, or not valid for ``model``.
    """
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        if any(e["type"] == "json_invalid" for e in error.errors()):
            try:
                parse_json(body)
            except json.JSONDecodeError as invalid:
                raise RequestValidationError(
                    [
                        {
                            "type": "json_invalid",
                            "loc": ("body", invalid.pos),
                            "msg": "JSON decode error",
                            "input": {},
                            "ctx": {"error": invalid.msg},
                        }
                    ]
                ) from None
        errors = [
            {**e, "loc": ("body", *e["loc"])}
            for e in error.errors(include_url=False, include_context=True)
        ]
        raise RequestValidationError(errors) from None


def documented_body(
    model: type[BaseModel], examples: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The ``openapi_extra`` that documents a body read by ``validate_body``.

    Args:
        model: the body's pydantic model (without nested models: its schema is inlined).
        examples: named OpenAPI examples.

    Returns:
        The operation's ``requestBody``.
    """
    schema = model.model_json_schema()
    assert "$defs" not in schema, f"{model.__name__} nests models; inline schemas cannot"
    content: dict[str, Any] = {"schema": schema}
    if examples:
        content["examples"] = examples
    return {"requestBody": {"required": True, "content": {"application/json": content}}}

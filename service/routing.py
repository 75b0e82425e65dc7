"""Fast request bodies: parsed once, by orjson, for large ones; pydantic-core straight from
bytes for small ones.

A request carrying a large tensor as nested lists (a million numbers) spends most of its time
turning the body into Python objects, so that is done once. ``EdgeMiddleware``
(``service/middleware.py``) parses every JSON body with orjson before routing, to refuse what
a strict parser refuses, and leaves the value in the scope; ``FastJSONRequest.json()`` takes
it from there. Routers opt in with ``APIRouter(route_class=FastJSONRoute)`` (every router that
reads a JSON body does); everything else about FastAPI's request handling (validation, problem
details) is unchanged.

Why the route relies on the guard rather than the other way round: the guard runs for every
request, whatever route (present or future) it reaches, so it is the one place where ``NaN``,
``Infinity``, ``1e400`` and deep nesting are refused, with one wording
(``middleware.json_problem``). The parse here is only a fallback for an app mounted without the
guard (a benchmark) and gives the same problem.

Small requests sent by the thousand (``/v1/shapes/conv``) take a shorter path still:
``validate_body`` hands the raw bytes to pydantic-core, which parses and validates in one pass.
It parses a body the guard has parsed already, on purpose: validating from the bytes keeps
JSON-mode validation (a list is a valid tuple, strict types are JSON's), and a second parse of
a body of a few dozen bytes is negligible. Its route class, ``DirectRoute``, also skips
FastAPI's dependency resolution, which costs more than such a request's own work.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import fastapi.routing
import orjson
from fastapi import APIRouter, FastAPI, params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from service.middleware import (
    JSON_PROBLEM,
    NON_FINITE,
    PARSED_JSON,
    QUERY_PROBLEM,
    RAW_JSON,
    json_problem,
)
from service.problems import Problem, ProblemException, empty_body, not_json
from service.schemas import too_many_unknown_keys


class FastJSONRequest(Request):
    """A request whose ``json()`` is the value the JSON guard parsed (or orjson's, without it),
    or the guard's problem with the body."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            if PARSED_JSON in self.scope:
                self._json = self.scope[PARSED_JSON]
            elif JSON_PROBLEM in self.scope:
                raise ProblemException(self.scope[JSON_PROBLEM])
            else:
                self._json = parse_json(await self.body())
        return self._json


def parse_json(body: bytes) -> Any:
    """The JSON value of a body, parsed as strictly as ``EdgeMiddleware`` does.

    Args:
        body: the raw request body.

    Returns:
        The parsed value.

    Raises:
        ProblemException: the body is not JSON, or holds a non-finite number; the 422 problem
            is the guard's (``middleware.json_problem``), saying what is wrong and where.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ProblemException(json_problem(body, error)) from None


EndpointT = TypeVar("EndpointT", bound=Callable[..., Any])

_NON_FINITE_HINTS: dict[Callable[..., Any], str] = {}
"""What a non-finite number means in a route's body, by endpoint (``non_finite_hint``)."""


def non_finite_hint(hint: str) -> Callable[[EndpointT], EndpointT]:
    """Mark an endpoint whose refusal of a body's non-finite number (``NaN``, ``Infinity``, a
    number too large for a float64: ``middleware.json_problem``) adds ``hint``, what such a
    number means there (a loss that is NaN: a training that diverged). The words of the guard
    are kept, the hint follows them. Above or under the route's decorator alike: the route
    looks the hint up when it refuses a body, not when it is built (``APIRouter.post`` returns
    the endpoint it registered, which this marks either way)."""
    return _marker(_NON_FINITE_HINTS, hint)


ErrorWords = Callable[[Sequence[Any], Any], list[Any] | None]
"""Rewrites a route's body errors (pydantic's, ``loc`` from ``body``) given the parsed body,
or returns None to keep them."""

_ERROR_WORDS: dict[Callable[..., Any], ErrorWords] = {}
"""Each endpoint's words for its body's validation errors (``body_error_words``)."""


def body_error_words(words: ErrorWords) -> Callable[[EndpointT], EndpointT]:
    """Mark an endpoint whose body's validation errors ``words`` may reword (a flat list where
    a list of lists is expected: say the shape it takes). Only a refused body is reworded, so
    a valid one pays nothing, where a validator on the field would run on every value. Above or
    under the route's decorator alike, as ``non_finite_hint``."""
    return _marker(_ERROR_WORDS, words)


MarkT = TypeVar("MarkT")


def _marker(
    marks: dict[Callable[..., Any], MarkT], value: MarkT
) -> Callable[[EndpointT], EndpointT]:
    """A decorator that records ``value`` for the endpoint it decorates in ``marks``, which
    ``FastJSONRoute`` reads when it refuses a body."""

    def mark(endpoint: EndpointT) -> EndpointT:
        marks[endpoint] = value
        return endpoint

    return mark


def _hinted(problem: Problem, hint: str) -> Problem:
    """The guard's problem with ``hint`` after its detail and after its error's message."""
    errors = [
        {**error, "msg": f"{error['msg']}. {hint}"} if error.get("msg") == problem.detail else error
        for error in problem.errors or []
    ]
    return Problem(
        problem.status,
        f"{problem.detail}. {hint}",
        kind=problem.kind,
        title=problem.title,
        errors=errors,
        headers=problem.headers,
    )


class FastJSONRoute(APIRoute):
    """An ``APIRoute`` whose handler sees a ``FastJSONRequest``.

    FastAPI reads the body before it resolves the dependencies, so a malformed body would be
    answered 422 before the route's API key rule had a say. When the guard refused the body,
    the handler runs the rule's checks first: no key is a 401, a student key on an
    instructor's route a 403, and only an admitted caller learns what is wrong with the body.
    A query parameter the guard found not to be UTF-8 (``QUERY_PROBLEM``) is answered the same
    way, before the endpoint runs: FastAPI would hand it the text Starlette decoded, each
    invalid byte made U+FFFD. A non-finite number in the body of an endpoint marked with
    ``non_finite_hint`` is answered with the guard's words and the hint, and the validation
    errors of a body refused by an endpoint marked with ``body_error_words`` are reworded.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        checks = request_checks(_effective_dependant(self))
        endpoint = self.endpoint

        async def fast_json_handler(request: Request) -> Response:
            if JSON_PROBLEM in request.scope or QUERY_PROBLEM in request.scope:
                for check in checks:
                    check.admit(request)
                if QUERY_PROBLEM in request.scope:
                    raise ProblemException(request.scope[QUERY_PROBLEM])
                problem = request.scope.get(JSON_PROBLEM)
                # Looked up now, not when the handler is built: a mark put above the route's
                # decorator comes after the route, and would otherwise be silently ignored.
                hint = _NON_FINITE_HINTS.get(endpoint)
                if hint is not None and problem is not None and problem.kind == NON_FINITE:
                    raise ProblemException(_hinted(problem, hint))
            try:
                return await handler(FastJSONRequest(request.scope, request.receive))
            except RequestValidationError as error:
                words = _ERROR_WORDS.get(endpoint)
                errors = None if words is None else words(error.errors(), error.body)
                if errors is None:
                    raise
                raise RequestValidationError(errors, body=error.body) from None

        return fast_json_handler


@runtime_checkable
class RequestCheck(Protocol):
    """A dependency that only checks the request (an API key rule): ``admit`` returns or raises
    the problem that refuses it."""

    def admit(self, request: Request) -> object: ...


class DirectRoute(FastJSONRoute):
    """A ``FastJSONRoute`` that calls its endpoint directly, for the hottest small routes.

    FastAPI's request handler resolves every dependency and parameter of a route through its
    general machinery, which costs more than the whole work of a small request (a shape
    answer takes a few microseconds). A route whose endpoint takes only the ``Request`` and
    returns a ``Response``, and whose only dependencies are ``RequestCheck``s (the router's key
    rule), needs none of it: its handler runs each check's ``admit`` and awaits the endpoint.
    What the route declares is unchanged, so OpenAPI still documents the key and the 401/403
    answers. Any other route, and any request while the app has ``dependency_overrides``, goes
    through ``FastJSONRoute``'s handler, so using this class is never wrong, only sometimes not
    faster.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        checks = direct_checks(self)
        fastapis = super().get_route_handler()
        if checks is None:
            return fastapis
        endpoint = self.endpoint

        async def direct_handler(request: Request) -> Response:
            if getattr(request.app, "dependency_overrides", None):
                return await fastapis(request)  # overrides are FastAPI's to apply (tests)
            for check in checks:
                check.admit(request)
            if QUERY_PROBLEM in request.scope:  # as FastJSONRoute answers it
                raise ProblemException(request.scope[QUERY_PROBLEM])
            response: Response = await endpoint(FastJSONRequest(request.scope, request.receive))
            return response

        return direct_handler


def _effective_dependant(route: APIRoute) -> Any:
    """The dependant FastAPI is building the route's handler for, router rules included.

    FastAPI from 0.16x keeps an included route as it was declared and builds its handler once
    per inclusion, with the inclusion's dependencies (``include_router(..., dependencies=)``)
    in a context it sets around ``get_route_handler``; earlier versions copied the route with
    the dependencies merged. Both are read here, so the key rule given where a router is
    included is the one the handler checks (``tests/service/test_auth.py`` calls every route
    without a key to prove it).
    """
    context_var = getattr(fastapi.routing, "_effective_route_context_var", None)
    context = context_var.get() if context_var is not None else None
    if context is not None and getattr(context, "original_route", None) is route:
        return context.dependant
    return route.dependant


def request_checks(dependant: Any) -> list[RequestCheck]:
    """Every ``RequestCheck`` (API key rule) among a route's dependencies, at any depth."""
    found: list[RequestCheck] = []
    for dependency in dependant.dependencies:
        if isinstance(dependency.call, RequestCheck):
            found.append(dependency.call)
        found.extend(request_checks(dependency))
    return found


def direct_checks(route: APIRoute) -> list[RequestCheck] | None:
    """The checks a ``DirectRoute`` runs, or None when the route needs FastAPI's handler.

    Args:
        route: the route.

    Returns:
        The route's dependencies when there are some, all plain ``RequestCheck``s, and its
        endpoint is ``async def endpoint(request: Request) -> Response``; else None.
    """
    dependant = _effective_dependant(route)
    parameters = list(inspect.signature(route.endpoint).parameters.values())
    takes_only_the_request = (
        inspect.iscoroutinefunction(route.endpoint)
        and len(parameters) == 1
        and parameters[0].annotation in (Request, "Request")
        and dependant.request_param_name == parameters[0].name
    )
    checks = [dependency.call for dependency in dependant.dependencies]
    # No check seen: nothing to save, and should a FastAPI release hand the router's rule over
    # in a way not read here, FastAPI's own handler still applies it.
    if (
        not checks
        or not takes_only_the_request
        or not all(
            isinstance(check, RequestCheck) and not dependency.dependencies
            for check, dependency in zip(checks, dependant.dependencies, strict=True)
        )
    ):
        return None
    return [check for check in checks if isinstance(check, RequestCheck)]


def include_flat(
    app: FastAPI,
    router: APIRouter,
    *,
    dependencies: Sequence[params.Depends] = (),
    responses: dict[int | str, dict[str, Any]] | None = None,
) -> None:
    """Add the routes of ``router`` to ``app`` itself, with the rule given, as
    ``app.include_router(router, dependencies=..., responses=...)`` would.

    FastAPI (from 0.16x) serves an included router through a layer of its own, matched on
    every request: about 4 us, as much as the shape route's own arithmetic. Routes added here
    are the ones FastAPI would make (the same class, dependencies, responses and OpenAPI
    operation; ``tests/service/test_fast_paths.py`` compares them), without that layer.

    Args:
        app: the application.
        router: a router of ``APIRoute``s (its prefix and tags are already in each route).
        dependencies: the rule's dependencies, before each route's own.
        responses: the rule's OpenAPI responses, under each route's own.
    """
    for route in router.routes:
        assert isinstance(route, APIRoute), f"{route!r}: only APIRoutes are added flat"
        app.router.add_api_route(
            route.path,
            route.endpoint,
            response_model=route.response_model,
            status_code=route.status_code,
            tags=route.tags,
            dependencies=[*dependencies, *route.dependencies],
            summary=route.summary,
            description=route.description,
            response_description=route.response_description,
            responses={**(responses or {}), **route.responses},
            deprecated=route.deprecated,
            methods=route.methods,
            operation_id=route.operation_id,
            include_in_schema=route.include_in_schema,
            response_class=route.response_class,
            name=route.name,
            openapi_extra=route.openapi_extra,
            route_class_override=type(route),
        )


ModelT = TypeVar("ModelT", bound=BaseModel)


async def validate_body(request: Request, model: type[ModelT]) -> ModelT:
    """The request's JSON body validated by ``model`` in one pass of pydantic-core.

    The fast path for small, frequent requests: the raw bytes go straight to pydantic's own
    JSON parser, with no Python dict in between and none of FastAPI's per-request body
    machinery. Field errors are the ``RequestValidationError`` FastAPI would raise (located
    under ``body``), so they become the same problem details; a malformed body (empty, or one
    the guard did not see) is explained by ``parse_json``, in the guard's words. Pair it with
    ``openapi_extra=documented_body(model, ...)``.

    Args:
        request: the request.
        model: the body's pydantic model.

    Returns:
        The validated body.

    Raises:
        RequestValidationError: the body is not valid for ``model``.
        ProblemException: the body is not JSON, or was not sent as JSON (its
            ``Content-Type``).
    """
    if JSON_PROBLEM in request.scope:  # the guard refused the body (NaN, not JSON...)
        raise ProblemException(request.scope[JSON_PROBLEM])
    # The bytes the edge middleware read (it reads only a body whose Content-Type is JSON's),
    # else the body as it streams in, once its Content-Type is found to be JSON's: pydantic
    # would parse any bytes, and this route must refuse a form or text body as FastAPI's
    # routes do, with the same problem.
    body = request.scope.get(RAW_JSON)
    if body is None:
        wrong_type = not_json(request.headers.get("content-type"))
        if wrong_type is not None:
            raise ProblemException(wrong_type)
        body = await request.body()
    if not body:
        raise ProblemException(empty_body())  # in the words of every other route
    parsed = request.scope.get(PARSED_JSON)
    if isinstance(parsed, dict):
        # The body as the edge parsed it: an object of too many unknown keys is refused here,
        # in the words of StrictBody's check, before pydantic parses it again (2 million keys
        # cost it 2.5 s) only to refuse it the same way.
        words = too_many_unknown_keys(parsed, model.model_fields)
        if words is not None:
            error = {"type": "extra_forbidden", "loc": ("body",), "msg": words, "input": parsed}
            raise RequestValidationError([error], body=parsed)
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        raw = error.errors(include_url=False, include_context=True)
        if any(e["type"] == "json_invalid" for e in raw):
            parse_json(body)  # raises the guard's problem, which says what and where
        errors = [{**e, "loc": ("body", *e["loc"])} for e in raw]
        # The body the edge parsed, for the errors' paths (see problems.json_path).
        raise RequestValidationError(errors, body=request.scope.get(PARSED_JSON)) from None


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

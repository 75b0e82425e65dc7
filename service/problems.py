"""RFC 9457 problem details: the one error type of the service and its handlers.

Every error leaves the service through ``install_problem_handlers``: domain errors raised by
``models/`` and ``service/``, FastAPI's validation errors, Starlette's HTTP errors, and
anything unexpected (a 500 that is logged, never a traceback sent to the client).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from models.errors import LimitExceeded, ModelError, UnknownName
from service.jsonout import dumps
from service.logs import mark_logged
from service.mediatypes import is_json
from service.requestid import HEADER as REQUEST_ID_HEADER
from service.requestid import current_request_id

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://tensorgrade.dev/problems/"

logger = logging.getLogger("tensorgrade")


class FieldProblem(BaseModel):
    """One field-level problem: where it is and what is wrong."""

    loc: list[str | int] = Field(description="Path to the offending value, from the body root.")
    msg: str = Field(description="What is wrong and what to change.")
    type: str = Field(description="A short machine-readable code.")


class ProblemDetails(BaseModel):
    """An RFC 9457 problem detail."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="A URI naming the kind of problem.")
    title: str = Field(description="A short summary of the kind of problem.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong in this request, and what to change.")
    errors: list[FieldProblem] | None = Field(
        None, description="Field-level problems, for validation errors."
    )
    request_id: str | None = Field(
        None, description="The request's `X-Request-ID`: quote it when reporting a problem."
    )


class Problem(Exception):
    """An error answered as a problem detail with the given status."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        title: str | None = None,
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind or _slug(HTTPStatus(status).phrase)
        self.title = title or HTTPStatus(status).phrase
        self.errors = list(errors) if errors is not None else None
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": TYPE_BASE + self.kind,
            "title": self.title,
            "status": self.status,
            "detail": _clipped(self.detail),
        }
        if self.errors is not None:
            body["errors"] = [_clipped_error(e) for e in self.errors[:MAX_ERRORS]]
        return body


MAX_TEXT = 2000
"""The most characters of a problem's ``detail``, of an error's ``msg`` and of each part of its
``loc``: a message quotes what was sent (a name, a padding string), and a 100k-character name
would otherwise come back three times over."""
MAX_ERRORS = 100
"""The most field errors a problem lists."""


def _clipped(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return f"{value[:MAX_TEXT]}... ({len(value) - MAX_TEXT} more characters)"
    return value


def _clipped_error(error: Any) -> Any:
    if not isinstance(error, dict):
        return error
    clipped = {name: _clipped(value) for name, value in error.items()}
    if isinstance(error.get("loc"), list):
        clipped["loc"] = [_clipped(part) for part in error["loc"]]
    return clipped


def body_problem(message: str, kind: str, title: str, error_type: str) -> Problem:
    """A 422 about the body as a whole: the detail, and one error at ``["body"]`` that says the
    same (a client reading ``errors`` finds it where it finds a field's)."""
    return Problem(
        422,
        message,
        kind=kind,
        title=title,
        errors=[{"loc": ["body"], "msg": message, "type": error_type}],
    )


class ProblemException(StarletteHTTPException):
    """A problem raised where only an ``HTTPException`` gets through: FastAPI passes those on
    from a failed body read, where it would turn any other error into a bare 400."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.status, problem.detail, headers=problem.headers)
        self.problem = problem


def _slug(phrase: str) -> str:
    return phrase.lower().replace(" ", "-").replace("'", "")


def problem_response(problem: Problem) -> Response:
    """Render a problem as an ``application/problem+json`` response, with the request's id."""
    body = problem.body()
    headers = problem.headers
    # Never kept by a shared cache, as the edge says of every /v1 answer: set here too, since
    # a 500 is answered outside the edge.
    headers = {**headers, "Cache-Control": "no-store"}
    request_id = current_request_id()
    if request_id is not None:
        body["request_id"] = request_id
        # Set here too, not only by the edge middleware: a 500 is answered outside it.
        headers = {**headers, REQUEST_ID_HEADER: request_id}
    return Response(
        content=dumps(body),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def from_model_error(error: ModelError) -> Problem:
    """A domain error of ``models/`` as a problem: 413 for a size over a configured limit
    (as for the element budgets), 422 otherwise."""
    parts = error.where.split(".") if error.where else []
    loc: list[str | int] = ["body", *(int(p) if p.isdigit() else p for p in parts)]
    kind = "unknown-name" if isinstance(error, UnknownName) else "invalid-request"
    status, title = 422, "The request cannot be computed"
    if isinstance(error, LimitExceeded):
        status, kind, title = 413, "budget-exceeded", "Over a configured limit"
    return Problem(
        status,
        error.message,
        kind=kind,
        title=title,
        errors=[{"loc": loc, "msg": error.message, "type": type(error).__name__}],
    )


_NO_BODY = object()


def _validation_problem(exc: RequestValidationError) -> Problem:
    return validation_problem(exc.errors(), body=exc.body if exc.body is not None else _NO_BODY)


def json_path(loc: Sequence[str | int], value: Any, missing: bool = False) -> list[str | int]:
    """pydantic's ``loc`` of an error in ``value`` as a path into ``value`` itself.

    pydantic puts in ``loc`` the name of the member of a union it tried: the tag of a
    discriminated one (``expected.backward.grad_outputs``, for ``"op": "backward"``), a type
    (``answer.list[float]``), a model's name. None of them is in the JSON the client sent, so
    they are left out: ``expected.grad_outputs``.

    Args:
        loc: the error's location under the body.
        value: the body.
        missing: the error is a missing field's: the last part of ``loc`` is its name.

    Example:
        >>> json_path(["expected", "backward", "grad_outputs"], {"expected": {"op": "backward"}})
        ['expected', 'grad_outputs']
    """
    path: list[str | int] = []
    node = value
    tagged = False  # the tag of the object reached was passed already
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if isinstance(node, dict):
            # A tag names the value of the object's discriminator ("op": "value"), once, right
            # after the object: it wins over a field of the same name ("value").
            if isinstance(part, str) and not last and not tagged and part in node.values():
                tagged = True
                continue
            if part in node:
                node, tagged = node[part], False
                path.append(part)
                continue
        elif isinstance(node, list) and isinstance(part, int) and -len(node) <= part < len(node):
            node, tagged = node[part], False
            path.append(part)
            continue
        if last and missing:
            path.append(part)  # the missing field's name
        elif not isinstance(part, str):
            path.extend(loc[index:])  # past what the body holds
            break
        # else: the name of a union's member, nowhere in the body
    return path


NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]+$"
"""A text field of a request without control characters (a line break, a tab, NUL): such a
text would be a second line in a log, a gradebook row or a CSV cell."""

STUDENT_ID = r"^[^\x00-\x1f\x7f\s](?:[^\x00-\x1f\x7f]*[^\x00-\x1f\x7f\s])?$"
"""A student id: no control characters (as ``NO_CONTROL_CHARACTERS``), and no white space at
either end. Ids are exact (a variant is drawn from the id as sent), so ``"ada "`` would be
another student than ``"ada"``: an id a script padded by mistake is refused, not graded as
someone else."""

TENSOR_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""A name a question gives a tensor, as an assignment file names its given tensors."""
PATTERN_WORDS: dict[str, str] = {
    NO_CONTROL_CHARACTERS: "must hold no control characters or line breaks (no newline, tab "
    "or NUL)",
    STUDENT_ID: "must hold no control characters or line breaks (no newline, tab or NUL), and "
    "must not begin or end with a space (ids are exact: 'ada ' is not 'ada')",
    TENSOR_NAME: "must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or "
    "a digit",
}
"""Each ``pattern`` a request field is held to, in words: a client is told what to change,
not a regular expression (``tests/service/test_app.py`` checks every pattern of the OpenAPI
document has its words here)."""


def _tag_name(ctx: Mapping[str, Any]) -> str:
    """The discriminator's name as pydantic gives it in an error's context (``"'op'"``)."""
    return str(ctx.get("discriminator", "")).strip("'")


def _tags(ctx: Mapping[str, Any]) -> str:
    """The tags that exist, from pydantic's ``"'forward', 'backward'"``: ``forward, backward``."""
    return ", ".join(tag.strip().strip("'") for tag in str(ctx["expected_tags"]).split(","))


def _name_the_tags(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Validate a discriminated union; for an object without the tag, name the tags that exist.

    pydantic's error for a missing tag names only the field ("Unable to extract tag using
    discriminator 'op'"), while the one for a wrong tag lists the tags: the union is tried
    once more with a tag no member has, and that error's list is put in the first one's
    context, for ``validation_problem`` to word.
    """
    try:
        return handler(value)
    except ValidationError as error:
        # An object without the tag fails with that one error: any other failure (a million
        # wrong entries of a member's field) is raised as it is, without building its errors.
        if not isinstance(value, dict) or error.error_count() != 1:
            raise
        found = [
            e
            for e in error.errors(include_url=False)
            if e["type"] == "union_tag_not_found" and not e["loc"]
        ]
        if not found:
            raise
        ctx = found[0].get("ctx") or {}
        try:
            handler({**value, _tag_name(ctx): "\x00"})
        except ValidationError as probe:
            for e in probe.errors(include_url=False)[:MAX_ERRORS]:
                if e["type"] == "union_tag_invalid" and not e["loc"] and e.get("ctx"):
                    named = {**ctx, "expected_tags": e["ctx"]["expected_tags"]}
                    raise PydanticCustomError(
                        "union_tag_not_found", _word(found[0]["type"], named, ""), named
                    ) from None
        raise


NAME_THE_TAGS = WrapValidator(_name_the_tags)
"""Annotate a discriminated union with this (``Annotated[A | B, Field(discriminator="op"),
NAME_THE_TAGS]``) so that an object without the tag is told which tags exist."""


BOUND_WORDS = {
    "greater_than": ("gt", "greater than"),
    "greater_than_equal": ("ge", "greater than or equal to"),
    "less_than": ("lt", "less than"),
    "less_than_equal": ("le", "less than or equal to"),
}
"""pydantic's errors of a number's bound: the key of the bound in ``ctx``, and its words."""


def _word(kind: str, ctx: Mapping[str, Any], msg: str, given: Any = None) -> str:
    """pydantic's message for an error, or words that say what to change where its own are
    not for a client: the tags of a union, a pattern's meaning.

    ``given``: the value the error is about (pydantic's ``input``): an object with a tag that
    is not one of the union's, whose tag is then shown as the JSON it came as (``null``, not
    Python's ``'None'``)."""
    if kind == "union_tag_not_found" and ctx.get("discriminator"):
        missing = f"`{_tag_name(ctx)}` is missing: it says what this object is"
        return f"{missing}, one of {_tags(ctx)}" if ctx.get("expected_tags") else missing
    if kind == "union_tag_invalid" and ctx.get("expected_tags"):
        tag = _tag_name(ctx)
        shown = repr(ctx.get("tag"))
        if isinstance(given, Mapping) and tag in given:
            shown = dumps(given[tag]).decode()[:60]
        return f"`{tag}` is {shown}; it must be one of {_tags(ctx)}"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") in PATTERN_WORDS:
        return PATTERN_WORDS[ctx["pattern"]]
    if kind == "json_invalid" and "error" in ctx:
        return f"the body is not valid JSON: {ctx['error']}"
    if kind == "value_error":  # a validator's own message: pydantic's prefix says nothing
        return msg.removeprefix("Value error, ")
    if kind in BOUND_WORDS:
        key, words = BOUND_WORDS[kind]
        bound = ctx.get(key)
        # pydantic writes a float bound out in full: 1e100 as a 101-digit integer.
        if isinstance(bound, float) and "e" in repr(bound):
            return f"Input should be {words} {bound!r}"
    return msg


def validation_problem(
    raw_errors: Sequence[Mapping[str, Any]],
    skip: int = 0,
    body: Any = _NO_BODY,
    total: int | None = None,
    listed: int = MAX_ERRORS,
) -> Problem:
    """The 422 of pydantic's validation errors: the first located in the detail, all listed.

    Args:
        raw_errors: pydantic's errors, ``loc`` from the request's root (``body``, ...).
        skip: leading parts of the first error's ``loc`` left out of the detail's path (1:
            ``checks.3.answer`` rather than ``body.checks.3.answer``).
        body: the parsed body the errors are of, when known: their ``loc`` under ``body``
            then leave out the names of unions' members (``json_path``).
        total: how many errors there are, where ``raw_errors`` holds only the first of them.
        listed: the most errors listed (worded).
    """
    errors = []
    # Only the errors a problem lists are worded: a flat list of 2 million numbers where lists
    # were expected makes 2 million errors, and wording every one kept a worker 40 s.
    for err in raw_errors[:listed]:
        loc = [part for part in err.get("loc", ()) if isinstance(part, str | int)]
        if body is not _NO_BODY and loc[:1] == ["body"]:
            loc = ["body", *json_path(loc[1:], body, err.get("type") == "missing")]
        kind = str(err.get("type", "invalid"))
        msg = _word(
            kind, err.get("ctx") or {}, str(err.get("msg", "invalid value")), err.get("input")
        )
        errors.append({"loc": loc, "msg": msg, "type": kind})
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"][skip:]) or "the body"
    count = len(raw_errors) if total is None else total
    more = f" (and {count - 1} more)" if count > 1 else ""
    return Problem(
        422,
        f"{where}: {first['msg']}{more}",
        kind="validation-error",
        title="The request is not valid",
        errors=errors,
    )


def _body_is_not_an_object(exc: RequestValidationError) -> bool:
    """Whether validation failed on the body as a whole: not an object, or missing."""
    return any(
        tuple(err.get("loc", ())) == ("body",)
        and err.get("type") in ("model_attributes_type", "dict_type", "missing")
        for err in exc.errors()
    )


def not_json(content_type: str | None) -> Problem | None:
    """The 422 of a body that was not sent as JSON (curl's ``-d`` alone sends a form), or None
    when its ``Content-Type`` is JSON's (``mediatypes.is_json``).

    The one decision of every route: FastAPI's body reading (whose validation error
    ``install_problem_handlers`` turns into this problem) and ``routing.validate_body``, the
    fast path that reads the bytes itself, both ask here.

    Args:
        content_type: the request's ``Content-Type`` header, or None when it has none.
    """
    if is_json(content_type.encode("latin-1") if content_type is not None else None):
        return None
    sent = f"`{content_type}`" if content_type else "missing"
    message = (
        "the body must be a JSON object sent with `Content-Type: application/json` (with curl: "
        f"-H 'content-type: application/json'); this request's Content-Type is {sent}"
    )
    return body_problem(message, "not-json", "The body is not JSON", "not_json")


def unsupported_coding(coding: str) -> Problem:
    """The 415 of a body sent with a content coding (``Content-Encoding: gzip``): the service
    decodes none, and parsing the coded bytes as JSON would blame a byte of the compression
    (``byte 0x8b``) instead of the coding. ``Accept-Encoding`` says which coding would do
    (RFC 9110, 15.5.16).

    Args:
        coding: the coding as the request named it.
    """
    message = (
        f"the request body is sent with `Content-Encoding: {coding}`, which this service does "
        "not decode; send the body uncompressed, without Content-Encoding (or with `identity`)"
    )
    return Problem(
        415,
        message,
        kind="unsupported-content-encoding",
        title="The body's content coding is not supported",
        headers={"Accept-Encoding": "identity"},
    )


def empty_body() -> Problem:
    """The 422 of a JSON body with nothing in it: not JSON, as the guard says of any other body
    that is not (``middleware.json_problem``), whichever route it reaches."""
    message = "the body is not valid JSON: it is empty; send a JSON object"
    return body_problem(message, "invalid-json", "The body is not valid JSON", "json_invalid")


def _body_is_missing(exc: RequestValidationError) -> bool:
    """Whether validation failed because the request has no body at all."""
    return any(
        tuple(err.get("loc", ())) == ("body",) and err.get("type") == "missing"
        for err in exc.errors()
    )


ALLOCATION_FAILURES = (
    "DefaultCPUAllocator: can't allocate memory",
    "DefaultCPUAllocator: not enough memory",
)
"""What torch's CPU allocator says when the system refuses it memory (Linux; Windows), as a
plain ``RuntimeError``: unlike a GPU's, a CPU allocation that fails is no
``torch.OutOfMemoryError``."""


def is_allocation_failure(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed for want of memory: a
    ``torch.OutOfMemoryError``, a ``MemoryError``, or the ``RuntimeError`` of torch's CPU
    allocator (``[enforce fail at alloc_cpu.cpp:...] DefaultCPUAllocator: can't allocate
    memory: you tried to allocate 28769288192 bytes``)."""
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(error, RuntimeError) and any(
        words in str(error) for words in ALLOCATION_FAILURES
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Route every error of the app through problem details."""

    async def on_problem(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return problem_response(exc)

    async def on_model_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ModelError)
        return problem_response(from_model_error(exc))

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        if _body_is_not_an_object(exc):
            wrong_type = not_json(request.headers.get("content-type"))
            if wrong_type is not None:
                return problem_response(wrong_type)
            if _body_is_missing(exc):  # FastAPI reads an empty body as no body at all
                return problem_response(empty_body())
        return problem_response(_validation_problem(exc))

    async def on_http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc, ProblemException):
            return problem_response(exc.problem)
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404 and detail == "Not Found":
            detail = "There is no such path; see /docs for the operations of this service."
        elif exc.status_code == 405:
            detail = "This path does not accept that method; see /docs."
        return problem_response(Problem(exc.status_code, detail, headers=exc.headers))

    async def on_out_of_memory(request: Request, exc: Exception) -> Response:
        # The traceback's frames hold the tensors of the failed computation: drop them before
        # returning the cached blocks to the device, so the next request finds the memory free.
        traceback.clear_frames(exc.__traceback__)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        logger.warning("out of memory on %s %s", request.method, request.url.path)
        return problem_response(
            Problem(
                503,
                "The device ran out of memory for this request; retry later, or send smaller "
                "tensors.",
                kind="out-of-memory",
                title="Out of device memory",
                headers={"Retry-After": "5"},
            )
        )

    async def on_runtime_error(request: Request, exc: Exception) -> Response:
        if is_allocation_failure(exc):
            return await on_out_of_memory(request, exc)
        raise exc  # on to on_unexpected, a logged 500

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        mark_logged(exc)  # uvicorn's own record of it, when Starlette re-raises, is dropped
        return problem_response(
            Problem(500, "The service failed to answer this request; it has been logged.")
        )

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(ModelError, on_model_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(torch.OutOfMemoryError, on_out_of_memory)
    app.add_exception_handler(MemoryError, on_out_of_memory)
    app.add_exception_handler(RuntimeError, on_runtime_error)
    app.add_exception_handler(Exception, on_unexpected)


_DESCRIPTIONS = {
    400: (
        "The body could not be read to its end (`bad-request`): the connection broke off while "
        "it was being sent. Not the answer to a malformed body, which is a 422 "
        "(`invalid-json`). A request that is not valid HTTP at all, or whose request line and "
        "headers are still unfinished after 16 KiB, is refused by the server itself, with a "
        "plain-text 400."
    ),
    401: "No API key, or an unknown one (`unauthorized`).",
    403: "The key's role may not call this operation (`forbidden`).",
    404: (
        "The path names something this service does not have (`not-found`: no route has the "
        "path, or a kind of the operation's own); the detail says what."
    ),
    408: "The request body did not arrive within the time limit (`body-timeout`).",
    413: (
        "The body is larger than the byte limit (`body-too-large`), or the request declares "
        "more than a budget allows (`budget-exceeded`: elements, sizes, counts); the detail "
        "gives the number and the limit."
    ),
    422: (
        "The request cannot be used as sent. The body is not JSON (`invalid-json`: a trailing "
        "comma, an empty body, a byte order mark, invalid UTF-8; `non-finite-number`: `NaN`, "
        "`Infinity`, a number past a float64's range), was not sent as JSON (`not-json`: its "
        "Content-Type is not `application/json`), or a field or parameter is not valid "
        "(`validation-error`, or a kind of the operation's own). The detail says what to "
        "change, `errors` where."
    ),
    415: (
        "The body was sent with a content coding (`Content-Encoding: gzip`...), which the "
        "service does not decode: send it uncompressed (`unsupported-content-encoding`)."
    ),
    429: (
        "Too many answer checks (`rate-limited`) with this student key, or from this client "
        "address on a server without keys; retry after the time in Retry-After. Instructor "
        "keys are not limited."
    ),
    503: (
        "The service cannot answer this now: the worker holds its limit of requests or of "
        "large bodies (`overloaded`), no device slot or experiment slot is free (`busy`), the "
        "device ran out of memory (`out-of-memory`), or it is warming up or cannot reach the "
        "rate-limit store (`service-unavailable`); retry after the time in Retry-After."
    ),
}

RETRY_AFTER = {
    "description": "Seconds to wait before sending the request again.",
    "schema": {"type": "integer", "minimum": 1},
}

_HEADERS: dict[int, dict[str, dict[str, Any]]] = {
    401: {
        "WWW-Authenticate": {
            "description": 'The key\'s scheme: `APIKey header="X-API-Key"`.',
            "schema": {"type": "string"},
        }
    },
    415: {
        "Accept-Encoding": {
            "description": "The content coding the service reads: `identity` (none).",
            "schema": {"type": "string"},
        }
    },
    429: {"Retry-After": RETRY_AFTER},
    503: {"Retry-After": RETRY_AFTER},
}
"""The headers every answer of a status carries, as each operation's OpenAPI entry declares
them: a client may rely on them (``tests/service/test_app.py`` holds each to an answer)."""


def shared_description(status: int) -> str:
    """What every operation's OpenAPI entry says of ``status`` (for an operation's own text
    that adds to it)."""
    return _DESCRIPTIONS.get(status, HTTPStatus(status).phrase)


def problem_responses(
    *statuses: int, described: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries declaring problem details for the given statuses.

    Args:
        statuses: the statuses, each with the description shared by every operation.
        described: an operation's own description of some of them, where the shared one is
            not true of it (a 422 about a query parameter, a 404 of its own kind).
    """
    own = described or {}
    return {
        status: {
            "description": own.get(status) or shared_description(status),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_SCHEMA_REF}}},
        }
        | ({"headers": _HEADERS[status]} if status in _HEADERS else {})
        for status in (*statuses, *(s for s in own if s not in statuses))
    }


PROBLEM_SCHEMA_REF = "#/components/schemas/ProblemDetails"


def problem_schemas() -> dict[str, Any]:
    """The OpenAPI component schemas that ``problem_responses`` refers to."""
    schema = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return {"ProblemDetails": schema, **defs}

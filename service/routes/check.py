"""Checking answers against the reference (API.md "Checking answers")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import anyio.from_thread
from fastapi import APIRouter, Body, Request
from starlette.responses import Response

from service.budgets import check_count
from service.deps import GateDep, SettingsDep
from service.devices import resolve_device
from service.grading.check import (
    CheckFailed,
    ClientDisconnected,
    batch_summary,
    check_many,
    check_one,
)
from service.grading.examples import BATCH_EXAMPLES, CHECK_EXAMPLES
from service.grading.schemas import BatchRequest, BatchResponse, CheckRequest, CheckResponse
from service.problems import Problem, problem_responses, shared_description
from service.responses import TensorJSONResponse
from service.routing import FastJSONRoute

router = APIRouter(prefix="/v1/check", tags=["check"], route_class=FastJSONRoute)

NOT_JUDGED = (
    f"{shared_description(422)} Here also: an answer not of the kind `expected` asks for "
    "(`invalid-answer`: a string for a number, a formula that does not parse; "
    "`invalid-tensor`: a ragged list, a wrong element count), an `expected` that cannot be "
    "computed (`invalid-request`: a missing argument, shapes that do not fit together; "
    '`unknown-name`: a name its model does not have), `"device": "cuda"` on a server '
    "without one (`device-unavailable`), or a key estimated over the compute deadline "
    "(`over-compute-deadline`). In a batch, a check's own fault is its `error` among the "
    "results, not a 422 of the whole batch."
)


@router.post(
    "",
    summary="Judge one answer: correct, score, a report and the likely mistakes",
    response_model=CheckResponse,
    responses=problem_responses(413, 422, described={422: NOT_JUDGED}),
)
def check(
    body: Annotated[CheckRequest, Body(openapi_examples=CHECK_EXAMPLES)],
    settings: SettingsDep,
    gate: GateDep,
) -> Response:
    """A wrong answer is a 200 with `correct: false`; an answer that is not of the asked kind
    (ragged, strings, NaN, a formula that does not parse) is a 422."""
    try:
        result = check_one(body, settings, gate)
    except CheckFailed as failure:
        raise failure.problem from None
    return TensorJSONResponse(result)


@router.post(
    "/batch",
    summary="Judge many answers in order; checks that share `expected` compute it once",
    response_model=BatchResponse,
    responses=problem_responses(413, 422, described={422: NOT_JUDGED}),
)
def check_batch(
    body: Annotated[BatchRequest, Body(openapi_examples=BATCH_EXAMPLES)],
    settings: SettingsDep,
    gate: GateDep,
    request: Request,
) -> Response:
    """Results in order; a check that cannot be judged gets an `error` (a problem detail) in
    its place and does not stop the others. The model keys and formulas of a batch share one
    compute deadline: those past it are refused in their places (`over-compute-deadline`)."""
    check_count(len(body.checks), "max_batch_checks", "checks", "checks", settings)
    if body.device is not None:
        # The batch's own field, given to every check without one: refused once, for the
        # whole request; a check's own `device` is refused in its place (``Engine.run``).
        resolve_device(body.device)
    if not body.checks:
        raise Problem(
            422,
            "checks: give at least one check",
            kind="validation-error",
            title="The request is not valid",
            errors=[
                {"loc": ["body", "checks"], "msg": "give at least one check", "type": "too_short"}
            ],
        )
    try:
        results, keys = check_many(body.checks_with_options(), settings, gate, gone(request))
    except ClientDisconnected:
        # Nobody reads this answer; 499 ("client closed request", nginx's) in the logs.
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return TensorJSONResponse({"results": results, "summary": batch_summary(results, keys)})


CLIENT_CLOSED_REQUEST = 499


def gone(request: Request) -> Callable[[], bool]:
    """Whether the client of ``request`` has disconnected, asked from the worker thread a sync
    route runs in (a trip to the event loop, where the connection lives)."""

    def disconnected() -> bool:
        return anyio.from_thread.run(request.is_disconnected)

    return disconnected

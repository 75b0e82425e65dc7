"""Checking answers against the reference (API.md "Checking answers")."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body
from starlette.responses import Response

from service.deps import SettingsDep
from service.grading.check import CheckFailed, check_many, check_one
from service.grading.examples import BATCH_EXAMPLES, CHECK_EXAMPLES
from service.grading.schemas import BatchRequest, BatchResponse, CheckRequest, CheckResponse
from service.problems import Problem, problem_responses
from service.responses import TensorJSONResponse

router = APIRouter(prefix="/v1/check", tags=["check"])


@router.post(
    "",
    summary="Judge one answer: correct, score, a report and the likely mistakes",
    response_model=CheckResponse,
    responses=problem_responses(413, 422),
)
def check(
    body: Annotated[CheckRequest, Body(openapi_examples=CHECK_EXAMPLES)],
    settings: SettingsDep,
) -> Response:
    """A wrong answer is a 200 with `correct: false`; an answer that is not of the asked kind
    (ragged, strings, NaN, a formula that does not parse) is a 422."""
    try:
        result = check_one(body, settings)
    except CheckFailed as failure:
        raise failure.problem from None
    return TensorJSONResponse(result)


@router.post(
    "/batch",
    summary="Judge many answers in order; checks that share `expected` compute it once",
    response_model=BatchResponse,
    responses=problem_responses(413, 422),
)
def check_batch(
    body: Annotated[BatchRequest, Body(openapi_examples=BATCH_EXAMPLES)],
    settings: SettingsDep,
) -> Response:
    """Results in order; a check that cannot be judged gets an `error` (a problem detail) in
    its place and does not stop the others."""
    if len(body.checks) > settings.max_batch_checks:
        raise Problem(
            413,
            f"the batch has {len(body.checks):,} checks; the limit is "
            f"{settings.max_batch_checks:,} (TENSORGRADE_MAX_BATCH_CHECKS)",
            kind="budget-exceeded",
            title="Over the element budget",
        )
    if not body.checks:
        raise Problem(422, "checks: give at least one check", kind="validation-error")
    results, keys = check_many(body.checks, settings)
    failed = sum("error" in r for r in results)
    correct = sum(bool(r.get("correct")) for r in results)
    summary = {
        "checks": len(results),
        "correct": correct,
        "wrong": len(results) - correct - failed,
        "invalid": failed,
        "keys": keys,
    }
    return TensorJSONResponse({"results": results, "summary": summary})

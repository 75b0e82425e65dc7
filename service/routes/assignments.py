"""Assignments: the problem sets, and each student's variant of a problem (never its key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from models.errors import UnknownName
from service.grading.catalogue import Catalogue
from service.grading.schema import (
    AnswerKind,
    AssignmentSpec,
    FeedbackLevel,
    ProblemSpec,
    Tolerance,
)
from service.grading.variants import Variant
from service.problems import Problem, problem_responses
from service.responses import TensorJSONResponse
from service.schemas import TensorOut
from service.tensors import encode

router = APIRouter(prefix="/v1/assignments", tags=["assignments"])

StudentId = Annotated[
    str,
    Query(
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="The student's id, exactly as the grading script sends it (case matters).",
        examples=["alice@example.edu"],
    ),
]


class ProblemSummary(BaseModel):
    id: str
    title: str
    points: float
    answer_kind: AnswerKind


class AssignmentSummary(BaseModel):
    id: str
    title: str
    description: str
    total_points: float
    problems: list[ProblemSummary]


class AssignmentList(BaseModel):
    assignments: list[AssignmentSummary]


class ChoiceOut(BaseModel):
    id: str = Field(description="What to answer to pick this option.")
    text: str


class ProblemVariant(BaseModel):
    """A problem as one student sees it: the statement and that student's given tensors."""

    assignment: str
    id: str
    title: str
    statement: str = Field(description="Markdown.")
    points: float
    answer_kind: AnswerKind
    choices: list[ChoiceOut] | None = Field(None, description="The options of a choice answer.")
    tolerance: Tolerance = Field(description="How close a numeric answer must be.")
    feedback: FeedbackLevel = Field(description="What a check of an answer tells the student.")
    student_id: str
    given: dict[str, TensorOut] = Field(description="This student's given tensors by name.")
    given_descriptions: dict[str, str] = Field(description="What each given tensor is.")


def catalogue(request: Request) -> Catalogue:
    loaded: Catalogue = request.app.state.catalogue
    return loaded


def _not_found(error: UnknownName) -> Problem:
    kind = f"unknown-{error.where}"
    return Problem(404, error.message, kind=kind, title=f"No such {error.where}")


def find_variant(request: Request, assignment: str, problem: str, student: str) -> Variant:
    """A student's variant of the problem of a path, or 404."""
    try:
        return catalogue(request).variant(assignment, problem, student)
    except UnknownName as error:
        raise _not_found(error) from None


def summary(assignment: AssignmentSpec) -> AssignmentSummary:
    def problem(p: ProblemSpec) -> ProblemSummary:
        return ProblemSummary(id=p.id, title=p.title, points=p.points, answer_kind=p.answer_kind)

    return AssignmentSummary(
        id=assignment.id,
        title=assignment.title,
        description=assignment.description,
        total_points=assignment.total_points,
        problems=[problem(p) for p in assignment.problems],
    )


@router.get("", summary="The assignments and their problems")
async def list_assignments(request: Request) -> AssignmentList:
    """Every assignment with its problems: id, title, points and answer kind."""
    assignments = catalogue(request).assignments.values()
    return AssignmentList(assignments=[summary(a) for a in assignments])


@router.get(
    "/{assignment}/problems/{problem}",
    summary="A problem and one student's given tensors (never the answer)",
    response_model=ProblemVariant,
    responses=problem_responses(404, 422),
)
def problem_variant(
    request: Request, assignment: str, problem: str, student_id: StudentId
) -> Response:
    """The statement and the given tensors of student `student_id`'s variant: the same numbers
    on every call and every replica, other numbers for other students."""
    variant = find_variant(request, assignment, problem, student_id)
    spec = variant.problem
    body = {
        "assignment": assignment,
        "id": spec.id,
        "title": spec.title,
        "statement": spec.statement,
        "points": spec.points,
        "answer_kind": spec.answer_kind,
        "choices": [c.model_dump() for c in spec.choices] if spec.choices else None,
        "tolerance": spec.tolerance.model_dump(),
        "feedback": spec.feedback,
        "student_id": student_id,
        "given": {name: encode(tensor) for name, tensor in variant.given.items()},
        "given_descriptions": {name: g.description for name, g in spec.given.items()},
    }
    return TensorJSONResponse(body)

"""Grading a whole submission: one result per problem and the total.

The comparison itself is the checking engine's (``POST /v1/check``), passed in as ``check``,
so this module only orchestrates: draw the student's variant, skip what is missing, let
``check`` judge the rest, and turn each verdict into feedback at the problem's level. What
it returns is meant for the student: it never holds the key's values (see ``student_report``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from service.grading.catalogue import Catalogue
from service.grading.schema import FeedbackLevel, ProblemSpec, Tolerance, Visibility
from service.grading.variants import Variant
from service.problems import Problem

Status = Literal["correct", "partial", "incorrect", "missing", "malformed"]


class MalformedAnswer(ValueError):
    """An answer that cannot be compared (not a tensor, ragged, ...), with the reason."""


class CheckFn(Protocol):
    """The checking engine: the answer of ``POST /v1/check`` for one answer.

    Returns:
        A mapping with ``correct`` (bool) and ``score`` (in [0, 1]), and optionally
        ``report`` (a mapping) and ``diagnosis`` (a list of sentences).

    Raises:
        MalformedAnswer, or a 4xx ``Problem``: the answer itself is at fault.
    """

    def __call__(
        self, expected: Mapping[str, Any], answer: Any, tolerance: Tolerance
    ) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class ProblemResult:
    """The grade of one problem, as the student may see it."""

    problem: str
    title: str
    score: float
    max_score: float
    status: Status
    feedback: dict[str, Any]
    visibility: Visibility

    @property
    def passed(self) -> bool:
        return self.status == "correct"


@dataclass(frozen=True)
class GradeResult:
    """The grade of a submission."""

    assignment: str
    student_id: str
    results: list[ProblemResult]
    ignored: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        return sum(r.score for r in self.results)

    @property
    def max_score(self) -> float:
        return sum(r.max_score for r in self.results)


VERDICTS: dict[Status, str] = {
    "correct": "correct",
    "partial": "partially correct",
    "incorrect": "incorrect",
    "missing": "no answer",
    "malformed": "malformed answer",
}


def student_report(report: Any) -> Any:
    """The part of a check's report that reveals nothing of the key: shapes, counts and
    indices (integers and booleans) of entries not named ``expected...``. Every float goes (an
    error measured against a zero answer *is* the key), and so does every string (it may
    quote a value)."""
    if isinstance(report, Mapping):
        kept = {
            key: student_report(value)
            for key, value in report.items()
            if not str(key).startswith("expected")
        }
        return {key: value for key, value in kept.items() if value is not None}
    if isinstance(report, bool | int):
        return report
    if isinstance(report, list) and all(isinstance(v, int) for v in report):
        return report
    return None


def feedback(
    level: FeedbackLevel, status: Status, outcome: Mapping[str, Any] | None, why: str | None
) -> dict[str, Any]:
    """What the student is told, at the problem's feedback level."""
    told: dict[str, Any] = {"verdict": VERDICTS[status]}
    if why is not None:
        told["reason"] = why
    if outcome is not None and level in ("report", "diagnosis"):
        report = student_report(outcome.get("report") or {})
        if report:
            told["report"] = report
    if outcome is not None and level == "diagnosis":
        diagnosis = [str(s) for s in outcome.get("diagnosis") or []]
        if diagnosis:
            told["diagnosis"] = diagnosis
    return told


def _result(
    problem: ProblemSpec,
    status: Status,
    fraction: float,
    outcome: Mapping[str, Any] | None = None,
    why: str | None = None,
) -> ProblemResult:
    return ProblemResult(
        problem=problem.id,
        title=problem.title,
        score=problem.points * fraction,
        max_score=problem.points,
        status=status,
        feedback=feedback(problem.feedback, status, outcome, why),
        visibility=problem.visibility,
    )


def check_choice(problem: ProblemSpec, answer: Any) -> ProblemResult:
    """A choice answer is one option's id (case and surrounding blanks do not matter)."""
    ids = [choice.id for choice in problem.choices]
    if not isinstance(answer, str) or answer.strip().lower() not in {i.lower() for i in ids}:
        return _result(
            problem, "malformed", 0.0, why=f"answer with the id of one option: {', '.join(ids)}"
        )
    correct = answer.strip().lower() == str(problem.expected["correct"]).lower()
    return _result(problem, "correct" if correct else "incorrect", float(correct))


def grade_problem(variant: Variant, answer: Any, check: CheckFn) -> ProblemResult:
    """The grade of one answer (``None``: no answer) to one student's variant of a problem."""
    problem = variant.problem
    if answer is None:
        return _result(problem, "missing", 0.0)
    if problem.answer_kind == "choice":
        return check_choice(problem, answer)
    try:
        outcome = check(variant.expected, answer, problem.tolerance)
    except MalformedAnswer as error:
        return _result(problem, "malformed", 0.0, why=str(error))
    except Problem as error:
        if not 400 <= error.status < 500:
            raise
        return _result(problem, "malformed", 0.0, why=error.detail)
    score = float(outcome.get("score", 0.0))
    fraction = min(1.0, max(0.0, score)) if math.isfinite(score) else 0.0
    correct = bool(outcome.get("correct"))
    status: Status = "correct" if correct else "partial" if fraction > 0 else "incorrect"
    return _result(problem, status, 1.0 if correct else fraction, outcome)


def grade_submission(
    catalogue: Catalogue,
    assignment_id: str,
    student_id: str,
    answers: Mapping[str, Any],
    check: CheckFn,
) -> GradeResult:
    """Grade every problem of an assignment for one student.

    Args:
        catalogue: the assignments and the variant secret.
        assignment_id: which assignment.
        student_id: whose variant the answers are checked against.
        answers: answers by problem id; a problem without one scores 0 ("no answer").
        check: the checking engine.

    Returns:
        One result per problem, in the assignment's order; answers to problems the
        assignment does not have are listed in ``ignored``. A malformed answer scores 0 and
        says why without failing the rest.

    Raises:
        UnknownName: there is no such assignment.
    """
    assignment = catalogue.assignment(assignment_id)
    results = [
        grade_problem(
            catalogue.variant(assignment_id, problem.id, student_id),
            answers.get(problem.id),
            check,
        )
        for problem in assignment.problems
    ]
    known = {problem.id for problem in assignment.problems}
    return GradeResult(assignment_id, student_id, results, sorted(set(answers) - known))

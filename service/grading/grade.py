"""Grading a whole submission: one result per problem and the total.

The comparison itself is the checking engine's (``POST /v1/check``), passed in as ``check``,
so this module only orchestrates: draw the student's variant, skip what is missing, let
``check`` judge the rest, and turn each verdict into feedback at the problem's level. What
it returns is meant for the student: it never holds the key's values (see ``student_report``
and ``student_diagnosis``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from service.grading.catalogue import Catalogue
from service.grading.errors import FormulaError, InvalidAnswer
from service.grading.formulas import Undefined, parse
from service.grading.schema import (
    AssignmentSpec,
    FeedbackLevel,
    ProblemSpec,
    Tolerance,
    Visibility,
)
from service.grading.shapes import parse_shape_answer
from service.grading.variants import Variant
from service.jsonout import NONFINITE_NAMES
from service.problems import Problem

Status = Literal["correct", "partial", "incorrect", "missing", "malformed"]


class MalformedAnswer(ValueError):
    """An answer that cannot be compared (not a tensor, ragged, ...), with the reason."""


class CheckFn(Protocol):
    """The checking engine: the answer of ``POST /v1/check`` for one answer
    (``checker.EngineCheck``).

    Returns:
        A mapping with ``correct`` (bool) and ``score`` (in [0, 1]), and optionally
        ``report`` (the engine's report, with its ``kind``) and ``diagnosis``
        (``[{"code", "message"}]``).

    Raises:
        MalformedAnswer, or a 4xx ``Problem``: the answer itself is at fault. Any other
            error (a key that cannot be computed) is not the student's and fails the grade.
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


MAX_IGNORED_LISTED = 100
"""The most ignored answers a grade lists (its JSON counts them all in ``ignored_count``): a
submission of a million unknown ids was answered with every one of them, 17 MB."""


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


# What of each kind of the engine's report a student may see: shapes of their own answer,
# counts and verdicts. Never a value of the key, an error (measured against a zero answer, an
# error *is* the key), the key's shape where the answer's differs, the index of a mismatch (a
# student could probe the key element by element), the reference formula, or the engine's
# own message (it quotes expected values). Fields not listed here are dropped, so a field the
# engine adds later stays away from students until it is judged safe and listed.
STUDENT_FIELDS: dict[str, tuple[str, ...]] = {
    # No count of wrong elements, steps or points: with every other element far off, the
    # count says whether the one element tried is right, which recovers the key one element
    # at a time (15 numbers in 60 checks). Right or wrong for the whole answer is the signal.
    "tensor": ("label", "shape_matches", "given_shape", "elements", "read_as_scalar"),
    "shape": ("label", "given"),
    "formula": ("points_checked",),
}


def student_report(report: Mapping[str, Any]) -> dict[str, Any]:
    """The part of one of the engine's reports that reveals nothing of the key, with a
    message of its own that quotes only the student's answer and counts.

    Args:
        report: the ``report`` of ``POST /v1/check`` (``kind``: tensor, shape or formula).

    Returns:
        The fields of ``STUDENT_FIELDS`` for the report's kind and a ``message``; empty for a
        report of another kind.
    """
    kind = report.get("kind")
    if not isinstance(kind, str) or kind not in STUDENT_FIELDS:
        return {}
    told: dict[str, Any] = {"kind": kind}
    told |= {f: report[f] for f in STUDENT_FIELDS[kind] if report.get(f) is not None}
    if kind == "tensor" and not report.get("shape_matches", True):
        told.pop("elements", None)  # the key's element count, not the answer's
    if kind == "formula" and isinstance(report.get("counterexample"), Mapping):
        example = report["counterexample"]
        # The point is the student's to evaluate, and the value there is their formula's.
        told["counterexample"] = {"point": example.get("point"), "given": example.get("given")}
    # Whether the whole answer is right, which the verdict says anyway.
    correct = not report.get("mismatched") and not report.get("points_disagreeing")
    if kind == "shape":  # a shape's report counts no mismatches: its answer is the key or not
        correct = report.get("given") == report.get("expected")
    told["message"] = _message(told, correct)
    return told


def _message(told: Mapping[str, Any], correct: bool) -> str:
    kind = told["kind"]
    if kind == "tensor":
        if not told.get("shape_matches", True):
            return f"the answer's shape {told.get('given_shape')} is not the shape asked for"
        elements = told.get("elements", 0)
        if elements == 1:
            return "the answer's one number " + (
                "agrees within the tolerance" if correct else "is not within the tolerance"
            )
        if correct:
            return f"all {elements} elements agree within the tolerance"
        return (
            f"the shape is the one asked for, but not all {elements} elements are within "
            "the tolerance"
        )
    if kind == "formula":
        checked = told.get("points_checked", 0)
        if correct:
            return f"the formula agrees with the reference at all {checked} points checked"
        text = f"the formula disagrees with the reference at some of the {checked} points"
        example = told.get("counterexample")
        if example and example.get("point"):
            point = ", ".join(f"{name}={value}" for name, value in example["point"].items())
            given = example.get("given")
            text += f", for example at {point}" + (
                f" (where your formula gives {given})" if given is not None else ""
            )
        return text
    what = f"the {told.get('label', 'size')} asked for"
    return (
        f"the answer {told.get('given')} is {what}"
        if correct
        else (f"the answer {told.get('given')} is not {what}")
    )


ONE_ELEMENT_HINTS = frozenset({"constant_factor"})
"""Diagnoses that state the key of a one-element key outright: "6/5 times the key" is a ratio,
not a mistake, when the key is one number."""


def student_diagnosis(outcome: Mapping[str, Any]) -> list[dict[str, str]]:
    """The likely mistakes, as the engine words them (its sentences name the mistake and
    never quote a value of the key), less those that would state a one-number key.

    Args:
        outcome: the answer of ``POST /v1/check``.

    Returns:
        ``[{"code", "message"}, ...]``.
    """
    report = outcome.get("report") or {}
    one_number = report.get("kind") == "tensor" and report.get("elements") == 1
    found = []
    for entry in outcome.get("diagnosis") or []:
        if isinstance(entry, Mapping):
            code, message = str(entry.get("code", "")), str(entry.get("message", ""))
        else:
            code, message = "", str(entry)
        if one_number and code in ONE_ELEMENT_HINTS:
            continue
        found.append({"code": code, "message": message})
    return found


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
        diagnosis = student_diagnosis(outcome)
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
    """A choice answer is one option's id (case and surrounding blanks do not matter); a
    number or a boolean is the id it spells (``choice_text``)."""
    ids = [choice.id for choice in problem.choices]
    answer = choice_text(answer)
    if not isinstance(answer, str) or answer.strip().lower() not in {i.lower() for i in ids}:
        return _result(
            problem, "malformed", 0.0, why=f"answer with the id of one option: {', '.join(ids)}"
        )
    correct = answer.strip().lower() == str(problem.expected["correct"]).lower()
    return _result(problem, "correct" if correct else "incorrect", float(correct))


def choice_text(answer: Any) -> Any:
    """A number or a boolean as the option id it spells: ``2`` is ``"2"``, ``false`` is
    ``"false"``. Options numbered 1, 2, 3 or named true and false are answered so in JSON,
    and a class's CSV cell ``2`` or ``false`` reads as JSON like every other cell: as text
    the right answer was refused as malformed. Other answers are left as they are."""
    if isinstance(answer, bool):
        return "true" if answer else "false"
    if isinstance(answer, float) and math.isfinite(answer):
        return str(answer)
    if isinstance(answer, int) and abs(answer) < 10**18:  # no id is longer; str() has limits
        return str(answer)
    return answer


NUMBER_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,3})?")
"""A number as a student types it in a text field: ``1.386``, ``-.25``, ``1e-3``."""


def number_text(answer: str) -> Any:
    """A number answer sent as text (``"1.386"``, from a form or a quoted CSV cell) as the
    number, and so is arithmetic on numbers alone (``"1/4"``, ``"sqrt(2)/2"``, in the syntax
    of formula answers); other text is left as it is, for the check to refuse in its words."""
    text = answer.strip()
    if len(text) > 64:
        return answer
    if NUMBER_TEXT.fullmatch(text):
        value = float(text)
        return value if math.isfinite(value) else answer
    try:
        value = float(parse(text, ())({}))
    except (FormulaError, Undefined, OverflowError, TypeError, ValueError):
        return answer
    return value if math.isfinite(value) else answer


PERCENT_TEXT = re.compile(rf"({NUMBER_TEXT.pattern})\s*%")
"""A percentage as a student types it: ``25%``, ``12.5 %``."""

NUMBER_EXAMPLE = "0.75"
"""The form of a number answer, shown when one is not a number. Fixed, so that it tells nothing
of any key (an example chosen to avoid the key would tell where the key is not), and not the
key of any number problem of the shipped assignment (0.25 is 1.3-4-accuracy's; a test checks)."""


def not_a_number(answer: Any, why: str) -> str:
    """Why an answer to a one-number problem cannot be judged, in words about a number.

    The checking engine reads a number answer as a one-element tensor, so its reasons speak
    of nested lists and tensor objects ("expected a nested list of numbers or a tensor object,
    got a string"): the student was asked for a number.

    Args:
        answer: the answer as sent (after ``number_text``).
        why: the engine's reason.
    """
    lead = f"give a number, e.g. {NUMBER_EXAMPLE}"
    # "NaN" and "Infinity" are read as numbers (the way answers write them), refused as such.
    if isinstance(answer, str) and answer not in NONFINITE_NAMES:
        text = answer.strip()
        percent = PERCENT_TEXT.fullmatch(text)
        if percent and math.isfinite(value := float(percent.group(1))):
            # The student's own number, converted: it tells nothing they did not write.
            return f"give a number: write a percentage as a fraction ({text} is {value / 100:g})"
        shown = text if len(text) <= 40 else text[:40] + "..."
        return f'{lead}, not the text "{shown}"'
    if isinstance(answer, bool):
        return f"{lead}, not {str(answer).lower()}"
    return f"{lead} ({why})"


def grade_problem(variant: Variant, answer: Any, check: CheckFn) -> ProblemResult:
    """The grade of one answer (``None``: no answer) to one student's variant of a problem."""
    problem = variant.problem
    if answer is None:
        return _result(problem, "missing", 0.0)
    if problem.answer_kind == "choice":
        return check_choice(problem, answer)
    try:
        if problem.answer_kind == "shape" and variant.expected.get("op") == "value":
            # A shape compared as a tensor of sizes: read "5x2" and 5 the way conv_shape does.
            answer = parse_shape_answer(answer, "answer")
        elif problem.answer_kind == "number" and isinstance(answer, str):
            answer = number_text(answer)
        outcome = check(variant.expected, answer, problem.tolerance)
    except (InvalidAnswer, MalformedAnswer) as error:
        why = error.message if isinstance(error, InvalidAnswer) else str(error)
        return _malformed(variant, answer, why)
    except Problem as error:
        if not 400 <= error.status < 500:
            # Not the answer's fault: the whole grade fails, naming the problem at fault.
            error.detail = f"problem {problem.id}: {error.detail}"
            raise
        return _malformed(variant, answer, error.detail)
    score = float(outcome.get("score", 0.0))
    fraction = min(1.0, max(0.0, score)) if math.isfinite(score) else 0.0
    correct = bool(outcome.get("correct"))
    status: Status = "correct" if correct else "partial" if fraction > 0 else "incorrect"
    return _result(problem, status, 1.0 if correct else fraction, outcome)


def _malformed(variant: Variant, answer: Any, why: str) -> ProblemResult:
    """The result of an answer that cannot be judged, with the reason in the problem's terms."""
    if variant.problem.answer_kind == "number":
        why = not_a_number(answer, why)
    return _result(variant.problem, "malformed", 0.0, why=why)


def with_parts(assignment: AssignmentSpec, answers: Mapping[str, Any]) -> dict[str, Any]:
    """``answers`` with the answer to a split question (API.md numbers questions as the seed
    does: ``1.2.1d``, ``1.3-4``) given as an object of its parts by suffix
    (``{"1.3-4": {"loss": 1.386, "accuracy": 0.25}}``) answering each part. A part answered
    under its own id as well (not null) keeps that answer. A suffix that is no part
    (``"Loss"``, a typo) answers ``1.3-4-Loss``, which is listed in ``ignored`` while the
    other parts are graded. Any other answer to an unknown id (an empty object, a bare
    number to a split question) stays as it is (and is listed in ``ignored``)."""
    expanded = dict(answers)
    # The ids some problem's id starts with, before a "-": only those can be split questions,
    # and the others are passed over without looking through every problem for each.
    split = {p.id[:at] for p in assignment.problems for at, c in enumerate(p.id) if c == "-"}
    for question, answer in answers.items():
        if question not in split or not isinstance(answer, dict) or not answer:
            continue
        parts = assignment.parts(question)
        if not parts:
            continue
        del expanded[question]
        for suffix, part_answer in answer.items():
            part = parts.get(suffix, f"{question}-{suffix}")
            if expanded.get(part) is None:  # not answered under its own id (or null)
                expanded[part] = part_answer
    return expanded


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
    answers = with_parts(assignment, answers)
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

"""Grading a whole submission around a checking engine. The engine here is a test double
that compares exactly; what is under test is the orchestration: variants, missing and
malformed answers, partial scores, feedback levels and what reaches the student."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from models.errors import UnknownName
from service.grading.catalogue import Catalogue, parse_assignment
from service.grading.grade import (
    MalformedAnswer,
    grade_problem,
    grade_submission,
    student_diagnosis,
    student_report,
)
from service.grading.schema import Tolerance
from service.problems import Problem
from tests.grading.sample import SAMPLE

SECRET = b"a-secret-of-thirty-two-bytes-...."


def catalogue() -> Catalogue:
    return Catalogue({"sample": parse_assignment(SAMPLE, "sample.toml")}, SECRET)


class ExactCheck:
    """Compares an answer with ``expected["value"]`` exactly; records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[Mapping[str, Any], Any, Tolerance]] = []

    def __call__(
        self, expected: Mapping[str, Any], answer: Any, tolerance: Tolerance
    ) -> Mapping[str, Any]:
        self.calls.append((expected, answer, tolerance))
        if isinstance(answer, str):
            raise MalformedAnswer("the answer is text, not numbers")
        if answer == [[1], [1, 2]]:
            raise Problem(422, "answer: the nested lists are ragged")
        correct = answer == expected["value"]
        return {
            "correct": correct,
            "score": 1.0 if correct else 0.0,
            "report": {  # the fields of the engine's tensor report
                "kind": "tensor",
                "label": "the value",
                "expected_shape": [2, 3],
                "given_shape": [2, 3],
                "shape_matches": True,
                "elements": 6,
                "mismatched": 0 if correct else 6,
                "max_abs_error": {"value": 3.25, "index": [1, 2], "expected": 3.25, "given": 0},
                "first_mismatches": [{"index": [1, 2], "expected": 3.25, "given": 0}],
                "message": "the largest error is 3.25 at [1, 2] (expected 3.25, got 0)",
            },
            "diagnosis": []
            if correct
            else [{"code": "sign_flipped", "message": "the sign is flipped"}],
        }


def key_of(problem: str, student: str = "alice") -> Any:
    return catalogue().variant("sample", problem, student).expected["value"]


def test_the_keys_answered_score_full_marks() -> None:
    check = ExactCheck()
    answers = {"p1": key_of("p1"), "p2": "b", "p3": key_of("p3")}
    grade = grade_submission(catalogue(), "sample", "alice", answers, check)
    assert [r.status for r in grade.results] == ["correct"] * 3
    assert grade.score == grade.max_score == 4.5
    # the engine saw alice's resolved reference and each problem's tolerance
    expected, answer, _ = check.calls[0]
    assert expected == {"op": "value", "value": key_of("p1")} and answer == key_of("p1")
    assert check.calls[1][2] == Tolerance(rtol=0, atol=0.01)


def test_another_students_key_is_wrong_for_alice() -> None:
    grade = grade_submission(
        catalogue(), "sample", "alice", {"p1": key_of("p1", "bob")}, ExactCheck()
    )
    assert grade.results[0].status == "incorrect" and grade.results[0].score == 0


def test_a_missing_answer_scores_zero_with_no_answer() -> None:
    grade = grade_submission(catalogue(), "sample", "alice", {"p2": "b", "p3": None}, ExactCheck())
    p1, p2, p3 = grade.results
    assert (p1.status, p1.score, p1.feedback) == ("missing", 0, {"verdict": "no answer"})
    assert p3.status == "missing" and p2.status == "correct"
    assert grade.score == 1


@pytest.mark.parametrize(
    ("answer", "reason"),
    [("two", "the answer is text, not numbers"), ([[1], [1, 2]], "the nested lists are ragged")],
)
def test_a_malformed_answer_says_why_and_the_rest_is_graded(answer: Any, reason: str) -> None:
    answers = {"p1": answer, "p2": "b", "p3": key_of("p3")}
    grade = grade_submission(catalogue(), "sample", "alice", answers, ExactCheck())
    p1 = grade.results[0]
    assert p1.status == "malformed" and p1.score == 0
    assert reason in p1.feedback["reason"]
    assert grade.score == 2.5


def test_a_server_error_of_the_engine_is_not_blamed_on_the_student() -> None:
    def broken(expected: Mapping[str, Any], answer: Any, tolerance: Tolerance) -> Mapping[str, Any]:
        raise Problem(503, "out of device memory")

    variant = catalogue().variant("sample", "p1", "alice")
    with pytest.raises(Problem):
        grade_problem(variant, [[0]], broken)


@pytest.mark.parametrize(
    ("score", "status", "points"),
    [(0.5, "partial", 1.0), (7.0, "partial", 2.0), (-1, "incorrect", 0)],
)
def test_partial_scores_are_clamped_to_the_points(score: float, status: str, points: float) -> None:
    def partial(
        expected: Mapping[str, Any], answer: Any, tolerance: Tolerance
    ) -> Mapping[str, Any]:
        return {"correct": False, "score": score}

    result = grade_problem(catalogue().variant("sample", "p1", "alice"), [[0]], partial)
    assert (result.status, result.score, result.max_score) == (status, points, 2)


def test_choices_are_ids_whatever_their_case() -> None:
    variant = catalogue().variant("sample", "p2", "alice")
    assert grade_problem(variant, " B ", ExactCheck()).status == "correct"
    assert grade_problem(variant, "a", ExactCheck()).status == "incorrect"
    unknown = grade_problem(variant, "c", ExactCheck())
    assert unknown.status == "malformed" and unknown.feedback["reason"].endswith("a, b")
    assert grade_problem(variant, 2, ExactCheck()).status == "malformed"


NUMBERED = """
id = "numbered"
title = "Options that are numbers or booleans"

[[problems]]
id = "q1"
title = "Which one?"
statement = "Pick 1, 2 or 3."
points = 1
answer_kind = "choice"
choices = [{ id = "1", text = "one" }, { id = "2", text = "two" }, { id = "3", text = "3" }]
expected = { op = "choice", correct = "2" }

[[problems]]
id = "q2"
title = "True or false?"
statement = "Is it?"
points = 1
answer_kind = "choice"
choices = [{ id = "true", text = "yes" }, { id = "false", text = "no" }]
expected = { op = "choice", correct = "false" }
"""


@pytest.mark.parametrize(
    ("problem", "answer", "status"),
    [
        ("q1", 2, "correct"),
        ("q1", "2", "correct"),
        ("q1", 3, "incorrect"),
        ("q1", 4, "malformed"),
        ("q1", 2.5, "malformed"),
        ("q2", False, "correct"),
        ("q2", " FALSE ", "correct"),
        ("q2", True, "incorrect"),
        ("q2", 0, "malformed"),  # 0 is no boolean: the id it spells is "0"
    ],
)
def test_a_choice_answered_as_a_number_or_boolean_is_the_id_it_spells(
    problem: str, answer: Any, status: str
) -> None:
    """A class's CSV cell `2` or `false` reads as JSON like every other cell: as text the
    right answer was refused as malformed."""
    numbered = Catalogue({"numbered": parse_assignment(NUMBERED, "numbered.toml")}, SECRET)
    variant = numbered.variant("numbered", problem, "alice")
    assert grade_problem(variant, answer, ExactCheck()).status == status


def test_feedback_follows_each_problems_level() -> None:
    wrong = {"p1": [[9, 9, 9], [9, 9, 9]], "p2": "a", "p3": [[0]]}
    p1, p2, p3 = grade_submission(catalogue(), "sample", "alice", wrong, ExactCheck()).results
    assert p2.feedback == {"verdict": "incorrect"}  # level verdict
    assert set(p1.feedback) == {"verdict", "report"}  # level report: no diagnosis
    assert set(p3.feedback) == {"verdict", "report", "diagnosis"}
    assert p3.feedback["diagnosis"] == [{"code": "sign_flipped", "message": "the sign is flipped"}]


def test_what_reaches_the_student_holds_no_value_of_the_key() -> None:
    wrong = {"p1": [[9, 9, 9], [9, 9, 9]], "p3": [[0]]}
    p1, _, p3 = grade_submission(catalogue(), "sample", "alice", wrong, ExactCheck()).results
    for result in (p1, p3):
        assert result.feedback["report"] == {
            "kind": "tensor",
            "label": "the value",
            "shape_matches": True,
            "given_shape": [2, 3],
            "elements": 6,
            "message": "the shape is the one asked for, but not all 6 elements are within "
            "the tolerance",
        }
        assert "3.25" not in str(result.feedback) and "[1, 2]" not in str(result.feedback)


REPORTS = [
    # a shape that differs: neither the key's shape nor its element count
    (
        {
            "kind": "tensor",
            "label": "dy/dx",
            "expected_shape": [1, 3, 5, 7],
            "given_shape": [3, 5, 7],
            "shape_matches": False,
            "elements": 105,
            "given_elements": 105,
            "message": "dy/dx has shape [1, 3, 5, 7] but the answer has shape [3, 5, 7]",
        },
        {
            "kind": "tensor",
            "label": "dy/dx",
            "shape_matches": False,
            "given_shape": [3, 5, 7],
            "message": "the answer's shape [3, 5, 7] is not the shape asked for",
        },
    ),
    # a shape answer: only the student's own
    (
        {
            "kind": "shape",
            "label": "output size",
            "expected": [5, 2],
            "given": [6, 3],
            "dimensions": [{"dimension": 0, "expected": 5, "given": 6, "correct": False}],
            "steps": [{"formula": "...", "result": 5}],
            "message": "the output size is [5, 2]; the answer has 6 instead of 5",
        },
        {
            "kind": "shape",
            "label": "output size",
            "given": [6, 3],
            "message": "the answer [6, 3] is not the output size asked for",
        },
    ),
    # a formula: the point and the student's value there, never the reference or its value
    (
        {
            "kind": "formula",
            "reference": "floor((H - K)/S) + 1",
            "named": None,
            "points_checked": 40,
            "points_disagreeing": 3,
            "constraints": ["H >= K"],
            "counterexample": {
                "point": {"H": 5, "K": 2},
                "expected": 2,
                "given": 2.5,
                "reason": "",
            },
            "message": "at H=5, K=2 the reference is 2 and the answer 2.5",
        },
        {
            "kind": "formula",
            "points_checked": 40,
            "counterexample": {"point": {"H": 5, "K": 2}, "given": 2.5},
            "message": "the formula disagrees with the reference at some of the 40 points, for "
            "example at H=5, K=2 (where your formula gives 2.5)",
        },
    ),
    # a tensor of the right shape: no count of the wrong elements (nor of the right steps),
    # which would tell, with the others far off, whether the one element tried is right
    (
        {
            "kind": "tensor",
            "label": "dy/dW",
            "expected_shape": [1, 5, 3],
            "given_shape": [1, 5, 3],
            "shape_matches": True,
            "elements": 15,
            "mismatched": 14,
            "steps": 5,
            "steps_correct": 1,
            "first_mismatches": [{"index": [0, 0, 1], "expected": 7.0, "given": -99.0}],
            "message": "14 of 15 elements differ",
        },
        {
            "kind": "tensor",
            "label": "dy/dW",
            "shape_matches": True,
            "given_shape": [1, 5, 3],
            "elements": 15,
            "message": "the shape is the one asked for, but not all 15 elements are within "
            "the tolerance",
        },
    ),
    (
        {"kind": "tensor", "shape_matches": True, "elements": 4, "mismatched": 0},
        {
            "kind": "tensor",
            "shape_matches": True,
            "elements": 4,
            "message": "all 4 elements agree within the tolerance",
        },
    ),
    # a report of a kind not known to be safe: nothing
    ({"kind": "future", "value": 1.5, "count": 2}, {}),
    ({"mismatched": 2}, {}),
]


@pytest.mark.parametrize(("report", "told"), REPORTS)
def test_the_student_report_of_each_kind(report: dict[str, Any], told: dict[str, Any]) -> None:
    assert student_report(report) == told


def test_a_right_shapes_report_says_it_is_right() -> None:
    """Gradescope showed "Correct: 1 of 1 points." above "The answer [5, 2] is not the output
    size asked for"."""
    right = {"kind": "shape", "label": "output size", "expected": [5, 2], "given": [5, 2]}
    assert student_report(right)["message"] == "the answer [5, 2] is the output size asked for"


def test_a_ratio_to_a_one_number_key_is_not_a_diagnosis_for_the_student() -> None:
    # "6/5 times the key" of the number 0.25 says the key is 0.25
    ratio = {"code": "constant_factor", "message": "Your answer is 6/5 times the key"}
    sign = {"code": "sign_flipped", "message": "the sign is flipped"}
    one = {"report": {"kind": "tensor", "elements": 1}, "diagnosis": [ratio, sign]}
    many = {"report": {"kind": "tensor", "elements": 6}, "diagnosis": [ratio, sign]}
    assert student_diagnosis(one) == [sign]
    assert student_diagnosis(many) == [ratio, sign]


def test_answers_to_unknown_problems_are_listed_not_graded() -> None:
    grade = grade_submission(catalogue(), "sample", "alice", {"p9": 1, "p2": "b"}, ExactCheck())
    assert grade.ignored == ["p9"] and [r.problem for r in grade.results] == ["p1", "p2", "p3"]


def test_an_unknown_assignment_is_an_unknown_name() -> None:
    with pytest.raises(UnknownName, match="the assignments are sample"):
        grade_submission(catalogue(), "nope", "alice", {}, ExactCheck())

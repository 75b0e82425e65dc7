"""Gradescope's results.json, validated against the fields of its autograder specification."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from service.grading.catalogue import Catalogue, parse_assignment
from service.grading.grade import GradeResult, grade_submission
from service.grading.gradescope import gradescope_results
from service.grading.schema import Tolerance
from tests.grading.sample import SAMPLE

TOP_LEVEL = {
    "score",
    "execution_time",
    "output",
    "visibility",
    "stdout_visibility",
    "tests",
    "extra_data",
}
TEST_FIELDS = {"name", "number", "score", "max_score", "status", "output", "visibility"}
VISIBILITIES = {"visible", "hidden", "after_due_date", "after_published"}


def check(expected: Mapping[str, Any], answer: Any, tolerance: Tolerance) -> Mapping[str, Any]:
    correct = answer == expected["value"]
    return {
        "correct": correct,
        "score": float(correct),
        "report": {
            "kind": "tensor",
            "given_shape": [1, 1],
            "shape_matches": True,
            "elements": 1,
            "mismatched": 1,
            "max_abs_error": {"value": 2.75, "index": [0, 0], "expected": 2.75, "given": 0.0},
        },
        "diagnosis": []
        if correct
        else [{"code": "axes_permuted", "message": "The axes are in another order."}],
    }


def graded(answers: dict[str, Any]) -> GradeResult:
    catalogue = Catalogue({"sample": parse_assignment(SAMPLE, "s.toml")}, b"s" * 32)
    return grade_submission(catalogue, "sample", "alice", answers, check)


def test_the_fields_and_their_types() -> None:
    results = gradescope_results(
        graded({"p2": "b", "p3": [[0]], "p7": 1}),
        execution_time=0.2,
        visibility="after_due_date",
        stdout_visibility="hidden",
    )
    assert set(results) == TOP_LEVEL
    assert isinstance(results["score"], float) and isinstance(results["execution_time"], int)
    assert results["execution_time"] == 1  # seconds, rounded up
    assert results["visibility"] == "after_due_date" and results["stdout_visibility"] == "hidden"
    assert isinstance(results["output"], str)
    for test in results["tests"]:
        assert set(test) == TEST_FIELDS
        assert isinstance(test["name"], str) and isinstance(test["number"], str)
        assert isinstance(test["score"], float) and isinstance(test["max_score"], float)
        assert test["status"] in {"passed", "failed"}
        assert test["visibility"] in VISIBILITIES and isinstance(test["output"], str)
    assert isinstance(results["extra_data"], dict)  # the spec's object of one's own
    json.dumps(results, allow_nan=False)  # plain JSON


def test_scores_statuses_and_visibility_per_problem() -> None:
    results = gradescope_results(graded({"p2": "b", "p3": [[0]]}), execution_time=3)
    p1, p2, p3 = results["tests"]
    assert [t["number"] for t in results["tests"]] == ["p1", "p2", "p3"]
    assert p1["name"] == "p1 A drawn tensor"
    assert (p1["score"], p1["max_score"], p1["status"]) == (0.0, 2.0, "failed")
    assert (p2["score"], p2["max_score"], p2["status"]) == (1.0, 1.0, "passed")
    assert (p3["score"], p3["max_score"], p3["status"]) == (0.0, 1.5, "failed")
    assert p2["visibility"] == "after_due_date" and p1["visibility"] == "visible"
    assert results["score"] == 1.0 == sum(t["score"] for t in results["tests"])


def test_each_output_follows_the_problems_feedback_level() -> None:
    results = gradescope_results(graded({"p2": "a", "p3": [[0]]}), execution_time=0)
    p1, p2, p3 = (t["output"] for t in results["tests"])
    assert p1 == "No answer: 0 of 2 points."
    assert p2 == "Incorrect: 0 of 1 points."  # verdict only
    assert p3.splitlines() == [
        "Incorrect: 0 of 1.5 points.",
        "The answer's one number is not within the tolerance.",
        "- The axes are in another order.",
    ]
    assert "2.75" not in json.dumps(results)


def test_the_overall_output_names_the_total_and_ignored_answers() -> None:
    results = gradescope_results(graded({"p2": "b", "q9": 1}), execution_time=0)
    assert results["output"] == (
        "sample: 1 of 4.5 points for alice. Answers to unknown problems were ignored: q9."
    )


def test_extra_data_records_what_was_graded() -> None:
    """A script that keeps results grades again when any of it differs: the student (on
    macOS `Ada.json` is `ada.json`), the revision (a replica of another one may have answered)
    and the answers the service took (an object of a split question's parts is no unknown
    answer)."""
    results = gradescope_results(graded({"p2": "b", "q9": 1}), execution_time=0, revision="r1")
    assert results["extra_data"] == {
        "tensorgrade": {
            "assignment": "sample",
            "student_id": "alice",
            "revision": "r1",
            "ignored": ["q9"],
        }
    }

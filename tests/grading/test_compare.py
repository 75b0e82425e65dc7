"""Tolerance semantics and the structured report of tensor answers."""

from __future__ import annotations

from typing import Any

import pytest

from service.grading.check import CheckFailed, check_one
from service.grading.compare import RULE
from service.grading.schemas import CheckRequest
from service.settings import Settings

SETTINGS = Settings()


def judge(key: Any, answer: Any, **extra: Any) -> dict[str, Any]:
    body = {"expected": {"op": "value", "value": key}, "answer": answer, **extra}
    return check_one(CheckRequest.model_validate(body), SETTINGS)


def test_defaults_are_echoed_with_the_rule_and_the_scale() -> None:
    result = judge([[1.0, -4.0]], [[1.0, -4.0]])
    assert result["correct"] and result["score"] == 1.0 and result["diagnosis"] == []
    assert result["tolerance"] == {
        "rtol": 1e-5,
        "atol": 1e-8,
        "floor": 1e-6,
        "scale": 4.0,
        "effective_atol": 4e-6,
        "rule": RULE,
    }


@pytest.mark.parametrize(
    ("answer", "tolerance", "correct"),
    [
        ([100.0009, 1.0], {}, True),  # 9e-4 <= 1e-4 (floor*scale) + 1e-3 (rtol*|100|)
        ([100.0012, 1.0], {}, False),
        ([100.0012, 1.0], {"rtol": 1e-4}, True),
        ([100.0, 1.000000005], {"rtol": 0.0, "floor": 0.0}, True),  # within atol 1e-8
        ([100.0, 1.000000005], {"rtol": 0.0, "floor": 0.0, "atol": 0.0}, False),
        ([100.0, 1.5], {"atol": 0.5, "rtol": 0.0, "floor": 0.0}, True),
    ],
)
def test_rtol_atol_and_floor_per_request(
    answer: list[float], tolerance: dict[str, float], correct: bool
) -> None:
    result = judge([100.0, 1.0], answer, tolerance=tolerance)
    assert result["correct"] is correct
    assert result["tolerance"]["rtol"] == tolerance.get("rtol", 1e-5)


def test_exact_zeros_of_a_jacobian_accept_noise_relative_to_the_key_scale() -> None:
    key = [[0.0, 2000.0], [0.0, 0.0]]
    noisy = [[1e-4, 2000.0], [-2e-4, 0.0]]  # float32-sized noise for a key of scale 2000
    assert judge(key, noisy)["correct"]
    without_floor = judge(key, noisy, tolerance={"floor": 0.0})
    assert not without_floor["correct"] and without_floor["report"]["mismatched"] == 2
    # The floor is relative to the key's scale: the same noise on a key of scale 1 is wrong.
    assert not judge([[0.0, 1.0], [0.0, 0.0]], [[1e-4, 1.0], [-2e-4, 0.0]])["correct"]


@pytest.mark.parametrize("answer", [5, [5], [[5]], 5.0000001])
def test_a_one_element_key_takes_a_scalar_in_any_brackets(answer: Any) -> None:
    for key in (5, [5], [[5]]):
        result = judge(key, answer)
        assert result["correct"], (key, answer)
        assert result["report"].get("read_as_scalar", False) == (_rank(answer) != _rank(key))


def _rank(value: Any) -> int:
    return 1 + _rank(value[0]) if isinstance(value, list) else 0


@pytest.mark.parametrize(
    ("key", "answer"),
    [
        ([[1.0, 2.0], [1.0, 2.0]], [1.0, 2.0]),  # would broadcast
        ([[1.0, 1.0], [1.0, 1.0]], 1.0),  # a scalar would broadcast
        ([[1.0, 2.0, 3.0]], [1.0, 2.0, 3.0]),  # [1, 3] against [3]
        ([1.0, 2.0], [[1.0], [2.0]]),
    ],
)
def test_nothing_broadcasts_a_shape_mismatch_is_wrong_not_invalid(key: Any, answer: Any) -> None:
    result = judge(key, answer)
    report = result["report"]
    assert result["correct"] is False and result["score"] == 0.0
    assert report["shape_matches"] is False
    assert report["expected_shape"] != report["given_shape"]
    assert "shapes must match exactly" in report["message"]


def test_the_report_says_how_many_are_wrong_by_how_much_and_where() -> None:
    key = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    answer = [[1.0, 2.5, 3.0], [4.0, 5.0, 0.0]]
    report = judge(key, answer)["report"]
    assert report["expected_shape"] == report["given_shape"] == [2, 3]
    assert report["elements"] == 6 and report["mismatched"] == 2
    assert report["max_abs_error"] == {"value": 6.0, "index": [1, 2], "expected": 6.0, "given": 0.0}
    assert report["max_rel_error"]["index"] == [1, 2] and report["max_rel_error"]["value"] == 1.0
    assert report["first_mismatches"] == [
        {"index": [0, 1], "expected": 2.0, "given": 2.5, "abs_error": 0.5},
        {"index": [1, 2], "expected": 6.0, "given": 0.0, "abs_error": 6.0},
    ]
    assert "2 of 6 elements" in report["message"] and "[1, 2]" in report["message"]


def test_an_error_that_overflows_a_float64_is_written_infinity() -> None:
    """1e308 answered -1e308: the difference, 2e308, is past a float64's range. The errors
    were inf, which JSON writes as null (the message alone said "inf")."""
    report = judge(1e308, -1e308)["report"]
    assert report["max_abs_error"] == {
        "value": "Infinity",
        "index": [],
        "expected": 1e308,
        "given": -1e308,
    }
    assert report["max_rel_error"]["value"] == "Infinity"
    assert report["first_mismatches"][0]["abs_error"] == "Infinity"
    assert (
        "the largest error is Infinity (the difference overflows a float64)" in (report["message"])
    )
    # A finite difference over a tiny key may overflow alone: only the relative error does.
    tiny = judge([1e-300, 1.0], [1e10, 1.0])["report"]
    assert tiny["max_abs_error"]["value"] == 1e10 and tiny["max_rel_error"]["value"] == "Infinity"
    assert tiny["first_mismatches"][0]["abs_error"] == 1e10


def test_first_mismatches_are_the_first_five_in_row_major_order() -> None:
    report = judge([0.0] * 12, [1.0] * 12)["report"]
    assert [m["index"] for m in report["first_mismatches"]] == [[0], [1], [2], [3], [4]]
    assert report["mismatched"] == 12 and report["max_rel_error"] is None


@pytest.mark.parametrize(
    ("partial", "score"),
    [("none", 0.0), ("elements", 5 / 6), ("steps", 1 / 2)],
)
def test_partial_credit_is_off_by_default_and_scores_elements_or_steps(
    partial: str, score: float
) -> None:
    key = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    answer = [[1.0, 2.0, 3.0], [4.0, 5.0, 7.0]]
    result = judge(key, answer, partial_credit=partial)
    assert result["correct"] is False and result["score"] == pytest.approx(score)
    if partial == "steps":
        assert result["report"]["steps_correct"] == 1 and result["report"]["steps"] == 2


def test_a_shape_mismatch_scores_zero_even_with_partial_credit() -> None:
    assert judge([1.0, 2.0], [1.0, 2.0, 3.0], partial_credit="elements")["score"] == 0.0


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ([[1, 2], [3]], "ragged"),
        ([1, "2"], "not a number"),
        ("12", "expected a nested list of numbers"),
        ([1, True], "not a number"),
        ({"shape": [2], "data": [1.0, float("nan")]}, "only finite numbers"),
        ({"shape": [3], "data": [1, 2]}, "needs 3"),
        ([[]], "empty"),
        (None, "null"),
    ],
)
def test_an_answer_that_is_not_a_tensor_is_invalid_not_wrong(answer: Any, message: str) -> None:
    with pytest.raises(CheckFailed) as failed:
        judge([1.0, 2.0], answer)
    problem = failed.value.problem
    assert problem.status == 422 and message in problem.detail
    assert problem.detail.startswith("answer")
    assert problem.errors is not None and problem.errors[0]["loc"][:2] == ["body", "answer"]

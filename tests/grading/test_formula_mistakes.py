"""Diagnoses of a wrong formula answer: the conv output-size formula of the seed's 1.1(b) made
wrong the ways students make it wrong, told only where the answer agrees with the mistake at
every point checked; and a plain counterexample."""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

import pytest

from service.grading.check import CheckFailed, check_one
from service.grading.formula_mistakes import with_mistakes
from service.grading.formulas import formula_key, parse
from service.grading.schemas import CheckRequest, FormulaExpected
from service.settings import Settings
from tests.grading.test_diagnosis import FORMULA_1_1B

SETTINGS = Settings()
NAMED_1_1B = {"op": "formula", "named": "conv_output_size"}
DECLARED_1_1B = {**FORMULA_1_1B, "mistakes": "conv_output_size"}

# Each wrong answer, the mistakes it is diagnosed with, in the order they are told.
MISTAKEN: list[tuple[str, list[str]]] = [
    ("(H + 2*P - D*(K - 1) - 1)/S + 1", ["floor_missing"]),
    ("ceil((H + 2*P - D*(K - 1) - 1)/S) + 1", ["ceil_instead_of_floor"]),
    ("floor((H + P - D*(K - 1) - 1)/S) + 1", ["padding_counted_once"]),
    ("floor((H - D*(K - 1) - 1)/S) + 1", ["padding_ignored"]),
    ("floor((H + 2*P - K)/S) + 1", ["dilation_ignored"]),  # the seed's 1.1(a) formula
    ("floor((H + 2*P - D*(K - 1))/S) + 1", ["minus_one_missing"]),
    ("H + 2*P - D*(K - 1)", ["stride_ignored"]),
    ("(H + 2*P - D*(K - 1) - 1)//S", ["plus_one_missing"]),
    ("(H - 1)*S - 2*P + D*(K - 1) + 1", ["transposed_formula"]),
    # Two mistakes at once: 1.1(a)'s formula without its floor, the typical answer to 1.1(b).
    ("(H - K + 2*P)/S + 1", ["floor_missing", "dilation_ignored"]),
    ("floor((H + P - K)/S) + 1", ["padding_counted_once", "dilation_ignored"]),
    ("floor((H - K)/S) + 1", ["padding_ignored", "dilation_ignored"]),  # 1.1(a)'s, unpadded
    ("(H + 2*P - D*(K - 1) - 1)/S", ["floor_missing", "plus_one_missing"]),
    # One slip, not the ceil and the + 1 left out, that give the same values.
    ("floor((H + 2*P - D*(K - 1) - 2)/S) + 1", ["minus_one_extra"]),
    ("floor((H + 2*P - (D*(K - 1) + 1) - 1)/S) + 1", ["minus_one_extra"]),  # 1.1(b)'s forms mixed
    ("floor((H + 2*P - D*(K - 1) - 1)/S) + 2", ["plus_one_extra"]),
]
RIGHT = [
    "floor((H + 2*P - D*(K - 1) - 1)/S) + 1",
    "(H + 2*P - D*(K-1) - 1)//S + 1",
    "floor((H - D*(K - 1) - 1 + 2*P)/S + 1)",
]
UNRELATED = ["H*K", "floor(H/S)", "H - K + 1", "floor((H + 2*P - D*K)/S) + 2", "0"]


def oracle(h: int, k: int, p: int, s: int, d: int, codes: list[str]) -> Fraction | int:
    """The seed's 1.1(b) with the mistakes of ``codes`` made, in plain arithmetic (the answers'
    own check, independent of the service)."""
    if codes == ["transposed_formula"]:
        return (h - 1) * s - 2 * p + d * (k - 1) + 1
    padding = p if "padding_counted_once" in codes else 0 if "padding_ignored" in codes else 2 * p
    span = (k - 1) if "dilation_ignored" in codes else d * (k - 1)
    minus = 0 if "minus_one_missing" in codes else 2 if "minus_one_extra" in codes else 1
    top = h + padding - span - minus
    stride = 1 if "stride_ignored" in codes else s
    quotient = Fraction(top, stride)
    if "floor_missing" not in codes:
        quotient = Fraction(
            math.ceil(quotient) if "ceil_instead_of_floor" in codes else math.floor(quotient)
        )
    return quotient + (0 if "plus_one_missing" in codes else 2 if "plus_one_extra" in codes else 1)


def check(expected: dict[str, Any], answer: str) -> dict[str, Any]:
    request = CheckRequest.model_validate({"expected": expected, "answer": answer})
    return check_one(request, SETTINGS)


def codes(result: dict[str, Any]) -> list[str]:
    return [d["code"] for d in result["diagnosis"]]


def agrees_everywhere(answer: str, mistakes: list[str]) -> bool:
    """Whether ``answer`` equals the oracle of ``mistakes`` at every point the key checks."""
    key = formula_key(FORMULA_1_1B["reference"], None, FORMULA_1_1B["variables"], [])
    formula = parse(answer, key.ranges)
    valid = parse(FORMULA_1_1B["constraints"][0], key.ranges, allow_compare=True)
    points = [p for p in key.points if valid(p)]
    return all(formula(p) == oracle(*(int(p[n]) for n in "HKPSD"), codes=mistakes) for p in points)


@pytest.mark.parametrize(("answer", "mistakes"), MISTAKEN, ids=[m[0] for m in MISTAKEN])
def test_the_table_of_mistakes_is_right(answer: str, mistakes: list[str]) -> None:
    """Each answer of the table is its mistakes made, at every point (checked independently)."""
    assert agrees_everywhere(answer, mistakes)


@pytest.mark.parametrize("expected", [FORMULA_1_1B, NAMED_1_1B, DECLARED_1_1B])
@pytest.mark.parametrize(("answer", "mistakes"), MISTAKEN, ids=[m[0] for m in MISTAKEN])
def test_each_mistake_is_diagnosed(
    expected: dict[str, Any], answer: str, mistakes: list[str]
) -> None:
    result = check(expected, answer)
    assert result["correct"] is False and result["score"] == 0
    assert codes(result) == mistakes
    together = "Your answer makes 2 mistakes together; this is one of them: you "
    lead = "You " if len(mistakes) == 1 else together
    assert all(d["message"].startswith(lead) for d in result["diagnosis"])
    assert result["report"]["counterexample"]  # the report is as it was


@pytest.mark.parametrize("answer", RIGHT)
def test_right_answers_stay_right_with_no_diagnosis(answer: str) -> None:
    result = check(DECLARED_1_1B, answer)
    assert result["correct"] is True and result["diagnosis"] == []


@pytest.mark.parametrize("answer", UNRELATED)
def test_an_answer_that_is_no_known_mistake_gets_no_diagnosis(answer: str) -> None:
    result = check(DECLARED_1_1B, answer)
    assert result["correct"] is False and result["diagnosis"] == []


@pytest.mark.parametrize(("answer", "mistakes"), MISTAKEN, ids=[m[0] for m in MISTAKEN])
def test_a_mistake_that_differs_at_one_edge_is_not_claimed(
    answer: str, mistakes: list[str]
) -> None:
    """The mistake with something added at H = 64 alone agrees with the mistake almost
    everywhere, and is diagnosed with nothing: a diagnosis needs every point."""
    near = f"{answer} + floor(H/64)"
    assert not agrees_everywhere(near, mistakes)
    result = check(DECLARED_1_1B, near)
    assert result["correct"] is False and result["diagnosis"] == []


def test_whatever_is_diagnosed_agrees_at_every_point() -> None:
    answers = [a for a, _ in MISTAKEN] + RIGHT + UNRELATED
    answers += [f"{a} - floor(K/8)" for a, _ in MISTAKEN] + [f"2*({a})" for a, _ in MISTAKEN]
    told = 0
    for answer in answers:
        found = codes(check(FORMULA_1_1B, answer))
        if found:
            told += 1
            assert agrees_everywhere(answer, found), (answer, found)
    assert told == len(MISTAKEN)


def test_the_same_values_are_told_as_the_answer_writes_them() -> None:
    """ceil(N/S) = floor((N - 1)/S) + 1: the 1 taken away twice gives the values of a ceil
    with the + 1 left out, and was told as those two mistakes to an answer with no ceil."""
    for expected in (NAMED_1_1B, DECLARED_1_1B):
        floor = check(expected, "floor((H + 2*P - D*(K - 1) - 2)/S) + 1")
        assert codes(floor) == ["minus_one_extra"]
        assert floor["diagnosis"][0]["message"].startswith("You took away 1 too many: ")
        ceil = check(expected, "ceil((H + 2*P - D*(K - 1) - 1)/S)")
        assert codes(ceil) == ["ceil_instead_of_floor", "plus_one_missing"]
        # ceil(N/S) + 1 is floor((N - 1)/S) + 2: the + 1 added twice, where no ceil is written.
        assert codes(check(expected, "floor((H + 2*P - D*(K - 1) - 1)/S) + 2")) == [
            "plus_one_extra"
        ]
        again = check(expected, "ceil((H + 2*P - D*(K - 1))/S) + 1")
        assert codes(again) == ["ceil_instead_of_floor", "minus_one_missing"]
    # Rounding up written another way is still told as a ceil, one mistake before two.
    trick = check(NAMED_1_1B, "(H + 2*P - D*(K - 1) - 1 + S - 1)//S + 1")
    assert codes(trick) == ["ceil_instead_of_floor"]


def test_pairs_that_give_the_same_formula_are_told_as_either() -> None:
    """With the stride ignored, the 1 taken away twice and the + 1 left out give the same
    formula: the stride is told as made, the other as one of two."""
    result = check(NAMED_1_1B, "H + 2*P - D*(K - 1) - 1")
    assert codes(result) == ["stride_ignored", "plus_one_missing", "minus_one_extra"]
    messages = [d["message"] for d in result["diagnosis"]]
    assert messages[0].startswith(
        "Your answer makes 2 mistakes together; this is one of them: you ignored the stride"
    )
    either = "Your answer makes 2 mistakes together, and 2 ways of making them fit it; if "
    assert messages[1].startswith(either + "this is one of yours, you left out the + 1")
    assert messages[2].startswith(either + "this is one of yours, you took away 1 too many")
    assert agrees_everywhere("H + 2*P - D*(K - 1) - 1", ["stride_ignored", "plus_one_missing"])
    assert agrees_everywhere("H + 2*P - D*(K - 1) - 1", ["stride_ignored", "minus_one_extra"])


def test_single_mistakes_that_give_the_same_formula_are_told_as_either() -> None:
    """Without a stride, H - K is both the + 1 left out and the 1 taken away twice."""
    expected = {"op": "formula", "reference": "H - K + 1", "variables": {"H": [1, 40], "K": [1, 6]}}
    result = check({**expected, "constraints": ["H >= K"]}, "H - K")
    assert codes(result) == ["plus_one_missing", "minus_one_extra"]
    lead = "Your answer fits 2 mistakes; if yours is this one, you "
    assert all(d["message"].startswith(lead) for d in result["diagnosis"])


def test_the_counterexample_is_a_plain_point() -> None:
    """The first point found was D=2, H=2, K=1, P=0, S=4: a dilation with a kernel of one,
    which changes nothing, to show a floor left out."""
    floor = check(FORMULA_1_1B, "(H - K + 2*P)/S + 1")["report"]["counterexample"]
    assert floor["point"] == {"D": 1, "H": 2, "K": 1, "P": 0, "S": 2}
    assert (floor["expected"], floor["given"]) == (1, 1.5)
    padding = check(FORMULA_1_1B, "floor((H + P - D*(K - 1) - 1)/S) + 1")["report"]
    assert padding["counterexample"]["point"] == {"D": 1, "H": 1, "K": 1, "P": 1, "S": 1}
    # A dilation mistake shows only where D > 1 and K > 1: the plainest such point.
    dilation = check(FORMULA_1_1B, "floor((H + 2*P - K)/S) + 1")["report"]["counterexample"]
    assert dilation["point"]["D"] == 2 and dilation["point"]["K"] == 2
    assert dilation["point"]["S"] == 1


@pytest.mark.parametrize(
    ("expected", "answer", "mistakes"),
    [
        # seed 1.1(c)(i), named: L is the input size, with no padding and no dilation
        ({"op": "formula", "named": "conv1d_output_length"}, "(L - K)/S + 1", ["floor_missing"]),
        (
            {"op": "formula", "named": "conv1d_output_length"},
            "(L - 1)*S + K",
            ["transposed_formula"],
        ),
        (
            {"op": "formula", "named": "conv1d_output_length"},
            "floor((L - K - 1)/S) + 1",
            ["minus_one_extra"],
        ),
        ({"op": "formula", "named": "conv1d_output_length"}, "(L - K)//S + 2", ["plus_one_extra"]),
        # recognised by its values, with the width W as the input size
        (
            {
                "op": "formula",
                "reference": "(W + 2*P - K)//S + 1",
                "variables": {"W": [1, 32], "K": [1, 5], "P": [0, 2], "S": [1, 3]},
                "constraints": ["W + 2*P >= K"],
            },
            "(W + 2*P - K)//S",
            ["plus_one_missing"],
        ),
        # declared, its variables named
        (
            {
                "op": "formula",
                "reference": "floor((n + 2*pad - dil*(k - 1) - 1)/st) + 1",
                "variables": {
                    "n": [1, 40],
                    "k": [1, 5],
                    "pad": [0, 2],
                    "st": [1, 3],
                    "dil": [1, 3],
                },
                "constraints": ["n + 2*pad >= dil*(k - 1) + 1"],
                "mistakes": {
                    "family": "conv_output_size",
                    "variables": {"H": "n", "K": "k", "P": "pad", "S": "st", "D": "dil"},
                },
            },
            "floor((n + pad - dil*(k - 1) - 1)/st) + 1",
            ["padding_counted_once"],
        ),
    ],
    ids=[
        "conv1d-floor",
        "conv1d-transposed",
        "conv1d-minus-one-extra",
        "conv1d-plus-one-extra",
        "recognised-W",
        "declared-names",
    ],
)
def test_other_conv_references_are_diagnosed(
    expected: dict[str, Any], answer: str, mistakes: list[str]
) -> None:
    assert codes(check(expected, answer)) == mistakes


CONV1D = {"op": "formula", "named": "conv1d_output_length"}
W_PADDED = {
    "op": "formula",
    "reference": "(W + 2*P - K)//S + 1",
    "variables": {"W": [1, 32], "K": [1, 5], "P": [0, 2], "S": [1, 3]},
    "constraints": ["W + 2*P >= K"],
}
RENAMED = {
    "op": "formula",
    "reference": "floor((n + 2*pad - dil*(k - 1) - 1)/st) + 1",
    "variables": {"n": [1, 40], "k": [1, 5], "pad": [0, 2], "st": [1, 3], "dil": [1, 3]},
    "constraints": ["n + 2*pad >= dil*(k - 1) + 1"],
    "mistakes": {
        "family": "conv_output_size",
        "variables": {"H": "n", "K": "k", "P": "pad", "S": "st", "D": "dil"},
    },
}


@pytest.mark.parametrize(
    ("expected", "letters", "words"),
    [
        (CONV1D, {"L", "K", "S"}, {"padd", "dilation"}),
        (W_PADDED, {"W", "K", "P", "S"}, {"dilation"}),
        (RENAMED, set(), set()),
    ],
    ids=["conv1d", "no-dilation", "renamed"],
)
def test_the_messages_name_only_the_formulas_variables(
    expected: dict[str, Any], letters: set[str], words: set[str]
) -> None:
    """1.1(c)'s floor((L - K)/S) + 1 was told of "dilation D" and "the padded input"."""
    request = CheckRequest.model_validate({"expected": expected, "answer": "0"}).expected
    assert isinstance(request, FormulaExpected)
    key = formula_key(request.reference, request.named, request.variables, request.constraints)
    mistakes = request.mistakes
    declared = mistakes if isinstance(mistakes, str) else mistakes.model_dump()
    key = with_mistakes(key, declared, request.named)
    told = [m for mistake in key.mistakes for _, m in mistake.diagnoses]
    assert len(told) > 10
    for message in told:
        assert set(re.findall(r"\b[A-Z]\b", message)) <= letters, message
        assert not any(word in message for word in words), message


@pytest.mark.parametrize(
    ("expected", "answer", "message"),
    [
        (
            CONV1D,
            "floor((L - K + 1)/S) + 1",
            "You took away only K - 1: a kernel of size K spans K inputs, not K - 1, and all of "
            "them must fit inside the input.",
        ),
        (
            CONV1D,
            "floor((L - K - 1)/S) + 1",
            "You took away 1 too many: a kernel of size K spans K inputs, and taking that span "
            "away once keeps it inside the input; another - 1 leaves out the last place where "
            "it fits.",
        ),
        (
            CONV1D,
            "(L - 1)*S + K",
            "You gave the size of a transposed convolution, (L - 1) S + K, which enlarges its "
            "input; a convolution slides the kernel over the input and divides by the stride S "
            "instead of multiplying by it.",
        ),
        (
            RENAMED,
            "floor((n + pad - dil*(k - 1) - 1)/st) + 1",
            "You counted the padding once (pad instead of 2*pad): it is added on both sides.",
        ),
    ],
    ids=["conv1d-minus-one", "conv1d-minus-one-extra", "conv1d-transposed", "renamed-padding"],
)
def test_a_mistake_is_told_in_the_formulas_variables(
    expected: dict[str, Any], answer: str, message: str
) -> None:
    assert [d["message"] for d in check(expected, answer)["diagnosis"]] == [message]


def test_mistakes_none_diagnoses_nothing() -> None:
    result = check({**FORMULA_1_1B, "mistakes": "none"}, "(H + 2*P - D*(K - 1) - 1)/S + 1")
    assert result["correct"] is False and result["diagnosis"] == []


def test_a_reference_of_another_kind_gets_no_conv_diagnosis() -> None:
    """H - K + 2 is no convolution's size: its "plus one missing" is no such mistake."""
    expected = {"op": "formula", "reference": "H - K + 2", "variables": {"H": [4, 64], "K": [1, 4]}}
    assert check(expected, "H - K + 1")["diagnosis"] == []


@pytest.mark.parametrize(
    ("mistakes", "words"),
    [
        ("conv_output_size", "is not the convolution's output size"),
        ({"family": "conv_output_size", "variables": {"Q": "H"}}, "'Q' is not a part"),
        ({"family": "conv_output_size", "variables": {"K": "X"}}, "'X' is not a variable"),
    ],
    ids=["not-conv", "unknown-part", "unknown-variable"],
)
def test_a_declared_family_that_does_not_fit_is_the_keys_fault(mistakes: Any, words: str) -> None:
    expected = {
        "op": "formula",
        "reference": "H - K + 2",
        "variables": {"H": [4, 64], "K": [1, 4]},
        "mistakes": mistakes,
    }
    with pytest.raises(CheckFailed) as failed:
        check(expected, "H - K + 1")
    assert failed.value.in_expected and failed.value.problem.status == 422
    assert words in failed.value.problem.detail
    assert failed.value.problem.detail.startswith("expected.mistakes")

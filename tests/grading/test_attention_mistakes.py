"""More typical wrong answers of AttentionRNN(2) (seed 1.2.2(e)-(f)), each diagnosed for every
student's variant of the built-in assignment where it differs from the right answer.

The wrong answers are the seed's formulas with one step changed, written here in numpy (with
the seed's own forward pass and partials from ``seed_answers``), never by the service's
mistake code. None of these mistakes is screened for (``distinct_from``): a variant on which
one coincides with the right answer keeps its draw, and that answer is simply judged right.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from service.grading.catalogue import Catalogue, catalogue_from_settings
from service.grading.checker import EngineCheck, VariantScreen, spec_validator
from service.grading.grade import ProblemResult, grade_problem
from service.settings import Settings
from tests.grading import seed_answers as seed
from tests.grading.test_diagnosis import codes, judge
from tests.grading.test_distinct_variants import attention_args, jacobians_spec

SETTINGS = Settings(variant_secret="a secret of the tests, 32 chars")
STUDENTS = [f"student-{n}" for n in range(150)]
WINDOW = 2  # AttentionRNN(2): 1.2.2e and 1.2.2f

Given = dict[str, np.ndarray]


def key_only_jacobians(g: Given) -> np.ndarray:
    """1.2.2(e) with dw_1[t]/dh[t-1] taken through k_1[t] = K_1 h[t-1] alone (q_1[t] fixed):
    d(q^T K_1 h)/dh = q^T K_1 = h[t-1]^T Q_1^T K_1, the row vector; as a column K_1^T Q_1 h."""
    q, k, v, x = g["Q"], g["K"], g["V"], g["x"]
    h, a = seed.attention_rnn(q, k, v, x, WINDOW)
    before = np.vstack([np.zeros(x.shape[1]), h[:-1]])  # h[t-1], h[0] = 0
    return np.array(
        [
            a[t, 1] * np.outer(v[1] @ before[t] - h[t], before[t] @ q[1].T @ k[1]) + a[t, 1] * v[1]
            for t in range(len(x))
        ]
    )


def value_transposed_jacobians(g: Given) -> np.ndarray:
    """1.2.2(e) with a_1[t] V_1^T where the path through v_1[t] = V_1 h[t-1] adds a_1[t] V_1."""
    q, k, v, x = g["Q"], g["K"], g["V"], g["x"]
    _, a = seed.attention_rnn(q, k, v, x, WINDOW)
    right = np.asarray(seed.answer_to("1.2.2e", g))
    return right + a[:, 1, None, None] * (v[1].T - v[1])


def backward(g: Given, lags: int, transposed: bool, window: int = WINDOW) -> np.ndarray:
    """dl/dh[s] for s = 0..T (h[0] = 0 in row 0, with no direct term): the seed's 1.2.2(f),
    dl/dh[s] = direct + sum_{i <= lags} dl/dh[s+i] dh[s+i]/dh[s], each partial the seed's
    1.2.2(e) (``attention_partial``), applied as J^T on the column (the row vector times J)
    when ``transposed``, else as J times the column."""
    q, k, v, x, direct = g["Q"], g["K"], g["V"], g["x"], g["dl_dh"]
    steps = len(x)
    total = np.zeros((steps + 1, x.shape[1]))  # row s for h[s]
    for s in reversed(range(steps + 1)):
        carried = direct[s - 1].copy() if s >= 1 else np.zeros(x.shape[1])
        for i in range(1, lags + 1):
            if s + i > steps:
                continue
            # attention_partial numbers its rows 0-based: h[s+i] is row s+i-1
            partial = seed.attention_partial(q, k, v, x, window, s + i - 1, i)
            later = total[s + i]
            carried += later @ partial if transposed else partial @ later
        total[s] = carried
    return total


WRONG: dict[str, tuple[str, str, Callable[[Given], np.ndarray]]] = {
    # mistake: (problem, diagnosis code, the wrong answer)
    "score through k_1 only": ("1.2.2e", "score_gradient_key_only", key_only_jacobians),
    "V_1^T for V_1": ("1.2.2e", "value_matrix_transposed", value_transposed_jacobians),
    "lag-2 path missing": ("1.2.2f", "lag_paths_missing", lambda g: backward(g, 1, True)[1:]),
    "J for J^T": ("1.2.2f", "jacobians_not_transposed", lambda g: backward(g, WINDOW, False)[1:]),
    "the chain alone, and J for J^T": (
        "1.2.2f",
        "lag_paths_missing",
        lambda g: backward(g, 1, False)[1:],
    ),
    "1.2.2e with an h[0] row": (
        "1.2.2e",
        "initial_state_row",
        lambda g: np.concatenate([np.zeros((1, 2, 2)), np.asarray(seed.answer_to("1.2.2e", g))]),
    ),
    "1.2.2f with dl/dh[0] in row 0": (
        "1.2.2f",
        "initial_state_row",
        lambda g: backward(g, WINDOW, True),
    ),
    "1.2.2f with a zero row 0": (
        "1.2.2f",
        "initial_state_row",
        lambda g: np.concatenate([np.zeros((1, 2)), np.asarray(seed.answer_to("1.2.2f", g))]),
    ),
    "1.2.2c with h[0] in row 0": (
        "1.2.2c",
        "initial_state_row",
        lambda g: np.concatenate([np.zeros((1, 2)), np.asarray(seed.answer_to("1.2.2c", g))]),
    ),
    "1.2.1d-jacobian with an h[0] row": (
        "1.2.1d-jacobian",
        "initial_state_row",
        lambda g: np.concatenate(
            [np.zeros((1, 3, 3)), np.asarray(seed.answer_to("1.2.1d-jacobian", g))]
        ),
    ),
}
"""Each typical wrong answer: its problem, the code it must be diagnosed with, and how it is
computed from the student's given tensors."""

COINCIDING = {
    # student-91's states are small (|h| < 0.11): the score path, quadratic in h, is within
    # the tolerance whichever side it is differentiated on
    "score through k_1 only": 1,
    # V_1 drawn symmetric: its two off-diagonal entries are equal at one decimal
    "V_1^T for V_1": 6,
    "lag-2 path missing": 0,
    "J for J^T": 0,
    "the chain alone, and J for J^T": 0,
    "1.2.2e with an h[0] row": 0,
    "1.2.2f with dl/dh[0] in row 0": 0,
    "1.2.2f with a zero row 0": 0,
    "1.2.2c with h[0] in row 0": 0,
    "1.2.1d-jacobian with an h[0] row": 0,
}
"""Of the 150 students, for how many the mistake's answer is within the tolerance of the right
one (judged right, so never diagnosed): the draws are not screened for these mistakes."""


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return catalogue_from_settings(SETTINGS, spec_validator(SETTINGS), VariantScreen(SETTINGS))


def told(result: ProblemResult) -> list[str]:
    return [d["code"] for d in result.feedback.get("diagnosis", [])]


@pytest.mark.parametrize("mistake", WRONG)
def test_a_typical_mistake_is_diagnosed_for_every_student(
    catalogue: Catalogue, mistake: str
) -> None:
    problem_id, code, wrong = WRONG[mistake]
    check = EngineCheck(SETTINGS)
    coinciding = []
    for student in STUDENTS:
        variant = catalogue.variant("cnn-rnn", problem_id, student)
        given = {name: tensor.numpy() for name, tensor in variant.given.items()}
        right = grade_problem(variant, seed.answer_to(problem_id, given), check)
        assert right.status == "correct" and right.score == right.max_score, student
        assert told(right) == [], student
        answer = wrong(given)
        result = grade_problem(variant, answer.tolist(), check)
        if result.status == "correct":
            coinciding.append(student)  # the mistake changes nothing the tolerance sees
            continue
        assert result.status == "incorrect" and result.score == 0, (student, result)
        assert code in told(result), (student, result.feedback)
    assert len(coinciding) == COINCIDING[mistake], coinciding


@pytest.mark.parametrize("mistake", WRONG)
def test_the_diagnosis_says_what_was_done(catalogue: Catalogue, mistake: str) -> None:
    problem_id, code, wrong = WRONG[mistake]
    variant = catalogue.variant("cnn-rnn", problem_id, STUDENTS[0])
    given = {name: tensor.numpy() for name, tensor in variant.given.items()}
    result = grade_problem(variant, wrong(given).tolist(), EngineCheck(SETTINGS))
    message = next(d["message"] for d in result.feedback["diagnosis"] if d["code"] == code)
    said = {
        "score_gradient_key_only": "as if q_1[t] were fixed",
        "value_matrix_transposed": "Your answer has V_1^T there",
        "lag_paths_missing": "only along the chain h[t+1] -> h[t]",
        "jacobians_not_transposed": "use the transpose of each Jacobian",
        "initial_state_row": "h[0] has no row",
    }
    assert said[code] in message, message


def state_grads_case(window: int, seed_: int) -> tuple[Given, dict[str, Any]]:
    """AttentionRNN(window)'s tensors with states of order 1, random direct gradients
    ``dl_dh``, and the spec of dl/dh[t] through time (1.2.2(f)) on them."""
    args = attention_args(window)
    args["dl_dh"] = np.random.default_rng(seed_).normal(0, 1, args["x"].shape)
    spec = {
        **jacobians_spec(window, args),
        "op": "backward",
        "select": "state_grads",
        "grad_outputs": {"h": args["dl_dh"].tolist()},
    }
    return args, spec


def test_the_gradient_through_time_of_a_wider_window_is_diagnosed() -> None:
    """AttentionRNN(3), with states of order 1: the chain alone leaves out the lags 2 and 3;
    every partial is the seed's, as for k = 2."""
    window = 3
    args, spec = state_grads_case(window, 1)
    right = backward(args, window, True, window)
    np.testing.assert_allclose(
        right[1:],
        seed.attention_state_grads(
            args["Q"], args["K"], args["V"], args["x"], window, args["dl_dh"]
        ),
        rtol=1e-12,
        atol=1e-14,
    )
    result = judge(spec, right[1:].tolist())
    assert result["correct"] and result["diagnosis"] == []
    for answer, code in (
        (backward(args, 1, True, window)[1:], "lag_paths_missing"),
        (backward(args, 2, True, window)[1:], "lag_paths_missing"),  # lag 3 left out
        (backward(args, window, False, window)[1:], "jacobians_not_transposed"),
        (right, "initial_state_row"),
    ):
        result = judge(spec, answer.tolist())
        assert result["correct"] is False and code in codes(result), (code, result)


def test_both_mistakes_of_1_2_2f_at_once_are_both_told(catalogue: Catalogue) -> None:
    """The chain alone carried back through J where J^T belongs: neither mistake alone gives
    the answer, which was told only "incorrect"."""
    problem_id, _, wrong = WRONG["the chain alone, and J for J^T"]
    variant = catalogue.variant("cnn-rnn", problem_id, STUDENTS[0])
    given = {name: tensor.numpy() for name, tensor in variant.given.items()}
    result = grade_problem(variant, wrong(given).tolist(), EngineCheck(SETTINGS))
    (diagnosis,) = result.feedback["diagnosis"]
    assert diagnosis["code"] == "lag_paths_missing"
    assert "only along the chain" in diagnosis["message"] and "J^T" in diagnosis["message"]


@pytest.mark.parametrize(
    ("kept", "said"),
    [(2, "through the lags 1 to 2 only: the lags 3 to 4 left out"), (3, "only: lag 4 left out")],
)
def test_a_wide_window_with_lags_left_out_is_told_which(kept: int, said: str) -> None:
    """AttentionRNN(4) over 5 steps: every lag past 2 left out (the homework's k = 2 taken
    for k), or the longest alone."""
    window = 4
    args, spec = state_grads_case(window, 2)
    right = backward(args, window, True, window)[1:]
    assert judge(spec, right.tolist())["correct"]
    result = judge(spec, backward(args, kept, True, window)[1:].tolist())
    assert result["correct"] is False
    messages = [d["message"] for d in result["diagnosis"] if d["code"] == "lag_paths_missing"]
    assert len(messages) == 1 and said in messages[0], result["diagnosis"]

"""The typical wrong answers of AttentionRNN's state Jacobians (seed 1.2.2(e)): diagnosed, and
never judged correct for any student, because a variant for which one of them would pass is
drawn again (``distinct_from``).

The wrong answers come from the seed's closed form with one part changed, in numpy
(``seed_answers.attention_step_mistakes``); the keys come from the service's torch model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.grading.catalogue import (
    MAX_DRAWS,
    AssignmentFileError,
    Catalogue,
    catalogue_from_settings,
    load_catalogue,
)
from service.grading.checker import EngineCheck, VariantScreen, spec_validator
from service.grading.grade import grade_problem
from service.grading.rnn_mistakes import MAX_ATTENDED_PAIRS
from service.grading.variants import Variant, make_variant
from service.settings import Settings
from tests.grading import seed_answers as seed
from tests.grading.sample import SAMPLE
from tests.grading.test_diagnosis import codes, judge

DIAGNOSED_AS = {
    "score_path_missing": "score_path_missing",
    "score_gradient_one_sided": "score_gradient_one_sided",
    "score_gradient_doubled": "score_gradient_one_sided",
    "softmax_coupling_missing": "softmax_coupling_missing",
    "transposed": "transposed",
}
"""The code each of the oracle's wrong answers is diagnosed with."""


def attention_args(window: int | None) -> dict[str, np.ndarray]:
    """Tensors whose states are of order 1, so that every part of the Jacobian counts."""
    rng = np.random.default_rng(7)
    count = 2 if window is None else window + 1
    return {
        "Q": rng.normal(0, 0.8, (count, 3, 3)),
        "K": rng.normal(0, 0.8, (count, 3, 3)),
        "V": rng.normal(0, 1.0, (count, 3, 3)),
        "x": rng.normal(0, 1.5, (5, 3)),
    }


def jacobians_spec(window: int | None, args: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "op": "state_jacobians",
        "model": "attention_rnn",
        "config": {"k": "inf" if window is None else window},
        "params": {name: args[name].tolist() for name in ("Q", "K", "V")},
        "inputs": {"x": args["x"].tolist()},
        "select": "jacobians",
    }


@pytest.mark.parametrize("window", [2, 3, None], ids=["k=2", "k=3", "inf"])
def test_each_typical_mistake_of_the_attention_jacobians_is_diagnosed(
    window: int | None,
) -> None:
    args = attention_args(window)
    spec = jacobians_spec(window, args)
    wrong = seed.attention_step_mistakes(args["Q"], args["K"], args["V"], args["x"], window)
    # The oracle's own right answer (its parts put back together) is the service's key, and
    # for a window k the seed's closed form written independently.
    right = np.transpose(wrong["transposed"], (0, 2, 1))
    if window is not None:
        closed = seed.attention_state_jacobians(args["Q"], args["K"], args["V"], args["x"], window)
        np.testing.assert_allclose(right, closed, rtol=1e-12, atol=1e-14)
    result = judge(spec, right.tolist())
    assert result["correct"] and result["diagnosis"] == []
    for mistake, answer in wrong.items():
        result = judge(spec, answer.tolist())
        assert result["correct"] is False, mistake
        assert DIAGNOSED_AS[mistake] in codes(result), (mistake, result["diagnosis"])


def test_the_diagnoses_name_the_path_that_is_missing() -> None:
    args = attention_args(2)
    wrong = seed.attention_step_mistakes(args["Q"], args["K"], args["V"], args["x"], 2)
    said = {
        mistake: judge(jacobians_spec(2, args), answer.tolist())["diagnosis"][0]["message"]
        for mistake, answer in wrong.items()
        if mistake != "transposed"
    }
    assert "only a_1[t] V_1" in said["score_path_missing"]
    assert "as if k_1[t] were fixed" in said["score_gradient_one_sided"]
    assert "not 2 A h[t-1]" in said["score_gradient_doubled"]
    assert "not a_1[t] alone" in said["softmax_coupling_missing"]


SETTINGS = Settings(variant_secret="a secret of the tests, 32 chars")
STUDENTS = [f"student-{n}" for n in range(120)]


def mistakes_of(variant: Variant) -> dict[str, np.ndarray]:
    g = {name: tensor.numpy() for name, tensor in variant.given.items()}
    return seed.attention_step_mistakes(g["Q"], g["K"], g["V"], g["x"], 2)


def passing_mistakes(variant: Variant, check: EngineCheck) -> list[str]:
    """The typical wrong answers this variant would judge correct."""
    return [
        mistake
        for mistake, answer in mistakes_of(variant).items()
        if grade_problem(variant, answer.tolist(), check).status == "correct"
    ]


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return catalogue_from_settings(SETTINGS, spec_validator(SETTINGS), VariantScreen(SETTINGS))


def test_no_student_passes_1_2_2e_with_a_typical_mistake(catalogue: Catalogue) -> None:
    """Over a class of students, every typical wrong answer scores 0 and the right one full
    marks; without the redraw, some of them would pass for some students (the numbers are
    small, and the score path with them), so the scan can fail."""
    check = EngineCheck(SETTINGS)
    problem = catalogue.problem("cnn-rnn", "1.2.2e")
    redrawn, would_pass = [], []
    for student in STUDENTS:
        variant = catalogue.variant("cnn-rnn", "1.2.2e", student)
        given = {name: tensor.numpy() for name, tensor in variant.given.items()}
        right = seed.answer_to("1.2.2e", given)
        assert grade_problem(variant, right, check).status == "correct", student
        assert passing_mistakes(variant, check) == [], student
        if catalogue.draw("cnn-rnn", problem, student) > 0:
            redrawn.append(student)
            first = make_variant(catalogue.secret, "cnn-rnn", problem, student)
            would_pass.append(passing_mistakes(first, check))
    assert redrawn, "no student of the scan needed another draw: the scan tests nothing"
    assert any(would_pass), "the first draws that were replaced were fine already"


GATED_MISTAKES = {
    "1.2.1c": lambda g, slope: seed.gated_grad_w_x(
        g["W_c"], g["W_h"], g["W_x"], g["x"], g["dl_dh"], slope
    ),
    "1.2.1d-jacobian": lambda g, slope: seed.gated_state_jacobians(
        g["W_c"], g["W_h"], g["W_x"], g["x"], slope
    ),
}


@pytest.mark.parametrize("problem_id", GATED_MISTAKES)
def test_no_student_passes_the_gated_rnn_with_a_wrong_derivative_of_the_gate(
    catalogue: Catalogue, problem_id: str
) -> None:
    """With the homework's small weights W_h h[t-1] is small, and sigma' taken at W_c x[t]
    alone came within the tolerance of dl/dW_x for about 1 student in 3: such draws are made
    again, so no student passes with any of the mistakes."""
    check = EngineCheck(SETTINGS)
    problem = catalogue.problem("cnn-rnn", problem_id)
    redrawn = []
    for student in STUDENTS[:60]:
        variant = catalogue.variant("cnn-rnn", problem_id, student)
        given = {name: tensor.numpy() for name, tensor in variant.given.items()}
        for slope in seed.GATE_SLOPES:
            answer = GATED_MISTAKES[problem_id](given, slope).tolist()
            status = grade_problem(variant, answer, check).status
            assert status == ("correct" if slope == "sigmoid'" else "incorrect"), (student, slope)
        if catalogue.draw("cnn-rnn", problem, student) > 0:
            redrawn.append(student)
    assert redrawn, "no student of the scan needed another draw: the scan tests nothing"


def test_a_redrawn_variant_is_the_same_on_every_replica(catalogue: Catalogue) -> None:
    problem = catalogue.problem("cnn-rnn", "1.2.2e")
    student = next(s for s in STUDENTS if catalogue.draw("cnn-rnn", problem, s) > 0)
    # Another replica: a catalogue loaded anew with the same secret, nothing remembered.
    replica = catalogue_from_settings(SETTINGS, screen=VariantScreen(SETTINGS))
    mine = catalogue.variant("cnn-rnn", "1.2.2e", student)
    theirs = replica.variant("cnn-rnn", "1.2.2e", student)
    first = make_variant(catalogue.secret, "cnn-rnn", problem, student)
    assert all(mine.given[n].equal(theirs.given[n]) for n in mine.given)
    assert not all(mine.given[n].equal(first.given[n]) for n in mine.given)
    # A catalogue without a screen (as a script may load one) keeps every first draw.
    plain = catalogue_from_settings(SETTINGS)
    assert plain.variant("cnn-rnn", "1.2.2e", student).given["x"].equal(first.given["x"])


def screened_file(tmp_path: Path, text: str) -> Catalogue:
    (tmp_path / "sample.toml").write_text(text)
    return load_catalogue([(tmp_path, "folder")], b"s" * 32, screen=VariantScreen(SETTINGS))


def with_distinct(codes: str, given: str | None = None) -> str:
    text = SAMPLE.replace('answer_kind = "tensor"\n', f'answer_kind = "tensor"\n{codes}\n', 1)
    if given is not None:
        old = 'shape = [2, 3]\ndistribution = "uniform"\nlow = -3\nhigh = 3\ninteger = true\n'
        assert old in text
        text = text.replace(old, given, 1)
    return text


def test_an_assignment_file_may_name_mistakes_to_tell_apart(tmp_path: Path) -> None:
    catalogue = screened_file(tmp_path, with_distinct('distinct_from = ["sign_flipped"]'))
    assert catalogue.problem("sample", "p1").distinct_from == ["sign_flipped"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            with_distinct('distinct_from = ["tranposed"]'),
            "no mistake is called 'tranposed'; the codes are ",
            id="unknown-code",
        ),
        pytest.param(
            SAMPLE.replace('feedback = "diagnosis"\n', 'distinct_from = ["sign_flipped"]\n', 1),
            "only a tensor answer is screened for mistakes",
            id="not-a-tensor",
        ),
        pytest.param(
            # A symmetric matrix for everyone: transposing it gives the right answer.
            with_distinct('distinct_from = ["transposed"]', "value = [[1, 2], [2, 1]]\n"),
            f"none of {MAX_DRAWS} draws for a probe student tells these mistakes from the answer",
            id="never-distinct",
        ),
        pytest.param(
            # A recurrent model's mistake on this problem's value key: screened for in vain.
            with_distinct('distinct_from = ["direct_gradients_only"]'),
            "'direct_gradients_only' is no mistake an answer to this problem can make",
            id="never-made",
        ),
    ],
)
def test_a_wrong_distinct_from_stops_the_load(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(AssignmentFileError) as raised:
        screened_file(tmp_path, text)
    assert "distinct_from" in raised.value.key and message in raised.value.message


# -- more typical mistakes, each against the seed's formulas in numpy --


def conv_spec(op: str, x: np.ndarray, w: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "op": op,
        "model": "conv1d",
        "config": {"stride": 2},
        "params": {"weight": w.tolist()},
        "inputs": {"x": x.tolist()},
        **extra,
    }


def test_a_flipped_kernel_is_diagnosed_in_the_output_and_in_dy_dx() -> None:
    rng = np.random.default_rng(3)
    x, w = rng.integers(-3, 4, (5, 7)).astype(float), rng.integers(-2, 3, (1, 5, 3)).astype(float)
    flipped = w[:, :, ::-1]
    forward = judge(conv_spec("forward", x, w, select="y"), seed.conv_forward(x, flipped).tolist())
    jacobian = judge(
        conv_spec("jacobian", x, w, of="y", wrt="x"),
        seed.conv_jacobian_input(flipped, x.shape[1]).tolist(),
    )
    for result in (forward, jacobian):
        assert result["correct"] is False and "kernel_flipped" in codes(result), result
        assert "cross-correlation" in result["diagnosis"][0]["message"]
    right = judge(conv_spec("forward", x, w, select="y"), seed.conv_forward(x, w).tolist())
    assert right["correct"] and right["diagnosis"] == []


def gated_args() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {
        "W_c": rng.normal(0, 1, (3, 2)),
        "W_h": rng.normal(0, 1, (3, 3)),
        "W_x": rng.normal(0, 1, (3, 2)),
        "x": rng.normal(0, 1, (4, 2)),
        "dl_dh": rng.normal(0, 1, (4, 3)),
    }


def gated_spec(op: str, g: dict[str, np.ndarray], select: str) -> dict[str, Any]:
    spec = {
        "op": op,
        "model": "gated_rnn",
        "params": {name: g[name].tolist() for name in ("W_c", "W_h", "W_x")},
        "inputs": {"x": g["x"].tolist()},
        "select": select,
    }
    return spec | ({"grad_outputs": {"h": g["dl_dh"].tolist()}} if op == "backward" else {})


GATE_MISTAKES = {
    "tanh'": ("gate_derivative_wrong", "derivative of tanh"),
    "sigmoid": ("gate_derivative_wrong", "the chain rule needs the derivative"),
    "sigmoid' of W_c x": ("gate_derivative_wrong", "at W_c x[t] alone"),
    "sigmoid' of c": ("gate_derivative_wrong", "applies the sigmoid twice"),
    "none": ("gate_path_missing", "through the gate c[t]"),
}
"""The code and words each wrong stand-in for the gate's derivative (``seed.GATE_SLOPES``)
is diagnosed with."""


@pytest.mark.parametrize("slope", GATE_MISTAKES)
def test_a_wrong_derivative_of_the_gate_is_diagnosed_in_the_state_jacobians(slope: str) -> None:
    g = gated_args()
    answer = seed.gated_state_jacobians(g["W_c"], g["W_h"], g["W_x"], g["x"], slope)
    result = judge(gated_spec("state_jacobians", g, "jacobians"), answer.tolist())
    code, said = GATE_MISTAKES[slope]
    assert result["correct"] is False and codes(result) == [code], result
    assert said in result["diagnosis"][0]["message"]


@pytest.mark.parametrize("slope", GATE_MISTAKES)
def test_a_wrong_derivative_of_the_gate_is_diagnosed_in_the_gradient_through_time(
    slope: str,
) -> None:
    """1.2.1(c): dl/dW_x by backpropagation through state Jacobians made with the mistake."""
    g = gated_args()
    spec = gated_spec("backward", g, "W_x")
    right = seed.gated_grad_w_x(g["W_c"], g["W_h"], g["W_x"], g["x"], g["dl_dh"])
    assert judge(spec, right.tolist())["correct"] is True
    answer = seed.gated_grad_w_x(g["W_c"], g["W_h"], g["W_x"], g["x"], g["dl_dh"], slope)
    result = judge(spec, answer.tolist())
    code, said = GATE_MISTAKES[slope]
    assert result["correct"] is False and code in codes(result), result
    assert said in next(d["message"] for d in result["diagnosis"] if d["code"] == code)


def attention_without_zero_states(args: dict[str, np.ndarray], window: int | None) -> np.ndarray:
    """Equations (3)-(8) with the softmax over x[t] and the existing states h[1], ... only."""
    states: list[np.ndarray] = []
    for t in range(len(args["x"])):
        lags = t if window is None else min(window, t)
        past = [states[t - i] for i in range(1, lags + 1)]
        params = [0, *([1] * lags if window is None else range(1, lags + 1))]
        h_t, _ = seed._attend(args["Q"], args["K"], args["V"], [args["x"][t], *past], params)
        states.append(h_t)
    return np.array(states)


@pytest.mark.parametrize("window", [2, None], ids=["k=2", "inf"])
def test_zero_states_left_out_of_the_softmax_are_diagnosed(window: int | None) -> None:
    args = attention_args(window)
    spec = {**jacobians_spec(window, args), "op": "forward", "select": "h"}
    result = judge(spec, attention_without_zero_states(args, window).tolist())
    assert result["correct"] is False and "zero_states_left_out" in codes(result), result
    right = (
        seed.attention_rnn(args["Q"], args["K"], args["V"], args["x"], window)[0]
        if (window is not None)
        else seed.attention_rnn_inf(args["Q"], args["K"], args["V"], args["x"])
    )
    assert judge(spec, right.tolist())["correct"]


REDRAWN_1_2_2E = {
    "student-24": 2,
    "student-26": 1,
    "student-33": 1,
    "student-56": 1,
    "student-71": 1,
    "student-75": 1,
    "student-82": 1,
    "student-85": 1,
    "student-86": 1,
    "student-114": 1,
}
"""The students of the scan whose 1.2.2e is not their first draw, under the tests' secret."""

REDRAWN = {
    "1.2.2e": REDRAWN_1_2_2E,
    # sigma' at W_c x[t] alone, or at c[t], within the tolerance of their first draw
    "1.2.1c": {
        **{f"student-{n}": 1 for n in (0, 3, 8, 15, 18, 24, 31, 45, 47, 53, 55, 61, 64, 68)},
        **{f"student-{n}": 1 for n in (72, 73, 75, 80, 82, 91, 95, 105, 107, 114, 116, 117)},
        **{f"student-{n}": 2 for n in (32, 40, 71, 76, 110)},
        **{f"student-{n}": 3 for n in (7, 74)},
    },
    "1.2.1d-jacobian": {
        **{f"student-{n}": 1 for n in (3, 17, 23, 28, 40, 67, 68, 98, 99, 100, 101, 105)},
        "student-97": 2,
        "student-59": 3,
    },
}
"""The students of the scan whose variant is not their first draw, under the tests' secret."""


def test_the_draws_of_known_students_are_pinned(catalogue: Catalogue) -> None:
    """A change of a mistake's formula, of the screen or of the file redraws students who may
    already have their numbers: this pins who gets which draw, so it cannot go unnoticed."""
    for problem_id in ("1.1c-i", "1.2.2c", "1.2.2d", "1.2.2f"):
        problem = catalogue.problem("cnn-rnn", problem_id)
        assert {catalogue.draw("cnn-rnn", problem, s) for s in STUDENTS} == {0}, problem_id
    for problem_id, redrawn in REDRAWN.items():
        problem = catalogue.problem("cnn-rnn", problem_id)
        drawn = {s: catalogue.draw("cnn-rnn", problem, s) for s in STUDENTS}
        assert {s: d for s, d in drawn.items() if d} == redrawn, problem_id


def test_the_draw_does_not_depend_on_the_replicas_limits_or_load() -> None:
    """A replica with tight limits, or whose compute slots are all taken, works out the same
    draws: the screen computes under the default limits, through a gate of its own."""
    tight = Settings(
        variant_secret=SETTINGS.variant_secret,
        compute_deadline_seconds=0.001,
        cpu_flops_per_second=1,
        max_concurrent_computations=1,
        compute_queue_size=0,
        compute_queue_timeout_seconds=0,
    )
    replica = catalogue_from_settings(tight, screen=VariantScreen(tight))
    problem = replica.problem("cnn-rnn", "1.2.2e")
    for student, draw in REDRAWN_1_2_2E.items():
        assert replica.draw("cnn-rnn", problem, student) == draw, student


def test_zero_states_are_not_recomputed_one_by_one_for_long_sequences() -> None:
    """The candidate loops in Python over (step, past state) pairs: past MAX_ATTENDED_PAIRS it
    is not made (it would hold a compute slot for seconds), and the check still judges."""
    rng = np.random.default_rng(11)
    steps = 80  # 80 * 80 pairs with every past state
    args = {
        "Q": rng.normal(0, 0.5, (2, 2, 2)),
        "K": rng.normal(0, 0.5, (2, 2, 2)),
        "V": rng.normal(0, 0.5, (2, 2, 2)),
        "x": rng.normal(0, 1, (steps, 2)),
    }
    assert steps * steps > MAX_ATTENDED_PAIRS
    spec = {**jacobians_spec(None, args), "op": "forward", "select": "h"}
    result = judge(spec, attention_without_zero_states(args, None).tolist())
    assert result["correct"] is False and "zero_states_left_out" not in codes(result)
    short = {**args, "x": args["x"][:8]}
    spec = {**jacobians_spec(None, short), "op": "forward", "select": "h"}
    result = judge(spec, attention_without_zero_states(short, None).tolist())
    assert "zero_states_left_out" in codes(result)


def gated_grad_w_x_untransposed(g: dict[str, np.ndarray]) -> np.ndarray:
    """A typical wrong 1.2.1(c): the gradient carried back as J dl/dh[t+1] where the chain
    rule has J^T (the row vector dl/dh[t+1] times J)."""
    _, c, _ = seed.gated_rnn(g["W_c"], g["W_h"], g["W_x"], g["x"])
    jacobians = seed.gated_state_jacobians(g["W_c"], g["W_h"], g["W_x"], g["x"])
    total = np.zeros_like(g["dl_dh"])
    for t in reversed(range(len(g["x"]))):
        later = jacobians[t + 1] @ total[t + 1] if t + 1 < len(g["x"]) else 0
        total[t] = g["dl_dh"][t] + later
    return np.sum([np.outer(total[t] * (1 - c[t]), g["x"][t]) for t in range(len(g["x"]))], 0)


def test_1_2_1c_with_j_for_j_transposed_is_diagnosed_for_every_student(
    catalogue: Catalogue,
) -> None:
    check = EngineCheck(SETTINGS)
    for student in STUDENTS[:60]:
        variant = catalogue.variant("cnn-rnn", "1.2.1c", student)
        given = {name: tensor.numpy() for name, tensor in variant.given.items()}
        result = grade_problem(variant, gated_grad_w_x_untransposed(given).tolist(), check)
        assert (result.status, result.score) == ("incorrect", 0.0), student
        codes_told = [d["code"] for d in result.feedback["diagnosis"]]
        assert "jacobians_not_transposed" in codes_told, (student, result.feedback)

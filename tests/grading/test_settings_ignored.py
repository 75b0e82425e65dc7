"""A convolution's stride, padding or dilation left out (``stride_ignored`` and its kin): the
wrong answers are computed here in numpy, by loops over the definition of the layer (seed
1.1(b)-(c)), never by the service's own models."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from service.grading.catalogue import Catalogue, catalogue_from_settings
from service.grading.checker import EngineCheck, VariantScreen, spec_validator
from service.grading.grade import grade_problem
from service.settings import Settings
from tests.grading.test_diagnosis import codes, judge

SETTINGS = Settings(variant_secret="a secret of the tests, 32 chars")
STUDENTS = [f"student-{n}" for n in range(40)]


def conv(x: np.ndarray, w: np.ndarray, stride: int, padding: int, dilation: int) -> np.ndarray:
    """A conv of any rank, unbatched: y[f, i...] = sum_c sum_m w[f, c, m...] xp[c, s i + d m],
    xp the input padded with ``padding`` zeros on each side of every spatial axis."""
    dims = w.ndim - 2
    xp = np.pad(x, [(0, 0)] + [(padding, padding)] * dims)
    kernel = w.shape[2:]
    out = [
        (n - dilation * (k - 1) - 1) // stride + 1
        for n, k in zip(xp.shape[1:], kernel, strict=True)
    ]
    y = np.zeros((w.shape[0], *out))
    for f, index in itertools.product(range(w.shape[0]), itertools.product(*map(range, out))):
        for c, taps in itertools.product(range(w.shape[1]), itertools.product(*map(range, kernel))):
            at = tuple(stride * i + dilation * m for i, m in zip(index, taps, strict=True))
            y[(f, *index)] += w[(f, c, *taps)] * xp[(c, *at)]
    return y


def jacobian(linear: Any, at: np.ndarray) -> np.ndarray:
    """The Jacobian of a linear map at ``at``'s shape, column by column (exact: each column is
    the map of a basis tensor)."""
    columns = []
    for flat in range(at.size):
        basis = np.zeros(at.size)
        basis[flat] = 1.0
        columns.append(linear(basis.reshape(at.shape)))
    return np.stack(columns, axis=-1).reshape(*columns[0].shape, *at.shape)


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return catalogue_from_settings(SETTINGS, spec_validator(SETTINGS), VariantScreen(SETTINGS))


ANSWERS = {
    "1.1c-i": lambda x, w, s: conv(x, w, s, 0, 1),
    "1.1c-ii": lambda x, w, s: jacobian(lambda v: conv(x, v, s, 0, 1), w),
    "1.1c-iii": lambda x, w, s: jacobian(lambda v: conv(v, w, s, 0, 1), x),
}


@pytest.mark.parametrize("problem_id", ANSWERS)
def test_the_stride_left_out_of_1_1c_is_diagnosed_for_every_student(
    catalogue: Catalogue, problem_id: str
) -> None:
    """The output, dy/dW and dy/dx of the stride-2 layer computed at stride 1: told only that
    its shape was wrong before."""
    check = EngineCheck(SETTINGS)
    for student in STUDENTS:
        variant = catalogue.variant("cnn-rnn", problem_id, student)
        x, w = variant.given["x"].numpy(), variant.given["W"].numpy()
        right = grade_problem(variant, ANSWERS[problem_id](x, w, 2).tolist(), check)
        assert right.status == "correct" and right.feedback.get("diagnosis") in (None, [])
        wrong = grade_problem(variant, ANSWERS[problem_id](x, w, 1).tolist(), check)
        assert (wrong.status, wrong.score) == ("incorrect", 0.0), student
        (diagnosis,) = wrong.feedback["diagnosis"]
        assert diagnosis["code"] == "stride_ignored", (student, wrong.feedback)
        assert "stride 1" in diagnosis["message"] and "(stride 2)" in diagnosis["message"]


FLIPPED = {
    # a signal-processing convolution: the kernel read backwards (its last axis reversed)
    "1.1c-i": lambda x, w, s: conv(x, w[..., ::-1], s, 0, 1),
    "1.1c-ii": lambda x, w, s: jacobian(lambda v: conv(x, v[..., ::-1], s, 0, 1), w),
    "1.1c-iii": lambda x, w, s: jacobian(lambda v: conv(v, w[..., ::-1], s, 0, 1), x),
}


@pytest.mark.parametrize("problem_id", FLIPPED)
def test_the_stride_left_out_with_the_kernel_flipped_is_told_both(
    catalogue: Catalogue, problem_id: str
) -> None:
    """Both mistakes at once, of a student who convolves as in signal processing and forgets
    the stride: told only that the shape was wrong before."""
    check = EngineCheck(SETTINGS)
    for student in STUDENTS[:10]:
        variant = catalogue.variant("cnn-rnn", problem_id, student)
        x, w = variant.given["x"].numpy(), variant.given["W"].numpy()
        wrong = grade_problem(variant, FLIPPED[problem_id](x, w, 1).tolist(), check)
        assert (wrong.status, wrong.score) == ("incorrect", 0.0), student
        (diagnosis,) = wrong.feedback["diagnosis"]
        assert diagnosis["code"] == "stride_ignored", (student, wrong.feedback)
        message = diagnosis["message"]
        assert "stride 1" in message and "read backwards" in message, message


def conv2d_spec(op: str, x: np.ndarray, w: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "op": op,
        "model": "conv2d",
        "config": {"stride": 2, "padding": 1, "dilation": 2},
        "params": {"weight": w.tolist()},
        "inputs": {"x": x.tolist()},
        **extra,
    }


LEFT_OUT = {
    # (stride, padding, dilation) of the wrong answer, and its code
    (1, 1, 2): "stride_ignored",
    (2, 0, 2): "padding_ignored",
    (2, 1, 1): "dilation_ignored",
    (1, 0, 1): "settings_ignored",
}


@pytest.mark.parametrize(("settings", "code"), LEFT_OUT.items(), ids=LEFT_OUT.values())
def test_each_setting_left_out_of_a_conv2d_is_named(settings: tuple[int, ...], code: str) -> None:
    rng = np.random.default_rng(7)
    x, w = rng.normal(size=(2, 9, 8)), rng.normal(size=(3, 2, 3, 2))
    spec = conv2d_spec("forward", x, w, select="y")
    assert judge(spec, conv(x, w, 2, 1, 2).tolist())["correct"] is True
    result = judge(spec, conv(x, w, *settings).tolist())
    assert result["correct"] is False
    assert codes(result) == [code], result["diagnosis"]
    message = result["diagnosis"][0]["message"]
    said = {
        "stride_ignored": "computed with stride 1",
        "padding_ignored": "without padding",
        "dilation_ignored": "without dilation",
        "settings_ignored": "stride 2, padding 1 and dilation 2",
    }[code]
    assert said in message, message


def test_the_jacobian_of_a_conv2d_without_its_padding_is_named() -> None:
    rng = np.random.default_rng(8)
    x, w = rng.normal(size=(1, 5, 5)), rng.normal(size=(1, 1, 3, 3))
    spec = conv2d_spec("jacobian", x, w, of="y", wrt="x") | {"config": {"padding": 1}}
    right = jacobian(lambda v: conv(v, w, 1, 1, 1), x)
    assert judge(spec, right.tolist())["correct"] is True
    result = judge(spec, jacobian(lambda v: conv(v, w, 1, 0, 1), x).tolist())
    assert codes(result) == ["padding_ignored"], result["diagnosis"]


def test_same_padding_left_out_is_named_as_such() -> None:
    rng = np.random.default_rng(9)
    x, w = rng.normal(size=(2, 11)), rng.normal(size=(1, 2, 5))
    spec = {**conv2d_spec("forward", x, w, select="y"), "model": "conv1d"}
    spec["config"] = {"padding": "same"}
    assert judge(spec, conv(x, w, 1, 2, 1).tolist())["correct"] is True  # 'same' pads 2 a side
    result = judge(spec, conv(x, w, 1, 0, 1).tolist())
    assert codes(result) == ["padding_ignored"], result["diagnosis"]
    assert "(padding 'same')" in result["diagnosis"][0]["message"]


def test_a_wrong_shape_that_no_setting_explains_gets_no_such_diagnosis() -> None:
    rng = np.random.default_rng(10)
    x, w = rng.normal(size=(2, 9, 8)), rng.normal(size=(3, 2, 3, 2))
    spec = conv2d_spec("forward", x, w, select="y")
    padded_more = conv(x, w, 2, 2, 2)  # padding 2 where the layer pads 1: no setting left out
    result = judge(spec, padded_more.tolist())
    assert result["correct"] is False
    assert not any(code.endswith("_ignored") for code in codes(result)), result["diagnosis"]


def test_a_backward_pass_is_not_recomputed_with_other_settings() -> None:
    """Its gradient of y is shaped for the layer's own settings: no other can take it."""
    rng = np.random.default_rng(11)
    x, w = rng.normal(size=(2, 9)), rng.normal(size=(1, 2, 3))
    dl_dy = rng.normal(size=(1, 4))
    spec = {
        **conv2d_spec("backward", x, w, select="weight"),
        "model": "conv1d",
        "config": {"stride": 2},
        "grad_outputs": {"y": dl_dy.tolist()},
    }
    wrong_shape = rng.normal(size=(1, 2, 5)).tolist()
    result = judge(spec, wrong_shape)
    assert result["correct"] is False
    assert not any(code.endswith("_ignored") for code in codes(result)), result["diagnosis"]

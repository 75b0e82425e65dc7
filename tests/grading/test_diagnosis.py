"""Each common mistake, made on purpose in an answer built independently here, is diagnosed;
the seed's own answers are judged correct and get no diagnosis."""

from __future__ import annotations

import base64
import math
import re
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from models.registry import MODELS
from service.examples import SEED_W_1x5x3, SEED_X_5x7
from service.gate import ComputeGate
from service.grading import diagnosis
from service.grading.check import CheckFailed, check_one
from service.grading.compare import Tolerance
from service.grading.keys import ModelSource, TensorKey, model_key
from service.grading.schemas import CheckRequest, ForwardExpected
from service.settings import Settings
from tests.grading import gated_rnn_model, seed_answers

SETTINGS = Settings()
X = np.array(SEED_X_5x7, dtype=np.float64)  # (C=5, L=7)
W = np.array(SEED_W_1x5x3, dtype=np.float64)  # (F=1, C=5, K=3)
UPSTREAM = np.array([[1.0, -2.0, 3.0]])  # dl/dy, (1, 3)
SEED = {"model": "conv1d", "config": {"stride": 2}, "params": {"weight": W.tolist()}}
SEED = {**SEED, "inputs": {"x": X.tolist()}}


def at(x: np.ndarray, c: int, n: int) -> float:
    """x[c, n], zero outside the sequence (where a wrong index reads nothing)."""
    return float(x[c, n]) if 0 <= n < x.shape[1] else 0.0


# The seed's closed forms of 1.1(c), written with its 1-based index 2i - 1 + m; `base` is the
# index of the first position: 1 reads them correctly (i = 1..3), 0 is the mistake of reading
# the 1-based formula with 0-based arrays.
def seed_y(base: int = 1) -> np.ndarray:
    return np.array(
        [
            [
                sum(W[0, c, m] * at(X, c, 2 * i - 1 + m - base) for c in range(5) for m in range(3))
                for i in range(1, 4)
            ]
        ]
    )


def seed_dy_dw(base: int = 1) -> np.ndarray:
    out = np.zeros((1, 3, 1, 5, 3))
    for i in range(1, 4):
        for c in range(5):
            for m in range(3):
                out[0, i - 1, 0, c, m] = at(X, c, 2 * i - 1 + m - base)
    return out


def seed_dy_dx() -> np.ndarray:
    out = np.zeros((1, 3, 5, 7))
    for i in range(1, 4):
        for c in range(5):
            for n in range(1, 8):
                if n in (2 * i - 1, 2 * i, 2 * i + 1):
                    out[0, i - 1, c, n - 1] = W[0, c, n - 2 * i + 1]
    return out


def seed_dl_dw() -> np.ndarray:
    return np.array(
        [
            [
                [
                    sum(UPSTREAM[0, i - 1] * X[c, 2 * i - 1 + m - 1] for i in range(1, 4))
                    for m in range(3)
                ]
                for c in range(5)
            ]
        ]
    )


def seed_dl_dx() -> np.ndarray:
    return np.einsum("i,icn->cn", UPSTREAM[0], seed_dy_dx()[0])


# A small conv2d with three distinct output sizes, y (F=2, H=3, W=4), by direct loops.
X2 = np.arange(20, dtype=np.float64).reshape(1, 4, 5) % 7 - 3
W2 = np.array([[[[1.0, -2.0], [0.5, 3.0]]], [[[-1.0, 0.0], [2.0, 1.0]]]])
CONV2D = {"model": "conv2d", "params": {"weight": W2.tolist()}, "inputs": {"x": X2.tolist()}}


def conv2d_y() -> np.ndarray:
    return np.array(
        [
            [
                [float((W2[f, 0] * X2[0, h : h + 2, w : w + 2]).sum()) for w in range(4)]
                for h in range(3)
            ]
            for f in range(2)
        ]
    )


def judge(expected: dict[str, Any], answer: Any, **extra: Any) -> dict[str, Any]:
    body = {"expected": expected, "answer": answer, **extra}
    return check_one(CheckRequest.model_validate(body), SETTINGS)


def codes(result: dict[str, Any]) -> list[str]:
    return [d["code"] for d in result["diagnosis"]]


def b64(array: np.ndarray) -> dict[str, Any]:
    """A tensor in the base64 wire form (a large one as nested lists is slow to send)."""
    data = base64.b64encode(np.ascontiguousarray(array, "<f8").tobytes()).decode()
    return {"shape": list(array.shape), "datatype": "FP64", "b64": data}


TOLERANCE = Tolerance()


JACOBIAN_W = {"op": "jacobian", **SEED, "of": "y", "wrt": "weight"}
JACOBIAN_X = {"op": "jacobian", **SEED, "of": "y", "wrt": "x"}
FORWARD = {"op": "forward", **SEED}
BACKWARD_W = {
    "op": "backward",
    **SEED,
    "grad_outputs": {"y": UPSTREAM.tolist()},
    "select": "weight",
}
BACKWARD_X = {**BACKWARD_W, "select": "x"}
SHAPE_1_1A = {"op": "conv_shape", "input_size": [21, 12], "kernel_size": [4, 5], "stride": 4}
FORMULA_1_1B = {
    "op": "formula",
    "reference": "floor((H + 2*P - D*(K - 1) - 1)/S) + 1",
    "variables": {"H": [1, 64], "K": [1, 8], "P": [0, 4], "S": [1, 4], "D": [1, 4]},
    "constraints": ["H + 2*P >= D*(K - 1) + 1"],
}

SEED_ANSWERS: list[tuple[str, dict[str, Any], Any]] = [
    ("1.1a", SHAPE_1_1A, "5x2"),
    ("1.1a-list", SHAPE_1_1A, [5, 2]),
    ("1.1a-times", SHAPE_1_1A, "5 \u00d7 2"),
    ("1.1b", FORMULA_1_1B, "floor((H + 2*P - D*(K - 1) - 1)/S) + 1"),
    (
        "1.1c-i-shape",
        {"op": "conv_shape", "input_size": [7], "kernel_size": 3, "stride": 2, "out_channels": 1},
        "1x3",
    ),
    ("1.1c-i", FORWARD, seed_y().tolist()),
    ("1.1c-ii", JACOBIAN_W, seed_dy_dw().tolist()),
    ("1.1c-iii", JACOBIAN_X, seed_dy_dx().tolist()),
    ("1.1c-iv", BACKWARD_W, seed_dl_dw().tolist()),
    ("1.1c-iv-x", BACKWARD_X, seed_dl_dx().tolist()),
    ("conv2d", {"op": "forward", **CONV2D}, conv2d_y().tolist()),
    ("1.2.1b", {"op": "formula", "named": "gated_rnn_gate_size"}, "m"),
    (
        "1.2.2b",
        {"op": "formula", "named": "attention_weights_size", "variables": {"k": [2, 2]}},
        "3",
    ),
]


@pytest.mark.parametrize(
    ("expected", "answer"), [c[1:] for c in SEED_ANSWERS], ids=[c[0] for c in SEED_ANSWERS]
)
def test_the_seeds_answers_are_correct_with_no_diagnosis(
    expected: dict[str, Any], answer: Any
) -> None:
    result = judge(expected, answer)
    assert result["correct"] is True, result["report"]["message"]
    assert result["score"] == 1.0 and result["diagnosis"] == []


def shape_size(n: int, k: int, s: int = 1, p: int = 0, d: int = 1) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


SHAPE_VALID = {
    "op": "conv_shape",
    "input_size": [10],
    "kernel_size": 3,
    "stride": 2,
    "padding": "valid",
}
SHAPE_SAME = {
    "op": "conv_shape",
    "input_size": [10],
    "kernel_size": 3,
    "padding": "same",
    "dilation": 2,
}
SHAPE_TRANSPOSED = {
    "op": "conv_shape",
    "input_size": [5],
    "kernel_size": 3,
    "stride": 2,
    "padding": 1,
    "dilation": 2,
    "transposed": True,
    "output_padding": 1,
}

MISTAKES: list[tuple[str, dict[str, Any], Any, str]] = [
    ("transposed", BACKWARD_W, seed_dl_dw().transpose(0, 2, 1).tolist(), "transposed"),
    (
        "halves",
        JACOBIAN_W,
        seed_dy_dw().transpose(2, 3, 4, 0, 1).tolist(),
        "jacobian_halves_swapped",
    ),
    (
        "halves-x",
        JACOBIAN_X,
        seed_dy_dx().transpose(2, 3, 0, 1).tolist(),
        "jacobian_halves_swapped",
    ),
    (
        "permuted",
        {"op": "forward", **CONV2D},
        conv2d_y().transpose(1, 2, 0).tolist(),
        "axes_permuted",
    ),
    ("reshaped", JACOBIAN_W, seed_dy_dw().reshape(3, 15).tolist(), "reshaped"),
    ("squeezed", FORWARD, seed_y()[0].tolist(), "reshaped"),
    (
        "column-major",
        {"op": "forward", **CONV2D},
        conv2d_y().flatten(order="F").reshape(2, 3, 4).tolist(),
        "column_major",
    ),
    ("sign", {"op": "forward", **CONV2D}, (-conv2d_y()).tolist(), "sign_flipped"),
    ("factor-2", BACKWARD_W, (2 * seed_dl_dw()).tolist(), "constant_factor"),
    ("factor-half", FORWARD, (seed_y() / 2).tolist(), "constant_factor"),
    ("factor-N", JACOBIAN_W, (3 * seed_dy_dw()).tolist(), "constant_factor"),
    ("factor-minus-2", {"op": "forward", **CONV2D}, (-2 * conv2d_y()).tolist(), "constant_factor"),
    ("one-based-dy-dw", JACOBIAN_W, seed_dy_dw(base=0).tolist(), "off_by_one"),
    ("one-based-y", FORWARD, seed_y(base=0).tolist(), "off_by_one"),
    ("shifted-dy-dx", JACOBIAN_X, np.roll(seed_dy_dx(), 1, axis=3).tolist(), "off_by_one"),
    ("dy-dx-for-dy-dw", JACOBIAN_W, seed_dy_dx().tolist(), "wrong_argument"),
    ("dy-dw-for-dy-dx", JACOBIAN_X, seed_dy_dw().tolist(), "wrong_argument"),
    ("dl-dx-for-dl-dw", BACKWARD_W, seed_dl_dx().tolist(), "wrong_argument"),
    ("summed", {"op": "forward", **CONV2D}, conv2d_y().sum(axis=1).tolist(), "summed_axis"),
    ("averaged", {"op": "forward", **CONV2D}, conv2d_y().mean(axis=2).tolist(), "summed_axis"),
    (
        "ceil",
        SHAPE_1_1A,
        [math.ceil((21 - 4) / 4) + 1, math.ceil((12 - 5) / 4) + 1],
        "ceil_instead_of_floor",
    ),
    (
        "padding-once",
        {"op": "conv_shape", "input_size": [32, 20], "kernel_size": 3, "padding": 2},
        [32 + 2 - 3 + 1, 20 + 2 - 3 + 1],
        "padding_counted_once",
    ),
    (
        "padding-ignored",
        {"op": "conv_shape", "input_size": [32, 20], "kernel_size": 3, "padding": 2},
        [32 - 3 + 1, 20 - 3 + 1],
        "padding_ignored",
    ),
    (
        "dilation-ignored",
        {"op": "conv_shape", "input_size": [32], "kernel_size": 3, "padding": 1, "dilation": 2},
        [shape_size(32, 3, p=1)],
        "dilation_ignored",
    ),
    ("stride-ignored", SHAPE_1_1A, [21 - 4 + 1, 12 - 5 + 1], "stride_ignored"),
    ("plus-one", SHAPE_1_1A, [(21 - 4) // 4, (12 - 5) // 4], "plus_one_missing"),
    ("channels", {**SHAPE_1_1A, "out_channels": 8}, "5x2", "channels_missing"),
    # "valid" is no padding: its mistakes are those of padding 0 (none were diagnosed).
    ("valid-ceil", SHAPE_VALID, [math.ceil((10 - 3) / 2) + 1], "ceil_instead_of_floor"),
    ("valid-stride", SHAPE_VALID, [10 - 3 + 1], "stride_ignored"),
    ("valid-plus-one", SHAPE_VALID, [(10 - 3) // 2], "plus_one_missing"),
    # "same" pads D(K - 1) = 4 in all, 2 on each side, so that the output is the input's size.
    ("same-plus-one", SHAPE_SAME, [10 - 1], "plus_one_missing"),
    ("same-padding-once", SHAPE_SAME, [10 + 2 - 4], "padding_counted_once"),
    ("same-dilation", SHAPE_SAME, [shape_size(10, 3, p=2)], "dilation_ignored"),
    ("same-padding-ignored", SHAPE_SAME, [10 - 4], "padding_ignored"),
    # Transposed: (in - 1) S - 2P + D(K - 1) + output_padding + 1 = 8 - 2 + 4 + 1 + 1 = 12.
    ("transposed-padding-once", SHAPE_TRANSPOSED, [8 - 1 + 4 + 1 + 1], "padding_counted_once"),
    ("transposed-dilation", SHAPE_TRANSPOSED, [8 - 2 + 2 + 1 + 1], "dilation_ignored"),
    ("transposed-stride", SHAPE_TRANSPOSED, [4 - 2 + 4 + 1 + 1], "stride_ignored"),
    ("transposed-plus-one", SHAPE_TRANSPOSED, [8 - 2 + 4 + 1], "plus_one_missing"),
    ("transposed-padding-ignored", SHAPE_TRANSPOSED, [8 + 4 + 1 + 1], "padding_ignored"),
]


@pytest.mark.parametrize(
    ("expected", "answer", "code"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES]
)
def test_each_mistake_is_diagnosed(expected: dict[str, Any], answer: Any, code: str) -> None:
    result = judge(expected, answer)
    assert result["correct"] is False
    assert codes(result) == [code], result["diagnosis"]
    assert result["diagnosis"][0]["message"].endswith(".")


def test_the_diagnosis_says_what_the_mistake_is_in_the_models_terms() -> None:
    swapped = judge(JACOBIAN_W, seed_dy_dw().transpose(2, 3, 4, 0, 1).tolist())
    halves = swapped["diagnosis"][0]
    assert "shape of weight followed by the shape of y" in halves["message"]
    # The shape asked for is in the report; a diagnosis, which may reach a student, has no sizes.
    assert swapped["report"]["expected_shape"] == [1, 3, 1, 5, 3]
    assert "[1, 3, 1, 5, 3]" not in halves["message"]
    wrong = judge(JACOBIAN_W, seed_dy_dx().tolist())["diagnosis"][0]
    assert "dy/dx" in wrong["message"] and "dy/dweight" in wrong["message"]
    factor = judge(JACOBIAN_W, (3 * seed_dy_dw()).tolist())["diagnosis"][0]
    assert "3 times" in factor["message"] and "the length L_out of y" in factor["message"]
    shifted = judge(JACOBIAN_W, seed_dy_dw(base=0).tolist())["diagnosis"][0]
    assert "x read one position later along L" in shifted["message"]
    assert "2i-1+m" in shifted["message"]
    transposed = judge(BACKWARD_W, seed_dl_dw().transpose(0, 2, 1).tolist())["diagnosis"][0]
    assert "axes 1 (C) and 2 (K)" in transposed["message"]


def test_a_jacobians_axes_are_named_in_words_not_by_their_label() -> None:
    """1.1c-iii's dy/dx read one position off along x was told "along x:L", the service's
    label of that axis rather than anything the homework writes: every diagnosis that names
    an axis of a Jacobian says it in words."""
    expected = {**JACOBIAN_X, **NAMED_W}
    key = seed_dy_dx()  # [F, L_out, C, L] = [1, 3, 5, 7]
    earlier = np.zeros_like(key)
    earlier[..., 1:] = key[..., :-1]
    told = {
        "shifted": judge(expected, earlier.tolist()),
        "transposed": judge(expected, key.transpose(0, 1, 3, 2).tolist()),
        "permuted": judge(expected, key.transpose(1, 0, 3, 2).tolist()),
        "factor": judge(expected, (3 * key).tolist()),
    }
    messages = {name: result["diagnosis"][0]["message"] for name, result in told.items()}
    assert messages["shifted"] == (
        "Your answer is the key read one position earlier along the length L of x: an "
        "off-by-one index, such as the seed's 1-based 2i-1+m used with 0-based arrays."
    )
    assert messages["transposed"] == (
        "Your answer is the key transposed: axes 2 (the channels C of x) and 3 (the length L "
        "of x) are swapped."
    )
    assert (
        "yours are (the length L_out of y, the filters F of y, the length L of x, the "
        in (messages["permuted"])
    )
    assert "3 is the size of the length L_out of y" in messages["factor"]
    for message in messages.values():
        assert not re.search(r"\b(x|y|W):\w", message), message  # no label such as x:L
    # An axis of any other key is named by its symbol, as the homework names it.
    transposed = judge(BACKWARD_W, seed_dl_dw().transpose(0, 2, 1).tolist())["diagnosis"][0]
    assert "axes 1 (C) and 2 (K)" in transposed["message"]


def test_a_wrong_answer_without_a_known_mistake_gets_no_diagnosis() -> None:
    noise = np.random.default_rng(0).normal(size=(1, 3, 1, 5, 3))
    result = judge(JACOBIAN_W, (seed_dy_dw() + noise).tolist())
    assert result["correct"] is False and result["diagnosis"] == []
    off = judge(SHAPE_1_1A, [7, 7])
    assert off["correct"] is False and off["diagnosis"] == []


# The recurrent mistakes, on the test model (and on the service's gated_rnn once it exists).
RNN_MODELS = [gated_rnn_model.NAME, *(["gated_rnn"] if "gated_rnn" in MODELS else [])]


@pytest.fixture(params=RNN_MODELS)
def rnn(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == gated_rnn_model.NAME:
        monkeypatch.setitem(MODELS, gated_rnn_model.NAME, gated_rnn_model.TEST_GATED_RNN)
    yield request.param


RNN_ARGS = gated_rnn_model.example_args(seed=1, seq_len=5, m=3, n=2)
RNN_UPSTREAM = np.random.default_rng(2).normal(size=(5, 3))


def rnn_states() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """h, c and h[t-1] of equations (1)-(2) by a plain numpy loop."""
    p, i = RNN_ARGS["params"], RNN_ARGS["inputs"]
    w_c, w_h, w_x = (np.array(p[n]) for n in ("W_c", "W_h", "W_x"))
    h = np.array(i["h0"])
    hs, cs, prevs = [], [], []
    for x in np.array(i["x"]):
        c = 1 / (1 + np.exp(-(w_c @ x + w_h @ h)))
        prevs.append(h)
        h = c * h + (1 - c) * (w_x @ x)
        hs.append(h)
        cs.append(c)
    return np.array(hs), np.array(cs), np.array(prevs)


def rnn_step_jacobians() -> np.ndarray:
    """Seed 1.2.1(d): diag(c[t]) + diag(h[t-1] - W_x x[t]) diag(sigma'(z[t])) W_h."""
    _, c, prev = rnn_states()
    p, x = RNN_ARGS["params"], np.array(RNN_ARGS["inputs"]["x"])
    w_h, w_x = np.array(p["W_h"]), np.array(p["W_x"])
    return np.array(
        [
            np.diag(c[t]) + np.diag(prev[t] - w_x @ x[t]) @ np.diag(c[t] * (1 - c[t])) @ w_h
            for t in range(len(c))
        ]
    )


def rnn_state_grads() -> np.ndarray:
    """dl/dh[t] = sum over k >= t of dl/dh[k] dh[k]/dh[t] (seed 1.2.1(d)), by the products."""
    jacobians = rnn_step_jacobians()
    steps = len(jacobians)
    total = np.zeros_like(RNN_UPSTREAM)
    for t in range(steps):
        product = np.eye(3)
        for k in range(t, steps):
            if k > t:
                product = jacobians[k] @ product
            total[t] += RNN_UPSTREAM[k] @ product
    return total


def rnn_expected(model: str, op: str, **extra: Any) -> dict[str, Any]:
    return {"op": op, "model": model, **RNN_ARGS, **extra}


def test_rnn_answers_by_the_seeds_formulas_are_correct(rnn: str) -> None:
    h, _, _ = rnn_states()
    assert judge(rnn_expected(rnn, "forward", select="h"), h.tolist())["correct"]
    jacobians = judge(rnn_expected(rnn, "state_jacobians"), rnn_step_jacobians().tolist())
    assert jacobians["correct"] and jacobians["diagnosis"] == []
    backward = rnn_expected(rnn, "backward", grad_outputs={"h": RNN_UPSTREAM.tolist()})
    grads = judge({**backward, "select": "state_grads"}, rnn_state_grads().tolist())
    assert grads["correct"] and grads["diagnosis"] == []


def test_only_diag_c_of_the_gated_jacobian_is_diagnosed(rnn: str) -> None:
    _, c, _ = rnn_states()
    result = judge(rnn_expected(rnn, "state_jacobians"), [np.diag(row).tolist() for row in c])
    assert result["correct"] is False
    assert codes(result) == ["gate_path_missing"]
    assert "diag(c[t])" in result["diagnosis"][0]["message"]


def test_only_the_direct_term_of_the_gradient_through_time_is_diagnosed(rnn: str) -> None:
    backward = rnn_expected(rnn, "backward", grad_outputs={"h": RNN_UPSTREAM.tolist()})
    result = judge({**backward, "select": "state_grads"}, RNN_UPSTREAM.tolist())
    assert result["correct"] is False
    assert codes(result) == ["direct_term_only"]
    assert "later steps are missing" in result["diagnosis"][0]["message"]


def direct_sum_for_w_x(upstream: np.ndarray) -> np.ndarray:
    """Seed 1.2.1(c): sum over t of (dl/dh[t] * (1 - c[t])) x[t]^T, on the given dl/dh[t]."""
    _, c, _ = rnn_states()
    x = np.array(RNN_ARGS["inputs"]["x"])
    return np.sum([np.outer(upstream[t] * (1 - c[t]), x[t]) for t in range(len(c))], axis=0)


def truncated_w_x_gradient() -> np.ndarray:
    """dl/dW_x by autograd with each step's h[t-1] detached: no path through time."""
    p, i = RNN_ARGS["params"], RNN_ARGS["inputs"]
    w_c, w_h = (torch.tensor(p[n], dtype=torch.float64) for n in ("W_c", "W_h"))
    w_x = torch.tensor(p["W_x"], dtype=torch.float64, requires_grad=True)
    h = torch.tensor(i["h0"], dtype=torch.float64)
    loss = torch.zeros((), dtype=torch.float64)
    for x, upstream in zip(torch.tensor(i["x"], dtype=torch.float64), RNN_UPSTREAM, strict=True):
        prev = h.detach()
        c = torch.sigmoid(w_c @ x + w_h @ prev)
        h = c * prev + (1 - c) * (w_x @ x)
        loss = loss + torch.from_numpy(upstream) @ h
    (grad,) = torch.autograd.grad(loss, w_x)
    return grad.numpy()


def test_the_w_x_sum_over_the_direct_gradients_alone_is_diagnosed(rnn: str) -> None:
    """1.2.1(c): the seed's sum needs the total dl/dh[t]; the same sum over the direct ones
    (the given upstream gradients) is the gradient without the path through time."""
    backward = {
        **rnn_expected(rnn, "backward", grad_outputs={"h": RNN_UPSTREAM.tolist()}),
        "select": "W_x",
    }
    right = direct_sum_for_w_x(rnn_state_grads())  # the seed's sum on the total gradients
    assert judge(backward, right.tolist())["correct"]
    direct_only = direct_sum_for_w_x(RNN_UPSTREAM)
    np.testing.assert_allclose(direct_only, truncated_w_x_gradient(), rtol=1e-12, atol=1e-12)
    assert not np.allclose(direct_only, right)
    result = judge(backward, direct_only.tolist())
    assert result["correct"] is False
    assert codes(result) == ["direct_gradients_only"]
    assert "total gradient through time" in result["diagnosis"][0]["message"]


def test_with_gradients_on_the_gates_the_direct_sum_is_not_this_mistake() -> None:
    """An upstream gradient on c[t] too makes dl/dW_x another sum: the mistake is not offered."""
    gates = {"h": RNN_UPSTREAM.tolist(), "c": RNN_UPSTREAM.tolist()}
    both = {**rnn_expected("gated_rnn", "backward", grad_outputs=gates), "select": "W_x"}
    result = judge(both, direct_sum_for_w_x(RNN_UPSTREAM).tolist())
    assert result["correct"] is False and "direct_gradients_only" not in codes(result)


def test_rnn_generic_mistakes(rnn: str) -> None:
    h, c, _ = rnn_states()
    gate = judge(rnn_expected(rnn, "forward", select="h"), c.tolist())
    assert codes(gate) == ["wrong_output"]
    summed = judge(rnn_expected(rnn, "forward", select="h"), h.sum(axis=0).tolist())
    assert codes(summed) == ["summed_axis"] and "(T)" in summed["diagnosis"][0]["message"]
    transposed = judge(
        rnn_expected(rnn, "state_jacobians"), rnn_step_jacobians().transpose(0, 2, 1).tolist()
    )
    assert codes(transposed) == ["transposed"]


def test_rnn_partial_credit_per_time_step(rnn: str) -> None:
    h, _, _ = rnn_states()
    h[3] += 1.0
    result = judge(rnn_expected(rnn, "forward", select="h"), h.tolist(), partial_credit="steps")
    assert result["correct"] is False and result["score"] == pytest.approx(4 / 5)
    assert result["report"]["steps_correct"] == 4


def test_rnn_diagnoses_do_not_apply_where_the_model_does_not_fit() -> None:
    # A conv backward has no state_grads and no gate: neither recurrent diagnosis applies,
    # even to an answer equal to its upstream gradient.
    backward = {
        "op": "backward",
        **SEED,
        "grad_outputs": {"y": UPSTREAM.tolist()},
        "select": "weight",
    }
    result = judge(backward, np.zeros((1, 5, 3)).tolist())
    assert not {"direct_term_only", "gate_path_missing", "direct_gradients_only"} & set(
        codes(result)
    )


def test_recomputing_diagnoses_stay_within_the_compute_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A diagnosis that recomputes the key (an input read one position off, the Jacobian
    against the other argument) is tried only while the key's time and the recomputations'
    stay within the compute deadline; otherwise it is left out, and the answer is still judged."""
    assert "off_by_one" in codes(judge(FORWARD, seed_y(base=0).tolist()))
    assert "wrong_argument" in codes(judge(JACOBIAN_W, seed_dy_dx().tolist()))
    deadline = SETTINGS.compute_deadline_seconds
    key = model_key(
        ForwardExpected.model_validate(FORWARD), SETTINGS, ComputeGate.from_settings(SETTINGS)
    )
    source = key.source
    assert source is not None and 0 < source.seconds < deadline
    args = source.prepared.args
    assert source.compute(args) is not None and source.spent > 0
    assert source.jacobian("y", "x") is not None
    source.seconds = deadline  # a key that took the whole deadline: nothing else fits
    assert source.compute(args) is None and source.jacobian("y", "x") is None
    monkeypatch.setattr(ModelSource, "_affordable", lambda self, estimate: False)
    result = judge(FORWARD, seed_y(base=0).tolist())
    assert result["correct"] is False and "off_by_one" not in codes(result)
    assert "wrong_argument" not in codes(judge(JACOBIAN_W, seed_dy_dx().tolist()))


# The work of a diagnosis is bounded: each candidate is a key-sized tensor made and compared.


def value_key(tensor: np.ndarray) -> TensorKey:
    return TensorKey(torch.from_numpy(tensor), "the value", ())


def count_axis_orders(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The axis orders ``AxesPermuted`` makes a candidate of, as it makes them."""
    made: list[tuple[int, ...]] = []
    make = diagnosis.AxesPermuted._candidate

    def counted(
        self: diagnosis.AxesPermuted, key: TensorKey, order: tuple[int, ...], halves: bool
    ) -> diagnosis.Candidate:
        made.append(order)
        return make(self, key, order, halves)

    monkeypatch.setattr(diagnosis.AxesPermuted, "_candidate", counted)
    return made


def test_a_large_key_with_720_axis_orders_tries_a_few(monkeypatch: pytest.MonkeyPatch) -> None:
    """Six axes of one size have 720 orders: a 1M-element key tried them all (10 s); the
    budget of candidate elements lets it try only the most likely, and say nothing more."""
    made = count_axis_orders(monkeypatch)
    rng = np.random.default_rng(0)
    key = value_key(rng.normal(size=(10,) * 6))
    answer = torch.from_numpy(rng.normal(size=(1, *(10,) * 6)))
    assert diagnosis.diagnose(key, answer, TOLERANCE) == [[]]
    # Half of the budget of 16 candidates of 1M elements at most, instead of 720.
    assert 1 <= len(made) <= 8
    # The most likely first: the last two axes swapped, then every axis reversed.
    assert made[:2] == [(0, 1, 2, 3, 5, 4), (5, 4, 3, 2, 1, 0)]


@pytest.mark.parametrize(
    ("order", "code"),
    [((0, 1, 2, 3, 5, 4), "transposed"), ((5, 4, 3, 2, 1, 0), "axes_permuted")],
    ids=["last-two-swapped", "reversed"],
)
def test_the_likely_orders_of_a_large_key_are_still_diagnosed(
    order: tuple[int, ...], code: str
) -> None:
    key = np.random.default_rng(1).normal(size=(10,) * 6)
    result = judge({"op": "value", "value": b64(key)}, b64(key.transpose(order)))
    assert codes(result) == [code]


def test_the_budget_leaves_unlikely_orders_out_but_a_small_key_tries_them_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = np.random.default_rng(2).normal(size=(3,) * 6)
    unlikely = (1, 0, 3, 2, 5, 4)  # three swaps: the last of the orders tried
    answer = torch.from_numpy(key.transpose(unlikely)[None].copy())
    made = count_axis_orders(monkeypatch)
    found = diagnosis.diagnose(value_key(key), answer, TOLERANCE)
    assert [d.code for d in found[0]] == ["axes_permuted"]
    assert len(made) == 719  # 3**6 elements: every order but the identity fits the budget
    made.clear()
    monkeypatch.setattr(diagnosis, "MAX_DIAGNOSIS_ELEMENTS", 40 * 3**6)
    work = diagnosis.Work()
    assert diagnosis.diagnose(value_key(key), answer, TOLERANCE, work) == [[]]
    assert len(made) <= 20  # half the budget of 40 candidates
    assert work.candidates <= 40 and work.spent == work.candidates * 3**6 <= 40 * 3**6


def test_a_permuted_answer_of_a_small_tensor_is_diagnosed_as_before() -> None:
    key = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    moved = judge({"op": "value", "value": key.tolist()}, key.transpose(2, 0, 1).tolist())
    assert moved["diagnosis"] == [
        {
            "code": "axes_permuted",
            "message": "Your answer has the right numbers with the axes in another order: "
            "yours are (axis 2, axis 0, axis 1), the key's are (axis 0, axis 1, axis 2).",
        }
    ]
    swapped = judge({"op": "value", "value": key.tolist()}, key.transpose(0, 2, 1).tolist())
    assert codes(swapped) == ["transposed"]
    assert "axes 1 (axis 1) and 2 (axis 2) are swapped" in swapped["diagnosis"][0]["message"]
    halves = judge(JACOBIAN_W, seed_dy_dw().transpose(2, 3, 4, 0, 1).tolist())
    assert codes(halves) == ["jacobian_halves_swapped"]
    # Size-1 axes: reversing all four axes gives the numbers of swapping the first and the
    # last; the simpler explanation is given, as before.
    flat = key.reshape(2, 1, 1, 12)
    ones = judge({"op": "value", "value": flat.tolist()}, flat.transpose(3, 2, 1, 0).tolist())
    assert codes(ones) == ["transposed"]
    assert "axes 0 (axis 0) and 3 (axis 3) are swapped" in ones["diagnosis"][0]["message"]


def test_no_candidate_is_made_past_the_deadline() -> None:
    key = value_key(np.arange(6, dtype=np.float64).reshape(2, 3))
    answer = torch.from_numpy(-key.tensor.numpy()[None].copy())
    work = diagnosis.Work(deadline=time.perf_counter() - 1.0)
    assert diagnosis.diagnose(key, answer, TOLERANCE, work) == [[]]
    assert work.candidates == 0
    assert [d.code for d in diagnosis.diagnose(key, answer, TOLERANCE)[0]] == ["sign_flipped"]


def test_a_mistake_spends_only_on_the_candidates_it_makes() -> None:
    """The budget is charged per candidate made: a mistake with none to make (or past its
    last) spends nothing, so the mistakes after it keep their turn (three such charges of a
    1M-element key once used up a quarter of the budget and left off_by_one untried)."""
    work = diagnosis.Work(elements=10)
    assert list(diagnosis.metered(iter(()), 4, work)) == []
    assert (work.spent, work.candidates) == (0, 0)
    made = list(diagnosis.metered(iter(["a", "b", "c"]), 4, work))
    assert made == ["a", "b"]  # the third does not fit what is left (2 of 10)
    assert (work.spent, work.candidates, work.elements) == (8, 2, 2)


def test_an_answer_of_zeros_is_not_explained_by_a_mistake_whose_result_is_zeros() -> None:
    """x [[0, 0, 0, 1]] read one position earlier gives y of zeros: an answer of zeros was
    diagnosed off_by_one ("x read one position earlier"), which any unfilled answer matches."""
    expected = {
        "op": "forward",
        "model": "conv1d",
        "params": {"weight": [[[1.0, 1.0]]]},
        "inputs": {"x": [[0.0, 0.0, 0.0, 1.0]]},
    }
    assert codes(judge(expected, [[0, 0, 0]])) == ["all_zeros"]
    # The same shift is still found where it leaves something to match.
    assert codes(judge(expected, [[0, 1, 0]])) == ["off_by_one"]


def test_no_mistake_is_diagnosed_from_a_candidate_of_zeros() -> None:
    """The rule is the candidates', not one mistake's: rows that sum to zero make the
    "summed over an axis" candidate zeros, which explains an answer of zeros no better."""
    key = {"op": "value", "value": [[1.0, -1.0], [2.0, -2.0]]}
    assert codes(judge(key, [0.0, 0.0])) == []  # not summed_axis; nor all_zeros (a shape apart)
    assert codes(judge(key, [[0.0, 0.0], [0.0, 0.0]])) == ["all_zeros"]
    assert "summed_axis" in codes(judge({"op": "value", "value": [[1.0, 2.0]]}, [3.0]))


def test_a_one_number_answer_of_zero_is_just_wrong() -> None:
    assert codes(judge({"op": "value", "value": 1.5}, 0)) == []
    assert codes(judge({"op": "value", "value": [0.0, 0.0]}, [[0.0, 0.0]])) == ["reshaped"]


def test_same_padding_diagnoses_only_what_stays_a_mistake() -> None:
    """With "same" (stride 1) a ceil or an ignored stride gives the right size: no mistake to
    find. With an odd D(K - 1) the two sides differ (1 and 2 for K = 4): there is no one P
    that could have been counted once, so that mistake is not guessed at; 1 on each side, the
    odd one left out, gives one less, as the + 1 left out does."""
    same = {"op": "conv_shape", "input_size": [10], "kernel_size": 4, "padding": "same"}
    assert judge(same, [10])["correct"] is True
    assert codes(judge(same, [9])) == ["odd_padding_left_out", "plus_one_missing"]
    assert codes(judge(same, [10 + 1 - 3])) == []  # 1 once, or 2 once minus one: no story
    assert codes(judge(same, [10 - 3])) == ["padding_ignored"]
    # In 2-D with one side odd, the other evenly padded: that dimension is right, not a reason
    # to leave the mistake untold.
    two = {"op": "conv_shape", "input_size": [8, 8], "kernel_size": [4, 3], "padding": "same"}
    assert codes(judge(two, [7, 8])) == ["odd_padding_left_out"]


def test_transposed_shapes_are_not_diagnosed_with_the_convolutions_rounding() -> None:
    """A transposed convolution rounds nothing: no ceil_instead_of_floor for it."""
    for size in range(1, 30):
        assert "ceil_instead_of_floor" not in codes(judge(SHAPE_TRANSPOSED, [size]))


NAMED_W = {"names": {"weight": "W"}}


def test_the_key_and_its_diagnoses_use_the_questions_names() -> None:
    """``names`` renames the model's tensors in the label, the axes and every diagnosis: a
    question about W is answered about W, not about the field `weight`."""
    wrong = judge({**JACOBIAN_X, **NAMED_W}, seed_dy_dw().tolist())
    assert wrong["diagnosis"][0]["message"] == (
        "This is dy/dW, the Jacobian against W; the question asks for dy/dx, against x."
    )
    halves = judge({**JACOBIAN_W, **NAMED_W}, seed_dy_dw().transpose(2, 3, 4, 0, 1).tolist())
    assert halves["report"]["label"] == "dy/dW"
    assert "shape of W followed by the shape of y" in halves["diagnosis"][0]["message"]
    factor = judge({**JACOBIAN_W, **NAMED_W}, (3 * seed_dy_dw()).tolist())
    assert "the length L_out of y" in factor["diagnosis"][0]["message"]
    backward = judge({**BACKWARD_W, **NAMED_W}, seed_dl_dx().tolist())
    assert backward["report"]["label"] == "dl/dW"
    assert backward["diagnosis"][0]["message"] == "This is dl/dx; the question asks for dl/dW."
    shifted = judge({**FORWARD, "names": {"x": "x_in"}}, seed_y(base=0).tolist())
    assert "computed with x_in read one position later" in shifted["diagnosis"][0]["message"]


def test_a_name_for_a_tensor_the_model_does_not_have_is_refused() -> None:
    with pytest.raises(CheckFailed) as failed:
        judge({**JACOBIAN_W, "names": {"wieght": "W"}}, seed_dy_dw().tolist())
    problem = failed.value.problem
    assert problem.status == 422
    assert problem.detail.startswith("expected.names.wieght: conv1d has no argument or output")


def test_a_name_that_another_tensor_has_is_refused() -> None:
    """weight called x made dy/dweight's label dy/dx, and dy/dx answered for it was told "This
    is dy/dx, the Jacobian against x; the question asks for dy/dx, against x"."""
    for names, why in [
        ({"weight": "x"}, "that is conv1d's own name of its input x"),
        ({"weight": "y"}, "that is conv1d's own name of its output y"),
        ({"weight": "W", "x": "W"}, "x is called that too (names.x)"),
        ({"weight": "x", "x": "weight"}, "that is conv1d's own name of its input x"),
    ]:
        with pytest.raises(CheckFailed) as failed:
            judge({**JACOBIAN_W, "names": names}, seed_dy_dx().tolist())
        problem = failed.value.problem
        assert problem.status == 422
        called = names["weight"]
        assert problem.detail == (
            f"expected.names.weight: weight cannot be called {called!r}: {why}, and the label "
            "and the diagnoses would name the two alike; give each tensor a name of its own"
        )
    # Names of their own, and a tensor called by its own name, are still what they were.
    assert judge({**JACOBIAN_W, "names": {"weight": "weight", "y": "f"}}, 0)["correct"] is False


# An index one time step off is told in time steps, not with the convolution's 2i-1+m.

GATED_PARAMS = {"W_c": [[0.5, -1.0], [1.0, 0.3]], "W_h": [[0.2, 0.1], [-0.4, 0.6]]}
GATED_PARAMS = {**GATED_PARAMS, "W_x": [[1.0, 2.0], [-1.0, 0.5]]}
GATED_X = [[1.0, 0.0], [0.5, 1.0], [-0.5, 0.5]]


def gated_h(params: dict[str, Any], x: Any, h0: Any = None) -> np.ndarray:
    """h[1..T] of equations (1)-(2) by a plain numpy loop, rows 0..T-1."""
    w_c, w_h, w_x = (np.array(params[n]) for n in ("W_c", "W_h", "W_x"))
    h = np.zeros(w_h.shape[0]) if h0 is None else np.array(h0)
    states = []
    for x_t in np.array(x):
        c = 1 / (1 + np.exp(-(w_c @ x_t + w_h @ h)))
        h = c * h + (1 - c) * (w_x @ x_t)
        states.append(h)
    return np.array(states)


ROWS_EARLIER = (
    "your rows are one time step off: row t-1 must hold h[t] (the homework's h[1..T]); yours "
    "hold h[t-1] (h[0] included, h[T] left out)."
)
X_EARLIER = (
    "your answer is the reference computed with x[t] read one step earlier (x[t-1] in place "
    "of x[t]): an off-by-one time index, such as the homework's 1-based x[1..T] stored in the "
    "0-based rows 0..T-1 (row t-1 holds x[t])."
)
ROWS_OR_X_EARLIER = (
    f"Your answer fits 2 mistakes one time step off, one of these: {ROWS_EARLIER} Or {X_EARLIER}"
)


def test_rows_one_time_step_off_are_told_in_time_steps() -> None:
    """[h[0], h[1], h[2]] for h[1..3] (h[0] = 0) was told "x read one position earlier along
    T ... such as the seed's 1-based 2i-1+m used with 0-based arrays", a convolution's hint.
    With h[0] = 0 those rows are also h computed with x[t-1] in place of x[t] (the step on
    x[0] = 0 from h[0] = 0 stays at 0): they were told as a fact, now as one of the two."""
    expected = {"op": "forward", "model": "gated_rnn", "select": "h", "params": GATED_PARAMS}
    expected = {**expected, "inputs": {"x": GATED_X}}
    h = gated_h(GATED_PARAMS, GATED_X)
    x_earlier = np.vstack([np.zeros((1, 2)), np.array(GATED_X)[:-1]])
    np.testing.assert_allclose(gated_h(GATED_PARAMS, x_earlier)[1:], h[:-1], rtol=1e-14)
    earlier = judge(expected, [[0.0, 0.0], h[0].tolist(), h[1].tolist()])
    assert earlier["diagnosis"] == [{"code": "off_by_one", "message": ROWS_OR_X_EARLIER}]
    later = judge(expected, [h[1].tolist(), h[2].tolist(), [0.0, 0.0]])
    assert codes(later) == ["off_by_one"]
    assert (
        "yours hold h[t+1] (h[1] left out, a row of zeros last)" in later["diagnosis"][0]["message"]
    )
    for result in (earlier, later):
        assert "2i-1+m" not in result["diagnosis"][0]["message"]


def test_an_input_read_one_time_step_off_is_told_in_time_steps(rnn: str) -> None:
    """x[t+1] in place of x[t] recomputes h: said as a time step, with the time hint."""
    params, inputs = RNN_ARGS["params"], RNN_ARGS["inputs"]
    x = np.array(inputs["x"])
    later = np.vstack([x[1:], np.zeros((1, x.shape[1]))])  # x[t + 1], zero past the end
    answer = gated_h(params, later, inputs["h0"])
    result = judge(rnn_expected(rnn, "forward", select="h"), answer.tolist())
    assert codes(result) == ["off_by_one"]
    message = result["diagnosis"][0]["message"]
    assert "computed with x[t] read one step later (x[t+1] in place of x[t])" in message
    assert "1-based x[1..T] stored in the 0-based rows 0..T-1" in message
    assert "2i-1+m" not in message and "position" not in message


def test_the_two_stories_of_one_step_earlier_are_told_as_one_of_these(rnn: str) -> None:
    """Where h0 is absent or zeros, the states one row off (h[0] = 0 first) and h computed
    with x read one step earlier are the same numbers: either answer is told as one of the
    two. With h0 != 0 they differ, and each is told as the mistake it is."""
    params, inputs = RNN_ARGS["params"], RNN_ARGS["inputs"]
    x = np.array(inputs["x"])
    x_earlier = np.vstack([np.zeros((1, x.shape[1])), x[:-1]])
    absent = rnn_expected(rnn, "forward", select="h", inputs={"x": inputs["x"]})
    zeros = rnn_expected(rnn, "forward", select="h", inputs={**inputs, "h0": [0.0] * 3})
    h = gated_h(params, x)
    for expected in (absent, zeros):
        for answer in (np.vstack([np.zeros(3), h[:-1]]), gated_h(params, x_earlier)):
            result = judge(expected, answer.tolist())
            assert result["diagnosis"] == [{"code": "off_by_one", "message": ROWS_OR_X_EARLIER}]
    given = rnn_expected(rnn, "forward", select="h")
    read_earlier = judge(given, gated_h(params, x_earlier, inputs["h0"]).tolist())
    assert read_earlier["diagnosis"] == [
        {"code": "off_by_one", "message": X_EARLIER[0].upper() + X_EARLIER[1:]}
    ]
    h = gated_h(params, x, inputs["h0"])
    rows = judge(given, np.vstack([inputs["h0"], h[:-1]]).tolist())
    assert rows["diagnosis"] == [
        {"code": "off_by_one", "message": ROWS_EARLIER[0].upper() + ROWS_EARLIER[1:]}
    ]


def test_attention_rnn_states_one_row_off_are_told_as_one_of_these() -> None:
    """AttentionRNN(3) (the assignment's 1.2.2c): h[t] = 0 for t < 1, so the states one row
    off are also h computed with x read one step earlier."""
    rng = np.random.default_rng(5)
    q, k, v = (rng.uniform(-1, 1, size=(4, 2, 2)).round(1) for _ in range(3))
    x = rng.uniform(-1, 1, size=(5, 2)).round(1)
    params = {"Q": q.tolist(), "K": k.tolist(), "V": v.tolist()}
    expected = {"op": "forward", "model": "attention_rnn", "config": {"k": 3}, "select": "h"}
    expected = {**expected, "params": params, "inputs": {"x": x.tolist()}}
    h, _ = seed_answers.attention_rnn(q, k, v, x, 3)
    assert judge(expected, h.tolist())["correct"]
    x_earlier = np.vstack([np.zeros((1, 2)), x[:-1]])
    for answer in (
        np.vstack([np.zeros(2), h[:-1]]),
        seed_answers.attention_rnn(q, k, v, x_earlier, 3)[0],
    ):
        result = judge(expected, answer.tolist())
        assert result["diagnosis"] == [{"code": "off_by_one", "message": ROWS_OR_X_EARLIER}]


def test_the_states_one_row_off_start_with_the_given_h0(rnn: str) -> None:
    """With h0 given, row 0 of the shifted states is h[0] = h0; a row of zeros is told so."""
    h, _, _ = rnn_states()
    h0 = np.array(RNN_ARGS["inputs"]["h0"])
    expected = rnn_expected(rnn, "forward", select="h")
    with_h0 = judge(expected, np.vstack([h0, h[:-1]]).tolist())
    assert codes(with_h0) == ["off_by_one"]
    assert "(h[0] included, h[T] left out)" in with_h0["diagnosis"][0]["message"]
    with_zeros = judge(expected, np.vstack([np.zeros(3), h[:-1]]).tolist())
    assert codes(with_zeros) == ["off_by_one"]
    assert "(a row of zeros first, h[T] left out)" in with_zeros["diagnosis"][0]["message"]


def test_gradients_through_time_one_step_off_get_the_time_hint(rnn: str) -> None:
    backward = rnn_expected(rnn, "backward", grad_outputs={"h": RNN_UPSTREAM.tolist()})
    grads = rnn_state_grads()
    shifted = np.vstack([grads[1:], np.zeros((1, 3))])
    result = judge({**backward, "select": "state_grads"}, shifted.tolist())
    assert codes(result) == ["off_by_one"]
    message = result["diagnosis"][0]["message"]
    assert message.startswith("Your answer is the key read one time step later along T")
    assert "2i-1+m" not in message


def test_an_rnn_index_off_along_another_axis_has_no_convolution_hint(rnn: str) -> None:
    """The hidden units m are no convolution's positions: no 2i-1+m for them either."""
    h, _, _ = rnn_states()
    result = judge(rnn_expected(rnn, "forward", select="h"), np.roll(h, -1, axis=1).tolist())
    assert codes(result) == ["off_by_one"]
    assert result["diagnosis"][0]["message"] == (
        "Your answer is the key read one position later along m, wrapping around at the end "
        "(a negative index): an off-by-one index (a 1-based index used with 0-based arrays?)."
    )


# A factor is named with every axis of its size, the ones the computation sums away included.


def test_a_mean_over_the_output_positions_of_dl_dw_names_every_axis_of_that_size() -> None:
    """1.1c-iv: dl/dW [F, C, K] = [1, 5, 3] sums over the L_out = 3 output positions; a mean
    there was told "3 is the size of K" alone, wrong for every student (L_out = K = 3)."""
    result = judge(BACKWARD_W, (seed_dl_dw() / 3).tolist())
    assert result["diagnosis"] == [
        {
            "code": "constant_factor",
            "message": "Your answer is 1/3 times the key: off by a constant factor of 1/3 (3 is "
            "the size of K and of the output positions L_out: a sum or a mean over one of them, "
            "or a term counted that many times?).",
        }
    ]
    # 5 is the size of C alone: one axis named.
    alone = judge(BACKWARD_W, (seed_dl_dw() / 5).tolist())["diagnosis"][0]["message"]
    assert "(5 is the size of C: a sum or a mean over it," in alone
    # A Jacobian sums nothing away; its own axes of the size are all named.
    factor = judge(JACOBIAN_W, (3 * seed_dy_dw()).tolist())["diagnosis"][0]["message"]
    assert (
        "3 is the size of the length L_out of y and of the kernel taps K of weight: a sum or a "
        "mean over one of them" in factor
    )


def test_a_mean_over_time_of_an_rnn_gradient_names_the_time_steps(rnn: str) -> None:
    """dl/dW_x [m, n] = [3, 2] sums over the T = 5 steps, an axis it does not have."""
    backward = rnn_expected(rnn, "backward", grad_outputs={"h": RNN_UPSTREAM.tolist()})
    right = direct_sum_for_w_x(rnn_state_grads())
    result = judge({**backward, "select": "W_x"}, (right / 5).tolist())
    assert codes(result) == ["constant_factor"]
    assert (
        "(5 is the size of the time steps T: a sum or a mean over it,"
        in (result["diagnosis"][0]["message"])
    )


def test_a_factor_of_a_value_key_names_no_axis() -> None:
    """A key given as a value does not say what it sums: its axis of the size may not be the
    one (no axis is named rather than a guess)."""
    key = np.arange(1.0, 10.0).reshape(3, 3)
    message = judge({"op": "value", "value": key.tolist()}, (3 * key).tolist())["diagnosis"]
    assert message == [
        {
            "code": "constant_factor",
            "message": "Your answer is 3 times the key: off by a constant factor of 3.",
        }
    ]


# Several mistakes that give the same answer are each told as one of them, none as a fact.


def test_a_shape_that_several_mistakes_give_is_told_as_each() -> None:
    """in 7, K 3, P 1, S 2: floor((7 + 1 - 3)/2) + 1 = 3 (the padding once),
    floor((7 - 3)/2) + 1 = 3 (no padding) and floor((7 + 2 - 3)/2) = 3 (no + 1): all were
    stated as facts, then the padding left out was not told at all."""
    expected = {"op": "conv_shape", "input_size": [7], "kernel_size": 3, "padding": 1}
    result = judge({**expected, "stride": 2}, [3])
    assert result["correct"] is False
    assert codes(result) == ["padding_counted_once", "padding_ignored", "plus_one_missing"]
    lead = "Your answer fits 3 mistakes; if yours is this one, "
    assert [d["message"] for d in result["diagnosis"]] == [
        lead + "you counted the padding once (P instead of 2P): it is added on both sides.",
        lead + "you left out the padding: P is added on both sides of the input, 2P in all, "
        "before the kernel slides over it.",
        lead + "you left out the + 1: the first position of the kernel gives an output too.",
    ]
    # One mistake alone is said as before: P = 2, S = 1 is 9; once, 7; without + 1, 8.
    alone = judge({**expected, "padding": 2, "stride": 1}, [7])
    assert alone["diagnosis"] == [
        {
            "code": "padding_counted_once",
            "message": "You counted the padding once (P instead of 2P): it is added on both sides.",
        }
    ]


@pytest.mark.parametrize(
    ("expected", "answer", "mistakes"),
    [
        # floor((32 - 4 - 1)/2) + 1 = 14 without the padding, floor((32 + 2 - 4 - 1)/2) = 14
        # without the + 1: "You left out the + 1" was said as a fact.
        (
            {"input_size": [32], "kernel_size": 3, "padding": 1, "stride": 2, "dilation": 2},
            [14],
            ["padding_ignored", "plus_one_missing"],
        ),
        (
            {"input_size": [12], "kernel_size": 5, "padding": 2, "stride": 4},
            [2],
            ["padding_ignored", "plus_one_missing"],
        ),
        # "same" pads 1 before and 2 after: 1 on each side gives 7, as the + 1 left out does.
        (
            {"input_size": [8], "kernel_size": 4, "padding": "same"},
            [7],
            ["odd_padding_left_out", "plus_one_missing"],
        ),
        (
            {"input_size": [33], "kernel_size": 3, "padding": 1, "stride": 2},
            [16],
            ["padding_counted_once", "padding_ignored", "plus_one_missing"],
        ),
        # Alone, as a fact: 1 padded on each side of 32 gives 32; without it, 30.
        ({"input_size": [32], "kernel_size": 3, "padding": 1}, [30], ["padding_ignored"]),
    ],
    ids=["dilated", "strided", "same-odd", "three", "alone"],
)
def test_padding_left_out_is_told_with_the_others_that_give_the_size(
    expected: dict[str, Any], answer: list[int], mistakes: list[str]
) -> None:
    result = judge({"op": "conv_shape", **expected}, answer)
    assert result["correct"] is False
    assert codes(result) == mistakes
    lead = f"Your answer fits {len(mistakes)} mistakes; if yours is this one, "
    if len(mistakes) == 1:
        lead = ""
    assert all(d["message"].startswith(lead) for d in result["diagnosis"])
    assert all("padding" in d["message"] for d in result["diagnosis"] if "padding" in d["code"])


def test_a_tensor_that_two_mistakes_give_is_told_as_either() -> None:
    """Within a loose tolerance, [-1, 1, -1, 1] is both [1, -1, 1, -1.05] with its sign flipped
    and read one position later (wrapping around)."""
    expected = {"op": "value", "value": [1.0, -1.0, 1.0, -1.05]}
    result = judge(expected, [-1.0, 1.0, -1.0, 1.0], tolerance={"rtol": 0.1})
    assert codes(result) == ["sign_flipped", "off_by_one"]
    lead = "Your answer fits 2 mistakes; if yours is this one, "
    assert all(d["message"].startswith(lead) for d in result["diagnosis"])
    assert result["diagnosis"][0]["message"] == (
        lead + "your answer is the negative of the key: the sign is flipped (a minus sign lost "
        "or added, or the difference taken the other way round)."
    )


def flipped_conv_derivatives(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dy/dW, dl/dW and dl/dx of a signal-processing convolution, the kernel read backwards:
    y[i] = sum_c sum_m W[c, m] x[c, 2i + 2 - m] (0-based, K = 3), by plain loops."""
    dy_dw = np.zeros((1, 3, 1, 5, 3))
    dl_dx = np.zeros((5, 7))
    for i in range(3):
        for c in range(5):
            for m in range(3):
                dy_dw[0, i, 0, c, m] = X[c, 2 * i + 2 - m]
                dl_dx[c, 2 * i + 2 - m] += UPSTREAM[0, i] * weight[0, c, m]
    dl_dw = np.einsum("i,icm->cm", UPSTREAM[0], dy_dw[0, :, 0])[None]
    return dy_dw, dl_dw, dl_dx


# The seed's kernel [-1, 0, 1] read backwards is its negative (told as either, below): dl/dx
# is tried with a kernel that is not.
LOPSIDED = np.array([[[1.0, 2.0, 0.5]] * 5])


@pytest.mark.parametrize("which", ["dy/dW", "dl/dW", "dl/dx"])
def test_a_flipped_kernel_is_told_against_the_weight_too(which: str) -> None:
    """Seed 1.1(c)(ii) and (iv) by a student who convolves as in signal processing: the
    derivatives against W hold only x, read backwards along the kernel; recomputing them with
    the weight flipped gave the key itself, and the mistake went untold. dl/dx (a gradient
    was not tried at all) is recomputed with the kernel flipped."""
    dy_dw, dl_dw, _ = flipped_conv_derivatives(W)
    _, _, dl_dx = flipped_conv_derivatives(LOPSIDED)
    lopsided = {**BACKWARD_X, "params": {"weight": LOPSIDED.tolist()}}
    expected, answer = {
        "dy/dW": (JACOBIAN_W, dy_dw),
        "dl/dW": (BACKWARD_W, dl_dw),
        "dl/dx": (lopsided, dl_dx),
    }[which]
    result = judge(expected, answer.tolist())
    assert result["correct"] is False
    assert codes(result) == ["kernel_flipped"], result["diagnosis"]


@pytest.mark.parametrize(
    ("expected", "answer", "codes_told"),
    [
        # The seed's kernel [-1, 0, 1] read backwards is its negative.
        (JACOBIAN_X, -seed_dy_dx(), ["sign_flipped", "kernel_flipped"]),
        # Stride 1 and "same" padding of an odd kernel: dy/dx with the kernel read backwards
        # is dy/dx with its halves swapped (y's position and x's trade places).
        (
            {
                "op": "jacobian",
                "model": "conv1d",
                "config": {"padding": 1},
                "params": {"weight": [[[1.0, 2.0, 3.0]]]},
                "inputs": {"x": [[1.0, 2.0, 3.0, 4.0]]},
                "of": "y",
                "wrt": "x",
            },
            np.array(
                [[[[2, 1, 0, 0]], [[3, 2, 1, 0]], [[0, 3, 2, 1]], [[0, 0, 3, 2]]]], dtype=float
            ),
            ["jacobian_halves_swapped", "kernel_flipped"],
        ),
    ],
    ids=["seed-kernel-negated", "same-padding-halves"],
)
def test_a_flipped_kernel_that_another_mistake_also_gives_is_told_as_either(
    expected: dict[str, Any], answer: np.ndarray, codes_told: list[str]
) -> None:
    """Two different mistakes that give one answer are both told, neither as a fact: the
    student told only "the halves are swapped" transposes, scores, and never learns that the
    layer is a cross-correlation. (A mistake that merely describes an answer again, a
    column-major read that is a transpose, is still told once.)"""
    result = judge(expected, answer.tolist())
    assert result["correct"] is False
    assert codes(result) == codes_told, result["diagnosis"]
    lead = "Your answer fits 2 mistakes; if yours is this one, "
    assert all(d["message"].startswith(lead) for d in result["diagnosis"])

"""The homework's own answers, computed from its closed forms and equations in numpy, with no
torch and no service code: the independent oracle of the grading tests.

Each function is one boxed result (or the equations) of the seed, written with 0-based arrays:
the seed's 1-based x[c, 2i - 1 + m] is ``x[c, 2 * i + m]`` here, and its h[t] is row ``t - 1``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

# -- 1.1: the 1-D convolution with one filter, kernel 3, stride 2 (C = 5, L = 7, L_out = 3) --

STRIDE, KERNEL = 2, 3


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Seed 1.1(b): floor((H + 2P - D(K - 1) - 1) / S) + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_forward(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Seed 1.1(c)(i): f_W(x)[1, i] = sum_c sum_m W[1, c, m] x[c, 2i - 1 + m]."""
    channels, length = x.shape
    out = conv_output_size(length, KERNEL, STRIDE, 0, 1)
    return np.array(
        [
            [
                sum(
                    w[0, c, m] * x[c, STRIDE * i + m]
                    for c in range(channels)
                    for m in range(KERNEL)
                )
                for i in range(out)
            ]
        ]
    )


def conv_jacobian_weight(x: np.ndarray) -> np.ndarray:
    """Seed 1.1(c)(ii): d f[1, i] / d W[1, c, m] = x[c, 2i - 1 + m], shaped 1 x 3 x 1 x 5 x 3."""
    channels, length = x.shape
    out = conv_output_size(length, KERNEL, STRIDE, 0, 1)
    jac = np.zeros((1, out, 1, channels, KERNEL))
    for i, c, m in itertools.product(range(out), range(channels), range(KERNEL)):
        jac[0, i, 0, c, m] = x[c, STRIDE * i + m]
    return jac


def conv_jacobian_input(w: np.ndarray, length: int) -> np.ndarray:
    """Seed 1.1(c)(iii): d f[1, i] / d x[c, n] = W[1, c, n - 2i + 1] in the window, else 0."""
    channels = w.shape[1]
    out = conv_output_size(length, KERNEL, STRIDE, 0, 1)
    jac = np.zeros((1, out, channels, length))
    for i, c, n in itertools.product(range(out), range(channels), range(length)):
        if 0 <= n - STRIDE * i < KERNEL:
            jac[0, i, c, n] = w[0, c, n - STRIDE * i]
    return jac


def conv_grad_weight(x: np.ndarray, dl_dy: np.ndarray) -> np.ndarray:
    """Seed 1.1(c)(iv): dl/dW[1, c, m] = sum_i dl/df[1, i] x[c, 2i - 1 + m]."""
    channels = x.shape[0]
    out = dl_dy.shape[1]
    return np.array(
        [
            [
                [sum(dl_dy[0, i] * x[c, STRIDE * i + m] for i in range(out)) for m in range(KERNEL)]
                for c in range(channels)
            ]
        ]
    )


# -- 1.2.1: the gated RNN, equations (1)-(2), h[0] = 0 --


def sigmoid(z: np.ndarray) -> np.ndarray:
    result: np.ndarray = 1 / (1 + np.exp(-z))
    return result


def gated_rnn(
    w_c: np.ndarray, w_h: np.ndarray, w_x: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equations (1)-(2): rows t - 1 of h[t], c[t] and of the gate's argument z[t]."""
    h_prev = np.zeros(w_h.shape[0])
    hs, cs, zs = [], [], []
    for x_t in x:
        z = w_c @ x_t + w_h @ h_prev  # (1)
        c = sigmoid(z)
        h_prev = c * h_prev + (1 - c) * (w_x @ x_t)  # (2)
        hs.append(h_prev)
        cs.append(c)
        zs.append(z)
    return np.array(hs), np.array(cs), np.array(zs)


GATE_SLOPES = ("sigmoid'", "tanh'", "sigmoid", "sigmoid' of W_c x", "sigmoid' of c", "none")
"""What stands for the gate's derivative s'(z[t]) in ``gated_state_jacobians``: the right one,
then the typical mistakes (tanh's derivative 1 - c^2, the sigmoid c itself, s' taken at
W_c x[t] without W_h h[t-1], s' taken at c[t]: the sigmoid applied twice; none: the path
through the gate left out)."""


def gated_state_jacobians(
    w_c: np.ndarray, w_h: np.ndarray, w_x: np.ndarray, x: np.ndarray, slope: str = "sigmoid'"
) -> np.ndarray:
    """Seed 1.2.1(d): dh[t]/dh[t-1] = diag(c[t]) + diag(h[t-1] - W_x x[t]) diag(s'(z[t])) W_h,
    s' the derivative of the sigmoid (or what ``slope`` of ``GATE_SLOPES`` says instead)."""
    h, c, z = gated_rnn(w_c, w_h, w_x, x)
    h_before = np.vstack([np.zeros(h.shape[1]), h[:-1]])
    argument = {"sigmoid' of W_c x": x @ w_c.T, "sigmoid' of c": c}.get(slope, z)
    derivative = {"tanh'": 1 - c**2, "sigmoid": c, "none": 0 * c}.get(
        slope, sigmoid(argument) * (1 - sigmoid(argument))
    )
    return np.array(
        [
            np.diag(c[t]) + np.diag(h_before[t] - w_x @ x[t]) @ np.diag(derivative[t]) @ w_h
            for t in range(len(x))
        ]
    )


def gated_gate_path_missing(
    w_c: np.ndarray, w_h: np.ndarray, w_x: np.ndarray, x: np.ndarray
) -> np.ndarray:
    """A typical wrong 1.2.1(d): only the direct path diag(c[t])."""
    _, c, _ = gated_rnn(w_c, w_h, w_x, x)
    return np.array([np.diag(c_t) for c_t in c])


def gated_grad_w_x(
    w_c: np.ndarray,
    w_h: np.ndarray,
    w_x: np.ndarray,
    x: np.ndarray,
    direct: np.ndarray,
    slope: str = "sigmoid'",
) -> np.ndarray:
    """Seed 1.2.1(c): dl/dW_x = sum_t (dl/dh[t] * (1 - c[t])) x[t]^T, with dl/dh[t] the total
    gradient through time of 1.2.1(d): dl/dh[t] = direct[t] + dl/dh[t+1] dh[t+1]/dh[t] (those
    Jacobians made with ``slope``, the gate's derivative or a mistake for it)."""
    _, c, _ = gated_rnn(w_c, w_h, w_x, x)
    jacobians = gated_state_jacobians(w_c, w_h, w_x, x, slope)
    total = np.zeros_like(direct)
    for t in reversed(range(len(x))):
        total[t] = direct[t] + (total[t + 1] @ jacobians[t + 1] if t + 1 < len(x) else 0)
    grad: np.ndarray = np.sum([np.outer(total[t] * (1 - c[t]), x[t]) for t in range(len(x))], 0)
    return grad


def gated_grad_w_x_direct_only(
    w_c: np.ndarray, w_h: np.ndarray, w_x: np.ndarray, x: np.ndarray, direct: np.ndarray
) -> np.ndarray:
    """A typical wrong 1.2.1(c): the seed's sum over the direct gradients alone."""
    _, c, _ = gated_rnn(w_c, w_h, w_x, x)
    grad: np.ndarray = np.sum([np.outer(direct[t] * (1 - c[t]), x[t]) for t in range(len(x))], 0)
    return grad


# -- 1.2.2: AttentionRNN(k) and AttentionRNN(inf), equations (3)-(8), h[t] = 0 for t < 1 --


def softmax(w: np.ndarray) -> np.ndarray:
    e = np.exp(w - w.max())
    result: np.ndarray = e / e.sum()
    return result


def _attend(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, sources: list[np.ndarray], params: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Equations (3)-(8) for one step: h[t] and a[t] over the given sources."""
    values = [v[p] @ s for p, s in zip(params, sources, strict=True)]  # (5)
    scores = np.array([(q[p] @ s) @ (k[p] @ s) for p, s in zip(params, sources, strict=True)])
    a = softmax(scores)  # (6)-(7)
    h: np.ndarray = np.sum([a_i * v_i for a_i, v_i in zip(a, values, strict=True)], axis=0)  # (8)
    return h, a


def attention_rnn(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, x: np.ndarray, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seed 1.2.2(c), (3')-(8'): index 0 projects x[t], index i projects h[t-i]. Returns the
    rows t - 1 of h[t] and of a[t]."""
    n = x.shape[1]
    states: list[np.ndarray] = []
    weights = []
    for t in range(len(x)):
        past = [states[t - i] if t - i >= 0 else np.zeros(n) for i in range(1, window + 1)]
        h_t, a_t = _attend(q, k, v, [x[t], *past], list(range(window + 1)))
        states.append(h_t)
        weights.append(a_t)
    return np.array(states), np.array(weights)


def attention_rnn_inf(q: np.ndarray, k: np.ndarray, v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Seed 1.2.2(d), (3'')-(8''): x[t] with (Q_0, K_0, V_0), every h[t-i], i = 1..t (h[0] = 0
    among them), with the shared (Q_h, K_h, V_h)."""
    n = x.shape[1]
    states: list[np.ndarray] = []
    for t in range(len(x)):
        past = [states[t - i] if t - i >= 0 else np.zeros(n) for i in range(1, t + 2)]
        h_t, _ = _attend(q, k, v, [x[t], *past], [0] + [1] * len(past))
        states.append(h_t)
    return np.array(states)


def attention_partial(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, x: np.ndarray, window: int, t: int, i: int
) -> np.ndarray:
    """Seed 1.2.2(e), for h[t-i] (0-based row t): dh[t]/dh[t-i] with every other argument fixed
    = a_i (v_i - h[t]) h[t-i]^T (Q_i^T K_i + K_i^T Q_i) + a_i V_i."""
    h, a = attention_rnn(q, k, v, x, window)
    before = h[t - i] if t - i >= 0 else np.zeros(x.shape[1])
    v_i = v[i] @ before
    a_i = a[t, i]
    quadratic = q[i].T @ k[i] + k[i].T @ q[i]
    partial: np.ndarray = a_i * np.outer(v_i - h[t], before) @ quadratic + a_i * v[i]
    return partial


def attention_state_jacobians(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, x: np.ndarray, window: int
) -> np.ndarray:
    """Seed 1.2.2(e): dh[t]/dh[t-1] for every t."""
    return np.array([attention_partial(q, k, v, x, window, t, 1) for t in range(len(x))])


def attention_step_mistakes(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, x: np.ndarray, window: int | None
) -> dict[str, np.ndarray]:
    """Typical wrong 1.2.2(e) answers: the seed's dh[t]/dh[t-1] = a_1 (v_1 - h[t]) h[t-1]^T
    (Q_1^T K_1 + K_1^T Q_1) + a_1 V_1 with one part changed, by the diagnosis code each one
    gets. ``window`` None is AttentionRNN(inf), whose index 1 projects every past state."""
    n = x.shape[1]
    states: list[np.ndarray] = []
    weights = []  # a_1[t], the weight of h[t-1]
    for t in range(len(x)):
        if window is None:
            past = [states[t - i] if t - i >= 0 else np.zeros(n) for i in range(1, t + 2)]
            h_t, a_t = _attend(q, k, v, [x[t], *past], [0] + [1] * len(past))
        else:
            past = [states[t - i] if t - i >= 0 else np.zeros(n) for i in range(1, window + 1)]
            h_t, a_t = _attend(q, k, v, [x[t], *past], list(range(window + 1)))
        states.append(h_t)
        weights.append(a_t[1])
    h = np.array(states)
    before = np.vstack([np.zeros(n), h[:-1]])
    product = q[1].T @ k[1]  # Q_1^T K_1: w_1 = h[t-1]^T Q_1^T K_1 h[t-1]

    def jacobians(score: np.ndarray, spread: Callable[[int], np.ndarray]) -> np.ndarray:
        # dw_1/dh[t-1] as the row vector h[t-1]^T score^T, times a_1 spread[t]
        return np.array(
            [
                weights[t] * np.outer(spread(t), score @ before[t]) + weights[t] * v[1]
                for t in range(len(x))
            ]
        )

    def centred(t: int) -> np.ndarray:
        return v[1] @ before[t] - h[t]

    return {
        "score_path_missing": np.array([a_1 * v[1] for a_1 in weights]),
        "score_gradient_one_sided": jacobians(product, centred),  # k_1 held fixed
        "score_gradient_doubled": jacobians(2 * product, centred),  # as if symmetric
        "softmax_coupling_missing": jacobians(product + product.T, lambda t: v[1] @ before[t]),
        "transposed": np.transpose(jacobians(product + product.T, centred), (0, 2, 1)),
    }


def attention_state_grads(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, x: np.ndarray, window: int, direct: np.ndarray
) -> np.ndarray:
    """Seed 1.2.2(f): dl/dh[T] = direct + sum_{t = T+1}^{min(T+k, K)} dl/dh[t] dh[t]/dh[T]."""
    steps = len(x)
    total = np.zeros_like(direct)
    for s in reversed(range(steps)):
        total[s] = direct[s] + sum(
            (
                total[t] @ attention_partial(q, k, v, x, window, t, t - s)
                for t in range(s + 1, min(s + window, steps - 1) + 1)
            ),
            np.zeros(x.shape[1]),
        )
    return total


# -- 1.3-4: a classifier of C = 4 classes before training --

CLASSES = 4
INITIAL_LOSS = math.log(CLASSES)  # -log(1/4) = log 4 ~ 1.386
INITIAL_ACCURACY = 1 / CLASSES  # 0.25


# -- every problem of the assignment cnn-rnn, answered from a student's given tensors --

Given = dict[str, np.ndarray]


def answer_to(problem: str, given: Given) -> Any:
    """The homework's answer to a problem of ``cnn-rnn`` for the student's given tensors, as
    JSON (nested lists, numbers, strings), the way a student would submit it."""
    answer = _ANSWERS[problem](given)
    return answer.tolist() if isinstance(answer, np.ndarray) else answer


def _window(given: Given) -> int:
    """k of AttentionRNN(k): the given Q, K, V hold k + 1 matrices."""
    return int(given["Q"].shape[0]) - 1


_ANSWERS: dict[str, Callable[[Given], Any]] = {
    # 1.1(a): floor((21 - 4)/4) + 1 = 5, floor((12 - 5)/4) + 1 = 2, written as the seed does
    "1.1a": lambda g: "5x2",
    "1.1b": lambda g: "floor((H + 2*P - D*(K - 1) - 1)/S) + 1",
    "1.1c-i": lambda g: conv_forward(g["x"], g["W"]),
    "1.1c-ii": lambda g: conv_jacobian_weight(g["x"]),
    "1.1c-iii": lambda g: conv_jacobian_input(g["W"], g["x"].shape[1]),
    "1.1c-iv": lambda g: conv_grad_weight(g["x"], g["dl_dy"]),
    "1.2.1b": lambda g: [int(g["m"])],  # c[t] is in R^m
    "1.2.1c": lambda g: gated_grad_w_x(g["W_c"], g["W_h"], g["W_x"], g["x"], g["dl_dh"]),
    "1.2.1d-jacobian": lambda g: gated_state_jacobians(g["W_c"], g["W_h"], g["W_x"], g["x"]),
    "1.2.1d-vanishing": lambda g: "yes",  # "Yes, this network can suffer from ..."
    "1.2.2b": lambda g: [3],  # a[t] is in R^3
    "1.2.2c": lambda g: attention_rnn(g["Q"], g["K"], g["V"], g["x"], _window(g))[0],
    "1.2.2d": lambda g: attention_rnn_inf(g["Q"], g["K"], g["V"], g["x"]),
    "1.2.2e": lambda g: attention_state_jacobians(g["Q"], g["K"], g["V"], g["x"], _window(g)),
    "1.2.2f": lambda g: attention_state_grads(
        g["Q"], g["K"], g["V"], g["x"], _window(g), g["dl_dh"]
    ),
    "1.3-4-loss": lambda g: INITIAL_LOSS,
    "1.3-4-accuracy": lambda g: INITIAL_ACCURACY,
}

"""Named OpenAPI examples taken from the homework, so "Try it out" shows the seed's answers.

/docs is public: no summary states the answer of a problem that is the same for every student
of the built-in assignment (1.1(a), 1.1(b), the loss and accuracy of 1.3); the computation
itself needs an instructor's key."""

from __future__ import annotations

from typing import Any

PATH_PARAMETERS = "x-path-parameters"
"""The member of a body example that names the path it is for (``{"model": "conv1d"}``).

Swagger UI's "Try it out" sends the body example chosen to the path its fields hold, whatever
the example is for: a conv1d body sent to attention_rnn is a 422. So each example of a route
with several paths says which to pick, in its summary for the reader and here for a program;
the path parameters of the first are pre-filled to match (``openapi.prefill_path_parameters``),
so that Execute with nothing changed answers 200."""


def for_path(summary: str, value: Any, description: str, **parameters: str) -> dict[str, Any]:
    """A named body example for the path whose parameters are ``parameters``: its summary
    begins by saying what to pick in each ("Pick model conv1d: ...")."""
    picks = ", ".join(f"{name} {chosen}" for name, chosen in parameters.items())
    return {
        "summary": f"Pick {picks}: {summary}",
        "description": description,
        "value": value,
        PATH_PARAMETERS: parameters,
    }


def for_model(model: str, summary: str, value: dict[str, Any]) -> dict[str, Any]:
    """A named body example of a model route, for ``model``."""
    description = (
        f"A body for `{model}`: choose `{model}` in the `model` field, where the request is "
        "sent (each model has params and inputs of its own, and another model answers 422)."
    )
    return for_path(summary, value, description, model=model)


# Seed 1.1(c): x in R^{5 x 7} (5 channels, length 7), one filter of kernel 3, stride 2.
SEED_X_5x7 = [[(c + n) % 4 - 1 for n in range(7)] for c in range(5)]
SEED_W_1x5x3 = [[[(c * 3 + m) % 3 - 1 for m in range(3)] for c in range(5)]]

CONV_SHAPE_EXAMPLES: dict[str, dict[str, Any]] = {
    "seed-1.1a": {
        "summary": "Seed 1.1(a): 21x12 input, 4x5 kernel, stride 4",
        "value": {"input_size": [21, 12], "kernel_size": [4, 5], "stride": 4, "padding": 0},
    },
    "seed-1.1c": {
        "summary": "Seed 1.1(c)(i): length 7, kernel 3, stride 2, 1 filter -> 1x3",
        "value": {
            "input_size": [7],
            "kernel_size": 3,
            "stride": 2,
            "in_channels": 5,
            "out_channels": 1,
        },
    },
    "dilated": {
        "summary": "Seed 1.1(b) with dilation 2 and padding 1 on a 3x32x32 input, 8 filters",
        "value": {
            "input_size": [32, 32],
            "kernel_size": 3,
            "stride": 1,
            "padding": 1,
            "dilation": 2,
            "in_channels": 3,
            "out_channels": 8,
        },
    },
    "transposed": {
        "summary": "Transposed convolution: 5x5 -> 11x11 (stride 2, kernel 3, output_padding 0)",
        "value": {"input_size": [5, 5], "kernel_size": 3, "stride": 2, "transposed": True},
    },
}

_SEED_CONV1D = {
    "config": {"stride": 2},
    "params": {"weight": SEED_W_1x5x3},
    "inputs": {"x": SEED_X_5x7},
}

# Seed 1.2.1: a small gated RNN, m = 2 hidden units, n = 3 inputs, T = 4 steps.
_GATED_RNN = {
    "params": {
        "W_c": [[0.5, -0.3, 0.2], [0.1, 0.4, -0.6]],
        "W_h": [[0.8, -0.2], [0.3, 0.7]],
        "W_x": [[1.0, 0.5, -0.5], [-0.4, 0.9, 0.3]],
    },
    "inputs": {
        "x": [[1.0, 0.0, -1.0], [0.5, 1.0, 0.0], [-0.5, 0.5, 1.0], [0.0, -1.0, 0.5]],
    },
}

# Seed 1.2.2: AttentionRNN(2) on n = 2, T = 4; Q, K, V hold (Q_0, Q_1, Q_2) etc., index 0
# for x[t] and index i for h[t-i].
_QKV_3x2x2: dict[str, list[list[list[float]]]] = {
    "Q": [[[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.2], [-0.1, 0.6]], [[0.3, -0.4], [0.2, 0.1]]],
    "K": [[[0.9, 0.1], [0.0, 0.8]], [[0.4, 0.0], [0.3, 0.5]], [[-0.2, 0.6], [0.1, 0.4]]],
    "V": [[[1.0, 0.2], [-0.3, 0.9]], [[0.7, -0.1], [0.2, 0.6]], [[0.5, 0.3], [-0.2, 0.4]]],
}
_X_4x2 = [[1.0, -0.5], [0.3, 0.8], [-0.6, 0.2], [0.4, 0.4]]
_ATTENTION_RNN_2 = {"config": {"k": 2}, "params": _QKV_3x2x2, "inputs": {"x": _X_4x2}}

# Seed 1.2.2(d): AttentionRNN(inf), index 1 (Q_h, K_h, V_h) shared by every past state.
_ATTENTION_RNN_INF = {
    "config": {"k": "inf"},
    "params": {name: value[:2] for name, value in _QKV_3x2x2.items()},
    "inputs": {"x": _X_4x2},
}

_DL_DH_4x2 = [[0.1, -0.2], [0.0, 0.3], [-0.1, 0.1], [1.0, 0.5]]

FORWARD_EXAMPLES: dict[str, dict[str, Any]] = {
    "seed-1.1c-i": for_model(
        "conv1d",
        "Seed 1.1(c)(i): C = 5, L = 7, K = 3, stride 2 -> y [1, 3]",
        _SEED_CONV1D,
    ),
    "gated-rnn": for_model(
        "gated_rnn",
        "Seed 1.2.1: m = 2, n = 3, T = 4 -> h, c [4, 2]",
        _GATED_RNN,
    ),
    "attention-rnn-2": for_model(
        "attention_rnn",
        "Seed 1.2.2: AttentionRNN(2), n = 2, T = 4 -> a [4, 3]",
        _ATTENTION_RNN_2,
    ),
    "attention-rnn-inf": for_model(
        "attention_rnn",
        "Seed 1.2.2(d): AttentionRNN(inf) -> a, w [4, 5]",
        _ATTENTION_RNN_INF,
    ),
}

BACKWARD_EXAMPLES: dict[str, dict[str, Any]] = {
    "seed-1.1c-iv": for_model(
        "conv1d",
        "Seed 1.1(c)(iv): dl/dW = sum_i dl/dy[i] x[c, 2i-1+m]",
        {**_SEED_CONV1D, "grad_outputs": {"y": [[1, -2, 3]]}},
    ),
    "gated-rnn": for_model(
        "gated_rnn",
        "Seed 1.2.1(c): dl/dW_x and state_grads from dl/dh",
        {**_GATED_RNN, "grad_outputs": {"h": _DL_DH_4x2}},
    ),
    "attention-rnn-2": for_model(
        "attention_rnn",
        "Seed 1.2.2(f): AttentionRNN(2), state_grads from dl/dh",
        {**_ATTENTION_RNN_2, "grad_outputs": {"h": _DL_DH_4x2}},
    ),
}

JACOBIAN_EXAMPLES: dict[str, dict[str, Any]] = {
    "seed-1.1c-ii": for_model(
        "conv1d",
        "Seed 1.1(c)(ii): dy/dW, shape [1, 3, 1, 5, 3]",
        {**_SEED_CONV1D, "of": "y", "wrt": "weight"},
    ),
    "seed-1.1c-iii": for_model(
        "conv1d",
        "Seed 1.1(c)(iii): dy/dx, shape [1, 3, 5, 7]",
        {**_SEED_CONV1D, "of": "y", "wrt": "x"},
    ),
    "gated-rnn": for_model(
        "gated_rnn",
        "Seed 1.2.1: dh/dW_x, shape [T, m, m, n] = [4, 2, 2, 3]",
        {**_GATED_RNN, "of": "h", "wrt": "W_x"},
    ),
    "attention-rnn-2": for_model(
        "attention_rnn",
        "Seed 1.2.2: da/dx for AttentionRNN(2), [4, 3, 4, 2]",
        {**_ATTENTION_RNN_2, "of": "a", "wrt": "x"},
    ),
}

STATE_JACOBIAN_EXAMPLES: dict[str, dict[str, Any]] = {
    "gated-rnn": for_model(
        "gated_rnn",
        "Seed 1.2.1(d): dh[t]/dh[t-1] and the verdict",
        _GATED_RNN,
    ),
    "attention-rnn-2": for_model(
        "attention_rnn",
        "Seed 1.2.2(e): dh[t]/dh[t-1] of AttentionRNN(2)",
        _ATTENTION_RNN_2,
    ),
    "attention-rnn-inf": for_model(
        "attention_rnn",
        "Seed 1.2.2(d)-(e): AttentionRNN(inf)",
        _ATTENTION_RNN_INF,
    ),
}

# Seed 1.3: a 4-class curve (Q, R, S, U) that starts at log 4 ~ 1.386 and whose last batches
# spike to 3-4 at a few epochs, as in the homework's plot.
SEED_BATCH_LOSSES = [
    [1.39, 1.38, 1.40, 1.37, 1.39],
    [1.30, 1.25, 1.22, 1.20, 1.18],
    [1.05, 0.98, 0.95, 0.90, 0.93],
    [0.80, 0.76, 0.72, 0.70, 3.40],
    [0.62, 0.60, 0.58, 0.55, 0.57],
    [0.50, 0.47, 0.45, 0.44, 0.46],
    [0.40, 0.38, 0.37, 0.35, 3.95],
    [0.33, 0.31, 0.30, 0.29, 0.30],
    [0.28, 0.27, 0.26, 0.25, 0.27],
    [0.25, 0.24, 0.23, 0.22, 2.90],
]
SEED_BATCH_ACCURACIES = [
    [0.25, 0.22, 0.28, 0.25, 0.25],
    [0.41, 0.44, 0.47, 0.50, 0.50],
    [0.56, 0.59, 0.62, 0.62, 0.59],
    [0.69, 0.72, 0.75, 0.75, 0.31],
    [0.78, 0.78, 0.81, 0.81, 0.81],
    [0.84, 0.84, 0.88, 0.88, 0.84],
    [0.88, 0.88, 0.91, 0.91, 0.28],
    [0.91, 0.94, 0.94, 0.94, 0.94],
    [0.94, 0.94, 0.94, 0.97, 0.94],
    [0.94, 0.97, 0.97, 0.97, 0.41],
]

LOSS_CURVE_EXAMPLES: dict[str, dict[str, Any]] = {
    "seed-1.3": {
        "summary": "Seed 1.3: 4 classes, last-batch spikes of 3-4 above the loss at the start",
        "value": {"batch_losses": SEED_BATCH_LOSSES, "num_classes": 4},
    },
    "seed-1.3-with-accuracy": {
        "summary": "Seed 1.3 with the batch accuracies (plots both panels with ?format=png)",
        "value": {
            "batch_losses": SEED_BATCH_LOSSES,
            "batch_accuracies": SEED_BATCH_ACCURACIES,
            "num_classes": 4,
        },
    },
    "api-minimal": {
        "summary": "Two epochs of three batches; the last batch of epoch 1 spikes",
        "value": {
            "batch_losses": [[1.41, 1.38, 1.35], [1.1, 0.9, 3.4]],
            "batch_accuracies": None,
            "num_classes": 4,
        },
    },
}

TEMPORAL_ORDER_EXAMPLES: dict[str, dict[str, Any]] = {
    "quick": {
        "summary": "Seed 1.3's task, short sequences: the seed's gated RNN learns it in seconds",
        "value": {"seed": 0},
    },
    "lstm-clipped": {
        "summary": "An LSTM with gradient clipping (seed 1.3, problem 3's improvement)",
        "value": {"cell": "lstm", "clip_grad_norm": 1.0, "epochs": 8, "seed": 1},
    },
    "half-lengths": {
        "summary": "Sequences of 50-55, t1 in [5, 10], t2 in [25, 30]: learnt in about 5 epochs",
        "value": {
            "length_range": [50, 55],
            "t1_range": [5, 10],
            "t2_range": [25, 30],
            "epochs": 6,
            "train_batches": 100,
        },
    },
    "paper-lengths": {
        "summary": "The paper's lengths: 100-110, t1 in [10, 20], t2 in [50, 60] (slow to learn)",
        "value": {
            "cell": "lstm",
            "length_range": [100, 110],
            "t1_range": [10, 20],
            "t2_range": [50, 60],
            "epochs": 3,
            "train_batches": 20,
            "clip_grad_norm": 1.0,
        },
    },
}

"""Named OpenAPI examples of ``/v1/check`` taken from the homework's own answers.

/docs is public, so no example is the right answer to a problem that is the same for every
student of the built-in assignment (1.1(a) and 1.1(b)): the shape and formula examples are
problems of the same kind that the assignment does not ask."""

from __future__ import annotations

from typing import Any

from service.examples import SEED_W_1x5x3, SEED_X_5x7

_SEED_CONV1D: dict[str, Any] = {
    "model": "conv1d",
    "config": {"stride": 2},
    "params": {"weight": SEED_W_1x5x3},
    "inputs": {"x": SEED_X_5x7},
}

# Seed 1.1(c)(ii): dy[i]/dW[c, m] = x[c, 2i - 1 + m] (1-based), x[c, 2i + m] 0-based.
SEED_DY_DW = [
    [[[[SEED_X_5x7[c][2 * i + m] for m in range(3)] for c in range(5)]] for i in range(3)]
]

_UPSTREAM = [1, -2, 3]
# Seed 1.1(c)(iv): dl/dW[c, m] = sum_i dl/dy[i] x[c, 2i + m] (0-based), shape [1, 5, 3] ...
_SEED_DL_DW = [
    [
        [sum(_UPSTREAM[i] * SEED_X_5x7[c][2 * i + m] for i in range(3)) for m in range(3)]
        for c in range(5)
    ]
]
# ... and the same numbers laid out [1, 3, 5]: a transposed answer.
_SEED_DL_DW_TRANSPOSED = [[[_SEED_DL_DW[0][c][m] for c in range(5)] for m in range(3)]]

# The output size of a transposed convolution (no output padding): not a problem of the
# assignment, whose 1.1(b) asks for the convolution's.
TRANSPOSED_OUTPUT_SIZE = "(H - 1)*S - 2*P + D*(K - 1) + 1"
CONV_VARIABLES = {"H": [1, 64], "K": [1, 8], "P": [0, 4], "S": [1, 4], "D": [1, 4]}

CHECK_EXAMPLES: dict[str, dict[str, Any]] = {
    "shape": {
        "summary": "A 32x32 input, 5x5 kernel, stride 2, padding 2; the answer 16x16",
        "value": {
            "expected": {
                "op": "conv_shape",
                "input_size": [32, 32],
                "kernel_size": [5, 5],
                "stride": 2,
                "padding": 2,
            },
            "answer": "16x16",
        },
    },
    "formula": {
        "summary": "A transposed convolution's output size, as a formula",
        "value": {
            "expected": {
                "op": "formula",
                "reference": TRANSPOSED_OUTPUT_SIZE,
                "variables": CONV_VARIABLES,
                "constraints": ["(H - 1)*S + D*(K - 1) >= 2*P"],
            },
            "answer": "S*(H - 1) + D*K - D - 2*P + 1",
        },
    },
    "seed-1.1c-ii": {
        "summary": "Seed 1.1(c)(ii): dy/dW of shape [1, 3, 1, 5, 3], x[c, 2i-1+m]",
        "value": {
            "expected": {"op": "jacobian", **_SEED_CONV1D, "of": "y", "wrt": "weight"},
            "answer": SEED_DY_DW,
            "tolerance": {"rtol": 1e-5, "atol": 1e-8},
        },
    },
    "wrong-transposed": {
        "summary": "Seed 1.1(c)(iv), wrong: dl/dW given as [1, 3, 5], its axes swapped",
        "value": {
            "expected": {
                "op": "backward",
                **_SEED_CONV1D,
                "grad_outputs": {"y": [_UPSTREAM]},
                "select": "weight",
            },
            "answer": _SEED_DL_DW_TRANSPOSED,
        },
    },
}

BATCH_EXAMPLES: dict[str, dict[str, Any]] = {
    "seed-mixed": {
        "summary": "Three answers, to a shape and to seed 1.1(c)(ii): right, wrong, right",
        "value": {
            "checks": [
                CHECK_EXAMPLES["shape"]["value"],
                {**CHECK_EXAMPLES["shape"]["value"], "answer": [17, 17]},
                CHECK_EXAMPLES["seed-1.1c-ii"]["value"],
            ]
        },
    },
}

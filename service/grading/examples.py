"""Named OpenAPI examples of ``/v1/check`` taken from the homework's own answers."""

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

CONV_OUTPUT_SIZE = "floor((H + 2*P - D*(K - 1) - 1)/S) + 1"
CONV_VARIABLES = {"H": [1, 64], "K": [1, 8], "P": [0, 4], "S": [1, 4], "D": [1, 4]}

CHECK_EXAMPLES: dict[str, dict[str, Any]] = {
    "seed-1.1a": {
        "summary": "Seed 1.1(a): 21x12 input, 4x5 kernel, stride 4; the answer 5x2",
        "value": {
            "expected": {
                "op": "conv_shape",
                "input_size": [21, 12],
                "kernel_size": [4, 5],
                "stride": 4,
                "padding": 0,
            },
            "answer": "5x2",
        },
    },
    "seed-1.1b": {
        "summary": "Seed 1.1(b): the output size with dilation, as a formula",
        "value": {
            "expected": {
                "op": "formula",
                "reference": CONV_OUTPUT_SIZE,
                "variables": CONV_VARIABLES,
                "constraints": ["H + 2*P >= D*(K - 1) + 1"],
            },
            "answer": "floor((H - D*(K - 1) - 1 + 2*P)/S) + 1",
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
        "summary": "Three answers to seed 1.1(a) and 1.1(c)(ii): right, wrong, right",
        "value": {
            "checks": [
                CHECK_EXAMPLES["seed-1.1a"]["value"],
                {**CHECK_EXAMPLES["seed-1.1a"]["value"], "answer": [6, 3]},
                CHECK_EXAMPLES["seed-1.1c-ii"]["value"],
            ]
        },
    },
}

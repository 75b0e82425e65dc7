"""Named OpenAPI examples taken from the homework, so "Try it out" shows the seed's answers."""

from __future__ import annotations

from typing import Any

# Seed 1.1(c): x in R^{5 x 7} (5 channels, length 7), one filter of kernel 3, stride 2.
SEED_X_5x7 = [[(c + n) % 4 - 1 for n in range(7)] for c in range(5)]
SEED_W_1x5x3 = [[[(c * 3 + m) % 3 - 1 for m in range(3)] for c in range(5)]]

CONV_SHAPE_EXAMPLES: dict[str, dict[str, Any]] = {
    "seed-1.1a": {
        "summary": "Seed 1.1(a): 21x12 input, 4x5 kernel, stride 4 -> 5x2",
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

FORWARD_EXAMPLES: dict[str, dict[str, Any]] = {
    "seed-1.1c-i": {
        "summary": "Seed 1.1(c)(i): conv1d, 5 channels, length 7, kernel 3, stride 2 -> y [1, 3]",
        "value": _SEED_CONV1D,
    },
}

BACKWARD_EXAMPLES: dict[str, dict[str, Any]] = {
    "seed-1.1c-iv": {
        "summary": "Seed 1.1(c)(iv): dl/dW = sum_i dl/dy[i] x[c, 2i-1+m]",
        "value": {**_SEED_CONV1D, "grad_outputs": {"y": [[1, -2, 3]]}},
    },
}

JACOBIAN_EXAMPLES: dict[str, dict[str, Any]] = {
    "seed-1.1c-ii": {
        "summary": "Seed 1.1(c)(ii): dy/dW, shape [1, 3, 1, 5, 3]",
        "value": {**_SEED_CONV1D, "of": "y", "wrt": "weight"},
    },
    "seed-1.1c-iii": {
        "summary": "Seed 1.1(c)(iii): dy/dx, shape [1, 3, 5, 7]",
        "value": {**_SEED_CONV1D, "of": "y", "wrt": "x"},
    },
}

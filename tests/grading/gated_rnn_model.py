"""A test-only gated RNN (the seed's equations (1)-(2)) registered as ``test_gated_rnn``.

It lets the checking engine's recurrent diagnoses be tested against a small, plain-torch
model written from the seed, whatever the service's own recurrent models are::

    c[t] = sigmoid(W_c x[t] + W_h h[t-1])                                   (1)
    h[t] = c[t] * h[t-1] + (1 - c[t]) * (W_x x[t])                          (2)
    dh[t]/dh[t-1] = diag(c[t]) + diag(h[t-1] - W_x x[t]) diag(sigma'(z[t])) W_h   (1.2.1(d))
    dl/dh[t] = dl/dh[t]|direct + dl/dh[t+1] dh[t+1]/dh[t]                    (BPTT)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from models.errors import InvalidConfig, ShapeMismatch
from models.registry import ArgSpec, ReferenceModel

NAME = "test_gated_rnn"


def parse_config(config: Mapping[str, Any]) -> None:
    if config:
        raise InvalidConfig("test_gated_rnn takes no config", "config")


def output_shapes(
    config: None, shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    (m, n), (seq_len, n_x) = shapes["W_c"], shapes["x"]
    if shapes["W_h"] != (m, m) or shapes["W_x"] != (m, n) or n_x != n:
        raise ShapeMismatch("W_c [m,n], W_h [m,m], W_x [m,n] and x [T,n] do not fit", "params")
    if shapes.get("h0", (m,)) != (m,):
        raise ShapeMismatch("h0 must be [m]", "inputs.h0")
    return {"h": (seq_len, m), "c": (seq_len, m)}


def run(args: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """h (T, m), c (T, m) and h_prev (T, m): row t-1 is h[t-1]."""
    w_c, w_h, w_x, x = args["W_c"], args["W_h"], args["W_x"], args["x"]
    h = args["h0"] if "h0" in args else x.new_zeros(w_h.shape[0])
    hs, cs, prevs = [], [], []
    for t in range(x.shape[0]):
        c = torch.sigmoid(w_c @ x[t] + w_h @ h)  # (1)
        prevs.append(h)
        h = c * h + (1 - c) * (w_x @ x[t])  # (2)
        hs.append(h)
        cs.append(c)
    return torch.stack(hs), torch.stack(cs), torch.stack(prevs)


def forward(config: None, args: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    h, c, _ = run(args)
    return {"h": h, "c": c}


def step_jacobians(args: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """dh[t]/dh[t-1] for every t, the seed's closed form of 1.2.1(d): (T, m, m)."""
    _, c, h_prev = run(args)
    gate = (h_prev - args["x"] @ args["W_x"].T) * c * (1 - c)  # (T, m)
    return torch.diag_embed(c) + gate[:, :, None] * args["W_h"]


def state_jacobians(config: None, args: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    jacobians = step_jacobians(args)
    return {
        "jacobians": jacobians,
        "step_norms": torch.linalg.matrix_norm(jacobians, ord=2),
        "verdict": "not judged by the test model",
    }


def state_grads(
    config: None, args: Mapping[str, torch.Tensor], grad_outputs: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """dl/dh[t] through time by the recursion g[t] = direct[t] + g[t+1] dh[t+1]/dh[t]."""
    if set(grad_outputs) != {"h"}:
        raise InvalidConfig("test_gated_rnn takes grad_outputs for h only", "grad_outputs")
    jacobians = step_jacobians(args)
    direct = grad_outputs["h"]
    total = [direct[-1]]
    for t in range(direct.shape[0] - 2, -1, -1):
        total.append(direct[t] + total[-1] @ jacobians[t + 1])
    return {"state_grads": torch.stack(total[::-1])}


TEST_GATED_RNN = ReferenceModel(
    name=NAME,
    summary="test-only gated RNN, equations (1)-(2)",
    params=(
        ArgSpec("W_c", ("m", "n"), "gate weights on x"),
        ArgSpec("W_h", ("m", "m"), "gate weights on h"),
        ArgSpec("W_x", ("m", "n"), "input weights"),
    ),
    inputs=(
        ArgSpec("x", ("T", "n"), "the sequence"),
        ArgSpec("h0", ("m",), "the initial state", optional=True),
    ),
    outputs=(ArgSpec("h", ("T", "m"), "states"), ArgSpec("c", ("T", "m"), "gates")),
    config=(),
    parse_config=parse_config,
    output_shapes=output_shapes,
    forward=forward,
    backward_extras=state_grads,
    extras=(
        ArgSpec(
            "state_grads",
            ("T", "m"),
            "the total dl/dh[t] through time",
            spoken="the gradients through time dl/dh[t]",
        ),
    ),
    state_jacobians=state_jacobians,
)


def example_args(seed: int = 0, seq_len: int = 5, m: int = 3, n: int = 2) -> dict[str, Any]:
    """Small random weights and a sequence, as nested lists (the wire form)."""
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> list[Any]:
        values: list[Any] = torch.randn(*shape, generator=generator, dtype=torch.float64).tolist()
        return values

    return {
        "params": {"W_c": draw(m, n), "W_h": draw(m, m), "W_x": draw(m, n)},
        "inputs": {"x": draw(seq_len, n), "h0": draw(m)},
    }

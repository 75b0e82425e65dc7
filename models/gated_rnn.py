"""The gated RNN of the homework's part 1.2.1, equations (1)-(2)::

    c[t] = sigmoid(W_c x[t] + W_h h[t-1])                      (1)
    h[t] = c[t] * h[t-1] + (1 - c[t]) * (W_x x[t])             (2)

with ``x[t]`` in R^n, ``h[t]``, ``c[t]`` in R^m, ``W_c``, ``W_x`` in R^{m x n}, ``W_h`` in
R^{m x m}, and ``h[0] = h0`` (zeros unless given). Time is 1-based in the seed and 0-based
here: row ``t-1`` of ``h`` is h[t].

The one-step state Jacobian is the seed's 1.2.1(d)::

    dh[t]/dh[t-1] = diag(c[t])                                          (direct path)
                  + diag(h[t-1] - W_x x[t]) diag(sigma'(z[t])) W_h       (through the gate)

with ``z[t] = W_c x[t] + W_h h[t-1]`` and ``sigma'(z) = sigma(z)(1 - sigma(z))``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from models import gradient_flow
from models.errors import InvalidConfig, LimitExceeded, ShapeMismatch
from models.limits import Limits
from models.overhead import STEP_SECONDS, Overhead
from models.state_offsets import offset_gradient

Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class GatedRNNConfig:
    """The gated RNN has no configuration; its sizes come from the tensors."""


def parse_config(config: Mapping[str, Any]) -> GatedRNNConfig:
    """Refuse any config key: equations (1)-(2) have none."""
    if config:
        first = sorted(config)[0]
        raise InvalidConfig(
            f"gated_rnn takes no config, got key(s) {sorted(config)}; its sizes come from "
            "the shapes of W_c, W_h, W_x and x",
            f"config.{first}",
        )
    return GatedRNNConfig()


def output_shapes(config: GatedRNNConfig, shapes: Shapes) -> dict[str, tuple[int, ...]]:
    """Check that W_c, W_h, W_x, x and h0 fit together; answer h and c's shapes.

    Args:
        shapes: the declared shapes of ``W_c [m, n]``, ``W_h [m, m]``, ``W_x [m, n]``,
            ``x [T, n]`` and optionally ``h0 [m]``.

    Returns:
        ``{"h": (T, m), "c": (T, m)}``.
    """
    w_c, w_h, w_x, x = shapes["W_c"], shapes["W_h"], shapes["W_x"], shapes["x"]
    if len(x) != 2:
        raise ShapeMismatch(
            f"x must be [T, n] (one row per time step), got shape {list(x)}", "inputs.x"
        )
    seq_len, n = x
    if len(w_h) != 2 or w_h[0] != w_h[1]:
        raise ShapeMismatch(f"W_h must be square [m, m], got shape {list(w_h)}", "params.W_h")
    m = w_h[0]
    if len(w_c) == 2 and w_c == w_x and w_c[0] == m and w_c[1] != n:
        # W_c and W_x agree on n: the input is the odd one out.
        raise ShapeMismatch(
            f"x must be [T, n] with n = {w_c[1]}, the width of W_c and W_x {list(w_c)}; got "
            f"shape {list(x)}",
            "inputs.x",
        )
    for name, shape in (("W_c", w_c), ("W_x", w_x)):
        if shape != (m, n):
            raise ShapeMismatch(
                f"{name} must be [m, n] = [{m}, {n}] (m from W_h {list(w_h)}, n from x "
                f"{list(x)}), got shape {list(shape)}",
                f"params.{name}",
            )
    h0 = shapes.get("h0")
    if h0 is not None and h0 != (m,):
        raise ShapeMismatch(f"h0 must be [m] = [{m}], got shape {list(h0)}", "inputs.h0")
    return {"h": (seq_len, m), "c": (seq_len, m)}


def overhead(config: GatedRNNConfig, shapes: Shapes) -> Overhead:
    """The fixed costs of its passes: the loop over time steps (``models.overhead``)."""
    steps = shapes["x"][0]
    return Overhead(backward=steps * STEP_SECONDS, batched=steps * BATCHED_STEP_SECONDS)


BATCHED_STEP_SECONDS = 1.5e-4
"""A step of a backward pass batched over one chunk of ``jacrev``'s rows, on top of its
operations: about 0.3 ms measured at 128 steps (m = 16, n = 4, one chunk), 0.1-0.2 ms per
chunk and step at 1,024 steps (dh/dx, 35 chunks: 6.1 s)."""


def check_shape_limits(config: GatedRNNConfig, shapes: Shapes, limits: Limits) -> None:
    """Refuse a sequence or a hidden state longer than the configured limits."""
    x, w_h = shapes.get("x", ()), shapes.get("W_h", ())
    if len(x) == 2 and x[0] > limits.max_sequence_length:
        raise LimitExceeded(
            f"x has {x[0]} time steps; the limit max_sequence_length is "
            f"{limits.max_sequence_length}",
            "inputs.x",
        )
    if w_h and w_h[0] > limits.max_hidden_size:
        raise LimitExceeded(
            f"W_h declares hidden size m = {w_h[0]}; the limit max_hidden_size is "
            f"{limits.max_hidden_size}",
            "params.W_h",
        )


def gated_rnn(
    W_c: torch.Tensor,
    W_h: torch.Tensor,
    W_x: torch.Tensor,
    x: torch.Tensor,
    h0: torch.Tensor | None = None,
    state_offsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run equations (1)-(2) over the sequence.

    Args:
        W_c, W_h, W_x: ``[m, n]``, ``[m, m]``, ``[m, n]``.
        x: ``[T, n]``, row ``t-1`` is x[t].
        h0: ``[m]``, the state before the first step (zeros when ``None``).
        state_offsets: ``[T, m]`` added to each h[t] as it is produced (``None``: none).
            Zero offsets leave the model unchanged; the gradient against them is the total
            dl/dh[t] through time, which is how ``state_grads`` is computed.

    Returns:
        ``(h, c)``, both ``[T, m]``.

    Example:
        >>> W = torch.zeros(1, 1, dtype=torch.float64)
        >>> h, c = gated_rnn(W, W, W + 2, torch.ones(2, 1, dtype=torch.float64))
        >>> h.tolist(), c.tolist()  # c = sigmoid(0) = 1/2, h[t] = h[t-1]/2 + 1
        ([[1.0], [1.5]], [[0.5], [0.5]])
    """
    m = W_h.shape[0]
    h_prev = h0 if h0 is not None else x.new_zeros(m)  # (m,)
    # W_c x[t] and W_x x[t] for every t at once, then one row per step. The rows come from
    # ``unbind``, not ``gate_in[t]``: the gradient of an indexed row is a zero-filled (T, m)
    # tensor with one row set, so T of them cost O(T^2 m) (per row of a Jacobian, under vmap),
    # where ``unbind``'s gradient stacks the T rows once.
    gate_in = (x @ W_c.T).unbind(0)  # T x (m,)
    candidate = (x @ W_x.T).unbind(0)  # T x (m,)
    offsets = state_offsets.unbind(0) if state_offsets is not None else None
    hs, cs = [], []
    for t in range(x.shape[0]):
        z_t = gate_in[t] + W_h @ h_prev  # (m,)
        c_t = torch.sigmoid(z_t)  # (m,)  eq (1)
        # 1 - c[t] as sigmoid(-z[t]): the same number, but exact where the gate saturates
        # (at z = 40, 1 - c rounds to 0 where the true 4.2e-18 scales W_x x[t] into h[t]).
        h_t = c_t * h_prev + torch.sigmoid(-z_t) * candidate[t]  # (m,)  eq (2)
        if offsets is not None:
            h_t = h_t + offsets[t]
        hs.append(h_t)
        cs.append(c_t)
        h_prev = h_t
    return torch.stack(hs), torch.stack(cs)  # (T, m), (T, m)


def forward(config: GatedRNNConfig, args: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every output of the registry's ``gated_rnn``: ``h [T, m]`` and ``c [T, m]``."""
    h, c = gated_rnn(args["W_c"], args["W_h"], args["W_x"], args["x"], args.get("h0"))
    return {"h": h, "c": c}


def state_grads(
    config: GatedRNNConfig,
    args: Mapping[str, torch.Tensor],
    grad_outputs: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """``state_grads [T, m]``: the total dl/dh[t] through time (seed 1.2.1(d)'s sum).

    It includes every path from h[t] to the loss: directly, through every later state, and
    through the later gates c[t+1], ... when ``grad_outputs`` names ``c``. A state no path
    reaches gets 0: the last one when only ``c`` is named (every one at T = 1).
    """
    seq_len, m = args["x"].shape[0], args["W_h"].shape[0]
    offsets = args["x"].new_zeros(seq_len, m).requires_grad_(True)  # (T, m)
    with torch.enable_grad():
        h, c = gated_rnn(
            args["W_c"].detach(),
            args["W_h"].detach(),
            args["W_x"].detach(),
            args["x"].detach(),
            args["h0"].detach() if "h0" in args else None,
            offsets,
        )
        outputs = {"h": h, "c": c}
        grad = offset_gradient(outputs, grad_outputs, offsets)
    return {"state_grads": grad}


def step_jacobians(
    W_c: torch.Tensor,
    W_h: torch.Tensor,
    W_x: torch.Tensor,
    x: torch.Tensor,
    h0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """dh[t]/dh[t-1] for t = 1..T in closed form (seed 1.2.1(d)), and the terms behind it.

    Returns:
        ``(jacobians [T, m, m], terms)``: entry t-1 is dh[t]/dh[t-1]; ``terms`` holds the
        parts of the formula, averaged over the steps t = 2..T whose Jacobians make up
        dh[t]/dh[1] (the one step when T = 1), for the verdict's explanation.
    """
    with torch.no_grad():
        h, c = gated_rnn(W_c, W_h, W_x, x, h0)  # (T, m), (T, m)
        m = W_h.shape[0]
        h_prev = torch.cat([(h0 if h0 is not None else x.new_zeros(m))[None], h[:-1]])  # (T, m)
        z = x @ W_c.T + h_prev @ W_h.T  # (T, m)  the gates' arguments z[t]
        # sigma'(z[t]) = sigma(z)(1 - sigma(z)), with 1 - sigma(z) as sigma(-z) (exact where
        # the gate saturates, as in the forward pass).
        sigma_prime = c * torch.sigmoid(-z)  # (T, m)
        direct = torch.diag_embed(c)  # (T, m, m)  diag(c[t])
        gate_scale = (h_prev - x @ W_x.T) * sigma_prime  # (T, m)  (h[t-1] - W_x x[t]) sigma'
        through_gate = gate_scale[:, :, None] * W_h  # (T, m, m)  diag(.) diag(sigma') W_h
        jacobians = direct + through_gate  # (T, m, m)
        gradient_flow.require_finite(jacobians)  # before the terms' norms, which need it
        steps = gradient_flow.judged(x.shape[0])  # the factors of dh[t]/dh[1] only
        terms = {
            "mean_gate": c[steps].mean().item(),
            "saturated_fraction": (sigma_prime[steps] < gradient_flow.SATURATED_SIGMA_PRIME)
            .double()
            .mean()
            .item(),
            "W_h_spectral_norm": torch.linalg.matrix_norm(W_h, ord=2).item(),
            "direct_path_norm": c[steps].max(dim=1).values.mean().item(),
            "indirect_path_norm": torch.linalg.matrix_norm(through_gate[steps], ord=2)
            .mean()
            .item(),
        }
    return jacobians, terms


def explain(verdict: str, growth: float, terms: Mapping[str, float], steps: int) -> str:
    """One sentence of why, in the seed's 1.2.1(d) terms: the gate c[t], sigmoid saturation,
    and the spectral norm of W_h."""
    dominant = (
        "the direct path dominates"
        if terms["direct_path_norm"] >= terms["indirect_path_norm"]
        else "the indirect path through the gate dominates"
    )
    return (
        f"{gradient_flow.lead(verdict, growth, steps)}: the direct path diag(c[t]) has "
        f"spectral norm {terms['direct_path_norm']:.3g} on average (the gates c[t] average "
        f"{terms['mean_gate']:.3g}) and the indirect path diag(h[t-1] - W_x x[t]) "
        f"diag(sigma'(z[t])) W_h has {terms['indirect_path_norm']:.3g} (||W_h||_2 = "
        f"{terms['W_h_spectral_norm']:.3g}; the sigmoid is saturated, sigma' < "
        f"{gradient_flow.SATURATED_SIGMA_PRIME}, which blocks this path, for "
        f"{terms['saturated_fraction']:.0%} of the gates), so {dominant}."
    )


def state_jacobians(config: GatedRNNConfig, args: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The one-step Jacobians and what they say about vanishing or exploding gradients."""
    jacobians, terms = step_jacobians(
        args["W_c"], args["W_h"], args["W_x"], args["x"], args.get("h0")
    )
    flow = gradient_flow.analyse(jacobians)
    reason = explain(flow.verdict, flow.growth_factor, terms, jacobians.shape[0])
    return flow.answer(jacobians, reason, terms)

"""The test-only gated RNN against torch.autograd and finite differences (two oracles), so the
recurrent diagnoses are tested against a trustworthy model."""

from __future__ import annotations

import torch

from tests.grading.gated_rnn_model import example_args, run, state_grads, step_jacobians
from tests.helpers import finite_difference_jacobian


def tensors() -> dict[str, torch.Tensor]:
    raw = example_args(seed=3)
    return {
        name: torch.tensor(value, dtype=torch.float64)
        for section in raw.values()
        for name, value in section.items()
    }


def test_step_jacobians_match_autograd_and_finite_differences() -> None:
    args = tensors()
    jacobians = step_jacobians(args)
    _, _, h_prev = run(args)
    for t in range(args["x"].shape[0]):
        # h[t] as a function of h[t-1] alone, every other argument held fixed: equation (2).
        def step(h: torch.Tensor, t: int = t) -> torch.Tensor:
            c = torch.sigmoid(args["W_c"] @ args["x"][t] + args["W_h"] @ h)
            return c * h + (1 - c) * (args["W_x"] @ args["x"][t])

        auto = torch.autograd.functional.jacobian(step, h_prev[t])
        torch.testing.assert_close(jacobians[t], auto, rtol=1e-10, atol=1e-12)
        numeric = finite_difference_jacobian(step, h_prev[t])
        torch.testing.assert_close(jacobians[t], numeric, rtol=1e-6, atol=1e-8)


def test_state_grads_match_autograd_through_time() -> None:
    args = tensors()
    upstream = torch.randn(args["x"].shape[0], 3, dtype=torch.float64)
    ours = state_grads(None, args, {"h": upstream})["state_grads"]
    # dl/dh[t] through time: the gradient wrt an offset added to h[t] after step t.
    offsets = torch.zeros_like(upstream, requires_grad=True)
    h = args["h0"]
    states = []
    for t in range(args["x"].shape[0]):
        c = torch.sigmoid(args["W_c"] @ args["x"][t] + args["W_h"] @ h)
        h = c * h + (1 - c) * (args["W_x"] @ args["x"][t]) + offsets[t]
        states.append(h)
    (grad,) = torch.autograd.grad((torch.stack(states) * upstream).sum(), offsets)
    torch.testing.assert_close(ours, grad, rtol=1e-10, atol=1e-12)

"""The total gradient dl/dh[t] through time, as the gradient against zero state offsets.

A recurrent model that adds ``offsets[t]`` to each state h[t] as it is produced computes the
same thing when the offsets are zero, and the gradient of the loss against them is the total
dl/dh[t]: every path from h[t] to the loss, directly and through every later step (the seed's
1.2.1(d) sum and 1.2.2(f)).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def offset_gradient(
    outputs: Mapping[str, torch.Tensor],
    grad_outputs: Mapping[str, torch.Tensor],
    offsets: torch.Tensor,
) -> torch.Tensor:
    """dl/d(offsets) for ``l = sum_o sum(grad_outputs[o] * outputs[o])``.

    An output that no offset feeds into contributes nothing, and when none does the gradient
    is exactly zero: at T = 1, the gates c[1] of the gated RNN and the weights a[1] and scores
    w[1] of AttentionRNN are computed before any state, so they depend on no offset (autograd
    refuses such outputs outright, hence the filter, and ``materialize_grads`` turns an offset
    that no path reaches into zeros).

    Args:
        outputs: the model's outputs, computed with ``offsets`` (which requires grad) and with
            every other argument detached, so that only a path from an offset requires grad.
        grad_outputs: dl/d(output) for some of the outputs, each the output's shape.
        offsets: the ``[T, m]`` zero offsets the outputs were computed with.

    Returns:
        ``[T, m]``, row t-1 the total dl/dh[t], detached.

    Example:
        >>> offsets = torch.zeros(2, 1, dtype=torch.float64, requires_grad=True)
        >>> h = offsets.cumsum(0)  # h[t] = sum of the offsets up to t
        >>> gate = torch.ones(2, 1, dtype=torch.float64)  # depends on no offset
        >>> offset_gradient({"h": h, "c": gate}, {"c": gate}, offsets).tolist()
        [[0.0], [0.0]]
        >>> offset_gradient({"h": h, "c": gate}, {"h": gate, "c": gate}, offsets).tolist()
        [[2.0], [1.0]]
    """
    pairs = [(outputs[name], grad) for name, grad in grad_outputs.items()]
    reached = [(out, grad) for out, grad in pairs if out.requires_grad]
    if not reached:
        return torch.zeros_like(offsets).detach()
    (grad,) = torch.autograd.grad(
        [out for out, _ in reached],
        [offsets],
        [grad for _, grad in reached],
        allow_unused=True,
        materialize_grads=True,
    )
    return grad.detach()

"""Backward passes and Jacobians of any registered model, by autograd or closed form.

A model's own closed form is used where it has one; ``torch.func.jacrev`` is the fallback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch.func import jacrev

from models.registry import ReferenceModel, Tensors

JacobianMethod = Literal["closed-form", "autograd"]


def backward(
    model: ReferenceModel, config: Any, args: Tensors, grad_outputs: Tensors
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Outputs, the gradient of ``sum(grad_outputs[o] * o)`` wrt every given argument, extras.

    Args:
        grad_outputs: the upstream gradient dl/d(output) for some of the outputs; outputs
            not named receive no gradient.

    Returns:
        ``(outputs, grads, extras)``; ``extras`` is what the model's ``backward_extras`` adds.
    """
    leaves = {name: t.detach().requires_grad_(True) for name, t in args.items()}
    with torch.enable_grad():
        outputs = model.forward(config, leaves)
        pairs = [(outputs[name], grad) for name, grad in grad_outputs.items()]
        names = list(leaves)
        grads = torch.autograd.grad(
            [out for out, _ in pairs],
            [leaves[n] for n in names],
            grad_outputs=[g for _, g in pairs],
            allow_unused=True,
        )
    grads_by_name = {
        name: (g if g is not None else torch.zeros_like(leaves[name])).detach()
        for name, g in zip(names, grads, strict=True)
    }
    extras = model.backward_extras(config, args, grad_outputs) if model.backward_extras else {}
    return {k: v.detach() for k, v in outputs.items()}, grads_by_name, extras


def jacobian(
    model: ReferenceModel, config: Any, args: Tensors, of: str, wrt: str
) -> tuple[torch.Tensor, JacobianMethod]:
    """d(output ``of``)/d(argument ``wrt``), shaped ``of.shape + wrt.shape``, and how it was
    computed (``"closed-form"`` or ``"autograd"``)."""
    if model.closed_form_jacobian is not None:
        closed = model.closed_form_jacobian(config, args, of, wrt)
        if closed is not None:
            return closed, "closed-form"
    return autograd_jacobian(model, config, args, of, wrt), "autograd"


BATCH_ELEMENTS = 2**23
"""Most elements the rows of one batch of vector-Jacobian products may hold together (64 MiB
in float64). ``jacrev`` builds one cotangent row per output element; all at once, a Jacobian
of 65,536 outputs against a single weight would need a 65,536 x 65,536 basis (32 GiB)."""


def jacobian_chunk_size(model: ReferenceModel, config: Any, args: Tensors, of: str) -> int:
    """How many output rows one batch of ``jacrev`` computes, so a batch stays within
    ``BATCH_ELEMENTS``: each row holds an output-sized cotangent and argument-sized results."""
    shapes = {name: tuple(t.shape) for name, t in args.items()}
    rows = math.prod(model.output_shapes(config, shapes)[of])
    return _rows_per_chunk(rows, sum(t.numel() for t in args.values()))


def _rows_per_chunk(rows: int, argument_elements: int) -> int:
    return max(1, min(rows, BATCH_ELEMENTS // max(1, rows + argument_elements)))


def jacobian_chunk_count(rows: int, argument_elements: int) -> int:
    """How many batches ``jacrev`` runs for a Jacobian of ``rows`` output elements against
    arguments of ``argument_elements`` in all (``jacobian_chunk_size`` rows each)."""
    return -(-max(1, rows) // _rows_per_chunk(max(1, rows), argument_elements))


def autograd_jacobian(
    model: ReferenceModel, config: Any, args: Mapping[str, torch.Tensor], of: str, wrt: str
) -> torch.Tensor:
    """The Jacobian by reverse-mode autodiff (``torch.func.jacrev``), the generic fallback,
    in batches of rows whose memory is bounded whatever the output's size."""

    def output_of(value: torch.Tensor) -> torch.Tensor:
        return model.forward(config, {**args, wrt: value})[of]

    chunk = jacobian_chunk_size(model, config, args, of)
    result: torch.Tensor = jacrev(output_of, chunk_size=chunk)(args[wrt])
    return result.detach()

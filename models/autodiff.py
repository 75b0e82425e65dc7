"""Backward passes and Jacobians of any registered model, by autograd or closed form.

A model's own closed form is used where it has one; ``torch.func.jacrev`` is the fallback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch.func import jacrev

from models.registry import ReferenceModel, Shapes, Tensors

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

SAVED_ELEMENTS = 2**26
"""Most elements the batched backward pass of one batch of rows may keep alive besides
(512 MiB in float64): the gradients of the activations, one set per row, that a model's
``batched_row_elements`` counts. AttentionRNN(k) keeps about ``T * (k + 1) * n`` per row: by
``BATCH_ELEMENTS`` alone, dh/dQ of k = 256, n = 2 over 1,024 steps ran 1,168 rows at once
and took 4.4 GB."""


def jacobian_chunk_size(model: ReferenceModel, config: Any, args: Tensors, of: str) -> int:
    """How many output rows one batch of ``jacrev`` computes: each row holds an output-sized
    cotangent and argument-sized results, together within ``BATCH_ELEMENTS``, and what the
    model's batched backward keeps per row, within ``SAVED_ELEMENTS``."""
    shapes = {name: tuple(t.shape) for name, t in args.items()}
    rows = math.prod(model.output_shapes(config, shapes)[of])
    arguments = sum(t.numel() for t in args.values())
    return rows_per_chunk(rows, arguments, saved_row_elements(model, config, shapes))


def saved_row_elements(model: ReferenceModel, config: Any, shapes: Shapes) -> int:
    """Elements the model's batched backward keeps per row of a batch (0: not counted)."""
    count = model.batched_row_elements
    return count(config, shapes) if count is not None else 0


def rows_per_chunk(rows: int, argument_elements: int, saved_per_row: int = 0) -> int:
    """Rows of one batch: all of them where they fit, else as many as the budgets allow (at
    least one)."""
    fits = min(rows, BATCH_ELEMENTS // max(1, rows + argument_elements))
    if saved_per_row > 0:
        fits = min(fits, SAVED_ELEMENTS // saved_per_row)
    return max(1, fits)


def jacobian_chunk_count(rows: int, argument_elements: int, saved_per_row: int = 0) -> int:
    """How many batches ``jacrev`` runs for a Jacobian of ``rows`` output elements against
    arguments of ``argument_elements`` in all, its backward keeping ``saved_per_row`` elements
    per row (``jacobian_chunk_size`` rows each)."""
    return -(-max(1, rows) // rows_per_chunk(max(1, rows), argument_elements, saved_per_row))


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

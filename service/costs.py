"""Compute-time estimates from declared shapes, and the deadline they are held to.

A request is refused before it starts when its estimated time is over
``compute_deadline_seconds``, rather than started and cut off half-way: a client learns at once
that it must send less, and the worker is never tied up by work that would be thrown away.

The estimate counts floating-point operations (a model's own ``flops`` where it has one, a
generic count otherwise) and divides by a throughput assumed per device kind. Derivatives cost
a forward pass plus, per vector-Jacobian product, two passes' worth of arithmetic and the
memory traffic of one row (an output-sized cotangent in, argument-sized gradients out, each
element written and read a few times). A backward pass is one product; a Jacobian by reverse
mode is one per output element, which is what makes a Jacobian of a large output expensive
even when the model itself is cheap.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from models.overhead import Overhead
from models.registry import ReferenceModel, Shapes
from service.devices import cuda_available
from service.problems import body_problem
from service.settings import Settings


def forward_flops(model: ReferenceModel, config: object, shapes: Shapes, outputs: Shapes) -> int:
    """Floating-point operations of one forward pass, from the declared shapes.

    Without a model's own count, every parameter is taken to be used once (a multiply and an
    add) per row of the inputs, as a recurrence uses its weights once per time step, plus one
    operation per element read or written.

    Args:
        model: the model, whose ``flops`` is used where it has one.
        config: the model's parsed config.
        shapes: declared shapes of the given params and inputs, by name.
        outputs: declared shapes of the outputs, by name.

    Returns:
        The estimated count.
    """
    if model.flops is not None:
        return model.flops(config, shapes)
    params = sum(math.prod(shapes[s.name]) for s in model.params if s.name in shapes)
    rows = max((shapes[s.name][0] for s in model.inputs if shapes.get(s.name)), default=1)
    touched = sum(math.prod(s) for s in (*shapes.values(), *outputs.values()))
    return 2 * params * rows + touched


ROW_TRAFFIC = 4
"""Operations counted per element of a vector-Jacobian product's row: the cotangent is
written, read by the backward pass, and the gradient written and copied out."""


def operation_flops(forward: int, vector_jacobian_products: int = 0, row_elements: int = 0) -> int:
    """A forward pass, plus per vector-Jacobian product two passes' worth of arithmetic and the
    traffic of a row of ``row_elements`` (outputs and arguments together).

    Example:
        >>> operation_flops(1000, vector_jacobian_products=10, row_elements=50)
        23000
    """
    products = vector_jacobian_products
    return forward * (1 + 2 * products) + ROW_TRAFFIC * products * row_elements


def throughput(device: torch.device, settings: Settings) -> float:
    """Floating-point operations per second assumed on ``device``."""
    if device.type == "cuda":
        return settings.cuda_flops_per_second
    return settings.cpu_flops_per_second


Pass = Literal["forward", "backward", "jacobian"]
"""What autograd runs: nothing (a forward pass, or a closed form), one backward pass, or
``jacrev``'s batched backward passes, a chunk of rows at a time."""

FORWARD_SHARE = 1 / 6
"""A forward pass's share of a forward and backward pass's fixed costs."""


def fixed_seconds(overhead: Overhead | None, kind: Pass, chunks: int = 1, rows: int = 0) -> float:
    """Seconds of a model's fixed costs (``models.overhead``) for an operation.

    Args:
        overhead: the model's, or ``None`` (no fixed cost counted).
        kind: what autograd runs.
        chunks: for ``jacobian``, how many batches of rows ``jacrev`` runs.
        rows: for ``jacobian``, how many rows they hold in all (one per output element).

    Example:
        >>> fixed_seconds(Overhead(backward=6.0, batched=30.0), "jacobian", chunks=2)
        61.0
        >>> fixed_seconds(Overhead(6.0, 30.0, batched_row=0.5), "jacobian", chunks=2, rows=8)
        65.0
    """
    if overhead is None:
        return 0.0
    if kind == "forward":
        return FORWARD_SHARE * overhead.backward
    if kind == "backward":
        return overhead.backward
    return (
        FORWARD_SHARE * overhead.backward + chunks * overhead.batched + rows * overhead.batched_row
    )


def check_deadline(
    flops: int, device: torch.device, settings: Settings, fixed: float = 0.0, spent: float = 0.0
) -> None:
    """Refuse (422) a computation whose estimated time on ``device`` is over the deadline.

    Args:
        flops: its operation count.
        device: where it would run.
        settings: the deadline and the throughputs assumed.
        fixed: seconds of per-step costs on top of the operations (``fixed_seconds``).
        spent: seconds the request's computations before this one took (a batch of checks
            shares one deadline among its keys): the computation must fit in what is left.
    """
    rate = throughput(device, settings)
    seconds = flops / rate + fixed
    deadline = settings.compute_deadline_seconds
    if spent + seconds <= deadline:
        return
    if seconds <= deadline:
        message = (
            f"this computation needs an estimated {seconds:,.1f} s on {device.type}, and the "
            f"computations before it in this request took {spent:,.1f} s of the compute "
            f"deadline ({deadline:g} s); send it in another request"
        )
    else:
        hint = ", or ask for device 'cuda'" if device.type == "cpu" and cuda_available() else ""
        steps = (
            f" and {_seconds(fixed)} s of per-step work (a loop over time steps)" if fixed else ""
        )
        message = (
            f"this computation needs about {flops:.3g} floating-point operations{steps}, an "
            f"estimated {_seconds(seconds)} s on {device.type} at {rate:.3g} per second; the "
            f"limit is {deadline:g} s. Send smaller tensors{hint}."
        )
    raise body_problem(
        message, "over-compute-deadline", "Over the compute deadline", "compute_deadline"
    )


def _seconds(value: float) -> str:
    """Seconds as a message gives them: whole ones past 10, else two significant digits (a
    deadline set in milliseconds read "an estimated 0 s ... the limit is 1e-05 s")."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"

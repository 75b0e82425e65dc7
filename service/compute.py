"""From a decoded request to the arguments of a reference model: the one path every model
request takes (decode with budgets -> names and shapes checked -> tensors on the device), and
``computing``, the guard every computation runs under (deadline, then a device slot)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from models.autodiff import jacobian_chunk_count, saved_row_elements
from models.errors import ShapeMismatch, UnknownName
from models.limits import Limits
from models.registry import ReferenceModel, get_model
from service.budgets import check_outputs
from service.costs import (
    Pass,
    check_deadline,
    fixed_seconds,
    forward_flops,
    operation_flops,
    throughput,
)
from service.devices import resolve_device, resolve_dtype
from service.gate import ComputeGate
from service.problems import Problem
from service.schemas import ModelRequest
from service.settings import Settings
from service.tensors import Budget, TensorEncoding, decode, encode, to_torch


@dataclass
class Prepared:
    """A model request ready to compute."""

    model: ReferenceModel
    config: Any
    args: dict[str, torch.Tensor]
    output_shapes: dict[str, tuple[int, ...]]
    device: torch.device
    dtype: torch.dtype
    budget: Budget

    @property
    def arg_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each argument's shape, by name: what the models' cost hooks take."""
        return {name: tuple(t.shape) for name, t in self.args.items()}

    def tensor(self, value: Any, where: str) -> torch.Tensor:
        """Decode one more tensor of the request (e.g. a gradient) on the same budget."""
        return to_torch(decode(value, where, self.budget), self.device, self.dtype, where)


def lookup(name: str) -> ReferenceModel:
    """The model of a path, or 404."""
    try:
        return get_model(name)
    except UnknownName as error:
        raise Problem(404, error.message, kind="unknown-model", title="No such model") from None


def new_budget(settings: Settings) -> Budget:
    return Budget(settings.max_tensor_elements, settings.max_request_elements, settings.max_rank)


def model_limits(settings: Settings) -> Limits:
    """The sizes a request may ask of a model, from the settings."""
    return Limits(
        settings.max_sequence_length,
        settings.max_hidden_size,
        settings.max_k,
        settings.max_tensor_elements,
        settings.max_conv_workspace_bytes,
    )


def prepare(model_name: str, request: ModelRequest, settings: Settings) -> Prepared:
    """Decode and check a model request; raises problems or ``ModelError`` with the reason."""
    model = lookup(model_name)
    config = model.parse_config(request.config)
    limits = model_limits(settings)
    if model.check_config_limits is not None:
        model.check_config_limits(config, limits)
    device = resolve_device(request.device)
    dtype = resolve_dtype(request.dtype)
    budget = new_budget(settings)
    # Names first, from the keys alone: a body with a million unknown names is refused at the
    # first one, not after decoding them all.
    model.check_names(dict.fromkeys(request.params, ()), dict.fromkeys(request.inputs, ()))
    arrays = {
        section: {
            name: decode(value, f"{section}.{name}", budget)
            for name, value in getattr(request, section).items()
        }
        for section in ("params", "inputs")
    }
    shapes = {s: {n: tuple(a.shape) for n, a in d.items()} for s, d in arrays.items()}
    declared = {**shapes["params"], **shapes["inputs"]}
    if model.check_shape_limits is not None:
        model.check_shape_limits(config, declared, limits)
    output_shapes = model.output_shapes(config, declared)
    check_outputs(output_shapes, settings)
    args = {
        name: to_torch(array, device, dtype, f"{section}.{name}")
        for section, named in arrays.items()
        for name, array in named.items()
    }
    return Prepared(model, config, args, output_shapes, device, dtype, budget)


def decode_grad_outputs(prepared: Prepared, values: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The upstream gradients of a backward request, each the shape of its output."""
    if not values:
        raise ShapeMismatch(
            "grad_outputs must give dl/d(output) for at least one output", "grad_outputs"
        )
    grads = {}
    for name, value in values.items():
        if name not in prepared.output_shapes:
            known = ", ".join(prepared.output_shapes)
            raise UnknownName(
                f"{prepared.model.name} has no output {name!r}; it has {known}",
                f"grad_outputs.{name}",
            )
        grad = prepared.tensor(value, f"grad_outputs.{name}")
        expected = prepared.output_shapes[name]
        if tuple(grad.shape) != expected:
            raise ShapeMismatch(
                f"grad_outputs.{name} has shape {list(grad.shape)} but output {name} has "
                f"shape {list(expected)}",
                f"grad_outputs.{name}",
            )
        grads[name] = grad
    return grads


def check_jacobian_budget(prepared: Prepared, of: str, wrt: str, settings: Settings) -> None:
    """Refuse a Jacobian whose entry count is over budget, before computing anything."""
    prepared.model.output(of)
    prepared.model.argument(wrt)
    if wrt not in prepared.args:
        raise ShapeMismatch(
            f"{wrt!r} is optional and was not given; give it to differentiate against it", "wrt"
        )
    out_shape = prepared.output_shapes[of]
    wrt_shape = tuple(prepared.args[wrt].shape)
    entries = math.prod(out_shape) * math.prod(wrt_shape)
    if entries > settings.max_jacobian_elements:
        raise Problem(
            413,
            f"d{of}/d{wrt} would have {entries:,} entries (shape {[*out_shape, *wrt_shape]}); "
            f"the limit is {settings.max_jacobian_elements:,}",
            kind="budget-exceeded",
            title="Over the element budget",
        )


def check_state_jacobian_budget(prepared: Prepared, settings: Settings) -> None:
    """Refuse state Jacobians ``[T, m, m]`` whose entry count is over the Jacobian budget."""
    seq_len, m = prepared.output_shapes["h"]
    entries = seq_len * m * m
    if entries > settings.max_jacobian_elements:
        raise Problem(
            413,
            f"the state Jacobians would have {entries:,} entries (shape {[seq_len, m, m]}); "
            f"the limit is {settings.max_jacobian_elements:,}",
            kind="budget-exceeded",
            title="Over the element budget",
        )


def encode_all(tensors: Mapping[str, torch.Tensor], encoding: TensorEncoding) -> dict[str, Any]:
    """Each tensor in its JSON response form; whole answers go through
    ``service.responses.tensor_answer``, which also speaks ``safetensors``."""
    return {name: encode(t, encoding) for name, t in tensors.items()}


def vector_jacobian_products(
    prepared: Prepared, operation: str, of: str = "", wrt: str = ""
) -> int:
    """How many vector-Jacobian products an operation takes on top of its forward pass, for
    the compute-time estimate of ``computing``.

    Args:
        prepared: the request, whose declared output shapes give the count.
        operation: ``forward`` (0), ``backward`` (1), ``jacobian`` (one per element of the
            output ``of``, none where the model has a closed form for it);
            ``state_jacobians`` / ``state-jacobians`` take none (a closed form after one
            forward pass). Closed forms are counted by ``closed_form_flops``.
        of: the differentiated output, for ``jacobian``.
        wrt: the argument it is differentiated against, for ``jacobian``.

    Returns:
        The count.
    """
    if operation == "backward":
        return 1
    if operation == "jacobian":
        if _closed_form_jacobian(prepared, of, wrt):
            return 0
        return math.prod(prepared.output_shapes[of])
    return 0


def _closed_form_jacobian(prepared: Prepared, of: str, wrt: str) -> bool:
    covers = prepared.model.closed_form_covers
    return covers is not None and covers(of, wrt, prepared.args.keys())


STATE_JACOBIAN_FLOPS_PER_STEP = 40
"""Operations per m**3 of each step of the state Jacobians' closed form and analysis: the
one-step Jacobian, its singular values, the running product and its norm."""


CLOSED_FORM_FLOPS_PER_ENTRY = 4
"""Operations counted per entry of a Jacobian in closed form: zeroing it and writing the
entries that are not zero, a pass over memory (about 2.5 entries a nanosecond measured for
the benchmark's conv1d), counted generously at the assumed throughput."""


def closed_form_flops(prepared: Prepared, operation: str, of: str = "", wrt: str = "") -> int:
    """Operations an operation computed in closed form adds to its forward pass: for the state
    Jacobians of states ``[T, m]``, a few m x m matrix products and decompositions per step;
    for a Jacobian the model writes in closed form, a few per entry."""
    if operation == "jacobian" and _closed_form_jacobian(prepared, of, wrt):
        shapes = prepared.arg_shapes
        entries = math.prod(prepared.output_shapes[of]) * math.prod(shapes[wrt])
        return CLOSED_FORM_FLOPS_PER_ENTRY * entries
    if operation not in ("state_jacobians", "state-jacobians"):
        return 0
    steps, m = prepared.output_shapes["h"]
    extra = prepared.model.state_jacobians_flops
    shapes = prepared.arg_shapes
    paths = extra(prepared.config, shapes) if extra is not None else 0
    return STATE_JACOBIAN_FLOPS_PER_STEP * steps * m**3 + paths


STATE_STEP_SECONDS_CUDA = 1.3e-4
"""Seconds per step and per unit of the state size m that the state Jacobians take on a GPU,
whatever their operations: the batched singular values and the running product of small
matrices, one launch and one wait after another. Measured on an NVIDIA H200 in float64:
the gated RNN took 6.2 s for 1,024 steps of m = 64 and 15.2 s for m = 125 (6 and 15 ms a
step), where its operations at the assumed GPU rate were 0.1 s."""

PATHS_STEP_SECONDS_CUDA = 1e-4
"""The same for AttentionRNN's dh[t]/dh[1] through the older states (``attention_totals``),
a loop over the steps that waits on the GPU at each: measured 1.0, 4.6 and 11.6 ms a step
for n = 16, 64 and 125 (k = 2, 1,024 steps)."""


def closed_form_seconds(prepared: Prepared, operation: str) -> float:
    """Per-step seconds of a closed form beside its operations: on a GPU, the state
    Jacobians' loop over steps (``STATE_STEP_SECONDS_CUDA``, and ``PATHS_STEP_SECONDS_CUDA``
    where the model sums paths to older states); none elsewhere, where the operations
    dominate and ``closed_form_flops`` counts them."""
    if operation not in ("state_jacobians", "state-jacobians") or prepared.device.type != "cuda":
        return 0.0
    steps, m = prepared.output_shapes["h"]
    per_step = STATE_STEP_SECONDS_CUDA
    paths = prepared.model.state_jacobians_flops
    shapes = prepared.arg_shapes
    if paths is not None and paths(prepared.config, shapes) > 0:
        per_step += PATHS_STEP_SECONDS_CUDA
    return steps * m * per_step


@contextmanager
def computing(
    prepared: Prepared,
    settings: Settings,
    gate: ComputeGate,
    *,
    vector_jacobian_products: int = 0,
    closed_form: int = 0,
    closed_form_seconds: float = 0.0,
    spent: float = 0.0,
) -> Iterator[None]:
    """Run the block as one computation: refused when its estimated time is over the deadline,
    then holding one of its device's slots (a 503 when none frees up).

    Args:
        prepared: the request, whose declared shapes give the estimate.
        vector_jacobian_products: how many the operation takes on top of the forward pass
            (``vector_jacobian_products(prepared, operation)`` counts them).
        closed_form: operations of a closed form run after the forward pass
            (``closed_form_flops``).
        closed_form_seconds: its per-step costs on the device (``closed_form_seconds``).
        spent: seconds the request's computations before this one took, which the deadline
            also covers (``service.costs.check_deadline``): a batch's keys share it.

    Example:
        ``with computing(prepared, settings, gate, vector_jacobian_products=1): ...``
    """
    check_deadline(
        estimated_flops(prepared, vector_jacobian_products) + closed_form,
        prepared.device,
        settings,
        estimated_fixed_seconds(prepared, vector_jacobian_products) + closed_form_seconds,
        spent,
    )
    with gate.slot(prepared.device):
        yield


def estimated_flops(prepared: Prepared, vector_jacobian_products: int = 0) -> int:
    """The operation count ``computing`` holds to the deadline (``service.costs``)."""
    shapes = prepared.arg_shapes
    forward = forward_flops(prepared.model, prepared.config, shapes, prepared.output_shapes)
    row = sum(math.prod(s) for s in (*shapes.values(), *prepared.output_shapes.values()))
    return operation_flops(forward, vector_jacobian_products, row)


def estimated_fixed_seconds(prepared: Prepared, vector_jacobian_products: int) -> float:
    """The model's per-step costs for the operation (``service.costs.fixed_seconds``): no
    vector-Jacobian product is a forward pass (a closed form such as the state Jacobians
    included), one a backward pass, more a Jacobian by ``jacrev`` in chunks of rows (sized as
    ``models.autodiff`` sizes them), each chunk and each row at its cost.

    Args:
        prepared: the request.
        vector_jacobian_products: as for ``computing``.
    """
    model = prepared.model
    if model.overhead is None:
        return 0.0
    kind: Pass = (
        "forward"
        if vector_jacobian_products == 0
        else "backward"
        if vector_jacobian_products == 1
        else "jacobian"
    )
    shapes = prepared.arg_shapes
    arguments = sum(t.numel() for t in prepared.args.values())
    saved = saved_row_elements(model, prepared.config, shapes)
    chunks = jacobian_chunk_count(vector_jacobian_products, arguments, saved)
    overhead = model.overhead(prepared.config, shapes)
    return fixed_seconds(overhead, kind, chunks, vector_jacobian_products)


def estimated_seconds(
    prepared: Prepared, vector_jacobian_products: int, settings: Settings
) -> float:
    """The whole estimate: ``estimated_flops`` over the device's assumed throughput, and the
    model's per-step costs."""
    flops = estimated_flops(prepared, vector_jacobian_products)
    fixed = estimated_fixed_seconds(prepared, vector_jacobian_products)
    return flops / throughput(prepared.device, settings) + fixed

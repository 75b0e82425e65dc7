"""One catalogue of the reference models: names, arguments, outputs, config, and how to run them.

Adding a model is one module in ``models/`` plus one ``ReferenceModel`` entry here; the HTTP
routes are generic over this catalogue.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from models import attention_rnn, conv, conv_jacobians, gated_rnn
from models.errors import MissingArgument, UnknownName
from models.limits import Limits
from models.overhead import Overhead

Shapes = Mapping[str, tuple[int, ...]]
Tensors = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ArgSpec:
    """A parameter, input or output of a model, with its shape in symbols."""

    name: str
    shape: tuple[str, ...]
    description: str
    optional: bool = False
    spoken: str = ""
    """What a sentence to a student calls it, where ``name`` is a field name that the homework
    does not use (``state_grads``: "the gradients through time dl/dh[t]"); empty: ``name``."""

    @property
    def called(self) -> str:
        """The name a student reads: ``spoken``, or ``name`` where it has none."""
        return self.spoken or self.name


@dataclass(frozen=True)
class ConfigSpec:
    """A configuration key of a model."""

    name: str
    description: str
    default: Any
    json_schema: dict[str, Any]


@dataclass(frozen=True)
class ReferenceModel:
    """A reference model and the functions that compute with it.

    Attributes:
        parse_config: validates the request's ``config`` mapping into the model's own config
            object, raising ``InvalidConfig`` with the offending key.
        output_shapes: from the config and the *declared* argument shapes, checks that they fit
            together and returns every output's shape, before anything is allocated.
        forward: computes every output from the config and the arguments (params and inputs
            by name; optional ones may be absent).
        closed_form_jacobian: d(output)/d(argument) without autograd, or ``None`` to fall back.
        closed_form_covers: whether ``closed_form_jacobian`` answers d(of)/d(wrt) given
            arguments of these names, known before any tensor is made (for the estimate).
        backward_extras: extra answers of ``backward`` (e.g. ``state_grads`` of the RNNs).
        extras: what ``backward_extras`` answers, each described as the outputs are.
        state_jacobians: the one-step state Jacobians of a recurrent model.
        state_jacobians_flops: operations ``state_jacobians`` adds to the closed form of the
            one-step Jacobians counted for every recurrent model (AttentionRNN's sums over
            paths to older states), from the config and the declared shapes.
        check_config_limits: refuses a config over the service's ``Limits`` (e.g. a window
            ``k``) right after ``parse_config``, before any tensor is decoded.
        check_shape_limits: refuses declared shapes over the ``Limits`` (sequence length,
            hidden size, a conv's padded input) before ``output_shapes`` and before anything
            reaches the device.
        flops: floating-point operations of one forward pass, from the config and the
            declared argument shapes, for the service's compute-time estimate; ``None`` for
            the generic estimate (every parameter used once per row of the inputs).
        overhead: the fixed costs of its passes (``Overhead``), for models whose time is
            mostly a Python loop over steps and autograd's bookkeeping rather than
            arithmetic; ``None`` where the arithmetic dominates.
        batched_row_elements: elements its backward pass batched by ``jacrev`` keeps alive
            per row of a batch (the gradients of its activations), from the config and the
            declared shapes, so that ``models.autodiff`` sizes the batches within
            ``SAVED_ELEMENTS``; ``None`` where the cotangents bound them already.
    """

    name: str
    summary: str
    params: tuple[ArgSpec, ...]
    inputs: tuple[ArgSpec, ...]
    outputs: tuple[ArgSpec, ...]
    config: tuple[ConfigSpec, ...]
    parse_config: Callable[[Mapping[str, Any]], Any]
    output_shapes: Callable[[Any, Shapes], dict[str, tuple[int, ...]]]
    forward: Callable[[Any, Tensors], dict[str, torch.Tensor]]
    closed_form_jacobian: Callable[[Any, Tensors, str, str], torch.Tensor | None] | None = None
    closed_form_covers: Callable[[str, str, Collection[str]], bool] | None = None
    backward_extras: Callable[[Any, Tensors, Tensors], dict[str, torch.Tensor]] | None = None
    extras: tuple[ArgSpec, ...] = ()
    state_jacobians: Callable[[Any, Tensors], dict[str, Any]] | None = None
    state_jacobians_flops: Callable[[Any, Shapes], int] | None = None
    flops: Callable[[Any, Shapes], int] | None = None
    overhead: Callable[[Any, Shapes], Overhead] | None = None
    batched_row_elements: Callable[[Any, Shapes], int] | None = None
    examples: dict[str, dict[str, Any]] = field(default_factory=dict)
    check_config_limits: Callable[[Any, Limits], None] | None = None
    check_shape_limits: Callable[[Any, Shapes, Limits], None] | None = None

    @property
    def arguments(self) -> tuple[ArgSpec, ...]:
        return self.params + self.inputs

    def argument(self, name: str) -> ArgSpec:
        for spec in self.arguments:
            if spec.name == name:
                return spec
        known = ", ".join(s.name for s in self.arguments)
        raise UnknownName(f"{self.name} has no parameter or input {name!r}; it has {known}", "wrt")

    def output(self, name: str) -> ArgSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        known = ", ".join(s.name for s in self.outputs)
        raise UnknownName(f"{self.name} has no output {name!r}; it has {known}", "of")

    def extra(self, name: str) -> ArgSpec | None:
        """The spec of the extra answer ``name`` of ``backward``, if it is one."""
        return next((spec for spec in self.extras if spec.name == name), None)

    def check_names(self, params: Shapes, inputs: Shapes) -> None:
        """Every given argument is known and in its section; every required one is given."""
        for section, given, specs in (
            ("params", params, self.params),
            ("inputs", inputs, self.inputs),
        ):
            names = {s.name for s in specs}
            for name in given:
                if name not in names:
                    other = "inputs" if section == "params" else "params"
                    hint = (
                        f"; {name!r} belongs in {other}"
                        if any(s.name == name for s in self.arguments)
                        else f"; {self.name} takes {section} {sorted(names)}"
                    )
                    raise UnknownName(f"unknown {section[:-1]} {name!r}{hint}", f"{section}.{name}")
            for spec in specs:
                if not spec.optional and spec.name not in given:
                    raise MissingArgument(
                        f"{section[:-1]} {spec.name!r} {list(spec.shape)} is required",
                        f"{section}.{spec.name}",
                    )


def _conv_model(dims: int) -> ReferenceModel:
    kernel = ("K",) if dims == 1 else ("KH", "KW")
    spatial = ("L",) if dims == 1 else ("H", "W")
    spatial_out = ("L_out",) if dims == 1 else ("H_out", "W_out")

    def int_or_list(minimum: int) -> list[dict[str, Any]]:
        """An int, or one per spatial dimension, each at least ``minimum``."""
        each = {"type": "integer", "minimum": minimum}
        return [each, {"type": "array", "items": each, "minItems": dims, "maxItems": dims}]

    return ReferenceModel(
        name=f"conv{dims}d",
        summary=(
            f"{dims}-D convolution (cross-correlation) of one unbatched input, "
            "as in the seed's 1.1(c)"
        ),
        params=(
            ArgSpec("weight", ("F", "C", *kernel), "the filters"),
            ArgSpec("bias", ("F",), "one bias per filter (zeros when absent)", optional=True),
        ),
        inputs=(ArgSpec("x", ("C", *spatial), "the input, channels first, unbatched"),),
        outputs=(ArgSpec("y", ("F", *spatial_out), "the output, one channel per filter"),),
        config=(
            ConfigSpec(
                "stride",
                "step of the kernel, an int or one per dimension",
                1,
                {"anyOf": int_or_list(1)},
            ),
            ConfigSpec(
                "padding",
                "zeros added on both sides: an int, one per dimension, 'valid' or 'same'",
                0,
                {"anyOf": [*int_or_list(0), {"enum": ["valid", "same"]}]},
            ),
            ConfigSpec("dilation", "spacing of the kernel's taps", 1, {"anyOf": int_or_list(1)}),
        ),
        parse_config=lambda config: conv.parse_conv_config(config, dims),
        output_shapes=conv.conv_output_shapes,
        forward=conv.conv_forward,
        closed_form_jacobian=conv_jacobians.conv_jacobian,
        closed_form_covers=conv_jacobians.covers,
        flops=conv.conv_flops,
        check_shape_limits=conv.check_shape_limits,
    )


def _state_grads(size: str, question: str) -> ArgSpec:
    """The RNNs' extra answer of ``backward``: the total dl/dh[t], the gradient through time."""
    return ArgSpec(
        "state_grads",
        ("T", size),
        f"the gradients through time, row t-1 is the total dl/dh[t] over every path from h[t] "
        f"to the loss (the seed's {question})",
        spoken="the gradients through time dl/dh[t]",
    )


def _gated_rnn_model() -> ReferenceModel:
    return ReferenceModel(
        name="gated_rnn",
        summary=(
            "The gated RNN of the seed's 1.2.1, equations (1)-(2): "
            "c[t] = sigmoid(W_c x[t] + W_h h[t-1]), h[t] = c[t] * h[t-1] + (1 - c[t]) * W_x x[t]"
        ),
        params=(
            ArgSpec("W_c", ("m", "n"), "projects x[t] into the gate's pre-activation"),
            ArgSpec("W_h", ("m", "m"), "projects h[t-1] into the gate's pre-activation"),
            ArgSpec("W_x", ("m", "n"), "projects x[t] into the candidate state"),
        ),
        inputs=(
            ArgSpec("x", ("T", "n"), "the sequence, row t-1 is x[t]"),
            ArgSpec("h0", ("m",), "the state h[0] before the first step (zeros)", optional=True),
        ),
        outputs=(
            ArgSpec("h", ("T", "m"), "the states, row t-1 is h[t]"),
            ArgSpec("c", ("T", "m"), "the gates, row t-1 is c[t]"),
        ),
        config=(),
        parse_config=gated_rnn.parse_config,
        output_shapes=gated_rnn.output_shapes,
        forward=gated_rnn.forward,
        backward_extras=gated_rnn.state_grads,
        extras=(_state_grads("m", "1.2.1(d)"),),
        state_jacobians=gated_rnn.state_jacobians,
        overhead=gated_rnn.overhead,
        check_shape_limits=gated_rnn.check_shape_limits,
    )


def _attention_rnn_model() -> ReferenceModel:
    projection = (
        "index 0 projects x[t], index i projects h[t-i]; with k = inf, [2, n, n] and "
        "index 1 is shared by every past state"
    )
    weights = "[T, k+1]; with k = inf [T, T+1], row t-1 holding step t's t+1 entries then zeros"
    return ReferenceModel(
        name="attention_rnn",
        summary=(
            "AttentionRNN(k) and AttentionRNN(inf) of the seed's 1.2.2, equations (3)-(8): "
            "softmax attention over x[t] and the past states h[t-1], ..., h[t-k]"
        ),
        params=(
            ArgSpec("Q", ("k+1", "n", "n"), f"the query projections: {projection}"),
            ArgSpec("K", ("k+1", "n", "n"), f"the key projections: {projection}"),
            ArgSpec("V", ("k+1", "n", "n"), f"the value projections: {projection}"),
        ),
        inputs=(ArgSpec("x", ("T", "n"), "the sequence, row t-1 is x[t]; h[t] = 0 for t < 1"),),
        outputs=(
            ArgSpec("h", ("T", "n"), "the states, row t-1 is h[t]"),
            ArgSpec("a", ("T", "k+1"), f"the attention weights a[t], {weights}"),
            ArgSpec("w", ("T", "k+1"), f"the scores w[t] = q_i[t]^T k_i[t], {weights}"),
        ),
        config=(
            ConfigSpec(
                "k",
                'how many past states each step attends over, or "inf" for all of them '
                "(with weight sharing)",
                2,
                {"anyOf": [{"type": "integer", "minimum": 1}, {"const": "inf"}]},
            ),
        ),
        parse_config=attention_rnn.parse_config,
        output_shapes=attention_rnn.output_shapes,
        forward=attention_rnn.forward,
        backward_extras=attention_rnn.state_grads,
        extras=(_state_grads("n", "1.2.2(f)"),),
        state_jacobians=attention_rnn.state_jacobians,
        state_jacobians_flops=attention_rnn.total_paths_flops,
        flops=attention_rnn.flops,
        overhead=attention_rnn.overhead,
        batched_row_elements=attention_rnn.batched_row_elements,
        check_config_limits=attention_rnn.check_config_limits,
        check_shape_limits=attention_rnn.check_shape_limits,
    )


MODELS: dict[str, ReferenceModel] = {
    m.name: m for m in (_conv_model(1), _conv_model(2), _gated_rnn_model(), _attention_rnn_model())
}


def get_model(name: str) -> ReferenceModel:
    """The model called ``name``, or ``UnknownName`` listing the models there are."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownName(
            f"there is no model {name!r}; the models are {', '.join(sorted(MODELS))}", "model"
        ) from None

"""Mistakes particular to the convolutions, each recomputed with the reference model.

A deep-learning "convolution" is a cross-correlation: y[i] = sum_m W[m] x[i + m], the kernel
read in order. A student who learned the convolution of signal processing flips it first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

from models.conv import ConvConfig
from service.grading.diagnosis import Candidate, Mistake, Shape, register
from service.grading.keys import ModelSource, TensorKey

CONV_MODELS = frozenset({"conv1d", "conv2d", "conv3d"})
FLIPPABLE_OPS = frozenset({"forward", "jacobian", "backward"})
"""The ops whose key changes with the kernel's order: the output, the Jacobians and the
gradients. Those against the input hold the kernel and are recomputed with it flipped; those
against the weight hold only the input, which a flipped convolution reads backwards along the
kernel's axes: y[i] = sum_m W[m] x[i + K - 1 - m], so dy[i]/dW[m] = x[i + K - 1 - m] is the
key with its kernel axes reversed (recomputed with the weight flipped, it would come out the
same)."""


@register
class KernelFlipped(Mistake):
    """The kernel read backwards: a signal-processing convolution where the layer computes a
    cross-correlation (seed 1.1(c): f_W(x)[i] = sum_c sum_m W[c, m] x[c, 2i - 1 + m])."""

    code = "kernel_flipped"
    order = 45  # after the sign and the axes: a [1, -1] kernel flipped is its negative

    def candidates(self, key: TensorKey, shape: Shape) -> Iterator[Candidate]:
        source = key.source
        if source is None or source.model.name not in CONV_MODELS:
            return
        if source.op not in FLIPPABLE_OPS or shape != tuple(key.tensor.shape):
            return
        tensor = _flipped(source, key.tensor)
        if tensor is not None:
            reason = _flipped_reason(key.called("weight"))
            yield Candidate(tensor, f"Your answer is the reference computed with {reason}")


def _flipped(
    source: ModelSource, reference: torch.Tensor, config: Any = None
) -> torch.Tensor | None:
    """``reference`` (the key, or the key recomputed with ``config``) as a convolution that
    reads its kernel backwards gives it; ``None`` without a weight, or where it cannot be
    recomputed."""
    weight = source.prepared.args.get("weight")
    if weight is None or weight.dim() < 3:
        return None
    if _against_weight(source.op, source.wrt, source.select):
        # The kernel's axes are the last of the key (the weight's shape ends it).
        return reference.flip(dims=tuple(range(-(weight.dim() - 2), 0)))
    flipped = weight.flip(dims=tuple(range(2, weight.dim())))  # every kernel axis
    args = {**source.prepared.args, "weight": flipped}
    if config is None:
        return source.compute(args)
    return source.compute_config(config, tuple(reference.shape), args)


def _flipped_reason(called: str) -> str:
    """What a flipped kernel is, and why it is wrong, for a diagnosis's message."""
    return (
        f"the kernel of {called} read backwards: a convolution layer computes a "
        f"cross-correlation, sum_m {called}[m] x[i + m] with the kernel in order, not the "
        "flipped kernel of a signal-processing convolution."
    )


def _against_weight(op: str, wrt: str, select: str) -> bool:
    """Whether the key is dy/dW or dl/dW: a Jacobian against the weight, or its gradient."""
    return (op == "jacobian" and wrt == "weight") or (op == "backward" and select == "weight")


@register
class SettingIgnored(Mistake):
    """A stride, padding or dilation of the layer left out: the output (or its Jacobian) of
    the layer at stride 1, without padding or without dilation, which has another shape than
    the key (seed 1.1(c): the output of the stride-2 layer has 3 positions, not 5). A wrong
    shape is otherwise only told it is wrong."""

    code = "stride_ignored"
    also = ("padding_ignored", "dilation_ignored", "settings_ignored")
    order = 46

    def candidates(self, key: TensorKey, shape: Shape) -> Iterator[Candidate]:
        source = key.source
        if source is None or source.model.name not in CONV_MODELS:
            return
        config = source.prepared.config
        if shape == tuple(key.tensor.shape):
            return  # a setting left out changes the shape (where it changes anything)
        ones = (1,) * config.dims
        left_out = {
            "stride": {"stride": ones} if config.stride != ones else {},
            "padding": {"padding": "valid"}
            if config.padding not in ("valid", (0,) * config.dims)
            else {},
            "dilation": {"dilation": ones} if config.dilation != ones else {},
        }
        changes = [(name, change) for name, change in left_out.items() if change]
        if len(changes) > 1:  # all of them, as in a layer with no settings at all
            every = {k: v for _, change in changes for k, v in change.items()}
            changes.append(("settings", every))
        for name, change in changes:
            other = dataclasses.replace(config, **change)
            if source.selected_shape(other) != shape:  # None for the ops it cannot redo
                continue
            tensor = source.compute_config(other, shape)
            if tensor is None:
                continue
            message = _left_out_message(name, config, [n for n, _ in changes[:-1]])
            yield Candidate(tensor, message, f"{name}_ignored")
            # Both at once: the setting left out and the kernel flipped (a signal-processing
            # convolution at stride 1, say); neither alone gives the answer.
            if source.op in FLIPPABLE_OPS:
                both = _flipped(source, tensor, other)
                if both is not None:
                    reason = _flipped_reason(key.called("weight"))
                    yield Candidate(both, f"{message} It also takes {reason}", f"{name}_ignored")


def _settings(config: ConvConfig) -> dict[str, str]:
    """The layer's settings as the messages name them (one number for equal dimensions)."""

    def shown(values: tuple[int, ...] | str) -> str:
        if isinstance(values, str):
            return repr(values)
        return str(values[0]) if len(set(values)) == 1 else str(list(values))

    return {
        "stride": f"stride {shown(config.stride)}",
        "padding": f"padding {shown(config.padding)}",
        "dilation": f"dilation {shown(config.dilation)}",
    }


def _left_out_message(name: str, config: ConvConfig, names: list[str]) -> str:
    """What leaving out the setting ``name`` (``settings``: every one of ``names``) did."""
    settings = _settings(config)
    if name == "stride":
        why = (
            f"the layer moves its kernel {settings['stride'].removeprefix('stride ')} "
            "positions at a time, so it has fewer outputs"
        )
        return f"Your answer is the reference computed with stride 1: {why} ({settings['stride']})."
    if name == "padding":
        return (
            "Your answer is the reference computed without padding: the layer pads its input "
            f"with zeros first ({settings['padding']}), so its kernel also covers the borders."
        )
    if name == "dilation":
        return (
            "Your answer is the reference computed without dilation: the layer spaces its "
            f"kernel's taps apart ({settings['dilation']})."
        )
    shown = [settings[n] for n in names]
    used = ", ".join(shown[:-1]) + f" and {shown[-1]}"
    return (
        "Your answer is the reference computed as if the layer had no stride, padding or "
        f"dilation: this layer has {used}."
    )

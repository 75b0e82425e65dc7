"""Mistakes particular to the convolutions, each recomputed with the reference model.

A deep-learning "convolution" is a cross-correlation: y[i] = sum_m W[m] x[i + m], the kernel
read in order. A student who learned the convolution of signal processing flips it first.
"""

from __future__ import annotations

from collections.abc import Iterator

from service.grading.diagnosis import Candidate, Mistake, Shape, register
from service.grading.keys import TensorKey

CONV_MODELS = frozenset({"conv1d", "conv2d", "conv3d"})
FLIPPABLE_OPS = frozenset({"forward", "jacobian"})
"""The ops whose key changes with the kernel's order: the output and the Jacobians (that
against the input holds the kernel; the one against the weight, which holds only the input,
comes out the same and is skipped as indistinct)."""


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
        weight = source.prepared.args.get("weight")
        if weight is None or weight.dim() < 3:
            return
        flipped = weight.flip(dims=tuple(range(2, weight.dim())))  # every kernel axis
        tensor = source.compute({**source.prepared.args, "weight": flipped})
        if tensor is None:
            return
        called = key.called("weight")
        yield Candidate(
            tensor,
            f"Your answer is the reference computed with the kernel of {called} read "
            "backwards: a convolution layer computes a cross-correlation, sum_m "
            f"{called}[m] x[i + m] with the kernel in order, not the flipped kernel of a "
            "signal-processing convolution.",
        )

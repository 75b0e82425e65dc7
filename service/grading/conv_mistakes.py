"""Mistakes particular to the convolutions, each recomputed with the reference model.

A deep-learning "convolution" is a cross-correlation: y[i] = sum_m W[m] x[i + m], the kernel
read in order. A student who learned the convolution of signal processing flips it first.
"""

from __future__ import annotations

from collections.abc import Iterator

from service.grading.diagnosis import Candidate, Mistake, Shape, register
from service.grading.keys import TensorKey

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
        weight = source.prepared.args.get("weight")
        if weight is None or weight.dim() < 3:
            return
        if _against_weight(source.op, source.wrt, source.select):
            # The kernel's axes are the last of the key (the weight's shape ends it).
            tensor = key.tensor.flip(dims=tuple(range(-(weight.dim() - 2), 0)))
        else:
            flipped = weight.flip(dims=tuple(range(2, weight.dim())))  # every kernel axis
            computed = source.compute({**source.prepared.args, "weight": flipped})
            if computed is None:
                return
            tensor = computed
        called = key.called("weight")
        yield Candidate(
            tensor,
            f"Your answer is the reference computed with the kernel of {called} read "
            "backwards: a convolution layer computes a cross-correlation, sum_m "
            f"{called}[m] x[i + m] with the kernel in order, not the flipped kernel of a "
            "signal-processing convolution.",
        )


def _against_weight(op: str, wrt: str, select: str) -> bool:
    """Whether the key is dy/dW or dl/dW: a Jacobian against the weight, or its gradient."""
    return (op == "jacobian" and wrt == "weight") or (op == "backward" and select == "weight")

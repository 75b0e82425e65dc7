"""Mistakes particular to the recurrent models, each recomputed from the seed's formulas.

They apply to any registered model whose op and outputs fit (a gated model with a gate
output ``c``; a backward pass answering ``state_grads``), and to nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from service.grading.diagnosis import Candidate, Mistake, Shape, register
from service.grading.keys import ModelSource, TensorKey, on_cpu


def _gated(key: TensorKey, op: str, select: str) -> ModelSource | None:
    """The key's model request where it is ``op`` selecting ``select`` of a gated model (one
    with a gate output ``c``), else None."""
    source = key.source
    if source is None or source.op != op or source.select != select:
        return None
    return source if "c" in {spec.name for spec in source.model.outputs} else None


@register
class GatePathMissing(Mistake):
    """Only ``diag(c[t])`` of the gated RNN's dh[t]/dh[t-1] (seed 1.2.1(d)): the direct path,
    without the path through the gate ``diag(h[t-1] - W_x x[t]) diag(sigma'(z[t])) W_h``."""

    code = "gate_path_missing"
    order = 20

    def candidates(self, key: TensorKey, shape: Shape) -> Iterator[Candidate]:
        source = _gated(key, "state_jacobians", "jacobians")
        if source is None:
            return
        gate = source.forward()["c"]  # (T, m)  c[t] of equation (1)
        if gate.dim() != 2 or (*gate.shape, gate.shape[1]) != shape:
            return
        yield Candidate(
            torch.diag_embed(gate),  # (T, m, m)  diag(c[t])
            "This is only diag(c[t]), the direct path of dh[t]/dh[t-1]. h[t] also depends on "
            "h[t-1] through the gate c[t] of equation (1), which depends on h[t-1] too: "
            "differentiate that path as well, it adds a second term.",
        )


@register
class DirectTermOnly(Mistake):
    """Only the direct term of dl/dh[t], without the later steps (seed 1.2.1(d), 1.2.2(f))."""

    code = "direct_term_only"
    order = 21

    def candidates(self, key: TensorKey, shape: Shape) -> Iterator[Candidate]:
        source = key.source
        if source is None or source.op != "backward" or source.select != "state_grads":
            return
        direct = source.grad_outputs.get("h")
        if direct is None or tuple(direct.shape) != shape:
            return
        yield Candidate(
            on_cpu(direct),
            "This is only the direct term dl/dh[t] that the loss gives each step; the total "
            "gradient through time also counts how h[t] changes every later state h[k], "
            "k > t, and through it the loss (the later steps are missing).",
        )


@register
class DirectGradientsInTheSum(Mistake):
    """The seed's sum for dl/dW_x (1.2.1(c)), ``sum_t (dl/dh[t] * (1 - c[t])) x[t]^T``, taken
    over the direct gradients the loss gives each step instead of the total ones through time:
    the backward pass through the later steps left out (the gradient as if each h[t-1] were a
    constant)."""

    code = "direct_gradients_only"
    order = 22

    def candidates(self, key: TensorKey, shape: Shape) -> Iterator[Candidate]:
        source = _gated(key, "backward", "W_x")
        if source is None:
            return
        direct, x = source.grad_outputs.get("h"), source.prepared.args.get("x")
        if direct is None or x is None or set(source.grad_outputs) != {"h"}:
            return  # the direct gradients of h alone make the seed's sum; of c, another one
        gate = source.forward()["c"]  # (T, m)  c[t] of equation (1)
        inputs, upstream = on_cpu(x), on_cpu(direct)  # (T, n), (T, m)
        if gate.dim() != 2 or upstream.shape != gate.shape or inputs.dim() != 2:
            return
        if len(inputs) != len(gate) or (gate.shape[1], inputs.shape[1]) != shape:
            return
        yield Candidate(
            (upstream * (1 - gate)).T @ inputs,  # (m, n)
            "This takes dl/dh[t] to be the direct gradients that the loss gives each step. "
            "W_x reaches the loss through every h[t], and each h[t] also changes the later "
            "states: the gradient of each h[t] to use is the total gradient through time.",
        )

"""Mistakes particular to the recurrent models, each recomputed from the seed's formulas.

They apply to any registered model whose op and outputs fit (a gated model with a gate
output ``c``; a backward pass answering ``state_grads``; the one-step state Jacobians of
``attention_rnn``), and to nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from service.grading.diagnosis import TIME_AXES, Candidate, Mistake, Shape, register
from service.grading.keys import ModelSource, TensorKey, Tensors, on_cpu


def _gated(key: TensorKey, op: str, select: str) -> ModelSource | None:
    """The key's model request where it is ``op`` selecting ``select`` of a gated model (one
    with a gate output ``c``), else None."""
    source = key.source
    if source is None or source.op != op or source.select != select:
        return None
    return source if "c" in {spec.name for spec in source.model.outputs} else None


def _gated_step(key: TensorKey, shape: Shape) -> tuple[ModelSource, Tensors] | None:
    """The key's source and the model's outputs where the key is the one-step state Jacobians
    dh[t]/dh[t-1] of a gated model and the answers have their shape (T, m, m); else None."""
    source = _gated(key, "state_jacobians", "jacobians")
    if source is None:
        return None
    outputs = source.forward()
    gate = outputs["c"]  # (T, m)  c[t] of equation (1)
    if gate.dim() != 2 or (*gate.shape, gate.shape[1]) != shape:
        return None
    return source, outputs


@register
class GatePathMissing(Mistake):
    """Only ``diag(c[t])`` of the gated RNN's dh[t]/dh[t-1] (seed 1.2.1(d)): the direct path,
    without the path through the gate ``diag(h[t-1] - W_x x[t]) diag(sigma'(z[t])) W_h``; in
    dl/dW_x (1.2.1(c)), the gradient carried back through that direct path alone."""

    code = "gate_path_missing"
    order = 20

    def candidates(self, key: TensorKey, shape: Shape) -> Iterator[Candidate]:
        step = _gated_step(key, shape)
        if step is not None:
            yield Candidate(
                torch.diag_embed(step[1]["c"]),  # (T, m, m)  diag(c[t])
                "This is only diag(c[t]), the direct path of dh[t]/dh[t-1]. h[t] also depends "
                "on h[t-1] through the gate c[t] of equation (1), which depends on h[t-1] too: "
                "differentiate that path as well, it adds a second term.",
            )
            return
        steps = _GatedSteps.of_backward(key, shape)
        if steps is not None:
            yield Candidate(
                steps.w_x_gradient(torch.zeros_like(steps.gate)),
                "Your gradient flows back from h[t] to h[t-1] only through diag(c[t]), the "
                "direct path. h[t] also depends on h[t-1] through the gate c[t] of equation (1), "
                "which depends on h[t-1] too: dh[t]/dh[t-1] has a second term, "
                "diag(h[t-1] - W_x x[t]) diag(sigma'(z[t])) W_h, and the gradient through time "
                "goes back through both.",
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


@dataclass(frozen=True)
class _AttentionStep:
    """dh[t]/dh[t-1] = a_1[t] (v_1[t] - h[t]) (S h[t-1])^T + a_1[t] V_1, S = Q_1^T K_1 +
    K_1^T Q_1 (seed 1.2.2(e); index 1 projects h[t-1] for every k and for inf), by parts."""

    h: torch.Tensor  # (T, n)  h[t]
    before: torch.Tensor  # (T, n)  h[t-1]
    weight: torch.Tensor  # (T,)  a_1[t]
    Q: torch.Tensor  # (n, n)  Q_1
    K: torch.Tensor  # (n, n)  K_1
    V: torch.Tensor  # (n, n)  V_1

    def value_path(self) -> torch.Tensor:
        """a_1[t] V_1 at every step: the path through v_1[t] = V_1 h[t-1] alone."""
        return self.weight[:, None, None] * self.V

    def jacobians(self, score_matrix: torch.Tensor, centred: bool = True) -> torch.Tensor:
        """The Jacobians with dw_1[t]/dh[t-1] taken as ``score_matrix`` h[t-1], and the
        softmax's coupling (v_1[t] - h[t], not v_1[t]) when ``centred``."""
        value = self.before @ self.V.T  # (T, n)  v_1[t]
        spread = value - self.h if centred else value
        score = self.before @ score_matrix.T  # (T, n)  dw_1[t]/dh[t-1]
        outer = spread[:, :, None] * score[:, None, :]
        return self.weight[:, None, None] * outer + self.value_path()


def _attention_parts(key: TensorKey, shape: Shape) -> _AttentionStep | None:
    """The quantities of the seed's 1.2.2(e) at every step, where the key is the one-step state
    Jacobians dh[t]/dh[t-1] of AttentionRNN(k) or AttentionRNN(inf) and the answers have its
    shape; else None."""
    source = key.source
    if source is None or source.op != "state_jacobians" or source.select != "jacobians":
        return None
    if source.model.name != "attention_rnn" or tuple(key.tensor.shape) != shape:
        return None
    outputs = source.forward()
    h, a = outputs["h"], outputs["a"]  # (T, n), (T, k+1 or T+1)
    Q, K, V = (on_cpu(source.prepared.args[name])[1] for name in ("Q", "K", "V"))  # index 1
    if h.dim() != 2 or (*h.shape, h.shape[1]) != shape:
        return None
    before = torch.cat([torch.zeros_like(h[:1]), h[:-1]])  # h[t-1], with h[0] = 0
    return _AttentionStep(h, before, a[:, 1], Q, K, V)


class _AttentionStepMistake(Mistake):
    """A mistake in AttentionRNN's dh[t]/dh[t-1], made on the seed's closed form by parts."""

    def candidates(self, key: TensorKey, shape: Shape) -> Iterator[Candidate]:
        parts = _attention_parts(key, shape)
        if parts is not None:
            yield from self.made(parts)

    def made(self, parts: _AttentionStep) -> Iterator[Candidate]:
        """The Jacobians with this mistake made."""
        raise NotImplementedError


@register
class ScorePathMissing(_AttentionStepMistake):
    """Only a_1[t] V_1 of AttentionRNN's dh[t]/dh[t-1] (seed 1.2.2(e)): the path through the
    value, without the one through the score w_1[t] and the softmax."""

    code = "score_path_missing"
    order = 23

    def made(self, parts: _AttentionStep) -> Iterator[Candidate]:
        yield Candidate(
            parts.value_path(),
            "This is only a_1[t] V_1, the path through the value v_1[t] = V_1 h[t-1]. h[t-1] "
            "also sets the score w_1[t] = q_1[t]^T k_1[t], and through the softmax every "
            "weight a_i[t]: differentiate that path as well, it adds a second term.",
        )


@register
class ScoreGradientOneSided(_AttentionStepMistake):
    """AttentionRNN's dh[t]/dh[t-1] with dw_1[t]/dh[t-1] taken as Q_1^T K_1 h[t-1] (k_1[t]
    held fixed) or 2 Q_1^T K_1 h[t-1] (as if Q_1^T K_1 were symmetric)."""

    code = "score_gradient_one_sided"
    order = 24

    def made(self, parts: _AttentionStep) -> Iterator[Candidate]:
        product = parts.Q.T @ parts.K  # Q_1^T K_1
        yield Candidate(
            parts.jacobians(product),
            "The score w_1[t] = q_1[t]^T k_1[t] depends on h[t-1] through both q_1[t] = Q_1 "
            "h[t-1] and k_1[t] = K_1 h[t-1]; your answer differentiates it through q_1[t] "
            "only, as if k_1[t] were fixed.",
        )
        yield Candidate(
            parts.jacobians(2 * product),
            "The score w_1[t] = h[t-1]^T Q_1^T K_1 h[t-1] is a quadratic form whose matrix "
            "Q_1^T K_1 is not symmetric: its gradient is (A + A^T) h[t-1] with A = Q_1^T K_1, "
            "not 2 A h[t-1].",
        )


@register
class ScoreGradientKeyOnly(_AttentionStepMistake):
    """AttentionRNN's dh[t]/dh[t-1] with dw_1[t]/dh[t-1] taken as K_1^T Q_1 h[t-1] (q_1[t]
    held fixed): the mirror of ``score_gradient_one_sided``'s first candidate.

    A code of its own rather than a third candidate of ``score_gradient_one_sided``: the
    built-in 1.2.2e screens its variants against that code (``distinct_from``), and a new
    candidate there would redraw students who already have their numbers."""

    code = "score_gradient_key_only"
    order = 24

    def made(self, parts: _AttentionStep) -> Iterator[Candidate]:
        yield Candidate(
            parts.jacobians(parts.K.T @ parts.Q),
            "The score w_1[t] = q_1[t]^T k_1[t] depends on h[t-1] through both q_1[t] = Q_1 "
            "h[t-1] and k_1[t] = K_1 h[t-1]; your answer differentiates it through k_1[t] "
            "only, as if q_1[t] were fixed.",
        )


@register
class SoftmaxCouplingMissing(_AttentionStepMistake):
    """AttentionRNN's dh[t]/dh[t-1] with the softmax's derivative taken as da_1/dw_1 = a_1
    alone: v_1[t] where the seed has v_1[t] - h[t] (the other weights' change left out)."""

    code = "softmax_coupling_missing"
    order = 25

    def made(self, parts: _AttentionStep) -> Iterator[Candidate]:
        yield Candidate(
            parts.jacobians(parts.Q.T @ parts.K + parts.K.T @ parts.Q, centred=False),
            "When the score w_1[t] changes, the softmax moves every weight a_i[t], not a_1[t] "
            "alone (they sum to 1): da_i[t]/dw_1[t] = a_i[t] (1[i = 1] - a_1[t]). Your answer "
            "keeps only the change of a_1[t].",
        )


@register
class ValueMatrixTransposed(_AttentionStepMistake):
    """AttentionRNN's dh[t]/dh[t-1] with a_1[t] V_1^T for the value path's a_1[t] V_1: the
    Jacobian of v_1[t] = V_1 h[t-1] taken as V_1^T (the gradient's layout, not the
    Jacobian's). Where V_1 is symmetric the two are the same answer, judged right."""

    code = "value_matrix_transposed"
    order = 25

    def made(self, parts: _AttentionStep) -> Iterator[Candidate]:
        right = parts.jacobians(parts.Q.T @ parts.K + parts.K.T @ parts.Q)
        yield Candidate(
            right - parts.value_path() + parts.weight[:, None, None] * parts.V.T,
            "The path through the value v_1[t] = V_1 h[t-1] adds a_1[t] V_1: the Jacobian "
            "of V_1 h with respect to h is V_1 itself (row i holds the derivatives of entry "
            "i). Your answer has V_1^T there, the layout of a gradient, not of a Jacobian.",
        )


@dataclass(frozen=True)
class _AttentionLags:
    """AttentionRNN's run behind a key dl/dh[t] through time (seed 1.2.2(f)), with every
    partial dh[t]/dh[t-i] the recursion carries back through: the states are numbered 0..T,
    h[0] = 0 included, so that the gradient can also be carried back to h[0]."""

    partials: list[torch.Tensor]  # entry i-1: (T-i+1, n, n), row s is dh[s+i]/dh[s], s >= 0
    direct: torch.Tensor  # (T, n)  the loss's direct dl/dh[t], row t-1

    @classmethod
    def of(cls, key: TensorKey) -> _AttentionLags | None:
        """The run of a key ``state_grads`` of ``attention_rnn`` whose loss gives direct
        gradients of h alone (the seed's 1.2.2(f)); else None. Worked out once per key: three
        mistakes read it."""
        source = key.source
        if source is None or source.model.name != "attention_rnn":
            return None
        if source.op != "backward" or source.select != "state_grads":
            return None
        if "attention_lags" not in source.derived:
            source.derived["attention_lags"] = cls._run(key, source)
        run: _AttentionLags | None = source.derived["attention_lags"]
        return run

    @classmethod
    def _run(cls, key: TensorKey, source: ModelSource) -> _AttentionLags | None:
        if set(source.grad_outputs) != {"h"}:
            return None  # the paths through a and w are another recursion
        direct = on_cpu(source.grad_outputs["h"])
        outputs = source.forward()
        h, a = outputs["h"], outputs["a"]  # (T, n), (T, k+1 or T+1)
        if h.dim() != 2 or direct.shape != h.shape or key.tensor.shape != h.shape:
            return None
        window = source.prepared.config.k
        steps, n = h.shape
        lags = steps if window == "inf" else min(int(window), steps)
        if steps * lags > MAX_ATTENDED_PAIRS or steps * lags * n * n > MAX_PARTIAL_ELEMENTS:
            return None  # one Jacobian per (step, lag) pair: for the homework's sizes only
        Q, K, V = (on_cpu(source.prepared.args[name]) for name in ("Q", "K", "V"))
        states = torch.cat([torch.zeros_like(h[:1]), h])  # (T+1, n)  h[0] = 0, h[1], ..., h[T]
        partials = []
        for i in range(1, lags + 1):
            p = 1 if window == "inf" else i  # inf shares index 1 between the past states
            before = states[: steps + 1 - i]  # (T-i+1, n)  h[t-i] for t = i..T, h[0] first
            after = states[i:]  # h[t]
            spread = before @ V[p].T - after  # v_i[t] - h[t]: the softmax moves every weight
            score = before @ (Q[p].T @ K[p] + K[p].T @ Q[p])  # dw_i[t]/dh[t-i], a row
            weight = a[i - 1 :, i, None, None]  # a_i[t] for t = i..T
            partials.append(weight * (spread[:, :, None] * score[:, None, :] + V[p]))
        return cls(partials, direct)

    def totals(self, lags: int | None = None, transposed: bool = True) -> torch.Tensor:
        """dl/dh[s] for s = 0..T (T+1, n), by the seed's recursion dl/dh[s] = direct +
        sum_i dl/dh[s+i] dh[s+i]/dh[s]: over the lags up to ``lags`` (None: all), each
        partial applied as the chain rule has it (the row vector times the Jacobian, J^T on
        a column) when ``transposed``, else as J times the column. h[0] has no direct term."""
        steps, n = self.direct.shape
        total = torch.zeros(steps + 1, n, dtype=self.direct.dtype)
        used = self.partials[: len(self.partials) if lags is None else lags]
        for s in reversed(range(steps + 1)):
            carried = self.direct[s - 1].clone() if s >= 1 else torch.zeros_like(total[0])
            for i, partial in enumerate(used, start=1):
                if s + i <= steps:
                    jacobian = partial[s]  # dh[s+i]/dh[s]
                    later = total[s + i]
                    carried += jacobian.T @ later if transposed else jacobian @ later
            total[s] = carried
        return total


@register
class LagPathsMissing(Mistake):
    """AttentionRNN's dl/dh[t] through time (seed 1.2.2(f)) carried back along the chain
    h[t+1] -> h[t] alone: the paths of the lags i >= 2 (h[t] -> h[t+i] directly, the lag-2
    path of AttentionRNN(2)) left out; for a wider window, also the longest lag alone, or
    every lag past 2, left out."""

    code = "lag_paths_missing"
    order = 29

    def candidates(self, key: TensorKey, shape: Shape) -> Iterator[Candidate]:
        run = _AttentionLags.of(key)
        if run is None or tuple(key.tensor.shape) != shape:
            return
        chain = (
            "Your gradient flows back only along the chain h[t+1] -> h[t]. In AttentionRNN(k) "
            "each of h[t+1], ..., h[t+k] attends to h[t] directly (through the query, key and "
            "value it projects h[t] with): dl/dh[t] sums a path from every later state whose "
            "window holds h[t], each through its own dh[t+i]/dh[t]."
        )
        yield Candidate(run.totals(lags=1)[1:], chain)
        # A wider window, AttentionRNN(k) with k >= 3: the longest lag left out, or every lag
        # past 2 (the homework's k = 2 taken for k). Two candidates at most, whatever k: each
        # is a pass over every (step, lag) pair. Lag T reaches h[0] alone, which has no row
        # in the answer: the longest lag that counts is T - 1.
        window = min(len(run.partials), run.direct.shape[0] - 1)
        for kept in sorted({2, window - 1}):
            if 2 <= kept < window:
                left_out = (
                    f"lag {window}" if kept == window - 1 else f"the lags {kept + 1} to {window}"
                )
                yield Candidate(
                    run.totals(lags=kept)[1:],
                    f"Your gradient carries dl/dh[t] back through the lags 1 to {kept} only: "
                    f"{left_out} left out. In AttentionRNN(k) each of h[t+1], ..., h[t+k] "
                    "attends to h[t] directly, so dl/dh[t] sums a path from every one of them, "
                    "each through its own dh[t+i]/dh[t].",
                )
        # Both mistakes of 1.2.2(f) at once: neither alone gives the answer.
        yield Candidate(
            run.totals(lags=1, transposed=False)[1:],
            f"{chain} And it carries the gradient back as J dl/dh[t+1], with J = "
            "dh[t+1]/dh[t], where the chain rule has J^T dl/dh[t+1] (the row vector "
            "dl/dh[t+1] times J).",
        )


@register
class JacobiansNotTransposed(Mistake):
    """AttentionRNN's dl/dh[t] through time (seed 1.2.2(f)), or the gated RNN's dl/dW_x
    (1.2.1(c)), with each dh[t+i]/dh[t] applied to the later gradient as J times the column,
    where the chain rule has its transpose."""

    code = "jacobians_not_transposed"
    order = 29

    def candidates(self, key: TensorKey, shape: Shape) -> Iterator[Candidate]:
        run = _AttentionLags.of(key)
        if run is not None and tuple(key.tensor.shape) == shape:
            yield Candidate(
                run.totals(transposed=False)[1:],
                "Your answer carries the gradient back as J dl/dh[t+i], with J = "
                "dh[t+i]/dh[t]. The chain rule gives the row vector dl/dh[t+i] times J, which "
                "as a column is J^T dl/dh[t+i]: use the transpose of each Jacobian.",
            )
            return
        steps = _GatedSteps.of_backward(key, shape)
        if steps is not None:
            yield Candidate(
                steps.w_x_gradient(steps.gate * (1 - steps.gate), transposed=False),
                "Your answer carries the gradient back through time as J dl/dh[t], with J = "
                "dh[t]/dh[t-1]. The chain rule gives the row vector dl/dh[t] times J, which as "
                "a column is J^T dl/dh[t]: use the transpose of each Jacobian.",
            )


@dataclass(frozen=True)
class _GatedSteps:
    """A gated RNN's run, as the mistakes with its derivatives recompute it from the seed's
    formulas: the gates c[t], how each step moves with its gate, the inputs and weights."""

    gate: torch.Tensor  # (T, m)  c[t]
    spread: torch.Tensor  # (T, m)  h[t-1] - W_x x[t]: how h[t] moves with the gate, dh/dc
    x: torch.Tensor  # (T, n)
    w_c: torch.Tensor  # (m, n)
    w_h: torch.Tensor  # (m, m)
    w_x: torch.Tensor  # (m, n)
    direct: torch.Tensor | None  # (T, m)  the loss's direct dl/dh[t], for a backward key

    @classmethod
    def of(cls, source: ModelSource, direct: torch.Tensor | None) -> _GatedSteps | None:
        args = source.prepared.args
        if not {"x", "W_c", "W_h", "W_x"} <= args.keys():
            return None
        outputs = source.forward()
        h, gate = outputs["h"], outputs["c"]  # (T, m) each
        x, w_c, w_h, w_x = (on_cpu(args[name]) for name in ("x", "W_c", "W_h", "W_x"))
        start = on_cpu(args["h0"])[None] if "h0" in args else torch.zeros_like(h[:1])
        spread = torch.cat([start, h[:-1]]) - x @ w_x.T  # h[t-1] - W_x x[t]
        return cls(gate, spread, x, w_c, w_h, w_x, direct)

    @classmethod
    def of_backward(cls, key: TensorKey, shape: Shape) -> _GatedSteps | None:
        """The run behind a key dl/dW_x of a gated model whose loss gives direct gradients of
        h alone (the seed's 1.2.1(c)), where the answers have its shape (m, n); else None."""
        source = _gated(key, "backward", "W_x")
        if source is None or set(source.grad_outputs) != {"h"}:
            return None
        direct = on_cpu(source.grad_outputs["h"])
        if direct.dim() != 2 or len(direct) > MAX_BACKPROPAGATED_STEPS:
            return None  # a loop in Python over the steps: for the homework's sizes only
        steps = cls.of(source, direct)
        if steps is None or tuple(steps.w_x.shape) != shape or direct.shape != steps.gate.shape:
            return None
        return steps

    def step_jacobians(self, slope: torch.Tensor) -> torch.Tensor:
        """dh[t]/dh[t-1] (T, m, m) with ``slope`` standing for sigma'(z[t]):
        diag(c[t]) + diag(h[t-1] - W_x x[t]) diag(slope[t]) W_h."""
        return torch.diag_embed(self.gate) + (self.spread * slope)[:, :, None] * self.w_h

    def w_x_gradient(self, slope: torch.Tensor, transposed: bool = True) -> torch.Tensor:
        """dl/dW_x (m, n) by backpropagation through time with ``slope`` for sigma'(z[t]):
        ``sum_t (g[t] * (1 - c[t])) x[t]^T`` over the total gradients g[t] = dl/dh[t] + the
        gradient carried back from h[t+1] through dh[t+1]/dh[t] (as the chain rule has it,
        J^T g, when ``transposed``; else J g)."""
        if self.direct is None:
            raise ValueError("the run of a state-Jacobian key has no loss to backpropagate")
        jacobians = self.step_jacobians(slope)
        carry = torch.zeros_like(self.gate[0])
        grad = torch.zeros_like(self.w_x)
        for t in reversed(range(len(self.gate))):
            total = self.direct[t] + carry
            grad += torch.outer(total * (1 - self.gate[t]), self.x[t])
            carry = (jacobians[t].T if transposed else jacobians[t]) @ total
        return grad

    def wrong_slopes(self) -> Iterator[tuple[torch.Tensor, str]]:
        """What students take for sigma'(z[t]) = c[t] (1 - c[t]), each with what is wrong."""
        yield (
            1 - self.gate**2,
            "The gate c[t] = sigma(z[t]) is a sigmoid, whose derivative is c[t] (1 - c[t]); "
            "your answer uses 1 - c[t]^2, the derivative of tanh.",
        )
        yield (
            self.gate,
            "Your answer uses sigma(z[t]) = c[t] where the chain rule needs the derivative "
            "sigma'(z[t]) = c[t] (1 - c[t]).",
        )
        alone = torch.sigmoid(self.x @ self.w_c.T)  # sigma(W_c x[t])
        yield (
            alone * (1 - alone),
            "Your answer takes the sigmoid's derivative at W_c x[t] alone. The gate's "
            "pre-activation is z[t] = W_c x[t] + W_h h[t-1], so its derivative is "
            "sigma'(z[t]) = c[t] (1 - c[t]), the term W_h h[t-1] included.",
        )
        twice = torch.sigmoid(self.gate)  # sigma(c[t])
        yield (
            twice * (1 - twice),
            "Your answer applies the sigmoid twice: sigma(c[t]) (1 - sigma(c[t])). c[t] is "
            "already sigma(z[t]), so the derivative is sigma'(z[t]) = c[t] (1 - c[t]).",
        )


@register
class GateDerivativeWrong(Mistake):
    """The gated RNN's dh[t]/dh[t-1] (seed 1.2.1(d)), or dl/dW_x through time (1.2.1(c)),
    with the sigmoid's derivative sigma'(z[t]) = c[t] (1 - c[t]) taken as tanh's, 1 - c[t]^2,
    as the sigmoid itself, c[t], at W_c x[t] without W_h h[t-1], or at c[t] (the sigmoid
    applied twice)."""

    code = "gate_derivative_wrong"
    order = 27

    def candidates(self, key: TensorKey, shape: Shape) -> Iterator[Candidate]:
        step = _gated_step(key, shape)
        if step is not None:
            steps = _GatedSteps.of(step[0], None)
            if steps is not None:
                for slope, message in steps.wrong_slopes():
                    yield Candidate(steps.step_jacobians(slope), message)
            return
        steps = _GatedSteps.of_backward(key, shape)
        if steps is not None:
            for slope, message in steps.wrong_slopes():
                yield Candidate(steps.w_x_gradient(slope), message)


@register
class ZeroStatesLeftOut(Mistake):
    """AttentionRNN's forward pass with the zero states h[t-i] = 0 (t - i < 1) left out of the
    softmax: they take part with score 0 and value 0 (seed 1.2.2(c)-(d)), so they still take
    a share of the weights."""

    code = "zero_states_left_out"
    order = 28

    def candidates(self, key: TensorKey, shape: Shape) -> Iterator[Candidate]:
        source = key.source
        if source is None or source.model.name != "attention_rnn":
            return
        if source.op != "forward" or source.select != "h" or tuple(key.tensor.shape) != shape:
            return
        args = source.prepared.args
        Q, K, V, x = (on_cpu(args[name]) for name in ("Q", "K", "V", "x"))
        window = source.prepared.config.k
        steps = len(x)
        lags = steps if window == "inf" else min(int(window), steps)
        if steps * lags > MAX_ATTENDED_PAIRS:
            return  # a loop in Python over (step, state) pairs: for the homework's sizes only
        yield Candidate(
            _attend_existing_states(Q, K, V, x, window),
            "Your answer leaves the zero states (h[t-i] = 0 for t - i < 1) out of the softmax. "
            "They take part: each has the score q^T k = 0 and so the weight e^0 / sum, and "
            "the value 0.",
        )


@register
class InitialStateRow(Mistake):
    """A recurrent model's answer with one row per step h[t] (the states, their one-step
    Jacobians, dl/dh[t] through time) given one row too many: h[0] = 0, the initial state,
    counted as a step in row 0. Without it the answer is told only that its shape is wrong."""

    code = "initial_state_row"
    order = 29

    def candidates(self, key: TensorKey, shape: Shape) -> Iterator[Candidate]:
        source = key.source
        tensor = key.tensor
        if source is None or tensor.dim() < 1 or shape != (len(tensor) + 1, *tensor.shape[1:]):
            return
        stepped = any(TIME_AXES & set(spec.shape) for spec in source.model.inputs)
        if not stepped or "h" not in {spec.name for spec in source.model.outputs}:
            return  # not a recurrent model's states: no h[0]
        zero = torch.zeros_like(tensor[:1])
        told = (
            "h[0] is the initial state, given rather than computed by a step: the question "
            "asks for t = 1, ..., T, with row t-1 for step t, and h[0] has no row."
        )
        if source.op == "forward" and source.select == "h":
            given = source.prepared.args.get("h0")
            start = zero if given is None else on_cpu(given).reshape(zero.shape)
            yield Candidate(
                torch.cat([start, tensor]),
                f"Your answer has one row too many: its row 0 is h[0]. {told}",
            )
        elif source.op == "state_jacobians" and source.select == "jacobians":
            yield Candidate(
                torch.cat([zero, tensor]),
                "Your answer has one Jacobian too many: a zero one first, for h[0]. " + told,
            )
        elif source.op == "backward" and source.select == "state_grads":
            run = _AttentionLags.of(key)
            if run is not None:
                yield Candidate(
                    run.totals(),
                    "Your answer has one row too many: its row 0 is dl/dh[0], the gradient "
                    f"carried back to the initial state. {told}",
                )
            yield Candidate(
                torch.cat([zero, tensor]),
                f"Your answer has one row too many: a row of zeros first, for h[0]. {told}",
            )


MAX_BACKPROPAGATED_STEPS = 256
"""The most time steps the gated RNN's mistakes in dl/dW_x backpropagate one by one (a loop in
Python, about 0.1 ms a step for the five mistakes together), far above the homework's T = 4."""

MAX_PARTIAL_ELEMENTS = 4_000_000
"""The most elements of the partials dh[t]/dh[t-i] the mistakes in AttentionRNN's dl/dh[t]
recompute (one n x n Jacobian per step and lag), far above the homework's 5 x 2 x 2 x 2."""

MAX_ATTENDED_PAIRS = 4096
"""The most (step, past state) pairs ``ZeroStatesLeftOut`` recomputes one by one (about 10 ms
per thousand), and the mistakes in AttentionRNN's dl/dh[t] carry the gradient back through:
T = 64 with every past state, far above the homework's T = 4."""


def _attend_existing_states(
    Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, x: torch.Tensor, window: int | str
) -> torch.Tensor:
    """h[t] of equations (3)-(8) with the softmax over x[t] and the states h[1], ... only."""
    states: list[torch.Tensor] = []
    for t in range(len(x)):
        lags = t if window == "inf" else min(int(window), t)  # the existing h[t-i], i >= 1
        sources = [x[t], *(states[t - i] for i in range(1, lags + 1))]
        index = [0, *(1 if window == "inf" else i for i in range(1, lags + 1))]
        scores = torch.stack([(Q[j] @ s) @ (K[j] @ s) for j, s in zip(index, sources, strict=True)])
        weights = torch.softmax(scores, dim=0)
        values = torch.stack([V[j] @ s for j, s in zip(index, sources, strict=True)])
        states.append(weights @ values)
    return torch.stack(states)

"""Vanishing or exploding gradients, read from the state Jacobians.

The seed's 1.2.1(d): where h[t] reads only h[t-1] (the gated RNN, AttentionRNN(1)), the
gradient reaching h[1] from the loss at h[t] goes through::

    dh[t]/dh[1] = dh[t]/dh[t-1] dh[t-1]/dh[t-2] ... dh[2]/dh[1]

a product of one-step Jacobians that shrinks or grows exponentially with t. Where h[t] also
reads older states (AttentionRNN(k >= 2) and inf), dh[t]/dh[1] sums every path, and the
model gives those totals (``models.attention_totals``). This module measures, per step, the
spectral norm and the smallest singular value of dh[t]/dh[t-1], the spectral norm of
dh[t]/dh[1], and the per-step growth factor ``rho = ||dh[T]/dh[1]||_2 ** (1 / (T - 1))``; the
verdict is *vanishing* when ``rho < VANISHING_BELOW``, *exploding* when
``rho > EXPLODING_ABOVE``, else *neither*. One step (T = 1) has no product to judge:
dh[1]/dh[1] is the identity, so rho is 1 and the verdict *neither*.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from models.errors import ModelError

VANISHING_BELOW = 0.9
EXPLODING_ABOVE = 1.1
# sigma'(z) < 0.01 when |z| > 4.6: the sigmoid is flat there and passes almost no gradient.
SATURATED_SIGMA_PRIME = 0.01

_LOG_FLOAT_MAX = 709.0
_NOT_A_NUMBER = (
    "the norms of the products of the one-step Jacobians are not a number in this dtype, so "
    "no verdict can be given; scale the weights or inputs down, or use float64"
)

Verdict = Literal["vanishing", "exploding", "neither"]


@dataclass(frozen=True)
class GradientFlow:
    """What the one-step Jacobians say about gradients through time.

    Attributes:
        spectral_norms: ``[T]``, ||dh[t]/dh[t-1]||_2 at entry t-1.
        min_singular_values: ``[T]``, the smallest singular value of dh[t]/dh[t-1].
        log_product_norms: ``[T]``, log ||dh[t]/dh[1]||_2 (0 at entry 0: the identity);
            ``-inf`` once it is exactly zero.
        growth_factor: rho, the geometric mean growth per step.
        verdict: ``vanishing``, ``exploding`` or ``neither``.
    """

    spectral_norms: torch.Tensor
    min_singular_values: torch.Tensor
    log_product_norms: torch.Tensor
    growth_factor: float
    verdict: Verdict

    def answer(
        self, jacobians: torch.Tensor, reason: str, terms: Mapping[str, float]
    ) -> dict[str, Any]:
        """The state-jacobians answer: tensors, the verdict, its reason (with ``uneven``'s
        sentence where one step makes the whole change) and its terms."""
        return {
            "jacobians": jacobians,
            "spectral_norms": self.spectral_norms,
            "min_singular_values": self.min_singular_values,
            "product_norms": self.log_product_norms.exp(),
            "log_product_norms": self.log_product_norms,
            "growth_factor": self.growth_factor,
            "verdict": self.verdict,
            "reason": reason + uneven(self.log_product_norms),
            "terms": dict(terms),
            "vanishing_below": VANISHING_BELOW,
            "exploding_above": EXPLODING_ABOVE,
        }


def log_product_norms(jacobians: torch.Tensor) -> torch.Tensor:
    """log ||dh[t]/dh[1]||_2 for t = 1..T, where dh[t]/dh[1] = J[t] ... J[2] (J[t] is entry
    t-1 of ``jacobians``, [T, m, m]) and dh[1]/dh[1] is the identity.

    Every factor and the running product are scaled by their largest absolute entry, and the
    logs of the scales are summed aside (in float64), so nothing overflows whatever the
    dtype: a largest entry never overflows, where a Frobenius norm, a sum of squares, does
    (float32 Jacobians of entries 5e19 gave a norm of inf, a product of 0 and a log of
    inf - inf = NaN); and a product of factors whose entries are at most 1 has entries at most
    m. A factor or a product that is exactly zero gives ``-inf``, never NaN: the spectral norm
    of a matrix whose largest entry is 1 lies in [1, m].

    Example:
        >>> big = torch.full((3, 2, 2), 5e19, dtype=torch.float32)  # ||J||_2 = 1e20
        >>> [round(v / math.log(10), 4) for v in log_product_norms(big).tolist()]
        [0.0, 20.0, 40.0]
    """
    seq_len, m, _ = jacobians.shape
    scales = jacobians.abs().amax(dim=(1, 2))  # (T,)  max |J[t]_ij|, finite
    units = jacobians / torch.where(scales > 0, scales, 1.0)[:, None, None]  # (T, m, m)
    current = torch.eye(m, dtype=jacobians.dtype, device=jacobians.device)  # (m, m)
    normalised, sizes = [current], [scales.new_ones(())]
    for t in range(1, seq_len):
        current = units[t] @ current  # (m, m)  entries at most m in absolute value
        size = current.abs().amax()  # ()
        current = current / torch.where(size > 0, size, 1.0)
        normalised.append(current)
        sizes.append(size)
    step_logs = scales.double().log()  # (T,)  -inf for a zero step
    step_logs[0] = 0.0  # J[1] is not a factor of any product dh[t]/dh[1]
    log_scales = (step_logs + torch.stack(sizes).double().log()).cumsum(0)  # (T,)
    spectral: torch.Tensor = torch.linalg.matrix_norm(torch.stack(normalised), ord=2)  # (T,)
    return (log_scales + spectral.double().log()).to(jacobians.dtype)  # (T,)


def require_finite(jacobians: torch.Tensor) -> None:
    """Refuse one-step Jacobians with entries that are not finite: no norm or singular value
    of them means anything (and LAPACK's SVD fails on them).

    Raises:
        ModelError: the Jacobians overflow the dtype.
    """
    if not bool(torch.isfinite(jacobians).all()):
        wider = "" if jacobians.dtype == torch.float64 else ", or use float64"
        raise ModelError(
            f"the one-step Jacobians overflow {jacobians.dtype} (some entries are not "
            f"finite), so no norm or verdict can be computed; scale the weights or inputs "
            f"down{wider}",
            "params",
        )


def analyse(jacobians: torch.Tensor, log_totals: torch.Tensor | None = None) -> GradientFlow:
    """Singular values per step, norms of dh[t]/dh[1] through time, growth factor and verdict.

    Args:
        jacobians: ``[T, m, m]``, entry t-1 the one-step Jacobian dh[t]/dh[t-1].
        log_totals: ``[T]``, log ||dh[t]/dh[1]||_2 where h[t] reads more than h[t-1] (every
            path summed); ``None``: the products of ``jacobians`` are dh[t]/dh[1].

    Returns:
        The ``GradientFlow`` of the sequence.

    Raises:
        ModelError: the Jacobians overflow the dtype (entries that are not finite), or their
            analysis is not a number (never silently a verdict of ``neither``).

    Example:
        >>> flow = analyse(0.5 * torch.eye(2, dtype=torch.float64).expand(4, 2, 2))
        >>> round(flow.growth_factor, 6), flow.verdict
        (0.5, 'vanishing')
    """
    require_finite(jacobians)
    singular = torch.linalg.svdvals(jacobians)  # (T, m), descending
    log_norms = log_product_norms(jacobians) if log_totals is None else log_totals  # (T,)
    growth = growth_factor(log_norms)
    if bool(torch.isnan(log_norms).any()) or bool(torch.isnan(singular).any()):
        raise ModelError(_NOT_A_NUMBER, "params")
    return GradientFlow(
        spectral_norms=singular[:, 0],
        min_singular_values=singular[:, -1],
        log_product_norms=log_norms,
        growth_factor=growth,
        verdict=verdict(growth),
    )


def growth_factor(log_norms: torch.Tensor) -> float:
    """rho = ||dh[T]/dh[1]||_2 ** (1 / (T - 1)) from ``[T]`` log norms; 1 when T = 1
    (dh[1]/dh[1] = I: no step of gradient flow to judge)."""
    seq_len = log_norms.shape[0]
    if seq_len == 1:
        return 1.0
    # Finite Jacobians bound the exponent near log(float max); min() keeps exp() finite.
    return math.exp(min(float(log_norms[-1]) / (seq_len - 1), _LOG_FLOAT_MAX))


def judged(seq_len: int) -> slice:
    """The steps whose one-step Jacobians are factors of dh[t]/dh[1]: t = 2..T (entries 1..),
    and the one step there is when T = 1. The terms behind a verdict average over these:
    dh[1]/dh[0] is in no product dh[t]/dh[1]."""
    return slice(1, None) if seq_len > 1 else slice(None)


def verdict(growth: float) -> Verdict:
    """``vanishing`` below ``VANISHING_BELOW``, ``exploding`` above ``EXPLODING_ABOVE``.

    Raises:
        ModelError: ``growth`` is NaN, which compares false with both bounds and would
            otherwise read as ``neither``.
    """
    if math.isnan(growth):
        raise ModelError(_NOT_A_NUMBER, "params")
    if growth < VANISHING_BELOW:
        return "vanishing"
    if growth > EXPLODING_ABOVE:
        return "exploding"
    return "neither"


def lead(kind: str, growth: float, steps: int) -> str:
    """The first half of the verdict's sentence: what dh[t]/dh[1] does per step."""
    if steps == 1:
        return (
            "Neither vanishing nor exploding: one step has no product dh[t]/dh[1] to judge "
            "(dh[1]/dh[1] is the identity; send two steps or more). In the one step "
            "dh[1]/dh[0]"
        )
    if kind == "vanishing":
        return (
            f"Vanishing: ||dh[t]/dh[1]||_2 shrinks by a factor of about {growth:.3g} per step "
            f"(below {VANISHING_BELOW})"
        )
    if kind == "exploding":
        return (
            f"Exploding: ||dh[t]/dh[1]||_2 grows by a factor of about {growth:.3g} per step "
            f"(above {EXPLODING_ABOVE})"
        )
    return (
        f"Neither vanishing nor exploding: ||dh[t]/dh[1]||_2 changes by a factor of about "
        f"{growth:.3g} per step (within [{VANISHING_BELOW}, {EXPLODING_ABOVE}])"
    )


def uneven(log_norms: torch.Tensor) -> str:
    """A sentence for the reason where one step makes all of the change the growth factor
    reports and the other steps together go the other way (an empty string otherwise): rho
    is the rate over the whole sequence, and then no step changes the norm at that rate
    (norms that grow to 19 by t = 5 and fall to 1e-7 at t = 6 are *vanishing* at 0.04 per
    step, and only that one step shrinks them).

    Example:
        >>> logs = torch.tensor([1.0, 2.0, 4.0, 8.0, 1e-7], dtype=torch.float64).log()
        >>> uneven(logs)[:60]
        ' That rate is of the whole sequence, and one step makes it: '
    """
    steps = log_norms.double().diff()  # (T-1,)  log of dh[t]/dh[1]'s change at t = 2..T
    if len(steps) < 2 or not bool(torch.isfinite(steps).all()):
        return ""
    whole = float(steps.sum())
    largest = int(steps.abs().argmax())
    rest = whole - float(steps[largest])
    if rest * whole >= 0 or abs(rest) < math.log(EXPLODING_ABOVE):
        return ""
    return (
        f" That rate is of the whole sequence, and one step makes it: ||dh[t]/dh[1]||_2 "
        f"changes by a factor of {math.exp(float(steps[largest])):.3g} at t = {largest + 2} "
        f"alone, while the other steps together {'grow' if rest > 0 else 'shrink'} it by a "
        f"factor of {math.exp(rest):.3g}."
    )

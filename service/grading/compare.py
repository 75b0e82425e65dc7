"""Judging tensor answers against a key within explicit tolerances, many answers at once.

The rule, for every element (``scale`` is the largest magnitude in the key)::

    |answer - key| <= max(atol, floor * scale) + rtol * |key|

``rtol`` bounds the error relative to each element; ``atol`` is an absolute floor; ``floor``
is an absolute floor *relative to the key's scale*, so that the exact zeros of a Jacobian
(where ``rtol * |key|`` is 0) accept the rounding noise of an answer computed in float32 or
by another summation order, whatever the key's units. Shapes must be equal: nothing
broadcasts. The one exception is a key with one element: then ``5``, ``[5]`` and ``[[5]]``
are the same answer (a scalar written with brackets), and the report says it was read so.

Answers with the key's shape are stacked into one ``(N, *shape)`` tensor and judged by a
few whole-tensor operations, so a class of answers costs little more than one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from service.grading.formulas import FLOAT_ATOL
from service.jsonout import nonfinite_name

PartialCredit = Literal["none", "elements", "steps"]

RULE = (
    "|answer - key| <= max(atol, floor * scale) + rtol * |key| for every element, where scale "
    "is the largest magnitude in the key; shapes must be equal (no broadcasting), except that "
    "a one-element answer (5, [5] or [[5]]) matches a one-element key"
)
FORMULA_RULE = (
    "at every point checked, |answer - reference| <= atol + rtol * |reference|, and never "
    "stricter than a relative 1e-9; a reference that is a whole number at every point (a "
    "size, a count) must be matched exactly; floor does not apply (a formula has no key scale)"
)
EXACT_FORMULA_RULE = (
    "the reference is a whole number at every point checked (a size, a count): the answer "
    "must equal it exactly there; rtol, atol and floor do not apply"
)
SHAPE_RULE = "sizes are compared exactly: rtol, atol and floor do not apply"
FIRST_MISMATCHES = 5


@dataclass(frozen=True)
class Tolerance:
    """The tolerance of one check (see the module docstring for the rule)."""

    rtol: float = 1e-5
    atol: float = 1e-8
    floor: float = 1e-6

    def effective_atol(self, scale: float) -> float:
        """The absolute part of the rule for a key whose largest magnitude is ``scale``."""
        return max(self.atol, self.floor * scale)

    def echo(self, scale: float | None) -> dict[str, Any]:
        """What every tensor answer echoes: the request's values and what they came to."""
        return {
            "rtol": self.rtol,
            "atol": self.atol,
            "floor": self.floor,
            "scale": scale,
            "effective_atol": None if scale is None else self.effective_atol(scale),
            "rule": RULE,
        }

    def formula_echo(self, exact: bool = False) -> dict[str, Any]:
        """What a formula answer echoes: a formula's values are many points, not one tensor,
        so there is no key scale and ``floor`` does not apply; the absolute part is ``atol``
        (at least ``formulas.FLOAT_ATOL``), or none where the reference is whole-numbered
        and matched exactly (``exact``)."""
        if exact:
            return self.echo(None) | {"rule": EXACT_FORMULA_RULE}
        return self.echo(None) | {
            "effective_atol": max(self.atol, FLOAT_ATOL),
            "rule": FORMULA_RULE,
        }

    def shape_echo(self) -> dict[str, Any]:
        """What a shape answer echoes: sizes are compared exactly, the tolerance unused."""
        return self.echo(None) | {"rule": SHAPE_RULE}


@dataclass(frozen=True)
class Judged:
    """The verdict on one answer."""

    correct: bool
    score: float
    report: dict[str, Any]


def key_scale(key: torch.Tensor) -> float:
    """The largest magnitude in the key (0 for an all-zero key)."""
    return float(key.abs().max()) if key.numel() else 0.0


def within(
    answers: torch.Tensor, target: torch.Tensor, tolerance: Tolerance, scale: float
) -> torch.Tensor:
    """Which of the stacked ``answers`` (N, *shape) match ``target`` (*shape): a (N,) bool."""
    allowed = tolerance.effective_atol(scale) + tolerance.rtol * target.abs()
    close = (answers - target).abs() <= allowed
    return close.reshape(answers.shape[0], -1).all(dim=1)


def as_scalar_if_one(key_shape: Sequence[int], answer: np.ndarray) -> tuple[np.ndarray, bool]:
    """The scalar rule: a one-element answer of a one-element key takes the key's shape."""
    if tuple(answer.shape) != tuple(key_shape) and answer.size == 1 == int(np.prod(key_shape)):
        return answer.reshape(key_shape), True
    return answer, False


def shape_mismatch(key: torch.Tensor, given: Sequence[int], label: str) -> Judged:
    """The report of an answer whose shape is not the key's: wrong, not invalid."""
    expected = list(key.shape)
    given_list = list(given)
    if len(given_list) != len(expected):
        how = f"rank {len(given_list)} instead of {len(expected)}"
    else:
        dims = [d for d, (a, b) in enumerate(zip(given_list, expected, strict=True)) if a != b]
        how = "size " + ", ".join(
            f"{given_list[d]} instead of {expected[d]} in axis {d}" for d in dims
        )
    return Judged(
        False,
        0.0,
        {
            "kind": "tensor",
            "label": label,
            "expected_shape": expected,
            "given_shape": given_list,
            "shape_matches": False,
            "elements": key.numel(),
            "given_elements": int(np.prod(given_list)),
            "message": (
                f"{label} has shape {expected} but the answer has shape {given_list} ({how}); "
                "shapes must match exactly, nothing is broadcast"
            ),
        },
    )


def _unravel(flat: Sequence[int], shape: Sequence[int]) -> list[list[int]]:
    if not shape:
        return [[] for _ in flat]
    indices: list[list[int]] = np.stack(
        np.unravel_index(np.asarray(flat, dtype=np.int64), tuple(shape)), 1
    ).tolist()
    return indices


def judge(
    key: torch.Tensor,
    answers: torch.Tensor,
    tolerance: Tolerance,
    partial: PartialCredit,
    label: str,
    read_as_scalar: Sequence[bool],
) -> list[Judged]:
    """Judge answers stacked as ``(N, *key.shape)`` against the key in a few tensor operations.

    Args:
        key: the reference, float64 on the CPU.
        answers: the answers, already in the key's shape, stacked on a new first axis.
        tolerance: the check's tolerance.
        partial: ``"none"`` (score 1 or 0), ``"elements"`` (the fraction of elements within
            tolerance) or ``"steps"`` (the fraction of entries along the first axis, e.g. the
            time steps of an RNN output, whose elements are all within tolerance).
        label: what the key is, for the message (``"dy/dweight"``).
        read_as_scalar: per answer, whether the scalar rule reshaped it.

    Returns:
        One ``Judged`` per answer, in order.
    """
    count, shape = answers.shape[0], list(key.shape)
    flat_key = key.reshape(-1)
    flat = answers.reshape(count, -1)
    scale = key_scale(key)
    allowed = tolerance.effective_atol(scale) + tolerance.rtol * flat_key.abs()  # (E,)
    diff = (flat - flat_key).abs()  # (N, E)
    bad = diff > allowed  # (N, E)
    mismatched = bad.sum(dim=1)
    max_abs, at_abs = diff.max(dim=1)
    nonzero = flat_key != 0
    relative = torch.where(nonzero, diff / flat_key.abs().clamp_min(1e-300), 0.0)
    max_rel, at_rel = relative.max(dim=1)
    steps_ok = bad.reshape(count, shape[0] if shape else 1, -1).any(dim=2).logical_not()
    elements = flat_key.numel()

    # Per-answer details are read from numpy views: cheap scalar access for each report.
    flat_np, diff_np, bad_np = flat.numpy(), diff.numpy(), bad.numpy()
    mismatched_l = mismatched.tolist()
    at_abs_l, at_rel_l = at_abs.tolist(), at_rel.tolist()
    abs_index, rel_index = _unravel(at_abs_l, shape), _unravel(at_rel_l, shape)
    key_l, max_abs_l, max_rel_l = flat_key.tolist(), max_abs.tolist(), max_rel.tolist()
    steps = steps_ok.shape[1]
    steps_ok_l = steps_ok.sum(dim=1).tolist()
    has_relative = bool(nonzero.any())

    results = []
    for n in range(count):
        wrong = mismatched_l[n]
        correct = wrong == 0
        row = flat_np[n]
        worst = _where(max_abs_l[n], abs_index[n], key_l[at_abs_l[n]], row[at_abs_l[n]])
        report: dict[str, Any] = {
            "kind": "tensor",
            "label": label,
            "expected_shape": shape,
            "given_shape": shape,
            "shape_matches": True,
            "elements": elements,
            "mismatched": wrong,
            "max_abs_error": worst,
            "max_rel_error": (
                _where(max_rel_l[n], rel_index[n], key_l[at_rel_l[n]], row[at_rel_l[n]])
                if has_relative
                else None
            ),
        }
        if read_as_scalar[n]:
            report["read_as_scalar"] = True
        if partial == "steps":
            report["steps_correct"] = steps_ok_l[n]
            report["steps"] = steps
        if correct:
            report["message"] = (
                f"all {elements} elements of {label} agree within tolerance "
                f"(largest error {max_abs_l[n]:.3g})"
            )
        else:
            bad_at = np.flatnonzero(bad_np[n])[:FIRST_MISMATCHES].tolist()
            report["first_mismatches"] = [
                {
                    "index": index,
                    "expected": key_l[i],
                    "given": float(row[i]),
                    "abs_error": _error(float(diff_np[n, i])),
                }
                for i, index in zip(bad_at, _unravel(bad_at, shape), strict=True)
            ]
            largest = (
                f"{max_abs_l[n]:.4g}"
                if math.isfinite(max_abs_l[n])
                else "Infinity (the difference overflows a float64)"
            )
            report["message"] = (
                f"{wrong} of {elements} elements of {label} are outside the tolerance; the "
                f"largest error is {largest} at {worst['index']} "
                f"(expected {worst['expected']:.6g}, got {worst['given']:.6g})"
            )
        score = _score(correct, partial, wrong, elements, steps_ok_l[n], steps)
        results.append(Judged(correct, score, report))
    return results


def _where(value: float, index: list[int], expected: float, given: Any) -> dict[str, Any]:
    return {"value": _error(value), "index": index, "expected": expected, "given": float(given)}


def _error(value: float) -> float | str:
    """An error as the report writes it. Answer and key are finite, but their difference (or
    its ratio to a tiny key) may overflow a float64: that is written ``"Infinity"``, as the
    service writes every non-finite number, never the ``null`` JSON writers make of it."""
    return value if math.isfinite(value) else nonfinite_name(value)


def _score(
    correct: bool, partial: PartialCredit, wrong: int, elements: int, steps_ok: int, steps: int
) -> float:
    if correct:
        return 1.0
    if partial == "elements":
        return (elements - wrong) / elements
    if partial == "steps":
        return steps_ok / steps
    return 0.0

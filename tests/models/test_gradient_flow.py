"""The through-time analysis of one-step Jacobians: products, growth factor and verdict."""

from __future__ import annotations

import math

import pytest
import torch

from models import gradient_flow
from models.errors import ModelError

F64 = torch.float64


def test_product_norms_match_explicit_matrix_products() -> None:
    jac = torch.randn(6, 4, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    logs = gradient_flow.log_product_norms(jac)
    product = torch.eye(4, dtype=F64)
    expected = [1.0]
    for t in range(1, 6):
        product = jac[t] @ product
        expected.append(float(torch.linalg.matrix_norm(product, ord=2)))
    torch.testing.assert_close(logs.exp(), torch.tensor(expected, dtype=F64), rtol=1e-10, atol=0)


def test_long_products_neither_overflow_nor_underflow_in_log_space() -> None:
    """2000 steps of diag(3, 1/3): the norm 3^1999 overflows float64, its log does not."""
    jac = torch.diag(torch.tensor([3.0, 1 / 3], dtype=F64)).expand(2000, 2, 2)
    flow = gradient_flow.analyse(jac)
    assert float(flow.log_product_norms[-1]) == pytest.approx(1999 * math.log(3), rel=1e-12)
    assert flow.growth_factor == pytest.approx(3.0, rel=1e-12)
    assert flow.verdict == "exploding"
    answer = flow.answer(jac, "why", {})
    assert math.isinf(float(answer["product_norms"][-1]))


def test_an_exactly_zero_product_is_vanishing_with_growth_zero() -> None:
    jac = torch.zeros(4, 3, 3, dtype=F64)
    flow = gradient_flow.analyse(jac)
    assert flow.growth_factor == 0.0
    assert flow.verdict == "vanishing"
    assert math.isinf(float(flow.log_product_norms[-1]))


def test_one_step_uses_that_step_for_the_growth_factor() -> None:
    flow = gradient_flow.analyse(torch.diag(torch.tensor([0.95, 0.5], dtype=F64))[None])
    assert flow.growth_factor == pytest.approx(0.95)
    assert flow.verdict == "neither"
    torch.testing.assert_close(flow.min_singular_values, torch.tensor([0.5], dtype=F64))


@pytest.mark.parametrize(
    ("growth", "expected"),
    [
        (0.5, "vanishing"),
        (0.899, "vanishing"),
        (0.9, "neither"),
        (1.0, "neither"),
        (1.1, "neither"),
        (1.101, "exploding"),
        (7.0, "exploding"),
    ],
)
def test_verdict_bands(growth: float, expected: str) -> None:
    assert gradient_flow.verdict(growth) == expected


def test_non_finite_jacobians_are_a_domain_error() -> None:
    jac = torch.full((2, 2, 2), float("inf"), dtype=F64)
    with pytest.raises(ModelError, match="overflow"):
        gradient_flow.analyse(jac)

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


@pytest.mark.parametrize("scale", [0.1, 0.95, 5.0])
def test_one_step_has_no_product_to_judge(scale: float) -> None:
    """dh[1]/dh[1] is the identity: growth 1 and no verdict of vanishing or exploding, whatever
    the one step dh[1]/dh[0] (its norms are still reported)."""
    step = torch.diag(torch.tensor([scale, 0.5 * scale], dtype=F64))[None]
    flow = gradient_flow.analyse(step)
    assert flow.growth_factor == 1.0
    assert flow.verdict == "neither"
    torch.testing.assert_close(flow.log_product_norms, torch.zeros(1, dtype=F64))
    torch.testing.assert_close(flow.spectral_norms, torch.tensor([scale], dtype=F64))
    torch.testing.assert_close(flow.min_singular_values, torch.tensor([0.5 * scale], dtype=F64))


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


def explicit_log_product_norms(jacobians: torch.Tensor) -> torch.Tensor:
    """log ||J[t] ... J[2]||_2 by plain products in float64 (where they fit in float64)."""
    jac = jacobians.to(F64)
    product = torch.eye(jac.shape[1], dtype=F64)
    logs = [0.0]
    for t in range(1, jac.shape[0]):
        product = jac[t] @ product
        logs.append(math.log(float(torch.linalg.matrix_norm(product, ord=2))))
    return torch.tensor(logs, dtype=F64)


@pytest.mark.parametrize("seq_len", [2, 3, 5])
def test_float32_factors_whose_frobenius_norm_overflows_give_finite_log_norms(
    seq_len: int,
) -> None:
    """Entries 5e19: ||J||_2 = 1e20 fits a float32, the sum of squares 1e40 does not (it gave
    a product of 0 and NaN); the products' norms 1e20, 1e40, ... computed in float64."""
    jac = torch.full((seq_len, 2, 2), 5e19, dtype=torch.float32)
    flow = gradient_flow.analyse(jac)
    assert flow.log_product_norms.dtype == torch.float32
    assert bool(torch.isfinite(flow.log_product_norms).all())
    expected = explicit_log_product_norms(jac)
    torch.testing.assert_close(flow.log_product_norms.double(), expected, rtol=1e-6, atol=1e-5)
    assert flow.growth_factor == pytest.approx(1e20, rel=1e-5)
    assert flow.verdict == "exploding"


def test_float32_factors_of_wildly_different_scales_match_float64_products() -> None:
    """Steps scaled by 1e-30 .. 1e30 in float32, against the plain products in float64."""
    gen = torch.Generator().manual_seed(3)
    exponents = torch.randint(-30, 31, (8,), generator=gen).double()
    jac64 = torch.randn(8, 3, 3, generator=gen, dtype=F64) * (10.0**exponents)[:, None, None]
    jac = jac64.float()
    logs = gradient_flow.log_product_norms(jac)
    torch.testing.assert_close(logs.double(), explicit_log_product_norms(jac), rtol=1e-5, atol=1e-4)


def test_float64_products_past_float64_are_the_sums_of_the_logs_of_rank_one_factors() -> None:
    """J[t] = s_t u_t v_t^T (unit u_t, v_t) gives J[t] ... J[2] = (prod s) (prod v_{i+1}.u_i)
    u_t v_2^T, whose 2-norm is |prod s (prod v_{i+1}.u_i)|: its log is a sum of logs, even
    where the norm (1e160 per step) overflows a float64 after two steps."""
    gen = torch.Generator().manual_seed(4)
    seq_len, m = 6, 3
    u = torch.nn.functional.normalize(torch.randn(seq_len, m, generator=gen, dtype=F64), dim=1)
    v = torch.nn.functional.normalize(torch.randn(seq_len, m, generator=gen, dtype=F64), dim=1)
    s = 10.0 ** torch.tensor([3.0, 160.0, 155.0, 170.0, 120.0, 165.0], dtype=F64)
    jac = s[:, None, None] * u[:, :, None] * v[:, None, :]  # (T, m, m)
    expected = [0.0]
    for t in range(1, seq_len):
        links = (v[t] * u[t - 1]).sum() if t > 1 else torch.tensor(1.0, dtype=F64)
        expected.append(expected[-1] + math.log(s[t]) + math.log(abs(float(links))))
    flow = gradient_flow.analyse(jac)
    torch.testing.assert_close(
        flow.log_product_norms, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-9
    )
    assert math.isinf(float(flow.answer(jac, "why", {})["product_norms"][-1]))
    assert flow.growth_factor == pytest.approx(math.exp(expected[-1] / (seq_len - 1)), rel=1e-9)
    assert flow.verdict == "exploding"


def test_a_zero_step_after_huge_ones_is_minus_infinity_not_nan() -> None:
    jac = torch.full((4, 2, 2), 1e300, dtype=F64)
    jac[2] = 0.0
    logs = gradient_flow.log_product_norms(jac)
    assert math.isfinite(float(logs[1]))
    assert logs[2:].tolist() == [-math.inf, -math.inf]
    assert gradient_flow.analyse(jac).verdict == "vanishing"


def test_a_growth_factor_that_is_not_a_number_is_refused_not_neither() -> None:
    with pytest.raises(ModelError, match="not a number"):
        gradient_flow.verdict(math.nan)


def diagonal_steps(factors: list[float]) -> torch.Tensor:
    """One-step Jacobians a * I (2 x 2): the product norm of dh[t]/dh[1] is the product of
    the factors of steps 2..t, whatever the first."""
    return torch.stack([f * torch.eye(2, dtype=torch.float64) for f in factors])


def test_a_verdict_that_one_step_makes_is_said_to_be_so() -> None:
    """Norms that grow to 16 by t = 5 and fall to 1.6e-7 at t = 6: *vanishing* by the rule
    (rho = 0.043), but only that step shrinks them, and the reason says so."""
    flow = gradient_flow.analyse(diagonal_steps([0.5, 2, 2, 2, 2, 1e-8]))
    assert flow.verdict == "vanishing"
    reason = flow.answer(torch.zeros(0), "Vanishing: ...", {})["reason"]
    assert reason.startswith("Vanishing: ...")
    assert "changes by a factor of 1e-08 at t = 6 alone" in reason
    assert "the other steps together grow it by a factor of 16." in reason
    # And the same for a first step that makes it: the norms then recover, slowly.
    flow = gradient_flow.analyse(diagonal_steps([1, 0.01, 1.5, 1.5]))
    assert flow.verdict == "vanishing"
    assert "0.01 at t = 2 alone" in gradient_flow.uneven(flow.log_product_norms)
    assert "grow it by a factor of 2.25" in gradient_flow.uneven(flow.log_product_norms)


@pytest.mark.parametrize(
    "factors",
    [
        [1, 0.5, 0.5, 0.5],  # steady
        [1, 0.5, 0.4, 1.05],  # a little back the other way: within the verdict's band
        [1, 2, 2, 0.9],  # exploding; the one step back is small
        [1, 0.5],  # one step: nothing to compare it with
        [1, 0, 2, 2],  # an exact zero: no step after it changes anything
    ],
)
def test_steady_norms_get_no_such_sentence(factors: list[float]) -> None:
    assert (
        gradient_flow.uneven(gradient_flow.analyse(diagonal_steps(factors)).log_product_norms) == ""
    )

"""The seed's closed forms of 1.1(c)(i)-(iv), written 1-based as in the seed, on random tensors."""

from __future__ import annotations

import torch

from models import autodiff
from models.registry import get_model

CONV1D = get_model("conv1d")
STRIDE_2 = CONV1D.parse_config({"stride": 2})


def seed_tensors(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(1, 5, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    return weight, x


def x1(x: torch.Tensor, c: int, n: int) -> torch.Tensor:
    """x[c, n] with the seed's 1-based indices."""
    return x[c - 1, n - 1]


def test_1_1c_i_output_is_1x3_and_matches_the_sum() -> None:
    weight, x = seed_tensors(0)
    y = CONV1D.forward(STRIDE_2, {"weight": weight, "x": x})["y"]
    assert y.shape == (1, 3)
    for i in (1, 2, 3):
        expected = sum(
            weight[0, c - 1, m] * x1(x, c, 2 * i - 1 + m) for c in range(1, 6) for m in range(3)
        )
        torch.testing.assert_close(y[0, i - 1], expected)


def test_1_1c_ii_dy_dw_is_x_at_2i_minus_1_plus_m() -> None:
    weight, x = seed_tensors(1)
    jac, _ = autodiff.jacobian(CONV1D, STRIDE_2, {"weight": weight, "x": x}, "y", "weight")
    assert jac.shape == (1, 3, 1, 5, 3)
    for i in (1, 2, 3):
        for c in range(1, 6):
            for m in range(3):
                assert jac[0, i - 1, 0, c - 1, m] == x1(x, c, 2 * i - 1 + m)


def test_1_1c_iii_dy_dx_is_w_inside_the_window_and_zero_outside() -> None:
    weight, x = seed_tensors(2)
    jac, _ = autodiff.jacobian(CONV1D, STRIDE_2, {"weight": weight, "x": x}, "y", "x")
    assert jac.shape == (1, 3, 5, 7)
    for i in (1, 2, 3):
        for c in range(1, 6):
            for n in range(1, 8):
                inside = n in (2 * i - 1, 2 * i, 2 * i + 1)
                expected = weight[0, c - 1, n - 2 * i + 1] if inside else torch.tensor(0.0)
                assert jac[0, i - 1, c - 1, n - 1] == expected


def test_1_1c_iv_dl_dw_sums_upstream_times_x() -> None:
    weight, x = seed_tensors(3)
    upstream = torch.randn(1, 3, dtype=torch.float64)
    _, grads, _ = autodiff.backward(CONV1D, STRIDE_2, {"weight": weight, "x": x}, {"y": upstream})
    assert grads["weight"].shape == (1, 5, 3)
    for c in range(1, 6):
        for m in range(3):
            expected = sum(upstream[0, i - 1] * x1(x, c, 2 * i - 1 + m) for i in (1, 2, 3))
            torch.testing.assert_close(grads["weight"][0, c - 1, m], expected)

"""Every conv backward and Jacobian against torch.autograd in float64 and central differences."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from models import autodiff
from models.registry import get_model
from tests.helpers import finite_difference_jacobian

CASES: list[tuple[str, dict[str, Any], dict[str, tuple[int, ...]]]] = [
    ("conv1d", {"stride": 2}, {"weight": (1, 5, 3), "x": (5, 7)}),
    (
        "conv1d",
        {"stride": 1, "padding": 2, "dilation": 2},
        {"weight": (3, 2, 3), "bias": (3,), "x": (2, 9)},
    ),
    ("conv1d", {"padding": "same", "dilation": 1}, {"weight": (2, 2, 4), "x": (2, 6)}),
    (
        "conv2d",
        {"stride": [2, 1], "padding": 1},
        {"weight": (2, 3, 3, 2), "bias": (2,), "x": (3, 5, 4)},
    ),
    ("conv2d", {"dilation": 2, "padding": "same"}, {"weight": (1, 2, 2, 3), "x": (2, 5, 5)}),
]


def make_args(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(*s, generator=gen, dtype=torch.float64) for n, s in shapes.items()}


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize(("name", "config", "shapes"), CASES)
def test_jacobians_match_autograd_and_finite_differences(
    name: str, config: dict[str, Any], shapes: dict[str, tuple[int, ...]]
) -> None:
    model = get_model(name)
    cfg = model.parse_config(config)
    args = make_args(shapes, 7)
    out_shape = model.output_shapes(cfg, {n: tuple(t.shape) for n, t in args.items()})["y"]
    for wrt in args:

        def f(value: torch.Tensor, wrt: str = wrt) -> torch.Tensor:
            return model.forward(cfg, {**args, wrt: value})["y"]

        ours, _ = autodiff.jacobian(model, cfg, args, "y", wrt)
        assert ours.shape == (*out_shape, *args[wrt].shape)
        oracle = torch.autograd.functional.jacobian(f, args[wrt])
        torch.testing.assert_close(ours, oracle, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            ours, finite_difference_jacobian(f, args[wrt]), rtol=1e-6, atol=1e-7
        )


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize(("name", "config", "shapes"), CASES)
def test_backward_matches_autograd_and_finite_differences(
    name: str, config: dict[str, Any], shapes: dict[str, tuple[int, ...]]
) -> None:
    model = get_model(name)
    cfg = model.parse_config(config)
    args = make_args(shapes, 11)
    y = model.forward(cfg, args)["y"]
    upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    outputs, grads, _ = autodiff.backward(model, cfg, args, {"y": upstream})
    torch.testing.assert_close(outputs["y"], y)
    assert set(grads) == set(args)
    for wrt, arg in args.items():

        def loss(value: torch.Tensor, wrt: str = wrt) -> torch.Tensor:
            return (model.forward(cfg, {**args, wrt: value})["y"] * upstream).sum()

        leaf = arg.clone().requires_grad_(True)
        (oracle,) = torch.autograd.grad(loss(leaf), leaf)
        torch.testing.assert_close(grads[wrt], oracle, rtol=1e-12, atol=1e-12)
        fd = finite_difference_jacobian(lambda v, loss=loss: loss(v).reshape(()), arg)
        torch.testing.assert_close(grads[wrt], fd, rtol=1e-6, atol=1e-7)


def test_forward_matches_an_explicit_loop() -> None:
    model = get_model("conv2d")
    cfg = model.parse_config({"stride": 2, "padding": 1, "dilation": 1})
    args = make_args({"weight": (2, 3, 3, 3), "bias": (2,), "x": (3, 6, 5)}, 5)
    y = model.forward(cfg, args)["y"]
    x = torch.nn.functional.pad(args["x"], (1, 1, 1, 1))
    w, b = args["weight"], args["bias"]
    expected = torch.zeros(2, 3, 3, dtype=torch.float64)
    for f in range(2):
        for i in range(3):
            for j in range(3):
                expected[f, i, j] = (w[f] * x[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3]).sum() + b[f]
    torch.testing.assert_close(y, expected)

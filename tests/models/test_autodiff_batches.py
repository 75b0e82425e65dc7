"""The autograd Jacobian computes its rows in batches of bounded memory, with the same answer."""

from __future__ import annotations

import pytest
import torch

from models import autodiff
from models.registry import get_model
from tests.helpers import finite_difference_jacobian


def conv1d_args(length: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(length)
    return {
        "weight": torch.randn(2, 3, 4, dtype=torch.float64, generator=generator),
        "x": torch.randn(3, length, dtype=torch.float64, generator=generator),
    }


def test_the_batch_shrinks_as_the_output_grows() -> None:
    model = get_model("conv1d")
    config = model.parse_config({})
    small = autodiff.jacobian_chunk_size(model, config, conv1d_args(10), "y")
    assert small == 2 * 7  # every row of a small Jacobian in one batch
    for length in (10_000, 100_000, 1_000_000):
        args = conv1d_args(length)
        rows = 2 * (length - 3)
        chunk = autodiff.jacobian_chunk_size(model, config, args, "y")
        per_row = rows + sum(t.numel() for t in args.values())
        assert 1 <= chunk < rows
        assert chunk * per_row <= autodiff.BATCH_ELEMENTS or chunk == 1


@pytest.mark.parametrize("wrt", ["weight", "x"])
def test_batched_rows_give_the_same_jacobian(monkeypatch: pytest.MonkeyPatch, wrt: str) -> None:
    model = get_model("conv1d")
    config = model.parse_config({"stride": 2})
    args = conv1d_args(11)
    whole = autodiff.autograd_jacobian(model, config, args, "y", wrt)
    monkeypatch.setattr(autodiff, "BATCH_ELEMENTS", 200)  # a few rows per batch
    assert autodiff.jacobian_chunk_size(model, config, args, "y") < 8
    batched = autodiff.autograd_jacobian(model, config, args, "y", wrt)
    torch.testing.assert_close(batched, whole, rtol=0, atol=0)

    def y_of(value: torch.Tensor) -> torch.Tensor:
        return model.forward(config, {**args, wrt: value})["y"]

    torch.testing.assert_close(batched, finite_difference_jacobian(y_of, args[wrt]))

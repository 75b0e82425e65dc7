"""The autograd Jacobian computes its rows in batches of bounded memory, with the same answer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def attention_args(k: int | str, steps: int, n: int) -> dict[str, torch.Tensor]:
    width = 2 if k == "inf" else int(k) + 1
    generator = torch.Generator().manual_seed(steps)
    args = {
        name: 0.3 * torch.randn(width, n, n, dtype=torch.float64, generator=generator)
        for name in "QKV"
    }
    args["x"] = torch.randn(steps, n, dtype=torch.float64, generator=generator)
    return args


@pytest.mark.parametrize(("k", "wrt"), [(2, "Q"), ("inf", "x")])
def test_batches_sized_by_the_saved_activations_give_the_same_jacobian(
    monkeypatch: pytest.MonkeyPatch, k: int | str, wrt: str
) -> None:
    model = get_model("attention_rnn")
    config = model.parse_config({"k": k})
    args = attention_args(k, 6, 2)
    whole = autodiff.autograd_jacobian(model, config, args, "h", wrt)
    shapes = {name: tuple(t.shape) for name, t in args.items()}
    saved = autodiff.saved_row_elements(model, config, shapes)
    monkeypatch.setattr(autodiff, "SAVED_ELEMENTS", 3 * saved)  # three rows per batch
    assert autodiff.jacobian_chunk_size(model, config, args, "h") == 3
    batched = autodiff.autograd_jacobian(model, config, args, "h", wrt)
    torch.testing.assert_close(batched, whole, rtol=0, atol=0)


PEAK_OF_ONE_BATCH = """
import sys
import torch
from torch.func import vjp, vmap
from models.registry import get_model


def peak() -> int:
    # VmHWM, the peak resident memory of this process's own address space: ru_maxrss would
    # start from the parent's (pytest's) at the fork.
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


torch.set_num_threads(1)
k, steps, n, wrt, rows = sys.argv[1], *map(int, sys.argv[2:4]), sys.argv[4], int(sys.argv[5])
k = k if k == "inf" else int(k)
model = get_model("attention_rnn")
config = model.parse_config({"k": k})
width = 2 if k == "inf" else k + 1
gen = torch.Generator().manual_seed(0)
args = {p: 0.3 * torch.randn(width, n, n, generator=gen, dtype=torch.float64) for p in "QKV"}
args["x"] = torch.randn(steps, n, generator=gen, dtype=torch.float64)
_, pullback = vjp(lambda v: model.forward(config, {**args, wrt: v})["h"], args[wrt])
cotangents = torch.ones(rows, steps, n, dtype=torch.float64)
before = peak()
vmap(pullback)(cotangents)
print(peak() - before)
"""


def peak_of_one_batch(k: int | str, steps: int, n: int, wrt: str, rows: int) -> int:
    """Bytes the peak memory of a fresh process rises by while one batch of ``rows`` rows of
    AttentionRNN's batched backward runs (after the forward pass)."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK_OF_ONE_BATCH, str(k), str(steps), str(n), wrt, str(rows)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize(
    ("k", "n", "wrt"), [(32, 2, "Q"), (2, 8, "V"), ("inf", 2, "x")], ids=["k32", "k2", "inf"]
)
def test_the_counted_saved_elements_cover_what_a_row_of_a_batch_holds(
    k: int | str, n: int, wrt: str
) -> None:
    """Memory, not time: what each row of a batch adds to the peak, from 32 to 512 rows over
    256 steps (measured 0.11-0.12, 0.06-0.09 and 0.27 MiB a row), is within the 8 bytes of each
    element ``batched_row_elements`` counts (0.18, 0.13 and 0.51 MiB)."""
    model = get_model("attention_rnn")
    config = model.parse_config({"k": k})
    steps = 256
    assert model.batched_row_elements is not None
    counted = 8 * model.batched_row_elements(config, {"x": (steps, n)})
    few, many = 32, 512
    added = peak_of_one_batch(k, steps, n, wrt, many) - peak_of_one_batch(k, steps, n, wrt, few)
    assert 0 < added / (many - few) <= counted

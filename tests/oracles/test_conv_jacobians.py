"""The closed-form conv Jacobians against torch.autograd in float64 and central differences."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from models import autodiff, conv_jacobians
from models.conv_jacobians import conv_jacobian
from models.registry import get_model
from tests.helpers import finite_difference_jacobian

# (model, config, shapes): strides, dilations, integer and 'same' padding (asymmetric when
# D(K - 1) is odd), taps that fall wholly in the padding, input left over by the stride,
# per-dimension values, with and without bias.
CASES: list[tuple[str, dict[str, Any], dict[str, tuple[int, ...]]]] = [
    ("conv1d", {"stride": 2}, {"weight": (1, 5, 3), "x": (5, 7)}),
    ("conv1d", {"stride": 3}, {"weight": (2, 2, 2), "bias": (2,), "x": (2, 9)}),
    ("conv1d", {"dilation": 3, "padding": 1}, {"weight": (2, 3, 3), "x": (3, 8)}),
    ("conv1d", {"padding": 4, "stride": 2}, {"weight": (2, 1, 2), "bias": (2,), "x": (1, 3)}),
    ("conv1d", {"padding": "same"}, {"weight": (3, 2, 4), "bias": (3,), "x": (2, 6)}),
    ("conv1d", {"padding": "same", "dilation": 3}, {"weight": (1, 2, 2), "x": (2, 5)}),
    ("conv1d", {"padding": "valid", "dilation": 2}, {"weight": (2, 2, 3), "x": (2, 7)}),
    (
        "conv2d",
        {"stride": [2, 1], "padding": [1, 2], "dilation": [1, 2]},
        {"weight": (2, 3, 3, 2), "bias": (2,), "x": (3, 5, 4)},
    ),
    ("conv2d", {"padding": "same", "dilation": [1, 2]}, {"weight": (2, 2, 2, 3), "x": (2, 4, 5)}),
    ("conv2d", {"stride": 3, "padding": 2}, {"weight": (1, 1, 2, 2), "bias": (1,), "x": (1, 4, 5)}),
]
IDS = [f"{name}-{config}-{'bias' if 'bias' in s else 'nobias'}" for name, config, s in CASES]


def make_args(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(*s, generator=gen, dtype=torch.float64) for n, s in shapes.items()}


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    """torch's intra-op threads for the test: one (numpy fills the Jacobian, a block at a
    time) or several (torch fills it over its threads); restored after."""
    configured = torch.get_num_threads()
    torch.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        torch.set_num_threads(configured)


@pytest.mark.parametrize(("name", "config", "shapes"), CASES, ids=IDS)
def test_closed_forms_match_autograd_and_finite_differences(
    name: str, config: dict[str, Any], shapes: dict[str, tuple[int, ...]], threads: int
) -> None:
    model = get_model(name)
    cfg = model.parse_config(config)
    args = make_args(shapes, 17)
    out_shape = model.output_shapes(cfg, {n: tuple(t.shape) for n, t in args.items()})["y"]
    for wrt, arg in args.items():

        def f(value: torch.Tensor, wrt: str = wrt) -> torch.Tensor:
            return model.forward(cfg, {**args, wrt: value})["y"]

        closed = conv_jacobian(cfg, args, "y", wrt)
        assert closed is not None, wrt
        assert closed.shape == (*out_shape, *arg.shape) and closed.dtype == torch.float64
        oracle = torch.autograd.functional.jacobian(f, arg)
        torch.testing.assert_close(closed, oracle, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(closed, finite_difference_jacobian(f, arg), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("block_bytes", [1, 1600])
@pytest.mark.parametrize("threads", [1], indirect=True)  # blocks are the one-thread fill's
def test_filling_a_block_of_filters_at_a_time_gives_the_same_jacobians(
    monkeypatch: pytest.MonkeyPatch, block_bytes: int, threads: int
) -> None:
    """Blocks of one filter, and of several with a shorter last block, as large Jacobians
    are filled (the other tests' Jacobians fit in one block)."""
    for name, config, shapes in CASES[2:5] + CASES[7:8]:
        model = get_model(name)
        cfg = model.parse_config(config)
        args = make_args({**shapes, "weight": (5, *shapes["weight"][1:])}, 23)
        args.pop("bias", None)
        whole = {wrt: conv_jacobian(cfg, args, "y", wrt) for wrt in args}
        monkeypatch.setattr(conv_jacobians, "CHUNK_BYTES", block_bytes)
        for wrt in args:
            blocked = conv_jacobian(cfg, args, "y", wrt)
            assert blocked is not None and whole[wrt] is not None
            torch.testing.assert_close(blocked, whole[wrt], rtol=0, atol=0)
            oracle = autodiff.autograd_jacobian(model, cfg, args, "y", wrt)
            torch.testing.assert_close(blocked, oracle, rtol=1e-12, atol=1e-12)
        monkeypatch.undo()


@pytest.mark.parametrize(("name", "config", "shapes"), CASES, ids=IDS)
def test_views_with_odd_strides_and_offsets_give_the_same_jacobians(
    name: str, config: dict[str, Any], shapes: dict[str, tuple[int, ...]], threads: int
) -> None:
    """The placements are worked out from the weight's strides and offset: a weight and an
    input that are views into larger tensors (transposed, sliced) give what contiguous ones
    give, and what autograd gives."""
    model = get_model(name)
    cfg = model.parse_config(config)
    args = make_args(shapes, 29)
    views = {}
    for arg_name, tensor in args.items():
        # The values laid out with the dimensions reversed, 3 elements into a larger storage.
        order = list(reversed(range(tensor.dim())))
        laid_out = tensor.permute(order).contiguous()
        storage = torch.zeros(3 + tensor.numel(), dtype=tensor.dtype)
        storage[3:] = laid_out.flatten()
        views[arg_name] = storage[3:].view(laid_out.shape).permute(order)  # its own inverse
        assert torch.equal(views[arg_name], tensor) and views[arg_name].storage_offset() == 3
    assert views["weight"].stride() != args["weight"].stride()
    for wrt in args:
        strided, contiguous = (
            conv_jacobian(cfg, views, "y", wrt),
            conv_jacobian(cfg, args, "y", wrt),
        )
        assert strided is not None and contiguous is not None
        torch.testing.assert_close(strided, contiguous, rtol=0, atol=0)
        oracle = autodiff.autograd_jacobian(model, cfg, views, "y", wrt)
        torch.testing.assert_close(strided, oracle, rtol=1e-12, atol=1e-12)


def test_plans_of_few_placements_are_kept_and_the_store_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plan is reused for the same shapes (the same object comes back); a padded 2-D
    kernel's plan, one placement per tap and border, is not kept; a full store starts over."""
    monkeypatch.setattr(conv_jacobians, "_INPUT_PLANS", {})
    monkeypatch.setattr(conv_jacobians, "PLANS_KEPT", 2)
    plans = conv_jacobians._INPUT_PLANS
    small = ((2, 3, 3), (9, 3, 1), (8,), (1,), (1,), ((0, 0),))
    first = conv_jacobians.input_placements(*small)
    assert len(first[1]) == 1 and conv_jacobians.input_placements(*small) is first
    padded = ((2, 3, 5, 5), (75, 25, 5, 1), (9, 9), (1, 1), (1, 1), ((2, 2), (2, 2)))
    many = conv_jacobians.input_placements(*padded)
    assert len(many[1]) > 16 and list(plans) == [small]
    other = ((2, 3, 3), (9, 3, 1), (9,), (1,), (1,), ((0, 0),))
    conv_jacobians.input_placements(*other)
    assert list(plans) == [small, other]
    third = ((2, 3, 3), (9, 3, 1), (10,), (1,), (1,), ((0, 0),))
    conv_jacobians.input_placements(*third)
    assert list(plans) == [third]
    assert conv_jacobians.input_placements(*small) == first  # worked out again, the same


def test_the_registry_uses_the_closed_form_and_says_so() -> None:
    model = get_model("conv2d")
    cfg = model.parse_config({"padding": 1})
    args = make_args({"weight": (2, 2, 3, 3), "bias": (2,), "x": (2, 4, 4)}, 3)
    for wrt in args:
        jac, method = autodiff.jacobian(model, cfg, args, "y", wrt)
        assert method == "closed-form"
        torch.testing.assert_close(jac, autodiff.autograd_jacobian(model, cfg, args, "y", wrt))


def test_what_has_no_closed_form_is_left_to_autograd() -> None:
    model = get_model("conv1d")
    cfg = model.parse_config({})
    args = make_args({"weight": (1, 1, 2), "x": (1, 4)}, 5)
    assert conv_jacobian(cfg, args, "z", "x") is None
    assert conv_jacobian(cfg, args, "y", "bias") is None  # absent optional argument


def test_float32_stays_float32() -> None:
    model = get_model("conv1d")
    cfg = model.parse_config({"stride": 2, "padding": 1})
    args64 = make_args({"weight": (2, 3, 3), "bias": (2,), "x": (3, 8)}, 9)
    args32 = {n: t.float() for n, t in args64.items()}
    for wrt in args32:
        closed = conv_jacobian(cfg, args32, "y", wrt)
        assert closed is not None and closed.dtype == torch.float32
        torch.testing.assert_close(closed.double(), conv_jacobian(cfg, args64, "y", wrt))


def test_dtypes_numpy_lacks_and_tensors_requiring_grad_take_torchs_own_path() -> None:
    """bfloat16 and tensors that require grad cannot be shared with numpy: zeros and the band
    are then written by torch, with the same entries (the closed forms only copy inputs), and
    no graph is recorded either way."""
    model = get_model("conv2d")
    cfg = model.parse_config({"stride": 2, "padding": 1})
    args = make_args({"weight": (2, 2, 3, 2), "bias": (2,), "x": (2, 5, 4)}, 11)
    rounded = {n: t.bfloat16() for n, t in args.items()}
    exact = {n: t.double() for n, t in rounded.items()}  # bfloat16 values are float64 values
    leaves = {n: t.clone().requires_grad_(True) for n, t in args.items()}
    for wrt in args:
        low = conv_jacobian(cfg, rounded, "y", wrt)
        assert low is not None and low.dtype == torch.bfloat16
        oracle = conv_jacobian(cfg, exact, "y", wrt)
        assert oracle is not None
        torch.testing.assert_close(low.double(), oracle, rtol=0, atol=0)
        tracked = conv_jacobian(cfg, leaves, "y", wrt)
        assert tracked is not None and not tracked.requires_grad
        autograd = autodiff.autograd_jacobian(model, cfg, args, "y", wrt)
        torch.testing.assert_close(tracked, autograd, rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_closed_forms_match_the_cpu() -> None:
    model = get_model("conv2d")
    cfg = model.parse_config({"stride": 2, "padding": "valid", "dilation": 2})
    args = make_args({"weight": (3, 2, 3, 2), "bias": (3,), "x": (2, 9, 8)}, 4)
    on_gpu = {n: t.cuda() for n, t in args.items()}
    for wrt in args:
        gpu = conv_jacobian(cfg, on_gpu, "y", wrt)
        assert gpu is not None and gpu.is_cuda
        torch.testing.assert_close(gpu.cpu(), conv_jacobian(cfg, args, "y", wrt))

"""Conv Jacobians written into recycled zeroed buffers (``models.zeroed_buffers``): the same
answers as autograd in float64 and central differences whatever the buffer held before, and
never a buffer whose memory is still in use."""

from __future__ import annotations

import random
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from models import conv_jacobians, zeroed_buffers
from models.conv_jacobians import conv_jacobian
from models.registry import get_model
from models.zeroed_buffers import ZeroedBuffers, recycling
from service.responses import tensor_answer
from tests.helpers import finite_difference_jacobian
from tests.oracles.test_conv_jacobians import CASES, make_args

# Layers whose dy/dx has the same size (2 x 8 x 3 x 10 = 480 entries) but whose entries that
# are not zero lie elsewhere: a buffer left by one must come back as zeros for the next.
SAME_SIZE: list[tuple[str, dict[str, Any], dict[str, tuple[int, ...]]]] = [
    ("conv1d", {}, {"weight": (2, 3, 3), "x": (3, 10)}),
    ("conv1d", {"padding": 1}, {"weight": (2, 3, 5), "x": (3, 10)}),
    ("conv1d", {"dilation": 2}, {"weight": (2, 3, 2), "x": (3, 10)}),
    (
        "conv1d",
        {"padding": "same", "dilation": 3},
        {"weight": (2, 3, 3), "bias": (2,), "x": (3, 8)},
    ),
    # 480 entries too, shaped (2, 2, 2, 3, 4, 5)
    ("conv2d", {}, {"weight": (2, 3, 3, 4), "x": (3, 4, 5)}),
]


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[ZeroedBuffers]:
    """A pool of its own for the test, serving Jacobians of any size (the process's keeps
    only those of 1 MiB or more), entered as the jacobian route enters it."""
    buffers = ZeroedBuffers(max_bytes=1 << 20, min_bytes=0)
    monkeypatch.setattr(zeroed_buffers, "BUFFERS", buffers)
    with recycling():
        yield buffers


def autograd_jacobian(
    name: str, config: dict[str, Any], args: dict[str, torch.Tensor], wrt: str
) -> torch.Tensor:
    model = get_model(name)
    cfg = model.parse_config(config)

    def f(value: torch.Tensor) -> torch.Tensor:
        return model.forward(cfg, {**args, wrt: value})["y"]

    return torch.autograd.functional.jacobian(f, args[wrt])


def closed(name: str, config: dict[str, Any], args: dict[str, torch.Tensor], wrt: str) -> Any:
    model = get_model(name)
    return conv_jacobian(model.parse_config(config), args, "y", wrt)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_run_of_layers_through_recycled_buffers_matches_autograd(
    pool: ZeroedBuffers, threads: int
) -> None:
    configured = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        order = random.Random(threads).choices(SAME_SIZE + CASES, k=60)
        pointers: list[int] = []
        for step, (name, config, shapes) in enumerate(order):
            args = make_args(shapes, step)
            for wrt in ("x", "weight"):
                jac = closed(name, config, args, wrt)
                assert jac is not None
                pointers.append(jac.data_ptr())
                oracle = autograd_jacobian(name, config, args, wrt)
                torch.testing.assert_close(jac, oracle, rtol=1e-12, atol=1e-12)
                del jac  # free again: the next Jacobian of its size takes the buffer
    finally:
        torch.set_num_threads(configured)
    # The buffers were used over and over, not one fresh tensor each time.
    assert len(set(pointers)) < len(pointers) / 4
    assert 0 < pool.held_bytes <= pool.max_bytes


def test_a_recycled_jacobian_matches_central_differences(pool: ZeroedBuffers) -> None:
    name, config, shapes = SAME_SIZE[1]
    model = get_model(name)
    cfg = model.parse_config(config)
    for seed in range(3):  # the first into a fresh buffer, the others into the same one
        args = make_args(shapes, seed)
        jac = conv_jacobian(cfg, args, "y", "x")

        def f(value: torch.Tensor, args: dict[str, torch.Tensor] = args) -> torch.Tensor:
            return model.forward(cfg, {**args, "x": value})["y"]

        assert jac is not None
        fd = finite_difference_jacobian(f, args["x"])
        torch.testing.assert_close(jac, fd, rtol=1e-6, atol=1e-7)
        del jac
    assert pool.held_bytes == 480 * 8


def test_a_buffer_still_referenced_in_any_form_is_never_handed_out_again(
    pool: ZeroedBuffers,
) -> None:
    name, config, shapes = SAME_SIZE[0]
    first = closed(name, config, make_args(shapes, 1), "x")
    kept = first.clone()
    # The tensor itself, then only a numpy array of it, then only a memoryview of a slice.
    window = kept.numpy().reshape(-1)[3:9]
    holders: list[Any] = [first, first.numpy(), memoryview(first.numpy().reshape(-1)[3:9])]
    del first
    for seed in range(2, 5):
        other = closed(name, config, make_args(shapes, seed), "x")
        assert not torch.equal(other, kept)
        for holder in holders:
            held = window if isinstance(holder, memoryview) else kept.numpy()
            assert np.array_equal(np.asarray(holder), held)
        holders.pop(0)  # drop the tensor first, then the array
        del other
    args = make_args(shapes, 9)
    again = closed(name, config, args, "x")
    torch.testing.assert_close(again, autograd_jacobian(name, config, args, "x"))


def test_a_safetensors_answer_keeps_its_buffer_until_it_is_sent(pool: ZeroedBuffers) -> None:
    name, config, shapes = SAME_SIZE[2]
    jac = closed(name, config, make_args(shapes, 1), "weight")
    expected = jac.numpy().tobytes()
    response = tensor_answer({"jacobian": jac}, "safetensors")  # sends the tensor's own memory
    del jac
    for seed in range(2, 4):
        other = closed(name, config, make_args(shapes, seed), "weight")
        assert other.numpy().tobytes() != expected
    parts = response.parts  # type: ignore[attr-defined]
    assert bytes(parts[-1]) == expected


def test_recycling_serves_only_plain_cpu_float_tensors_inside_its_block(
    pool: ZeroedBuffers,
) -> None:
    like = torch.zeros(3, dtype=torch.float64)
    assert pool.take((4, 5), like) is not None
    for other in (
        torch.zeros(3, dtype=torch.float16),  # a dtype the fills do not recycle
        torch.zeros(3, dtype=torch.float64, requires_grad=True),
    ):
        assert pool.take((4, 5), other) is None
    big = ZeroedBuffers(max_bytes=1 << 20, min_bytes=1024)
    assert big.take((4, 5), like) is None  # 160 bytes: below its smallest
    assert ZeroedBuffers(max_bytes=0, min_bytes=0).take((4, 5), like) is None
    token = zeroed_buffers._recycling.set(False)
    try:
        assert pool.take((4, 5), like) is None  # outside recycling(): as before
    finally:
        zeroed_buffers._recycling.reset(token)


def test_under_torch_func_the_closed_form_takes_no_recycled_buffer(pool: ZeroedBuffers) -> None:
    name, config, shapes = SAME_SIZE[0]
    args = make_args(shapes, 3)
    model = get_model(name)
    cfg = model.parse_config(config)

    def dy_dx_of(weight: torch.Tensor) -> torch.Tensor:
        jac = conv_jacobian(cfg, {**args, "weight": weight}, "y", "x")
        assert jac is not None
        return jac

    # d(dy/dx)/dW through the closed form itself: the weight is a functorch wrapper there.
    second = torch.func.jacrev(dy_dx_of)(args["weight"])
    assert second.shape == (2, 8, 3, 10, 2, 3, 3)
    assert pool.held_bytes == 0


def test_the_pool_keeps_within_its_bytes_and_lets_go_of_free_buffers() -> None:
    like = torch.zeros(1, dtype=torch.float64)
    pool = ZeroedBuffers(max_bytes=2 * 800, min_bytes=0)
    with recycling():
        a, b = pool.take((100,), like), pool.take((100,), like)
        assert a is not None and b is not None
        assert pool.take((100,), like) is None  # both in use, no room for a third
        assert pool.held_bytes == 1600
        a.written_whole([])  # as a fill does once it has written all of it
        del a
        # No room for another size: nothing is let go inside a take (it would free memory
        # in a request's time), and the caller allocates as usual.
        assert pool.take((50,), like) is None and pool.held_bytes == 1600
        again = pool.take((10, 10), like)  # the free one, of the same size
        assert again is not None and not again.fresh
        del again
        assert pool.release_free(unused_for=60) == 0  # taken just now: kept a while
        assert pool.release_free() == 800  # b is in use
        c = pool.take((50,), like)
        assert c is not None and c.fresh and pool.held_bytes == 1200
        del b, c
        assert pool.release_free() == 1200 and pool.held_bytes == 0
        # A buffer taken but never written whole is new again for its next holder.
        d = pool.take((100,), like)
        assert d is not None and d.fresh
        del d
        e = pool.take((100,), like)
        assert e is not None and e.fresh


def test_threads_recycling_at_once_each_get_their_own_answers(pool: ZeroedBuffers) -> None:
    name, config, shapes = SAME_SIZE[1]
    inputs = [make_args(shapes, seed) for seed in range(4)]
    expected = [autograd_jacobian(name, config, args, "x") for args in inputs]
    failures: list[str] = []

    def work(index: int) -> None:
        with recycling():  # each thread enters it, as each request does
            for _ in range(50):
                jac = closed(name, config, inputs[index], "x")
                if not torch.allclose(jac, expected[index], rtol=1e-12, atol=1e-12):
                    failures.append(f"thread {index}")
                del jac

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert 0 < pool.held_bytes <= 4 * 480 * 8


def poison_new_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every new buffer of a pool holds NaN from the start, as reused memory may hold
    anything."""
    new_buffer = ZeroedBuffers._new_buffer

    def poisoned(self: ZeroedBuffers, *args: Any) -> Any:
        buffer = new_buffer(self, *args)
        if buffer is not None:
            torch.empty(0, dtype=buffer.dtype).set_(buffer.storage).fill_(float("nan"))
        return buffer

    monkeypatch.setattr(ZeroedBuffers, "_new_buffer", poisoned)


def test_a_new_buffer_is_written_whole_whatever_its_memory_held(
    pool: ZeroedBuffers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new buffer is uninitialised memory, written zeros and all like a tensor of its own:
    here it holds NaN from the start, as reused memory may hold anything."""
    poison_new_buffers(monkeypatch)
    for threads in (1, 2):
        configured = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for name, config, shapes in SAME_SIZE[:2]:
                args = make_args(shapes, threads)
                for wrt in ("x", "weight"):
                    jac = closed(name, config, args, wrt)
                    oracle = autograd_jacobian(name, config, args, wrt)
                    torch.testing.assert_close(jac, oracle, rtol=1e-12, atol=1e-12)
                    del jac
                pool.release_free()  # the next layer's buffers are new again
        finally:
            torch.set_num_threads(configured)


def test_a_fill_cut_short_leaves_the_buffer_new_for_the_next_jacobian(
    pool: ZeroedBuffers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first fill of a new buffer (NaN here, as reused memory may hold anything) fails
    half-way: the next Jacobian of that size must not take the rest of it for zeros."""
    poison_new_buffers(monkeypatch)
    name, config, shapes = SAME_SIZE[1]
    args = make_args(shapes, 4)
    fill_whole = conv_jacobians._fill_whole

    def cut_short(jac: torch.Tensor, placements: Any) -> torch.Tensor:
        jac.view(-1)[: jac.numel() // 3] = 0.0  # a third written, then a failure
        raise RuntimeError("cut short")

    monkeypatch.setattr(conv_jacobians, "_fill_whole", cut_short)
    with pytest.raises(RuntimeError, match="cut short"):
        closed(name, config, args, "x")
    monkeypatch.setattr(conv_jacobians, "_fill_whole", fill_whole)
    jac = closed(name, config, args, "x")
    torch.testing.assert_close(jac, autograd_jacobian(name, config, args, "x"))


@pytest.mark.parametrize("kind", ["untyped", "typed"])
def test_a_buffer_whose_storage_alone_is_held_is_not_handed_out(
    pool: ZeroedBuffers, kind: str
) -> None:
    """Torch hands the pool's own storage object to whoever asks a Jacobian for its storage:
    holding it adds no count on the storage, only a Python reference."""
    name, config, shapes = SAME_SIZE[0]
    first = closed(name, config, make_args(shapes, 1), "x")
    kept = first.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage is deprecated
        storage = first.untyped_storage() if kind == "untyped" else first.storage()
    del first
    other = closed(name, config, make_args(shapes, 2), "x")
    assert not torch.equal(other, kept)
    untyped = storage.untyped() if kind == "typed" else storage
    seen = torch.empty(0, dtype=torch.float64).set_(untyped)
    assert torch.equal(seen[: kept.numel()].reshape(kept.shape), kept)

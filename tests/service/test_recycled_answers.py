"""The jacobian route writes large conv Jacobians into recycled zeroed buffers: the answers
are autograd's, in every encoding and one after another, the pool's size is a setting, and an
idle worker lets the buffers go."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from models import zeroed_buffers
from models.conv import ConvConfig
from models.conv_jacobians import conv_jacobian
from models.zeroed_buffers import ZeroedBuffers
from service import memory
from service.app import create_app
from service.binary import read_safetensors_answer
from service.settings import Settings
from tests.helpers import run_idle_trimmer

# dy/dx has 8 x 60 x 8 x 64 = 245,760 entries (1.9 MiB), dy/dW 8 x 60 x 8 x 8 x 5: both are
# large enough for the process's pool.
FILTERS, CHANNELS, LENGTH, KERNEL = 8, 8, 64, 5


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[ZeroedBuffers]:
    buffers = ZeroedBuffers()
    monkeypatch.setattr(zeroed_buffers, "BUFFERS", buffers)
    yield buffers


def b64(tensor: torch.Tensor) -> dict[str, Any]:
    data = base64.b64encode(tensor.numpy().astype("<f8").tobytes()).decode()
    return {"shape": list(tensor.shape), "datatype": "FP64", "b64": data}


def layer(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(FILTERS, CHANNELS, KERNEL, generator=gen, dtype=torch.float64)
    return weight, torch.randn(CHANNELS, LENGTH, generator=gen, dtype=torch.float64)


def answer(client: TestClient, seed: int, wrt: str, encoding: str) -> np.ndarray:
    weight, x = layer(seed)
    body = {
        "params": {"weight": b64(weight)},
        "inputs": {"x": b64(x)},
        "of": "y",
        "wrt": wrt,
        "encoding": encoding,
        "device": "cpu",
    }
    response = client.post("/v1/models/conv1d/jacobian", json=body)
    assert response.status_code == 200, response.text
    if encoding == "safetensors":
        jacobian = read_safetensors_answer(response.content)["jacobian"]
        return np.asarray(jacobian)
    tensor = response.json()["jacobian"]
    if encoding == "b64":
        return np.frombuffer(base64.b64decode(tensor["b64"]), "<f8").reshape(tensor["shape"])
    return np.asarray(tensor["data"])


def jacrev(seed: int, wrt: str) -> np.ndarray:
    weight, x = layer(seed)
    if wrt == "x":
        result = torch.func.jacrev(lambda v: F.conv1d(v, weight))(x)
    else:
        result = torch.func.jacrev(lambda w: F.conv1d(x, w))(weight)
    return result.numpy()


def test_answers_one_after_another_are_autograds_in_every_encoding(pool: ZeroedBuffers) -> None:
    with TestClient(create_app(Settings())) as client:
        for seed, encoding in enumerate(["safetensors", "json", "b64", "safetensors", "json"]):
            for wrt in ("x", "weight"):
                got = answer(client, seed, wrt, encoding)
                np.testing.assert_allclose(got, jacrev(seed, wrt), rtol=1e-12, atol=1e-12)
    # Both Jacobians were written into kept buffers (one each: each answer had been sent).
    dy_dx = FILTERS * (LENGTH - KERNEL + 1) * CHANNELS * LENGTH * 8
    dy_dw = FILTERS * (LENGTH - KERNEL + 1) * FILTERS * CHANNELS * KERNEL * 8
    assert pool.held_bytes == dy_dx + dy_dw


def test_the_pool_size_is_a_setting_and_zero_turns_it_off(pool: ZeroedBuffers) -> None:
    with TestClient(create_app(Settings(jacobian_buffer_bytes=0))) as client:
        assert pool.max_bytes == 0
        got = answer(client, 3, "x", "safetensors")
        np.testing.assert_allclose(got, jacrev(3, "x"), rtol=1e-12, atol=1e-12)
        assert pool.held_bytes == 0
    with TestClient(create_app(Settings(jacobian_buffer_bytes=5 << 20))) as client:
        assert pool.max_bytes == 5 << 20


def test_an_idle_worker_lets_the_buffers_go(pool: ZeroedBuffers) -> None:
    """Jacobians of 1 to 4 MiB, as here (1.9 and 1.2 MiB), mark no large answer to trim
    after: the buffers they leave are let go all the same."""
    memory.clear_pending()
    with TestClient(create_app(Settings())) as client:
        answer(client, 1, "x", "safetensors")
        answer(client, 1, "weight", "safetensors")
    assert pool.held_bytes > 0 and not memory.trim_pending()
    run_idle_trimmer(lambda: pool.held_bytes == 0)
    assert pool.held_bytes == 0


def test_a_buffer_in_use_is_kept_when_the_others_are_let_go(pool: ZeroedBuffers) -> None:
    with TestClient(create_app(Settings())) as client:
        answer(client, 1, "x", "safetensors")
        weight, x = layer(2)
        with zeroed_buffers.recycling():
            held = conv_jacobian(
                ConvConfig(1, (1,), (0,), (1,)), {"weight": weight, "x": x}, "y", "weight"
            )
    assert held is not None
    in_use = held.numel() * 8
    run_idle_trimmer(lambda: pool.held_bytes == in_use)
    assert pool.held_bytes == in_use
    del held
    run_idle_trimmer(lambda: pool.held_bytes == 0)
    assert pool.held_bytes == 0

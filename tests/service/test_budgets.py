"""Budgets checked from declared shapes, before anything is allocated or computed.

The limits on sequence length, hidden size and ``k`` are the recurrent models' own limit hooks
(``models/limits.py``), tested with those models in ``tests/service/test_rnn_routes.py``.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from models import autodiff
from models.registry import MODELS
from service.app import create_app
from service.budgets import check_count
from service.problems import Problem
from service.settings import Settings


def never(*_: Any, **__: Any) -> Any:
    raise AssertionError("a refused request must not reach the computation")


@pytest.fixture
def no_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every computation fails the test if it is reached."""
    monkeypatch.setattr(autodiff, "jacobian", never)
    monkeypatch.setattr(autodiff, "backward", never)
    for name, model in list(MODELS.items()):
        monkeypatch.setitem(MODELS, name, dataclasses.replace(model, forward=never))


def b64_zeros(shape: list[int]) -> dict[str, Any]:
    raw = np.zeros(shape, dtype="<f8").tobytes()
    return {"shape": shape, "b64": base64.b64encode(raw).decode()}


@pytest.mark.usefixtures("no_compute")
def test_the_805m_entry_jacobian_is_refused_before_computing(client: TestClient) -> None:
    body = {
        "config": {"padding": 1},
        "params": {"weight": b64_zeros([16, 3, 3, 3])},
        "inputs": {"x": b64_zeros([3, 64, 64])},
        "of": "y",
        "wrt": "x",
    }
    response = client.post("/v1/models/conv2d/jacobian", json=body)
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert "805,306,368 entries" in detail and "[16, 64, 64, 3, 64, 64]" in detail
    assert f"{Settings().max_jacobian_elements:,}" in detail


@pytest.mark.usefixtures("no_compute")
def test_small_inputs_with_a_huge_output_are_refused(client: TestClient) -> None:
    # 4,000 filters of 1x1 over a 100x100 image: 40M output elements from 14k input elements.
    body = {
        "params": {"weight": b64_zeros([4000, 1, 1, 1])},
        "inputs": {"x": b64_zeros([1, 100, 100])},
    }
    response = client.post("/v1/models/conv2d/forward", json=body)
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert "40,000,000 elements" in detail and "y [4000, 100, 100]" in detail
    assert f"{Settings().max_output_elements:,}" in detail


def test_a_count_over_its_limit_is_refused_with_the_number_and_the_limit() -> None:
    settings = Settings(max_batch_checks=3)
    check_count(3, "max_batch_checks", "checks", "checks", settings)
    with pytest.raises(Problem) as caught:
        check_count(4, "max_batch_checks", "checks", "checks", settings)
    assert caught.value.status == 413
    assert caught.value.detail == "checks holds 4 checks; the limit is 3"


def test_info_reports_every_budget_and_limit() -> None:
    settings = Settings(max_sequence_length=11, max_batch_checks=12, compute_deadline_seconds=13.0)
    with TestClient(create_app(settings)) as client:
        limits = client.get("/v1/info").json()["limits"]
    budget_names = {name for name in Settings.model_fields if name.startswith("max_")}
    assert budget_names <= set(limits)
    assert limits["max_sequence_length"] == 11
    assert limits["max_batch_checks"] == 12
    assert limits["compute_deadline_seconds"] == 13.0
    assert limits["max_body_bytes"] == settings.body_limit
    for name in (
        "max_tensor_elements",
        "max_request_elements",
        "max_jacobian_elements",
        "max_output_elements",
        "max_rank",
        "max_hidden_size",
        "max_k",
        "max_concurrent_computations",
        "body_timeout_seconds",
        "compute_queue_size",
        "compute_queue_timeout_seconds",
        "cpu_flops_per_second",
        "cuda_flops_per_second",
    ):
        assert limits[name] == getattr(settings, name), name


# A 3-element input whose padding ('same' with a huge dilation, or a huge padding that the
# dilation makes room for) would build a padded input of billions of elements.
SAME_1D = {
    "config": {"padding": "same", "dilation": 536_870_911},
    "params": {"weight": [[[1.0, 2.0]]], "bias": [0.5]},
    "inputs": {"x": [[1.0, 2.0, 3.0]]},
}
WIDE_2D = {
    "config": {"padding": 1_048_576, "dilation": 2_097_152},
    "params": {"weight": [[[[1.0, 2.0], [3.0, 4.0]]]], "bias": [0.5]},
    "inputs": {"x": [[[1.0, 2.0], [3.0, 4.0]]]},
}
SAME_2D = {**WIDE_2D, "config": {"padding": "same", "dilation": 1_048_575}}
PADDED = [
    ("conv1d", SAME_1D, "[1, 536870914]", "536,870,914", "dilation", {"y": [[1.0, 1.0, 1.0]]}),
    ("conv2d", WIDE_2D, "[1, 2097154, 2097154]", "4,398,054,899,716", "padding", {"y": [[[1.0]]]}),
    (
        "conv2d",
        SAME_2D,
        "[1, 1048577, 1048577]",
        "1,099,513,724,929",
        "dilation",
        {"y": [[[1.0] * 2] * 2]},
    ),
]
OPERATIONS = [
    ("forward", {}),
    ("backward", None),  # grad_outputs of y's shape, from the case
    ("jacobian", {"of": "y", "wrt": "weight"}),
    ("jacobian", {"of": "y", "wrt": "x"}),
    ("jacobian", {"of": "y", "wrt": "bias"}),
]


@pytest.mark.usefixtures("no_compute")
@pytest.mark.parametrize(
    ("operation", "extra"),
    OPERATIONS,
    ids=["forward", "backward", "dy/dweight", "dy/dx", "dy/dbias"],
)
@pytest.mark.parametrize(
    ("model", "body", "shape", "count", "field", "grads"),
    PADDED,
    ids=["conv1d-same", "conv2d-padding", "conv2d-same"],
)
def test_a_padded_input_over_the_tensor_budget_is_refused_before_computing(
    client: TestClient,
    model: str,
    body: dict[str, Any],
    shape: str,
    count: str,
    field: str,
    grads: dict[str, Any],
    operation: str,
    extra: dict[str, Any] | None,
) -> None:
    request = {**body, **(extra if extra is not None else {"grad_outputs": grads})}
    response = client.post(f"/v1/models/{model}/{operation}", json=request)
    assert response.status_code == 413, response.text
    problem = response.json()
    assert problem["type"].endswith("/budget-exceeded")
    assert shape in problem["detail"] and f"{count} elements" in problem["detail"]
    assert f"max_tensor_elements is {Settings().max_tensor_elements:,}" in problem["detail"]
    assert problem["errors"][0]["loc"] == ["body", "config", field]


@pytest.mark.usefixtures("no_compute")
def test_a_check_whose_key_pads_over_the_budget_is_refused(client: TestClient) -> None:
    expected = {"op": "forward", "model": "conv1d", **SAME_1D}
    response = client.post("/v1/check", json={"expected": expected, "answer": [[0.0, 0.0, 0.0]]})
    assert response.status_code == 413, response.text
    assert "[1, 536870914]" in response.json()["detail"]


@pytest.mark.parametrize("operation", ["forward", "backward", "jacobian-weight", "jacobian-x"])
def test_the_padded_input_budget_is_the_tensor_budget_to_the_element(operation: str) -> None:
    """x [1, 30] with 'same' and dilation D pads to 30 + D: at the limit it is computed, and
    right (against an oracle that pads by hand), one element over it is refused. (The limit
    stays above the shipped assignment's largest tensor, 35 elements, which start-up checks.)"""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 30, generator=gen, dtype=torch.float64)
    weight = torch.randn(1, 1, 2, generator=gen, dtype=torch.float64)
    upstream = torch.randn(1, 30, generator=gen, dtype=torch.float64)
    extra: dict[str, Any] = {
        "forward": {},
        "backward": {"grad_outputs": {"y": upstream.tolist()}},
        "jacobian-weight": {"of": "y", "wrt": "weight"},
        "jacobian-x": {"of": "y", "wrt": "x"},
    }[operation]
    path = f"/v1/models/conv1d/{operation.split('-')[0]}"

    def body(dilation: int) -> dict[str, Any]:
        config = {"padding": "same", "dilation": dilation}
        return {
            "config": config,
            "params": {"weight": weight.tolist()},
            "inputs": {"x": x.tolist()},
        }

    with TestClient(create_app(Settings(max_tensor_elements=39))) as small:
        refused = small.post(path, json={**body(10), **extra})
        answer = small.post(path, json={**body(9), **extra})
    assert refused.status_code == 413, refused.text
    assert "40 elements" in refused.json()["detail"]
    assert "max_tensor_elements is 39" in refused.json()["detail"]
    assert answer.status_code == 200, answer.text

    # 'same' with D(K - 1) = 9 pads 4 before and 5 after (torch puts the odd one after).
    def conv(w: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv1d(torch.nn.functional.pad(inp, (4, 5)), w, dilation=9)

    def wire(tensor: dict[str, Any]) -> torch.Tensor:
        return torch.tensor(tensor["data"], dtype=torch.float64)

    result = answer.json()
    if operation == "forward":
        torch.testing.assert_close(wire(result["outputs"]["y"]), conv(weight, x))
    elif operation == "backward":
        grads = torch.autograd.functional.vjp(conv, (weight, x), upstream)[1]
        torch.testing.assert_close(wire(result["grads"]["weight"]), grads[0])
        torch.testing.assert_close(wire(result["grads"]["x"]), grads[1])
    else:
        jacobians = torch.autograd.functional.jacobian(conv, (weight, x))
        expected = jacobians[0] if operation == "jacobian-weight" else jacobians[1]
        torch.testing.assert_close(wire(result["jacobian"]), expected)


# x [1, 700, 700] with a 24 x 24 kernel: a 3.9 MB input (5.2 MB as b64 JSON) that torch's
# float64 CPU convolution unfolds into 576 x 677 * 677 = 263,997,504 elements (2.1 GB); peak
# memory rose by 2.0 GB. A [1, 1000, 1000] x with a 64 x 64 kernel asked for 28.8 GB.
WORKSPACE = [
    ([1, 1, 24, 24], [1, 700, 700], "576 x 458,329 = 263,997,504 elements", "2,111,980,032"),
    ([1, 1, 64, 64], [1, 1000, 1000], "4,096 x 877,969 = 3,596,161,024", "28,769,288,192"),
]


@pytest.mark.usefixtures("no_compute")
@pytest.mark.parametrize(
    ("operation", "extra"),
    [
        ("forward", {}),
        ("backward", None),
        ("jacobian", {"of": "y", "wrt": "bias"}),
    ],
    ids=["forward", "backward", "dy/dbias"],
)
@pytest.mark.parametrize(("weight", "x", "matrix", "size"), WORKSPACE, ids=["24x24", "64x64"])
def test_a_conv_whose_unfolded_input_is_over_the_workspace_budget_is_refused(
    client: TestClient,
    operation: str,
    extra: dict[str, Any] | None,
    weight: list[int],
    x: list[int],
    matrix: str,
    size: str,
) -> None:
    """A 413 that gives the sizes and names the setting, before anything is allocated."""
    out = [x[1] - weight[2] + 1, x[2] - weight[3] + 1]
    body: dict[str, Any] = {
        "device": "cpu",
        "params": {"weight": b64_zeros(weight), "bias": [0.0]},
        "inputs": {"x": b64_zeros(x)},
    }
    grads = {"grad_outputs": {"y": b64_zeros([1, *out])}}
    response = client.post(
        f"/v1/models/conv2d/{operation}", json={**body, **(grads if extra is None else extra)}
    )
    assert response.status_code == 413, response.text[:300]
    problem = response.json()
    assert problem["type"].endswith("/budget-exceeded")
    assert matrix in problem["detail"] and f"{size} bytes" in problem["detail"]
    limit = Settings().max_conv_workspace_bytes
    assert limit == 512 * 2**20
    assert f"max_conv_workspace_bytes is {limit:,}" in problem["detail"]
    assert problem["errors"][0]["loc"] == ["body", "params", "weight"]


@pytest.mark.usefixtures("no_compute")
def test_a_check_whose_conv_key_unfolds_over_the_workspace_budget_is_refused(
    client: TestClient,
) -> None:
    expected = {
        "op": "forward",
        "model": "conv2d",
        "params": {"weight": b64_zeros([1, 1, 24, 24])},
        "inputs": {"x": b64_zeros([1, 700, 700])},
    }
    response = client.post("/v1/check", json={"expected": expected, "answer": [[[0.0]]]})
    assert response.status_code == 413, response.text[:300]
    assert "max_conv_workspace_bytes" in response.json()["detail"]


@pytest.mark.parametrize(
    ("dims", "config", "weight", "x", "columns"),
    [
        (1, {}, [2, 3, 5], [3, 40], 3 * 5 * 36),
        (1, {"stride": 3, "dilation": 2, "padding": 2}, [2, 3, 5], [3, 40], 3 * 5 * 12),
        (2, {"padding": "same"}, [4, 2, 3, 4], [2, 9, 11], 2 * 12 * 99),
        (2, {"stride": [2, 1], "padding": 1}, [1, 3, 3, 3], [3, 10, 7], 27 * 5 * 7),
    ],
)
def test_the_conv_workspace_budget_is_held_to_the_byte(
    dims: int, config: dict[str, Any], weight: list[int], x: list[int], columns: int
) -> None:
    """C * prod(K) * prod(out) elements at 8 bytes each: at the limit the forward and backward
    passes are computed, one byte under it they are refused."""
    body = {
        "device": "cpu",
        "config": config,
        "params": {"weight": b64_zeros(weight)},
        "inputs": {"x": b64_zeros(x)},
    }
    with TestClient(create_app(Settings(max_conv_workspace_bytes=8 * columns))) as fits:
        answer = fits.post(f"/v1/models/conv{dims}d/forward", json=body)
        assert answer.status_code == 200, answer.text
        y = answer.json()["outputs"]["y"]["shape"]
        grads = {"grad_outputs": {"y": b64_zeros(y)}}
        backward = fits.post(f"/v1/models/conv{dims}d/backward", json={**body, **grads})
        assert backward.status_code == 200, backward.text
    with TestClient(create_app(Settings(max_conv_workspace_bytes=8 * columns - 1))) as tight:
        for operation, extra in (("forward", {}), ("backward", grads)):
            refused = tight.post(f"/v1/models/conv{dims}d/{operation}", json={**body, **extra})
            assert refused.status_code == 413, refused.text
            assert f"= {columns:,} elements" in refused.json()["detail"]

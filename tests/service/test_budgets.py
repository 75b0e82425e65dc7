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

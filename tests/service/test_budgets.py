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

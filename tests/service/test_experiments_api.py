"""POST /v1/experiments/temporal-order: a bounded reference run, its curves, and its caps."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from service import devices
from service.app import create_app
from service.routes.diagnostics import EXPERIMENT_CAPS, experiment_slots
from service.settings import Settings

PATH = "/v1/experiments/temporal-order"
# A few hundred sequences in all: a fraction of a second.
TINY = {
    "device": "cpu",
    "epochs": 2,
    "train_batches": 3,
    "test_batches": 2,
    "batch_size": 16,
    "hidden_size": 8,
}
CAPS = Settings(
    torch_threads=1,  # tiny tensors: more threads only contend on a busy machine
    experiment_max_epochs=3,
    experiment_max_batches=4,
    experiment_max_batch_size=16,
    experiment_max_length=30,
    experiment_max_hidden_size=8,
    experiment_max_seconds=30,
)


@pytest.fixture(scope="module")
def capped() -> Iterator[TestClient]:
    with TestClient(create_app(CAPS)) as test_client:
        yield test_client


def _problem(response: Any, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    return body


def test_run_reports_initial_and_per_epoch_curves(capped: TestClient) -> None:
    response = capped.post(PATH, json=TINY)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["classes"] == ["Q", "R", "S", "U"]
    assert set(body["initial"]) >= {"loss", "accuracy"}
    assert abs(body["initial"]["loss"] - math.log(4)) < 0.15  # untrained: at chance
    assert body["stopped_early"] is False and body["stop_reason"] is None
    assert body["device"] == "cpu" and body["dtype"] == "float64"
    assert [e["epoch"] for e in body["epochs"]] == [1, 2]
    for epoch in body["epochs"]:
        losses = epoch["train_batch_losses"]
        assert len(losses) == 3
        assert epoch["train_loss_mean"] == pytest.approx(statistics.fmean(losses), rel=1e-14)
        assert epoch["train_loss_last_batch"] == losses[-1]
        accuracies = epoch["train_batch_accuracies"]
        assert epoch["train_accuracy"] == pytest.approx(statistics.fmean(accuracies), rel=1e-14)
        assert 0 <= epoch["test_accuracy"] <= 1 and epoch["test_loss"] > 0
    # The same request gives the same run.
    again = capped.post(PATH, json=TINY).json()
    assert again["epochs"] == body["epochs"] and again["initial"] == body["initial"]


def test_epoch_rows_feed_the_loss_curve_diagnosis(capped: TestClient) -> None:
    """As the README pipes them: the untrained model's loss as epoch 0, so that the
    diagnosis' epoch n is the run's epoch n and its initial loss the untrained model's (the
    first trained epoch was read as the untrained model, every epoch told one too early)."""
    run = capped.post(PATH, json=TINY).json()
    rows = [[run["initial"]["loss"]]] + [e["train_batch_losses"] for e in run["epochs"]]
    diagnosis = capped.post(
        "/v1/diagnostics/loss-curve", json={"batch_losses": rows, "num_classes": 4}
    ).json()
    assert diagnosis["initial_loss"] == run["initial"]["loss"]
    trained = run["epochs"]
    assert diagnosis["epoch_mean"][1:] == pytest.approx([e["train_loss_mean"] for e in trained])
    assert diagnosis["last_batch"][1:] == [e["train_loss_last_batch"] for e in trained]
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "jq '{batch_losses: ([[.initial.loss]] + [.epochs[].train_batch_losses])" in readme


def test_float32_and_clipping(capped: TestClient) -> None:
    body = TINY | {"dtype": "float32", "clip_grad_norm": 0.5, "cell": "lstm"}
    response = capped.post(PATH, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["dtype"] == "float32"


@pytest.mark.parametrize(
    ("change", "field", "setting"),
    [
        ({"epochs": 4}, "epochs", "EXPERIMENT_MAX_EPOCHS"),
        ({"train_batches": 5}, "train_batches", "EXPERIMENT_MAX_BATCHES"),
        ({"test_batches": 5}, "test_batches", "EXPERIMENT_MAX_BATCHES"),
        ({"batch_size": 17}, "batch_size", "EXPERIMENT_MAX_BATCH_SIZE"),
        ({"hidden_size": 9}, "hidden_size", "EXPERIMENT_MAX_HIDDEN_SIZE"),
        ({"length_range": [20, 31]}, "length_range", "EXPERIMENT_MAX_LENGTH"),
        ({"max_seconds": 31}, "max_seconds", "EXPERIMENT_MAX_SECONDS"),
    ],
)
def test_runs_over_the_caps_are_refused(
    capped: TestClient, change: dict[str, Any], field: str, setting: str
) -> None:
    problem = _problem(capped.post(PATH, json=TINY | change))
    assert problem["type"].endswith("/limit-exceeded")
    assert problem["errors"][0]["loc"] == ["body", field]
    assert "TENSORGRADE_" + setting in problem["detail"]


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"t2_range": [5, 8]}, ["body", "t2_range"]),
        ({"t1_range": [1, 4]}, ["body", "t1_range"]),
        ({"length_range": [16, 18]}, ["body", "t2_range"]),
        ({"length_range": [20]}, ["body", "length_range", 1]),
        ({"epochs": 0}, ["body", "epochs"]),
        ({"learning_rate": -1}, ["body", "learning_rate"]),
        ({"cell": "gru"}, ["body", "cell"]),
        ({"dtype": "float16"}, ["body", "dtype"]),
        ({"seed": -1}, ["body", "seed"]),
        ({"epoch": 2}, ["body", "epoch"]),
    ],
)
def test_invalid_runs_are_422(capped: TestClient, change: dict[str, Any], loc: list[Any]) -> None:
    problem = _problem(capped.post(PATH, json=TINY | change))
    assert problem["errors"][0]["loc"] == loc


def test_cuda_without_a_gpu_is_refused(capped: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    problem = _problem(capped.post(PATH, json=TINY | {"device": "cuda"}))
    assert problem["errors"][0]["loc"] == ["body", "device"]


def test_the_wall_time_limit_ends_the_run_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """The limit ends the run between batches: with time for the untrained model's evaluation
    only, epoch 0 is answered and no epoch after it; with less, nothing can be answered (a
    413 that says what to change), where a large test set had run 22 s past a 0.01 s limit."""
    settings = CAPS.model_copy(update={"experiment_max_seconds": 5.0})
    asked = iter(range(10**6))
    # The route's clock reads 0 at its start, then for the test set and epoch 0 (2 questions
    # per test batch); every later reading is past the 5 s limit.
    allowed = 2 * TINY["test_batches"]

    class Clock:
        @staticmethod
        def monotonic() -> float:
            return 0.0 if next(asked) <= allowed else 6.0

    monkeypatch.setattr("service.routes.diagnostics.time", Clock)
    with TestClient(create_app(settings)) as client:
        body = client.post(PATH, json=TINY).json()
    assert body["stopped_early"] is True
    assert body["epochs"] == []
    assert "0 of 2 epochs" in body["stop_reason"]
    assert abs(body["initial"]["loss"] - math.log(4)) < 0.3  # epoch 0 is still reported
    monkeypatch.undo()  # the real clock: no time at all
    settings = CAPS.model_copy(update={"experiment_max_seconds": 1e-9})
    with TestClient(create_app(settings)) as client:
        problem = _problem(client.post(PATH, json=TINY), 413)
    assert "before the untrained model was evaluated" in problem["detail"]


def test_a_busy_worker_answers_503(capped: TestClient) -> None:
    slots = experiment_slots(capped.app, CAPS)  # type: ignore[arg-type]
    assert slots.acquire(blocking=False)
    try:
        response = capped.post(PATH, json=TINY)
        _problem(response, 503)
        assert response.headers["retry-after"]
        # One problem type, one title: the same as a busy device's (service/gate.py).
        assert response.json()["type"].endswith("/busy")
        assert response.json()["title"] == "The service is busy"
    finally:
        slots.release()
    assert capped.post(PATH, json=TINY).status_code == 200


def test_openapi_declares_problems_and_examples(capped: TestClient) -> None:
    operation = capped.get("/openapi.json").json()["paths"][PATH]["post"]
    for status in ("422", "503"):
        assert "application/problem+json" in operation["responses"][status]["content"]
    examples = operation["requestBody"]["content"]["application/json"]["examples"]
    assert {"quick", "paper-lengths"} <= set(examples)
    assert examples["paper-lengths"]["value"]["length_range"] == [100, 110]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cell", ["lstm", "gated"])
def test_gpu_run_matches_the_cpu_run(capped: TestClient, cell: str) -> None:
    cpu = capped.post(PATH, json=TINY | {"cell": cell}).json()
    gpu = capped.post(PATH, json=TINY | {"cell": cell, "device": "cuda"}).json()
    assert gpu["device"].startswith("cuda")
    assert gpu["initial"]["loss"] == pytest.approx(cpu["initial"]["loss"], rel=1e-9)
    for a, b in zip(gpu["epochs"], cpu["epochs"], strict=True):
        assert a["train_batch_losses"] == pytest.approx(b["train_batch_losses"], rel=1e-6)


def test_each_cap_is_stated_with_its_field(capped: TestClient) -> None:
    fields = capped.get("/openapi.json").json()["components"]["schemas"]["TemporalOrderRequest"]
    for field, setting in EXPERIMENT_CAPS.items():
        text = fields["properties"][field]["description"]
        default = Settings.model_fields[setting].default
        assert f"`{setting}`: {default:g} by default" in text, field
        assert "`GET /v1/info`" in text and "422 (`limit-exceeded`)" in text, field
    # The settings named are the ones /v1/info reports.
    assert set(EXPERIMENT_CAPS.values()) <= set(capped.get("/v1/info").json()["limits"])


def _documented(operation: dict[str, Any], status: int) -> str:
    text: str = operation["responses"][str(status)]["description"]
    return text


def test_the_statuses_documented_are_the_ones_answered(capped: TestClient) -> None:
    operation = capped.get("/openapi.json").json()["paths"][PATH]["post"]
    over_a_cap = _problem(capped.post(PATH, json=TINY | {"epochs": 31}))
    kind = over_a_cap["type"].rsplit("/", 1)[1]
    assert f"`{kind}`" in _documented(operation, 422)
    assert f"`{kind}`" not in _documented(operation, 413)
    settings = CAPS.model_copy(update={"experiment_max_seconds": 1e-9})
    with TestClient(create_app(settings)) as client:
        too_short = _problem(client.post(PATH, json=TINY), 413)
    kind = too_short["type"].rsplit("/", 1)[1]
    assert f"`{kind}`, at `max_seconds`" in _documented(operation, 413)
    assert "Another experiment is running" in _documented(operation, 503)


def test_the_readmes_problem_types_are_the_statuses_answered(capped: TestClient) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = dict(re.findall(r"^\| `([a-z-]+)` \| (\d{3}) \|", readme, re.MULTILINE))
    over_a_cap = _problem(capped.post(PATH, json=TINY | {"epochs": 31}))
    assert table["limit-exceeded"] == "422" == str(over_a_cap["status"])
    # README's prose on the caps names each kind with its own status.
    assert "413 (`limit-exceeded`" not in readme and "422 (`budget-exceeded`" not in readme

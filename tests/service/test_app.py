"""Health, readiness, info, and the truthfulness of the OpenAPI schema."""

from __future__ import annotations

import re

import pytest
import torch
from fastapi.testclient import TestClient

from service.app import create_app, torch_threads
from service.settings import Settings


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_is_503_until_warmed_up_then_200() -> None:
    app = create_app(Settings())
    cold = TestClient(app)  # no lifespan has run: torch has not been warmed up
    response = cold.get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    with TestClient(app) as warm:
        assert app.state.ready.wait(timeout=30)
        assert warm.get("/readyz").json() == {"status": "ready"}


def test_info_reports_versions_devices_and_limits(client: TestClient) -> None:
    info = client.get("/v1/info").json()
    assert info["torch_version"] == torch.__version__
    assert info["devices"][0] == "cpu"
    assert info["limits"]["max_tensor_elements"] == Settings().max_tensor_elements
    assert info["auth"] == "open"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENSORGRADE_MAX_TENSOR_ELEMENTS", "123")
    monkeypatch.setenv("TENSORGRADE_TORCH_THREADS", "3")
    settings = Settings()
    assert settings.max_tensor_elements == 123
    assert torch_threads(settings) == 3
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/info").json()["limits"]["max_tensor_elements"] == 123


def test_unknown_path_and_method_are_problems(client: TestClient) -> None:
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    wrong = client.get("/v1/shapes/conv")
    assert wrong.status_code == 405 and wrong.json()["status"] == 405


def test_every_operation_declares_its_errors_as_problem_details(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "ProblemDetails" in schema["components"]["schemas"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert operation.get("summary"), (method, path)
            assert operation.get("description"), (method, path)
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    content = response["content"]
                    assert list(content) == ["application/problem+json"], (method, path, status)
            if method == "post":
                assert "422" in operation["responses"], (method, path)


def test_compute_operations_carry_named_examples_from_the_seed(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/shapes/conv",
        "/v1/models/{model}/forward",
        "/v1/models/{model}/backward",
        "/v1/models/{model}/jacobian",
    ):
        examples = paths[path]["post"]["requestBody"]["content"]["application/json"]["examples"]
        assert any(name.startswith("seed-") for name in examples), path


def test_openapi_examples_answer_200(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, operations in paths.items():
        post = operations.get("post")
        if not post or "requestBody" not in post:
            continue
        examples = post["requestBody"]["content"]["application/json"].get("examples", {})
        for name, example in examples.items():
            # Model examples name the model their body is for: "(POST to conv1d)".
            model = re.search(r"POST to (\w+)", example["summary"])
            if "{model}" in path:
                assert model, (path, name)
            url = path.replace("{model}", model.group(1) if model else "")
            # Assignment examples are for cnn-rnn, and name their problem first: "1.1a: ...".
            problem = re.match(r"([\w.-]+): ", example["summary"])
            if "{problem}" in path:
                assert problem, (path, name)
            url = url.replace("{assignment}", "cnn-rnn")
            url = url.replace("{problem}", problem.group(1) if problem else "")
            response = client.post(url, json=example["value"])
            assert response.status_code == 200, (path, name, response.text)


def test_an_empty_json_body_is_invalid_json_on_every_route(client: TestClient) -> None:
    # FastAPI reads an empty body as no body ("body: Field required"); the fast path of
    # /v1/shapes/conv parses it. Either way the client sent no JSON, and is told so alike.
    paths = client.get("/openapi.json").json()["paths"]
    posts = [
        path for path, operations in paths.items() if "requestBody" in operations.get("post", {})
    ]
    assert "/v1/shapes/conv" in posts and "/v1/check" in posts
    details = set()
    for path in posts:
        url = path.replace("{model}", "conv1d").replace("{assignment}", "cnn-rnn")
        url = url.replace("{problem}", "1.1a")
        response = client.post(url, content=b"", headers={"content-type": "application/json"})
        assert response.status_code == 422, path
        problem = response.json()
        assert problem["type"].endswith("/invalid-json"), (path, problem)
        details.add(problem["detail"])
    assert len(details) == 1, details

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


EXAMPLE_EXPERIMENT_SECONDS = 5.0
"""The experiments' wall time here: the "half-lengths" example trains for about 30 s on two
cores, and what this test checks is that each example's body is accepted and answered; an
experiment stopped at its time limit is still answered 200, and says so
(test_experiments_api.py)."""


def test_openapi_examples_answer_200() -> None:
    settings = Settings(experiment_max_seconds=EXAMPLE_EXPERIMENT_SECONDS)
    with TestClient(create_app(settings)) as client:
        check_every_example(client)


def check_every_example(client: TestClient) -> None:
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


MALFORMED_BODIES = {
    "trailing comma": (b'{"answer": 1,}', "application/json"),
    "empty": (b"", "application/json"),
    "byte order mark": (b'\xef\xbb\xbf{"answer": 1}', "application/json"),
    "NaN": (b'{"answer": NaN}', "application/json"),
    "a form": (b"answer=1", "application/x-www-form-urlencoded"),
}


@pytest.mark.parametrize("name", list(MALFORMED_BODIES))
def test_the_422_of_every_body_names_the_kind_a_malformed_body_gets(
    client: TestClient, name: str
) -> None:
    body, content_type = MALFORMED_BODIES[name]
    response = client.post("/v1/check", content=body, headers={"content-type": content_type})
    assert response.status_code == 422
    kind = response.json()["type"].rsplit("/", 1)[1]
    paths = client.get("/openapi.json").json()["paths"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            if "requestBody" in operation:
                assert f"`{kind}`" in operation["responses"]["422"]["description"], (method, path)
                # A malformed body is not the 400, and the 400 says so.
                assert "422" in operation["responses"]["400"]["description"], (method, path)


def test_the_422_of_an_operation_without_a_body_is_about_its_parameters(
    client: TestClient,
) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            if "422" in operation["responses"] and "requestBody" not in operation:
                text = operation["responses"]["422"]["description"]
                assert "JSON" not in text and "body" not in text, (method, path)
                names = [p["name"] for p in operation.get("parameters", ())]
                assert any(f"`{name}`" in text for name in names), (method, path)
    problem = client.get("/v1/assignments/cnn-rnn/problems/1.1a").json()
    assert problem["errors"][0]["loc"] == ["query", "student_id"]


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

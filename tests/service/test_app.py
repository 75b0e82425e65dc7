"""Health, readiness, info, and the truthfulness of the OpenAPI schema."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from service.app import create_app, torch_threads
from service.examples import PATH_PARAMETERS
from service.settings import Settings
from tests.keys import INSTRUCTOR, STUDENT, key, keyed_settings


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


def test_the_docs_pages_keep_the_browser_on_this_server(client: TestClient) -> None:
    for page in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        policy = client.get(page).headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["default-src"] == "'self'", page
        for sources in directives.values():  # no host but this one, in any directive
            assert not re.search(r"https?:|\*", sources), (page, sources)
    assert "content-security-policy" not in client.get("/v1/info").headers


def test_the_headers_a_status_is_declared_with_are_the_ones_its_answers_carry() -> None:
    app = create_app(keyed_settings(check_rate_limit="1/minute"))
    cold = TestClient(app)  # no lifespan has run: /readyz answers 503 until it is warm
    responses = [
        (status, set(response.get("headers", {})))
        for operations in cold.get("/openapi.json").json()["paths"].values()
        for operation in operations.values()
        for status, response in operation["responses"].items()
    ]
    declared = dict(responses)
    # Every operation that declares a status declares the same headers with it.
    assert all(names == declared[status] for status, names in responses)
    retried = {status for status, names in declared.items() if "Retry-After" in names}
    assert {"429", "503"} <= retried
    check = "/v1/assignments/cnn-rnn/problems/1.1a/check"
    answer = {"student_id": "alice", "answer": "5x2"}
    answers = {
        "503": cold.get("/readyz"),
        "401": cold.post("/v1/models/conv1d/forward", json={}),
        "415": cold.post(
            "/v1/models/conv1d/forward",
            content=b"{}",
            headers={**key(INSTRUCTOR), "content-encoding": "gzip"},
        ),
        "429": [cold.post(check, json=answer, headers=key(STUDENT)) for _ in range(2)][-1],
    }
    for status, answered in answers.items():
        assert answered.status_code == int(status), answered.text
        assert {name.lower() for name in declared[status]} <= set(answered.headers), status
    assert set(answers) == {status for status, names in declared.items() if names}


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
            url = path.format(**(prefilled(post) | example.get(PATH_PARAMETERS, {})))
            response = client.post(url, json=example["value"])
            assert response.status_code == 200, (path, name, response.text)


def prefilled(operation: dict[str, Any]) -> dict[str, Any]:
    """The values Swagger UI 5 puts in an operation's path parameters on "Try it out": the
    parameter's own `example`, else the first of its `examples`, else its enum's first."""
    values = {}
    for parameter in operation.get("parameters", ()):
        if parameter["in"] != "path":
            continue
        own = [example["value"] for example in parameter.get("examples", {}).values()]
        offered = [parameter["example"]] if "example" in parameter else own
        values[parameter["name"]] = (offered or parameter["schema"].get("enum", [None]))[0]
    return values


def offered(parameter: dict[str, Any]) -> list[Any]:
    """What a parameter offers to pick: its enum, else its examples."""
    own = [example["value"] for example in parameter.get("examples", {}).values()]
    return list(parameter["schema"].get("enum", own))


def body_examples(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(path, operation, its body examples) of every operation with path parameters and
    named body examples."""
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            content = operation.get("requestBody", {}).get("content", {})
            examples = content.get("application/json", {}).get("examples", {})
            if examples and "{" in path:
                yield path, operation, examples


def test_every_body_example_says_which_path_to_pick(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    seen = set()
    for path, operation, examples in body_examples(schema):
        for parameter in operation["parameters"]:
            choices = offered(parameter)
            if parameter["in"] != "path" or len(choices) < 2:
                continue  # nothing to pick: the one value offered is the one filled in
            seen.add(path)
            for name, example in examples.items():
                value = example[PATH_PARAMETERS][parameter["name"]]
                assert value in choices, (path, name, value)
                # A menu of the parameter's own examples shows their summaries alone.
                own = parameter.get("examples", {}).values()
                assert all(e["summary"].startswith(f"{e['value']}: ") for e in own), path
                assert example["summary"].startswith(f"Pick {parameter['name']} {value}: ")
                assert f"`{value}`" in example["description"], (path, name)
    assert seen == {
        "/v1/models/{model}/forward",
        "/v1/models/{model}/backward",
        "/v1/models/{model}/jacobian",
        "/v1/models/{model}/state-jacobians",
        "/v1/assignments/{assignment}/problems/{problem}/check",
    }


def test_try_it_out_fills_the_path_the_first_body_example_is_for(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path, operation, examples in body_examples(schema):
        first = next(iter(examples.values()))
        filled = prefilled(operation)
        assert filled | first.get(PATH_PARAMETERS, {}) == filled, path
        # And Execute with nothing changed is answered.
        response = client.post(path.format(**filled), json=first["value"])
        assert response.status_code == 200, (path, response.text)


def test_each_answer_example_sent_to_its_problem_answers_what_it_promises(
    client: TestClient,
) -> None:
    path = "/v1/assignments/{assignment}/problems/{problem}/check"
    operation = client.get("/openapi.json").json()["paths"][path]["post"]
    examples = operation["requestBody"]["content"]["application/json"]["examples"]
    for name, example in examples.items():
        url = path.format(**(prefilled(operation) | example[PATH_PARAMETERS]))
        checked = client.post(url, json=example["value"]).json()
        promised = example["description"]
        assert f"status `{checked['status']}`" in promised, (name, checked)
        assert f"score {checked['score']:g}" in promised, (name, checked)
        report = checked["feedback"].get("report") or {}
        assert ("`counterexample`" in promised) == ("counterexample" in report), (name, checked)
        named = set(re.findall(r"diagnosis names `(\w+)`", promised))
        assert named == {m["code"] for m in checked["feedback"].get("diagnosis") or ()}, name


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

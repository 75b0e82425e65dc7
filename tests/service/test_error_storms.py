"""Bodies of a few megabytes that would make pydantic build hundreds of thousands of errors
(wrong entries of a list, unknown keys) are refused with a short list of errors that names the
field: none of them makes an error per entry."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

MANY = 200_000
SHAPE_MANY = 10_000  # a shape's body takes at most 64 KiB
JSON = {"content-type": "application/json"}


def post(client: TestClient, path: str, body: Any) -> Any:
    return client.post(path, content=orjson.dumps(body), headers=JSON)


def refused(response: Any, status: int = 422, most: int = 1) -> dict[str, Any]:
    """The problem detail, after checking its status and that it lists ``most`` errors at most."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert 1 <= len(problem.get("errors") or [None]) <= most, problem
    return problem


def unknown_keys(count: int = MANY) -> dict[str, int]:
    return {str(i): 0 for i in range(count)}


def formula(**changes: Any) -> dict[str, Any]:
    return {"op": "formula", "reference": "H", **changes}


ROUTES = [
    "/v1/check",
    "/v1/check/batch",
    "/v1/shapes/conv",
    "/v1/models/conv1d/forward",
    "/v1/models/conv1d/backward",
    "/v1/diagnostics/loss-curve",
    "/v1/assignments/cnn-rnn/grade",
    "/v1/assignments/cnn-rnn/problems/1.1a/check",
]


@pytest.mark.parametrize("path", ROUTES)
def test_a_body_of_many_unknown_keys_is_one_error(client: TestClient, path: str) -> None:
    count = 5_000 if path == "/v1/shapes/conv" else MANY  # a shape's body takes 64 KiB
    problem = refused(post(client, path, unknown_keys(count)))
    (error,) = problem["errors"]
    assert error["loc"] == ["body"] and error["type"] == "extra_forbidden"
    assert f"{count:,} fields this object does not have (`0`, `1`, `2`" in error["msg"]
    assert error["msg"] in problem["detail"]


def test_a_few_unknown_keys_are_each_named(client: TestClient) -> None:
    body = {"input_size": [8], "kernel_size": 3, **unknown_keys(3)}
    problem = refused(post(client, "/v1/shapes/conv", body), most=3)
    assert [e["loc"] for e in problem["errors"]] == [["body", str(i)] for i in range(3)]


def test_many_unknown_keys_inside_expected_are_one_error(client: TestClient) -> None:
    body = {"expected": formula(**unknown_keys()), "answer": "H"}
    (error,) = refused(post(client, "/v1/check", body))["errors"]
    assert error["loc"] == ["body", "expected"]
    assert "200,000 fields" in error["msg"]


def test_a_range_of_many_wrong_values_is_one_error(client: TestClient) -> None:
    body = {"expected": formula(variables={"H": [None] * MANY}), "answer": "H"}
    errors = refused(post(client, "/v1/check", body), most=2)["errors"]  # not int, not float
    assert all(e["loc"] == ["body", "expected", "variables", "H", 0] for e in errors)


def test_many_variables_are_refused_before_their_ranges(client: TestClient) -> None:
    variables = {f"v{i}": None for i in range(MANY)}
    body = {"expected": formula(variables=variables), "answer": "H"}
    (error,) = refused(post(client, "/v1/check", body))["errors"]
    assert error["loc"] == ["body", "expected", "variables"] and error["type"] == "too_long"


def test_many_names_are_refused_before_their_values(client: TestClient) -> None:
    names = {f"n{i}": None for i in range(MANY)}
    expected = {"op": "forward", "model": "conv1d", "names": names}
    (error,) = refused(post(client, "/v1/check", {"expected": expected, "answer": [1]}))["errors"]
    assert error["loc"] == ["body", "expected", "names"] and error["type"] == "too_long"
    assert "at most 16 items" in error["msg"]


def test_many_mistake_variables_are_refused_before_their_values(client: TestClient) -> None:
    mistakes = {"family": "conv_output_size", "variables": {f"v{i}": None for i in range(MANY)}}
    body = {"expected": formula(mistakes=mistakes), "answer": "H"}
    # Not one of the names either: a member of the union each.
    errors = refused(post(client, "/v1/check", body), most=2)["errors"]
    assert errors[-1]["loc"] == ["body", "expected", "mistakes", "variables"]
    assert errors[-1]["type"] == "too_long"


def test_a_batch_check_lists_few_errors(client: TestClient) -> None:
    wrong = {"expected": formula(variables={"H": [None] * MANY}), "answer": "H"}
    misspelt = {"expected": formula(**unknown_keys(15)), "answer": "H"}
    response = post(client, "/v1/check/batch", {"checks": [wrong, misspelt]})
    assert response.status_code == 200, response.text[:500]
    first, second = (result["error"] for result in response.json()["results"])
    assert len(first["errors"]) == 2  # not int, not float
    assert first["errors"][0]["loc"][:5] == ["body", "checks", 0, "expected", "variables"]
    assert len(second["errors"]) == 10 and "(and 14 more)" in second["detail"]


@pytest.mark.parametrize("field", ["input_size", "kernel_size", "stride", "padding", "dilation"])
def test_a_conv_list_of_many_wrong_values_is_short(client: TestClient, field: str) -> None:
    body = {"input_size": [8], "kernel_size": 3, field: [None] * SHAPE_MANY}
    problem = refused(post(client, "/v1/shapes/conv", body), most=3)
    assert all(e["loc"][:2] == ["body", field] for e in problem["errors"])


def test_a_conv_list_of_many_sizes_is_short(client: TestClient) -> None:
    body = {"input_size": [8] * SHAPE_MANY, "kernel_size": 3}
    problem = refused(post(client, "/v1/shapes/conv", body))
    assert problem["errors"][0]["loc"] == ["body", "input_size"]


@pytest.fixture(scope="module")
def small_budget() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(loss_curve_max_values=1000))) as test_client:
        yield test_client


def test_a_loss_curve_over_the_budget_is_refused_before_its_values(
    small_budget: TestClient,
) -> None:
    body = {"batch_losses": [[None] * 1000] * 20, "num_classes": 4}  # 120 kB: under 161,536
    problem = refused(post(small_budget, "/v1/diagnostics/loss-curve", body), status=413)
    assert problem["detail"] == "batch_losses holds 20,000 values; the limit is 1,000"


def test_a_loss_curve_body_larger_than_its_budget_is_refused_unread(
    small_budget: TestClient,
) -> None:
    """1,000 values and as many accuracies take at most 2 * 1,000 * 48 bytes and 64 KiB."""
    body = {"batch_losses": [[None] * 1000] * (MANY // 1000), "num_classes": 4}
    problem = refused(post(small_budget, "/v1/diagnostics/loss-curve", body), status=413)
    assert problem["type"].endswith("/body-too-large")
    assert problem["detail"].endswith(
        "bytes; POST /v1/diagnostics/loss-curve takes at most 161,536"
    ), problem["detail"]


def test_a_submission_of_many_unknown_ids_lists_a_few(client: TestClient) -> None:
    answers = {f"x{i:06d}": 1 for i in range(MANY)}
    body = {"student_id": "alice", "answers": answers}
    response = post(client, "/v1/assignments/cnn-rnn/grade", body)
    assert response.status_code == 200, response.text[:500]
    graded = response.json()
    assert graded["ignored"] == [f"x{i:06d}" for i in range(100)]
    assert graded["ignored_count"] == MANY
    gradescope = post(client, "/v1/assignments/cnn-rnn/grade?format=gradescope", body).json()
    assert gradescope["extra_data"]["tensorgrade"]["ignored"] == graded["ignored"]
    assert gradescope["output"].endswith("x000099 and 199,900 more.")


@pytest.mark.parametrize("field", ["config", "params", "inputs", "grad_outputs"])
def test_a_model_request_of_many_names_is_one_error(client: TestClient, field: str) -> None:
    """No model takes more than a few; a million names took 1-4 s to refuse one by one."""
    body: dict[str, Any] = {"params": {"weight": [[[1.0]]]}, "inputs": {"x": [[1.0]]}}
    body["grad_outputs"] = {"y": [[1.0]]}
    body[field] = {f"n{i}": [1.0] for i in range(MANY)}
    (error,) = refused(post(client, "/v1/models/conv1d/backward", body))["errors"]
    assert error["loc"] == ["body", field] and error["type"] == "too_long"
    assert "at most 64 items" in error["msg"] and f"not {MANY}" in error["msg"]


def test_a_checks_model_key_of_many_names_is_one_error(client: TestClient) -> None:
    params = {f"n{i}": [1.0] for i in range(MANY)}
    body = {"expected": {"op": "forward", "model": "conv1d", "params": params}, "answer": 1}
    (error,) = refused(post(client, "/v1/check", body))["errors"]
    assert error["loc"] == ["body", "expected", "params"] and error["type"] == "too_long"

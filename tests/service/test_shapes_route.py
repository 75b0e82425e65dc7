"""POST /v1/shapes/conv."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient


def test_seed_1_1a(client: TestClient) -> None:
    body = {
        "input_size": [21, 12],
        "kernel_size": [4, 5],
        "stride": 4,
        "padding": 0,
        "dilation": 1,
        "in_channels": 3,
        "out_channels": 8,
    }
    response = client.post("/v1/shapes/conv", json=body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["output_size"] == [5, 2]
    assert answer["output_shape"] == [8, 5, 2]
    assert [s["result"] for s in answer["steps"]] == [5, 2]
    assert "floor(4.25) + 1 = 5" in answer["steps"][0]["substitution"]


def test_without_out_channels_the_shape_is_the_size(client: TestClient) -> None:
    answer = client.post(
        "/v1/shapes/conv", json={"input_size": [7], "kernel_size": 3, "stride": 2}
    ).json()
    assert answer["output_shape"] == answer["output_size"] == [3]


def test_transposed_with_output_padding(client: TestClient) -> None:
    body = {
        "input_size": [5],
        "kernel_size": 3,
        "stride": 2,
        "transposed": True,
        "output_padding": 1,
    }
    answer = client.post("/v1/shapes/conv", json=body).json()
    assert answer["output_size"] == [12]
    # (5 - 1)*2 + 1 entries with the zeros between them, 2 on each end, 1 of output_padding:
    # the stride-1 convolution over 14 with a kernel of 3 gives the 12 (it said 5, the input).
    (step,) = answer["steps"]
    assert step["padded_input"] == 14 and step["effective_kernel"] == 3


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (
            {"input_size": [5], "kernel_size": 5, "dilation": 2, "padding": 1},
            "kernel_size",
            "effective kernel 9 (= 2*(5 - 1) + 1) is larger than the padded input 7",
        ),
        ({"input_size": [5], "kernel_size": 3, "stride": 0}, "stride", "at least 1"),
        ({"input_size": [5], "kernel_size": 3, "dilation": -2}, "dilation", "at least 1"),
        ({"input_size": [5], "kernel_size": 3, "padding": -1}, "padding", "at least 0"),
        ({"input_size": [5, 5, 5, 5], "kernel_size": 3}, "input_size", "1 to 3"),
        ({"input_size": [5], "kernel_size": "3"}, "kernel_size", ""),
        ({"input_size": [5]}, "kernel_size", "Field required"),
        ({"input_size": [5], "kernel_size": 3, "strides": 2}, "strides", "Extra inputs"),
        ({"input_size": [5], "kernel_size": 3, "out_channels": 0}, "out_channels", ""),
    ],
)
def test_bad_configurations_are_422_problems(
    client: TestClient, body: dict[str, Any], field: str, words: str
) -> None:
    response = client.post("/v1/shapes/conv", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert words in problem["detail"]
    assert any(field in e["loc"] for e in problem["errors"])


def test_invalid_json_is_a_problem(client: TestClient) -> None:
    response = client.post(
        "/v1/shapes/conv",
        content=b'{"input_size": [5',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert "not valid JSON" in response.json()["detail"]


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_a_body_not_sent_as_json_is_the_not_json_problem_of_every_route(
    client: TestClient, content_type: str | None
) -> None:
    # curl -d without -H sends a form: refused as /v1/check refuses it, whatever the bytes hold.
    body = b'{"input_size": [5], "kernel_size": 3}'
    headers = {"content-type": content_type} if content_type else {}
    shapes = client.post("/v1/shapes/conv", content=body, headers=headers)
    check = client.post("/v1/check", content=body, headers=headers)
    assert shapes.status_code == check.status_code == 422
    problem = shapes.json()
    assert problem["type"].endswith("/not-json")
    assert {k: v for k, v in problem.items() if k != "request_id"} == {
        k: v for k, v in check.json().items() if k != "request_id"
    }


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/x+json"])
def test_any_json_content_type_is_accepted(client: TestClient, content_type: str) -> None:
    body = b'{"input_size": [5], "kernel_size": 3}'
    response = client.post("/v1/shapes/conv", content=body, headers={"content-type": content_type})
    assert response.status_code == 200 and response.json()["output_size"] == [3]

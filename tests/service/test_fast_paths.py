"""The short request path of /v1/shapes/conv: raw bytes validated by pydantic-core, orjson out."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.routes.shapes import ConvShapeRequest, ConvShapeResponse

BODIES = [
    {"input_size": [21, 12], "kernel_size": [4, 5], "stride": 4, "out_channels": 8},
    {"input_size": [9], "kernel_size": 4, "padding": "same"},
    {"input_size": [5, 6], "kernel_size": 3, "transposed": True, "stride": 2},
]


@pytest.mark.parametrize("body", BODIES)
def test_the_answer_is_exactly_the_documented_model(
    client: TestClient, body: dict[str, Any]
) -> None:
    response = client.post("/v1/shapes/conv", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    model = ConvShapeResponse.model_validate(answer, strict=True)
    assert model.model_dump() == answer
    assert set(answer["steps"][0]) == set(model.steps[0].model_dump())


def test_openapi_documents_the_body_and_the_answer(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/shapes/conv"]["post"]
    body = operation["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    assert schema["required"] == ConvShapeRequest.model_json_schema()["required"]
    assert set(schema["properties"]) == set(ConvShapeRequest.model_fields)
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["$ref"].endswith("/ConvShapeResponse")


@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        ({"input_size": [5], "kernel_size": 3.0}, ["body", "kernel_size", "int"], "integer"),
        ({"input_size": "5", "kernel_size": 3}, ["body", "input_size"], "valid array"),
        ({"input_size": [5], "kernel_size": 3, "stride": True}, ["body", "stride", "int"], ""),
        ({"input_size": [5], "kernel_size": 3, "typo": 1}, ["body", "typo"], "Extra inputs"),
        ({"kernel_size": 3}, ["body", "input_size"], "Field required"),
    ],
)
def test_invalid_bodies_are_the_usual_validation_problems(
    client: TestClient, body: dict[str, Any], loc: list[Any], words: str
) -> None:
    response = client.post("/v1/shapes/conv", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith("/validation-error")
    assert any(error["loc"] == loc for error in problem["errors"]), problem["errors"]
    assert words in problem["detail"]


def test_a_body_that_is_not_an_object_is_a_problem(client: TestClient) -> None:
    response = client.post(
        "/v1/shapes/conv", content=b"[1, 2]", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body"]


def test_an_empty_body_is_a_problem(client: TestClient) -> None:
    response = client.post("/v1/shapes/conv", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "not valid JSON" in response.json()["detail"]

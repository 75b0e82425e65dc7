"""The short request path of /v1/shapes/conv: raw bytes validated by pydantic-core, orjson out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.responses import Response

from service import routing
from service.auth import INSTRUCTORS, KeyRing, instructor_key
from service.problems import install_problem_handlers
from service.routes import shapes
from service.routes.shapes import ConvShapeRequest, ConvShapeResponse
from service.routing import DirectRoute, include_flat

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
        # A path into the body: without the union member pydantic tried ("int", "list[int]").
        ({"input_size": [5], "kernel_size": 3.0}, ["body", "kernel_size"], "integer"),
        ({"input_size": "5", "kernel_size": 3}, ["body", "input_size"], "valid array"),
        ({"input_size": [5], "kernel_size": 3, "stride": True}, ["body", "stride"], ""),
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


def router_with(route: Callable[[APIRouter], None], **rule: Any) -> FastAPI:
    """An app with one DirectRoute router, included with ``rule`` as the service includes its
    routers."""
    router = APIRouter(route_class=DirectRoute)
    route(router)
    app = FastAPI()
    install_problem_handlers(app)
    app.state.keyring = KeyRing(["instructor-key"], ["student-key"])
    app.include_router(router, **rule)
    return app


def only_request(router: APIRouter) -> None:
    @router.post("/direct")
    async def direct(request: Request) -> Response:
        return Response(await request.body())


def test_a_direct_route_applies_the_rule_given_where_its_router_is_included() -> None:
    with TestClient(router_with(only_request, **INSTRUCTORS)) as client:
        assert client.post("/direct", content=b"x").status_code == 401
        student = client.post("/direct", content=b"x", headers={"X-API-Key": "student-key"})
        assert student.status_code == 403
        ok = client.post("/direct", content=b"x", headers={"X-API-Key": "instructor-key"})
        assert ok.status_code == 200 and ok.content == b"x"
        # Still documented as FastAPI documents the rule.
        operation = client.get("/openapi.json").json()["paths"]["/direct"]["post"]
        assert operation["security"] == [{"APIKey": ["instructor"]}]


def test_direct_checks_are_taken_only_where_they_replace_fastapis_handler_exactly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def with_query(router: APIRouter) -> None:
        @router.post("/direct")
        async def direct(request: Request, n: int = 0) -> Response:
            return Response(str(n))

    def with_other_dependency(router: APIRouter) -> None:
        @router.post("/direct", dependencies=[Depends(lambda: None)])
        async def direct(request: Request) -> Response:
            return Response(b"")

    def plain_def(router: APIRouter) -> None:
        @router.post("/direct")
        def direct(request: Request) -> Response:
            return Response(b"")

    cases = {
        "rule only": (only_request, INSTRUCTORS, True),
        "no rule": (only_request, {}, False),
        "a query parameter": (with_query, INSTRUCTORS, False),
        "another dependency": (with_other_dependency, INSTRUCTORS, False),
        "a def endpoint": (plain_def, INSTRUCTORS, False),
    }
    original = routing.direct_checks
    for name, (route, rule, direct) in cases.items():
        decisions: list[object] = []

        def spy(r: APIRoute, decisions: list[object] = decisions) -> Any:
            decisions.append(original(r))
            return decisions[-1]

        monkeypatch.setattr(routing, "direct_checks", spy)
        with TestClient(router_with(route, **rule)) as client:
            # FastAPI may build an included route's handler when it is first called.
            client.post("/direct", headers={"X-API-Key": "instructor-key"})
        # The last handler built is the included route's, with the router's rule.
        assert (decisions[-1] is not None) == direct, name
    monkeypatch.undo()
    # With the query parameter, FastAPI's handler still reads it.
    with TestClient(router_with(with_query, **INSTRUCTORS)) as client:
        answer = client.post("/direct?n=7", headers={"X-API-Key": "instructor-key"})
        assert answer.text == "7"


def test_a_router_added_flat_is_the_router_included() -> None:
    """``include_flat`` skips the included router's layer and nothing else: the same OpenAPI
    operation, route class, dependencies and answers as ``include_router``."""
    included, flat = FastAPI(), FastAPI()
    included.include_router(shapes.router, **INSTRUCTORS)
    include_flat(flat, shapes.router, **INSTRUCTORS)
    assert flat.openapi()["paths"] == included.openapi()["paths"]
    [route] = [r for r in flat.routes if getattr(r, "path", None) == "/v1/shapes/conv"]
    assert isinstance(route, DirectRoute)
    for app in (included, flat):
        install_problem_handlers(app)
        app.state.keyring = KeyRing(["instructor-key"], ["student-key"])
    body = {"input_size": [21, 12], "kernel_size": [4, 5], "stride": 4}
    for key in ({}, {"X-API-Key": "student-key"}, {"X-API-Key": "instructor-key"}):
        answers = []
        for app in (included, flat):
            with TestClient(app) as client:
                answer = client.post("/v1/shapes/conv", json=body, headers=key)
                answers.append((answer.status_code, answer.json().get("output_size")))
        assert answers[0] == answers[1], key


def test_dependency_overrides_apply_to_a_direct_route() -> None:
    app = router_with(only_request, **INSTRUCTORS)

    def anyone() -> None:
        return None

    app.dependency_overrides[instructor_key] = anyone
    with TestClient(app) as client:
        assert client.post("/direct", content=b"x").status_code == 200
    app.dependency_overrides.clear()
    with TestClient(app) as client:
        assert client.post("/direct", content=b"x").status_code == 401

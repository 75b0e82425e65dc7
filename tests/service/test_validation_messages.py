"""Validation errors worded for a client: the tags a union takes, a pattern's meaning."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal, get_args

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from service import problems
from service.app import create_app
from service.grading.schemas import Expected
from service.problems import NAME_THE_TAGS, PATTERN_WORDS, validation_problem
from service.settings import Settings

OPS = [
    get_args(member.model_fields["op"].annotation)[0] for member in get_args(get_args(Expected)[0])
]
"""Every `op` of `expected`, read from the union itself."""


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """Without the check rate limit: the run's shared client counts every check of the run
    against one limit, which tests run before these could spend."""
    with TestClient(create_app(Settings(check_rate_limit=""))) as test_client:
        yield test_client


def test_an_expected_without_op_names_every_op(client: TestClient) -> None:
    response = client.post("/v1/check", json={"expected": {"model": "conv1d"}, "answer": 1})
    assert response.status_code == 422
    problem = response.json()
    assert problem["detail"].startswith("body.expected: `op` is missing")
    assert "Unable to extract tag" not in problem["detail"]
    assert problem["detail"].endswith("one of " + ", ".join(OPS))
    assert problem["errors"][0]["type"] == "union_tag_not_found"


def test_a_batch_item_without_op_names_every_op(client: TestClient) -> None:
    body = {"checks": [{"expected": {"model": "conv1d"}, "answer": 1}]}
    error = client.post("/v1/check/batch", json=body).json()["results"][0]["error"]
    assert error["detail"] == "checks.0.expected: `op` is missing: it says what this object " + (
        "is, one of " + ", ".join(OPS)
    )


@pytest.mark.parametrize(("op", "shown"), [("nope", '"nope"'), (None, "null"), (3, "3")])
def test_an_unknown_op_is_named_with_every_op(client: TestClient, op: Any, shown: str) -> None:
    """The tag as the JSON it came as: ``null``, not Python's ``'None'``."""
    problem = client.post("/v1/check", json={"expected": {"op": op}, "answer": 1}).json()
    assert problem["detail"] == f"body.expected: `op` is {shown}; it must be one of " + ", ".join(
        OPS
    )


class Cat(BaseModel):
    kind: Literal["cat"]


class Dog(BaseModel):
    kind: Literal["dog", "puppy"]


def test_any_union_annotated_to_name_its_tags_names_them() -> None:
    pet = TypeAdapter(Annotated[Cat | Dog, Field(discriminator="kind"), NAME_THE_TAGS])
    with pytest.raises(ValidationError) as raised:
        pet.validate_python({"name": "Rex"})
    problem = validation_problem(raised.value.errors())
    assert problem.detail == "the body: `kind` is missing: it says what this object is, " + (
        "one of cat, dog, puppy"
    )
    assert pet.validate_python({"kind": "puppy"}) == Dog(kind="puppy")


@pytest.mark.parametrize("student_id", ["a\nb", "tab\there", "nul\x00", "del\x7f"])
def test_a_student_id_with_control_characters_is_told_so_in_words(
    client: TestClient, student_id: str
) -> None:
    words = "must hold no control characters or line breaks"
    posted = client.post(
        "/v1/assignments/cnn-rnn/grade", json={"student_id": student_id, "answers": {}}
    ).json()
    assert posted["detail"].startswith(f"body.student_id: {words}")
    read = client.get(
        "/v1/assignments/cnn-rnn/problems/1.1a", params={"student_id": student_id}
    ).json()
    assert read["detail"].startswith(f"query.student_id: {words}")
    assert "pattern" not in posted["detail"] + read["detail"]


def _patterns(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            yield node["pattern"]
        for value in node.values():
            yield from _patterns(value)
    elif isinstance(node, list):
        for value in node:
            yield from _patterns(value)


def test_every_pattern_a_request_is_held_to_has_its_words(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    patterns = set(_patterns(schema))
    assert patterns, "no pattern found: the test would check nothing"
    assert patterns <= set(PATTERN_WORDS), patterns - set(PATTERN_WORDS)


def test_only_the_errors_a_problem_lists_are_worded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flat list of 2 million numbers where lists were expected is 2 million errors: each was
    located and worded, though a problem lists the first 100, and kept a worker 40 s."""
    located: list[Any] = []
    real = problems.json_path

    def counted(*args: Any, **kwargs: Any) -> list[str | int]:
        located.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(problems, "json_path", counted)
    body = {"batch_losses": [1.0] * 5000}
    errors = [
        {"type": "list_type", "loc": ("body", "batch_losses", n), "msg": "Input should be a list"}
        for n in range(5000)
    ]
    problem = validation_problem(errors, body=body)
    assert problem.detail == "body.batch_losses.0: Input should be a list (and 4999 more)"
    assert len(problem.errors or []) == problems.MAX_ERRORS == len(located)

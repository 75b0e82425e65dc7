"""The OpenAPI document explains itself: every property and parameter is described, every
value of an enum is named in its description, the examples of parameters pre-fill a request
that works, and what the descriptions claim is what the service does."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.examples import STATE_JACOBIAN_EXAMPLES
from service.grading.compare import Tolerance as CheckTolerance
from service.grading.grade import STUDENT_FIELDS
from service.grading.schema import Tolerance as FileTolerance

UNDESCRIBED: dict[str, str] = {}
"""Properties allowed to go without a description, each with the reason it cannot have one
(``"Schema.property": "why"``). None today: every property the service declares can say what
it is, and FastAPI's own schemas are replaced by the problem details."""


@pytest.fixture(scope="module")
def schema(client: TestClient) -> dict[str, Any]:
    document: dict[str, Any] = client.get("/openapi.json").json()
    return document


def properties(node: Any, where: str = "") -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every property of every schema in the document, at any depth: (where, name, schema)."""
    if isinstance(node, dict):
        found = node.get("properties")
        if isinstance(found, dict):
            for name, value in found.items():
                if isinstance(value, dict):
                    yield where, name, value
        for key, value in node.items():
            yield from properties(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from properties(value, f"{where}/{index}")


def parameters(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", ()):
                yield method, path, parameter


def _owner(where: str) -> str:
    """The component schema a property belongs to (``.../schemas/CheckRequest/...``)."""
    parts = where.split("/")
    return parts[parts.index("schemas") + 1] if "schemas" in parts else where


def test_every_property_has_a_description(schema: dict[str, Any]) -> None:
    found = list(properties(schema))
    assert len(found) > 200, "too few properties found: the walk would check nothing"
    missing = [
        f"{_owner(where)}.{name}"
        for where, name, value in found
        if not value.get("description") and f"{_owner(where)}.{name}" not in UNDESCRIBED
    ]
    assert missing == []


def test_every_parameter_has_a_description(schema: dict[str, Any]) -> None:
    missing = [
        (method, path, p["name"])
        for method, path, p in parameters(schema)
        if "description" not in p
    ]
    assert missing == []


def _values(value: dict[str, Any]) -> list[Any]:
    """The values an enum (or a constant) allows, through unions and arrays."""
    found = list(value.get("enum", ()))
    if "const" in value:
        found.append(value["const"])
    for key in ("anyOf", "oneOf", "allOf"):
        for member in value.get(key, ()):
            found += _values(member)
    if isinstance(value.get("items"), dict):
        found += _values(value["items"])
    return [v for v in found if v is not None]


def test_every_value_of_an_enum_is_named_in_its_description(schema: dict[str, Any]) -> None:
    unexplained = [
        (_owner(where), name, v)
        for where, name, value in properties(schema)
        for v in _values(value)
        if f"`{v}`" not in value.get("description", "")
    ]
    assert unexplained == []


def test_the_path_and_query_examples_prefill_a_request_that_works(
    client: TestClient, schema: dict[str, Any]
) -> None:
    path = "/v1/assignments/{assignment}/problems/{problem}"
    operation = schema["paths"][path]["get"]
    filled = {}
    for parameter in operation["parameters"]:
        # At the parameter's own level: where Swagger UI takes the value it pre-fills, the
        # first of them.
        example = next(iter(parameter["examples"].values()))
        filled[parameter["name"]] = example["value"]
    url = path.format(assignment=filled["assignment"], problem=filled["problem"])
    response = client.get(url, params={"student_id": filled["student_id"]})
    assert response.status_code == 200, response.text


def test_a_variants_tolerance_is_the_problems_own_and_claims_no_default(
    client: TestClient, schema: dict[str, Any]
) -> None:
    served = schema["components"]["schemas"]["ProblemTolerance"]
    assert set(served["required"]) == {"rtol", "atol", "floor"}
    assert all("default" not in value for value in served["properties"].values())
    catalogue = client.app.state.catalogue  # type: ignore[attr-defined]
    spec = catalogue.assignment("cnn-rnn").problem("1.1c-i").tolerance
    variant = client.get(
        "/v1/assignments/cnn-rnn/problems/1.1c-i", params={"student_id": "alice"}
    ).json()
    assert variant["tolerance"] == spec.model_dump()
    # The defaults the description states are the ones the file format and /v1/check apply.
    text = schema["components"]["schemas"]["ProblemVariant"]["properties"]["tolerance"]
    file, check = FileTolerance(), CheckTolerance()
    assert f"rtol {file.rtol:g}, atol {file.atol:g}, floor {file.floor:g}" in text["description"]
    assert (
        f"rtol {check.rtol:g}, atol {check.atol:g}, floor {check.floor:g}" in (text["description"])
    )


def test_the_documented_defaults_of_a_checks_tolerance_are_the_ones_applied(
    client: TestClient, schema: dict[str, Any]
) -> None:
    documented = {
        name: value["default"]
        for name, value in schema["components"]["schemas"]["ToleranceIn"]["properties"].items()
    }
    body = {"expected": {"op": "value", "value": [1.0, 2.0]}, "answer": [1.0, 2.0]}
    echoed = client.post("/v1/check", json=body).json()["tolerance"]
    assert {name: echoed[name] for name in documented} == documented


def test_a_formulas_variables_replace_the_named_ones_ranges_they_name(
    client: TestClient, schema: dict[str, Any]
) -> None:
    text = schema["components"]["schemas"]["FormulaExpected"]["properties"]["variables"]
    assert "takes the range given here instead, and the others keep theirs" in (text["description"])
    # gated_rnn_gate_size is m, with m in [1, 64] and n in [1, 64]: min(m, 3) agrees with it on
    # m in [1, 3] only, and floor(n/65) is 0 on n in [1, 64] only.
    answer = "min(m, 3) + floor(n/65)"
    named = {"op": "formula", "named": "gated_rnn_gate_size"}
    own = client.post("/v1/check", json={"expected": named, "answer": answer}).json()
    assert own["correct"] is False
    narrowed = named | {"variables": {"m": [1, 3]}}
    checked = client.post("/v1/check", json={"expected": narrowed, "answer": answer}).json()
    assert checked["correct"] is True, checked["report"]  # m's range replaced, n's kept


def test_every_tensor_a_state_jacobians_check_may_select_is_selectable(
    client: TestClient, schema: dict[str, Any]
) -> None:
    text = schema["components"]["schemas"]["StateJacobiansExpected"]["properties"]["select"]
    names = [part.strip("`., ") for part in text["description"].split(":")[1].split(",")]
    body = STATE_JACOBIAN_EXAMPLES["gated-rnn"]["value"]
    answer = client.post("/v1/models/gated_rnn/state-jacobians", json=body).json()
    tensors = {
        name for name, value in answer.items() if isinstance(value, dict) and "shape" in value
    }
    assert set(names) == tensors
    for name in names:
        expected = {"op": "state_jacobians", "model": "gated_rnn", "select": name, **body}
        given = answer[name]["data"]  # an answer's tensor is nested, as a student writes it
        checked = client.post("/v1/check", json={"expected": expected, "answer": given})
        assert checked.status_code == 200 and checked.json()["correct"] is True, name


def test_the_report_of_a_student_is_described_field_by_field_and_counts_no_mistake(
    client: TestClient, schema: dict[str, Any]
) -> None:
    schemas = schema["components"]["schemas"]
    report = schemas["Feedback"]["properties"]["report"]["description"]
    level = schemas["ProblemVariant"]["properties"]["feedback"]["description"]
    told = {"kind", "message", "counterexample", "point", "given"}
    for field in told.union(*STUDENT_FIELDS.values(), STUDENT_FIELDS):
        assert f"`{field}`" in report, field
    # A student is never told how many elements or points are wrong (STUDENT_FIELDS).
    for text in (report, level):
        for clause in re.findall(r"[^.;(]*how many[^.;)]*", text):
            assert "never" in clause.lower(), clause
    # And what a wrong answer's report holds is what is described.
    answers = {
        "1.1b": "floor((H + 2*P - K)/S) + 1",  # a formula: a counterexample
        "1.1c-i": [[0.0, 0.0, 0.0]],  # a tensor of the shape asked for
        "1.1c-ii": [0.0],  # a tensor of another shape
    }
    for problem, answer in answers.items():
        url = f"/v1/assignments/cnn-rnn/problems/{problem}/check"
        checked = client.post(url, json={"student_id": "alice", "answer": answer}).json()
        assert checked["status"] == "incorrect", checked
        got = checked["feedback"]["report"]
        assert got and set(got) | set(got.get("counterexample", {})) <= told.union(
            *STUDENT_FIELDS.values()
        ), got

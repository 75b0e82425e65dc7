"""A wrong formula answer over HTTP: the mistake it makes, through ``POST /v1/check`` (an
instructor's check) and through the student route of cnn-rnn 1.1(b), where the diagnosis never
states the reference; and the advice for an answer written as an equation or with the typeset
floor brackets."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.grading.test_diagnosis import FORMULA_1_1B
from tests.grading.test_formula_mistakes import MISTAKEN, UNRELATED
from tests.keys import student_client

CHECK_1_1B = "/v1/assignments/cnn-rnn/problems/1.1b/check"
# The reference of 1.1(b) as a student could recover it from a message: spaces and * removed.
REFERENCE_FORMS = ("floor((H+2P-D(K-1)-1)/S)+1", "H+2P-D(K-1)-1", "(H+2P-D(K-1)-1)/S")


@pytest.fixture(scope="module")
def student() -> Iterator[TestClient]:
    with student_client() as client:
        yield client


def as_written(text: str) -> str:
    """A text as the reference's forms are compared with it: no spaces, no *."""
    return re.sub(r"[\s*]", "", text)


@pytest.mark.parametrize(("answer", "mistakes"), MISTAKEN, ids=[m[0] for m in MISTAKEN])
def test_check_names_the_mistake_of_a_formula(
    client: TestClient, answer: str, mistakes: list[str]
) -> None:
    response = client.post("/v1/check", json={"expected": FORMULA_1_1B, "answer": answer})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["correct"] is False
    assert [d["code"] for d in body["diagnosis"]] == mistakes
    assert all(set(d) == {"code", "message"} and d["message"] for d in body["diagnosis"])


def test_a_batch_of_a_class_is_told_each_its_own_mistake(client: TestClient) -> None:
    answers = [a for a, _ in MISTAKEN] + UNRELATED + ["floor((H + 2*P - D*(K - 1) - 1)/S) + 1"]
    checks = [{"expected": FORMULA_1_1B, "answer": a} for a in answers]
    response = client.post("/v1/check/batch", json={"checks": checks})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    told = [[d["code"] for d in r["diagnosis"]] for r in results]
    assert told == [m for _, m in MISTAKEN] + [[] for _ in UNRELATED] + [[]]
    assert response.json()["summary"]["keys"] == 1


@pytest.mark.parametrize(("answer", "mistakes"), MISTAKEN, ids=[m[0] for m in MISTAKEN])
def test_a_student_is_told_the_mistake_without_the_reference(
    student: TestClient, answer: str, mistakes: list[str]
) -> None:
    response = student.post(CHECK_1_1B, json={"student_id": "alice", "answer": answer})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "incorrect"
    feedback = body["feedback"]
    assert [d["code"] for d in feedback["diagnosis"]] == mistakes
    assert feedback["report"]["counterexample"]["point"]  # the report is still there
    said = as_written(json.dumps(feedback["diagnosis"]))
    assert not [form for form in REFERENCE_FORMS if form in said]
    assert "reference" not in json.dumps(feedback["report"]["counterexample"])


@pytest.mark.parametrize("answer", UNRELATED)
def test_a_student_whose_formula_is_no_known_mistake_gets_no_diagnosis(
    student: TestClient, answer: str
) -> None:
    response = student.post(CHECK_1_1B, json={"student_id": "alice", "answer": answer})
    assert response.status_code == 200, response.text
    feedback = response.json()["feedback"]
    assert feedback["verdict"] == "incorrect" and "diagnosis" not in feedback


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            "H_out = floor((H + 2*P - D*(K - 1) - 1)/S) + 1",
            "answer: syntax error: the formula is an equation at column 7; give only the "
            "right-hand side expression, without 'H_out ='",
        ),
        (
            "\u230a(H + 2*P - D*(K - 1) - 1)/S\u230b + 1",
            "answer: the character '\u230a' (LEFT FLOOR) is not allowed at column 1; write "
            "floor(...) for \u230a...\u230b",
        ),
    ],
    ids=["equation", "floor-brackets"],
)
def test_a_malformed_formula_is_told_what_to_write(
    client: TestClient, student: TestClient, answer: str, reason: str
) -> None:
    checked = client.post("/v1/check", json={"expected": FORMULA_1_1B, "answer": answer})
    assert checked.status_code == 422
    problem = checked.json()
    assert problem["detail"] == reason and problem["errors"][0]["loc"][:2] == ["body", "answer"]
    told = student.post(CHECK_1_1B, json={"student_id": "alice", "answer": answer})
    assert told.status_code == 200, told.text
    assert told.json()["status"] == "malformed"
    assert told.json()["feedback"] == {"verdict": "malformed answer", "reason": reason}


def test_a_declared_family_that_does_not_fit_is_a_422_at_its_field(client: TestClient) -> None:
    expected: dict[str, Any] = {
        "op": "formula",
        "reference": "H - K + 2",
        "variables": {"H": [4, 64], "K": [1, 4]},
        "mistakes": "conv_output_size",
    }
    response = client.post("/v1/check", json={"expected": expected, "answer": "H"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("expected.mistakes: the reference is not")

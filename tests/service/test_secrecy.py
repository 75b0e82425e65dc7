"""Secrecy: a student-facing answer never contains the key's values, nor anything from which
they follow (an error measured against a zero answer *is* the key).

A wrong-answer round with a student key, on every problem of cnn-rnn: typical mistakes, all
zeros, a wrong shape, through the variant route, the check route and the grade route (both
formats). Every response is scanned for the numbers of the keys (computed by the homework's
closed forms), as printed in any way that keeps three significant digits or more, and for the
fields and the reference formula that would give them away. The same scan finds the keys in
an instructor's ``/v1/check`` answer, so it is able to fail.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.examples import PATH_PARAMETERS
from service.grading.catalogue import Catalogue
from tests.grading import seed_answers as seed
from tests.keys import INSTRUCTOR, key, keyed_settings, student_client
from tests.service.test_grade_routes import given, typical_mistake

STUDENT_ID = "alice"
NUMBER = re.compile(r"-?(\d+(?:\.\d*)?|\.\d+)(?:[eE]([-+]?\d+))?")
FORBIDDEN_FIELDS = {
    "expected",
    "expected_shape",
    "max_abs_error",
    "max_rel_error",
    "first_mismatches",
    "reference",
    "dimensions",
    "steps",
    "scale",
    "effective_atol",
}
"""Fields of the engine's reports that hold the key or follow from it."""
REFERENCE_FORMULA = ("D*(K - 1)", "D*(K-1)", "2*P - D")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with student_client() as test_client:
        yield test_client


@pytest.fixture(scope="module")
def problems(client: TestClient) -> list[dict[str, Any]]:
    listing = client.get("/v1/assignments").json()["assignments"]
    found: list[dict[str, Any]] = next(a for a in listing if a["id"] == "cnn-rnn")["problems"]
    return found


def distinctive(values: np.ndarray) -> list[float]:
    """The key's numbers that no other number of a response can be by chance: not integers and
    not numbers of two decimals (the given tensors have one, the tolerances are round)."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    return [float(v) for v in flat if abs(v * 100 - round(v * 100)) > 1e-6]


@pytest.fixture(scope="module")
def key_numbers(client: TestClient, problems: list[dict[str, Any]]) -> list[float]:
    numbers: list[float] = []
    for problem in problems:
        answer = seed.answer_to(problem["id"], given(client, problem["id"], STUDENT_ID))
        if not isinstance(answer, str):
            numbers += distinctive(np.asarray(answer))
    assert len(numbers) > 60  # the tensors of 1.2 and the loss of 1.3-4
    return numbers


def significant(token: str) -> tuple[int, float]:
    """How many significant digits a printed number has, and the size of its last place."""
    match = NUMBER.fullmatch(token)
    assert match is not None
    mantissa, exponent = match.group(1), int(match.group(2) or 0)
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    digits = mantissa.replace(".", "").lstrip("0")
    return len(digits), 10.0 ** (exponent - decimals)


def leaks(text: str, numbers: list[float]) -> list[tuple[str, float]]:
    """The numbers of ``text`` that print a key number (or its magnitude) to 3 or more
    significant digits, and the formats of the key numbers found verbatim."""
    found = []
    for match in NUMBER.finditer(text):
        token = match.group(0)
        digits, place = significant(token)
        if digits < 3:
            continue
        value = abs(float(token))
        found += [(token, v) for v in numbers if abs(value - abs(v)) <= place / 2 + 1e-12]
    for v in numbers:
        for shown in (repr(v), f"{v:.6g}", f"{v:.4g}", f"{abs(v):.4g}", f"{v:.4f}"):
            # A format that rounds to fewer than 3 digits ("0.5" for 0.49995) tells no more
            # than a given number of one decimal printed beside it.
            if shown in text and significant(shown.lstrip("-"))[0] >= 3:
                found.append((shown, v))
    return found


def fields(body: Any) -> Iterator[str]:
    if isinstance(body, dict):
        for name, value in body.items():
            yield name
            yield from fields(value)
    elif isinstance(body, list):
        for value in body:
            yield from fields(value)


def zeros_like(answer: Any) -> Any:
    return np.zeros_like(np.asarray(answer, dtype=np.float64)).tolist()


def wrong_answers(client: TestClient, problem: dict[str, Any]) -> list[Any]:
    """A typical mistake, zeros (an error against zeros is the key), and a wrong shape."""
    pid = problem["id"]
    g = given(client, pid, STUDENT_ID)
    answers = [typical_mistake(pid, g)]
    right = seed.answer_to(pid, g)
    if problem["answer_kind"] in ("tensor", "number"):
        answers += [zeros_like(right), np.zeros((*np.shape(right), 2)).tolist()]
    elif problem["answer_kind"] == "formula":
        answers += ["0", "H"]
    elif problem["answer_kind"] == "shape":
        answers += [[0], [1, 1, 1]]
    return answers


@pytest.fixture(scope="module")
def responses(client: TestClient, problems: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """Every student-facing response of the wrong-answer round, by what was asked."""
    found: list[tuple[str, Any]] = []
    rounds: list[dict[str, Any]] = [{}, {}, {}]
    for problem in problems:
        pid = problem["id"]
        variant = client.get(
            f"/v1/assignments/cnn-rnn/problems/{pid}", params={"student_id": STUDENT_ID}
        )
        found.append((f"GET {pid}", variant.json()))
        for n, answer in enumerate(wrong_answers(client, problem)):
            checked = client.post(
                f"/v1/assignments/cnn-rnn/problems/{pid}/check",
                json={"student_id": STUDENT_ID, "answer": answer},
            )
            assert checked.status_code == 200, checked.text
            assert not checked.json()["correct"], (pid, answer)
            found.append((f"check {pid} #{n}", checked.json()))
            rounds[n][pid] = answer
    for n, answers in enumerate(rounds):
        for output in ("json", "gradescope"):
            graded = client.post(
                "/v1/assignments/cnn-rnn/grade",
                json={"student_id": STUDENT_ID, "answers": answers},
                params={"format": output},
            )
            assert graded.status_code == 200, graded.text
            body = graded.json()
            body.pop("execution_time")  # a duration, not from the key
            found.append((f"grade #{n} {output}", body))
    return found


def test_no_response_prints_a_number_of_the_key(
    responses: list[tuple[str, Any]], key_numbers: list[float]
) -> None:
    for label, body in responses:
        assert leaks(json.dumps(body), key_numbers) == [], label


def test_no_check_states_the_shape_of_a_key_the_answer_missed(
    client: TestClient, problems: list[dict[str, Any]], responses: list[tuple[str, Any]]
) -> None:
    # The dimension of a Jacobian can be the question (the homework's 1.1(c)(ii)).
    shapes = {
        p["id"]: list(np.shape(seed.answer_to(p["id"], given(client, p["id"], STUDENT_ID))))
        for p in problems
        if p["answer_kind"] == "tensor"
    }
    missed = 0
    for label, body in responses:
        pid = label.split()[1]
        if not label.startswith("check") or pid not in shapes:
            continue
        if body["feedback"].get("report", {}).get("shape_matches") is False:
            missed += 1
            assert json.dumps(shapes[pid]) not in json.dumps(body), label
    assert missed >= 10


def test_no_response_has_a_field_that_holds_the_key(responses: list[tuple[str, Any]]) -> None:
    for label, body in responses:
        assert not FORBIDDEN_FIELDS & set(fields(body)), label


def test_no_response_quotes_the_reference_formula_or_the_right_choice(
    responses: list[tuple[str, Any]],
) -> None:
    for label, body in responses:
        text = json.dumps(body)
        assert not any(formula in text for formula in REFERENCE_FORMULA), label
        if not label.startswith("GET"):  # the variant lists every option, as it must
            assert "yes" not in text, label


def test_the_wrong_answers_were_judged_and_told(responses: list[tuple[str, Any]]) -> None:
    # The scan means something only if the feedback it scanned is there.
    checks = [body for label, body in responses if label.startswith("check")]
    assert {c["status"] for c in checks} <= {"incorrect", "partial"}
    assert sum("report" in c["feedback"] for c in checks) >= 20
    assert sum("diagnosis" in c["feedback"] for c in checks) >= 8


def test_the_scan_finds_the_keys_in_an_instructors_check(
    client: TestClient, key_numbers: list[float]
) -> None:
    catalogue: Catalogue = client.app.state.catalogue  # type: ignore[attr-defined]
    for problem in ("1.2.2c", "1.2.1d-jacobian", "1.3-4-loss"):
        expected = catalogue.variant("cnn-rnn", problem, STUDENT_ID).expected
        answer = zeros_like(seed.answer_to(problem, given(client, problem, STUDENT_ID)))
        full = client.post(
            "/v1/check", json={"expected": expected, "answer": answer}, headers=key(INSTRUCTOR)
        )
        assert full.status_code == 200, full.text
        assert leaks(json.dumps(full.json()), key_numbers), problem
        assert FORBIDDEN_FIELDS & set(fields(full.json())), problem


def test_the_public_examples_of_the_students_routes_answer_nothing_right(
    client: TestClient,
) -> None:
    """/docs and /openapi.json need no key. The examples of the routes students use must not
    be right answers: several problems are the same for every student, so a right example would
    be their key. Each example is judged as it is written (with an instructor's key, which may
    name any student)."""
    paths = client.get("/openapi.json").json()["paths"]
    base = "/v1/assignments/{assignment}"

    def examples(path: str) -> list[dict[str, Any]]:
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]
        return list(body["examples"].values())

    checks = examples(base + "/problems/{problem}/check")
    submissions = examples(base + "/grade")
    assert checks and submissions
    for example in checks:
        problem = example[PATH_PARAMETERS]["problem"]  # the problem it answers
        checked = client.post(
            f"/v1/assignments/cnn-rnn/problems/{problem}/check",
            json=example["value"],
            headers=key(INSTRUCTOR),
        )
        assert checked.status_code == 200, checked.text
        assert checked.json()["correct"] is False, example
    for example in submissions:
        graded = client.post(
            "/v1/assignments/cnn-rnn/grade", json=example["value"], headers=key(INSTRUCTOR)
        )
        assert graded.status_code == 200, graded.text
        answered = set(example["value"]["answers"])
        results = graded.json()["problems"]
        assert answered <= set(results)
        assert all(results[pid]["score"] == 0 for pid in answered), example


# The answers of the problems of cnn-rnn that are the same for every student, as they would be
# written: 1.1(a)'s shape, 1.1(b)'s formula (either way round) and 1.3's loss at the start.
SHARED_KEYS = ("5x2", "[5,2]", "[5, 2]", "D*(K - 1) - 1", "D*(K-1)-1", "- 1 + 2*P", "1.386")


def test_the_public_api_document_states_no_answer_every_student_shares(
    client: TestClient,
) -> None:
    """Not in an example, a summary or a field's description: /openapi.json needs no key."""
    text = client.get("/openapi.json").text
    assert "Seed 1.1(a)" in text  # the homework's examples are there, without their answers
    assert [k for k in SHARED_KEYS if k in text] == []


def test_a_refused_shape_answer_is_not_shown_the_key_as_an_example(client: TestClient) -> None:
    """The messages that say how to write a shape give an example: never 1.1(a)'s answer."""
    for answer in ("abc", "two", [[1, 2]], [True], "(" * 200):
        checked = client.post(
            "/v1/assignments/cnn-rnn/problems/1.1a/check",
            json={"student_id": STUDENT_ID, "answer": answer},
        )
        text = checked.text
        assert "shape" in text, text[:300]  # the message is there ...
        assert "5x2" not in text and "[5, 2]" not in text, text[:300]


@pytest.mark.parametrize("pid", ["1.1c-iv", "1.2.2d"])
def test_feedback_does_not_say_whether_one_element_tried_is_right(
    client: TestClient, pid: str
) -> None:
    """The attack of a count of wrong elements: every element far off but the one tried.
    Whether that one is right or wrong, the student is told the same, on the check route and
    on the grade route (its gradescope text too); the instructor's own report tells them
    apart, so the comparison is able to fail."""
    key_answer = np.asarray(seed.answer_to(pid, given(client, pid, STUDENT_ID)), dtype=float)
    far = np.full_like(key_answer, 999.0)
    right, wrong = far.copy(), far.copy()
    right.flat[0] = key_answer.flat[0]
    wrong.flat[0] = key_answer.flat[0] + 5.0

    def told(answer: np.ndarray) -> list[Any]:
        checked = client.post(
            f"/v1/assignments/cnn-rnn/problems/{pid}/check",
            json={"student_id": STUDENT_ID, "answer": answer.tolist()},
        ).json()
        seen = [checked]
        for output in ("json", "gradescope"):
            graded = client.post(
                "/v1/assignments/cnn-rnn/grade",
                json={"student_id": STUDENT_ID, "answers": {pid: answer.tolist()}},
                params={"format": output},
            ).json()
            graded.pop("execution_time")
            seen.append(graded)
        return seen

    assert told(right) == told(wrong)
    with TestClient(create_app(keyed_settings())) as instructor:
        instructor.headers.update(key(INSTRUCTOR))
        expected = {"op": "value", "value": key_answer.tolist()}
        mismatched = [
            instructor.post(
                "/v1/check", json={"expected": expected, "answer": answer.tolist()}
            ).json()["report"]["mismatched"]
            for answer in (right, wrong)
        ]
    assert mismatched == [key_answer.size - 1, key_answer.size]

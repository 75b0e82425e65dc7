"""Checking and grading a student's answers over HTTP, on the built-in assignment cnn-rnn.

The answers come from the homework's closed forms (tests/grading/seed_answers.py: numpy, no
torch), computed on the given tensors a student reads from the variant route, and are graded
by another app instance with the same secret (another replica, or the same after a restart).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.grading.catalogue import load_catalogue
from service.grading.grade import NUMBER_EXAMPLE
from service.settings import Settings
from tests.grading import seed_answers as seed
from tests.grading.test_gradescope import TEST_FIELDS, TOP_LEVEL, VISIBILITIES
from tests.keys import INSTRUCTOR, STUDENT, UNKNOWN, key, keyed_settings, student_client

STUDENTS = ("alice", "bob", "carol@example.edu")
GRADE = "/v1/assignments/cnn-rnn/grade"


def check_path(problem: str) -> str:
    return f"/v1/assignments/cnn-rnn/problems/{problem}/check"


@pytest.fixture(scope="module")
def first() -> Iterator[TestClient]:
    with student_client() as client:
        yield client


@pytest.fixture(scope="module")
def replica() -> Iterator[TestClient]:
    with student_client() as client:
        yield client


@pytest.fixture(scope="module")
def problems(first: TestClient) -> dict[str, dict[str, Any]]:
    listing = first.get("/v1/assignments").json()["assignments"]
    cnn_rnn = next(a for a in listing if a["id"] == "cnn-rnn")
    return {p["id"]: p for p in cnn_rnn["problems"]}


def given(client: TestClient, problem: str, student: str) -> seed.Given:
    """A student's given tensors, read the way a student reads them."""
    response = client.get(
        f"/v1/assignments/cnn-rnn/problems/{problem}", params={"student_id": student}
    )
    assert response.status_code == 200, response.text
    tensors = response.json()["given"]
    return {
        name: np.asarray(t["data"], dtype=np.float64).reshape(t["shape"])
        for name, t in tensors.items()
    }


def seed_answers(client: TestClient, student: str, problems: list[str]) -> dict[str, Any]:
    return {p: seed.answer_to(p, given(client, p, student)) for p in problems}


def grade(client: TestClient, student: str, answers: dict[str, Any], **params: str) -> Any:
    response = client.post(GRADE, json={"student_id": student, "answers": answers}, params=params)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("student", STUDENTS)
def test_the_seeds_answers_score_full_marks(
    first: TestClient, replica: TestClient, problems: dict[str, Any], student: str
) -> None:
    answers = seed_answers(first, student, list(problems))
    graded = grade(replica, student, answers)
    assert graded["assignment"] == "cnn-rnn" and graded["student_id"] == student
    assert list(graded["problems"]) == list(problems)
    for problem, result in graded["problems"].items():
        assert result["status"] == "correct", (problem, result)
        assert (
            result["correct"] and result["score"] == result["points"] == problems[problem]["points"]
        )
        assert result["feedback"]["verdict"] == "correct" and "diagnosis" not in result["feedback"]
    assert graded["total"] == graded["points"] == sum(p["points"] for p in problems.values())
    assert graded["ignored"] == [] and graded["execution_time"] >= 0
    gradescope = grade(replica, student, answers, format="gradescope")
    assert gradescope["score"] == graded["total"]
    assert all(test["status"] == "passed" for test in gradescope["tests"])


def significant(value: Any, digits: int) -> Any:
    """A tensor answer with every entry rounded to ``digits`` significant digits."""
    array = np.asarray(value, dtype=np.float64)
    rounded = [float(f"{v:.{digits - 1}e}") for v in array.flat]
    return np.asarray(rounded).reshape(array.shape).tolist()


TENSOR_PROBLEMS = [
    *("1.1c-i", "1.1c-iv", "1.2.1c", "1.2.1d-jacobian"),
    *("1.2.2c", "1.2.2d", "1.2.2e", "1.2.2f"),
]


@pytest.mark.parametrize("student", STUDENTS[:2])
def test_tensors_to_four_significant_digits_are_right_and_to_two_are_not(
    first: TestClient, student: str
) -> None:
    """The assignment asks for 4 significant digits: the seed's answers rounded so are right
    (the keys' entries are 0.01 to 1: 4 decimals were not enough before), rounded to 2 they
    are wrong."""
    exact = seed_answers(first, student, TENSOR_PROBLEMS)
    four = grade(first, student, {p: significant(a, 4) for p, a in exact.items()})
    assert all(four["problems"][p]["status"] == "correct" for p in TENSOR_PROBLEMS), four
    # The conv answers are sums of products of one-decimal numbers: 2 digits may be exact.
    recurrent = [p for p in TENSOR_PROBLEMS if p.startswith("1.2")]
    two = grade(first, student, {p: significant(exact[p], 2) for p in recurrent})
    assert all(two["problems"][p]["status"] == "incorrect" for p in recurrent), two


def test_the_input_size_never_equals_the_hidden_size_in_1_2_1b(first: TestClient) -> None:
    """c[t] is in R^m; a student who answers n must be wrong for every variant."""
    for index in range(60):
        student = f"s{index}"
        g = given(first, "1.2.1b", student)
        m, n = int(g["m"]), int(g["n"])
        assert 2 <= m <= 9 < n, (student, m, n)
    g = given(first, "1.2.1b", "alice")
    right = first.post(check_path("1.2.1b"), json={"student_id": "alice", "answer": [int(g["m"])]})
    assert right.json()["correct"]
    wrong = first.post(check_path("1.2.1b"), json={"student_id": "alice", "answer": [int(g["n"])]})
    assert wrong.json()["status"] == "incorrect"


def test_every_given_tensor_is_described(first: TestClient, problems: dict[str, Any]) -> None:
    for problem in problems:
        response = first.get(
            f"/v1/assignments/cnn-rnn/problems/{problem}", params={"student_id": "alice"}
        )
        descriptions = response.json()["given_descriptions"]
        assert all(text.strip() for text in descriptions.values()), (problem, descriptions)


def test_each_problem_checked_alone(first: TestClient, problems: dict[str, Any]) -> None:
    for problem in problems:
        answer = seed.answer_to(problem, given(first, problem, "alice"))
        response = first.post(check_path(problem), json={"student_id": "alice", "answer": answer})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["correct"] and body["status"] == "correct", (problem, body)
        assert body["score"] == body["points"] == problems[problem]["points"]
        assert (body["assignment"], body["problem"], body["student_id"]) == (
            "cnn-rnn",
            problem,
            "alice",
        )


def test_another_students_answers_are_wrong(first: TestClient, problems: dict[str, Any]) -> None:
    drawn = ["1.1c-i", "1.2.1c", "1.2.2c", "1.2.2f"]
    graded = grade(first, "alice", seed_answers(first, "bob", drawn))
    assert all(graded["problems"][p]["status"] == "incorrect" for p in drawn)


def shifted(x: np.ndarray, axis: int, delta: int) -> np.ndarray:
    """``out[i] = x[i + delta]`` along ``axis``, zero past the ends."""
    out = np.zeros_like(x)
    source = [slice(None)] * x.ndim
    target = [slice(None)] * x.ndim
    size = x.shape[axis]
    source[axis] = slice(max(delta, 0), size + min(delta, 0))
    target[axis] = slice(max(-delta, 0), size - max(delta, 0))
    out[tuple(target)] = x[tuple(source)]
    return out


def typical_mistake(problem: str, g: seed.Given) -> Any:
    """A wrong answer students give, made from the seed's own formulas."""
    right = seed.answer_to(problem, g)
    mistakes: dict[str, Any] = {
        "1.1a": lambda: "6x3",  # ceil where the formula floors: ceil(17/4) + 1, ceil(7/4) + 1
        "1.1b": lambda: "(H - K + 2*P)/S + 1",  # no floor, no dilation
        # 1-based x[c, 2i - 1 + m] read with 0-based i: one position later
        "1.1c-i": lambda: seed.conv_forward(shifted(g["x"], 1, 1), g["W"]),
        "1.1c-ii": lambda: np.transpose(np.array(right), (2, 3, 4, 0, 1)),  # W's shape first
        "1.1c-iii": lambda: seed.conv_jacobian_weight(g["x"]),  # against W, not x
        "1.1c-iv": lambda: -np.array(right),
        "1.2.1b": lambda: [int(g["m"]) + 1],
        "1.2.1c": lambda: seed.gated_grad_w_x_direct_only(  # no path through time
            g["W_c"], g["W_h"], g["W_x"], g["x"], g["dl_dh"]
        ),
        "1.2.1d-jacobian": lambda: seed.gated_gate_path_missing(
            g["W_c"], g["W_h"], g["W_x"], g["x"]
        ),
        "1.2.1d-vanishing": lambda: "no",
        "1.2.2b": lambda: [2],  # the two past states, without x[t]
        "1.2.2c": lambda: shifted(np.array(right), 0, -1),  # row t - 1 holding h[t - 1]
        "1.2.2d": lambda: np.array(right).T,
        "1.2.2e": lambda: np.transpose(np.array(right), (0, 2, 1)),  # dh[t-1]/dh[t] laid out
        "1.2.2f": lambda: g["dl_dh"],  # the direct term only
        "1.3-4-loss": lambda: math.log2(seed.CLASSES),  # base 2
        "1.3-4-accuracy": lambda: 100 * seed.INITIAL_ACCURACY,  # percent
    }
    answer = mistakes[problem]()
    return answer.tolist() if isinstance(answer, np.ndarray) else answer


DIAGNOSED = {
    "1.1b": "floor_missing",  # and dilation_ignored: the two changes of its typical answer
    "1.1c-i": "off_by_one",
    "1.1c-ii": "jacobian_halves_swapped",
    "1.1c-iii": "wrong_argument",
    "1.1c-iv": "sign_flipped",
    "1.2.1c": "direct_gradients_only",
    "1.2.1d-jacobian": "gate_path_missing",
    "1.2.2c": "off_by_one",
    "1.2.2d": "transposed",
    "1.2.2e": "transposed",
    "1.2.2f": "direct_term_only",
}
"""The mistake each typical wrong answer is diagnosed with (problems at level diagnosis)."""


@pytest.mark.parametrize("student", STUDENTS[:2])
def test_typical_wrong_answers_score_less_and_get_the_diagnosis(
    first: TestClient, problems: dict[str, Any], student: str
) -> None:
    answers = {p: typical_mistake(p, given(first, p, student)) for p in problems}
    graded = grade(first, student, answers)
    assert graded["total"] == 0
    levels = {
        p: first.get(
            f"/v1/assignments/cnn-rnn/problems/{p}", params={"student_id": student}
        ).json()["feedback"]
        for p in problems
    }
    for problem, result in graded["problems"].items():
        assert result["status"] == "incorrect" and result["score"] == 0, (problem, result)
        told = result["feedback"]
        if levels[problem] == "verdict":
            assert told == {"verdict": "incorrect"}, problem
            continue
        assert told["report"]["message"], problem
        codes = [d["code"] for d in told.get("diagnosis", [])]
        if problem in DIAGNOSED:
            assert DIAGNOSED[problem] in codes, (problem, told)
    assert set(DIAGNOSED) <= {p for p, level in levels.items() if level == "diagnosis"}


def test_feedback_names_the_tensors_as_the_statement_does(first: TestClient) -> None:
    """1.1c-iii answered with the Jacobian against the weight was told "This is dy/dweight,
    the Jacobian against weight", where the statement and the given tensors call it W."""
    g = given(first, "1.1c-iii", "alice")
    answer = typical_mistake("1.1c-iii", g)
    body = first.post(check_path("1.1c-iii"), json={"student_id": "alice", "answer": answer})
    (found,) = body.json()["feedback"]["diagnosis"]
    assert found["code"] == "wrong_argument"
    assert found["message"] == (
        "This is dy/dW, the Jacobian against W; the question asks for dy/dx, against x."
    )
    wrong = (-np.array(seed.answer_to("1.1c-iv", given(first, "1.1c-iv", "alice")))).tolist()
    body = first.post(check_path("1.1c-iv"), json={"student_id": "alice", "answer": wrong})
    assert body.json()["feedback"]["report"]["label"] == "dl/dW"


def test_missing_and_malformed_answers_score_zero_and_the_rest_is_graded(
    first: TestClient,
) -> None:
    problems = ["1.1a", "1.1b", "1.1c-i", "1.2.1b", "1.2.2f", "1.3-4-loss", "1.2.1d-vanishing"]
    answers = seed_answers(first, "alice", problems)
    answers |= {
        "1.1b": "floor((H + 2*P - D*(K-1) - 1)/S",  # unbalanced parenthesis
        "1.1c-i": [[1, 2], [3]],  # ragged
        "1.2.1b": "c",  # not a size
        "1.2.2f": None,  # null: no answer
        "1.2.1d-vanishing": "maybe",  # not an option
        "9.9": [1],
    }
    graded = grade(first, "alice", answers)
    results = graded["problems"]
    for problem in ("1.1b", "1.1c-i", "1.2.1b", "1.2.1d-vanishing"):
        told = results[problem]["feedback"]
        assert results[problem]["status"] == "malformed" and results[problem]["score"] == 0
        assert told["verdict"] == "malformed answer" and told["reason"], problem
    assert "ragged" in results["1.1c-i"]["feedback"]["reason"]
    assert "is not a shape" in results["1.2.1b"]["feedback"]["reason"]
    assert results["1.2.1d-vanishing"]["feedback"]["reason"].endswith(
        "no, vanishing-only, exploding-only, yes"
    )
    for problem in ("1.2.2f", "1.1c-ii", "1.2.2e"):
        assert results[problem]["status"] == "missing"
        assert results[problem]["feedback"] == {"verdict": "no answer"}
    assert results["1.1a"]["status"] == results["1.3-4-loss"]["status"] == "correct"
    assert graded["total"] == results["1.1a"]["points"] + results["1.3-4-loss"]["points"]
    assert graded["ignored"] == ["9.9"]


def test_shapes_are_read_the_way_students_write_them(first: TestClient) -> None:
    m = int(given(first, "1.2.1b", "alice")["m"])
    for answer in ([m], m, f"{m}", f"[{m}]", f"({m},)"):
        body = first.post(check_path("1.2.1b"), json={"student_id": "alice", "answer": answer})
        assert body.json()["correct"], answer
    for answer in ([5, 2], "5 x 2", "5\N{MULTIPLICATION SIGN}2", "(5, 2)"):
        body = first.post(check_path("1.1a"), json={"student_id": "alice", "answer": answer})
        assert body.json()["correct"], answer


def test_the_gradescope_results_have_gradescopes_fields(first: TestClient) -> None:
    answers = seed_answers(first, "alice", ["1.1a", "1.1c-iv", "1.2.2c"])
    answers["1.2.2c"] = typical_mistake("1.2.2c", given(first, "1.2.2c", "alice"))
    answers["1.1b"] = [1, 2]
    results = grade(first, "alice", answers, format="gradescope")
    assert set(results) == TOP_LEVEL
    assert isinstance(results["execution_time"], int) and results["execution_time"] >= 0
    assert results["visibility"] in VISIBILITIES and results["stdout_visibility"] in VISIBILITIES
    assert isinstance(results["output"], str) and isinstance(results["score"], float)
    for test in results["tests"]:
        assert set(test) == TEST_FIELDS
        assert isinstance(test["name"], str) and isinstance(test["output"], str)
        assert isinstance(test["score"], float) and isinstance(test["max_score"], float)
        assert test["status"] in {"passed", "failed"} and test["visibility"] in VISIBILITIES
    tests = {test["number"]: test for test in results["tests"]}
    assert tests["1.1a"]["status"] == "passed" and tests["1.1a"]["score"] == 2
    assert tests["1.2.2c"]["status"] == "failed" and tests["1.2.2c"]["score"] == 0
    assert tests["1.2.2c"]["output"].startswith("Incorrect: 0 of 3 points.")
    assert "\n- " in tests["1.2.2c"]["output"]  # the diagnosis, one line per mistake
    assert tests["1.1b"]["output"].startswith("Malformed answer: 0 of 3 points.")
    assert tests["1.2.1c"]["output"] == "No answer: 0 of 4 points."
    assert results["score"] == sum(t["score"] for t in results["tests"])


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v1/assignments/nope/grade", "unknown-assignment"),
        ("/v1/assignments/nope/problems/1.1a/check", "unknown-assignment"),
        ("/v1/assignments/cnn-rnn/problems/9.9/check", "unknown-problem"),
    ],
)
def test_unknown_ids_are_404(first: TestClient, path: str, kind: str) -> None:
    body = {
        "student_id": "alice",
        **({"answer": 1} if path.endswith("/check") else {"answers": {}}),
    }
    response = first.post(path, json=body)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith(kind) and "cnn-rnn" in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        (check_path("1.1a"), {"answer": [5, 2]}, ["body", "student_id"]),
        (check_path("1.1a"), {"student_id": "alice"}, ["body", "answer"]),
        (check_path("1.1a"), {"student_id": "a\nb", "answer": 1}, ["body", "student_id"]),
        (check_path("1.1a"), {"student_id": "alice", "answer": 1, "x": 2}, ["body", "x"]),
        (GRADE, {"student_id": "alice", "answers": [1, 2]}, ["body", "answers"]),
        (GRADE, {"student_id": 7, "answers": {}}, ["body", "student_id"]),
    ],
)
def test_a_bad_body_is_422_naming_the_field(
    first: TestClient, path: str, body: dict[str, Any], where: list[str]
) -> None:
    response = first.post(path, json=body)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == where


def test_an_unknown_format_is_422(first: TestClient) -> None:
    response = first.post(
        GRADE, json={"student_id": "alice", "answers": {}}, params={"format": "csv"}
    )
    assert response.status_code == 422 and response.json()["errors"][0]["loc"] == [
        "query",
        "format",
    ]


def test_roles_on_the_check_and_grade_routes() -> None:
    with TestClient(create_app(keyed_settings())) as client:
        calls = [
            (check_path("1.1a"), {"student_id": "alice", "answer": [5, 2]}),
            (GRADE, {"student_id": "alice", "answers": {"1.1a": [5, 2]}}),
        ]
        for path, body in calls:
            assert client.post(path, json=body).status_code == 401
            assert client.post(path, json=body, headers=key(UNKNOWN)).status_code == 401
            assert client.post(path, json=body, headers=key(STUDENT)).status_code == 200
            assert client.post(path, json=body, headers=key(INSTRUCTOR)).status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (check_path("1.1a"), {"student_id": "alice", "answer": [5, 2]}),
        (GRADE, {"student_id": "alice", "answers": {"1.1a": [5, 2], "1.1b": "H"}}),
    ],
)
def test_429_after_the_limit_per_student_key(path: str, body: dict[str, Any]) -> None:
    with TestClient(create_app(keyed_settings(check_rate_limit="2/minute"))) as client:
        for _ in range(2):
            assert client.post(path, json=body, headers=key(STUDENT)).status_code == 200
        refused = client.post(path, json=body, headers=key(STUDENT))
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        # instructors (a grading script) are not limited
        assert all(
            client.post(path, json=body, headers=key(INSTRUCTOR)).status_code == 200
            for _ in range(3)
        )


BROKEN = """
id = "broken"
title = "A key that cannot be computed"

[[problems]]
id = "p1"
title = "A forward pass"
statement = "Convolve."
points = 1
answer_kind = "tensor"

[problems.expected]  # a kernel of 3 on an input of length 2: no output
op = "forward"
model = "conv1d"
params = { weight = [[[1, 2, 3]]] }
inputs = { x = [[1, 2]] }
"""


def test_a_key_that_cannot_be_computed_is_the_assignments_fault_not_the_students(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "broken.toml").write_text(BROKEN)
    app = create_app(Settings())
    # As if the file had passed the check at start-up and failed for this student only.
    app.state.catalogue = load_catalogue([(tmp_path, "folder")], b"s" * 32)
    with TestClient(app) as client:
        response = client.post(
            "/v1/assignments/broken/grade", json={"student_id": "alice", "answers": {"p1": [[1]]}}
        )
    assert response.status_code == 500
    body = response.json()
    assert body["type"].endswith("assignment-error")
    assert body["detail"].startswith("problem p1: ") and "not the answer" in body["detail"]
    assert "cannot be computed" in caplog.text
    # The answer is documented where a client looks for it: both routes that judge answers.
    paths = client.get("/openapi.json").json()["paths"]
    for path in (GRADE, check_path("p").replace("/p/", "/{problem}/")):
        operation = paths[path.replace("cnn-rnn", "{assignment}")]["post"]
        assert "`assignment-error`" in operation["responses"]["500"]["description"], path


def test_the_check_computations_are_timed(first: TestClient) -> None:
    grade(first, "alice", seed_answers(first, "alice", ["1.2.1d-jacobian", "1.1c-ii"]))
    with TestClient(create_app(Settings())) as client:
        metrics = client.get("/metrics").text
    assert 'model="gated_rnn",operation="state-jacobians"' in metrics
    assert 'model="conv1d",operation="jacobian"' in metrics


def test_lower_request_limits_leave_the_homework_gradable_and_bound_the_answers() -> None:
    small = Settings(
        max_jacobian_elements=10,
        max_sequence_length=4,
        max_hidden_size=1,
        max_k=1,
        max_tensor_elements=40,
    )
    with TestClient(create_app(small)) as client:
        problems = ["1.1c-ii", "1.2.2c", "1.2.2f"]
        answers = seed_answers(client, "alice", problems)
        # the reference endpoints keep the operator's limits ...
        catalogue = client.app.state.catalogue  # type: ignore[attr-defined]
        expected = catalogue.variant("cnn-rnn", "1.2.2c", "alice").expected
        refused = client.post("/v1/check", json={"expected": expected, "answer": answers["1.2.2c"]})
        assert refused.status_code == 413
        # ... the assignment's references are the instructors' own, checked at start-up
        results = grade(client, "alice", answers)["problems"]
        assert results["1.2.2c"]["status"] == results["1.2.2f"]["status"] == "correct"
        # while a student's answer is held to the request budgets: dy/dW has 45 elements
        assert results["1.1c-ii"]["status"] == "malformed"
        assert "40" in results["1.1c-ii"]["feedback"]["reason"]


def test_answers_with_huge_numbers_or_one_argument_calls_are_graded_not_a_500(
    first: TestClient,
) -> None:
    """A number past 64 bits (orjson writes no such integer) and ``max(K)`` (Python's ``max``
    of one number fails) in a submission: graded like any other answer, alone and in a grade,
    in both output formats."""
    answers = {"1.1a": "10**20", "1.1b": "max(K)", "1.2.1b": [10**20]}
    for problem, answer in answers.items():
        body = first.post(check_path(problem), json={"student_id": "alice", "answer": answer})
        assert body.status_code == 200, body.text[:300]
        assert body.json()["correct"] is False
    for fmt in ("", "?format=gradescope"):
        response = first.post(GRADE + fmt, json={"student_id": "alice", "answers": answers})
        assert response.status_code == 200, response.text[:300]
    results = grade(first, "alice", answers)["problems"]
    assert {results[p]["score"] for p in answers} == {0}


def test_a_number_answer_may_be_written_as_text(first: TestClient) -> None:
    """A form field or a quoted CSV cell sends "1.386": read as the number; other text is
    still a malformed answer that says why."""
    for text, status in [
        ("1.386", "correct"),
        (" 1.3863 ", "correct"),
        ("2", "incorrect"),
        ("1.386e0", "correct"),
        ("log(4)", "malformed"),
        ("1e999", "malformed"),
        ("nan", "malformed"),
        ("2**2000", "malformed"),
        ("1/0", "malformed"),
    ]:
        response = first.post(
            check_path("1.3-4-loss"), json={"student_id": "alice", "answer": text}
        )
        assert response.status_code == 200, response.text
        assert response.json()["status"] == status, (text, response.json())


def test_a_number_answer_may_be_arithmetic_on_numbers(first: TestClient) -> None:
    """A student may write chance accuracy for 4 classes as 1/4: arithmetic on numbers alone,
    in the syntax of formula answers, is read as its value."""
    for text, status in [("1/4", "correct"), ("(1 + 1)/8", "correct"), ("1/3", "incorrect")]:
        response = first.post(
            check_path("1.3-4-accuracy"), json={"student_id": "alice", "answer": text}
        )
        assert response.json()["status"] == status, (text, response.json())


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("25%", "give a number: write a percentage as a fraction (25% is 0.25)"),
        ("log(4)", f'give a number, e.g. {NUMBER_EXAMPLE}, not the text "log(4)"'),
        (True, f"give a number, e.g. {NUMBER_EXAMPLE}, not true"),
        (["0.25"], f"give a number, e.g. {NUMBER_EXAMPLE} (answer[0] is a string"),
    ],
)
def test_a_number_problems_malformed_answer_is_told_to_give_a_number(
    first: TestClient, answer: Any, reason: str
) -> None:
    # Not the engine's "expected a nested list of numbers or a tensor object": a student who
    # was asked for one number is told about a number.
    response = first.post(
        check_path("1.3-4-accuracy"), json={"student_id": "alice", "answer": answer}
    )
    checked = response.json()
    assert checked["status"] == "malformed", checked
    assert checked["feedback"]["reason"].startswith(reason)
    assert "tensor" not in checked["feedback"]["reason"]


def test_the_example_of_a_number_is_no_number_problems_key(first: TestClient) -> None:
    catalogue = first.app.state.catalogue  # type: ignore[attr-defined]
    for assignment in catalogue.assignments.values():
        for problem in assignment.problems:
            if problem.answer_kind == "number" and problem.expected["op"] == "value":
                key = float(np.asarray(problem.expected["value"]).reshape(-1)[0])
                assert abs(float(NUMBER_EXAMPLE) - key) > 0.1 * max(1.0, abs(key)), problem.id


def test_the_seeds_question_ids_answer_their_split_problems(first: TestClient) -> None:
    """API.md numbers the questions as the seed does (``1.2.1d``, ``1.3-4``); the assignment
    splits those two. An object of the parts by suffix answers each part; a bare answer to a
    split question is not guessed at, and reading a split question says what its parts are."""
    student = STUDENTS[0]
    parts = ["1.2.1d-jacobian", "1.2.1d-vanishing", "1.3-4-loss", "1.3-4-accuracy"]
    right = seed_answers(first, student, parts)
    answers = {
        "1.2.1d": {"jacobian": right["1.2.1d-jacobian"], "vanishing": right["1.2.1d-vanishing"]},
        "1.3-4": {"loss": right["1.3-4-loss"], "accuracy": right["1.3-4-accuracy"]},
    }
    graded = grade(first, student, answers)
    assert all(graded["problems"][p]["status"] == "correct" for p in parts), graded["problems"]
    assert graded["ignored"] == []
    # A part's own id wins over the same part inside its question's object.
    mixed = grade(first, student, {"1.3-4": {"loss": 2.0}, "1.3-4-loss": right["1.3-4-loss"]})
    assert mixed["problems"]["1.3-4-loss"]["status"] == "correct"
    # A null under the part's own id is no answer: the question's object answers it.
    nulled = grade(first, student, {"1.3-4": {"loss": right["1.3-4-loss"]}, "1.3-4-loss": None})
    assert nulled["problems"]["1.3-4-loss"]["status"] == "correct"
    for answer in (1.386, {}):
        bare = grade(first, student, {"1.3-4": answer})
        assert bare["ignored"] == ["1.3-4"] and bare["total"] == 0
    # A suffix that is no part (a typo, another case) is ignored under its own name; the
    # other parts of the object are graded.
    typo = {"1.3-4": {"loss": right["1.3-4-loss"], "Accuracy": right["1.3-4-accuracy"]}}
    graded = grade(first, student, typo)
    assert graded["ignored"] == ["1.3-4-Accuracy"]
    assert graded["problems"]["1.3-4-loss"]["status"] == "correct"
    assert graded["problems"]["1.3-4-accuracy"]["status"] == "missing"
    read = first.get("/v1/assignments/cnn-rnn/problems/1.2.1d", params={"student_id": student})
    assert read.status_code == 404
    assert (
        "splits question '1.2.1d' into the problems 1.2.1d-jacobian, 1.2.1d-vanishing"
        in (read.json()["detail"])
    )

"""POST /v1/check and /v1/check/batch over HTTP: every op, status codes, OpenAPI."""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import numpy as np
import orjson
import pytest
import torch
from fastapi.testclient import TestClient

from models.registry import MODELS, get_model
from service import devices
from service.app import create_app
from service.examples import BACKWARD_EXAMPLES
from service.grading.check import Engine, check_many
from service.grading.examples import BATCH_EXAMPLES, CHECK_EXAMPLES
from service.problems import json_path
from service.settings import Settings
from tests.grading import gated_rnn_model
from tests.grading.test_diagnosis import (
    BACKWARD_W,
    FORMULA_1_1B,
    FORWARD,
    JACOBIAN_W,
    SHAPE_1_1A,
    b64,
    count_axis_orders,
    seed_dl_dw,
    seed_dy_dw,
    seed_y,
)


@pytest.fixture
def gated_rnn(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setitem(MODELS, gated_rnn_model.NAME, gated_rnn_model.TEST_GATED_RNN)
    yield gated_rnn_model.NAME


def post(client: TestClient, expected: dict[str, Any], answer: Any, **extra: Any) -> Any:
    return client.post("/v1/check", json={"expected": expected, "answer": answer, **extra})


@pytest.mark.parametrize(
    ("expected", "answer"),
    [
        (SHAPE_1_1A, [5, 2]),
        (FORMULA_1_1B, "floor((H + 2*P - D*(K - 1) - 1)/S) + 1"),
        (FORWARD, seed_y().tolist()),
        (BACKWARD_W, seed_dl_dw().tolist()),
        (JACOBIAN_W, seed_dy_dw().tolist()),
        (JACOBIAN_W, {"shape": [1, 3, 1, 5, 3], "data": seed_dy_dw().ravel().tolist()}),
        ({"op": "value", "value": [1.5, 2]}, [1.5, 2.0]),
    ],
    ids=["conv_shape", "formula", "forward", "backward", "jacobian", "flat-form", "value"],
)
def test_every_op_judges_a_right_answer(
    client: TestClient, expected: dict[str, Any], answer: Any
) -> None:
    response = post(client, expected, answer)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"correct", "score", "report", "diagnosis", "tolerance"}
    assert body["correct"] is True and body["score"] == 1.0 and body["diagnosis"] == []
    assert body["tolerance"]["rtol"] == 1e-5 and "rule" in body["tolerance"]


def test_state_jacobians_with_select(client: TestClient, gated_rnn: str) -> None:
    args = gated_rnn_model.example_args(seed=4, seq_len=4, m=2, n=3)
    expected = {"op": "state_jacobians", "model": gated_rnn, **args}
    tensors = {n: torch.tensor(v) for s in args.values() for n, v in s.items()}
    key = gated_rnn_model.step_jacobians(tensors).numpy()
    assert post(client, expected, key.tolist()).json()["correct"] is True
    norms = np.linalg.norm(key, ord=2, axis=(1, 2))
    selected = post(client, {**expected, "select": "step_norms"}, norms.tolist()).json()
    assert selected["correct"] is True
    not_tensor = post(client, {**expected, "select": "verdict"}, [1.0])
    assert not_tensor.status_code == 422 and "not a tensor" in not_tensor.json()["detail"]


def test_a_shape_mismatch_is_a_wrong_answer_not_an_error(client: TestClient) -> None:
    response = post(client, JACOBIAN_W, seed_dy_dw()[0].tolist())
    assert response.status_code == 200
    body = response.json()
    assert body["correct"] is False and body["report"]["shape_matches"] is False
    assert body["report"]["given_shape"] == [3, 1, 5, 3]


# A NaN inside base64 bytes: the JSON is valid, so the decoder is what must refuse it (the
# bare token is refused earlier, by the strict JSON parser: see the test after this one).
NAN_B64 = {"shape": [2], "b64": base64.b64encode(np.array([1, np.nan], "<f8").tobytes()).decode()}
VALUE = {"op": "value", "value": [1, 2]}
SHAPE_9 = {"op": "conv_shape", "input_size": [9], "kernel_size": 3}
GATE = {"op": "formula", "named": "gated_rnn_gate_size"}


@pytest.mark.parametrize(
    ("expected", "answer", "where", "message"),
    [
        (VALUE, NAN_B64, "answer", "finite"),
        (VALUE, [[1], 2], "answer", "ragged"),
        (VALUE, ["1", "2"], "answer", "not a number"),
        (VALUE, "1, 2", "answer", "nested list"),
        (SHAPE_9, "seven", "answer", "not a shape"),
        (SHAPE_9, [7.5], "answer", "whole number"),
        (GATE, 7, "answer", "expression string"),
        (GATE, "m +* 1", "answer", "syntax error"),
        ({**VALUE, "value": NAN_B64}, [1, 2], "expected.value", "finite"),
        ({**SHAPE_9, "input_size": [3], "kernel_size": 5}, [1], "expected.kernel_size", "larger"),
    ],
)
def test_invalid_answers_and_keys_are_422_problems(
    client: TestClient, expected: dict[str, Any], answer: Any, where: str, message: str
) -> None:
    response = post(client, expected, answer)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["detail"].startswith(where) and message in problem["detail"]
    assert problem["errors"][0]["loc"][:2] == ["body", where.split(".")[0]]


@pytest.mark.parametrize("path", ["/v1/check", "/v1/check/batch"])
def test_a_bare_nan_token_is_refused_before_the_check(client: TestClient, path: str) -> None:
    # json.dumps writes NaN as the bare token NaN, which Python's json would accept.
    check = {"expected": VALUE, "answer": [1, float("nan")]}
    content = json.dumps(check if path == "/v1/check" else {"checks": [check]})
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["type"].endswith("/non-finite-number")
    assert "`NaN` at line 1 column" in problem["detail"]


def test_a_formula_syntax_error_gives_the_column(client: TestClient) -> None:
    text = "floor((H + 2*P - D*(K - 1) - 1)/S) +"
    response = post(client, FORMULA_1_1B, text)
    assert response.status_code == 422
    assert f"at column {len(text) + 1}" in response.json()["detail"]
    two_numbers = text + " 1 1"
    response = post(client, FORMULA_1_1B, two_numbers)
    assert response.status_code == 422
    assert f"at column {len(two_numbers)}" in response.json()["detail"]


@pytest.mark.parametrize(
    "answer",
    [
        "__import__('os').getcwd()",
        "H.__class__",
        "lambda: 1",
        "[H for H in K]",
        "9**9**9**9",
        "H\x00",
        "H" * 10_000,
        "\u210c + 1",
    ],
    ids=["import", "attribute", "lambda", "comprehension", "power-tower", "nul", "10k", "unicode"],
)
def test_hostile_formulas_are_refused_with_a_4xx(client: TestClient, answer: str) -> None:
    response = post(client, FORMULA_1_1B, answer)
    assert response.status_code == 422
    assert response.json()["type"].endswith("invalid-answer")


@pytest.mark.parametrize(
    ("key", "answer"),
    [(3.0, 3.1), (0.25, 0.3), (-11, 6), ([3.0], [6.0]), ([0.0, 0.0, 0.73913], [0.0, 0.0, 1.0])],
)
def test_a_wrong_number_is_no_multiple_of_a_one_number_key(
    client: TestClient, key: Any, answer: Any
) -> None:
    response = post(client, {"op": "value", "value": key}, answer)
    assert response.status_code == 200, response.text
    assert response.json()["correct"] is False
    assert response.json()["diagnosis"] == []


def test_no_multiple_of_a_key_with_one_entry_beyond_the_tolerance_of_zero(
    client: TestClient,
) -> None:
    """0.002 is within cnn-rnn's tolerance of 0 next to 3.7: the key has one entry an answer
    must get, and "10/37 times the key" would state it."""
    tolerance = {"rtol": 1e-3, "atol": 1e-6, "floor": 1e-3}
    expected = {"op": "value", "value": [3.7, 0.002, 0.0, 0.0]}
    response = post(client, expected, [1.0, 0.0, 0.0, 0.0], tolerance=tolerance)
    assert response.json()["correct"] is False
    assert response.json()["diagnosis"] == []


@pytest.mark.parametrize(
    ("key", "answer", "codes"),
    [
        ([[1.0, -1.0], [2.0, -2.0]], [[1e-17, -1e-17], [0.0, 0.0]], ["all_zeros"]),
        ([1.0, 2.0, 3.0], [[0.0, 0.0], [0.0, 0.0]], []),  # another shape: nothing of the key
        ([1e-9, 0.0, 0.0], [0.0, 0.0, 0.0], None),  # zeros are right: the key is zeros
    ],
)
def test_all_zeros_within_the_tolerance_and_only_in_the_keys_shape(
    client: TestClient, key: Any, answer: Any, codes: list[str] | None
) -> None:
    result = post(client, {"op": "value", "value": key}, answer).json()
    if codes is None:
        assert result["correct"] is True
    else:
        assert result["correct"] is False
        assert [d["code"] for d in result["diagnosis"]] == codes


def test_a_multiple_of_a_key_of_several_numbers_is_a_constant_factor(client: TestClient) -> None:
    response = post(client, {"op": "value", "value": [3.0, -1.0]}, [6.0, -2.0])
    assert [d["code"] for d in response.json()["diagnosis"]] == ["constant_factor"]


@pytest.mark.parametrize(
    "answer",
    [
        "0.5*H**64*H**64*H**64",
        "(1.5*H)**64*(1.5*H)**64*(1.5*H)**64",
        "(1.5*(H + 99))**64*(1.5*(H + 99))**64*(1.5*(H + 99))**64",
    ],
)
def test_a_formula_whose_value_is_beyond_a_float_is_a_wrong_answer(
    client: TestClient, answer: str
) -> None:
    """Exact fractions reach 2**4096, far past a float: the report shows them as text."""
    response = post(client, {"op": "formula", "named": "conv_output_size"}, answer)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["correct"] is False
    if answer.startswith("(1.5*(H + 99))"):  # beyond a float at every point
        given = result["report"]["counterexample"]["given"]
        assert isinstance(given, str) and "e+" in given
        assert given in result["report"]["message"]
    # In a batch the other checks are judged as usual.
    checks = [
        {"expected": {"op": "formula", "named": "conv_output_size"}, "answer": answer},
        {"expected": FORMULA_1_1B, "answer": FORMULA_1_1B["reference"]},
    ]
    batch = client.post("/v1/check/batch", json={"checks": checks})
    assert batch.status_code == 200, batch.text
    assert [r["correct"] for r in batch.json()["results"]] == [False, True]


@pytest.mark.parametrize(
    ("expected", "where", "message"),
    [
        ({**JACOBIAN_W, "model": "lstm"}, "expected.model", "there is no model 'lstm'"),
        ({**FORWARD, "op": "state_jacobians"}, "expected.op", "has no state Jacobians"),
        ({**BACKWARD_W, "select": None}, "expected.select", "say which one"),
        ({**BACKWARD_W, "select": "bias"}, "expected.select", "has no 'bias'"),
        ({**JACOBIAN_W, "wrt": "w"}, "expected.wrt", "no parameter or input 'w'"),
        ({**FORWARD, "config": {"stride": 0}}, "expected.config.stride", "at least 1"),
        ({**FORWARD, "inputs": {"x": [[1, 2], [3]]}}, "expected.inputs.x", "ragged"),
        (
            {"op": "formula", "reference": "H +", "variables": {"H": [1, 2]}},
            "expected.reference",
            "syntax",
        ),
        (
            {"op": "formula", "named": "conv_output_size", "reference": "H"},
            "expected.reference",
            "exactly one",
        ),
    ],
)
def test_keys_that_cannot_be_computed_are_422_at_their_field(
    client: TestClient, expected: dict[str, Any], where: str, message: str
) -> None:
    response = post(client, expected, [1.0])
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["detail"].startswith(where) and message in problem["detail"]
    assert problem["errors"][0]["loc"] == ["body", *where.split(".")]


@pytest.mark.parametrize(
    "body",
    [
        {"expected": {"op": "integral"}, "answer": 1},
        {"expected": {"op": "value", "value": 1}, "answer": 1, "tolerance": {"rtol": -1}},
        {"expected": {"op": "value", "value": 1}, "answer": 1, "tolerance": {"rtol": "1e-3"}},
        {"expected": {"op": "value", "value": 1}, "answer": 1, "tolerance": {"atl": 1}},
        {"expected": {"op": "value", "value": 1}, "answer": 1, "partial_credit": "half"},
        {"expected": {"op": "value", "value": 1}},
    ],
    ids=["op", "negative", "string", "typo", "partial", "no-answer"],
)
def test_invalid_bodies_are_validation_problems(client: TestClient, body: dict[str, Any]) -> None:
    response = client.post("/v1/check", json=body)
    assert response.status_code == 422
    assert response.json()["type"].endswith("validation-error")


def test_a_jacobian_over_budget_is_413() -> None:
    with TestClient(create_app(Settings(max_jacobian_elements=10))) as small:
        response = post(small, JACOBIAN_W, seed_dy_dw().tolist())
    assert response.status_code == 413 and "entries" in response.json()["detail"]


def test_batch_judges_in_order_with_a_summary(client: TestClient) -> None:
    checks = [
        {"expected": SHAPE_1_1A, "answer": [5, 2]},
        {"expected": JACOBIAN_W, "answer": (-seed_dy_dw()).tolist()},
        {"expected": SHAPE_1_1A, "answer": [5, 2, 1]},
        {"expected": JACOBIAN_W, "answer": [[1], [1, 2]]},
        {"expected": JACOBIAN_W, "answer": seed_dy_dw().tolist()},
    ]
    response = client.post("/v1/check/batch", json={"checks": checks})
    assert response.status_code == 200
    body = response.json()
    results = body["results"]
    assert [r.get("correct") for r in results] == [True, False, False, None, True]
    assert results[1]["diagnosis"][0]["code"] == "sign_flipped"
    assert results[3]["error"]["status"] == 422
    assert results[3]["error"]["errors"][0]["loc"] == ["body", "checks", 3, "answer"]
    assert body["summary"] == {"checks": 5, "correct": 2, "wrong": 2, "invalid": 1, "keys": 2}


def test_batch_size_is_bounded_by_a_setting() -> None:
    with TestClient(create_app(Settings(max_batch_checks=2))) as small:
        check = {"expected": SHAPE_1_1A, "answer": [5, 2]}
        assert small.post("/v1/check/batch", json={"checks": [check] * 2}).status_code == 200
        response = small.post("/v1/check/batch", json={"checks": [check] * 3})
        assert response.status_code == 413
        assert "the limit is 2" in response.json()["detail"]
        assert small.get("/v1/info").json()["limits"]["max_batch_checks"] == 2
        assert small.post("/v1/check/batch", json={"checks": []}).status_code == 422


def test_the_openapi_examples_judge_as_they_say(client: TestClient) -> None:
    verdicts = {
        name: post(client, ex["value"]["expected"], ex["value"]["answer"]).json()
        for name, ex in CHECK_EXAMPLES.items()
    }
    assert {name: v["correct"] for name, v in verdicts.items()} == {
        "shape": True,
        "formula": True,
        "seed-1.1c-ii": True,
        "wrong-transposed": False,
    }
    assert verdicts["wrong-transposed"]["diagnosis"][0]["code"] == "transposed"
    batch = client.post("/v1/check/batch", json=BATCH_EXAMPLES["seed-mixed"]["value"]).json()
    assert [r["correct"] for r in batch["results"]] == [True, False, True]


def test_openapi_documents_the_check_routes(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    single = schema["paths"]["/v1/check"]["post"]
    examples = single["requestBody"]["content"]["application/json"]["examples"]
    assert set(examples) == set(CHECK_EXAMPLES)
    assert {"413", "422"} <= set(single["responses"])
    assert "application/problem+json" in single["responses"]["422"]["content"]
    assert "/v1/check/batch" in schema["paths"]


def test_a_check_that_is_not_valid_is_an_error_in_its_place(client: TestClient) -> None:
    """One malformed check (an unknown op, no answer, not an object, a bad tolerance) does not
    void a batch: it gets its 422 in its place, located at ``checks.<i>``, and the rest are
    judged as they would be alone."""
    good = {"expected": SHAPE_1_1A, "answer": [5, 2]}
    bad = [
        ({"expected": {"op": "magic"}, "answer": 1}, ["body", "checks", 1, "expected"]),
        ({"expected": SHAPE_1_1A}, ["body", "checks", 2, "answer"]),
        (5, ["body", "checks", 3]),
        ({**good, "tolerance": {"rtol": -1}}, ["body", "checks", 4, "tolerance", "rtol"]),
    ]
    checks = [good, *(check for check, _ in bad), good]
    response = client.post("/v1/check/batch", json={"checks": checks})
    assert response.status_code == 200, response.text[:300]
    body = response.json()
    results = body["results"]
    assert results[0]["correct"] is True and results[-1]["correct"] is True
    for index, (_, loc) in enumerate(bad, start=1):
        error = results[index]["error"]
        assert error["status"] == 422 and error["errors"][0]["loc"][: len(loc)] == loc
        assert error["detail"].startswith(".".join(map(str, loc[1:]))), error["detail"]
        alone = client.post("/v1/check", json=checks[index])
        assert alone.status_code == 422
    assert body["summary"] == {"checks": 6, "correct": 2, "wrong": 0, "invalid": 4, "keys": 1}


def test_an_empty_batch_is_a_422_at_checks(client: TestClient) -> None:
    response = client.post("/v1/check/batch", json={"checks": []})
    assert response.status_code == 422
    problem = response.json()
    assert problem["title"] == "The request is not valid"
    assert problem["errors"][0]["loc"] == ["body", "checks"]
    assert client.post("/v1/check/batch", json={"checks": 5}).status_code == 422


def test_a_batchs_formulas_stop_at_the_compute_deadline() -> None:
    """Formulas are evaluated in Python: a batch keeps judging distinct formulas only while
    their time is within the compute deadline, then refuses the rest in their places (here a
    deadline of 1 ns: the first formula is judged, the next ones are not), and the checks that
    are not formulas are judged as always. (The engine itself: an app refuses to start with
    a deadline its own assignment's keys cannot meet.)"""
    formula = {"op": "formula", "variables": {"H": [1, 64], "P": [0, 4]}}
    checks = [
        {"expected": {**formula, "reference": f"H + {i}*P"}, "answer": f"H + {i}*P"}
        for i in range(3)
    ]
    checks.append({"expected": SHAPE_1_1A, "answer": [5, 2]})
    results, _ = check_many(checks, Settings(compute_deadline_seconds=1e-9))
    results = orjson.loads(orjson.dumps(results))
    assert results[0]["correct"] is True and results[3]["correct"] is True
    for refused in results[1:3]:
        assert refused["error"]["type"].endswith("/over-compute-deadline")
        assert "another batch" in refused["error"]["detail"]


def test_a_large_key_with_many_axis_orders_is_diagnosed_within_bounds(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value key of shape [10]*6 (720 axis orders of 1M elements each: 10 s before the
    budget) and another tensor of its shape. It is judged, and only a few orders are tried."""
    made = count_axis_orders(monkeypatch)
    rng = np.random.default_rng(3)
    key, answer = rng.normal(size=(2, *(10,) * 6))
    response = post(client, {"op": "value", "value": b64(key)}, b64(answer))
    assert response.status_code == 200, response.text
    assert response.json()["correct"] is False and response.json()["diagnosis"] == []
    assert 1 <= len(made) <= 8


def test_a_gradient_through_time_is_named_in_words_not_by_its_field(client: TestClient) -> None:
    """Seed 1.2.2(f) asks for dl/dh[t] through time (the field `state_grads`): dl/dx given
    instead (the same shape, [T, n]) is told what the question asks in the homework's words."""
    body = BACKWARD_EXAMPLES["attention-rnn-2"]["value"]
    answered = client.post("/v1/models/attention_rnn/backward", json=body)
    assert answered.status_code == 200, answered.text
    dl_dx, state_grads = (
        answered.json()["grads"]["x"]["data"],
        answered.json()["state_grads"]["data"],
    )
    expected = {"op": "backward", "model": "attention_rnn", **body}
    asked = post(client, {**expected, "select": "state_grads"}, dl_dx).json()
    assert asked["diagnosis"] == [
        {
            "code": "wrong_argument",
            "message": "This is dl/dx; the question asks for the gradients through time dl/dh[t].",
        }
    ]
    other_way = post(client, {**expected, "select": "x"}, state_grads).json()
    assert other_way["diagnosis"][0]["message"] == (
        "This is the gradients through time dl/dh[t]; the question asks for dl/dx."
    )
    assert "state_grads" not in str(asked["diagnosis"]) + str(other_way["diagnosis"])
    # Its axes are named by its own shape, [T, n] for the AttentionRNN (not the gated RNN's m).
    transposed = post(
        client, {**expected, "select": "state_grads"}, np.array(state_grads).T.tolist()
    )
    assert "axes 0 (T) and 1 (n) are swapped" in transposed.json()["diagnosis"][0]["message"]


@pytest.mark.parametrize(
    ("answer", "shown"),
    [
        ([[5, 2]], "got [[5, 2]] (a nested list: give the sizes in one flat list)"),
        ([5, "2"], 'got [5, "2"]'),
        ([5, None], "got [5, null]"),
        ([[1] * 30], "got [[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,... (a nested list"),
    ],
    ids=["nested", "string-item", "null-item", "long"],
)
def test_a_shape_answer_that_is_not_a_list_of_sizes_is_shown_as_sent(
    client: TestClient, answer: Any, shown: str
) -> None:
    """Problem 1.1a answered [[5, 2]] was told "got [5, 2]": the item, which reads as right."""
    response = post(client, SHAPE_1_1A, answer)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("answer: a shape is a list of integers")
    assert shown in response.json()["detail"]


def test_a_formula_with_2p_for_2_times_p_is_told_to_multiply(client: TestClient) -> None:
    response = post(client, FORMULA_1_1B, "floor((H + 2P - D*(K-1) - 1)/S) + 1")
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "answer: syntax error: invalid decimal literal at column 12; write 2*P for 2 times P "
        "(multiplication needs *)"
    )


@pytest.mark.parametrize("ending", ["\r\n", "\n", " \t"])
def test_a_formula_ending_in_a_line_break_is_judged(client: TestClient, ending: str) -> None:
    """From a Windows file or a spreadsheet: "\\r\\n" is whitespace, as a trailing tab is."""
    response = post(client, FORMULA_1_1B, "floor((H + 2*P - D*(K-1) - 1)/S) + 1" + ending)
    assert response.status_code == 200, response.text
    assert response.json()["correct"] is True
    inside = post(client, FORMULA_1_1B, "floor((H + 2*P - D*(K-1) - 1)/S)\r\n + 1")
    assert inside.status_code == 422 and "control character '\\r'" in inside.json()["detail"]


def test_error_paths_are_paths_into_the_body_without_union_tags(client: TestClient) -> None:
    """pydantic names the member of a union it tried (the op's tag ``backward``) in ``loc``:
    the problem's paths leave it out, so that each is a path into the JSON sent; on its own
    and in a batch."""
    expected = {
        "op": "backward",
        "model": "conv1d",
        "params": {"weight": [[[1.0]]]},
        "inputs": {"x": [[1.0]]},
    }
    alone = client.post("/v1/check", json={"expected": expected, "answer": 1})
    assert alone.status_code == 422
    problem = alone.json()
    assert problem["errors"][0]["loc"] == ["body", "expected", "grad_outputs"]
    assert problem["detail"].startswith("body.expected.grad_outputs: Field required")
    batch = client.post("/v1/check/batch", json={"checks": [{"expected": expected, "answer": 1}]})
    error = batch.json()["results"][0]["error"]
    assert error["errors"][0]["loc"] == ["body", "checks", 0, "expected", "grad_outputs"]
    assert error["detail"].startswith("checks.0.expected.grad_outputs: Field required")


def test_json_path_keeps_what_the_body_holds_and_a_missing_fields_name() -> None:
    body = {"a": [{"op": "x", "b": 1}], "c": 2}
    assert json_path(["a", 0, "x", "b", "int"], body) == ["a", 0, "b"]
    assert json_path(["a", 0, "x", "missing"], body, missing=True) == ["a", 0, "missing"]
    assert json_path(["a", 5, "b"], body) == ["a", 5, "b"]  # past the array: kept as is
    assert json_path(["c", "float"], body) == ["c"]
    assert json_path([], body) == []
    # A type's name after an object that is not the type's (`{"a": 1}` for an int).
    assert json_path(["s", "int"], {"s": {"a": 1}}) == ["s"]
    # A tag named like a field of its object: the tag first, then the field.
    tagged = {"op": "value", "value": {"data": [1, 2]}, "label": 5}
    assert json_path(["value", "label"], tagged) == ["label"]
    assert json_path(["value", "labl"], {**tagged, "labl": "x"}) == ["labl"]  # an extra key
    assert json_path(["value", "value", "data", 0], tagged) == ["value", "data", 0]


@pytest.mark.parametrize(
    ("expected", "loc"),
    [
        ({"op": "value", "value": 0.693, "labl": "x"}, ["body", "expected", "labl"]),
        ({"op": "value", "value": 0.693, "label": 5}, ["body", "expected", "label"]),
        (
            {"op": "conv_shape", "input_size": [5], "kernel_size": 3, "stride": {"a": 1}},
            ["body", "expected", "stride"],
        ),
    ],
)
def test_error_paths_name_the_key_sent(
    client: TestClient, expected: dict[str, Any], loc: list[Any]
) -> None:
    response = client.post("/v1/check", json={"expected": expected, "answer": 1})
    assert response.status_code == 422
    assert all(error["loc"] == loc for error in response.json()["errors"]), response.json()


def test_a_formula_is_judged_within_the_requests_tolerance_and_says_so(
    client: TestClient,
) -> None:
    """H/3 answered H*0.3333333333333333 with rtol 1e-3 was wrong: the tolerance was echoed
    and ignored. The echo now states the formula's own rule (no key scale, no floor)."""
    expected = {"op": "formula", "reference": "H/3", "variables": {"H": [1, 5]}}
    tolerance = {"rtol": 1e-3, "atol": 1e-6}
    right = post(client, expected, "H*0.3333333333333333", tolerance=tolerance).json()
    assert right["correct"] is True
    echo = right["tolerance"]
    assert echo["rtol"] == 1e-3 and echo["scale"] is None and echo["effective_atol"] == 1e-6
    assert "floor does not apply" in echo["rule"] and "exactly" in echo["rule"]
    wrong = post(client, expected, "H*0.33", tolerance=tolerance).json()
    assert wrong["correct"] is False and wrong["report"]["counterexample"]["given"] == 0.33
    # A whole-numbered reference is matched exactly: the echo says so, with no absolute part.
    sizes = post(client, {"op": "formula", "named": "conv_output_size"}, "H", tolerance=tolerance)
    exact = sizes.json()["tolerance"]
    assert exact["effective_atol"] is None and exact["rule"].startswith("the reference is a whole")
    tiny = post(client, expected, "H/3", tolerance={"rtol": 0, "atol": 0}).json()["tolerance"]
    assert tiny["effective_atol"] == 1e-12  # the least absolute part a formula is judged with


def test_a_size_formula_stays_exact_under_a_loose_tolerance(client: TestClient) -> None:
    answer = "floor((H + 2*P - D*(K - 1) - 1)/S) + 1.0001"
    body = post(client, FORMULA_1_1B, answer, tolerance={"rtol": 0.5, "atol": 0.5}).json()
    assert body["correct"] is False and body["report"]["points_disagreeing"] > 0


def test_a_shape_echoes_that_sizes_are_compared_exactly(client: TestClient) -> None:
    body = post(client, SHAPE_1_1A, [5, 3], tolerance={"rtol": 0.5}).json()
    assert body["correct"] is False
    assert body["tolerance"]["rule"].startswith("sizes are compared exactly")


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        (
            "floor((H + 2 P - D (K - 1) - 1)/S) + 1",
            "answer: syntax error: invalid syntax at column 14; write 2*P for 2 times P "
            "(multiplication needs *)",
        ),
        (
            "floor((H + 2*P - D(K - 1) - 1)/S) + 1",
            "answer: calling D is not allowed (D is a variable) at column 18; write D*(K - 1) "
            "for D times (K - 1) (multiplication needs *)",
        ),
    ],
    ids=["spaced", "seed-notation"],
)
def test_a_product_written_as_on_paper_is_told_to_multiply(
    client: TestClient, answer: str, detail: str
) -> None:
    """The homework writes D(K - 1): a student copying it was told "calling D is not allowed",
    and "2 P" got Python's "Perhaps you forgot a comma?"."""
    response = post(client, FORMULA_1_1B, answer)
    assert response.status_code == 422
    assert response.json()["detail"] == detail
    assert response.json()["errors"][0]["loc"][:2] == ["body", "answer"]


@pytest.mark.parametrize(
    ("names", "loc", "words"),
    [
        ({"weight": "W W"}, ["body", "expected", "names", "weight"], "must be 1 to 64 letters"),
        ({"wieght": "W"}, ["body", "expected", "names", "wieght"], "has no argument or output"),
        (
            {"weight": "x"},
            ["body", "expected", "names", "weight"],
            "weight cannot be called 'x': that is conv1d's own name of its input x",
        ),
        (
            {"weight": "f", "y": "f"},
            ["body", "expected", "names", "weight"],
            "weight cannot be called 'f': y is called that too (names.y)",
        ),
        (
            {"weight": "x", "x": "weight"},
            ["body", "expected", "names", "weight"],
            "that is conv1d's own name of its input x",
        ),
    ],
    ids=["not-a-name", "unknown-tensor", "another-tensors-own-name", "a-name-twice", "swapped"],
)
def test_a_bad_name_is_a_422_naming_it(
    client: TestClient, names: dict[str, str], loc: list[str], words: str
) -> None:
    response = post(client, {**JACOBIAN_W, "names": names}, seed_dy_dw().tolist())
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["errors"][0]["loc"] == loc and words in problem["detail"]


# API.md: every compute request may carry device and dtype at its top level.
TINY = {
    "op": "forward",
    "model": "conv1d",
    "params": {"weight": [[[0.1]]]},
    "inputs": {"x": [[0.2]]},
}
EXACT = {"rtol": 0, "atol": 0, "floor": 0}
IN_FLOAT64 = [[0.1 * 0.2]]  # 0.020000000000000004; float32 computes 0.019999999552965164


def test_device_and_dtype_at_the_top_of_a_check_say_how_its_key_is_computed(
    client: TestClient,
) -> None:
    def correct(**top: Any) -> bool:
        body = {"expected": TINY, "answer": IN_FLOAT64, "tolerance": EXACT, **top}
        response = client.post("/v1/check", json=body)
        assert response.status_code == 200, response.text
        return bool(response.json()["correct"])

    assert correct() and correct(dtype="float64", device="cpu")
    assert not correct(dtype="float32")  # the key in float32 is another number
    inside = {"expected": {**TINY, "dtype": "float32"}, "answer": IN_FLOAT64, "tolerance": EXACT}
    assert client.post("/v1/check", json={**inside, "dtype": "float32"}).json()["correct"] is False
    twice = client.post("/v1/check", json={**inside, "dtype": "float64"})
    assert twice.status_code == 422
    assert "dtype is 'float64' here and 'float32' in expected" in twice.json()["detail"]
    # Shapes, values and formulas compute no tensors: the options are taken as given.
    value = {"expected": {"op": "value", "value": [1]}, "answer": [1], "device": "cpu"}
    assert client.post("/v1/check", json=value).json()["correct"] is True


def test_device_and_dtype_at_the_top_of_a_batch_apply_to_each_check(client: TestClient) -> None:
    own = {"expected": TINY, "answer": IN_FLOAT64, "tolerance": EXACT, "dtype": "float64"}
    plain = {"expected": TINY, "answer": IN_FLOAT64, "tolerance": EXACT}
    clash = {**plain, "expected": {**TINY, "dtype": "float64"}}
    body = {"checks": [plain, own, clash], "dtype": "float32"}
    results = client.post("/v1/check/batch", json=body).json()["results"]
    assert results[0]["correct"] is False  # the batch's float32
    assert results[1]["correct"] is True  # its own float64 wins
    assert results[2]["correct"] is True  # float64 in its expected: its own, as at the top


def test_two_values_of_one_check_are_refused_at_the_field(client: TestClient) -> None:
    """Given at the top of a check and in its expected, differently: a 422 located at the
    top's field, in the validator's own words."""
    body = {"expected": {**TINY, "dtype": "float32"}, "answer": IN_FLOAT64, "dtype": "float64"}
    problem = client.post("/v1/check", json=body).json()
    assert problem["errors"][0]["loc"] == ["body", "dtype"]
    assert problem["errors"][0]["msg"] == (
        "dtype is 'float64' here and 'float32' in expected: give it once, or the same in both"
    )


def test_a_shape_request_takes_device_and_dtype(client: TestClient) -> None:
    body = {"input_size": [7], "kernel_size": 3, "device": "cpu", "dtype": "float32"}
    assert client.post("/v1/shapes/conv", json=body).json()["output_size"] == [5]
    wrong = client.post("/v1/shapes/conv", json={**body, "device": "gpu"})
    assert wrong.status_code == 422 and "device" in wrong.json()["detail"]


def test_cuda_at_the_top_is_refused_without_a_gpu_whatever_the_op(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devices, "cuda_available", lambda: False)  # also on a GPU host
    value = {"expected": {"op": "value", "value": [1]}, "answer": [1], "device": "cuda"}
    for path, body in [
        ("/v1/check", value),
        ("/v1/check/batch", {"checks": [value], "device": "cuda"}),
        ("/v1/shapes/conv", {"input_size": [7], "kernel_size": 3, "device": "cuda"}),
    ]:
        response = client.post(path, json=body)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["errors"][0]["loc"] == ["body", "device"], path


def test_a_checks_own_cuda_is_refused_in_its_place_in_a_batch_whatever_the_op(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As at /v1/check: a check's own `"device": "cuda"` without a GPU is an error at
    `checks.N.device`, for a formula, a shape or a value as for a model's key, and the other
    checks of the batch are judged."""
    monkeypatch.setattr(devices, "cuda_available", lambda: False)  # also on a GPU host
    formula = {
        "expected": {
            "op": "formula",
            "reference": "H - K + 1",
            "variables": {"H": [3, 9], "K": [1, 3]},
        },
        "answer": "H - K + 1",
    }
    shape = {
        "expected": {"op": "conv_shape", "input_size": [7], "kernel_size": 3},
        "answer": [5],
    }
    value = {"expected": {"op": "value", "value": [1]}, "answer": [1]}
    model = {"expected": TINY, "answer": IN_FLOAT64, "tolerance": EXACT}
    checks = [
        check
        for plain in (formula, shape, value, model)
        for check in ({**plain, "device": "cuda"}, {**plain, "device": "cpu"}, plain)
    ]
    response = client.post("/v1/check/batch", json={"checks": checks})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    for index, result in enumerate(results):
        if index % 3 == 0:
            error = result["error"]
            assert error["status"] == 422 and error["type"].endswith("device-unavailable")
            assert error["errors"][0]["loc"] == ["body", "checks", index, "device"], error
            assert error["detail"].startswith(f"checks.{index}.device"), error["detail"]
        else:
            assert result["correct"] is True, (index, result)
    assert response.json()["summary"]["invalid"] == 4
    for plain in (formula, shape, model):
        alone = client.post("/v1/check", json={**plain, "device": "cuda"})
        assert alone.status_code == 422, alone.text
        assert alone.json()["errors"][0]["loc"] == ["body", "device"]
    # In expected, as every request may carry them: taken by a key that computes no tensor,
    # and `cuda` refused there too.
    inside = [
        {**plain, "expected": {**plain["expected"], "device": device, "dtype": "float64"}}
        for plain in (formula, shape, value, model)
        for device in ("cuda", "cpu")
    ]
    results = client.post("/v1/check/batch", json={"checks": inside}).json()["results"]
    for index, result in enumerate(results):
        if index % 2 == 0:
            loc = result["error"]["errors"][0]["loc"]
            assert loc == ["body", "checks", index, "expected", "device"], result
        else:
            assert result["correct"] is True, (index, result)


def test_auto_in_expected_gives_way_and_a_null_takes_the_batchs(client: TestClient) -> None:
    auto = {"expected": {**TINY, "device": "auto"}, "answer": IN_FLOAT64, "device": "cpu"}
    assert client.post("/v1/check", json=auto).json()["correct"] is True
    null = {"expected": TINY, "answer": IN_FLOAT64, "tolerance": EXACT, "dtype": None}
    results = client.post("/v1/check/batch", json={"checks": [null], "dtype": "float32"}).json()
    assert results["results"][0]["correct"] is False  # computed in the batch's float32


def test_a_formula_whose_range_holds_a_zero_stride_is_judged(client: TestClient) -> None:
    """The reference is compared with the conv output size to pick its mistakes; a stride of 0
    in the ranges is no convolution, not a division by zero."""
    reference = {
        "op": "formula",
        "reference": "H + K + S",
        "variables": {"H": [1, 5], "K": [1, 3], "S": [0, 2]},
    }
    answer = client.post("/v1/check", json={"expected": reference, "answer": "H+K"})
    assert answer.status_code == 200 and answer.json()["correct"] is False, answer.text
    declared = {**reference, "mistakes": "conv_output_size"}
    refused = client.post("/v1/check", json={"expected": declared, "answer": "H+K"})
    assert refused.status_code == 422, refused.text


def test_a_batch_whose_client_disconnects_stops_computing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The route asks the connection between keys: a client gone during the first key's
    computation gets no more keys computed for it (the answer, to nobody, is a 499)."""
    model = get_model("conv1d")
    computed: list[float] = []
    gone = threading.Event()
    leaves = [True]

    def forward(config: Any, args: Any) -> Any:
        computed.append(float(args["bias"][0]))
        if leaves[0]:
            gone.set()  # the client leaves while the first key is computed
        return model.forward(config, args)

    monkeypatch.setitem(MODELS, "conv1d", dataclasses.replace(model, forward=forward))
    monkeypatch.setattr(Engine, "POLL_SECONDS", 0.0)
    checks = [
        {
            "expected": {
                "op": "forward",
                "model": "conv1d",
                "device": "cpu",
                "params": {"weight": [[[1.0, 2.0]]], "bias": [float(b)]},
                "inputs": {"x": [[1.0, 2.0, 3.0]]},
            },
            "answer": [[5.0 + b, 8.0 + b]],
        }
        for b in range(3)
    ]
    body = orjson.dumps({"checks": checks})
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/check/batch",
        "raw_path": b"/v1/check/batch",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []
    app = create_app(Settings(builtin_assignments=False))

    async def call() -> None:
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if pending:
                return pending.pop()
            if gone.is_set():
                return {"type": "http.disconnect"}
            await anyio.sleep_forever()  # cancelled at once by Request.is_disconnected
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)

    with TestClient(app) as client:  # its lifespan runs, and its portal is the app's loop
        assert client.portal is not None
        client.portal.call(call)
    assert computed == [0.0]
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499
    # Connected to the end, the same batch computes every key.
    gone.clear()
    computed.clear()
    leaves[0] = False
    with TestClient(app) as client:
        response = client.post(
            "/v1/check/batch", content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code == 200 and computed == [0.0, 1.0, 2.0]
    assert [r["correct"] for r in response.json()["results"]] == [True] * 3

"""The built-in assignment cnn-rnn against the homework: ids, the seed's own numbers, and each
reference spec checked by an independent oracle (the seed's closed forms, the service's conv
arithmetic, API.md's table of model shapes)."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.conv import conv_output_size
from models.errors import ModelError
from service.app import create_app
from service.grading.catalogue import Catalogue
from service.grading.schema import AssignmentSpec, ProblemSpec
from service.settings import Settings
from tests.grading import seed_answers as seed
from tests.keys import SECRET
from tests.service.test_assignments_routes import API_IDS

STUDENTS = ("alice", "bob", "carol")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(variant_secret=SECRET))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def catalogue(client: TestClient) -> Catalogue:
    loaded: Catalogue = client.app.state.catalogue  # type: ignore[attr-defined]
    return loaded


@pytest.fixture(scope="module")
def cnn_rnn(catalogue: Catalogue) -> AssignmentSpec:
    return catalogue.assignment("cnn-rnn")


def spec_of(catalogue: Catalogue, problem: str, student: str = "alice") -> dict[str, Any]:
    return catalogue.variant("cnn-rnn", problem, student).expected


def test_every_checkable_question_with_the_ids_of_the_api(cnn_rnn: AssignmentSpec) -> None:
    assert [p.id for p in cnn_rnn.problems] == sorted(
        API_IDS, key=[p.id for p in cnn_rnn.problems].index
    )
    assert {p.id for p in cnn_rnn.problems} == API_IDS


def test_answers_a_key_would_follow_from_get_verdict_feedback(cnn_rnn: AssignmentSpec) -> None:
    # a report on a shape, a number or a choice tells the key away
    for problem in cnn_rnn.problems:
        if problem.answer_kind in ("shape", "number", "choice"):
            assert problem.feedback == "verdict", problem.id


def test_1_1a_keeps_the_seeds_numbers_and_answer(client: TestClient, catalogue: Catalogue) -> None:
    spec = spec_of(catalogue, "1.1a")
    body = {k: v for k, v in spec.items() if k != "op"}
    assert body["input_size"] == [21, 12] and body["kernel_size"] == [4, 5] and body["stride"] == 4
    answer = client.post("/v1/shapes/conv", json=body).json()
    assert answer["output_size"] == [5, 2]  # the seed: 5 x 2


def evaluate(expression: str, values: dict[str, int]) -> float:
    # Our own file's constant formula, evaluated with nothing but floor in scope.
    namespace: dict[str, Any] = {"__builtins__": {}, "floor": math.floor, **values}
    result: float = eval(expression, namespace)
    return result


def test_1_1b_reference_is_the_conv_arithmetic_over_its_ranges(catalogue: Catalogue) -> None:
    spec = spec_of(catalogue, "1.1b")
    ranges = spec["variables"]
    assert set(ranges) == {"H", "K", "P", "S", "D"}
    compared = 0
    grid = itertools.product(*(range(lo, hi + 1) for lo, hi in ranges.values()))
    for point in grid:
        values = dict(zip(ranges, point, strict=True))
        if values["H"] % 3:  # a third of the sizes is plenty
            continue
        try:
            steps = conv_output_size(
                [values["H"]], values["K"], values["S"], values["P"], values["D"]
            )
        except ModelError:
            continue  # empty output: no size to compare
        assert evaluate(spec["reference"], values) == steps[0].result, values
        compared += 1
    assert compared > 1000


def as_array(tensor: dict[str, Any]) -> np.ndarray:
    return np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])


def compute(client: TestClient, spec: dict[str, Any]) -> np.ndarray:
    """The tensor a spec selects, computed by the reference endpoints."""
    operation = spec["op"]
    body = {k: v for k, v in spec.items() if k not in ("op", "model", "select", "names")}
    response = client.post(f"/v1/models/{spec['model']}/{operation}", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    if operation == "jacobian":
        return as_array(answer["jacobian"])
    section = answer["outputs"] if spec["select"] in answer["outputs"] else answer["grads"]
    return as_array(section[spec["select"]])


@pytest.mark.parametrize("student", STUDENTS)
def test_1_1c_references_are_the_seeds_closed_forms(
    client: TestClient, catalogue: Catalogue, student: str
) -> None:
    given = {
        p: catalogue.variant("cnn-rnn", p, student).given
        for p in ("1.1c-i", "1.1c-ii", "1.1c-iii", "1.1c-iv")
    }
    x, w = given["1.1c-iv"]["x"].numpy(), given["1.1c-iv"]["W"].numpy()
    g = given["1.1c-iv"]["dl_dy"].numpy()
    expected = {
        "1.1c-i": seed.conv_forward(x, w),
        "1.1c-ii": seed.conv_jacobian_weight(x),
        "1.1c-iii": seed.conv_jacobian_input(w, x.shape[1]),
        "1.1c-iv": seed.conv_grad_weight(x, g),
    }
    shapes = {
        "1.1c-i": (1, 3),
        "1.1c-ii": (1, 3, 1, 5, 3),
        "1.1c-iii": (1, 3, 5, 7),
        "1.1c-iv": (1, 5, 3),
    }
    for problem, key in expected.items():
        computed = compute(client, spec_of(catalogue, problem, student))
        assert computed.shape == shapes[problem], problem
        np.testing.assert_allclose(computed, key, rtol=0, atol=1e-12, err_msg=problem)


# API.md, "Reference models": each model's arguments and outputs, shapes in symbols.
MODEL_TABLE: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "gated_rnn": {
        "params": {"W_c": ("m", "n"), "W_h": ("m", "m"), "W_x": ("m", "n")},
        "inputs": {"x": ("T", "n"), "h0": ("m",)},
        "outputs": {"h": ("T", "m"), "c": ("T", "m")},
    },
    "attention_rnn": {
        "params": {"Q": ("k1", "n", "n"), "K": ("k1", "n", "n"), "V": ("k1", "n", "n")},
        "inputs": {"x": ("T", "n")},
        "outputs": {"h": ("T", "n")},
    },
}


def bind(
    symbols: dict[str, int], names: tuple[str, ...], shape: tuple[int, ...], where: str
) -> None:
    assert len(names) == len(shape), where
    for name, size in zip(names, shape, strict=True):
        assert symbols.setdefault(name, size) == size, (where, name, symbols[name], size)


RNN_PROBLEMS = ["1.2.1c", "1.2.1d-jacobian", "1.2.2c", "1.2.2d", "1.2.2e", "1.2.2f"]


@pytest.mark.parametrize("problem", RNN_PROBLEMS)
def test_rnn_references_fit_the_api_table_and_the_statement(
    catalogue: Catalogue, cnn_rnn: AssignmentSpec, problem: str
) -> None:
    spec = spec_of(catalogue, problem)
    table = MODEL_TABLE[spec["model"]]
    symbols: dict[str, int] = {}
    for section in ("params", "inputs"):
        assert set(spec[section]) <= set(table[section]), (problem, section)
        for name, value in spec[section].items():
            bind(symbols, table[section][name], np.shape(value), f"{section}.{name}")
    if spec["model"] == "attention_rnn":
        k = spec["config"]["k"]
        assert symbols["k1"] == (2 if k == "inf" else k + 1), (
            "Q, K, V are [k+1, n, n], or [2, n, n]"
        )
    for name, value in spec.get("grad_outputs", {}).items():
        bind(symbols, table["outputs"][name], np.shape(value), f"grad_outputs.{name}")
    selectable = {"state_jacobians": {"jacobians"}, "forward": set(table["outputs"])}.get(
        spec["op"], {"state_grads", *table["params"], *table["inputs"]}
    )
    assert spec["select"] in selectable, problem
    statement = next(p for p in cnn_rnn.problems if p.id == problem).statement
    for symbol in ("T", "m", "n", "k"):
        stated = re.search(rf"\b{symbol} = (\d+)", statement)
        if stated:
            size = symbols["k1"] - 1 if symbol == "k" else symbols[symbol]
            assert int(stated[1]) == size, (problem, symbol)


def test_1_2_1b_is_m_of_the_students_variant(catalogue: Catalogue) -> None:
    for student in STUDENTS:
        variant = catalogue.variant("cnn-rnn", "1.2.1b", student)
        assert variant.expected["value"] == [int(variant.given["m"].item())]


def test_1_2_2b_is_the_seeds_three(catalogue: Catalogue) -> None:
    # Seed 1.2.2(b): a[t] is in R^3 for AttentionRNN(2).
    assert spec_of(catalogue, "1.2.2b")["value"] == [3]


def within(answer: float, key: float, problem: ProblemSpec) -> bool:
    return abs(answer - key) <= problem.tolerance.atol + problem.tolerance.rtol * abs(key)


def test_1_3_4_the_seeds_chance_level_numbers(
    catalogue: Catalogue, cnn_rnn: AssignmentSpec
) -> None:
    loss, accuracy = cnn_rnn.problem("1.3-4-loss"), cnn_rnn.problem("1.3-4-accuracy")
    assert loss is not None and accuracy is not None
    assert spec_of(catalogue, "1.3-4-loss")["value"] == pytest.approx(math.log(4), abs=1e-15)
    assert spec_of(catalogue, "1.3-4-accuracy")["value"] == 1 / 4
    # the seed answers log 4 ~ 1.386 and 25 %; chance-level numbers of 3 or 5 classes are wrong
    assert within(1.386, math.log(4), loss) and within(0.25, 0.25, accuracy)
    assert not within(math.log(3), math.log(4), loss) and not within(1 / 5, 0.25, accuracy)


def test_1_2_1d_vanishing_is_the_seeds_yes(cnn_rnn: AssignmentSpec) -> None:
    problem = cnn_rnn.problem("1.2.1d-vanishing")
    assert problem is not None and problem.expected["correct"] == "yes"
    text = next(c.text for c in problem.choices if c.id == "yes")
    assert "less likely than in a plain RNN" in text

"""The checking engine as the grader's check: whose fault a failed check is, and the engine's
validation of every reference of an assignment file at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from service import compute
from service.app import create_app
from service.grading.catalogue import AssignmentFileError, catalogue_from_settings
from service.grading.checker import EngineCheck, spec_validator
from service.grading.grade import MalformedAnswer
from service.grading.schema import ProblemSpec, Tolerance
from service.problems import Problem
from service.settings import Settings
from tests.grading import seed_answers as seed

SETTINGS = Settings()
CONV = {
    "op": "forward",
    "model": "conv1d",
    "config": {"stride": 2},
    "params": {"weight": [[[1, 0, -1]]]},
    "inputs": {"x": [[1, 2, 3, 4, 5, 6, 7]]},
    "select": "y",
}  # y = x[n] - x[n + 2] at n = 0, 2, 4


@pytest.mark.parametrize(
    ("answer", "correct"), [([[-2, -2, -2]], True), ([[2, 2, 2]], False), ([-2, -2, -2], False)]
)
def test_the_engine_judges_within_the_problems_tolerance(answer: Any, correct: bool) -> None:
    outcome = EngineCheck(SETTINGS)(CONV, answer, Tolerance(rtol=0, atol=1e-9))
    assert outcome["correct"] is correct and outcome["report"]["kind"] == "tensor"


def test_the_tolerance_of_the_problem_is_the_engines() -> None:
    close = [[-2.001, -2.001, -2.001]]
    assert not EngineCheck(SETTINGS)(CONV, close, Tolerance(rtol=0, atol=1e-4))["correct"]
    assert EngineCheck(SETTINGS)(CONV, close, Tolerance(rtol=0, atol=1e-2))["correct"]


@pytest.mark.parametrize(
    ("expected", "answer", "reason"),
    [
        (CONV, [[1, 2], [3]], "ragged"),
        (CONV, "many", "got a string"),
        (CONV, [[float("1e400")]], "answer"),
        ({"op": "formula", "reference": "H + 1", "variables": {"H": [1, 9]}}, "H +", "answer"),
        ({"op": "formula", "reference": "H + 1", "variables": {"H": [1, 9]}}, [1], "expression"),
        ({"op": "conv_shape", "input_size": [7], "kernel_size": 3}, "five", "not a shape"),
    ],
)
def test_an_answer_at_fault_is_malformed_with_the_reason(
    expected: dict[str, Any], answer: Any, reason: str
) -> None:
    with pytest.raises(MalformedAnswer, match=reason):
        EngineCheck(SETTINGS)(expected, answer, Tolerance())


@pytest.mark.parametrize(
    ("expected", "reason"),
    [
        ({**CONV, "inputs": {"x": [[1, 2]]}}, "larger than"),  # no output for this input
        ({**CONV, "select": "z"}, "select"),
        ({**CONV, "model": "lstm"}, "lstm"),
        ({**CONV, "stride": 2}, "stride"),  # not a key of the spec: the file's mistake
    ],
)
def test_a_key_that_cannot_be_computed_is_a_500_not_the_answers_fault(
    expected: dict[str, Any], reason: str
) -> None:
    with pytest.raises(Problem) as raised:
        EngineCheck(SETTINGS)(expected, [[0, 0, 0]], Tolerance())
    problem = raised.value
    assert problem.status == 500 and problem.kind == "assignment-error"
    assert reason in problem.detail and "not the answer" in problem.detail


def test_every_reference_of_cnn_rnn_passes_the_engines_validation() -> None:
    validate = spec_validator(SETTINGS)
    catalogue = catalogue_from_settings(Settings(variant_secret="x" * 16))
    for problem in catalogue.assignment("cnn-rnn").problems:
        for student in ("alice", "bob"):
            validate(catalogue.variant("cnn-rnn", problem.id, student).expected)


@pytest.mark.parametrize(
    ("expected", "message"),
    [
        ({**CONV, "select": "weight"}, "forward pass has no 'weight'"),
        ({**CONV, "model": "conv3d"}, "conv3d"),
        ({**CONV, "config": {"k": 3}}, "config"),
        ({**CONV, "inputs": {"x": [[1, 2]]}}, "larger than the padded input 2"),
        ({"op": "formula", "reference": "floor(H/", "variables": {"H": [1, 9]}}, "reference"),
        ({"op": "state_jacobians", "model": "conv1d", "params": {}, "inputs": {}}, "recurrent"),
    ],
)
def test_the_validator_names_the_field_at_fault(expected: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec_validator(SETTINGS)(expected)


def test_start_up_checks_the_keys_on_the_cpu_even_on_a_gpu_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A spec without a device computes on the GPU when there is one ("auto"), but the start-up
    check of every reference runs on the CPU: a CUDA context in each worker costs about 700 MB
    of host memory before any request asks for the GPU. A spec that names a device keeps it."""
    asked: list[str] = []

    def resolve(name: str) -> torch.device:
        asked.append(name)
        return torch.device("cpu")  # where this machine computes, whatever was asked

    monkeypatch.setattr(compute, "resolve_device", resolve)
    create_app(Settings())  # every built-in reference, checked
    assert asked and set(asked) == {"cpu"}
    asked.clear()
    spec_validator(SETTINGS)({**CONV, "device": "cuda"})
    assert asked == ["cuda"]


def test_choices_are_the_graders_not_the_engines() -> None:
    spec_validator(SETTINGS)({"op": "choice", "correct": "yes"})


WRONG_GRAD = """
id = "gated"
title = "A gradient of the gated RNN"

[[problems]]
id = "dW"
title = "dl/dW_x"
statement = "Give dl/dW_x."
points = 1
answer_kind = "tensor"

[problems.given.x]
shape = [3, 2]
distribution = "uniform"
decimals = 1

[problems.expected]
op = "backward"
model = "gated_rnn"
params = { W_c = [[0.1, 0.2]], W_h = [[0.5]], W_x = [[0.3, -0.2]] }
inputs = { x = { given = "x" } }
grad_outputs = { h = [[1], [1], [1]] }
select = "Wx"
"""


def test_a_reference_the_engine_refuses_stops_start_up_naming_file_and_key(
    tmp_path: Path,
) -> None:
    (tmp_path / "gated.toml").write_text(WRONG_GRAD)
    with pytest.raises(AssignmentFileError) as raised:
        create_app(Settings(assignments_dir=tmp_path))
    assert str(raised.value).startswith(f"{tmp_path}/gated.toml: problems[0] (dW).expected: ")
    assert "backward pass has no 'Wx'" in str(raised.value) and "W_x" in str(raised.value)
    (tmp_path / "gated.toml").write_text(WRONG_GRAD.replace('"Wx"', '"W_x"'))
    create_app(Settings(assignments_dir=tmp_path))


def test_the_seeds_loss_is_within_the_tolerance_of_1_3_4() -> None:
    catalogue = catalogue_from_settings(Settings(variant_secret="x" * 16))
    variant = catalogue.variant("cnn-rnn", "1.3-4-loss", "alice")
    check = EngineCheck(SETTINGS)
    assert check(variant.expected, seed.INITIAL_LOSS, variant.problem.tolerance)["correct"]
    assert check(variant.expected, round(seed.INITIAL_LOSS, 3), variant.problem.tolerance)[
        "correct"
    ]
    assert not check(variant.expected, 1.4, variant.problem.tolerance)["correct"]


def test_a_key_over_the_compute_deadline_at_start_up_names_the_setting() -> None:
    """Said to the operator, whose setting it is: "Send smaller tensors" is a client's
    advice, and an estimate of "0 s" beside a limit of 1e-05 s read as a contradiction."""
    validate = spec_validator(Settings(compute_deadline_seconds=1e-9))
    with pytest.raises(ValueError) as error:
        validate(CONV)
    told = str(error.value)
    assert "TENSORGRADE_COMPUTE_DEADLINE_SECONDS (1e-09 s); raise it" in told, told
    assert "Send smaller tensors" not in told and "an estimated 0 s" not in told


def test_a_wrong_expected_is_told_by_its_own_path_in_the_file() -> None:
    """Not pydantic's, which names the union member it tried (``expected.forward.dtype``),
    nor ``expected`` twice under the file's key ``problems[0] (p1).expected``."""
    validate = spec_validator(SETTINGS)
    with pytest.raises(ValueError) as error:
        validate({**CONV, "dtype": "float16"})
    assert str(error.value) == "dtype: Input should be 'float64' or 'float32'"


def test_a_given_name_with_a_final_newline_is_refused() -> None:
    with pytest.raises(ValueError, match="given tensor name 'x\\\\n' does not match"):
        ProblemSpec.model_validate(
            {
                "id": "p1",
                "title": "t",
                "statement": "s",
                "points": 1,
                "answer_kind": "tensor",
                "given": {"x\n": {"value": [1.0]}},
                "expected": {"op": "value", "value": {"given": "x\n"}},
            }
        )

"""The engine behind /v1/check/batch: order, one key per distinct `expected`, stacking."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from models.registry import MODELS, get_model
from service.gate import ComputeGate
from service.grading import check as engine
from service.grading.check import check_many, check_one
from service.grading.schemas import CheckRequest
from service.settings import Settings
from tests.grading.test_diagnosis import (
    JACOBIAN_W,
    SHAPE_1_1A,
    seed_dy_dw,
    seed_dy_dx,
)

SETTINGS = Settings()
RIGHT = seed_dy_dw()


def request(expected: dict[str, Any], answer: Any, **extra: Any) -> CheckRequest:
    return CheckRequest.model_validate({"expected": expected, "answer": answer, **extra})


def mixed_batch() -> list[CheckRequest]:
    reordered = {**JACOBIAN_W, "params": dict(JACOBIAN_W["params"])}
    reordered = dict(reversed(list(reordered.items())))  # same key, other field order
    return [
        request(JACOBIAN_W, RIGHT.tolist()),
        request(SHAPE_1_1A, "6x3"),
        request(JACOBIAN_W, (-RIGHT).tolist()),
        request(reordered, RIGHT.transpose(2, 3, 4, 0, 1).tolist()),
        request(SHAPE_1_1A, [5, 2]),
        request(JACOBIAN_W, (RIGHT + 1e-9).tolist()),
        request(JACOBIAN_W, seed_dy_dx().tolist()),
        request(JACOBIAN_W, (RIGHT + 0.01).tolist(), tolerance={"rtol": 0.1, "floor": 0.01}),
        request(JACOBIAN_W, (RIGHT + 0.01).tolist()),
        request({"op": "value", "value": 5}, [[5]]),
    ]


def test_a_mixed_batch_is_judged_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    computed: list[str] = []
    compute_key = engine.compute_key

    def counting(
        check: CheckRequest, settings: Settings, gate: ComputeGate, spent: float = 0.0
    ) -> Any:
        computed.append(check.expected.op)
        return compute_key(check, settings, gate, spent)

    monkeypatch.setattr(engine, "compute_key", counting)
    results, keys = check_many(mixed_batch(), SETTINGS)
    assert [r["correct"] for r in results] == [
        True,
        False,
        False,
        False,
        True,
        True,
        False,
        True,
        False,
        True,
    ]
    diagnoses = [[d["code"] for d in r["diagnosis"]] for r in results]
    assert diagnoses[1] == ["ceil_instead_of_floor"]
    assert diagnoses[2] == ["sign_flipped"]
    assert diagnoses[3] == ["jacobian_halves_swapped"]
    assert diagnoses[6] == ["wrong_argument"]
    assert results[7]["tolerance"]["rtol"] == 0.1 and results[8]["tolerance"]["rtol"] == 1e-5
    # One computation per distinct expected, whatever the order of its fields.
    assert keys == 3 and sorted(computed) == ["conv_shape", "jacobian", "value"]


def test_a_batch_gives_what_single_checks_give() -> None:
    batch = mixed_batch()
    results, _ = check_many(batch, SETTINGS)
    assert results == [check_one(check, SETTINGS) for check in batch]


def test_answers_of_several_shapes_share_one_key() -> None:
    answers = [RIGHT, RIGHT.reshape(3, 15), RIGHT[0], RIGHT * 2, RIGHT.reshape(3, 15) + 1]
    results, keys = check_many([request(JACOBIAN_W, a.tolist()) for a in answers], SETTINGS)
    assert keys == 1
    assert [r["correct"] for r in results] == [True, False, False, False, False]
    assert [[d["code"] for d in r["diagnosis"]] for r in results] == [
        [],
        ["reshaped"],
        ["reshaped"],
        ["constant_factor"],
        [],
    ]
    assert results[4]["report"]["given_shape"] == [3, 15]


def test_invalid_checks_get_an_error_in_their_place_and_the_rest_are_judged() -> None:
    unknown = {**JACOBIAN_W, "model": "conv9d"}
    batch = [
        request(JACOBIAN_W, RIGHT.tolist()),
        request(JACOBIAN_W, [[1, 2], [3]]),
        request(unknown, RIGHT.tolist()),
        request(SHAPE_1_1A, "five by two"),
        request({"op": "formula", "named": "gated_rnn_gate_size"}, "m +"),
        request(unknown, RIGHT.tolist()),
        request(JACOBIAN_W, RIGHT.tolist()),
    ]
    results, keys = check_many(batch, SETTINGS)
    assert results[0]["correct"] and results[6]["correct"]
    errors = {i: r["error"] for i, r in enumerate(results) if "error" in r}
    assert sorted(errors) == [1, 2, 3, 4, 5]
    assert errors[1]["status"] == 422 and errors[1]["detail"].startswith("checks.1.answer")
    assert errors[1]["errors"][0]["loc"] == ["body", "checks", 1, "answer"]
    for i in (2, 5):
        assert "there is no model 'conv9d'" in errors[i]["detail"]
        assert errors[i]["errors"][0]["loc"] == ["body", "checks", i, "expected", "model"]
    assert errors[3]["errors"][0]["loc"] == ["body", "checks", 3, "answer"]
    assert "ends too early" in errors[4]["detail"] and "column 4" in errors[4]["detail"]
    assert keys == 3


def test_many_answers_against_one_key_are_judged_together() -> None:
    rng = np.random.default_rng(5)
    answers = [RIGHT + (rng.normal(size=RIGHT.shape) if i % 3 == 0 else 0) for i in range(300)]
    answers[7] = -RIGHT
    results, keys = check_many([request(JACOBIAN_W, a.tolist()) for a in answers], SETTINGS)
    assert keys == 1
    assert [r["correct"] for r in results] == [i % 3 != 0 and i != 7 for i in range(300)]
    assert [d["code"] for d in results[7]["diagnosis"]] == ["sign_flipped"]


def test_the_keys_of_one_batch_share_an_element_budget() -> None:
    small = Settings(max_jacobian_elements=100)
    batch = [
        request({"op": "value", "value": [1.0] * 60}, [1.0] * 60),
        request({"op": "value", "value": [1.0] * 60}, [1.0] * 60),
        request({"op": "value", "value": [2.0] * 60}, [2.0] * 60),
    ]
    results, keys = check_many(batch, small)
    assert results[0]["correct"] and results[1]["correct"] and keys == 1
    assert results[2]["error"]["status"] == 413
    assert "split the batch" in results[2]["error"]["detail"]


def test_keys_too_large_to_diagnose_are_still_judged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "MAX_DIAGNOSED_ELEMENTS", 10)
    result = check_one(request(JACOBIAN_W, (-RIGHT).tolist()), SETTINGS)
    assert result["correct"] is False and result["diagnosis"] == []
    assert "at most 10" in result["report"]["diagnosis_skipped"]


def test_the_diagnoses_of_a_batch_share_the_compute_deadline() -> None:
    """Diagnosis time adds up over a batch as formula time does: once it reaches the compute
    deadline, the remaining wrong answers are judged but not diagnosed."""
    batch = [request({"op": "value", "value": [1.0, float(n)]}, [-1.0, -float(n)]) for n in (2, 3)]
    diagnosed, _ = check_many(batch, SETTINGS)
    assert [r["diagnosis"][0]["code"] for r in diagnosed] == ["sign_flipped"] * 2
    tight = Settings(compute_deadline_seconds=1e-9)  # spent by the first diagnosis
    results, _ = check_many(batch, tight)
    assert [(r["correct"], r["diagnosis"]) for r in results] == [(False, [])] * 2
    assert "diagnosis_skipped" not in results[0]["report"]  # it started, and said nothing
    assert "compute deadline" in results[1]["report"]["diagnosis_skipped"]


class Clock:
    """A ``time`` for the engine whose seconds pass only when a model's forward pass runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def conv_key(bias: float) -> dict[str, Any]:
    """A conv1d forward key; each bias makes a distinct key."""
    return {
        "op": "forward",
        "model": "conv1d",
        "device": "cpu",
        "params": {"weight": [[[1.0, 2.0]]], "bias": [bias]},
        "inputs": {"x": [[1.0, 2.0, 3.0]]},
    }


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Each conv1d forward pass takes 7 s on the engine's clock (none in fact)."""
    clock = Clock()
    model = get_model("conv1d")

    def slow(config: Any, args: Any) -> Any:
        clock.now += 7.0
        return model.forward(config, args)

    monkeypatch.setitem(MODELS, "conv1d", dataclasses.replace(model, forward=slow))
    monkeypatch.setattr(engine, "time", clock)
    return clock


def test_the_model_keys_of_a_batch_share_the_compute_deadline(clock: Clock) -> None:
    """Each distinct key had the whole deadline to itself: 8 AttentionRNN(inf) backward keys,
    each within it, took 80 s in one batch. Now the keys' time adds up (7 s each here, of a
    20 s deadline): past the deadline the remaining keys are refused in their places, and the
    checks that compute nothing are still judged."""
    right = [[[5.0 + b, 8.0 + b]] for b in range(5)]
    batch = [request(conv_key(b), right[b]) for b in range(5)]
    batch.append(request(SHAPE_1_1A, [5, 2]))
    batch.append(request(conv_key(0), right[0]))  # the first key's again: computed already
    results, keys = check_many(batch, Settings(compute_deadline_seconds=20.0))
    assert [r.get("correct") for r in results[:3]] == [True, True, True]
    assert keys == 4 and clock.now == 21.0  # the fourth check's key is the SHAPE one
    for index in (3, 4):
        error = results[index]["error"]
        assert error["status"] == 422 and error["type"].endswith("/over-compute-deadline")
        assert error["detail"].startswith(f"checks.{index}.expected: the keys and formulas")
        assert "took 21.0 s, the whole compute deadline (20 s)" in error["detail"]
        assert "another batch" in error["detail"]
        assert error["errors"][0]["loc"][:4] == ["body", "checks", index, "expected"]
    assert results[5]["correct"] is True and results[6]["correct"] is True


def test_a_key_estimated_over_what_the_batch_has_left_is_refused_before_it_runs(
    clock: Clock,
) -> None:
    """The estimate of each key is held to what the keys before it left of the deadline: with
    14 s taken, a key estimated at 10 s is refused without running; alone it is computed."""
    expected = conv_key(0.0)
    flops = 2 * 2 * 1 * 2  # 2 numel(y) C prod(K): y [1, 2], C = 1, K = 2
    settings = Settings(compute_deadline_seconds=20.0, cpu_flops_per_second=flops / 10.0)
    assert check_one(request(expected, [[5.0, 8.0]]), settings)["correct"] is True
    clock.now = 0.0
    engine_ = engine.Engine(settings, ComputeGate.from_settings(settings), batch=True)
    engine_.compute_seconds = 14.0
    results = engine_.run([request(expected, [[5.0, 8.0]])])
    assert clock.now == 0.0  # never ran
    error = results[0]["error"]
    assert error["type"].endswith("/over-compute-deadline")
    assert "needs an estimated 10.0 s on cpu" in error["detail"]
    assert "took 14.0 s of the compute deadline (20 s)" in error["detail"]


def test_a_batch_stops_when_its_client_has_gone(clock: Clock) -> None:
    """Asked before each key that computes: once the client is gone nothing more is computed."""
    asked: list[float] = []

    def gone() -> bool:
        asked.append(clock.now)
        return clock.now > 0  # gone during the first key

    batch = [request(conv_key(b), [[5.0 + b, 8.0 + b]]) for b in range(3)]
    engine_ = engine.Engine(
        Settings(), ComputeGate.from_settings(Settings()), batch=True, disconnected=gone
    )
    engine_.POLL_SECONDS = 0.0
    with pytest.raises(engine.ClientDisconnected):
        engine_.run(batch)
    assert clock.now == 7.0 and asked == [0.0, 7.0]


FORMULA = {"op": "formula", "reference": "H + 2*P", "variables": {"H": [1, 64], "P": [0, 4]}}


def formula_batch() -> list[CheckRequest]:
    """Ten answers to one formula (the even ones right), a shape, another formula's answer."""
    batch = [request(FORMULA, "H + 2*P" if i % 2 == 0 else f"H + {i}*P") for i in range(10)]
    batch.append(request(SHAPE_1_1A, [5, 2]))
    batch.append(request({**FORMULA, "reference": "H + P"}, "P + H"))
    return batch


@pytest.fixture
def slow_formulas(monkeypatch: pytest.MonkeyPatch) -> tuple[Clock, list[int]]:
    """Each formula answer takes 3 s on the engine's clock (none in fact); the places judged."""
    clock = Clock()
    judged: list[int] = []
    judge = engine.Engine._judge_formula

    def slow(self: engine.Engine, key: Any, slot: engine.Slot) -> Any:
        judged.append(slot.index)
        clock.now += 3.0
        return judge(self, key, slot)

    monkeypatch.setattr(engine.Engine, "_judge_formula", slow)
    monkeypatch.setattr(engine, "time", clock)
    return clock, judged


def test_the_answers_to_one_formula_share_the_compute_deadline(
    slow_formulas: tuple[Clock, list[int]],
) -> None:
    """The deadline was looked at only between keys: 5,000 answers to one long reference took
    243 s. Now each answer's time counts (3 s here, of a 20 s deadline): past the deadline the
    remaining answers are refused in their places, as the keys after them are, and the checks
    that compute nothing are still judged."""
    clock, judged = slow_formulas
    results, keys = check_many(formula_batch(), Settings(compute_deadline_seconds=20.0))
    assert judged == list(range(7)) and clock.now == 21.0 and keys == 2
    assert [r["correct"] for r in results[:7]] == [i % 2 == 0 for i in range(7)]
    for index in (7, 8, 9, 11):
        error = results[index]["error"]
        assert error["status"] == 422 and error["type"].endswith("/over-compute-deadline")
        assert error["title"] == "Over the compute deadline"
        assert error["detail"].startswith(f"checks.{index}.expected: the keys and formulas")
        assert "took 21.0 s, the whole compute deadline (20 s)" in error["detail"]
        assert "another batch" in error["detail"]
        assert error["errors"][0]["loc"][:4] == ["body", "checks", index, "expected"]
    assert results[10]["correct"] is True


def test_formula_answers_within_the_deadline_are_all_judged(
    slow_formulas: tuple[Clock, list[int]],
) -> None:
    """Within the deadline a formula batch is judged as before, each check as it is alone."""
    clock, judged = slow_formulas
    batch = formula_batch()
    results, keys = check_many(batch, Settings(compute_deadline_seconds=40.0))
    assert judged == [*range(10), 11] and clock.now == 33.0 and keys == 3
    assert all("error" not in result for result in results)
    assert results == [check_one(check, SETTINGS) for check in batch]


def test_a_formula_group_stops_when_its_client_has_gone(
    slow_formulas: tuple[Clock, list[int]],
) -> None:
    """Asked before each formula answer too: a group of many answers to one reference stops
    at the next answer once the client is gone."""
    clock, judged = slow_formulas
    asked: list[float] = []

    def gone() -> bool:
        asked.append(clock.now)
        return clock.now > 0  # gone during the first answer

    engine_ = engine.Engine(
        Settings(), ComputeGate.from_settings(Settings()), batch=True, disconnected=gone
    )
    engine_.POLL_SECONDS = 0.0
    with pytest.raises(engine.ClientDisconnected):
        engine_.run(formula_batch())
    assert judged == [0] and asked == [0.0, 3.0]

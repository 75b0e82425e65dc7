"""A computation that explodes is answered 200 with its non-finite entries stated explicitly:
never a 500, never a silent ``null``, never a bare ``NaN`` token that strict JSON parsers refuse.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import safetensors
import torch
from fastapi.testclient import TestClient

from models import gradient_flow
from models.errors import ModelError
from service.binary import read_safetensors_answer

# Products of 1e200 overflow a float64: each output is +inf, -inf, a finite value, or
# inf - inf = NaN, as the IEEE rules say. Where one product is +inf and the other -inf (y[2]),
# the answer depends on the rounding: two roundings give NaN, a fused multiply-add (one
# rounding, as GPUs and many CPU kernels compute) gives the sign of the product rounded first.
WEIGHT = [[[1e200, 1e200]]]
X = [[1e200, 1.0, -1e200, 1e200, 1.0, 1.0]]
# On the CPU, where a GPU is present too: the answers are compared with torch's CPU kernel.
BODY = {"device": "cpu", "params": {"weight": WEIGHT}, "inputs": {"x": X}}
ROUNDING_DEPENDENT = 2


def oracle(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The same convolution written out by hand: y[i] = w0 x[i] + w1 x[i+1], each product
    rounded on its own."""
    w = torch.tensor(WEIGHT, dtype=dtype)[0, 0]
    x = torch.tensor(X, dtype=dtype)[0]
    return torch.stack([w[0] * x[i] + w[1] * x[i + 1] for i in range(len(x) - 1)])[None]


def by_torch(weight: Any = WEIGHT, x: Any = X, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """torch's own CPU kernel, which the service runs for ``"device": "cpu"``."""
    return torch.nn.functional.conv1d(
        torch.tensor(x, dtype=dtype), torch.tensor(weight, dtype=dtype)
    )


def flat(data: Any) -> list[Any]:
    return [leaf for item in data for leaf in flat(item)] if isinstance(data, list) else [data]


def as_floats(data: Any) -> list[float]:
    names = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
    return [names[v] if isinstance(v, str) else float(v) for v in flat(data)]


def test_the_oracles_agree_on_what_explodes() -> None:
    by_hand, kernel = oracle()[0], by_torch()[0]
    assert by_hand.isnan().any() and by_hand.isinf().any() and by_hand.isfinite().any()
    settled = [i for i in range(len(by_hand)) if i != ROUNDING_DEPENDENT]
    torch.testing.assert_close(kernel[settled], by_hand[settled])
    assert by_hand[ROUNDING_DEPENDENT].isnan()
    assert kernel[ROUNDING_DEPENDENT].isnan() or kernel[ROUNDING_DEPENDENT].isinf()


def test_json_answers_name_each_non_finite_entry(client: TestClient) -> None:
    response = client.post("/v1/models/conv1d/forward", json=BODY)
    assert response.status_code == 200
    orjson.loads(response.content)  # strict JSON: no NaN or Infinity tokens in the body
    y = response.json()["outputs"]["y"]
    expected = by_torch()
    assert y["nonfinite"] == int((~expected.isfinite()).sum()) == 4
    np.testing.assert_array_equal(as_floats(y["data"]), expected.numpy().ravel())
    tokens = {"NaN"} if expected.isnan().any() else set()
    assert {"Infinity", "-Infinity", *tokens} <= set(flat(y["data"]))


@pytest.mark.parametrize(("dtype", "datatype"), [("float64", "<f8"), ("float32", "<f4")])
def test_b64_answers_carry_the_ieee_values_and_the_count(
    client: TestClient, dtype: str, datatype: str
) -> None:
    body = {**BODY, "encoding": "b64", "dtype": dtype}
    expected = by_torch()
    if dtype == "float32":  # 1e200 is not a float32: overflow at 1e20 * 1e20 instead
        weight, x = [[[1e20, 1e20]]], [[1e20, 1.0, -1e20, 1e20, 1.0, 1.0]]
        body = {**body, "params": {"weight": weight}, "inputs": {"x": x}}
        expected = by_torch(weight, x, torch.float32)
    y = client.post("/v1/models/conv1d/forward", json=body).json()["outputs"]["y"]
    values = np.frombuffer(base64.b64decode(y["b64"]), dtype=datatype)
    assert y["nonfinite"] == int((~np.isfinite(values)).sum()) == 4
    np.testing.assert_array_equal(np.isnan(values), expected.isnan().numpy().ravel())
    np.testing.assert_array_equal(np.isposinf(values), expected.isposinf().numpy().ravel())
    np.testing.assert_array_equal(np.isneginf(values), expected.isneginf().numpy().ravel())


@pytest.mark.parametrize("op", ["forward", "backward"])
def test_safetensors_answers_carry_the_count_in_the_metadata(
    client: TestClient, op: str, tmp_path: Path
) -> None:
    body: dict[str, Any] = dict(BODY)
    if op == "backward":
        body["grad_outputs"] = {"y": [[1e200, 1.0, 1.0, 1.0, 1.0]]}
    as_json = client.post(f"/v1/models/conv1d/{op}", json=body).json()
    counts = {
        f"{section}.{name}": tensor["nonfinite"]
        for section in ("outputs", "grads")
        for name, tensor in as_json.get(section, {}).items()
        if "nonfinite" in tensor
    }
    assert counts["outputs.y"] == 4 and (op == "forward" or counts["grads.weight"] >= 1)
    response = client.post(f"/v1/models/conv1d/{op}", json={**body, "encoding": "safetensors"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    # Read by the safetensors library itself: the count under the field's dotted name.
    path = tmp_path / "answer.safetensors"
    path.write_bytes(response.content)
    with safetensors.safe_open(str(path), framework="numpy") as opened:
        metadata = opened.metadata() or {}
        y = opened.get_tensor("outputs.y")
    assert {k: v for k, v in metadata.items() if k.endswith(".nonfinite")} == {
        f"{name}.nonfinite": str(count) for name, count in counts.items()
    }
    assert int((~np.isfinite(y)).sum()) == 4
    answer = read_safetensors_answer(response.content)
    assert answer["nonfinite"] == counts
    np.testing.assert_array_equal(answer["outputs"]["y"], y)


def test_a_finite_safetensors_answer_has_no_count(client: TestClient) -> None:
    body = {"params": {"weight": [[[2.0, 1.0]]]}, "inputs": {"x": [[1.0, 2.0, 3.0]]}}
    response = client.post("/v1/models/conv1d/forward", json={**body, "encoding": "safetensors"})
    assert response.status_code == 200
    assert "nonfinite" not in read_safetensors_answer(response.content)


def test_an_exploding_gradient_is_explicit_too(client: TestClient) -> None:
    body = {**BODY, "grad_outputs": {"y": [[1e200, 1.0, 1.0, 1.0, 1.0]]}}
    response = client.post("/v1/models/conv1d/backward", json=body)
    assert response.status_code == 200
    grads = response.json()["grads"]
    # dl/dw[m] = sum_i g[i] x[i + m]: 1e200 * 1e200 overflows.
    assert grads["weight"]["nonfinite"] >= 1
    assert response.json()["outputs"]["y"]["nonfinite"] == 4
    x = torch.tensor(X, dtype=torch.float64, requires_grad=True)
    w = torch.tensor(WEIGHT, dtype=torch.float64, requires_grad=True)
    upstream = torch.tensor([[1e200, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    torch.nn.functional.conv1d(x, w).backward(upstream)
    assert w.grad is not None
    np.testing.assert_array_equal(as_floats(grads["weight"]["data"]), w.grad.numpy().ravel())


def test_a_checks_error_that_overflows_is_written_infinity_not_null(client: TestClient) -> None:
    """Key and answer are finite, their difference is not: the report's errors were null."""
    body = {"expected": {"op": "value", "value": 1e308}, "answer": -1e308}
    response = client.post("/v1/check", json=body)
    assert response.status_code == 200, response.text
    report = orjson.loads(response.content)["report"]
    assert report["max_abs_error"]["value"] == report["max_rel_error"]["value"] == "Infinity"
    assert report["first_mismatches"][0]["abs_error"] == "Infinity"


def test_finite_answers_carry_no_nonfinite_field(client: TestClient) -> None:
    body = {"params": {"weight": [[[1.0, 2.0]]]}, "inputs": {"x": [[1.0, 2.0, 3.0]]}}
    y = client.post("/v1/models/conv1d/forward", json=body).json()["outputs"]["y"]
    assert "nonfinite" not in y and y["data"] == [[5.0, 8.0]]


# Recurrent states that overflow: the gated RNN on 1e300 weights and inputs, and
# AttentionRNN(1) with V_1 = 3 I, whose states triple every step (3**80 > float32's 3.4e38).
OVERFLOWING_STATES = [
    (
        "gated_rnn",
        {
            "params": {"W_c": [[1e300]], "W_h": [[1e300]], "W_x": [[1e300]]},
            "inputs": {"x": [[1e300], [1e300], [-1e300]]},
        },
    ),
    (
        "attention_rnn",
        {
            "config": {"k": 1},
            "dtype": "float32",
            "params": {
                "Q": [np.eye(2).tolist()] * 2,
                "K": [np.eye(2).tolist()] * 2,
                "V": [np.eye(2).tolist(), (3 * np.eye(2)).tolist()],
            },
            "inputs": {"x": np.ones((80, 2)).tolist()},
        },
    ),
]


@pytest.mark.parametrize(("model", "body"), OVERFLOWING_STATES, ids=["gated_rnn", "attention_rnn"])
def test_state_jacobians_of_overflowing_states_are_a_422_not_a_500(
    client: TestClient, model: str, body: dict[str, Any]
) -> None:
    """No norm or singular value of a Jacobian with infinite entries means anything: the
    answer says so and what to do, on the model route, in a check and in a batch."""
    forward = client.post(f"/v1/models/{model}/forward", json=body)
    assert forward.status_code == 200 and "nonfinite" in orjson.dumps(forward.json()).decode()
    response = client.post(f"/v1/models/{model}/state-jacobians", json=body)
    assert response.status_code == 422, response.text[:300]
    assert response.headers["content-type"] == "application/problem+json"
    detail = response.json()["detail"]
    assert "Jacobians overflow" in detail and "scale the weights or inputs down" in detail
    # The advice to widen the dtype only where it is not float64 already.
    assert ("use float64" in detail) == (body.get("dtype") == "float32")
    check = {"expected": {"op": "state_jacobians", "model": model, **body}, "answer": [[[1.0]]]}
    single = client.post("/v1/check", json=check)
    assert single.status_code == 422 and "Jacobians overflow" in single.json()["detail"]
    batch = client.post("/v1/check/batch", json={"checks": [check]})
    assert batch.status_code == 200, batch.text[:300]
    assert "Jacobians overflow" in orjson.dumps(batch.json()["results"][0]["error"]).decode()


def test_overflowing_float32_jacobians_suggest_float64() -> None:
    with pytest.raises(ModelError, match=r"overflow torch.float32 .* or use float64"):
        gradient_flow.require_finite(torch.full((2, 1, 1), float("inf")))


def huge_value_path(value: float, seq_len: int, dtype: str) -> dict[str, Any]:
    """AttentionRNN(1) with Q = K = V_0 = 0 and V_1 = value * ones: every score is 0, so
    a[t] = (1/2, 1/2), h[t] = 0, and each one-step Jacobian is a_1 V_1 = (value / 2) * ones,
    of 2-norm ``value`` (the 2 x 2 ones has 2-norm 2); a product of s of them is
    (value / 2)^s 2^(s-1) * ones, of 2-norm value^s, whose log is s log(value)."""
    zero = [[0.0, 0.0], [0.0, 0.0]]
    big = [[value, value], [value, value]]
    return {
        "config": {"k": 1},
        "params": {"Q": [zero, zero], "K": [zero, zero], "V": [zero, big]},
        "inputs": {"x": [[1.0, 1.0]] * seq_len},
        "dtype": dtype,
        "device": "cpu",
    }


@pytest.mark.parametrize(
    ("value", "seq_len", "dtype"),
    [(1e20, 2, "float32"), (1e20, 4, "float32"), (1e160, 3, "float64")],
)
def test_product_norms_past_the_dtype_keep_finite_logs_and_a_verdict(
    client: TestClient, value: float, seq_len: int, dtype: str
) -> None:
    """The one-step Jacobians are finite (entries value / 2), their products' norms value^s
    may overflow (Infinity, stated) but their logs s log(value) do not, and the growth factor
    is value per step: exploding, never NaN with a null growth factor and "neither"."""
    response = client.post(
        "/v1/models/attention_rnn/state-jacobians", json=huge_value_path(value, seq_len, dtype)
    )
    assert response.status_code == 200, response.text[:300]
    answer = response.json()
    assert set(flat(answer["jacobians"]["data"])) == {value / 2}
    logs = as_floats(answer["log_product_norms"]["data"])
    assert "nonfinite" not in answer["log_product_norms"]
    rtol = 1e-6 if dtype == "float32" else 1e-12
    assert logs == pytest.approx([s * math.log(value) for s in range(seq_len)], rel=rtol)
    norms = as_floats(answer["product_norms"]["data"])
    limit = float(np.finfo(np.float32 if dtype == "float32" else np.float64).max)
    for s, norm in enumerate(norms):
        if s * math.log(value) < math.log(limit) - 1:
            assert norm == pytest.approx(value**s, rel=1e-5)
        else:
            assert norm == math.inf
    assert answer["growth_factor"] == pytest.approx(value, rel=1e-5)
    assert answer["verdict"] == "exploding"


def test_paths_to_older_states_that_overflow_are_a_422_not_a_500(client: TestClient) -> None:
    """AttentionRNN(2) whose lag-2 score matrix is huge (1.2e154 squared overflows float64)
    while the lag-1 Jacobians stay finite: the sum over paths overflows, said as a 422."""
    body = {
        "config": {"k": 2},
        "params": {"Q": [[[1.0]], [[1.0]], [[1.2e154]]], "K": [[[1.0]], [[1.0]], [[1.2e154]]]},
        "inputs": {"x": [[0.1], [0.2], [0.3], [0.1]]},
    }
    body["params"]["V"] = [[[1.0]], [[0.5]], [[0.5]]]
    forward = client.post("/v1/models/attention_rnn/forward", json=body)
    assert forward.status_code == 200, forward.text[:300]
    response = client.post("/v1/models/attention_rnn/state-jacobians", json=body)
    assert response.status_code == 422, response.text[:300]
    detail = response.json()["detail"]
    assert "through the older states overflows torch.float64" in detail
    assert "use float64" not in detail
    check = {"expected": {"op": "state_jacobians", "model": "attention_rnn", **body}, "answer": 1}
    assert client.post("/v1/check", json=check).status_code == 422

"""The RNNs over HTTP: the generic model routes, state-jacobians, limits, errors, OpenAPI."""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from models import attention_rnn, gated_rnn
from models.attention_rnn import Window
from service.app import create_app
from service.examples import (
    BACKWARD_EXAMPLES,
    FORWARD_EXAMPLES,
    JACOBIAN_EXAMPLES,
    STATE_JACOBIAN_EXAMPLES,
)
from service.settings import Settings

F64 = torch.float64
HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings())) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def tight() -> Iterator[TestClient]:
    """A server with small limits, to reach each of them with small requests."""
    settings = Settings(max_sequence_length=4, max_hidden_size=3, max_k=3, max_jacobian_elements=30)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def rand(gen: torch.Generator, *shape: int, scale: float = 1.0) -> list[Any]:
    values: list[Any] = (scale * torch.randn(*shape, generator=gen, dtype=F64)).tolist()
    return values


def gated_body(seq_len: int = 4, m: int = 2, n: int = 3, seed: int = 0) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "params": {"W_c": rand(gen, m, n), "W_h": rand(gen, m, m), "W_x": rand(gen, m, n)},
        "inputs": {"x": rand(gen, seq_len, n), "h0": rand(gen, m)},
        "device": "cpu",
    }


def attention_body(k: int | str = 2, seq_len: int = 4, n: int = 2, seed: int = 1) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    count = 2 if k == "inf" else int(k) + 1
    return {
        "config": {"k": k},
        "params": {name: rand(gen, count, n, n, scale=0.7) for name in ("Q", "K", "V")},
        "inputs": {"x": rand(gen, seq_len, n)},
        "device": "cpu",
    }


def tensors(body: dict[str, Any]) -> dict[str, torch.Tensor]:
    merged = {**body["params"], **body["inputs"]}
    return {name: torch.tensor(value, dtype=F64) for name, value in merged.items()}


def array(wire: dict[str, Any]) -> torch.Tensor:
    if "b64" in wire:
        raw = np.frombuffer(base64.b64decode(wire["b64"]), dtype="<f8").reshape(wire["shape"])
        return torch.tensor(raw.copy(), dtype=F64)
    return torch.tensor(wire["data"], dtype=F64).reshape(wire["shape"])


# --- the generic routes work for both RNNs ---------------------------------------------------


def test_gated_rnn_forward_answers_h_and_c(client: TestClient) -> None:
    body = gated_body()
    response = client.post("/v1/models/gated_rnn/forward", json=body)
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    expected = gated_rnn.forward(gated_rnn.parse_config({}), tensors(body))
    for name in ("h", "c"):
        assert outputs[name]["shape"] == [4, 2]
        torch.testing.assert_close(array(outputs[name]), expected[name])


@pytest.mark.parametrize(("k", "width"), [(1, 2), (2, 3), (6, 7), ("inf", 5)])
def test_attention_rnn_forward_answers_h_a_w_in_the_api_layouts(
    client: TestClient, k: int | str, width: int
) -> None:
    body = attention_body(k)
    response = client.post("/v1/models/attention_rnn/forward", json=body)
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    config = attention_rnn.parse_config({"k": k})
    expected = attention_rnn.forward(config, tensors(body))
    assert outputs["h"]["shape"] == [4, 2]
    for name in ("h", "a", "w"):
        torch.testing.assert_close(array(outputs[name]), expected[name])
    assert outputs["a"]["shape"] == outputs["w"]["shape"] == [4, width]


@pytest.mark.parametrize(
    ("model", "body"), [("gated_rnn", gated_body()), ("attention_rnn", attention_body("inf"))]
)
def test_backward_answers_grads_of_every_argument_and_state_grads(
    client: TestClient, model: str, body: dict[str, Any]
) -> None:
    direct = torch.randn(4, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    response = client.post(
        f"/v1/models/{model}/backward", json={**body, "grad_outputs": {"h": direct.tolist()}}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer["grads"]) == set(body["params"]) | set(body["inputs"])
    if model == "gated_rnn":
        expected = gated_rnn.state_grads(gated_rnn.parse_config({}), tensors(body), {"h": direct})
    else:
        config = attention_rnn.parse_config(body["config"])
        expected = attention_rnn.state_grads(config, tensors(body), {"h": direct})
    assert answer["state_grads"]["shape"] == [4, 2]
    torch.testing.assert_close(array(answer["state_grads"]), expected["state_grads"])


def test_backward_of_the_gates_alone_at_one_step_has_zero_state_grads(client: TestClient) -> None:
    """c[1] = sigmoid(W_c x[1] + W_h h[0]) is computed before any state: no state reaches the
    loss, so dl/dh[1] is 0 (once a 500), and the grads are the sigmoid's, written by hand."""
    body = {
        "params": {"W_c": [[0.5]], "W_h": [[0.8]], "W_x": [[1.0]]},
        "inputs": {"x": [[1.0]]},
        "grad_outputs": {"c": [[1.0]]},
    }
    response = client.post("/v1/models/gated_rnn/backward", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["state_grads"] == {"shape": [1, 1], "datatype": "FP64", "data": [[0.0]]}
    slope = torch.sigmoid(torch.tensor(0.5, dtype=F64)).item()
    slope *= 1 - slope  # sigma'(W_c x[1]), with h[0] = 0
    grads = {name: array(value).item() for name, value in answer["grads"].items()}
    assert grads == pytest.approx({"W_c": slope, "W_h": 0.0, "W_x": 0.0, "x": 0.5 * slope})


@pytest.mark.parametrize("k", [1, "inf"])
@pytest.mark.parametrize("output", ["a", "w"])
def test_backward_of_the_attention_alone_at_one_step_has_zero_state_grads(
    client: TestClient, k: int | str, output: str
) -> None:
    """a[1] and w[1] read x[1] and the zero state h[0], never a state the model produces."""
    one = [[[1.0]], [[0.5]]]
    body = {
        "config": {"k": k},
        "params": {"Q": one, "K": one, "V": one},
        "inputs": {"x": [[1.0]]},
        "grad_outputs": {output: [[1.0, 0.0]]},
    }
    response = client.post("/v1/models/attention_rnn/backward", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["state_grads"] == {"shape": [1, 1], "datatype": "FP64", "data": [[0.0]]}
    # w[1] = [x^T Q_0^T K_0 x, 0] and a[1] = softmax(w[1]): nothing reaches V.
    assert not array(answer["grads"]["V"]).any()


def test_jacobian_dh_dW_x_has_shape_T_m_m_n(client: TestClient) -> None:
    body = {**gated_body(seq_len=3, m=2, n=4), "of": "h", "wrt": "W_x"}
    response = client.post("/v1/models/gated_rnn/jacobian", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["jacobian"]["shape"] == [3, 2, 2, 4]


def test_jacobian_of_attention_weights_against_K(client: TestClient) -> None:
    body = {**attention_body(3), "of": "a", "wrt": "K"}
    response = client.post("/v1/models/attention_rnn/jacobian", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["jacobian"]["shape"] == [4, 4, 4, 2, 2]


def test_float32_is_computed_and_answered_in_fp32(client: TestClient) -> None:
    body = {**attention_body(2), "dtype": "float32"}
    response = client.post("/v1/models/attention_rnn/forward", json=body)
    assert response.status_code == 200, response.text
    h = response.json()["outputs"]["h"]
    assert h["datatype"] == "FP32"
    expected = attention_rnn.forward(attention_rnn.parse_config({"k": 2}), tensors(body))["h"]
    torch.testing.assert_close(array(h), expected, rtol=1e-5, atol=1e-6)


# --- state-jacobians -------------------------------------------------------------------------


def test_state_jacobians_of_the_gated_rnn(client: TestClient) -> None:
    body = gated_body(seq_len=5)
    response = client.post("/v1/models/gated_rnn/state-jacobians", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    args = tensors(body)
    expected, _ = gated_rnn.step_jacobians(
        args["W_c"], args["W_h"], args["W_x"], args["x"], args["h0"]
    )
    assert answer["jacobians"]["shape"] == [5, 2, 2]
    torch.testing.assert_close(array(answer["jacobians"]), expected)
    singular = torch.linalg.svdvals(expected)
    torch.testing.assert_close(array(answer["spectral_norms"]), singular[:, 0])
    torch.testing.assert_close(array(answer["min_singular_values"]), singular[:, -1])
    products = array(answer["product_norms"])
    assert products.shape == (5,) and float(products[0]) == 1.0
    assert answer["growth_factor"] == pytest.approx(float(products[-1]) ** (1 / 4))
    assert answer["verdict"] in ("vanishing", "exploding", "neither")
    assert "c[t]" in answer["reason"] and "W_h" in answer["reason"]
    assert answer["vanishing_below"] < 1 < answer["exploding_above"]
    assert set(answer["terms"]) >= {"mean_gate", "saturated_fraction", "W_h_spectral_norm"}


@pytest.mark.parametrize("k", [1, 3, "inf"])
def test_state_jacobians_of_attention_rnn_in_base64(client: TestClient, k: Window) -> None:
    body = {**attention_body(k, seq_len=4), "encoding": "b64"}
    response = client.post("/v1/models/attention_rnn/state-jacobians", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    args = tensors(body)
    expected, _ = attention_rnn.step_jacobians(args["Q"], args["K"], args["V"], args["x"], k)
    torch.testing.assert_close(array(answer["jacobians"]), expected)
    assert "a_1[t]" in answer["reason"] and "V_1" in answer["reason"]


def test_state_jacobians_reports_an_exploding_gated_rnn(client: TestClient) -> None:
    """Seed 1.2.1(d): c = 1/2, h[t-1] - W_x x[t] = 2, W_h = 4I gives 2.5 I at every step."""
    m, seq_len = 2, 6
    eye, zero = torch.eye(m, dtype=F64), torch.zeros(m, m, dtype=F64)
    W_h = 4 * eye
    W_c, W_x = torch.cat([eye, zero], dim=1), torch.cat([zero, eye], dim=1)
    h, rows = torch.zeros(m, dtype=F64), []
    for _ in range(seq_len):
        row = torch.cat([-W_h @ h, h - 2])  # gate input 0, h[t-1] - W_x x[t] = 2
        rows.append(row)
        h = 0.5 * h + 0.5 * (h - 2)
    body = {
        "params": {"W_c": W_c.tolist(), "W_h": W_h.tolist(), "W_x": W_x.tolist()},
        "inputs": {"x": torch.stack(rows).tolist()},
    }
    answer = client.post("/v1/models/gated_rnn/state-jacobians", json=body).json()
    assert answer["verdict"] == "exploding"
    assert answer["growth_factor"] == pytest.approx(2.5)
    assert "Exploding" in answer["reason"]


def test_state_jacobians_of_a_model_without_state_is_404(client: TestClient) -> None:
    body = {"params": {"weight": [[[1.0, 2.0]]]}, "inputs": {"x": [[1.0, 2.0, 3.0]]}}
    response = client.post("/v1/models/conv1d/state-jacobians", json=body)
    assert response.status_code == 404
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert "gated_rnn" in problem["detail"] and "attention_rnn" in problem["detail"]


def test_state_jacobians_of_an_unknown_model_is_404(client: TestClient) -> None:
    response = client.post("/v1/models/lstm/state-jacobians", json=gated_body())
    assert response.status_code == 404
    assert "gated_rnn" in response.json()["detail"]


def test_state_jacobians_that_overflow_are_a_422_not_a_500(client: TestClient) -> None:
    body = {
        "params": {"W_c": [[0.0]], "W_h": [[1e200]], "W_x": [[-1e200]]},
        "inputs": {"x": [[1.0]]},
    }
    response = client.post("/v1/models/gated_rnn/state-jacobians", json=body)
    assert response.status_code == 422
    assert "overflow" in response.json()["detail"]


# --- limits and bad input --------------------------------------------------------------------


def test_info_reports_the_rnn_limits(client: TestClient) -> None:
    limits = client.get("/v1/info").json()["limits"]
    assert {"max_sequence_length", "max_hidden_size", "max_k"} <= set(limits)


def test_k_of_10_to_the_12_is_refused_before_any_tensor_is_read(client: TestClient) -> None:
    body = attention_body(2)
    body["config"]["k"] = 10**12
    body["params"]["Q"] = {"shape": [10**12 + 1, 2, 2], "b64": "not even base64"}
    response = client.post("/v1/models/attention_rnn/forward", json=body)
    assert response.status_code == 413
    problem = response.json()
    assert "max_k" in problem["detail"] and problem["errors"][0]["loc"] == ["body", "config", "k"]


def _set(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(body)
    *parents, last = path.split(".")
    node = body
    for key in parents:
        node = node.setdefault(key, {})
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return body


_DELETE = object()
GATED = gated_body(seq_len=3, m=2, n=3)
ATTENTION = attention_body(2, seq_len=3, n=2)
BAD_INPUTS = [
    (
        "gated_rnn",
        "forward",
        _set(GATED, "params.W_h", [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
        422,
        "W_h must be square",
    ),
    (
        "gated_rnn",
        "forward",
        _set(GATED, "params.W_c", [[1.0, 2.0], [3.0, 4.0]]),
        422,
        "W_c must be [m, n] = [2, 3]",
    ),
    (
        "gated_rnn",
        "forward",
        _set(GATED, "params.W_x", [[1.0, 2.0, 3.0]]),
        422,
        "W_x must be [m, n]",
    ),
    ("gated_rnn", "forward", _set(GATED, "inputs.x", [1.0, 2.0, 3.0]), 422, "x must be [T, n]"),
    (  # W_c and W_x agree on n = 3: x, two wide, is the one at fault
        "gated_rnn",
        "forward",
        _set(GATED, "inputs.x", [[1.0, 2.0]]),
        422,
        "x must be [T, n] with n = 3, the width of W_c and W_x [2, 3]",
    ),
    (
        "gated_rnn",
        "forward",
        _set(GATED, "inputs.h0", [1.0, 2.0, 3.0]),
        422,
        "h0 must be [m] = [2]",
    ),
    ("gated_rnn", "forward", _set(GATED, "params.W_c", _DELETE), 422, "'W_c'"),
    ("gated_rnn", "forward", _set(GATED, "config.k", 2), 422, "gated_rnn takes no config"),
    ("gated_rnn", "forward", _set(GATED, "inputs.W_x", [[1.0]]), 422, "belongs in params"),
    (
        "gated_rnn",
        "backward",
        _set(GATED, "grad_outputs.h", [[1.0, 2.0]]),
        422,
        "grad_outputs.h has shape [1, 2]",
    ),
    ("gated_rnn", "backward", _set(GATED, "grad_outputs.y", [[1.0, 2.0]]), 422, "no output 'y'"),
    ("gated_rnn", "jacobian", _set(_set(GATED, "of", "z"), "wrt", "x"), 422, "no output 'z'"),
    (
        "gated_rnn",
        "jacobian",
        _set(_set(GATED, "of", "h"), "wrt", "W_q"),
        422,
        "no parameter or input 'W_q'",
    ),
    ("attention_rnn", "forward", _set(ATTENTION, "config.k", 0), 422, "k must be an integer >= 1"),
    ("attention_rnn", "forward", _set(ATTENTION, "config.k", -3), 422, "k must be an integer >= 1"),
    ("attention_rnn", "forward", _set(ATTENTION, "config.k", "foo"), 422, 'got "foo"'),
    ("attention_rnn", "forward", _set(ATTENTION, "config.k", 2.5), 422, '"inf", got 2.5'),
    ("attention_rnn", "forward", _set(ATTENTION, "config.k", True), 422, '"inf", got true'),
    ("attention_rnn", "forward", _set(ATTENTION, "config.k", None), 422, '"inf", got null'),
    ("attention_rnn", "forward", _set(ATTENTION, "config.k", 10**12), 413, "max_k = 256"),
    # Past 64 bits the JSON parser reads an integer as a float: still over the limit.
    ("attention_rnn", "forward", _set(ATTENTION, "config.k", 10**30), 413, "k = 1e+30 is over"),
    ("attention_rnn", "forward", _set(ATTENTION, "config.k", 1e30), 413, "k = 1e+30 is over"),
    (
        "attention_rnn",
        "forward",
        _set(ATTENTION, "config.window", 2),
        422,
        "attention_rnn takes only k",
    ),
    (
        "attention_rnn",
        "forward",
        _set(ATTENTION, "config.k", 3),
        422,
        "Q must be [k+1, n, n] with k = 3",
    ),
    ("attention_rnn", "forward", _set(ATTENTION, "config.k", 1), 422, "set config.k to 2"),
    ("attention_rnn", "forward", _set(ATTENTION, "config.k", "inf"), 422, "[2, n, n] with k = inf"),
    ("attention_rnn", "forward", _set(ATTENTION, "inputs.x", [[1.0, 2.0, 3.0]]), 422, "Q must be"),
    (
        "attention_rnn",
        "forward",
        _set(ATTENTION, "inputs.x", [[[1.0, 2.0]]]),
        422,
        "x must be [T, n]",
    ),
    (
        "attention_rnn",
        "state-jacobians",
        _set(ATTENTION, "inputs.x", [[1.0, "a"]]),
        422,
        "not a number",
    ),
    (
        "attention_rnn",
        "forward",
        _set(ATTENTION, "params.Q", [[[1.0, 2.0]], [[1.0]]]),
        422,
        "ragged",
    ),
]


@pytest.mark.parametrize(("model", "operation", "body", "status", "fragment"), BAD_INPUTS)
def test_bad_rnn_input_is_a_4xx_problem_that_says_what_to_change(
    client: TestClient, model: str, operation: str, body: dict[str, Any], status: int, fragment: str
) -> None:
    if operation == "backward":
        body = {**body, "grad_outputs": body.get("grad_outputs", {})}
    if operation == "jacobian":
        body = {"of": "h", "wrt": "x", **body}
    response = client.post(f"/v1/models/{model}/{operation}", json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert fragment in response.json()["detail"]


LIMITED = [
    ("gated_rnn", "forward", gated_body(seq_len=5, m=2), 413, "max_sequence_length is 4"),
    ("gated_rnn", "forward", gated_body(seq_len=2, m=4), 413, "max_hidden_size is 3"),
    ("attention_rnn", "forward", attention_body(2, seq_len=5), 413, "max_sequence_length is 4"),
    ("attention_rnn", "forward", attention_body(2, seq_len=2, n=4), 413, "max_hidden_size is 3"),
    ("attention_rnn", "backward", attention_body(4, seq_len=2), 413, "max_k = 3"),
    ("attention_rnn", "state-jacobians", attention_body("inf", seq_len=4, n=3), 413, "30"),
    ("gated_rnn", "state-jacobians", gated_body(seq_len=4, m=3), 413, "state Jacobians"),
]


@pytest.mark.parametrize(("model", "operation", "body", "status", "fragment"), LIMITED)
def test_sizes_over_the_configured_limits_are_refused_naming_the_limit(
    tight: TestClient, model: str, operation: str, body: dict[str, Any], status: int, fragment: str
) -> None:
    if operation == "backward":
        body = {**body, "grad_outputs": {"h": [[0.0]]}}
    response = tight.post(f"/v1/models/{model}/{operation}", json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]


def test_inf_is_limited_by_sequence_length_not_by_max_k(tight: TestClient) -> None:
    response = tight.post("/v1/models/attention_rnn/forward", json=attention_body("inf", seq_len=4))
    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["a"]["shape"] == [4, 5]


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused(client: TestClient) -> None:
    response = client.post(
        "/v1/models/gated_rnn/state-jacobians", json={**gated_body(), "device": "cuda"}
    )
    assert response.status_code == 422
    assert "cuda" in response.json()["detail"]


# --- GPU ---------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize(
    ("model", "body"),
    [
        ("gated_rnn", gated_body()),
        ("attention_rnn", attention_body(2)),
        ("attention_rnn", attention_body("inf")),
    ],
)
@pytest.mark.parametrize("operation", ["forward", "backward", "state-jacobians"])
def test_cuda_answers_what_cpu_answers(
    client: TestClient, model: str, body: dict[str, Any], operation: str
) -> None:
    if operation == "backward":
        body = {**body, "grad_outputs": {"h": torch.ones(4, 2, dtype=F64).tolist()}}
    cpu = client.post(f"/v1/models/{model}/{operation}", json={**body, "device": "cpu"})
    gpu = client.post(f"/v1/models/{model}/{operation}", json={**body, "device": "cuda"})
    assert cpu.status_code == gpu.status_code == 200, gpu.text
    on_cpu, on_gpu = cpu.json(), gpu.json()
    assert on_cpu.keys() == on_gpu.keys()
    for key, value in on_cpu.items():
        if isinstance(value, dict) and "shape" in value:
            torch.testing.assert_close(array(on_gpu[key]), array(value), rtol=1e-9, atol=1e-12)
        elif isinstance(value, dict) and key != "terms":
            for name, tensor in value.items():
                torch.testing.assert_close(
                    array(on_gpu[key][name]), array(tensor), rtol=1e-9, atol=1e-12
                )
    if operation == "state-jacobians":
        assert on_gpu["verdict"] == on_cpu["verdict"]
        assert on_gpu["growth_factor"] == pytest.approx(on_cpu["growth_factor"], rel=1e-9)


# --- catalogue and OpenAPI ----------------------------------------------------------------------


def test_models_list_both_rnns_with_state_jacobians(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert "state-jacobians" in models["gated_rnn"]["operations"]
    assert "state-jacobians" in models["attention_rnn"]["operations"]
    assert "state-jacobians" not in models["conv1d"]["operations"]
    assert [p["shape"] for p in models["attention_rnn"]["params"]] == [["k+1", "n", "n"]] * 3
    h0 = models["gated_rnn"]["inputs"][1]
    assert h0["name"] == "h0" and h0["shape"] == ["m"] and h0["optional"] is True


def test_openapi_declares_state_jacobians_with_its_answer_problems_and_examples(
    client: TestClient,
) -> None:
    schema = client.get("/openapi.json").json()
    post = schema["paths"]["/v1/models/{model}/state-jacobians"]["post"]
    ok = post["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/StateJacobiansResponse")
    for status in ("404", "413", "422"):
        assert "application/problem+json" in post["responses"][status]["content"]
    examples = post["requestBody"]["content"]["application/json"]["examples"]
    assert {"gated-rnn", "attention-rnn-2", "attention-rnn-inf"} <= set(examples)
    forward = schema["paths"]["/v1/models/{model}/forward"]["post"]
    assert {"gated-rnn", "attention-rnn-2"} <= set(
        forward["requestBody"]["content"]["application/json"]["examples"]
    )
    backward = schema["components"]["schemas"]["BackwardResponse"]
    assert "state_grads" in backward["properties"]


EXAMPLES = [
    pytest.param(operation, name, example["value"], id=f"{operation}-{name}")
    for operation, catalogue in (
        ("forward", FORWARD_EXAMPLES),
        ("backward", BACKWARD_EXAMPLES),
        ("jacobian", JACOBIAN_EXAMPLES),
        ("state-jacobians", STATE_JACOBIAN_EXAMPLES),
    )
    for name, example in catalogue.items()
    if "rnn" in name
]


@pytest.mark.parametrize(("operation", "name", "body"), EXAMPLES)
def test_every_rnn_openapi_example_answers(
    client: TestClient, operation: str, name: str, body: dict[str, Any]
) -> None:
    model = "gated_rnn" if name.startswith("gated") else "attention_rnn"
    response = client.post(f"/v1/models/{model}/{operation}", json=body)
    assert response.status_code == 200, response.text
    if name == "attention-rnn-2" and operation == "forward":
        assert response.json()["outputs"]["a"]["shape"] == [4, 3]  # seed 1.2.2(b): a[t] in R^3

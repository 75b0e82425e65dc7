"""The generic model routes on the conv references: forward, backward, jacobian, errors."""

from __future__ import annotations

import base64
from typing import Any

import jsonschema_rs
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from models.errors import ModelError
from models.registry import get_model
from service.examples import BACKWARD_EXAMPLES, SEED_W_1x5x3, SEED_X_5x7

SEED = {"config": {"stride": 2}, "params": {"weight": SEED_W_1x5x3}, "inputs": {"x": SEED_X_5x7}}


def as_array(tensor: dict[str, Any]) -> np.ndarray:
    if "b64" in tensor:
        dtype = "<f8" if tensor["datatype"] == "FP64" else "<f4"
        return np.frombuffer(base64.b64decode(tensor["b64"]), dtype=dtype).reshape(tensor["shape"])
    return np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])


def seed_reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.array(
        [[sum(w[0, c, m] * x[c, 2 * i + m] for c in range(5) for m in range(3)) for i in range(3)]]
    )


def test_list_models_gives_symbolic_shapes(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert {"conv1d", "conv2d"} <= set(models)
    weight = next(p for p in models["conv1d"]["params"] if p["name"] == "weight")
    assert weight["shape"] == ["F", "C", "K"]
    assert models["conv2d"]["outputs"][0]["shape"] == ["F", "H_out", "W_out"]


def test_forward_of_the_seed_conv(client: TestClient) -> None:
    response = client.post("/v1/models/conv1d/forward", json=SEED)
    assert response.status_code == 200
    y = response.json()["outputs"]["y"]
    assert y["shape"] == [1, 3] and y["datatype"] == "FP64"
    np.testing.assert_allclose(
        as_array(y), seed_reference(np.array(SEED_X_5x7), np.array(SEED_W_1x5x3))
    )


@pytest.mark.parametrize(("wrt", "shape"), [("weight", [1, 3, 1, 5, 3]), ("x", [1, 3, 5, 7])])
def test_jacobian_shapes_of_the_seed(client: TestClient, wrt: str, shape: list[int]) -> None:
    response = client.post("/v1/models/conv1d/jacobian", json={**SEED, "of": "y", "wrt": wrt})
    assert response.status_code == 200
    assert response.json()["jacobian"]["shape"] == shape


def test_backward_gives_every_param_and_input(client: TestClient) -> None:
    upstream = [[1.0, -2.0, 3.0]]
    body = {**SEED, "params": {**SEED["params"], "bias": [0.5]}, "grad_outputs": {"y": upstream}}
    answer = client.post("/v1/models/conv1d/backward", json=body).json()
    assert set(answer["grads"]) == {"weight", "bias", "x"}
    assert as_array(answer["grads"]["bias"]).tolist() == [2.0]
    x = np.array(SEED_X_5x7, dtype=np.float64)
    expected = np.array(
        [
            [
                [sum(upstream[0][i] * x[c, 2 * i + m] for i in range(3)) for m in range(3)]
                for c in range(5)
            ]
        ]
    )
    np.testing.assert_allclose(as_array(answer["grads"]["weight"]), expected)


def test_b64_in_and_out_and_float32(client: TestClient) -> None:
    x = np.asarray(SEED_X_5x7, dtype="<f4")
    body = {
        **SEED,
        "inputs": {
            "x": {
                "shape": [5, 7],
                "datatype": "FP32",
                "b64": base64.b64encode(x.tobytes()).decode(),
            }
        },
        "encoding": "b64",
        "dtype": "float32",
    }
    y = client.post("/v1/models/conv1d/forward", json=body).json()["outputs"]["y"]
    assert y["datatype"] == "FP32" and "b64" in y
    np.testing.assert_allclose(as_array(y), seed_reference(x, np.array(SEED_W_1x5x3)), rtol=1e-6)


def test_cpu_device_is_honoured(client: TestClient) -> None:
    assert (
        client.post("/v1/models/conv1d/forward", json={**SEED, "device": "cpu"}).status_code == 200
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine with no GPU")
def test_cuda_without_a_gpu_is_refused_not_faked(client: TestClient) -> None:
    response = client.post("/v1/models/conv1d/forward", json={**SEED, "device": "cuda"})
    assert response.status_code == 422
    assert "no CUDA device" in response.json()["detail"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_answer(client: TestClient) -> None:
    cpu = client.post("/v1/models/conv1d/jacobian", json={**SEED, "of": "y", "wrt": "x"}).json()
    gpu = client.post(
        "/v1/models/conv1d/jacobian", json={**SEED, "of": "y", "wrt": "x", "device": "cuda"}
    ).json()
    np.testing.assert_allclose(as_array(gpu["jacobian"]), as_array(cpu["jacobian"]), rtol=1e-12)


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**base, **changes}


BAD: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("unknown model", "conv3d/forward", SEED, 404, "there is no model 'conv3d'"),
    (
        "channels",
        "conv1d/forward",
        with_(SEED, inputs={"x": [[1.0] * 7] * 4}),
        422,
        "x has 4 channels but weight expects 5",
    ),
    (
        "kernel too big",
        "conv1d/forward",
        with_(SEED, inputs={"x": [[1.0, 2.0]] * 5}),
        422,
        "effective kernel 3",
    ),
    (
        "weight rank",
        "conv1d/forward",
        with_(SEED, params={"weight": [[1.0, 2.0]]}),
        422,
        "weight must have rank 3",
    ),
    (
        "x rank",
        "conv2d/forward",
        with_(SEED, params={"weight": [[[[1.0]]]]}),
        422,
        "x must have rank 3",
    ),
    (
        "bias",
        "conv1d/forward",
        with_(SEED, params={"weight": SEED_W_1x5x3, "bias": [1.0, 2.0]}),
        422,
        "bias must have shape [1]",
    ),
    ("missing weight", "conv1d/forward", with_(SEED, params={}), 422, "'weight'"),
    (
        "param in inputs",
        "conv1d/forward",
        with_(SEED, inputs={"x": SEED_X_5x7, "weight": SEED_W_1x5x3}),
        422,
        "belongs in params",
    ),
    (
        "unknown input",
        "conv1d/forward",
        with_(SEED, inputs={"x": SEED_X_5x7, "z": [1.0]}),
        422,
        "unknown input 'z'",
    ),
    ("zero stride", "conv1d/forward", with_(SEED, config={"stride": 0}), 422, "at least 1"),
    (
        "negative dilation",
        "conv1d/forward",
        with_(SEED, config={"dilation": -1}),
        422,
        "at least 1",
    ),
    ("negative padding", "conv1d/forward", with_(SEED, config={"padding": -2}), 422, "at least 0"),
    (
        "unknown config",
        "conv1d/forward",
        with_(SEED, config={"groups": 2}),
        422,
        "unknown config key",
    ),
    ("empty tensor", "conv1d/forward", with_(SEED, inputs={"x": []}), 422, "empty"),
    (
        "ragged",
        "conv1d/forward",
        with_(SEED, inputs={"x": [[1.0] * 7] * 4 + [[1.0]]}),
        422,
        "inputs.x[4] has 1 entries",
    ),
    ("string", "conv1d/forward", with_(SEED, inputs={"x": [["a"] * 7] * 5}), 422, "a string"),
    (
        "over budget",
        "conv1d/forward",
        with_(SEED, inputs={"x": {"shape": [5, 10**8], "b64": ""}}),
        413,
        "limit per tensor",
    ),
    ("bad device", "conv1d/forward", with_(SEED, device="tpu"), 422, "device"),
    ("bad dtype", "conv1d/forward", with_(SEED, dtype="float16"), 422, "dtype"),
    ("unknown of", "conv1d/jacobian", with_(SEED, of="z", wrt="x"), 422, "no output 'z'"),
    (
        "unknown wrt",
        "conv1d/jacobian",
        with_(SEED, of="y", wrt="w"),
        422,
        "no parameter or input 'w'",
    ),
    (
        "absent optional wrt",
        "conv1d/jacobian",
        with_(SEED, of="y", wrt="bias"),
        422,
        "optional and was not given",
    ),
    (
        "jacobian budget",
        "conv1d/jacobian",
        with_(
            SEED,
            of="y",
            wrt="x",
            params={"weight": {"shape": [64, 50, 3], "data": [0.0] * 9600}},
            inputs={"x": {"shape": [50, 2000], "data": [0.0] * 100000}},
        ),
        413,
        "the limit is 16,000,000",
    ),
    (
        "grad shape",
        "conv1d/backward",
        with_(SEED, grad_outputs={"y": [[1.0, 2.0]]}),
        422,
        "grad_outputs.y has shape [1, 2] but output y has shape [1, 3]",
    ),
    (
        "grad unknown",
        "conv1d/backward",
        with_(SEED, grad_outputs={"z": [1.0]}),
        422,
        "no output 'z'",
    ),
    ("grad empty", "conv1d/backward", with_(SEED, grad_outputs={}), 422, "at least one"),
    ("grad missing", "conv1d/backward", SEED, 422, "grad_outputs"),
]


@pytest.mark.parametrize(
    ("case", "path", "body", "status", "words"), BAD, ids=[case[0] for case in BAD]
)
def test_bad_requests_are_problems_that_say_why(
    client: TestClient, case: str, path: str, body: dict[str, Any], status: int, words: str
) -> None:
    response = client.post(f"/v1/models/{path}", json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["title"] and problem["type"]
    assert words in problem["detail"], problem["detail"]


def test_a_missing_param_is_named_as_missing(client: TestClient) -> None:
    response = client.post("/v1/models/conv1d/forward", json=with_(SEED, params={}))
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {
            "loc": ["body", "params", "weight"],
            "msg": "param 'weight' ['F', 'C', 'K'] is required",
            "type": "MissingArgument",
        }
    ]


def test_jacobian_over_budget_is_refused_before_computing(client: TestClient) -> None:
    # 805M entries: conv2d, 3x64x64 input, 16 filters of 3x3, padding 1 (all declared, b64).
    x = np.zeros((3, 64, 64), dtype="<f8")
    w = np.zeros((16, 3, 3, 3), dtype="<f8")
    body = {
        "config": {"padding": 1},
        "params": {"weight": {"shape": [16, 3, 3, 3], "b64": base64.b64encode(w).decode()}},
        "inputs": {"x": {"shape": [3, 64, 64], "b64": base64.b64encode(x).decode()}},
        "of": "y",
        "wrt": "x",
    }
    response = client.post("/v1/models/conv2d/jacobian", json=body)
    assert response.status_code == 413
    assert "805,306,368 entries" in response.json()["detail"]


# Values of each config field, some accepted and some refused by the models themselves.
CONFIG_VALUES: list[Any] = [
    0,
    1,
    2,
    -1,
    [1],
    [0, 0],
    [1, 2],
    [2, 0],
    [1, 2, 3],
    "same",
    "valid",
    "inf",
    "full",
    1.5,
    None,
    True,
]


@pytest.mark.parametrize("name", ["conv1d", "conv2d", "attention_rnn"])
def test_the_listed_config_schemas_accept_what_the_model_accepts(
    client: TestClient, name: str
) -> None:
    """GET /v1/models documents each config field's JSON Schema: a client validating against
    it must accept every value the model takes (the default first) and, field by field, refuse
    what the model refuses."""
    model = get_model(name)
    listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}[name]
    for field in listed["config"]:
        schema = jsonschema_rs.validator_for(field["json_schema"])
        assert schema.is_valid(field["default"]), field
        for value in CONFIG_VALUES:
            try:
                model.parse_config({field["name"]: value})
                accepted = True
            except ModelError:
                accepted = False
            assert schema.is_valid(value) == accepted, (field["name"], value)


def b64_of(values: list[float], dtype: str) -> str:
    return base64.b64encode(np.asarray(values, dtype=dtype).tobytes()).decode()


PAST_FLOAT32 = [
    [[[1e39, 1.0]]],
    {"shape": [1, 1, 2], "data": [1e39, 1.0]},
    {"shape": [1, 1, 2], "data": [1e39, 1.0], "datatype": "FP32"},
    {"shape": [1, 1, 2], "datatype": "FP64", "b64": b64_of([1e39, 1.0], "<f8")},
]


@pytest.mark.parametrize("weight", PAST_FLOAT32, ids=["nested", "data", "data-FP32", "b64"])
def test_a_weight_past_float32_is_a_422_in_float32_whatever_its_form(
    client: TestClient, weight: Any
) -> None:
    """1e39 is past float32's largest finite value (3.4e38): in a float32 request it is
    refused naming the tensor and the range, however it is written (a nested list once gave
    Infinity outputs, where FP32 data was refused as "inf")."""
    body = {"params": {"weight": weight}, "inputs": {"x": [[1.0, 2.0, 3.0]]}, "dtype": "float32"}
    response = client.post("/v1/models/conv1d/forward", json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["detail"].startswith("params.weight: element [0, 0, 0] is 1e+39")
    assert "outside the range of float32" in problem["detail"]
    assert problem["errors"][0]["loc"] == ["body", "params", "weight"]


def test_a_grad_output_past_float32_is_a_422_naming_it(client: TestClient) -> None:
    body = {
        "params": {"weight": [[[1.0, 2.0]]]},
        "inputs": {"x": [[1.0, 2.0, 3.0]]},
        "grad_outputs": {"y": [[1.0, -1e39]]},
        "dtype": "float32",
    }
    response = client.post("/v1/models/conv1d/backward", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("grad_outputs.y: element [0, 1] is -1e+39")


def test_a_weight_past_float32_is_computed_in_float64(client: TestClient) -> None:
    body = {"params": {"weight": [[[1e39, 1.0]]]}, "inputs": {"x": [[1.0, 2.0, 3.0]]}}
    response = client.post("/v1/models/conv1d/forward", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["y"]["data"] == [[1e39 + 2.0, 2e39 + 3.0]]


@pytest.mark.parametrize(
    ("model", "example"),
    [("conv1d", "seed-1.1c-iv"), ("gated_rnn", "gated-rnn"), ("attention_rnn", "attention-rnn-2")],
)
def test_the_listing_names_what_backward_answers_beside_the_grads(
    client: TestClient, model: str, example: str
) -> None:
    listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}[model]
    response = client.post(f"/v1/models/{model}/backward", json=BACKWARD_EXAMPLES[example]["value"])
    assert response.status_code == 200, response.text
    answered = set(response.json()) - {"outputs", "grads", "device", "dtype", "nonfinite"}
    extras = {extra["name"] for extra in listed["backward_extras"]}
    assert extras == answered & extras and extras == ({"state_grads"} if "rnn" in model else set())
    assert "state_grads" in answered or "rnn" not in model


def test_state_jacobians_of_a_model_without_a_state_is_the_documented_404(
    client: TestClient,
) -> None:
    listed = client.get("/v1/models").json()["models"]
    recurrent = sorted(m["name"] for m in listed if "state-jacobians" in m["operations"])
    stateless = sorted(m["name"] for m in listed if "state-jacobians" not in m["operations"])
    assert recurrent and stateless
    paths = client.get("/openapi.json").json()["paths"]
    operation = paths["/v1/models/{model}/state-jacobians"]["post"]
    # The path offers only the models that have the operation; the others offer every model.
    (model,) = [p for p in operation["parameters"] if p["name"] == "model"]
    assert model["schema"]["enum"] == recurrent
    forward = paths["/v1/models/{model}/forward"]["post"]["parameters"][0]
    assert forward["schema"]["enum"] == sorted(m["name"] for m in listed)
    not_found = operation["responses"]["404"]["description"]
    for name in stateless:
        response = client.post(f"/v1/models/{name}/state-jacobians", json=SEED)
        assert response.status_code == 404
        kind = response.json()["type"].rsplit("/", 1)[1]
        assert kind == "unsupported-operation" and f"`{kind}`" in not_found
    unknown = client.post("/v1/models/lstm/state-jacobians", json=SEED).json()
    assert f"`{unknown['type'].rsplit('/', 1)[1]}`" in not_found
    assert ", ".join(recurrent) in not_found

"""Binary answers (``"encoding": "safetensors"``), base64 round trips and orjson body parsing."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors
import safetensors.numpy
import torch
from fastapi.testclient import TestClient

from service.examples import SEED_W_1x5x3, SEED_X_5x7
from service.responses import CHUNK_BYTES, read_safetensors_answer, to_safetensors

SEED = {"config": {"stride": 2}, "params": {"weight": SEED_W_1x5x3}, "inputs": {"x": SEED_X_5x7}}
TENSOR_PATHS = tuple(f"/v1/models/{{model}}/{op}" for op in ("forward", "backward", "jacobian"))


def as_array(tensor: dict[str, Any]) -> np.ndarray:
    if "b64" in tensor:
        dtype = "<f8" if tensor["datatype"] == "FP64" else "<f4"
        return np.frombuffer(base64.b64decode(tensor["b64"]), dtype=dtype).reshape(tensor["shape"])
    return np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])


def metadata_of(body: bytes, tmp_path: Path) -> dict[str, str]:
    """The header's ``__metadata__``, read by the safetensors library itself."""
    path = tmp_path / "answer.safetensors"
    path.write_bytes(body)
    with safetensors.safe_open(str(path), framework="numpy") as opened:
        metadata: dict[str, str] = opened.metadata()
    return metadata


def test_jacobian_as_safetensors_holds_the_json_answer(client: TestClient, tmp_path: Path) -> None:
    body = {**SEED, "of": "y", "wrt": "weight"}
    as_json = client.post("/v1/models/conv1d/jacobian", json=body).json()
    response = client.post("/v1/models/conv1d/jacobian", json={**body, "encoding": "safetensors"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    tensors = safetensors.numpy.load(response.content)
    assert list(tensors) == ["jacobian"]
    assert tensors["jacobian"].dtype == np.float64 and tensors["jacobian"].shape == (1, 3, 1, 5, 3)
    np.testing.assert_array_equal(tensors["jacobian"], as_array(as_json["jacobian"]))
    assert metadata_of(response.content, tmp_path) == {
        "of": '"y"',
        "wrt": '"weight"',
        "method": f'"{as_json["method"]}"',
    }
    answer = read_safetensors_answer(response.content)
    assert {k: v for k, v in answer.items() if k != "jacobian"} == {
        "of": "y",
        "wrt": "weight",
        "method": as_json["method"],
    }


def test_backward_as_safetensors_joins_nested_names_with_dots(client: TestClient) -> None:
    body = {
        **SEED,
        "params": {"weight": SEED_W_1x5x3, "bias": [0.5]},
        "grad_outputs": {"y": [[1, -2, 3]]},
    }
    as_json = client.post("/v1/models/conv1d/backward", json=body).json()
    response = client.post("/v1/models/conv1d/backward", json={**body, "encoding": "safetensors"})
    assert response.status_code == 200
    tensors = safetensors.numpy.load(response.content)
    assert set(tensors) == {"outputs.y", "grads.weight", "grads.bias", "grads.x"}
    for name, array in tensors.items():
        section, key = name.split(".")
        np.testing.assert_array_equal(array, as_array(as_json[section][key]))


def test_float32_answers_stay_float32_in_safetensors(client: TestClient) -> None:
    body = {**SEED, "dtype": "float32", "encoding": "safetensors"}
    response = client.post("/v1/models/conv1d/forward", json=body)
    y = safetensors.numpy.load(response.content)["outputs.y"]
    expected = client.post("/v1/models/conv1d/forward", json={**SEED, "dtype": "float32"}).json()
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, as_array(expected["outputs"]["y"]).astype(np.float32))


def test_b64_in_and_out_round_trips_the_json_answer(client: TestClient) -> None:
    def b64(values: Any) -> dict[str, Any]:
        array = np.asarray(values, dtype="<f8")
        return {"shape": list(array.shape), "b64": base64.b64encode(array.tobytes()).decode()}

    body = {**SEED, "of": "y", "wrt": "x"}
    as_json = client.post("/v1/models/conv1d/jacobian", json=body).json()
    binary = {
        **body,
        "params": {"weight": b64(SEED_W_1x5x3)},
        "inputs": {"x": b64(SEED_X_5x7)},
        "encoding": "b64",
    }
    as_b64 = client.post("/v1/models/conv1d/jacobian", json=binary).json()
    assert "data" not in as_b64["jacobian"]
    np.testing.assert_array_equal(as_array(as_b64["jacobian"]), as_array(as_json["jacobian"]))


def test_errors_stay_problem_details_when_safetensors_is_asked(client: TestClient) -> None:
    body = {**SEED, "inputs": {"x": [[1.0] * 7] * 4}, "encoding": "safetensors"}
    response = client.post("/v1/models/conv1d/forward", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert "x has 4 channels" in response.json()["detail"]


def test_an_unknown_encoding_is_refused(client: TestClient) -> None:
    response = client.post("/v1/models/conv1d/forward", json={**SEED, "encoding": "npy"})
    assert response.status_code == 422
    assert "encoding" in response.json()["detail"]


def test_openapi_says_200_may_be_octet_stream(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in TENSOR_PATHS:
        content = paths[path]["post"]["responses"]["200"]["content"]
        assert set(content) == {"application/json", "application/octet-stream"}, path
        assert content["application/json"]["schema"]["$ref"].endswith("Response")
        assert content["application/octet-stream"]["schema"]["format"] == "binary"


def test_safetensors_keeps_nested_fields_empty_sections_and_non_finite_values() -> None:
    answer = {
        "outputs": {"h": torch.tensor([[1.0, float("nan")]]), "steps": 2},
        "grads": {},
        "norms": [1.5, 2.0],
        "verdict": "exploding",
    }
    body = to_safetensors(answer)
    tensors = safetensors.numpy.load(body)
    assert set(tensors) == {"outputs.h"}
    back = read_safetensors_answer(body)
    assert back["outputs"]["steps"] == 2 and back["grads"] == {}
    assert back["norms"] == [1.5, 2.0] and back["verdict"] == "exploding"
    assert back["outputs"]["h"][0, 0] == 1.0 and np.isnan(back["outputs"]["h"][0, 1])
    assert back["nonfinite"] == {"outputs.h": 1}  # "outputs.h.nonfinite" in the header


def test_finite_values_whose_sum_overflows_are_not_counted_non_finite() -> None:
    # The count starts from the tensor's sum, which overflows here with every entry finite.
    big = torch.tensor([1e308, 1e308, -1.0], dtype=torch.float64)
    body = to_safetensors({"y": big})
    assert body == safetensors.numpy.save({"y": big.numpy()})  # no metadata at all
    assert "nonfinite" not in read_safetensors_answer(body)


def test_the_file_is_the_one_the_safetensors_library_writes() -> None:
    """Header and data as ``safetensors.numpy.save`` writes them: the same length, the same
    JSON (the library orders metadata keys by a hash map, so the headers are compared as
    JSON, tensor order included) and the same data bytes; and the library reads it back."""
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 5, generator=gen).float()
    gx = torch.randn(7, generator=gen, dtype=torch.float64)
    note = 'a "quote", é, a tab\t, a \x01 and a line\n'
    answer = {
        "outputs": {"y": y, "h": h},
        "grads": {"x": gx, "none": {}},
        "of": "y",
        "note": note,
        "steps": [1, 2.5],
    }
    expected_tensors = {"outputs.y": y.numpy(), "outputs.h": h.numpy(), "grads.x": gx.numpy()}
    expected_metadata = {
        "grads.none": "{}",
        "of": '"y"',
        "note": json.dumps(note, ensure_ascii=False, separators=(",", ":")),
        "steps": "[1,2.5]",
    }
    ours = to_safetensors(answer)
    library = safetensors.numpy.save(expected_tensors, metadata=expected_metadata)
    length = int.from_bytes(library[:8], "little")
    assert int.from_bytes(ours[:8], "little") == length and length % 8 == 0
    assert len(ours) == len(library) and ours[8 + length :] == library[8 + length :]
    header, theirs = json.loads(ours[8 : 8 + length]), json.loads(library[8 : 8 + length])
    assert header == theirs and list(header) == list(theirs)  # F64 first, then by name
    loaded = safetensors.numpy.load(ours)
    assert set(loaded) == set(expected_tensors)
    for name, array in expected_tensors.items():
        assert loaded[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded[name], array)
    assert header["__metadata__"] == expected_metadata
    # Without metadata the library's file is deterministic: the same bytes.
    assert to_safetensors({"jacobian": h}) == safetensors.numpy.save({"jacobian": h.numpy()})


def test_reading_a_safetensors_answer_shares_the_body_and_agrees_with_the_library() -> None:
    gen = torch.Generator().manual_seed(6)
    answer = {
        "outputs": {"y": torch.randn(2, 3, generator=gen).float()},
        "grads": {"x": torch.randn(4, generator=gen, dtype=torch.float64)},
        "method": "closed-form",
    }
    body = to_safetensors(answer)
    back = read_safetensors_answer(body)
    library = safetensors.numpy.load(body)
    assert back["method"] == "closed-form"
    for section, name in (("outputs", "y"), ("grads", "x")):
        array = back[section][name]
        np.testing.assert_array_equal(array, library[f"{section}.{name}"])
        np.testing.assert_array_equal(array, answer[section][name].numpy())  # type: ignore[index]
        assert array.dtype == library[f"{section}.{name}"].dtype and not array.flags.writeable
        assert np.shares_memory(array, np.frombuffer(body, dtype=np.uint8))


def _with_header(header: dict[str, Any], data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"\x01\x00", "shorter than the 8 bytes"),
        ((1000).to_bytes(8, "little") + b"{}", "a 1,000-byte header in 10 bytes"),
        ((2).to_bytes(8, "little") + b"{]", "the header is not JSON"),
        (_with_header([1]), "not a JSON object"),  # type: ignore[arg-type]
        (_with_header({"t": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}), "F8"),
        (_with_header({"t": {"dtype": "F64", "shape": [2], "data_offsets": [0, 8]}}, b"0" * 16),
         "do not hold (2,) of F64"),
        (_with_header({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"0" * 4),
         "bytes 0-8"),
        (_with_header({"__metadata__": {"of": '"y"', "of.x": "1"}}),
         "of.x: a field inside of, which is not an object"),
        (_with_header({"t": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]},
                       "__metadata__": {"t.shape": "[1]"}}, b"0" * 8),
         "t.shape: a field inside t, which is not an object"),
    ],
)  # fmt: skip
def test_a_body_that_is_not_safetensors_is_a_clear_error(body: bytes, words: str) -> None:
    with pytest.raises(ValueError) as error:
        read_safetensors_answer(body)
    assert words in str(error.value)


FORWARD = b'{"params": {"weight": [[[1, 0, -1]]]}, "inputs": {"x": [[1, 2, %s]]}}'


@pytest.mark.parametrize(
    ("path", "raw", "words"),
    [
        ("models/conv1d/forward", FORWARD % b"NaN", "`NaN` at line 1 column 64 is not"),
        ("models/conv1d/forward", FORWARD % b"Infinity", "`Infinity` at line 1 column 64"),
        ("models/conv1d/forward", FORWARD % b"-Infinity", "`-Infinity` at line 1 column 64"),
        ("models/conv1d/forward", FORWARD % b"3]", "not valid JSON"),
        ("models/conv1d/forward", (FORWARD % b"3")[:-3], "not valid JSON: unexpected end"),
        ("models/conv1d/forward", FORWARD % b'"\xff"', "not valid UTF-8: byte 0xff at line 1"),
        ("shapes/conv", b'{"input_size": [5], "kernel_size": 3', "not valid JSON"),
        (
            "shapes/conv",
            b'{"input_size": [5], "kernel_size": "\xff"}',
            "byte 0xff at line 1 column 37",
        ),
        ("shapes/conv", b'\xef\xbb\xbf{"input_size": [5], "kernel_size": 3}', "byte order mark"),
    ],
)
def test_bodies_that_are_not_json_are_422_problems_that_say_where(
    client: TestClient, path: str, raw: bytes, words: str
) -> None:
    response = client.post(f"/v1/{path}", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert words in problem["detail"], problem["detail"]
    assert "line 1 column" in problem["detail"]
    assert problem["errors"][0]["type"] == "json_invalid"
    if "NaN" in words or "Infinity" in words:
        assert "is not a JSON number: only finite numbers are accepted" in problem["detail"]
        assert problem["type"].endswith("/non-finite-number")


@pytest.mark.parametrize("path", ["shapes/conv", "models/conv1d/forward", "check"])
def test_a_nan_token_is_the_same_problem_on_every_route(client: TestClient, path: str) -> None:
    # The fast path of /v1/shapes/conv, the model routes and the checking routes read their
    # bodies differently; all of them are behind the one strict parser, so one wording.
    raw = b'{"input_size": [NaN], "kernel_size": 3}'
    response = client.post(f"/v1/{path}", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    problem = response.json()
    assert problem["detail"] == (
        "`NaN` at line 1 column 17 is not a JSON number: only finite numbers are accepted, "
        "so send a finite value instead"
    )
    assert problem["errors"][0]["loc"] == ["body"]


def test_a_body_larger_than_one_chunk_arrives_whole(client: TestClient) -> None:
    rng = np.random.default_rng(5)
    body = {
        "params": {"weight": rng.standard_normal((8, 8, 3)).tolist()},
        "inputs": {"x": rng.standard_normal((8, 100)).tolist()},
        "of": "y",
        "wrt": "x",
    }
    response = client.post("/v1/models/conv1d/jacobian", json={**body, "encoding": "safetensors"})
    assert len(response.content) > 4 * CHUNK_BYTES
    assert int(response.headers["content-length"]) == len(response.content)
    jacobian = safetensors.numpy.load(response.content)["jacobian"]
    as_json = client.post("/v1/models/conv1d/jacobian", json={**body, "encoding": "b64"}).json()
    np.testing.assert_array_equal(jacobian, as_array(as_json["jacobian"]))

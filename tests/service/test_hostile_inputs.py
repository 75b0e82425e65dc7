"""What a fuzzer from the schema never sends: each is a 4xx problem detail, and the service is
healthy after it (it still answers /healthz and computes the seed's convolution)."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.examples import SEED_W_1x5x3, SEED_X_5x7
from service.settings import Settings
from tests.keys import SECRET

SEED = {"config": {"stride": 2}, "params": {"weight": SEED_W_1x5x3}, "inputs": {"x": SEED_X_5x7}}
JSON = {"content-type": "application/json"}
MB = 2**20


def with_x(x_text: str) -> str:
    """The seed's forward body as text, with ``x`` replaced by the given JSON text."""
    return json.dumps({**SEED, "inputs": {"x": "@X@"}}).replace('"@X@"', x_text)


def with_(**changes: Any) -> dict[str, Any]:
    return {**SEED, **changes}


@pytest.fixture
def healthy(client: TestClient) -> Iterator[TestClient]:
    """The client, and a check after the test that the service still serves and computes."""
    yield client
    assert client.get("/healthz").status_code == 200
    answer = client.post("/v1/models/conv1d/forward", json=SEED)
    assert answer.status_code == 200 and answer.json()["outputs"]["y"]["shape"] == [1, 3]


def assert_problem(status: int, response: Any, words: str) -> None:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/problem+json"
    assert words in response.json()["detail"], response.json()["detail"][:500]


RAW: list[tuple[str, str, bytes | str, int, str]] = [
    ("nan", "/v1/models/conv1d/forward", with_x("[[NaN]]"), 422, "`NaN`"),
    ("infinity", "/v1/models/conv1d/forward", with_x("[[-Infinity]]"), 422, "`-Infinity`"),
    ("1e400", "/v1/models/conv1d/forward", with_x("[[1e400]]"), 422, "too large for a float64"),
    (
        "5000-digit integer",
        "/v1/shapes/conv",
        '{"input_size": [' + "7" * 5000 + '], "kernel_size": 3}',
        422,
        "too large for a float64",
    ),
    (
        "100k levels of nesting",
        "/v1/models/conv1d/forward",
        with_x("[" * 100_000 + "]" * 100_000),
        422,
        "nested more than 1024 levels",
    ),
    ("exponent bomb", "/v1/shapes/conv", '{"input_size": [1e999999999]}', 422, "too large"),
    (
        "60k-digit mantissa",  # a shape's body takes at most 64 KiB
        "/v1/shapes/conv",
        '{"input_size": [0.' + "3" * 60_000 + '], "kernel_size": 1}',
        422,
        "input_size",
    ),
    ("NUL byte in the body", "/v1/shapes/conv", b'{"input_size": [7]\x00}', 422, "not valid JSON"),
    ("lone surrogate", "/v1/shapes/conv", b'{"padding": "\xed\xa0\x80"}', 422, "UTF-8"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [case[1:] for case in RAW],
    ids=[case[0] for case in RAW],
)
def test_hostile_raw_bodies(
    healthy: TestClient, path: str, body: bytes | str, status: int, words: str
) -> None:
    assert_problem(status, healthy.post(path, content=body, headers=JSON), words)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


SHAPED: list[tuple[str, str, dict[str, Any], int, str]] = [
    (
        "huge declared shape, tiny data",
        "conv1d/forward",
        with_(inputs={"x": {"shape": [100_000, 100_000], "data": [1.0]}}),
        413,
        "10,000,000,000 elements",
    ),
    (
        "null element",
        "conv1d/forward",
        with_(inputs={"x": {"shape": [1, 3], "data": [1, 2, None]}}),
        422,
        "inputs.x.data[2] is null, not a number",
    ),
    (
        "shape past 64 bits",
        "conv1d/forward",
        with_(inputs={"x": {"shape": [2**64], "data": [1]}}),
        422,
        "1.8446744073709552e+19 is not one",
    ),
    (
        "huge declared shape, tiny b64",
        "conv1d/forward",
        with_(inputs={"x": {"shape": [10**15], "b64": "AAAAAAAAAAA="}}),
        413,
        "limit per tensor",
    ),
    (
        "within-budget shape, tiny data",
        "conv1d/forward",
        with_(inputs={"x": {"shape": [5, 100_000], "data": [1.0]}}),
        422,
        "`data` has 1 numbers but shape [5, 100000] needs 500000",
    ),
    (
        "bad base64 alphabet",
        "conv1d/forward",
        with_(inputs={"x": {"shape": [5, 7], "b64": "!" * 376}}),
        422,
        "not valid base64",
    ),
    (
        "base64 of the wrong length",
        "conv1d/forward",
        with_(inputs={"x": {"shape": [5, 7], "b64": b64(b"\x00" * 8)}}),
        422,
        "needs 280",
    ),
    (
        "base64 without its padding",
        "conv1d/forward",
        with_(inputs={"x": {"shape": [5, 7], "b64": b64(b"\x00" * 280).rstrip("=")}}),
        422,
        "`b64` has 374 characters, not a multiple of 4 as base64 is: its `=` padding is missing",
    ),
    (
        "base64 of NaN bytes",
        "conv1d/forward",
        with_(inputs={"x": {"shape": [1], "b64": b64(b"\x00" * 6 + b"\xf8\x7f")}}),
        422,
        "only finite numbers",
    ),
    ("NUL in a device name", "conv1d/forward", with_(device="cpu\x00"), 422, "device"),
    (
        "NUL in a tensor name",
        "conv1d/forward",
        with_(params={"weight\x00": SEED_W_1x5x3}),
        422,
        "unknown param",
    ),
    ("NUL in a model name", "conv1d%00/forward", SEED, 404, "no model"),
    ("fullwidth model name", "\uff43\uff4f\uff4e\uff56\uff11\uff44/forward", SEED, 404, "no model"),
    (
        "unicode of/wrt names",
        "conv1d/jacobian",
        with_(of="y\u0301", wrt="\u202ex"),
        422,
        "no output",
    ),
    (
        "100k unknown tensor names",
        "conv1d/forward",
        with_(params={f"p{i}": [1.0] for i in range(100_000)}),
        422,
        "at most 64 items",  # refused by their count before they are read
    ),
    (
        "bool where a number is expected",
        "conv1d/forward",
        with_(inputs={"x": [[True] * 7] * 5}),
        422,
        "a boolean",
    ),
    (
        "tensor objects nested 400 deep as data",  # recursed to a 500
        "conv1d/forward",
        with_(inputs={"x": functools.reduce(lambda v, _: {"shape": [], "data": v}, range(400), 3)}),
        422,
        "got an object",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [case[1:] for case in SHAPED],
    ids=[case[0] for case in SHAPED],
)
def test_hostile_model_requests(
    healthy: TestClient, path: str, body: dict[str, Any], status: int, words: str
) -> None:
    assert_problem(status, healthy.post(f"/v1/models/{path}", json=body), words)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"input_size": [7], "kernel_size": 3, "padding": "\uff53\uff41\uff4d\uff45"}, "padding"),
        ({"input_size": [7], "kernel_size": 3, "padding": "same\u200b"}, "padding"),
        ({"input_size": ["\u0667"], "kernel_size": 3}, "input_size"),  # an Arabic-Indic 7
        ({"input_size": [7], "kernel_size": 3, "\u0073tride": 1, "str\u0131de": 1}, "str\u0131de"),
        ({"input_size": [7] * 4, "kernel_size": 3}, "1 to 3"),
        ({"input_size": [2**40], "kernel_size": 3}, "at most 2147483647"),
        ({"input_size": [5], "kernel_size": 3, "out_channels": 2**64}, "out_channels"),
        ({"input_size": [5], "kernel_size": 3, "in_channels": 2**70}, "in_channels"),
    ],
    ids=[
        "fullwidth",
        "zero-width",
        "arabic digit",
        "dotless i",
        "rank 4",
        "huge size",
        "2**64 out",
        "2**70 in",
    ],
)
def test_hostile_shape_requests(healthy: TestClient, body: dict[str, Any], words: str) -> None:
    assert_problem(422, healthy.post("/v1/shapes/conv", json=body), words)


def test_a_60_mb_body_is_refused(healthy: TestClient) -> None:
    body = b'{"device": "' + b"a" * (60 * MB) + b'"}'
    assert_problem(
        422, healthy.post("/v1/models/conv1d/forward", content=body, headers=JSON), "device"
    )


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_60_mb_body_over_a_50_mb_limit_is_413(chunked: bool) -> None:
    def body() -> Iterator[bytes]:
        for _ in range(60):
            yield b" " * MB

    with TestClient(create_app(Settings(max_body_bytes=50 * MB))) as client:
        content = body() if chunked else b"".join(body())
        response = client.post("/v1/models/conv1d/forward", content=content, headers=JSON)
        assert_problem(413, response, "limit")
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None])
@pytest.mark.parametrize(
    "path",
    ["/v1/check", "/v1/check/batch", "/v1/models/conv1d/forward", "/v1/diagnostics/loss-curve"],
)
def test_a_body_not_sent_as_json_says_to_send_it_as_json(
    healthy: TestClient, path: str, content_type: str | None
) -> None:
    """curl's ``-d`` without ``-H 'content-type: application/json'`` sends a form: the answer
    says which header to send, not that an "object to extract fields from" is missing."""
    headers = {"content-type": content_type} if content_type else {}
    response = healthy.post(path, content=b'{"checks": []}', headers=headers)
    assert_problem(422, response, "Content-Type: application/json")
    assert response.json()["title"] == "The body is not JSON"
    assert (content_type or "missing") in response.json()["detail"]


def nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


DEEP_PLACES = {
    "a value's key": '{"expected": {"op": "value", "value": @}, "answer": [1]}',
    "a conv's stride": '{"expected": {"op": "forward", "model": "conv1d", "config": {"stride": @},'
    ' "params": {"weight": [[[1]]]}, "inputs": {"x": [[1, 2]]}}, "answer": [[1, 2]]}',
    "a weight": '{"expected": {"op": "forward", "model": "conv1d", "params": {"weight": @},'
    ' "inputs": {"x": [[1, 2]]}}, "answer": [[1, 2]]}',
    "attention's k": '{"expected": {"op": "forward", "model": "attention_rnn", "config": {"k": @},'
    ' "params": {}, "inputs": {}}, "answer": [1]}',
}


@pytest.mark.parametrize("depth", [254, 300, 1000])
@pytest.mark.parametrize("place", sorted(DEEP_PLACES))
def test_values_nested_deeper_than_json_can_be_written_are_refused(
    healthy: TestClient, place: str, depth: int
) -> None:
    """The parser allows 1024 levels; orjson writes 254, and the check's key is identified by
    writing its ``expected``: a deeper one is refused by its own validation, never a 500."""
    check = DEEP_PLACES[place].replace("@", nested(depth))
    single = healthy.post("/v1/check", content=check, headers=JSON)
    assert single.status_code in (413, 422), single.text[:300]
    assert single.headers["content-type"] == "application/problem+json"
    batch = healthy.post("/v1/check/batch", content=f'{{"checks": [{check}]}}', headers=JSON)
    assert batch.status_code == 200, batch.text[:300]
    assert batch.json()["results"][0]["error"]["status"] == single.status_code


@pytest.mark.parametrize("depth", [3, 1000])
def test_a_nested_window_k_is_named_by_its_kind(healthy: TestClient, depth: int) -> None:
    body = '{"config": {"k": @}, "params": {}, "inputs": {}}'.replace("@", nested(depth))
    answer = healthy.post("/v1/models/attention_rnn/forward", content=body, headers=JSON)
    assert_problem(422, answer, 'k must be an integer >= 1 or "inf", got a list')


LONG = "q" * 100_000
ECHOED = [
    ("/v1/models/conv1d/forward", {**SEED, "inputs": {**SEED["inputs"], LONG: [[1]]}}),
    ("/v1/models/conv1d/forward", {**SEED, "config": {"padding": LONG}}),
    ("/v1/check", {"expected": {"op": "forward", "model": LONG}, "answer": 1}),
    # A shape's body takes at most 64 KiB.
    ("/v1/shapes/conv", {"input_size": [7], "kernel_size": 3, "padding": LONG[:60_000]}),
    ("/v1/models/conv1d/forward", {**SEED, "config": {LONG: 1}}),
]


@pytest.mark.parametrize(("path", "body"), ECHOED, ids=range(len(ECHOED)))
def test_a_long_name_is_not_echoed_in_full(
    healthy: TestClient, path: str, body: dict[str, Any]
) -> None:
    """A message quotes what was sent; a 100k-character name came back three times over (in
    `detail`, `msg` and `loc`). Each text is clipped, and says how much is left out."""
    response = healthy.post(path, json=body)
    assert response.status_code == 422, response.text[:300]
    assert len(response.content) < 20_000, len(response.content)
    assert LONG[:2001] not in response.text


@pytest.fixture(scope="module")
def student_routes() -> Iterator[TestClient]:
    """A service with a variant secret, so that its student routes are open."""
    with TestClient(create_app(Settings(variant_secret=SECRET))) as client:
        yield client


DEEP_TENSORS = {
    "shape": '{"shape": @, "b64": ""}',
    "a size in shape": '{"shape": [1, @], "b64": ""}',
    "datatype": '{"shape": [1, 1], "datatype": @, "data": [1]}',
    "an entry of data": '{"shape": [1, 2], "data": [1, @]}',
}


@pytest.mark.parametrize("depth", [1000, 3000])
@pytest.mark.parametrize("place", sorted(DEEP_TENSORS))
def test_a_tensor_nested_a_thousand_levels_deep_is_a_4xx_on_every_route(
    healthy: TestClient, student_routes: TestClient, place: str, depth: int
) -> None:
    """A list ~1000 levels deep in a tensor object's ``shape`` or ``datatype`` was quoted with
    ``repr`` (a RecursionError): a 500 from a 2 KB body, on every route that reads a tensor,
    and a batch failed whole. Below the parser's 1024 levels it is an invalid tensor now;
    past them, the body is refused as JSON."""
    tensor = DEEP_TENSORS[place].replace("@", nested(depth))
    bodies = {
        "/v1/models/conv1d/forward": (
            f'{{"params": {{"weight": {tensor}}}, "inputs": {{"x": [[1]]}}}}'
        ),
        "/v1/check": f'{{"expected": {{"op": "value", "value": [[1]]}}, "answer": {tensor}}}',
    }
    for path, body in bodies.items():
        assert_problem(422, healthy.post(path, content=body, headers=JSON), "")
    key = f'{{"expected": {{"op": "value", "value": {tensor}}}, "answer": [[1]]}}'
    assert_problem(422, healthy.post("/v1/check", content=key, headers=JSON), "")
    batch = healthy.post("/v1/check/batch", content=f'{{"checks": [{key}]}}', headers=JSON)
    if depth < 1024:
        assert batch.status_code == 200, batch.text[:300]
        error = batch.json()["results"][0]["error"]
        assert error["status"] == 422 and error["title"] == "A tensor is not valid"
    else:
        assert_problem(422, batch, "nested more than 1024 levels")
    student = '{"student_id": "ada", "answer": @}'.replace("@", tensor)
    answers = '{"student_id": "ada", "answers": {"1.1c-i": @}}'.replace("@", tensor)
    for path, body in (
        ("/v1/assignments/cnn-rnn/problems/1.1c-i/check", student),
        ("/v1/assignments/cnn-rnn/grade", answers),
    ):
        response = student_routes.post(path, content=body, headers=JSON)
        if depth < 1024:  # a student's malformed answer is graded as one, not refused
            assert response.status_code == 200, response.text[:300]
            graded = response.json()
            graded = graded["problems"]["1.1c-i"] if "problems" in graded else graded
            assert graded["status"] == "malformed", graded
            assert "answer" in graded["feedback"]["reason"], graded
        else:
            assert_problem(422, response, "nested more than 1024 levels")

"""The body limits of the routes that take less than the service's limit, and the bodies sent
to paths no route answers: neither is read or parsed past what its route could take."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from starlette.types import Message

from service.app import create_app, route_body_limits
from service.routes import diagnostics, shapes
from service.settings import CURVE_BYTES_PER_VALUE, SMALL_BODY_BYTES, Settings
from tests.keys import STUDENT, key, keyed_settings
from tests.service.test_edge import http_scope

JSON = {"content-type": "application/json"}
SHAPE = {"input_size": [7], "kernel_size": 3}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings())) as test_client:
        yield test_client


def asgi_post(
    app: Any, path: str, body: bytes, *, declare: bool = True, method: str = "POST"
) -> tuple[int, int, bytes]:
    """POST (or ``method``) ``body`` to ``app`` in chunks of 16 KiB, its length declared or
    not (chunked): the status, how many chunks the app (with its edge) asked for, and the
    answer's body."""
    chunks = [body[i : i + 16384] for i in range(0, len(body), 16384)] or [b""]
    scope = {**http_scope("application/json", path), "method": method}
    if declare:
        scope["headers"].append((b"content-length", str(len(body)).encode()))
    asked = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal asked
        asked += 1
        if asked <= len(chunks):
            return {
                "type": "http.request",
                "body": chunks[asked - 1],
                "more_body": asked < len(chunks),
            }
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    async def main() -> None:
        with anyio.fail_after(30):
            await app(scope, receive, send)

    anyio.run(main)
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], asked, answer


def padded(body: dict[str, Any], size: int) -> bytes:
    """``body`` as JSON of exactly ``size`` bytes, padded with spaces (still the same JSON)."""
    text = json.dumps(body).encode()
    return text[:-1] + b" " * (size - len(text)) + b"}"


def test_a_shape_body_over_its_limit_is_refused_before_a_byte_is_read(client: TestClient) -> None:
    """60 MB of a shape request held the event loop 10 s, parsed, before its 422."""
    status, asked, answer = asgi_post(client.app, "/v1/shapes/conv", padded(SHAPE, 200_000))
    assert (status, asked) == (413, 0)
    problem = json.loads(answer)
    assert problem["type"].endswith("/body-too-large")
    assert problem["detail"] == (
        "the request body declares 200,000 bytes; POST /v1/shapes/conv takes at most 65,536"
    )


def test_a_chunked_shape_body_is_refused_as_it_passes_its_limit(client: TestClient) -> None:
    status, asked, answer = asgi_post(
        client.app, "/v1/shapes/conv", padded(SHAPE, 200_000), declare=False
    )
    assert status == 413
    assert asked == 5  # 16 KiB at a time: the fifth passes 64 KiB
    assert json.loads(answer)["detail"] == (
        "the request body is larger than the 65,536 bytes POST /v1/shapes/conv takes; send less"
    )


@pytest.mark.parametrize("declare", [True, False])
def test_a_shape_body_at_its_limit_is_answered(client: TestClient, declare: bool) -> None:
    status, _, answer = asgi_post(
        client.app, "/v1/shapes/conv", padded(SHAPE, SMALL_BODY_BYTES), declare=declare
    )
    assert status == 200, answer[:300]
    assert json.loads(answer)["output_size"] == [5]


def test_an_experiment_body_over_its_limit_is_refused(client: TestClient) -> None:
    body = padded({"epochs": 1}, 100_000)
    status, asked, _ = asgi_post(client.app, "/v1/experiments/temporal-order", body)
    assert (status, asked) == (413, 0)


@pytest.mark.parametrize("declare", [True, False])
@pytest.mark.parametrize("path", ["/v1/nowhere", "/v1/shapes/conv/more", "/v1/info"])
def test_a_large_body_to_a_path_no_route_takes_it_on_is_never_read(
    client: TestClient, path: str, declare: bool
) -> None:
    """204 MB of empty lists sent to a path that does not exist held the loop 21 s and took
    5.9 GB before its 404: the router's 404 (and 405: /v1/info answers GET) reads no body."""
    body = json.dumps({"x": [[]] * 50_000}).encode()  # 350 kB
    status, asked, _ = asgi_post(client.app, path, body, declare=declare)
    assert status == (405 if path == "/v1/info" else 404)
    assert asked == 0


def test_a_large_body_to_a_route_without_a_limit_of_its_own_is_read(client: TestClient) -> None:
    x = [[0.5] * 20_000] * 5  # about 500 kB, under the service's limit
    body = {"params": {"weight": [[[1.0]] * 5]}, "inputs": {"x": x}}
    text = json.dumps(body).encode()
    assert len(text) > 4 * SMALL_BODY_BYTES
    status, asked, answer = asgi_post(client.app, "/v1/models/conv1d/forward", text)
    assert status == 200, answer[:300]
    assert asked == -(-len(text) // 16384)
    assert json.loads(answer)["outputs"]["y"]["shape"] == [1, 20_000]


def test_the_loss_curve_takes_its_values_pretty_printed_and_its_accuracies() -> None:
    """At its value cap, a curve and its accuracies, one value a line, fit its limit."""
    settings = Settings(loss_curve_max_values=2_000)
    limit = settings.route_body_limits()["POST /v1/diagnostics/loss-curve"]
    assert limit == 2 * 2_000 * 48 + SMALL_BODY_BYTES
    draw = random.Random(0).random  # 17 or 18 digits each, as a real run's values print
    losses = [[1.386 - 0.0005 * e + 0.01 * draw() for _ in range(100)] for e in range(20)]
    accuracies = [[draw() for _ in range(100)] for _ in range(20)]
    body = {"batch_losses": losses, "batch_accuracies": accuracies, "num_classes": 4}
    text = json.dumps(body, indent=4).replace("\n", "\r\n").encode()  # CRLF, as on Windows
    # Within the bytes a value is given, the 64 KiB aside (a curve at the default cap of a
    # million values has 0.03 bytes a value of it): 32 refused such a curve.
    assert 2 * 2_000 * 32 < len(text) <= 2 * 2_000 * CURVE_BYTES_PER_VALUE
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/diagnostics/loss-curve", content=text, headers=JSON)
        assert response.status_code == 200, response.text[:300]
        status, asked, answer = asgi_post(
            client.app, "/v1/diagnostics/loss-curve", b" " * limit + text
        )
        assert (status, asked) == (413, 0)
        assert json.loads(answer)["detail"].endswith(
            f"POST /v1/diagnostics/loss-curve takes at most {limit:,}"
        )


def test_a_caller_without_a_key_learns_nothing_of_the_limit() -> None:
    """The route's 401 (or a student key's 403 on an instructors' route) comes first."""
    with TestClient(create_app(keyed_settings())) as keyed:
        status, asked, _ = asgi_post(keyed.app, "/v1/shapes/conv", padded(SHAPE, 200_000))
        assert (status, asked) == (401, 0)
        response = keyed.post(
            "/v1/shapes/conv", content=padded(SHAPE, 200_000), headers={**JSON, **key(STUDENT)}
        )
        assert response.status_code == 403


def test_info_lists_the_limits_of_the_routes() -> None:
    with TestClient(create_app(Settings(loss_curve_max_values=10))) as client:
        info = client.get("/v1/info").json()
    assert info["body_limits"] == {
        "POST /v1/shapes/conv": 65_536,
        "POST /v1/experiments/temporal-order": 65_536,
        "POST /v1/diagnostics/loss-curve": 2 * 10 * 48 + 65_536,
    }
    assert info["limits"]["max_body_bytes"] > 65_536


def test_a_route_limit_over_the_service_limit_is_not_listed() -> None:
    """Where the service's own limit is smaller, it is the one in force (and said so)."""
    assert Settings(max_body_bytes=4096).route_body_limits() == {}
    assert list(Settings(max_body_bytes=100_000).route_body_limits()) == [
        "POST /v1/shapes/conv",
        "POST /v1/experiments/temporal-order",
    ]


def test_a_limit_for_a_route_that_does_not_exist_stops_the_start_up() -> None:
    routers: list[APIRouter] = [shapes.router, diagnostics.router]
    found = route_body_limits(routers, {"POST /v1/shapes/conv": 10})
    assert [(name, limit) for _, name, limit in found] == [("POST /v1/shapes/conv", 10)]
    with pytest.raises(RuntimeError, match="POST /v1/shapes/convolution"):
        route_body_limits(routers, {"POST /v1/shapes/convolution": 10})


@pytest.mark.parametrize("path", ["/healthz", "/v1/info", "/v1/assignments"])
def test_a_json_body_sent_with_a_get_is_never_read(client: TestClient, path: str) -> None:
    """No GET route reads a body: 20 MB of JSON sent with GET /healthz (the probe, exempt from
    the limit of requests in flight) held the event loop 3 s, parsed."""
    body = json.dumps({"x": [[]] * 50_000}).encode()
    status, asked, _ = asgi_post(client.app, path, body, method="GET")
    assert (status, asked) == (200, 0)

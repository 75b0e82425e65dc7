"""The Python client: against the app in-process, over real HTTP, and against scripted answers.

`/v1/check`, `/v1/check/batch` and `/v1/assignments/{a}/grade` are exercised against a test
double of their contract (tests/fakes.py); the other operations against the real app.
"""

from __future__ import annotations

import base64
import email.utils
import gc
import html
import http.client
import json
import random
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import torch
from fastapi.testclient import TestClient

from service import cli
from service.app import create_app
from service.client import (
    MAX_NESTING,
    MAX_TIMEOUT,
    Backward,
    Client,
    ProblemError,
    TorchClient,
    UnexpectedResponse,
    UnsendableError,
    answer_to_wire,
    from_wire,
    retry_after,
    to_wire,
)
from service.examples import SEED_W_1x5x3, SEED_X_5x7
from service.settings import Settings
from service.transport import StdlibTransport, environment_proxy
from tests.fakes import FakeGrading
from tests.helpers import finite_difference_jacobian
from tests.servers import InProcess, uvicorn_thread

X = np.array(SEED_X_5x7, dtype=np.float64)  # (C=5, L=7)
W = np.array(SEED_W_1x5x3, dtype=np.float64)  # (F=1, C=5, K=3)


def seed_conv(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The seed's 1.1(c)(i), 0-based: y[f, i] = sum_c sum_m W[f, c, m] x[c, 2i + m]."""
    out = np.zeros((w.shape[0], (x.shape[1] - w.shape[2]) // 2 + 1))
    for f in range(w.shape[0]):
        for i in range(out.shape[1]):
            out[f, i] = sum(
                w[f, c, m] * x[c, 2 * i + m] for c in range(x.shape[0]) for m in range(w.shape[2])
            )
    return out


@pytest.fixture
def tg(client: TestClient) -> Iterator[Client]:
    with Client("http://testserver", transport=InProcess(client)) as tg:
        yield tg


def test_health_and_info(tg: Client) -> None:
    assert tg.health() == {"status": "ok"}
    assert tg.info()["torch_version"] == torch.__version__


def test_ready_says_whether_the_server_is_ready_without_waiting_out_its_503(
    tg: Client, client: TestClient
) -> None:
    assert client.get("/readyz").status_code == 200 and tg.ready() is True
    warming = httpx.Response(
        503,
        headers={"Retry-After": "1"},
        json={"type": "t", "title": "Service Unavailable", "status": 503, "detail": "warming up"},
    )
    transport, seen = scripted(warming)
    sleep, waits = recording()
    with Client("http://x", transport=transport, sleep=sleep) as warm:
        assert warm.ready() is False
    assert len(seen) == 1 and waits == []
    transport, _ = scripted(httpx.Response(502, text="<html>bad gateway</html>"))
    with Client("http://x", transport=transport) as proxied, pytest.raises(ProblemError):
        proxied.ready()


def test_loss_curve_plot_answers_the_image_bytes(tg: Client) -> None:
    losses = [[1.41, 1.38, 1.35], [1.1, 0.9, 3.4]]
    png = tg.loss_curve_plot(losses, num_classes=4)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    svg = tg.loss_curve_plot(losses, num_classes=4, format="svg")
    assert b"<svg" in svg[:1000]
    with pytest.raises(ProblemError) as error:
        tg.loss_curve_plot([[]], num_classes=4)
    assert error.value.status == 422
    transport, _ = scripted(httpx.Response(200, json={"epoch_mean": [1.0]}))
    with Client("http://x", transport=transport) as other, pytest.raises(UnexpectedResponse):
        other.loss_curve_plot(losses, num_classes=4)


def test_an_unreachable_service_raises_httpx_errors_not_problem_errors() -> None:
    """As the README says: ProblemError is an answer of the service; no answer at all is an
    httpx.HTTPError (after the retries)."""
    transport, _ = scripted(httpx.ConnectError("refused"))
    with Client("http://x", transport=transport, retries=0) as tg:
        with pytest.raises(httpx.HTTPError) as raised:
            tg.health()
        assert not isinstance(raised.value, ProblemError)


CLIENT_METHODS = {
    "GET /healthz": "health",
    "GET /readyz": "ready",
    "GET /v1/info": "info",
    "POST /v1/shapes/conv": "conv_shape",
    "GET /v1/models": "models",
    "POST /v1/models/{model}/forward": "forward",
    "POST /v1/models/{model}/backward": "backward",
    "POST /v1/models/{model}/jacobian": "jacobian",
    "POST /v1/models/{model}/state-jacobians": "state_jacobians",
    "POST /v1/check": "check",
    "POST /v1/check/batch": "check_batch",
    "POST /v1/diagnostics/loss-curve": "loss_curve",  # and loss_curve_plot for ?format=png
    "POST /v1/experiments/temporal-order": "temporal_order",
    "GET /v1/assignments": "assignments",
    "GET /v1/assignments/{assignment}/problems/{problem}": "problem",
    "POST /v1/assignments/{assignment}/problems/{problem}/check": "check_problem",
    "POST /v1/assignments/{assignment}/grade": "grade",
}


def test_every_operation_but_the_metrics_has_its_method(client: TestClient) -> None:
    """The README says so: each route of the API has a method of the client (`/metrics` is
    for Prometheus to scrape)."""
    paths = client.get("/openapi.json").json()["paths"]
    operations = {f"{m.upper()} {path}" for path, ops in paths.items() for m in ops}
    assert operations - {"GET /metrics"} == set(CLIENT_METHODS)
    for name in [*CLIENT_METHODS.values(), "loss_curve_plot"]:
        assert callable(getattr(Client, name, None)), name


def test_conv_shape_is_the_seeds_1_1a(tg: Client) -> None:
    answer = tg.conv_shape([21, 12], [4, 5], stride=4, out_channels=8)
    # The seed's closed form: floor((21 - 4 + 0)/4) + 1 = 5, floor((12 - 5 + 0)/4) + 1 = 2.
    assert answer["output_size"] == [(21 - 4) // 4 + 1, (12 - 5) // 4 + 1] == [5, 2]
    assert answer["output_shape"] == [8, 5, 2]
    assert [s["dimension"] for s in answer["steps"]] == [0, 1]


def test_forward_matches_the_seed_and_torch(tg: Client) -> None:
    y = tg.forward("conv1d", {"weight": W}, {"x": X}, config={"stride": 2})["y"]
    reference = torch.nn.functional.conv1d(
        torch.from_numpy(X)[None], torch.from_numpy(W), stride=2
    )[0].numpy()
    assert isinstance(y, np.ndarray) and y.dtype == np.float64 and y.shape == (1, 3)
    np.testing.assert_allclose(y, reference, rtol=0, atol=1e-12)
    np.testing.assert_allclose(y, seed_conv(W, X), rtol=0, atol=1e-12)


def test_backward_matches_autograd_and_the_seeds_closed_form(tg: Client) -> None:
    g = np.array([[1.0, -2.0, 3.0]])
    answer = tg.backward("conv1d", {"weight": W}, {"x": X}, {"y": g}, config={"stride": 2})
    w = torch.from_numpy(W).requires_grad_()
    x = torch.from_numpy(X).requires_grad_()
    torch.nn.functional.conv1d(x[None], w, stride=2)[0].backward(torch.from_numpy(g))
    assert w.grad is not None and x.grad is not None
    np.testing.assert_allclose(answer.grads["weight"], w.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(answer.grads["x"], x.grad.numpy(), atol=1e-12)
    # Seed 1.1(c)(iv): dl/dW[c, m] = sum_i dl/dy[i] x[c, 2i + m].
    closed = np.array([[[sum(g[0, i] * X[c, 2 * i + m] for i in range(3)) for m in range(3)]
                        for c in range(5)]])  # fmt: skip
    np.testing.assert_allclose(answer.grads["weight"], closed, atol=1e-12)
    np.testing.assert_allclose(answer.outputs["y"], seed_conv(W, X), atol=1e-12)


def test_jacobian_matches_finite_differences_and_the_seed(tg: Client) -> None:
    jac = tg.jacobian("conv1d", {"weight": W}, {"x": X}, of="y", wrt="weight", config={"stride": 2})
    assert jac.shape == (1, 3, 1, 5, 3)  # the seed's 1.1(c)(ii)
    x = torch.from_numpy(X)
    numeric = finite_difference_jacobian(
        lambda w: torch.nn.functional.conv1d(x[None], w, stride=2)[0], torch.from_numpy(W)
    )
    np.testing.assert_allclose(jac, numeric.numpy(), atol=1e-6)
    for i in range(3):  # dy[i]/dW[c, m] = x[c, 2i + m]
        np.testing.assert_array_equal(jac[0, i, 0], X[:, 2 * i : 2 * i + 3])


def test_large_tensors_travel_as_base64_and_come_back_exact(client: TestClient) -> None:
    transport = InProcess(client)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 401))  # 2005 elements: over the threshold
    with Client("http://testserver", transport=transport, b64_threshold=1000) as tg:
        y = tg.forward("conv1d", {"weight": W}, {"x": x}, config={"stride": 2})["y"]
    sent = orjson.loads(transport.requests[-1].content)
    assert set(sent["inputs"]["x"]) == {"shape", "datatype", "b64"}
    assert isinstance(sent["params"]["weight"], list)  # 15 elements: a nested list
    assert sent["encoding"] == "b64"
    reference = torch.nn.functional.conv1d(torch.from_numpy(x)[None], torch.from_numpy(W), stride=2)
    np.testing.assert_allclose(y, reference[0].numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, seed_conv(W, x), rtol=1e-12, atol=1e-12)


def test_torch_tensors_in_and_out(client: TestClient) -> None:
    with TorchClient("http://testserver", transport=InProcess(client), b64_threshold=4) as tg:
        y = tg.forward(
            "conv1d",
            {"weight": torch.tensor(W, dtype=torch.float32)},
            {"x": torch.tensor(X, requires_grad=True)},
            config={"stride": 2},
            dtype="float32",
        )["y"]
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    torch.testing.assert_close(y, torch.from_numpy(seed_conv(W, X)).float())


def test_wire_round_trip_of_every_form() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    wire = to_wire(a, b64_threshold=0)
    assert wire["datatype"] == "FP32" and wire["shape"] == [2, 3]
    assert base64.b64decode(wire["b64"]) == a.astype("<f4").tobytes()
    np.testing.assert_array_equal(from_wire(wire), a)
    assert to_wire(np.int64(3)) == 3 and to_wire([np.ones(2)]) == [[1.0, 1.0]]
    json_form = {
        "shape": [3],
        "datatype": "FP64",
        "data": ["NaN", 1.5, "-Infinity"],
        "nonfinite": 2,
    }
    decoded = from_wire(json_form)
    assert np.isnan(decoded[0]) and decoded[1] == 1.5 and decoded[2] == -np.inf


def test_problems_are_raised_typed(tg: Client) -> None:
    with pytest.raises(ProblemError) as missing:
        tg.forward("lstm9", {}, {"x": [1.0]})
    assert missing.value.status == 404 and missing.value.title == "No such model"
    with pytest.raises(ProblemError) as invalid:
        tg.forward("conv1d", {"weight": [[[1.0, 2.0]]]}, {"x": [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]})
    problem = invalid.value
    assert problem.status == 422 and problem.errors and problem.detail
    assert problem.request_id and problem.body["request_id"] == problem.request_id


def test_client_over_real_http_with_an_api_key() -> None:
    with uvicorn_thread(create_app(Settings())) as url, Client(url, api_key="k-123") as tg:
        assert tg.conv_shape([7], 3, stride=2, in_channels=5, out_channels=1)["output_shape"] == [
            1,
            (7 - 3) // 2 + 1,
        ]
        assert tg.http.headers["X-API-Key"] == "k-123"


# -- binary answers ---------------------------------------------------------------------------


def test_safetensors_answers_are_the_arrays_of_the_json_answers(client: TestClient) -> None:
    rng = np.random.default_rng(3)
    g = rng.standard_normal((1, 3))
    calls: list[Callable[[Client], object]] = [
        lambda tg: tg.forward("conv1d", {"weight": W}, {"x": X}, config={"stride": 2})["y"],
        lambda tg: tg.jacobian("conv1d", {"weight": W}, {"x": X}, of="y", wrt="x",
                               config={"stride": 2}),
        lambda tg: tg.backward("conv1d", {"weight": W, "bias": np.array([0.5])}, {"x": X},
                               {"y": g}, config={"stride": 2}),
    ]  # fmt: skip
    transport = InProcess(client)
    with (
        Client("http://testserver", transport=transport) as as_json,
        Client("http://testserver", transport=transport, encoding="safetensors") as binary,
    ):
        for call in calls:
            expected, got = call(as_json), call(binary)
            assert orjson.loads(transport.requests[-1].content)["encoding"] == "safetensors"
            if isinstance(expected, Backward):
                assert isinstance(got, Backward)
                pairs = [(expected.outputs, got.outputs), (expected.grads, got.grads)]
                for want, have in pairs:
                    assert set(want) == set(have)
                    for name in want:
                        np.testing.assert_array_equal(have[name], want[name])
                        assert have[name].dtype == want[name].dtype == np.float64
            else:
                assert isinstance(got, np.ndarray) and isinstance(expected, np.ndarray)
                assert got.dtype == expected.dtype and got.shape == expected.shape
                np.testing.assert_array_equal(got, expected)
                assert not got.flags.writeable  # a view of the body, as safetensors loads it
        # An independent oracle of the Jacobian: dy[0, i]/dx[c, 2i + m] = W[0, c, m] (seed 1.1(c)).
        jac = calls[1](binary)
    assert isinstance(jac, np.ndarray)
    for i in range(3):
        np.testing.assert_array_equal(jac[0, i][:, 2 * i : 2 * i + 3], W[0])


def test_safetensors_answers_with_non_finite_entries_read_as_the_json_ones(
    client: TestClient,
) -> None:
    # Products of 1e200 overflow: the answer carries its counts ("outputs.y.nonfinite" in the
    # header), which the client reads past, extras and all.
    w, x = np.array([[[1e200, 1e200]]]), np.array([[1e200, 1.0, -1e200, 1e200, 1.0, 1.0]])
    g = np.array([[1e200, 1.0, 1.0, 1.0, 1.0]])
    transport = InProcess(client)
    with (
        Client("http://testserver", transport=transport) as as_json,
        Client("http://testserver", transport=transport, encoding="safetensors") as binary,
    ):
        expected = as_json.backward("conv1d", {"weight": w}, {"x": x}, {"y": g}, device="cpu")
        got = binary.backward("conv1d", {"weight": w}, {"x": x}, {"y": g}, device="cpu")
    assert got.extras == {} and set(got.grads) == {"weight", "x"}
    assert not np.isfinite(got.outputs["y"]).all() and not np.isfinite(got.grads["weight"]).all()
    for want, have in ((expected.outputs, got.outputs), (expected.grads, got.grads)):
        for name in want:
            np.testing.assert_array_equal(have[name], want[name])


def test_torch_client_gets_writable_tensors_from_safetensors(client: TestClient) -> None:
    with TorchClient(
        "http://testserver", transport=InProcess(client), encoding="safetensors"
    ) as tg:
        y = tg.forward("conv1d", {"weight": W}, {"x": X}, config={"stride": 2})["y"]
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float64
    y += 1  # its own memory
    torch.testing.assert_close(y, torch.from_numpy(seed_conv(W, X)) + 1)


def test_an_answer_is_freed_when_dropped_not_at_the_next_garbage_collection() -> None:
    """httpx's response and stream point at each other; the client cuts that cycle, so a
    large body goes back to the allocator as soon as the caller lets go of it. (httpx's own
    mock transport: an app run in-process by the test client leaves frames of its own behind
    on Python 3.12, which hold the response whatever the client does.)"""

    def healthz(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "ok"})

    with Client("http://testserver", transport=httpx.MockTransport(healthz)) as tg:
        gc.disable()
        try:
            response = tg._send("GET", "/healthz", None, None)
            assert response.json() == {"status": "ok"}
            gone = weakref.ref(response)
            del response
            assert gone() is None
        finally:
            gc.enable()


def test_a_large_safetensors_jacobian_over_real_http() -> None:
    """Over a socket and several 1 MB slices, through the default (stdlib) transport."""
    rng = np.random.default_rng(4)
    w, x = rng.standard_normal((8, 8, 3)), rng.standard_normal((8, 100))
    with (
        uvicorn_thread(create_app(Settings())) as url,
        Client(url, encoding="safetensors") as binary,
        Client(url) as as_json,
    ):
        got = binary.jacobian("conv1d", {"weight": w}, {"x": x}, of="y", wrt="x")
        expected = as_json.jacobian("conv1d", {"weight": w}, {"x": x}, of="y", wrt="x")
        assert isinstance(binary.http._transport, StdlibTransport)
    assert got.nbytes > 4 << 20 and got.shape == (8, 98, 8, 100)
    np.testing.assert_array_equal(got, expected)
    oracle = torch.autograd.functional.jacobian(
        lambda v: torch.nn.functional.conv1d(v[None], torch.from_numpy(w))[0], torch.from_numpy(x)
    )
    np.testing.assert_allclose(got, oracle.numpy(), rtol=0, atol=1e-12)


# -- retries, against scripted answers --------------------------------------------------------


def scripted(*answers: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[str]]:
    """A transport answering in turn; records each request's X-Request-ID."""
    queue = list(answers)
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["x-request-id"])
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle), seen


def recording() -> tuple[Callable[[float], None], list[float]]:
    waits: list[float] = []
    return waits.append, waits


def no_jitter() -> float:
    """The least random extra wait: each wait is the one asked for."""
    return 0.0


def test_429_and_503_are_retried_honouring_retry_after() -> None:
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    transport, seen = scripted(
        httpx.Response(429, headers={"Retry-After": "2"}),
        httpx.Response(503, headers={"Retry-After": later}),
        httpx.Response(503),
        httpx.Response(200, json={"status": "ok"}),
    )
    sleep, waits = recording()
    client = Client("http://x", transport=transport, sleep=sleep, backoff=0.25, jitter=no_jitter)
    with client as tg:
        assert tg.health() == {"status": "ok"}
    assert waits[0] == 2.0
    assert 25 < waits[1] <= 30  # the date, as seconds from now
    assert waits[2] == 0.25 * 2**2  # no Retry-After: the backoff of the third retry
    assert len(set(seen)) == 1  # one request id for every try of one call


def test_connection_errors_are_retried_with_backoff_then_raised() -> None:
    refused = httpx.ConnectError("connection refused")
    transport, _ = scripted(refused, refused, httpx.Response(200, json={"status": "ok"}))
    sleep, waits = recording()
    client = Client("http://x", transport=transport, sleep=sleep, backoff=0.5, jitter=no_jitter)
    with client as tg:
        assert tg.health() == {"status": "ok"}
    assert waits == [0.5, 1.0]

    transport, seen = scripted(refused, refused, refused)
    with (
        Client("http://x", transport=transport, sleep=sleep, retries=2) as tg,
        pytest.raises(httpx.ConnectError),
    ):
        tg.health()
    assert len(seen) == 3


def test_retries_run_out_on_the_last_answer() -> None:
    transport, _ = scripted(
        httpx.Response(429, headers={"Retry-After": "10"}),
        httpx.Response(429, json={"type": "t", "title": "Too Many Requests", "status": 429,
                                  "detail": "slow down"}),
    )  # fmt: skip
    sleep, waits = recording()
    client = Client("http://x", transport=transport, sleep=sleep, retries=1, max_wait=10)
    with client as tg, pytest.raises(ProblemError) as error:
        tg.info()
    assert len(waits) == 1 and 10 <= waits[0] <= 10 + 1.0 + 0.5
    assert error.value.status == 429 and error.value.detail == "slow down"


@pytest.mark.parametrize(
    ("status", "asked", "detail"),
    [(429, 3600, "come back in an hour"), (503, 90, "retry after the time in Retry-After")],
)
def test_a_retry_after_past_max_wait_is_the_error_at_once_saying_how_long(
    status: int, asked: int, detail: str
) -> None:
    """A retry before the time asked is refused again: waiting `max_wait` and retrying spent
    the retries (4 minutes of them against the service's 60 s rate window) for nothing. And a
    503 saying "retry after the time in Retry-After" (or a proxy's page) left the caller of a
    Retry-After not waited out with no word of when to come back."""
    body = {"type": "t", "status": status, "title": "Refused", "detail": detail}
    transport, seen = scripted(
        httpx.Response(status, headers={"Retry-After": str(asked)}, json=body)
    )
    sleep, waits = recording()
    client = Client("http://x", transport=transport, sleep=sleep, max_wait=60)
    with client as tg, pytest.raises(ProblemError) as error:
        tg.info()
    assert waits == [] and len(seen) == 1
    assert error.value.status == status and error.value.detail == detail
    told = f"the server asked to wait {asked} s before a retry, longer than max_wait (60 s)"
    assert told in str(error.value)


def test_read_timeouts_and_other_statuses_are_not_retried() -> None:
    transport, seen = scripted(httpx.ReadTimeout("slow"))
    client = Client("http://x", transport=transport, sleep=recording()[0])
    with client as tg, pytest.raises(httpx.ReadTimeout):
        tg.health()
    assert len(seen) == 1
    transport, seen = scripted(httpx.Response(502, text="<html>bad gateway</html>"))
    with Client("http://x", transport=transport) as tg, pytest.raises(ProblemError) as error:
        tg.health()
    assert len(seen) == 1 and error.value.status == 502 and "bad gateway" in error.value.detail


# -- the routes that land with the checking and assignment features (a test double here) ------


def test_check_check_batch_and_grade_follow_the_contract() -> None:
    fake = FakeGrading()
    with (
        TestClient(fake.app) as app_client,
        Client("http://testserver", transport=InProcess(app_client)) as tg,
    ):
        expected = {"op": "value", "value": [5, 2]}
        assert tg.check(expected, np.array([5, 2]))["correct"] is True
        assert fake.bodies[-1] == {"expected": expected, "answer": [5, 2]}
        results = tg.check_batch(
            [
                {"expected": expected, "answer": [5, 2]},
                {"expected": expected, "answer": [10, 4]},
            ]
        )
        assert [r["correct"] for r in results] == [True, False]
        # Still the list it always was, with the summary the route answers beside it.
        assert isinstance(results, list) and len(results) == 2
        assert results.summary == {"checks": 2, "correct": 1, "wrong": 1, "invalid": 0, "keys": 1}
        assert results.invalid == []
        native = tg.grade("cnn-rnn", "s1", {"1.1a": [5, 2], "1.1c-i": 4})
        assert native["total"] == 2.0
        gradescope = tg.grade("cnn-rnn", "s1", {"1.1a": [5, 2]}, gradescope=True)
        assert gradescope["score"] == 2.0 and len(gradescope["tests"]) == 2
        with pytest.raises(ProblemError) as error:
            tg.grade("nope", "s1", {})
        assert error.value.status == 404


def test_check_batch_answers_the_summary_and_where_the_invalid_checks_are(
    tg: Client,
) -> None:
    """Against the real route: an invalid check is an `error` in its place, counted."""
    expected = {"op": "value", "value": [1.0, 2.0]}
    results = tg.check_batch(
        [
            {"expected": expected, "answer": [1.0, 2.0]},
            {"expected": expected, "answer": [1.0, "two"]},
            {"expected": expected, "answer": [2.0, 1.0]},
        ]
    )
    assert len(results) == 3 and "error" in results[1]
    assert results.summary == {"checks": 3, "correct": 1, "wrong": 1, "invalid": 1, "keys": 1}
    assert results.invalid == [1]


def test_check_batch_counts_the_results_of_a_service_that_answers_no_summary() -> None:
    body = {"results": [{"correct": True, "score": 1.0}, {"error": {"status": 422}}]}
    transport, _ = scripted(httpx.Response(200, json=body))
    with Client("http://x", transport=transport) as tg:
        results = tg.check_batch([{"expected": {"op": "value", "value": 1}, "answer": 1}] * 2)
    assert results == body["results"]
    assert results.summary == {"checks": 2, "correct": 1, "wrong": 0, "invalid": 1}


def test_the_other_operations_answer_what_their_routes_answer(
    tg: Client, client: TestClient
) -> None:
    assert {m["name"] for m in tg.models()} == {
        m["name"] for m in client.get("/v1/models").json()["models"]
    }
    rng = np.random.default_rng(0)
    params = {
        "W_c": rng.normal(size=(2, 3)),
        "W_h": rng.normal(size=(2, 2)),
        "W_x": rng.normal(size=(2, 3)),
    }
    inputs = {"x": rng.normal(size=(4, 3))}
    flow = tg.state_jacobians("gated_rnn", params, inputs)
    assert flow["jacobians"].shape == (4, 2, 2) and flow["verdict"] in {
        "vanishing",
        "exploding",
        "neither",
    }
    # Entry t-1 is dh[t]/dh[t-1]: the last one against autograd through the model itself.
    h = tg.forward("gated_rnn", params, inputs)["h"]
    w_c, w_h, w_x = (torch.tensor(params[n]) for n in ("W_c", "W_h", "W_x"))
    x_t = torch.tensor(inputs["x"][3])

    def step(h_prev: torch.Tensor) -> torch.Tensor:
        c = torch.sigmoid(w_c @ x_t + w_h @ h_prev)
        return c * h_prev + (1 - c) * (w_x @ x_t)

    expected = torch.autograd.functional.jacobian(step, torch.tensor(h[2]))
    np.testing.assert_allclose(flow["jacobians"][3], expected.numpy(), rtol=1e-10, atol=1e-12)

    variant = tg.problem("cnn-rnn", "1.1a", "student-1")
    assert variant["id"] == "1.1a" and variant["student_id"] == "student-1"
    assert "21" in variant["statement"]  # the seed's own 21x12 input
    judged = tg.check_problem("cnn-rnn", "1.1a", "student-1", [5, 2])
    assert judged["correct"] is True
    wrong = tg.check_problem("cnn-rnn", "1.1a", "student-1", [2, 5])
    assert wrong["correct"] is False

    curve = tg.loss_curve([[1.41, 1.38, 1.35], [1.1, 0.9, 3.4]], num_classes=4)
    assert curve["epoch_mean"] == pytest.approx([1.38, 1.8])
    assert curve["spikes"] == [1]


# -- non-finite numbers: never null --------------------------------------------------------------

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("problem", "answer", "reason"),
    [
        ("1.3-4-loss", NAN, "answer is NaN; only finite numbers are accepted"),
        ("1.3-4-loss", -INF, "answer is -Infinity; only finite numbers are accepted"),
        ("1.1c-i", [[1e400, 0, 0]], "answer[0][0] is Infinity; only finite numbers"),
        ("1.1c-i", [[1, NAN], [2]], "answer[0][1] is NaN; only finite numbers"),  # ragged too
        ("1.1c-i", {"shape": [1, 3], "data": [0, -INF, 0]}, "answer.data[1] is -Infinity"),
        ("1.1c-i", np.array([[0, 0, NAN]]), "element [0, 2] is nan; only finite numbers"),
        ("1.1c-i", torch.full((1, 3), INF), "element [0, 0] is inf; only finite numbers"),
        ("1.1a", [5, NAN], 'got [5, "NaN"]'),
    ],
)
def test_an_answer_holding_nan_or_inf_is_judged_as_holding_it(
    tg: Client, problem: str, answer: object, reason: str
) -> None:
    # orjson writes NaN as null: the answer graded as "no answer", or as holding a null the
    # student never wrote.
    graded = tg.grade("cnn-rnn", "s1", {problem: answer})["problems"][problem]
    assert graded["status"] == "malformed", graded
    assert reason in graded["feedback"]["reason"]
    assert "null" not in graded["feedback"]["reason"]
    one = tg.check_problem("cnn-rnn", problem, "s1", answer)
    assert one["status"] == "malformed" and reason in one["feedback"]["reason"]


def test_check_and_check_batch_send_an_answers_nan_as_nan(tg: Client) -> None:
    expected = {"op": "value", "value": [1.0, 2.0]}
    with pytest.raises(ProblemError, match=r"answer\[0\] is NaN; only finite numbers"):
        tg.check(expected, [NAN, 2.0])
    results = tg.check_batch([{"expected": expected, "answer": [1.0, INF]}])
    assert "answer[1] is Infinity" in results[0]["error"]["detail"]


def test_nan_outside_an_answer_is_refused_before_sending_naming_the_entry(tg: Client) -> None:
    with pytest.raises(UnsendableError, match=r"^batch_losses\[1\]\[0\] is NaN, which JSON"):
        tg.loss_curve([[1.4, 1.3], [NAN, 1.2]], num_classes=4)
    x = [[1.0, 2.0, 3.0]]
    with pytest.raises(UnsendableError, match=r'^params\["weight"\]\[0\]\[0\]\[1\] is -Infinity'):
        tg.forward("conv1d", {"weight": [[[1.0, -INF]]]}, {"x": x})
    # An array's bytes carry NaN: the service names the element.
    with pytest.raises(ProblemError, match=r"params.weight: element \[0, 0, 1\] is nan"):
        tg.forward("conv1d", {"weight": np.array([[[1.0, NAN]]])}, {"x": x})


def test_small_arrays_with_nan_travel_as_bytes_and_answers_spell_it_out() -> None:
    wire = to_wire(np.array([1.0, NAN]))
    assert np.isnan(from_wire(wire)[1]) and "b64" in wire
    assert to_wire(np.array([1.0, 2.0])) == [1.0, 2.0]  # finite: still a plain list
    assert answer_to_wire([[1.0, NAN], (INF, -INF)]) == [[1.0, "NaN"], ["Infinity", "-Infinity"]]
    assert answer_to_wire({"shape": [1], "data": [NAN]}) == {"shape": [1], "data": ["NaN"]}
    assert answer_to_wire("floor(H/2)") == "floor(H/2)"


# -- a success that is not the service's answer ---------------------------------------------------

PORTAL = "<html><head><title>Hotel Wi-Fi</title></head><body>Please log in" + " " * 300 + "END"


def answering(response: httpx.Response) -> httpx.MockTransport:
    """A transport answering every request with ``response``."""
    return httpx.MockTransport(lambda request: response)


@pytest.mark.parametrize(
    ("response", "what", "shown"),
    [
        (httpx.Response(200, html=PORTAL), "a body that is not JSON", "text/html; charset=utf-8"),
        (httpx.Response(200, content=b""), "a body that is not JSON", "no content type"),
        (httpx.Response(302, headers={"Location": "/login"}), "not JSON", "no content type"),
        (httpx.Response(200, json=[1, 2]), "JSON that is not an object", "[1,2]"),
        (httpx.Response(200, json="ok"), "JSON that is not an object", '"ok"'),
        (httpx.Response(200, content=b"null"), "JSON that is not an object", "null"),
        (httpx.Response(200, json={}), "an empty object", "{}"),
        (httpx.Response(200, json={"state": "ok"}), "without status", "application/json"),
    ],
)
def test_a_success_that_is_not_an_answer_is_a_clear_error(
    response: httpx.Response, what: str, shown: str
) -> None:
    client = Client("http://x", transport=answering(response))
    with client as tg, pytest.raises(UnexpectedResponse) as error:
        tg.health()
    problem = error.value
    assert isinstance(problem, ProblemError)  # handled wherever the service's refusals are
    assert problem.status == response.status_code and problem.title == "Not the service's answer"
    message = str(problem)
    assert message.startswith(f"{response.status_code} Not the service's answer: GET /healthz")
    assert what in message and shown in message and "proxy or captive portal" in message


def test_an_unexpected_body_is_quoted_only_in_its_first_200_characters() -> None:
    client = Client("http://x", transport=answering(httpx.Response(200, html=PORTAL)))
    with client as tg, pytest.raises(UnexpectedResponse) as error:
        tg.health()
    detail = error.value.detail
    assert repr(PORTAL[:200]) + "..." in detail and "END" not in detail
    assert len(detail) < 500


@pytest.mark.parametrize(
    ("answer", "gradescope", "missing"),
    [
        ({}, False, "an empty object"),
        ({}, True, "an empty object"),
        ({"score": 2.0, "tests": []}, False, "without problems, total"),  # not asked for
        ({"student_id": "s1", "problems": {}}, False, "without total"),
        ({"score": 2.0}, True, "without tests"),
        ({"problems": {}, "total": 0.0}, True, "without tests, score"),
    ],
)
def test_a_grade_without_its_fields_is_not_taken_for_an_answer(
    answer: dict[str, object], gradescope: bool, missing: str
) -> None:
    """An empty result would go into the gradebook as a student's grade."""
    transport = answering(httpx.Response(200, json=answer))
    client = Client("http://x", transport=transport)
    with client as tg, pytest.raises(UnexpectedResponse, match=missing) as error:
        tg.grade("cnn-rnn", "s1", {"1.1a": [5, 2]}, gradescope=gradescope)
    assert "POST /v1/assignments/cnn-rnn/grade was answered" in str(error.value)


def test_a_binary_body_that_is_not_safetensors_is_a_clear_error() -> None:
    garbage = httpx.Response(
        200, headers={"Content-Type": "application/octet-stream"}, content=b"x"
    )
    client = Client("http://x", transport=answering(garbage), encoding="safetensors")
    with client as tg, pytest.raises(UnexpectedResponse, match="not a safetensors file"):
        tg.jacobian("conv1d", {"weight": W}, {"x": X}, of="y", wrt="x")


# -- retries wait a random extra ------------------------------------------------------------------


def refused_then_ok(retry_after: str | None, times: int) -> httpx.MockTransport:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    answers = [httpx.Response(503, headers=headers) for _ in range(times)]
    return scripted(*answers, httpx.Response(200, json={"status": "ok"}))[0]


def test_retries_wait_what_was_asked_plus_a_bounded_random_extra() -> None:
    def waits_with(jitter: Callable[[], float], retry_after: str | None) -> list[float]:
        sleep, waits = recording()
        transport = refused_then_ok(retry_after, 4)
        client = Client("http://x", transport=transport, sleep=sleep, backoff=0.5, jitter=jitter)
        with client as tg:
            tg.health()
        return waits

    # The bounds: the extra is at most 10% of the wait plus the backoff.
    assert waits_with(no_jitter, "4") == [4.0] * 4
    assert waits_with(lambda: 1.0, "4") == pytest.approx([4.0 + 0.4 + 0.5] * 4)
    assert waits_with(no_jitter, None) == [0.5, 1.0, 2.0, 4.0]
    assert waits_with(lambda: 1.0, None) == pytest.approx([1.05, 1.6, 2.7, 4.9])
    # Drawn: spread between the bounds, so that workers told the same wait come back apart.
    drawn = waits_with(random.Random(0).random, "4")
    assert all(4.0 <= wait <= 4.9 for wait in drawn) and len(set(drawn)) == 4


def test_the_random_extra_is_random_by_default_and_capped() -> None:
    sleep, waits = recording()
    with Client("http://x", transport=refused_then_ok("4", 4), sleep=sleep, backoff=0.5) as tg:
        tg.health()
    assert all(4.0 <= wait <= 4.9 for wait in waits) and len(set(waits)) > 1
    sleep, waits = recording()
    transport = refused_then_ok(None, 4)
    client = Client("http://x", transport=transport, sleep=sleep, max_wait=2.2, jitter=lambda: 1.0)
    with client as tg:
        tg.health()
    assert waits == pytest.approx([1.05, 1.6, 2.2, 2.2])  # a backoff capped: the extra below


def test_a_retry_after_is_never_cut_short_and_its_waits_are_spread_above_it() -> None:
    """The service's 429 says `Retry-After: 60` when its rate window resets 60 s later: the
    waits were spread below the cap (53.5-60 s), every retry came too early and was refused
    again. Workers told the same wait still must not all come back at the same instant."""
    drawn = random.Random(1).random
    waits: list[float] = []
    for _ in range(8):  # eight workers of a class run, one retry each
        sleep, seen = recording()
        transport = refused_then_ok("60", 1)
        with Client("http://x", transport=transport, sleep=sleep, max_wait=60, jitter=drawn) as tg:
            tg.health()
        waits += seen
    assert len(waits) == 8 and all(60 <= w <= 60 + 6.5 for w in waits), waits
    assert len(set(waits)) == 8 and max(waits) - min(waits) > 1.0
    # The least and the most extra: the window's two ends.
    for jitter, expected in ((lambda: 0.0, 60.0), (lambda: 1.0, 60 + 6.5)):
        sleep, seen = recording()
        transport = refused_then_ok("60", 1)
        with Client("http://x", transport=transport, sleep=sleep, max_wait=60, jitter=jitter) as tg:
            tg.health()
        assert seen == [pytest.approx(expected)]


# -- proxies from the environment -----------------------------------------------------------------

Seen = list[tuple[str, dict[str, str]]]
"""Each request a server received: its request line and headers."""
Respond = Callable[[str, str, dict[str, str], bytes], tuple[int, bytes]]
"""A server's answer (status, JSON body) to a request's method, target, headers and body."""


@contextmanager
def http_server(respond: Respond) -> Iterator[tuple[str, Seen]]:
    """A loopback HTTP/1.1 server in a thread; yields its URL and the requests it received."""
    seen: Seen = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet under pytest
            pass

        def answer(self) -> None:
            headers = dict(self.headers.items())
            seen.append((self.requestline, headers))
            body = self.rfile.read(int(headers.get("Content-Length", 0)))
            status, content = respond(self.command, self.path, headers, body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = do_CONNECT = answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    # A short poll: shutdown() waits for the loop's next look (half a second by default).
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def healthy(method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """The answers of /healthz and /v1/shapes/conv, naming the target and the body received."""
    shape = {"output_size": [5], "output_shape": [5], "steps": []}
    return 200, orjson.dumps({"status": "ok", "target": target, "received": len(body), **shape})


def forwarding(method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """A forward proxy: requests for an absolute URL go on to it; anything else is refused."""
    url = urllib.parse.urlsplit(target)
    if method == "CONNECT" or not url.scheme or url.hostname is None:
        return 403, b'{"detail": "this proxy forwards plain HTTP only"}'
    onward = {k: v for k, v in headers.items() if not k.lower().startswith("proxy-")}
    connection = http.client.HTTPConnection(url.hostname, url.port)
    try:
        path = url.path + (f"?{url.query}" if url.query else "")
        connection.request(method, path, body or None, onward)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy settings but the test's own (the lower-case names win over the upper-case)."""
    for scheme in ("http", "https", "all", "no"):
        for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("REQUEST_METHOD", raising=False)  # CGI: HTTP_PROXY is then not read
    return monkeypatch


def test_requests_go_through_the_proxy_the_environment_names(environ: pytest.MonkeyPatch) -> None:
    with http_server(healthy) as (url, reached), http_server(forwarding) as (proxy, proxied):
        environ.setenv("HTTP_PROXY", proxy)
        with Client(url) as tg:
            assert tg.health()["target"] == "/healthz"
            sent = tg.conv_shape([7], 3)  # and a POST, with its body
        assert sent["received"] == int(reached[1][1]["Content-Length"]) > 0
    port = url.rsplit(":", 1)[1]
    assert [line for line, _ in proxied] == [
        f"GET {url}/healthz HTTP/1.1",  # the absolute form: for a proxy to forward
        f"POST {url}/v1/shapes/conv HTTP/1.1",
    ]
    assert proxied[0][1]["Host"] == f"127.0.0.1:{port}"
    assert [line for line, _ in reached] == [
        "GET /healthz HTTP/1.1",
        "POST /v1/shapes/conv HTTP/1.1",
    ]


def test_no_proxy_and_trust_env_false_send_requests_directly(environ: pytest.MonkeyPatch) -> None:
    with http_server(healthy) as (url, reached), http_server(forwarding) as (proxy, proxied):
        environ.setenv("ALL_PROXY", proxy)
        with Client(url, trust_env=False) as tg:
            assert tg.health()["target"] == "/healthz"
        environ.setenv("NO_PROXY", "example.com,127.0.0.1")
        with Client(url) as tg:
            assert tg.health()["target"] == "/healthz"
        environ.setenv("NO_PROXY", "example.com")
        with Client(url) as tg:
            assert tg.health()["target"] == "/healthz"
    assert len(reached) == 3 and len(proxied) == 1  # the last one only


def test_a_proxy_with_credentials_gets_them_in_proxy_authorization(
    environ: pytest.MonkeyPatch,
) -> None:
    with http_server(healthy) as (url, _), http_server(forwarding) as (proxy, proxied):
        environ.setenv("http_proxy", proxy.replace("http://", "http://ta:p%40ss@"))
        environ.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # the lower-case name wins
        with Client(url, api_key="k-123") as tg:
            tg.health()
    headers = proxied[0][1]
    assert headers["Proxy-Authorization"] == "Basic " + base64.b64encode(b"ta:p@ss").decode()
    assert headers["X-API-Key"] == "k-123"


def test_https_goes_through_the_proxy_with_connect(environ: pytest.MonkeyPatch) -> None:
    """https:// is httpx's transport's, with the proxy: it asks for a tunnel (this proxy
    refuses it, which is enough to see that the proxy was asked)."""
    with http_server(forwarding) as (proxy, proxied):
        environ.setenv("HTTPS_PROXY", proxy)
        client = Client("https://tensorgrade.test:8443", retries=0)
        with client as tg, pytest.raises(httpx.ProxyError):
            tg.health()
    assert proxied[0][0] == "CONNECT tensorgrade.test:8443 HTTP/1.1"


@pytest.mark.parametrize(
    ("settings", "url", "expected"),
    [
        ({}, "http://127.0.0.1:8000", None),
        ({"HTTP_PROXY": "proxy.test:3128"}, "http://127.0.0.1:8000", "http://proxy.test:3128"),
        ({"HTTP_PROXY": "http://p:1"}, "https://tg.test", None),
        ({"HTTPS_PROXY": "http://p:1"}, "https://tg.test", "http://p:1"),
        ({"ALL_PROXY": "socks5://p:1"}, "http://tg.test", "socks5://p:1"),
        ({"ALL_PROXY": "http://p:1", "NO_PROXY": "*"}, "http://tg.test", None),
        ({"ALL_PROXY": "http://p:1", "NO_PROXY": ".course.test"}, "http://tg.course.test", None),
        ({"ALL_PROXY": "http://p:1", "NO_PROXY": "tg.test:8000"}, "http://tg.test:8000", None),
        ({"ALL_PROXY": "http://p:1", "NO_PROXY": "tg.test:9"}, "http://tg.test:8000", "http://p:1"),
    ],
)
def test_environment_proxy_reads_what_httpx_reads(
    environ: pytest.MonkeyPatch, settings: dict[str, str], url: str, expected: str | None
) -> None:
    for name, value in settings.items():
        environ.setenv(name, value)
    assert environment_proxy(url) == expected


# -- deeply nested values -------------------------------------------------------------------------


def nested(depth: int, leaf: object = 1.0, container: type = list) -> object:
    """``leaf`` inside ``depth`` lists (or tuples, or mappings ``{"a": ...}``)."""
    value = leaf
    for _ in range(depth):
        value = {"a": value} if container is dict else container([value])
    return value


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 300, 600, 900, 5000])
@pytest.mark.parametrize("container", [list, tuple, dict])
def test_deep_nesting_is_refused_before_sending_not_a_recursion_error(
    depth: int, container: type
) -> None:
    deep = nested(depth, container=container)
    transport, seen = scripted()
    with Client("http://x", transport=transport) as tg:
        with pytest.raises(UnsendableError, match=r'^answers\["1\.1a"\] nests lists or mappings'):
            tg.grade("cnn-rnn", "s1", {"1.1a": deep})
        with pytest.raises(UnsendableError, match=r'^checks\[0\]\["answer"\] nests'):
            tg.check_batch([{"expected": {"op": "value", "value": 1}, "answer": deep}])
        with pytest.raises(UnsendableError, match=r"^params nests"):
            tg.forward("conv1d", {"weight": deep}, {"x": X})
    assert seen == []
    with pytest.raises(UnsendableError, match=r"^the answer nests"):
        answer_to_wire(deep)
    with pytest.raises(UnsendableError, match=f"more than {MAX_NESTING} levels deep"):
        to_wire(nested(depth, leaf=np.ones(2), container=container))


def test_nesting_up_to_the_limit_is_sent_as_it_is() -> None:
    deep = nested(MAX_NESTING, leaf=NAN)
    transport = InProcess(TestClient(FakeGrading().app))
    with Client("http://testserver", transport=transport) as tg:
        assert tg.grade("cnn-rnn", "s1", {"1.1c-i": deep})["total"] == 0  # a wrong answer
    sent = json.loads(transport.requests[-1].content)["answers"]["1.1c-i"]
    assert sent == nested(MAX_NESTING, leaf="NaN")


# -- the API key ----------------------------------------------------------------------------------

KEY = "tg-Zq8rW3mXv7"


def test_a_key_read_with_its_line_break_is_sent_without_it() -> None:
    """Over a socket, through the default transport: ``http.client`` refuses a header value
    with ``\\r`` in an error that quotes it."""
    with http_server(healthy) as (url, reached):
        for written in (f"{KEY}\r\n", f"  {KEY}\n", f"\t{KEY} \r\n"):
            with Client(url, api_key=written) as tg:
                tg.health()
        with Client(url, api_key=" \r\n") as tg:  # an empty file: no key
            tg.health()
    assert [headers.get("X-API-Key") for _, headers in reached] == [KEY, KEY, KEY, None]


@pytest.mark.parametrize(
    "key", [f"{KEY}\rX", f"{KEY[:5]}\x00{KEY[5:]}", f"{KEY}\x7f", f"{KEY}\n{KEY}", f"{KEY}é"]
)
def test_a_key_with_control_characters_is_refused_without_quoting_it(key: str) -> None:
    with pytest.raises(ValueError, match=r"^the API key holds a") as error:
        Client("http://x", api_key=key)
    message = str(error.value)
    assert "printable ASCII" in message
    assert KEY not in message and KEY[:5] not in message and KEY[5:] not in message


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        # 1e10 was an OverflowError from the socket at the first request, not when made.
        ({"timeout": 1e10}, r"^timeout must be a number of seconds above 0 and at most 86400"),
        ({"timeout": 0}, r"^timeout must be .* got 0$"),
        ({"timeout": -1.0}, r"^timeout must be .* got -1.0$"),
        ({"timeout": float("nan")}, r"^timeout must be .* got nan$"),
        ({"timeout": True}, r"^timeout must be .* got True$"),
        ({"timeout": "30"}, r"^timeout must be .* got '30'$"),
        ({"timeout": httpx.Timeout(5.0, read=1e10)}, r"^the read timeout must be .* got 1"),
        ({"timeout": httpx.Timeout(5.0, pool=0)}, r"^the pool timeout must be .* got 0$"),
        ({"retries": -1}, r"^retries must be an integer of at least 0, got -1$"),
        ({"retries": 2.0}, r"^retries must be an integer of at least 0, got 2.0$"),
        ({"backoff": -0.5}, r"^backoff must be a number of seconds of at least 0 .* got -0.5$"),
        ({"backoff": float("inf")}, r"^backoff must be .* got inf$"),
        # time.sleep refuses a wait past what time_t holds: 1e300 doubled at each retry
        ({"backoff": 1e300}, r"^backoff must be .* at most 86400, got 1e\+300$"),
        (
            {"timeout": 10**400},
            r"^timeout must be .* got 1000000000000000000000000000000000000\.\.\.$",
        ),
        ({"timeout": (5.0, 0, 1.0, 1.0)}, r"^the read timeout must be .* got 0$"),
        ({"max_wait": float("nan")}, r"^max_wait must be .* got nan$"),
        ({"max_wait": -1}, r"^max_wait must be a number of seconds of at least 0, got -1$"),
    ],
)
def test_settings_that_would_fail_at_the_first_request_are_refused_when_made(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Client("http://x", **settings)


@pytest.mark.parametrize(
    "settings",
    [
        {"timeout": None},  # httpx's "no limit", whole or per phase
        {"timeout": httpx.Timeout(5.0, read=None)},
        {"timeout": 86400},
        {"max_wait": float("inf")},  # every Retry-After waited out
        {"retries": 0, "backoff": 0, "max_wait": 0},
        {"timeout": (5.0, 300.0, 60.0, 30.0)},  # httpx's tuple: connect, read, write, pool
        {"timeout": np.float32(5), "retries": np.int64(3), "backoff": np.float32(0.5)},
    ],
)
def test_limits_and_no_limits_are_taken(settings: dict[str, Any]) -> None:
    with Client(
        "http://x", transport=scripted(httpx.Response(200, json={"status": "ok"}))[0], **settings
    ) as tg:
        assert tg.health() == {"status": "ok"}


def test_the_client_and_the_cli_refuse_the_same_longest_timeout() -> None:
    assert MAX_TIMEOUT == cli.MAX_SECONDS


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(502, html=f"<html>bad gateway for X-API-Key: {KEY}</html>"),
        httpx.Response(200, html=f"<html>log in again ({KEY})</html>"),
        httpx.Response(200, json={"echo": {"X-API-Key": KEY}}),
        httpx.Response(
            422,
            json={"title": f"key {KEY}", "detail": f"the key {KEY} is bad", "status": 422},
            headers={"Content-Type": "application/problem+json"},
        ),
    ],
)
def test_no_error_quotes_the_key_even_where_the_answer_echoes_it(
    response: httpx.Response,
) -> None:
    client = Client("http://x", api_key=KEY, transport=answering(response))
    with client as tg, pytest.raises(ProblemError) as error:
        tg.grade("cnn-rnn", "s1", {"1.1a": [5, 2]})
    problem = error.value
    for text in (str(problem), repr(problem), problem.title, problem.detail, str(problem.body)):
        assert KEY not in text
    assert "[the API key]" in str(problem)


def test_the_assignments_listing_is_checked_like_every_other_answer() -> None:
    """``tensorgrade grade`` asks for it first: a portal's JSON must be the clear error, not a
    KeyError."""
    transport = answering(httpx.Response(200, json={"message": "login required"}))
    with Client("http://x", transport=transport) as tg, pytest.raises(UnexpectedResponse) as error:
        tg.assignments()
    assert "without assignments" in str(error.value)


@pytest.mark.parametrize(
    "body",
    [
        {"status": "error", "detail": "upstream down"},
        {"status": None, "detail": "upstream down"},
        {"status": 502.5, "detail": "upstream down"},
        {"status": True, "detail": "upstream down"},
        {"status": [502], "detail": "upstream down"},
        {"detail": "upstream down"},
    ],
)
def test_an_error_whose_body_has_no_integer_status_is_raised_with_the_http_status(
    body: dict[str, object],
) -> None:
    """A JSON error page of something else that has a "detail" (a gateway's, say) is still a
    ProblemError, not a ValueError or TypeError from reading its "status"."""
    client = Client("http://x", transport=answering(httpx.Response(502, json=body)))
    with client as tg, pytest.raises(ProblemError) as error:
        tg.info()
    assert error.value.status == 502 and error.value.detail == "upstream down"


ODD_KEY = "tg-a&b<c>\"d'e f+g/h%i\\j"
"""A key (printable ASCII) with every character that HTML, URLs or JSON escape."""


@pytest.mark.parametrize(
    "echoed",
    [
        html.escape(ODD_KEY),  # &amp; &lt; &gt; &quot; &#x27;
        html.escape(ODD_KEY, quote=False),
        ODD_KEY.replace("&", "&#38;").replace("<", "&#x3C;").replace("'", "&apos;"),
        urllib.parse.quote(ODD_KEY, safe=""),  # %26 %3C ... %20
        urllib.parse.quote(ODD_KEY, safe="").lower(),  # %2b as well as %2B
        urllib.parse.quote_plus(ODD_KEY),  # + for the space
        urllib.parse.quote(ODD_KEY),  # the / left as it is
        json.dumps(ODD_KEY)[1:-1],
        json.dumps(ODD_KEY)[1:-1].replace("&", "\\u0026").replace("/", "\\/"),  # Go's writer
    ],
)
@pytest.mark.parametrize("status", [200, 502])
def test_no_error_quotes_the_key_escaped_in_html_a_url_or_json(echoed: str, status: int) -> None:
    """A portal's or proxy's page that echoes the request writes the key as its format does."""
    assert echoed != ODD_KEY
    page = httpx.Response(status, html=f"<html><a href='/login?key={echoed}'>{echoed}</a></html>")
    client = Client("http://x", api_key=ODD_KEY, transport=answering(page))
    with client as tg, pytest.raises(ProblemError) as error:
        tg.health()
    message = str(error.value)
    assert echoed not in message and message.count("[the API key]") == 2, message
    assert "/login?key=[the API key]" in message


@pytest.mark.parametrize(
    ("response", "what"),
    [
        (httpx.Response(200, html=PORTAL), "with a body that is not JSON"),
        (httpx.Response(204), "with a body that is not JSON"),
        (httpx.Response(302, headers={"Location": "/login"}), "with a body that is not JSON"),
        (httpx.Response(200, json=[1, 2]), "with JSON that is not an object"),
        (httpx.Response(200, json={}), "with an empty object"),
        (httpx.Response(200, json={"state": "ready"}), "without status"),
        (httpx.Response(200, json={"status": "ok"}), "with status 'ok', not 'ready'"),
    ],
)
def test_ready_is_true_only_on_the_services_readiness_answer(
    response: httpx.Response, what: str
) -> None:
    """A captive portal's 200 is not a ready service: ready() raises as health() does."""
    with Client("http://x", transport=answering(response)) as tg:
        with pytest.raises(UnexpectedResponse) as error:
            tg.ready()
        assert str(error.value).startswith(f"{response.status_code} Not the service's answer")
        assert f"GET /readyz was answered {what} (" in str(error.value)
        if "status 'ok'" not in what:  # /healthz's own answer, which health() takes
            with pytest.raises(UnexpectedResponse):
                tg.health()


def test_ready_is_false_on_any_503_and_raises_on_other_errors() -> None:
    """A warming service answers its own 503; behind an ingress, while every pod warms up,
    callers see the ingress's 503 page ("no healthy upstream") instead. Both are "not ready
    yet": a script waiting on ready() must not stop on the second."""
    warming = create_app(Settings())  # its lifespan not run: torch is not warmed up
    with Client("http://testserver", transport=InProcess(TestClient(warming))) as tg:
        assert tg.ready() is False
    page = httpx.Response(503, text="no healthy upstream")
    with Client("http://x", transport=answering(page), retries=0) as tg:
        assert tg.ready() is False
        with pytest.raises(ProblemError):
            tg.health()
    gateway = httpx.Response(502, html="<html>502 Bad Gateway</html>")
    with Client("http://x", transport=answering(gateway), retries=0) as tg:
        with pytest.raises(ProblemError) as error:
            tg.ready()
        assert error.value.status == 502 and "Bad Gateway" in error.value.detail


def test_a_list_is_stacked_only_where_its_numbers_stay_what_they_are() -> None:
    """np.asarray makes [True, 2.0] the numbers [1.0, 2.0], and uint64 beside int64 floats:
    such lists go entry by entry, so that the service refuses the boolean, and large
    integers stay exact."""
    assert answer_to_wire([[True, 2.0], np.array([1.0, 2.0])]) == [[True, 2.0], [1.0, 2.0]]
    assert answer_to_wire([np.uint64(2**64 - 1), 1]) == [2**64 - 1, 1]
    assert answer_to_wire([[1.0, 2.0], np.array([1.0, 2.0])]) == [[1.0, 2.0], [1.0, 2.0]]


def test_problem_answers_the_given_tensors_as_this_clients_tensor_type(client: TestClient) -> None:
    wire = client.get("/v1/assignments/cnn-rnn/problems/1.1c-i?student_id=s1").json()["given"]
    assert set(wire) == {"x", "W"}
    transport = InProcess(client)
    with Client("http://testserver", transport=transport) as tg:
        given = tg.problem("cnn-rnn", "1.1c-i", "s1")["given"]
    assert set(given) == set(wire)
    for name, tensor in given.items():
        assert isinstance(tensor, np.ndarray) and tensor.dtype == np.float64
        np.testing.assert_array_equal(tensor, np.array(wire[name]["data"]))
        assert list(tensor.shape) == wire[name]["shape"]
    with TorchClient("http://testserver", transport=transport) as torch_tg:
        as_torch = torch_tg.problem("cnn-rnn", "1.1c-i", "s1")["given"]
    assert all(isinstance(t, torch.Tensor) for t in as_torch.values())
    torch.testing.assert_close(as_torch["W"], torch.from_numpy(given["W"]))
    with Client("http://testserver", transport=transport) as tg:
        assert tg.problem("cnn-rnn", "1.1a", "s1")["given"] == {}  # a shape: no tensors


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn])
def test_torch_tensors_of_16_and_8_bit_floats_travel_as_float32(
    tg: Client, dtype: torch.dtype
) -> None:
    """numpy has no bfloat16 or float8 (torch refuses to convert them); float32 holds them."""
    small = torch.tensor([[1.5, -2.25], [0.125, 3.0]], dtype=dtype)
    assert to_wire(small) == [[1.5, -2.25], [0.125, 3.0]]
    large = torch.linspace(-4, 4, 1100).to(dtype)
    wire = to_wire(large)
    assert wire["datatype"] == "FP32" and wire["shape"] == [1100]
    np.testing.assert_array_equal(from_wire(wire), large.float().numpy())  # every value exact
    # Judged by the service as the values they are.
    expected = {"op": "value", "value": large.double().numpy()}
    assert tg.check(expected, large, tolerance={"rtol": 0, "atol": 0})["correct"] is True
    assert tg.check({"op": "value", "value": [1.5, -2.25]}, small[0])["correct"] is True


# -- numpy scalars, 0-d arrays and tensors: the numbers they are -----------------------------


def body_sent(transport: InProcess) -> object:
    return orjson.loads(transport.requests[-1].content)


I64, F32, T0 = np.int64, np.float32, torch.tensor  # T0(1.5): a 0-d tensor

AS_NUMPY: list[tuple[str, Callable[[Client], object], Callable[[Client], object]]] = [
    (
        "check",
        lambda tg: tg.check({"op": "value", "value": [5, 2]}, [I64(5), I64(2)]),
        lambda tg: tg.check({"op": "value", "value": [5, 2]}, [5, 2]),
    ),
    (
        "check: expected and tolerance",
        lambda tg: tg.check(
            {"op": "value", "value": [np.float64(0.5), T0(2.0)]},
            [T0(0.5), 2.0],
            tolerance={"rtol": F32(0.25), "atol": np.array(0.0)},
        ),
        lambda tg: tg.check(
            {"op": "value", "value": [0.5, 2.0]}, [0.5, 2.0], tolerance={"rtol": 0.25, "atol": 0.0}
        ),
    ),
    (
        "check_problem",
        lambda tg: tg.check_problem("cnn-rnn", "1.1a", "s1", [I64(5), I64(2)]),
        lambda tg: tg.check_problem("cnn-rnn", "1.1a", "s1", [5, 2]),
    ),
    (
        "grade",
        lambda tg: tg.grade(
            "cnn-rnn", "s1", {"1.1a": (np.int32(5), I64(2)), "1.3-4-loss": F32(1.5)}
        ),
        lambda tg: tg.grade("cnn-rnn", "s1", {"1.1a": [5, 2], "1.3-4-loss": 1.5}),
    ),
    (
        "loss_curve: a 2-D array",
        lambda tg: tg.loss_curve(np.array([[1.4, 1.3], [1.0, 0.9]]), 4),
        lambda tg: tg.loss_curve([[1.4, 1.3], [1.0, 0.9]], 4),
    ),
    (
        "loss_curve: a tensor, a numpy int, accuracies as 1-D arrays of unequal epochs",
        lambda tg: tg.loss_curve(
            torch.tensor([[1.4, 1.3], [1.0, 0.9]], dtype=torch.float64),
            I64(4),
            batch_accuracies=np.array([[0.25, 0.5], [0.75, 1.0]]),
        ),
        lambda tg: tg.loss_curve(
            [[1.4, 1.3], [1.0, 0.9]], 4, batch_accuracies=[[0.25, 0.5], [0.75, 1.0]]
        ),
    ),
    (
        "loss_curve: epochs of unequal length as 1-D arrays and tensors",
        lambda tg: tg.loss_curve(
            [np.array([1.4, 1.3]), torch.tensor([1.0], dtype=torch.float64)],
            4,
            batch_accuracies=[F32([0.25, 0.5]), (T0(0.75),)],
        ),
        lambda tg: tg.loss_curve([[1.4, 1.3], [1.0]], 4, batch_accuracies=[[0.25, 0.5], [0.75]]),
    ),
    (
        "loss_curve: 0-d tensors",
        lambda tg: tg.loss_curve([[T0(1.5), T0(1.25)], (F32(1.0), np.float64(0.5))], 4),
        lambda tg: tg.loss_curve([[1.5, 1.25], [1.0, 0.5]], 4),
    ),
    (
        "conv_shape: an array",
        lambda tg: tg.conv_shape(np.array([21, 12]), [4, 5]),
        lambda tg: tg.conv_shape([21, 12], [4, 5]),
    ),
    (
        "conv_shape: numpy and torch ints",
        lambda tg: tg.conv_shape(
            (I64(21), T0(12)),
            I64(4),
            stride=T0(4),
            padding=range(2),
            dilation=torch.tensor([1, 2]),
            in_channels=np.int16(3),
            out_channels=I64(8),
            output_padding=np.array([0, 0]),
        ),
        lambda tg: tg.conv_shape(
            [21, 12],
            4,
            stride=4,
            padding=[0, 1],
            dilation=[1, 2],
            in_channels=3,
            out_channels=8,
            output_padding=[0, 0],
        ),
    ),
    (
        "forward: a config",
        lambda tg: tg.forward("conv1d", {"weight": W}, {"x": X}, config={"stride": I64(2)}),
        lambda tg: tg.forward("conv1d", {"weight": W}, {"x": X}, config={"stride": 2}),
    ),
]


@pytest.mark.parametrize(
    ("as_numpy", "as_python"), [case[1:] for case in AS_NUMPY], ids=[case[0] for case in AS_NUMPY]
)
def test_numpy_scalars_and_0d_tensors_are_sent_as_the_numbers_they_are(
    client: TestClient,
    as_numpy: Callable[[Client], object],
    as_python: Callable[[Client], object],
) -> None:
    """The same request, the same answer, as with the plain Python numbers."""
    transport = InProcess(client)
    with Client("http://testserver", transport=transport) as tg:
        expected = as_python(tg)
        plain = body_sent(transport)
        got = as_numpy(tg)
        assert body_sent(transport) == plain
    if isinstance(expected, dict):
        assert isinstance(got, dict) and set(got) == set(expected)
        for key in expected:
            if isinstance(expected[key], np.ndarray):
                np.testing.assert_array_equal(got[key], expected[key])
            elif key not in ("request_id", "execution_time"):
                assert got[key] == expected[key], key


def test_temporal_order_options_are_sent_as_plain_numbers() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"initial": {}}))
    seen: list[httpx.Request] = []
    recorder = httpx.MockTransport(lambda r: seen.append(r) or transport.handle_request(r))
    with Client("http://x", transport=recorder) as tg:
        tg.temporal_order(epochs=I64(2), seed=T0(0), learning_rate=F32(0.5))
    assert orjson.loads(seen[0].content) == {"epochs": 2, "seed": 0, "learning_rate": 0.5}


def test_numpy_scalars_keep_the_rules_of_non_finite_numbers(tg: Client) -> None:
    """An answer's NaN is spelled out, as a float's is; elsewhere it is refused before sending,
    naming the entry."""
    for nan in (np.float64("nan"), F32("nan"), T0(float("nan"))):
        judged = tg.check_problem("cnn-rnn", "1.3-4-loss", "s1", nan)
        assert judged["status"] == "malformed"
        assert "answer is NaN; only finite numbers" in judged["feedback"]["reason"]
    judged = tg.check_problem("cnn-rnn", "1.1a", "s1", [I64(5), T0(float("inf"))])
    assert judged["status"] == "malformed"
    with pytest.raises(UnsendableError, match=r"^batch_losses\[0\]\[1\] is NaN, which JSON"):
        tg.loss_curve(np.array([[1.4, np.nan]]), 4)
    with pytest.raises(UnsendableError, match=r'^config\["stride"\] is Infinity, which JSON'):
        tg.forward("conv1d", {"weight": W}, {"x": X}, config={"stride": np.float64("inf")})


def test_what_json_cannot_write_is_refused_naming_the_entry() -> None:
    transport, seen = scripted()
    with Client("http://x", transport=transport) as tg:
        with pytest.raises(UnsendableError, match=r"^batch_losses\[0\]\[1\] is a set, which"):
            tg.loss_curve([[1.4, {1.3}]], 4)
        with pytest.raises(UnsendableError, match=r'^config\["stride"\] is a complex, which'):
            tg.forward("conv1d", {"weight": W}, {"x": X}, config={"stride": 1 + 2j})
        with pytest.raises(
            UnsendableError, match=r"^answer\[1\] is text that is not valid Unicode"
        ):
            tg.check({"op": "value", "value": 1}, ["a", "\udcfc"])
        with pytest.raises(UnsendableError, match="cannot be sent as JSON"):
            tg.conv_shape([7], 3, in_channels=2**70)
        unsent = tg.unsendable_answers({"1.1a": [5, 2], "1.1c-i": [[1.0], {"b": {2}}]})
    assert seen == []
    assert unsent == {
        "1.1c-i": 'answers["1.1c-i"][1]["b"] is a set, which cannot be sent as JSON '
        "(Type is not JSON serializable: set)"
    }


# -- lists of arrays: one tensor ----------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 1100])  # under and over the base64 threshold
@pytest.mark.parametrize(
    "rows",
    [
        lambda n: [np.ones(n), np.arange(n, dtype=np.float64)],
        lambda n: (torch.ones(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64)),
        lambda n: [np.ones(n), torch.arange(n, dtype=torch.float64)],
        lambda n: [[np.float64(1.0)] * n, np.arange(n)],  # numpy scalars, ints
        lambda n: [[1.0] * n, np.arange(n, dtype=np.float32)],  # a Python list among arrays
    ],
    ids=["arrays", "tensors", "both", "scalars", "with-a-list"],
)
def test_a_list_of_same_shaped_arrays_is_one_tensor_whatever_its_size(
    client: TestClient, rows: Callable[[int], object], n: int
) -> None:
    """It is judged the same, small or large: one tensor, not one per entry."""
    expected = {"op": "value", "value": np.stack([np.ones(n), np.arange(n)])}
    transport = InProcess(client)
    with Client("http://testserver", transport=transport) as tg:
        judged = tg.check(expected, rows(n))
        assert judged["correct"] is True, judged
        answer = orjson.loads(transport.requests[-1].content)["answer"]
        if n > 1024:
            assert answer["shape"] == [2, n] and "b64" in answer
        else:
            assert answer == [[1.0] * n, list(range(n))]
        # So in every tensor the client sends: params and inputs too.
        rows_of_x = [X[c] for c in range(5)]
        y = tg.forward("conv1d", {"weight": [W[0]]}, {"x": rows_of_x}, config={"stride": 2})["y"]
        np.testing.assert_array_equal(y, tg.forward("conv1d", {"weight": W}, {"x": X},
                                                    config={"stride": 2})["y"])  # fmt: skip


@pytest.mark.parametrize("n", [3, 1100])
def test_a_ragged_list_of_arrays_reaches_the_service_as_a_list(tg: Client, n: int) -> None:
    """The service answers it as it answers the same ragged list of numbers."""
    expected = {"op": "value", "value": np.ones((2, n))}
    ragged = [np.ones(n), np.ones(n - 1)]
    with pytest.raises(ProblemError) as as_lists:
        tg.check(expected, [row.tolist() for row in ragged])
    with pytest.raises(ProblemError) as as_arrays:
        tg.check(expected, ragged)
    assert as_arrays.value.status == as_lists.value.status == 422
    assert as_arrays.value.detail == as_lists.value.detail
    assert as_arrays.value.errors == as_lists.value.errors


@pytest.mark.parametrize(
    ("headers", "asked"),
    [
        ([("Retry-After", "5"), ("Retry-After", "30")], 30.0),
        ([("Retry-After", "5, 30")], 30.0),
        ([("Retry-After", "7")], 7.0),
    ],
)
def test_a_retry_after_sent_twice_is_the_longer_wait(
    headers: list[tuple[str, str]], asked: float
) -> None:
    """A proxy that adds its own: httpx joins the two with a comma, which read as no number
    at all, and the client retried after its short backoff, too early."""
    assert retry_after(httpx.Response(503, headers=headers)) == asked


def test_an_endless_or_unreadable_wait_is_the_error_at_once_and_backoffs_stay_finite() -> None:
    transport, seen = scripted(httpx.Response(503, headers={"Retry-After": "1e400"}))
    sleep, waits = recording()
    client = Client("http://x", transport=transport, sleep=sleep, max_wait=float("inf"))
    with client as tg, pytest.raises(ProblemError):
        tg.info()
    assert waits == [] and len(seen) == 1
    with Client("http://x", transport=scripted()[0], max_wait=60, jitter=lambda: 0.0) as tg:
        assert tg._waited(None, 2000) == 60 - 0.1 * 60 - 0.5  # finite: no OverflowError


def test_with_max_wait_inf_a_wait_past_a_day_is_the_error_at_once() -> None:
    """time.sleep refuses 1e10 s (an OverflowError at the first retry): a day is the most."""
    transport, seen = scripted(httpx.Response(503, headers={"Retry-After": "10000000000"}))
    sleep, waits = recording()
    client = Client("http://x", transport=transport, sleep=sleep, max_wait=float("inf"))
    with client as tg, pytest.raises(ProblemError, match=r"longer than a day \(86400 s\)"):
        tg.info()
    assert waits == [] and len(seen) == 1
    sleep, waits = recording()
    transport = scripted(*[httpx.Response(503)] * 3, httpx.Response(200, json={"status": "ok"}))[0]
    with Client(
        "http://x", transport=transport, sleep=sleep, max_wait=float("inf"), backoff=86400
    ) as tg:
        assert tg.health() == {"status": "ok"}
    assert len(waits) == 3 and max(waits) <= 86400  # each backoff capped at a day

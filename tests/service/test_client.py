"""The Python client: against the app in-process, over real HTTP, and against scripted answers.

`/v1/check`, `/v1/check/batch` and `/v1/assignments/{a}/grade` are exercised against a test
double of their contract (tests/fakes.py); the other operations against the real app.
"""

from __future__ import annotations

import base64
import email.utils
import gc
import time
import weakref
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import orjson
import pytest
import torch
from fastapi.testclient import TestClient

from service.app import create_app
from service.client import (
    Backward,
    Client,
    ProblemError,
    TorchClient,
    UnsendableError,
    answer_to_wire,
    from_wire,
    to_wire,
)
from service.examples import SEED_W_1x5x3, SEED_X_5x7
from service.settings import Settings
from service.transport import StdlibTransport
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


def test_429_and_503_are_retried_honouring_retry_after() -> None:
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    transport, seen = scripted(
        httpx.Response(429, headers={"Retry-After": "2"}),
        httpx.Response(503, headers={"Retry-After": later}),
        httpx.Response(503),
        httpx.Response(200, json={"status": "ok"}),
    )
    sleep, waits = recording()
    with Client("http://x", transport=transport, sleep=sleep, backoff=0.25) as tg:
        assert tg.health() == {"status": "ok"}
    assert waits[0] == 2.0
    assert 25 < waits[1] <= 30  # the date, as seconds from now
    assert waits[2] == 0.25 * 2**2  # no Retry-After: the backoff of the third retry
    assert len(set(seen)) == 1  # one request id for every try of one call


def test_connection_errors_are_retried_with_backoff_then_raised() -> None:
    refused = httpx.ConnectError("connection refused")
    transport, _ = scripted(refused, refused, httpx.Response(200, json={"status": "ok"}))
    sleep, waits = recording()
    with Client("http://x", transport=transport, sleep=sleep, backoff=0.5) as tg:
        assert tg.health() == {"status": "ok"}
    assert waits == [0.5, 1.0]

    transport, seen = scripted(refused, refused, refused)
    with (
        Client("http://x", transport=transport, sleep=sleep, retries=2) as tg,
        pytest.raises(httpx.ConnectError),
    ):
        tg.health()
    assert len(seen) == 3


def test_waits_are_capped_and_retries_run_out_on_the_last_answer() -> None:
    transport, _ = scripted(
        httpx.Response(429, headers={"Retry-After": "3600"}),
        httpx.Response(429, json={"type": "t", "title": "Too Many Requests", "status": 429,
                                  "detail": "slow down"}),
    )  # fmt: skip
    sleep, waits = recording()
    client = Client("http://x", transport=transport, sleep=sleep, retries=1, max_wait=10)
    with client as tg, pytest.raises(ProblemError) as error:
        tg.info()
    assert waits == [10] and error.value.status == 429 and error.value.detail == "slow down"


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
        native = tg.grade("cnn-rnn", "s1", {"1.1a": [5, 2], "1.1c-i": 4})
        assert native["total"] == 2.0
        gradescope = tg.grade("cnn-rnn", "s1", {"1.1a": [5, 2]}, gradescope=True)
        assert gradescope["score"] == 2.0 and len(gradescope["tests"]) == 2
        with pytest.raises(ProblemError) as error:
            tg.grade("nope", "s1", {})
        assert error.value.status == 404


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

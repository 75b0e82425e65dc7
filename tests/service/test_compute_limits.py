"""Concurrency per device, the compute deadline, and running out of memory."""

from __future__ import annotations

import base64
import dataclasses
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from torch.utils.flop_counter import FlopCounterMode

from models import conv
from models.attention_rnn import (
    PRODUCT_SPEEDUP,
    attention_rnn,
    parse_config,
    total_paths_flops,
)
from models.attention_totals import log_total_norms
from models.autodiff import (
    SAVED_ELEMENTS,
    jacobian_chunk_count,
    jacobian_chunk_size,
    saved_row_elements,
)
from models.registry import MODELS, ArgSpec, ReferenceModel, get_model
from service.app import create_app
from service.compute import (
    closed_form_flops,
    closed_form_seconds,
    estimated_seconds,
    prepare,
    vector_jacobian_products,
)
from service.costs import fixed_seconds, forward_flops
from service.examples import SEED_W_1x5x3, SEED_X_5x7
from service.gate import ComputeGate
from service.middleware import EXEMPT_PATHS
from service.problems import Problem, is_allocation_failure
from service.schemas import JacobianRequest, ModelRequest
from service.settings import Settings

# On the CPU even where a GPU is present: the estimates, slots and messages below are the CPU's.
SEED = {
    "device": "cpu",
    "config": {"stride": 2},
    "params": {"weight": SEED_W_1x5x3},
    "inputs": {"x": SEED_X_5x7},
}
CPU = torch.device("cpu")


def quiet(**changes: Any) -> Settings:
    """Settings of an app whose start-up computes nothing: the built-in assignment's keys are
    computed at start-up, and these tests patch or starve the very computations they run."""
    return Settings(builtin_assignments=False, **changes)


class Blocker:
    """A forward pass that signals when it starts and holds until released."""

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()

    def forward(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def blocked(config: Any, args: Mapping[str, torch.Tensor]) -> Any:
            self.entered.release()
            assert self.release.wait(timeout=30), "the test never released the computation"
            return original(config, args)

        return blocked


@pytest.fixture
def blocker(monkeypatch: pytest.MonkeyPatch) -> Blocker:
    blocker = Blocker()
    model = get_model("conv1d")
    monkeypatch.setitem(
        MODELS, "conv1d", dataclasses.replace(model, forward=blocker.forward(model.forward))
    )
    return blocker


def test_a_full_device_answers_503_with_retry_after_then_serves_again(blocker: Blocker) -> None:
    settings = quiet(max_concurrent_computations=1, compute_queue_size=0)
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/v1/models/conv1d/forward", json=SEED)
        assert blocker.entered.acquire(timeout=30)
        busy = client.post("/v1/models/conv1d/forward", json=SEED)
        assert busy.status_code == 503
        assert busy.headers["retry-after"].isdigit()
        assert busy.headers["content-type"] == "application/problem+json"
        assert busy.json()["type"].endswith("/busy") and "cpu is busy" in busy.json()["detail"]
        # Routes that do not compute are not held up by a busy device.
        assert client.get("/healthz").status_code == 200
        blocker.release.set()
        assert first.result(timeout=30).status_code == 200
        assert client.post("/v1/models/conv1d/forward", json=SEED).status_code == 200


def hold(gate: ComputeGate, entered: threading.Event, release: threading.Event) -> None:
    with gate.slot(CPU):
        entered.set()
        assert release.wait(timeout=30)


def test_the_wait_queue_is_bounded() -> None:
    gate = ComputeGate(capacity=1, queue_size=1, timeout=30)
    entered, release = threading.Event(), threading.Event()
    with ThreadPoolExecutor(2) as pool:
        holder = pool.submit(hold, gate, entered, release)
        assert entered.wait(timeout=30)
        waiter_in, waiter_release = threading.Event(), threading.Event()
        waiter = pool.submit(hold, gate, waiter_in, waiter_release)
        while gate._waiting["cpu"] == 0:  # the second caller is queued
            threading.Event().wait(0.01)
        with pytest.raises(Problem) as caught, gate.slot(CPU):
            pass
        assert caught.value.status == 503 and "1 are waiting" in caught.value.detail
        assert caught.value.headers["Retry-After"] == "30"
        release.set()
        holder.result(timeout=30)
        assert waiter_in.wait(timeout=30)  # the queued caller got the slot
        waiter_release.set()
        waiter.result(timeout=30)


def test_a_wait_that_times_out_is_a_503() -> None:
    gate = ComputeGate(capacity=1, queue_size=4, timeout=0.05)
    entered, release = threading.Event(), threading.Event()
    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(hold, gate, entered, release)
        assert entered.wait(timeout=30)
        with pytest.raises(Problem) as caught, gate.slot(CPU):
            pass
        assert caught.value.status == 503 and "none finished within 0.05 s" in caught.value.detail
        release.set()
        holder.result(timeout=30)
    with gate.slot(CPU):  # the slot was given back
        assert gate._waiting["cpu"] == 0


def test_devices_have_separate_slots() -> None:
    gate = ComputeGate(capacity=1, queue_size=0, timeout=0)
    with gate.slot(CPU):
        with pytest.raises(Problem), gate.slot(CPU):
            pass
        with gate.slot(torch.device("meta")):  # another device is not held up
            pass
    with gate.slot(CPU):
        pass  # free again after the refused attempt


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        MemoryError(),
        # What torch's CPU allocator raises: a plain RuntimeError (a 500 before it was mapped).
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 28769288192 bytes. Error code 12 (Cannot allocate "
            "memory)"
        ),
    ],
    ids=["device", "host", "cpu-allocator"],
)
def test_out_of_memory_is_503_and_the_service_keeps_working(
    monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    model = get_model("conv1d")

    def exhausted(config: Any, args: Any) -> Any:
        raise error

    settings = quiet(max_concurrent_computations=1, compute_queue_size=0)
    with TestClient(create_app(settings)) as client:
        monkeypatch.setitem(MODELS, "conv1d", dataclasses.replace(model, forward=exhausted))
        response = client.post("/v1/models/conv1d/forward", json=SEED)
        assert response.status_code == 503
        assert response.headers["retry-after"].isdigit()
        assert response.json()["type"].endswith("/out-of-memory")
        monkeypatch.setitem(MODELS, "conv1d", model)
        # With one slot, a 200 here also shows that the failed computation gave its slot back.
        assert client.post("/v1/models/conv1d/forward", json=SEED).status_code == 200
        assert client.get("/healthz").status_code == 200


def test_a_runtime_error_that_is_not_an_allocation_is_still_a_500(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = get_model("conv1d")

    def broken(config: Any, args: Any) -> Any:
        raise RuntimeError("shapes cannot be multiplied (3x4 and 5x6)")

    with TestClient(create_app(quiet()), raise_server_exceptions=False) as client:
        monkeypatch.setitem(MODELS, "conv1d", dataclasses.replace(model, forward=broken))
        response = client.post("/v1/models/conv1d/forward", json=SEED)
        assert response.status_code == 500
        assert "Retry-After" not in response.headers
        assert response.json()["detail"].startswith("The service failed to answer")
        monkeypatch.setitem(MODELS, "conv1d", model)
        assert client.post("/v1/models/conv1d/forward", json=SEED).status_code == 200


def test_a_real_allocation_failure_of_the_cpu_allocator_is_recognised() -> None:
    """torch's own error, not a copy of its words: a tensor of 2**60 bytes, past any address
    space, which the system refuses outright whatever its overcommit policy."""
    with pytest.raises(RuntimeError) as caught:
        torch.empty(2**57, dtype=torch.float64)
    assert is_allocation_failure(caught.value)
    assert not is_allocation_failure(RuntimeError("a bug"))


@pytest.mark.parametrize(
    ("dims", "config", "weight", "x"),
    [
        (1, {"stride": 2}, (4, 5, 3), (5, 17)),
        (1, {"padding": 2, "dilation": 3}, (2, 3, 4), (3, 20)),
        (2, {"padding": 1}, (16, 3, 3, 3), (3, 12, 10)),
        (2, {"stride": [2, 1], "padding": "same"}, (3, 2, 2, 5), (2, 9, 11)),
    ],
)
def test_the_conv_cost_is_the_count_torch_measures(
    dims: int, config: dict[str, Any], weight: tuple[int, ...], x: tuple[int, ...]
) -> None:
    if config.get("padding") == "same":
        config = {"padding": "same"}
    parsed = conv.parse_conv_config(config, dims)
    shapes = {"weight": weight, "x": x}
    args = {name: torch.ones(shape, dtype=torch.float64) for name, shape in shapes.items()}
    with FlopCounterMode(display=False) as counter:
        y = conv.conv_forward(parsed, args)["y"]
    assert conv.conv_flops(parsed, shapes) == counter.get_total_flops()
    # Second count: a multiply and an add per output element, input channel and kernel tap.
    c, *kernel = weight[1:]
    taps = c * int(torch.tensor(kernel).prod())
    assert conv.conv_flops(parsed, shapes) == 2 * y.numel() * taps


def matmul_forward(_: Any, args: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"h": torch.tanh(args["x"] @ args["W"].T)}  # (T, m)


def test_the_generic_cost_covers_a_recurrence_without_its_own_count() -> None:
    model = ReferenceModel(
        name="toy",
        summary="",
        params=(ArgSpec("W", ("m", "n"), ""),),
        inputs=(ArgSpec("x", ("T", "n"), ""),),
        outputs=(ArgSpec("h", ("T", "m"), ""),),
        config=(),
        parse_config=dict,
        output_shapes=lambda _, s: {"h": (s["x"][0], s["W"][0])},
        forward=matmul_forward,
    )
    shapes = {"W": (6, 5), "x": (40, 5)}
    args = {name: torch.ones(shape, dtype=torch.float64) for name, shape in shapes.items()}
    with FlopCounterMode(display=False) as counter:
        model.forward(None, args)
    estimate = forward_flops(model, None, shapes, {"h": (40, 6)})
    assert counter.get_total_flops() == 2 * 40 * 6 * 5
    assert counter.get_total_flops() <= estimate <= 2 * counter.get_total_flops()


@pytest.fixture
def no_forward(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    model = get_model("conv2d")

    def never(*_: Any) -> Any:
        raise AssertionError("a refused request must not be computed")

    # Without its closed form too: the Jacobian below is then autograd's, one vector-Jacobian
    # product per output element (the closed form writes it in milliseconds).
    autograd_only = dataclasses.replace(
        model, forward=never, closed_form_jacobian=None, closed_form_covers=None
    )
    monkeypatch.setitem(MODELS, "conv2d", autograd_only)
    yield


@pytest.mark.usefixtures("no_forward")
def test_what_cannot_finish_before_the_deadline_is_refused_before_starting(
    client: TestClient,
) -> None:
    # A 3x3 input padded by 500 gives a 1001x1001 output: 9M Jacobian entries (within budget),
    # each output element a vector-Jacobian product: about 4e13 operations.
    body = {
        "config": {"padding": 500},
        "params": {"weight": [[[[1.0] * 3] * 3]]},
        "inputs": {"x": [[[1.0] * 3] * 3]},
        "of": "y",
        "wrt": "weight",
    }
    response = client.post("/v1/models/conv2d/jacobian", json=body)
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"].endswith("/over-compute-deadline")
    rows = 1001 * 1001
    flops = 2 * rows * 9 * (1 + 2 * rows) + 4 * rows * (9 + 9 + rows)
    assert f"{flops:.3g} floating-point operations" in problem["detail"]
    assert f"the limit is {Settings().compute_deadline_seconds:g} s" in problem["detail"]


def test_the_deadline_scales_with_the_setting() -> None:
    tight = quiet(compute_deadline_seconds=1e-9)
    with TestClient(create_app(tight)) as client:
        response = client.post("/v1/models/conv1d/forward", json=SEED)
    assert response.status_code == 422
    assert "the limit is 1e-09 s" in response.json()["detail"]


def test_a_worker_over_its_requests_in_flight_answers_503_but_probes_pass(
    blocker: Blocker,
) -> None:
    settings = quiet(max_requests_in_flight=1)
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/v1/models/conv1d/forward", json=SEED)
        assert blocker.entered.acquire(timeout=30)
        for refused in (client.get("/v1/models"), client.post("/v1/shapes/conv", content=b"{")):
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["type"].endswith("/overloaded")
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        blocker.release.set()
        assert first.result(timeout=30).status_code == 200
        assert client.get("/v1/models").status_code == 200


def test_every_operation_the_in_flight_limit_covers_declares_503(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    covered = [
        (m, p, o) for p, ops in paths.items() if p not in EXEMPT_PATHS for m, o in ops.items()
    ]
    assert len(covered) > 10
    for method, path, operation in covered:
        assert "503" in operation["responses"], (method, path)
    # Of the exempt ones, only the readiness probe answers 503 (while warming up).
    assert "503" in paths["/readyz"]["get"]["responses"]
    assert "503" not in paths["/healthz"]["get"]["responses"]


FORWARD_KEY = {"op": "forward", "model": "conv1d", **SEED}
CHECK = {"expected": FORWARD_KEY, "answer": [[2.0, -2.0, 2.0]]}
SHAPE_CHECK = {"expected": {"op": "conv_shape", "input_size": [7], "kernel_size": 3}, "answer": [5]}


def test_checks_compute_their_keys_in_a_device_slot(blocker: Blocker) -> None:
    settings = quiet(max_concurrent_computations=1, compute_queue_size=0)
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/v1/models/conv1d/forward", json=SEED)
        assert blocker.entered.acquire(timeout=30)
        # The key of a model is device work: it waits for a slot like the model endpoints,
        # and a batch is refused whole (the checks are fine; the client retries them all).
        for path, body in (("/v1/check", CHECK), ("/v1/check/batch", {"checks": [CHECK]})):
            busy = client.post(path, json=body)
            assert busy.status_code == 503, busy.text
            assert busy.json()["type"].endswith("/busy") and busy.headers["retry-after"]
        # A shape key takes no device time.
        assert client.post("/v1/check", json=SHAPE_CHECK).json()["correct"] is True
        blocker.release.set()
        assert first.result(timeout=30).status_code == 200
        assert client.post("/v1/check", json=CHECK).json()["correct"] is True


def test_a_check_whose_key_cannot_finish_in_time_is_refused_before_computing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = get_model("conv1d")
    monkeypatch.setitem(MODELS, "conv1d", dataclasses.replace(model, forward=never))
    with TestClient(create_app(quiet(compute_deadline_seconds=1e-9))) as client:
        single = client.post("/v1/check", json=CHECK)
        assert single.status_code == 422
        assert single.json()["type"].endswith("/over-compute-deadline")
        assert single.json()["detail"].startswith("expected: ")
        batch = client.post("/v1/check/batch", json={"checks": [CHECK, SHAPE_CHECK]})
        assert batch.status_code == 200
        error, judged = batch.json()["results"]
        assert error["error"]["type"].endswith("/over-compute-deadline")
        assert judged["correct"] is True


def never(*_: Any) -> Any:
    raise AssertionError("a refused check must not reach the computation")


def b64_tensor(shape: tuple[int, ...], scale: float = 0.1, seed: int = 0) -> dict[str, Any]:
    values = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    array = (scale * values).numpy().astype("<f8")
    return {
        "shape": list(shape),
        "datatype": "FP64",
        "b64": base64.b64encode(array.tobytes()).decode(),
    }


def attention_body(k: Any, steps: int, n: int) -> dict[str, Any]:
    width = 2 if k == "inf" else k + 1
    params = {name: b64_tensor((width, n, n), seed=i) for i, name in enumerate("QKV")}
    return {"config": {"k": k}, "params": params, "inputs": {"x": b64_tensor((steps, n), 1.0, 9)}}


@pytest.mark.parametrize(
    ("operation", "extra", "n"),
    [("jacobian", {"of": "h", "wrt": "x"}, 2), ("backward", {"grad_outputs": None}, 960)],
    ids=["dh-dx", "backward-n960"],
)
def test_attention_inf_over_long_sequences_is_refused_for_its_per_step_work(
    client: TestClient, operation: str, extra: dict[str, Any], n: int
) -> None:
    """AttentionRNN(inf) reads every past state at every step: over 1,024 steps dh/dx took 36 s
    (n = 2) and a backward pass 42 s (n = 960), which the operation count alone put at a few
    seconds. The per-step costs of models/overhead.py put them over the deadline."""
    body = attention_body("inf", 1024, n)
    if operation == "backward":
        extra = {"grad_outputs": {"h": b64_tensor((1024, n))}}
    response = client.post(f"/v1/models/attention_rnn/{operation}", json={**body, **extra})
    assert response.status_code == 422, response.text[:300]
    problem = response.json()
    assert problem["type"].endswith("/over-compute-deadline")
    assert "of per-step work (a loop over time steps)" in problem["detail"]


def test_per_step_costs_grow_with_the_work_of_each_model() -> None:
    """The fixed costs' shape: linear in the steps with a window k, quadratic with k = inf,
    every chunk of jacrev's rows charged its batched pass; chunks counted as autodiff makes
    them."""
    attention, gated = get_model("attention_rnn"), get_model("gated_rnn")
    assert attention.overhead is not None and gated.overhead is not None
    window, inf = attention.parse_config({"k": 2}), attention.parse_config({"k": "inf"})
    for model, config in ((attention, window), (gated, gated.parse_config({}))):
        short = model.overhead(config, {"x": (256, 4)})
        assert model.overhead(config, {"x": (512, 4)}).backward == pytest.approx(2 * short.backward)
        longer = model.overhead(config, {"x": (512, 4)}).batched
        assert short.batched > 0 and longer == pytest.approx(2 * short.batched)
    quadratic = [attention.overhead(inf, {"x": (t, 4)}).backward for t in (512, 1024)]
    assert quadratic[1] > 3 * quadratic[0]  # linear would be 2
    cost = attention.overhead(inf, {"x": (512, 4)})
    assert cost.batched > cost.backward
    assert fixed_seconds(cost, "forward") < fixed_seconds(cost, "backward")
    assert fixed_seconds(cost, "jacobian", 3) > 3 * cost.batched
    args = {"Q": torch.zeros(2, 3, 3), "K": torch.zeros(2, 3, 3), "V": torch.zeros(2, 3, 3)}
    for steps in (4, 1024, 4096):
        args["x"] = torch.zeros(steps, 3)
        rows = steps * 3
        size = jacobian_chunk_size(attention, inf, args, "h")
        elements = sum(t.numel() for t in args.values())
        shapes = {name: tuple(t.shape) for name, t in args.items()}
        saved = saved_row_elements(attention, inf, shapes)
        assert jacobian_chunk_count(rows, elements, saved) == -(-rows // size)


def test_closed_form_state_jacobians_are_not_charged_as_autograd(client: TestClient) -> None:
    """The state Jacobians are a forward pass and a few m x m products per step: 1,024 steps of
    n = 16 take well under a second, and were refused as if each row were a backward pass."""
    for k in (2, "inf"):
        body = attention_body(k, 1024, 16)
        response = client.post("/v1/models/attention_rnn/state-jacobians", json=body)
        assert response.status_code == 200, response.text[:300]
        assert response.json()["jacobians"]["shape"] == [1024, 16, 16]


@pytest.mark.parametrize(
    ("model", "body", "wrt"),
    [
        (
            "gated_rnn",
            {"params": {"W_c": (8, 8), "W_h": (8, 8), "W_x": (8, 8)}, "inputs": {"x": (1024, 8)}},
            "W_h",
        ),
        (
            "gated_rnn",
            {
                "params": {"W_c": (16, 16), "W_h": (16, 16), "W_x": (16, 16)},
                "inputs": {"x": (512, 16)},
            },
            "W_h",
        ),
        (
            "attention_rnn",
            {"params": {n: (3, 2, 2) for n in "QKV"}, "inputs": {"x": (1024, 2)}},
            "x",
        ),
    ],
    ids=["gated-1024-W_h", "gated-512-m16-W_h", "attention-k2-1024"],
)
def test_jacobians_that_finish_in_seconds_are_not_refused(
    model: str, body: dict[str, Any], wrt: str
) -> None:
    """Measured: 5.4 s, 2.4 s and 3 s. A fixed cost per chunk of jacrev's rows once put the
    first two at 57 s and 31 s: the estimate stays within the deadline (computed here without
    running them)."""
    shaped = {
        part: {name: b64_tensor(shape) for name, shape in tensors.items()}
        for part, tensors in body.items()
    }
    request = JacobianRequest.model_validate({**shaped, "of": "h", "wrt": wrt})
    settings = Settings()
    prepared = prepare(model, request, settings)
    rows = math.prod(prepared.output_shapes["h"])
    assert estimated_seconds(prepared, rows, settings) < settings.compute_deadline_seconds


@pytest.mark.parametrize(
    ("model", "config", "params", "x", "wrt", "seconds"),
    [
        ("gated_rnn", {}, {"W_c": (16, 1), "W_h": (16, 16), "W_x": (16, 1)}, (1024, 1), "x", 6.1),
        ("attention_rnn", {"k": 8}, {n: (9, 4, 4) for n in "QKV"}, (1024, 4), "x", 8.3),
        ("attention_rnn", {"k": 256}, {n: (257, 1, 1) for n in "QKV"}, (1024, 1), "x", 5.6),
        ("attention_rnn", {"k": 2}, {n: (3, 8, 8) for n in "QKV"}, (1024, 8), "V", 18.4),
        # Measured on a loaded machine, in batches sized by the arguments alone (which also
        # took 1.7 to 4.4 GB): the estimates were 20.0, 17.0, 7.4, 7.7 and 19.2 s.
        ("attention_rnn", {"k": 256}, {n: (257, 2, 2) for n in "QKV"}, (1024, 2), "Q", 74.5),
        ("attention_rnn", {"k": 32}, {n: (33, 4, 4) for n in "QKV"}, (1024, 4), "K", 53.0),
        ("attention_rnn", {"k": 64}, {n: (65, 2, 2) for n in "QKV"}, (1024, 2), "Q", 24.0),
        ("attention_rnn", {"k": 256}, {n: (257, 1, 1) for n in "QKV"}, (1024, 1), "x", 13.0),
        ("attention_rnn", {"k": "inf"}, {n: (2, 2, 2) for n in "QKV"}, (768, 2), "x", 23.0),
        # One thread, functorch warmed up, batches sized as now (512 MiB each): 5.0-5.5 s,
        # 2.6-2.9 s and 2.5-3.0 s.
        ("attention_rnn", {"k": 64}, {n: (65, 2, 2) for n in "QKV"}, (512, 2), "Q", 5.5),
        ("attention_rnn", {"k": 32}, {n: (33, 4, 4) for n in "QKV"}, (256, 4), "K", 2.9),
        ("attention_rnn", {"k": 8}, {n: (9, 4, 4) for n in "QKV"}, (512, 4), "x", 3.0),
    ],
    ids=[
        "gated-dh/dx",
        "attention-k8-dh/dx",
        "attention-k256-dh/dx",
        "attention-k2-dh/dV",
        "attention-k256-n2-dh/dQ",
        "attention-k32-n4-dh/dK",
        "attention-k64-n2-dh/dQ",
        "attention-k256-n1-dh/dx-loaded",
        "attention-inf-n2-768-dh/dx",
        "attention-k64-n2-512-dh/dQ",
        "attention-k32-n4-256-dh/dK",
        "attention-k8-n4-512-dh/dx",
    ],
)
def test_recurrent_jacobians_are_estimated_at_least_at_their_measured_time(
    model: str,
    config: dict[str, Any],
    params: dict[str, tuple[int, ...]],
    x: tuple[int, ...],
    wrt: str,
    seconds: float,
) -> None:
    """Measured (computed here from the estimate, not run): each chunk of jacrev's rows runs
    every step batched, dearer than its operation count, and each row adds the traffic of its
    slices of the batched tensors, which grows with n and the window. The first four on an
    idle 2-core machine: before the batched steps were charged they were estimated at 4.6,
    1.9, 1.7 and 4.3 s; the last had taken 88 s with another process on the machine (the
    deadline is 20 s). With n > 1 against Q and K, before the rows were charged, the estimate
    was a quarter to a third of the time."""
    body = {
        "config": config,
        "params": {name: b64_tensor(shape) for name, shape in params.items()},
        "inputs": {"x": b64_tensor(x)},
        "of": "h",
        "wrt": wrt,
        "device": "cpu",  # measured on a CPU; "auto" would be the GPU on a GPU host
    }
    settings = Settings()
    prepared = prepare(model, JacobianRequest.model_validate(body), settings)
    rows = math.prod(prepared.output_shapes["h"])
    assert estimated_seconds(prepared, rows, settings) >= seconds


@pytest.mark.parametrize(
    ("k", "n", "wrt"),
    [(256, 2, "Q"), (32, 4, "K"), (64, 2, "Q"), (256, 1, "x"), ("inf", 2, "x"), (2, 8, "V")],
)
def test_jacobian_batches_keep_the_saved_activations_within_their_budget(
    k: int | str, n: int, wrt: str
) -> None:
    """The batches of rows are sized by what the batched backward keeps per row, not by the
    cotangents and arguments alone: at 1,024 steps these took 1.7 to 4.4 GB in one or two
    batches. The estimate counts the batches so sized."""
    width = 2 if k == "inf" else int(k) + 1
    body = {
        "config": {"k": k},
        "params": {name: b64_tensor((width, n, n)) for name in "QKV"},
        "inputs": {"x": b64_tensor((1024, n))},
        "of": "h",
        "wrt": wrt,
    }
    settings = Settings()
    prepared = prepare("attention_rnn", JacobianRequest.model_validate(body), settings)
    model, config, args = prepared.model, prepared.config, prepared.args
    saved = saved_row_elements(model, config, prepared.arg_shapes)
    chunk = jacobian_chunk_size(model, config, args, "h")
    assert saved > 0 and chunk * saved <= SAVED_ELEMENTS
    assert 8 * chunk * saved <= 512 * 2**20
    rows, arguments = 1024 * n, sum(t.numel() for t in args.values())
    assert jacobian_chunk_count(rows, arguments, saved) == -(-rows // chunk)


def test_the_jacobian_estimate_grows_with_n_and_with_the_rows() -> None:
    """AttentionRNN(k)'s batched rows cost per step, lag and n (and n**2, the products), on
    top of each chunk's fixed cost: over 256 steps with k = 32, dh/dQ at n = 2 took 0.8 s and
    dh/dK at n = 4 2.6-2.9 s (one thread, warm), where the estimate had grown by a fifth
    (from 0.61 to 0.95 s). Twice the rows, each dearer: more than 2.4 times the estimate from
    n = 2 to 4, and 4 times from 4 to 8."""
    settings = Settings()

    def estimate(k: int, n: int, steps: int = 256) -> float:
        body = {
            "config": {"k": k},
            "params": {name: b64_tensor((k + 1, n, n)) for name in "QKV"},
            "inputs": {"x": b64_tensor((steps, n))},
            "of": "h",
            "wrt": "Q",
        }
        prepared = prepare("attention_rnn", JacobianRequest.model_validate(body), settings)
        return estimated_seconds(prepared, steps * n, settings)

    for k in (8, 32):
        two, four, eight = (estimate(k, n) for n in (2, 4, 8))
        assert four > 2.4 * two and eight > 4 * four
    assert estimate(32, 4) >= 2.9


def test_closed_form_jacobians_are_estimated_as_the_fill_they_are(client: TestClient) -> None:
    """A conv Jacobian in closed form writes each entry once: its estimate is a few operations
    per entry, not one vector-Jacobian product per output element (which refused a 200,000
    entry dy/dW at "96 s"; it takes milliseconds). Autograd's Jacobians keep their count."""
    x = b64_tensor((1, 200_000))
    body = {
        "device": "cpu",
        "params": {"weight": [[[1.0]]], "bias": [0.5]},
        "inputs": {"x": x},
        "of": "y",
        "encoding": "b64",
    }
    for wrt in ("weight", "bias"):
        response = client.post("/v1/models/conv1d/jacobian", json={**body, "wrt": wrt})
        assert response.status_code == 200, response.text[:300]
        assert response.json()["method"] == "closed-form"
    settings = Settings()
    conv = prepare("conv1d", JacobianRequest.model_validate({**body, "wrt": "weight"}), settings)
    assert vector_jacobian_products(conv, "jacobian", "y", "weight") == 0
    assert closed_form_flops(conv, "jacobian", "y", "weight") == 4 * 200_000
    assert estimated_seconds(conv, 0, settings) < 0.01
    # The gated RNN has no closed form: still one product per output element.
    gated = {
        "device": "cpu",
        "params": {"W_c": [[0.1]], "W_h": [[0.2]], "W_x": [[0.3]]},
        "inputs": {"x": [[1.0], [2.0]]},
        "of": "h",
        "wrt": "x",
    }
    rnn = prepare("gated_rnn", JacobianRequest.model_validate(gated), settings)
    assert vector_jacobian_products(rnn, "jacobian", "h", "x") == 2
    assert closed_form_flops(rnn, "jacobian", "h", "x") == 0


@pytest.mark.parametrize(("k", "seq_len", "n"), [(2, 40, 6), (5, 40, 6), ("inf", 40, 6), (3, 2, 4)])
def test_the_state_jacobians_count_the_paths_to_older_states(
    k: int | str, seq_len: int, n: int
) -> None:
    """AttentionRNN's dh[t]/dh[1] through every path: the estimate is what torch counts, its
    matrix products at a sixth (they run several times the assumed rate), never more than the
    count nor far below it; with k = 1 there is only the chain, counted already."""
    width = 2 if k == "inf" else int(k) + 1
    gen = torch.Generator().manual_seed(3)
    Q, K, V = (0.3 * torch.randn(width, n, n, generator=gen, dtype=torch.float64) for _ in "QKV")
    x = torch.randn(seq_len, n, generator=gen, dtype=torch.float64)
    h, a, _ = attention_rnn(Q, K, V, x, k)  # type: ignore[arg-type]
    with FlopCounterMode(display=False) as counter:
        log_total_norms(Q, K, V, x, h, a, k)
    estimate = total_paths_flops(parse_config({"k": k}), {"x": (seq_len, n)})
    counted = counter.get_total_flops()
    assert counted // (2 * PRODUCT_SPEEDUP) <= estimate <= counted
    assert total_paths_flops(parse_config({"k": 1}), {"x": (seq_len, n)}) == 0
    body = {
        "config": {"k": k},
        "params": {name: t.tolist() for name, t in zip("QKV", (Q, K, V), strict=True)},
        "inputs": {"x": x.tolist()},
    }
    prepared = prepare("attention_rnn", ModelRequest.model_validate(body), Settings())
    chain = 40 * seq_len * n**3  # the closed form of the one-step Jacobians and their analysis
    assert closed_form_flops(prepared, "state-jacobians") == chain + estimate


# Measured on an NVIDIA H200 in float64 (the state-jacobians route, whole): model, k, T, m,
# seconds. The estimate must cover each, and not by more than a few times.
STATE_JACOBIANS_ON_A_GPU = [
    ("gated_rnn", None, 1024, 64, 6.17),
    ("gated_rnn", None, 1024, 125, 15.21),
    ("attention_rnn", 1, 1024, 64, 7.54),
    ("attention_rnn", 2, 1024, 16, 1.22),
    ("attention_rnn", 2, 1024, 64, 12.15),
    ("attention_rnn", 2, 1024, 125, 28.18),
    ("attention_rnn", "inf", 1024, 64, 10.92),
    ("attention_rnn", "inf", 1024, 125, 25.37),
]


@pytest.mark.parametrize(("model", "k", "steps", "m", "seconds"), STATE_JACOBIANS_ON_A_GPU)
def test_the_state_jacobians_per_step_cost_on_a_gpu_covers_what_was_measured(
    model: str, k: int | str | None, steps: int, m: int, seconds: float
) -> None:
    """On a GPU the state Jacobians are a loop of launches and waits, not operations: the
    estimate counted 0.2-1.3 s for runs of 6-28 s before it had a per-step cost."""

    def zeros(*shape: int) -> dict[str, Any]:
        return {"shape": list(shape), "b64": base64.b64encode(bytes(8 * math.prod(shape))).decode()}

    if model == "gated_rnn":
        body: dict[str, Any] = {"params": {name: zeros(m, m) for name in ("W_c", "W_h", "W_x")}}
    else:
        width = 2 if k == "inf" else int(k or 1) + 1
        body = {"config": {"k": k}, "params": {p: zeros(width, m, m) for p in "QKV"}}
    body["inputs"] = {"x": zeros(steps, m)}
    body["device"] = "cpu"  # "auto" would be the GPU on a GPU host
    prepared = prepare(model, ModelRequest.model_validate(body), Settings())
    assert closed_form_seconds(prepared, "state-jacobians") == 0.0  # the CPU: operations
    on_gpu = dataclasses.replace(prepared, device=torch.device("cuda"))
    estimate = closed_form_seconds(on_gpu, "state-jacobians")
    assert seconds <= estimate <= 4 * seconds

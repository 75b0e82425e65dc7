"""The performance targets of the service, each a ratio against a baseline in the same run.

Starts the service the README's way (``tensorgrade serve``, or ``python -m service.cli serve``
where the project is not installed) as a subprocess with fixed settings, warms up, repeats
each scenario, takes medians and prints one table: scenario, baseline, ours, ratio, target,
met. Shared machines are noisy: absolute times move between runs, ratios hold better, since
each pair is measured interleaved in the same run.

Usage, from the repository root::

    python -m bench            # full run, a few minutes
    python -m bench --quick    # under 2 minutes
"""

from __future__ import annotations

import argparse
import base64
import importlib.metadata
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
import torch.nn.functional as F
from torch.func import jacrev

from bench import load
from bench.fetch import Fetcher
from models import autodiff
from models.registry import get_model
from models.zeroed_buffers import recycling
from service.client import Client
from service.compute import prepare
from service.examples import SEED_W_1x5x3, SEED_X_5x7
from service.routing import parse_json
from service.schemas import ModelRequest
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
# The conv1d of the issue: 16 channels, length 128, 16 filters, kernel 5 (dy/dx: 4.06M entries).
CHANNELS, LENGTH, FILTERS, KERNEL = 16, 128, 16, 5
# A conv2d large enough to matter on a GPU (--device cuda): 8 channels of 32 x 32, 8 filters of
# 3 x 3; dy/dx has 8 * 30 * 30 * 8 * 32 * 32 = 59M entries (472 MB in float64).
CONV2D_CHANNELS, CONV2D_SIZE, CONV2D_FILTERS, CONV2D_KERNEL = 8, 32, 8, 3
SHAPE_REQUEST = {"input_size": [21, 12], "kernel_size": [4, 5], "stride": 4, "out_channels": 8}


@dataclass
class Row:
    """One line of the table; ``baseline`` and ``ours`` are already formatted."""

    scenario: str
    baseline: str
    ours: str
    ratio: float | None
    target: str
    met: bool | None
    note: str = ""


@dataclass
class Plan:
    """How much to repeat: ``--quick`` or full."""

    reps: int
    warmup: int
    load_seconds: float
    load_rounds: int


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired_medians(
    baseline: Callable[[], object], ours: Callable[[], object], plan: Plan
) -> tuple[float, float]:
    """Median seconds of each, after warm-up, interleaved so that both see the same noise.

    The order swaps every repetition (baseline-ours, ours-baseline, ...): over HTTP the
    server's leftover work from one request (freeing a 32 MB answer) lands on the next one,
    and the swap spreads it evenly instead of always on the same side.
    """
    base, mine = interleaved_medians([baseline, ours], plan)
    return base, mine


def interleaved_medians(fns: list[Callable[[], object]], plan: Plan) -> list[float]:
    """Median seconds of each function, run in turn, the order rotated every repetition
    (so each one follows each of the others equally often)."""
    for _ in range(plan.warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for rep in range(plan.reps):
        for k in range(len(fns)):
            index = (k + rep) % len(fns)
            times[index].append(timed(fns[index]))
    return [statistics.median(series) for series in times]


def ms(seconds: float) -> str:
    """Milliseconds, with two decimals below 10 ms (the closed forms take well under one)."""
    return f"{seconds * 1e3:.2f} ms" if seconds < 0.01 else f"{seconds * 1e3:.1f} ms"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


def post(url: str, body: bytes) -> tuple[int, bytes]:
    """Status and body of a POST, errors included (for probing a route)."""
    request = urllib.request.Request(url, body, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@dataclass
class Server:
    """A server subprocess on ``port``."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def rss_mb(self) -> float:
        """Resident memory of the worker (with one worker, uvicorn serves in this process)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc")


@contextmanager
def serve(command: list[str], env: dict[str, str], port: int) -> Iterator[Server]:
    """Start a server, wait until ``/readyz`` answers, stop it on exit."""
    process = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL
    )
    server = Server(process, port)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command} exited with {process.returncode}")
            try:
                get(server.url + "/readyz")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{command} did not become ready") from None
                time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)


def service_command(port: int) -> list[str]:
    """``tensorgrade serve`` as the README starts it."""
    script = Path(sys.executable).with_name("tensorgrade")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]
    return [*base, "serve", "--host", HOST, "--port", str(port)]


def conv_tensors(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(FILTERS, CHANNELS, KERNEL, generator=gen, dtype=torch.float64)
    x = torch.randn(CHANNELS, LENGTH, generator=gen, dtype=torch.float64)
    return weight.to(device), x.to(device)


def b64(tensor: torch.Tensor) -> dict[str, Any]:
    array = np.ascontiguousarray(tensor.cpu().numpy(), dtype="<f8")
    return {
        "shape": list(array.shape),
        "datatype": "FP64",
        "b64": base64.b64encode(array.tobytes()).decode(),
    }


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def throughput(service: Server, baseline: Server, plan: Plan) -> Row:
    body = orjson.dumps(SHAPE_REQUEST)
    path = "/v1/shapes/conv"
    ours_url, base_url = service.url + path, baseline.url + path
    load.requests_per_second(base_url, body, 1)
    load.requests_per_second(ours_url, body, 1)
    base: list[float] = []
    mine: list[float] = []
    for round_ in range(plan.load_rounds):
        pairs = [(base, base_url), (mine, ours_url)]
        for rates, url in pairs if round_ % 2 == 0 else reversed(pairs):
            rates.append(load.requests_per_second(url, body, plan.load_seconds))
    b, o = statistics.median(base), statistics.median(mine)
    return Row(
        f"POST /v1/shapes/conv throughput, 1 worker ({load.generator()}, 16 connections)",
        f"{b:,.0f} req/s",
        f"{o:,.0f} req/s",
        o / b,
        ">= 0.8x",
        o / b >= 0.8,
        "baseline: a bare FastAPI endpoint answering the same bytes as a constant",
    )


def jacobian_compute(device: str, plan: Plan, threads: int | None = None) -> list[Row]:
    """dy/dx + dy/dW of the conv1d in-process, closed forms against ``jacrev``, and the floor.

    The floor is writing the zeros of both Jacobians alone (``torch.zeros`` of their shapes,
    53 MB in float64): any answer as dense tensors writes at least that, so jacrev's time
    over it is the most a closed form could reach in this run.

    Args:
        device: where all three run.
        plan: repetitions.
        threads: torch intra-op threads, for these rows only (default: as set).

    Returns:
        The closed forms' row and the floor's.
    """
    weight, x = conv_tensors(device)
    model = get_model("conv1d")
    config = model.parse_config({})
    args = {"weight": weight, "x": x}
    out = LENGTH - KERNEL + 1
    shapes = [(FILTERS, out, CHANNELS, LENGTH), (FILTERS, out, *weight.shape)]

    def baseline() -> None:
        jacrev(lambda v: F.conv1d(v, weight))(x)
        jacrev(lambda w: F.conv1d(x, w))(weight)
        sync(device)

    def fresh() -> None:
        for wrt in ("x", "weight"):
            _, method = autodiff.jacobian(model, config, args, "y", wrt)
            assert method == "closed-form"
        sync(device)

    def ours() -> None:
        with recycling():  # as the jacobian route computes them
            fresh()

    def zeros() -> None:
        for shape in shapes:
            torch.zeros(shape, dtype=weight.dtype, device=device)
        sync(device)

    configured = torch.get_num_threads()
    torch.set_num_threads(threads or configured)
    try:
        b, o, f, z = interleaved_medians([baseline, ours, fresh, zeros], plan)
    finally:
        torch.set_num_threads(configured)
    suffix = f", {threads} torch thread each" if threads else ""
    size = sum(math.prod(shape) for shape in shapes) * weight.element_size() / 1e6
    return [
        Row(
            f"dy/dx + dy/dW of the conv1d, compute only{suffix}",
            f"jacrev {ms(b)}",
            ms(o),
            b / o,
            ">= 20x faster",
            b / o >= 20,
            "ratio: speed-up"
            + ("; as a worker of one thread runs (one worker per core)" if threads else "")
            + "; as the jacobian route computes them, into zeroed buffers kept from the "
            "previous Jacobian of the same size (the steady state of a burst of requests)",
        ),
        Row(
            f"the same into fresh memory{suffix}",
            f"jacrev {ms(b)}",
            ms(f),
            b / f,
            "reference",
            None,
            "a worker's first Jacobian of that size, or its first after it went idle: every "
            f"zero written too, {f / z:.2f}x the time of writing the zeros alone (next row)",
        ),
        Row(
            f"their {size:.0f} MB of zeros alone{suffix}",
            f"jacrev {ms(b)}",
            ms(z),
            b / z,
            "reference",
            None,
            "torch.zeros of both Jacobians' shapes, in the same loop: the floor of any answer "
            "written whole into fresh memory",
        ),
    ]


def jacobian_request(device: str, encoding: str) -> bytes:
    """The body ``Client.jacobian`` sends for dy/dx of the conv1d (tensors as base64)."""
    weight, x = conv_tensors("cpu")
    body = {
        "config": {},
        "params": {"weight": b64(weight)},
        "inputs": {"x": b64(x)},
        "device": device,
        "dtype": "float64",
        "encoding": encoding,
        "of": "y",
        "wrt": "x",
    }
    return orjson.dumps(body)


def client_dy_dx(client: Client, device: str) -> Callable[[], object]:
    """dy/dx of the conv1d fetched by the project's client: request sent to arrays in hand."""
    weight, x = (t.numpy() for t in conv_tensors("cpu"))

    def run() -> object:
        jac = client.jacobian(
            "conv1d", {"weight": weight}, {"x": x}, of="y", wrt="x", device=device
        )
        assert jac.shape == (FILTERS, LENGTH - KERNEL + 1, CHANNELS, LENGTH)
        return jac

    return run


def jacrev_dy_dx(device: str) -> Callable[[], torch.Tensor]:
    weight, x = conv_tensors(device)

    def run() -> torch.Tensor:
        result: torch.Tensor = jacrev(lambda v: F.conv1d(v, weight))(x)
        sync(device)
        return result

    return run


def end_to_end_safetensors(client: Client, device: str, plan: Plan) -> Row:
    b, o = paired_medians(jacrev_dy_dx(device), client_dy_dx(client, device), plan)
    return Row(
        "4M-entry dy/dx over HTTP, safetensors answer, b64 inputs",
        f"jacrev {ms(b)}",
        ms(o),
        o / b,
        "<= 1.5x",
        o / b <= 1.5,
        "ours: the project's client, request sent to the array in hand",
    )


def end_to_end_json(client: Fetcher, device: str, plan: Plan) -> Row:
    body = jacobian_request(device, "json")
    path = "/v1/models/conv1d/jacobian"
    jacobian = jacrev_dy_dx(device)

    def baseline() -> None:
        orjson.dumps(jacobian().cpu().numpy(), option=orjson.OPT_SERIALIZE_NUMPY)

    b, o = paired_medians(baseline, lambda: client.post(path, body), plan)
    return Row(
        "4M-entry dy/dx over HTTP, nested-JSON answer",
        f"jacrev+orjson {ms(b)}",
        ms(o),
        o / b,
        "<= 5x",
        o / b <= 5,
        "ours: request sent to body received (http.client, one kept-alive connection)",
    )


def client_fetch(service: Server, client: Client, device: str, plan: Plan) -> Row:
    body = jacobian_request(device, "safetensors")
    path = "/v1/models/conv1d/jacobian"

    def baseline() -> None:
        request = urllib.request.Request(
            service.url + path, body, {"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()

    b, o = paired_medians(baseline, client_dy_dx(client, device), plan)
    return Row(
        "client fetching the safetensors dy/dx",
        f"urllib {ms(b)}",
        ms(o),
        o / b,
        "<= 1.2x",
        o / b <= 1.2,
        "ours: service.client.Client(encoding='safetensors').jacobian, inputs to array; "
        "urllib: the same request body, the response read as bytes",
    )


def seed_checks() -> tuple[dict[str, Any], list[Any]]:
    """The expected of 1.1(c)(ii) and 1,000 answers to it (right, scaled, transposed)."""
    expected = {
        "op": "jacobian",
        "model": "conv1d",
        "config": {"stride": 2},
        "params": {"weight": SEED_W_1x5x3},
        "inputs": {"x": SEED_X_5x7},
        "of": "y",
        "wrt": "weight",
    }
    model = get_model("conv1d")
    args = {
        "weight": torch.tensor(SEED_W_1x5x3, dtype=torch.float64),
        "x": torch.tensor(SEED_X_5x7, dtype=torch.float64),
    }
    right, _ = autodiff.jacobian(model, model.parse_config({"stride": 2}), args, "y", "weight")
    variants = [right, 2 * right, right.flip(-1), -right]
    answers = [variants[i % len(variants)].tolist() for i in range(1000)]
    return expected, answers


def check_batch(service: Server, client: Fetcher, plan: Plan) -> Row:
    name = "1,000 checks of 1.1(c)(ii), one /v1/check/batch"
    target = ">= 20x faster"
    expected, answers = seed_checks()
    checks = [{"expected": expected, "answer": a} for a in answers]
    for path, probe in (("/v1/check", checks[0]), ("/v1/check/batch", {"checks": checks[:2]})):
        status, _ = post(service.url + path, orjson.dumps(probe))
        if status != 200:
            reason = "not available" if status == 404 else f"answered {status}"
            return Row(name, "-", "-", None, target, None, f"n/a: {path} {reason}")
    singles = [orjson.dumps(c) for c in checks]
    batch = orjson.dumps({"checks": checks})

    def sequential() -> None:
        for single in singles:
            client.post("/v1/check", single)

    reps = Plan(max(1, plan.reps // 4), 1, plan.load_seconds, plan.load_rounds)
    b, o = paired_medians(sequential, lambda: client.post("/v1/check/batch", batch), reps)
    return Row(
        name,
        f"1,000 x /v1/check {ms(b)}",
        ms(o),
        b / o,
        target,
        b / o >= 20,
        "ratio: speed-up; baseline over one kept-alive connection",
    )


def conv2d_tensors(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    c, n, f, k = CONV2D_CHANNELS, CONV2D_SIZE, CONV2D_FILTERS, CONV2D_KERNEL
    weight = torch.randn(f, c, k, k, generator=gen, dtype=torch.float64)
    x = torch.randn(c, n, n, generator=gen, dtype=torch.float64)
    return weight.to(device), x.to(device)


def conv2d_closed_forms(device: str) -> Callable[[], None]:
    weight, x = conv2d_tensors(device)
    model = get_model("conv2d")
    config = model.parse_config({})
    args = {"weight": weight, "x": x}

    def run() -> None:
        for wrt in ("x", "weight"):
            _, method = autodiff.jacobian(model, config, args, "y", wrt)
            assert method == "closed-form"
        sync(device)

    return run


def conv2d_rows(device: str, plan: Plan) -> list[Row]:
    """The large conv2d on the GPU: against jacrev there, and against the closed forms on
    the CPU (the GPU's gain on the same work)."""
    weight, x = conv2d_tensors(device)

    def baseline() -> None:
        jacrev(lambda v: F.conv2d(v[None], weight)[0])(x)
        jacrev(lambda w: F.conv2d(x[None], w)[0])(weight)
        sync(device)

    few = Plan(max(3, plan.reps // 3), 1, plan.load_seconds, plan.load_rounds)
    out = CONV2D_SIZE - CONV2D_KERNEL + 1
    entries = CONV2D_FILTERS * out * out * CONV2D_CHANNELS * CONV2D_SIZE * CONV2D_SIZE
    name = (
        f"dy/dx + dy/dW of a conv2d ({CONV2D_CHANNELS} channels, {CONV2D_SIZE}x{CONV2D_SIZE}, "
        f"{CONV2D_FILTERS} filters {CONV2D_KERNEL}x{CONV2D_KERNEL}; dy/dx {entries / 1e6:.0f}M "
        "entries)"
    )
    b, o = paired_medians(baseline, conv2d_closed_forms(device), few)
    cpu, gpu = paired_medians(conv2d_closed_forms("cpu"), conv2d_closed_forms(device), few)
    return [
        Row(
            f"{name}, compute only, {device}",
            f"jacrev {ms(b)}",
            ms(o),
            b / o,
            ">= 20x faster",
            b / o >= 20,
            "ratio: speed-up",
        ),
        Row(
            f"the same conv2d closed forms, {device} against cpu",
            f"cpu {ms(cpu)}",
            ms(gpu),
            cpu / gpu,
            "-",
            None,
            "ratio: the GPU's speed-up on the same work (informational)",
        ),
    ]


def json_decode(plan: Plan) -> Row:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1_000_000))
    as_list = orjson.dumps(x, option=orjson.OPT_SERIALIZE_NUMPY)
    body = b'{"params": {"weight": [[[1.0, 2.0, 3.0]]]}, "inputs": {"x": ' + as_list + b"}}"
    settings = Settings()

    def ours() -> None:
        request = ModelRequest.model_validate(parse_json(body))
        prepared = prepare("conv1d", request, settings)
        assert prepared.args["x"].shape == (1, 1_000_000)

    b, o = paired_medians(lambda: np.asarray(orjson.loads(as_list)), ours, plan)
    return Row(
        "1M-element tensor as a JSON list, decode",
        f"orjson+numpy {ms(b)}",
        ms(o),
        o / b,
        "<= 2x",
        o / b <= 2,
        "ours: body bytes to checked tensor (parse, validate, decode)",
    )


def rss_row(label: str, megabytes: float) -> Row:
    return Row(
        f"idle worker RSS, {label}", "-", f"{megabytes:.0f} MB", None, "<= 400 MB", megabytes <= 400
    )


def table(rows: list[Row]) -> str:
    header = ["scenario", "baseline", "ours", "ratio", "target", "met"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
        met = {True: "yes", False: "NO", None: "n/a"}[row.met]
        lines.append(
            f"| {row.scenario} | {row.baseline} | {row.ours} | {ratio} | {row.target} | {met} |"
        )
    notes = [f"- {row.scenario}: {row.note}" for row in rows if row.note]
    return "\n".join([*lines, "", *notes])


def machine(threads: int, device: str) -> str:
    cpu = platform.processor() or platform.machine()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        cpu,
    )
    gpu = f", {torch.cuda.get_device_name()}" if device == "cuda" else ""
    return (
        f"{os.cpu_count()} cores ({model}){gpu}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, uvicorn {importlib.metadata.version('uvicorn')} (h11), "
        f"{threads} torch thread(s) in the service and in-process"
    )


def main(argv: list[str] | None = None) -> int:
    """Run every scenario and print the table; the exit status is 0 even if targets are missed.

    Args:
        argv: command-line arguments (``--quick``, ``--device``, ``--threads``).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, under 2 min")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads, in the service and in-process (default: cores, one worker)",
    )
    args = parser.parse_args(argv)
    # Throughput rounds are short and many: a neighbour's burst spoils one round, not the median.
    plan = Plan(15, 3, 2, 5) if args.quick else Plan(40, 5, 4, 7)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    settings = {
        "TENSORGRADE_WORKERS": "1",
        "TENSORGRADE_TORCH_THREADS": str(threads),
        "TENSORGRADE_LOG_LEVEL": "warning",
    }
    started = time.perf_counter()
    rows: list[Row] = []
    port = free_port()
    with serve(service_command(port), settings, port) as service:
        fresh = service.rss_mb()
        status, constant = post(service.url + "/v1/shapes/conv", orjson.dumps(SHAPE_REQUEST))
        assert status == 200, constant
        base_port = free_port()
        base_command = [sys.executable, "-m", "bench.baseline_app", "--port", str(base_port)]
        constant_env = {"BENCH_CONSTANT_ANSWER": constant.decode()}
        with serve(base_command, constant_env, base_port) as baseline:
            rows.append(throughput(service, baseline, plan))
        rows.extend(jacobian_compute(args.device, plan))
        if args.device == "cpu" and threads > 1:
            rows.extend(jacobian_compute(args.device, plan, threads=1))
        if args.device == "cuda":
            rows.extend(conv2d_rows(args.device, plan))
        fetcher = Fetcher(HOST, port)
        client = Client(service.url, encoding="safetensors")
        try:
            rows.append(end_to_end_safetensors(client, args.device, plan))
            rows.append(end_to_end_json(fetcher, args.device, plan))
            rows.append(client_fetch(service, client, args.device, plan))
            rows.append(check_batch(service, fetcher, plan))
        finally:
            client.close()
            fetcher.close()
        rows.append(json_decode(plan))
        time.sleep(1)
        rows.append(rss_row("after start-up", fresh))
        rows.append(rss_row("after this run", service.rss_mb()))
    print(table(rows))
    print(f"\n{machine(threads, args.device)}; {time.perf_counter() - started:.0f} s")
    return 0

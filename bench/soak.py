"""Load and soak test: concurrent clients mixing every operation against a real server.

Starts ``tensorgrade serve --workers 2`` on a free loopback port, then runs ``--clients``
threads for ``--duration`` seconds. Each client keeps one HTTP/1.1 connection and sends
requests drawn at random from a mix built from the served OpenAPI schema (every operation, with
its named examples and every value of an enumerated path parameter) plus heavier conv2d work
and deliberately bad requests. It reports requests per second, p50 and p99 latency per
operation, the status codes seen, the errors (anything but the expected status, where only 429
and 503, the service shedding load, are tolerated), and the resident memory of each worker
sampled once a second, which must level off rather than climb.

Traffic goes to 127.0.0.1 only, and the run is bounded in time and stops by itself.

    python bench/soak.py --duration 60 --clients 16
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHED = {429, 503}
RECONNECT_EVERY = 20


@dataclass(frozen=True)
class Call:
    """One request of the mix and the statuses that count as a correct answer."""

    label: str
    method: str
    path: str
    body: bytes | None
    expected: frozenset[int]
    weight: float = 1.0


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, call: Call, status: int, seconds: float) -> None:
        with self.lock:
            self.latencies[call.label].append(seconds)
            self.statuses[(call.label, status)] += 1
            if status not in call.expected and status not in SHED:
                self.errors[f"{call.label}: {status}"] += 1

    def fail(self, call: Call, error: Exception) -> None:
        with self.lock:
            self.errors[f"{call.label}: {type(error).__name__}"] += 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def b64_tensor(shape: list[int], rng: np.random.Generator) -> dict[str, Any]:
    raw = rng.normal(size=shape).astype("<f8").tobytes()
    return {"shape": shape, "b64": base64.b64encode(raw).decode()}


def json_call(label: str, path: str, body: Any, expected: set[int], weight: float = 1.0) -> Call:
    encoded = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Call(label, "POST", path, encoded, frozenset(expected), weight)


def mix_from_schema(schema: dict[str, Any]) -> list[Call]:
    """Every operation of the schema: its named examples, for every enumerated path value."""
    calls = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            label = f"{method.upper()} {path}"
            values: dict[str, list[str]] = {
                p["name"]: p["schema"].get("enum", [])
                for p in operation.get("parameters", [])
                if p.get("in") == "path"
            }
            paths = [path]
            for name, options in values.items():
                paths = [p.replace("{" + name + "}", v) for p in paths for v in options]
            if method == "get":
                calls += [Call(label, "GET", p, None, frozenset({200})) for p in paths]
                continue
            content = operation.get("requestBody", {}).get("content", {})
            examples = content.get("application/json", {}).get("examples", {})
            for example in examples.values():
                for concrete in paths:
                    # Examples are written for one model; on another one a 422 is right.
                    expected = {200} if len(paths) == 1 else {200, 422}
                    calls.append(json_call(label, concrete, example["value"], expected))
    return calls


def heavy_and_hostile(rng: np.random.Generator) -> list[Call]:
    """Work that costs something, and requests that must be refused."""
    image = {"params": {"weight": b64_tensor([16, 3, 3, 3], rng)}, "config": {"padding": 1}}
    x = b64_tensor([3, 64, 64], rng)
    forward = {**image, "inputs": {"x": x}, "encoding": "b64"}
    return [
        json_call("conv2d forward 3x64x64", "/v1/models/conv2d/forward", forward, {200}, 3),
        json_call(
            "conv2d backward 3x64x64",
            "/v1/models/conv2d/backward",
            {**forward, "grad_outputs": {"y": b64_tensor([16, 64, 64], rng)}},
            {200},
            2,
        ),
        json_call(
            "conv2d jacobian dy/dweight 3x16x16",
            "/v1/models/conv2d/jacobian",
            {**image, "inputs": {"x": b64_tensor([3, 16, 16], rng)}, "of": "y", "wrt": "weight"},
            {200},
        ),
        json_call(
            "refused: 805M-entry jacobian",
            "/v1/models/conv2d/jacobian",
            {**image, "inputs": {"x": x}, "of": "y", "wrt": "x"},
            {413},
        ),
        json_call("refused: NaN token", "/v1/shapes/conv", b'{"input_size": [NaN]}', {422}),
        json_call("refused: not JSON", "/v1/shapes/conv", b'{"input_size": [', {422}),
        json_call(
            "refused: ragged tensor",
            "/v1/models/conv1d/forward",
            {"params": {"weight": [[[1.0, 2.0]]]}, "inputs": {"x": [[1.0, 2.0], [3.0]]}},
            {422},
        ),
        Call("refused: unknown path", "GET", "/v1/nothing", None, frozenset({404})),
    ]


def client_loop(port: int, calls: list[Call], until: float, results: Results, seed: int) -> None:
    rng = random.Random(seed)
    weights = [c.weight for c in calls]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    sent = 0
    try:
        while time.monotonic() < until:
            sent += 1
            if sent % RECONNECT_EVERY == 0:
                # A kept-alive connection stays with the worker that accepted it: reconnect now
                # and then, as scripts do, so the load spreads over the workers.
                connection.close()
            call = rng.choices(calls, weights)[0]
            headers = {"Content-Type": "application/json"} if call.body is not None else {}
            start = time.perf_counter()
            try:
                connection.request(call.method, call.path, body=call.body, headers=headers)
                response = connection.getresponse()
                response.read()
                results.record(call, response.status, time.perf_counter() - start)
                if response.getheader("connection", "").lower() == "close":
                    connection.close()
            except (OSError, http.client.HTTPException) as error:
                results.fail(call, error)
                connection.close()
    finally:
        connection.close()


def workers(pid: int) -> list[int]:
    """The worker processes of the server: children of its main process started by
    multiprocessing's spawn (not its resource tracker), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in command:
                found.append(int(entry.name))
    return sorted(found)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sample_memory(pid: int, until: float, samples: list[tuple[float, list[float]]]) -> None:
    start = time.monotonic()
    while time.monotonic() < until:
        with contextlib.suppress(OSError):  # a worker that exits between the two reads
            samples.append((time.monotonic() - start, [rss_mb(w) for w in workers(pid)]))
        time.sleep(1.0)


def wait_ready(port: int, process: subprocess.Popen[bytes]) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                pass
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=10) as r:
                schema: dict[str, Any] = json.load(r)
                return schema
        except OSError:
            time.sleep(0.3)
    raise SystemExit("the server did not become ready")


def start_server(port: int, workers: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    with log.open("wb") as out:
        return subprocess.Popen(
            [*command, "--workers", str(workers)],
            cwd=ROOT,
            env={**os.environ, "TENSORGRADE_LOG_LEVEL": "info"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def server_events(log: Path) -> list[str]:
    """The server's own messages (not its access log): starts, stops, restarts, errors."""
    return [
        line
        for line in log.read_text(errors="replace").splitlines()
        if '" 200' not in line and "HTTP/1.1" not in line
    ]


def percentile(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def report(results: Results, seconds: float, samples: list[tuple[float, list[float]]]) -> bool:
    """Print the tables; whether the run passed (no errors, memory levelled off)."""
    total = sum(len(v) for v in results.latencies.values())
    every = [x for v in results.latencies.values() for x in v]
    print(f"\n{total} requests in {seconds:.0f} s: {total / seconds:.1f} requests/s")
    if every:
        p50, p99 = percentile(every, 50) * 1000, percentile(every, 99) * 1000
        print(f"latency p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print(f"\n{'operation':56} {'count':>6} {'p50 ms':>8} {'p99 ms':>8}  statuses")
    for label in sorted(results.latencies):
        values = results.latencies[label]
        statuses = {s: n for (lab, s), n in results.statuses.items() if lab == label}
        print(
            f"{label[:56]:56} {len(values):6d} {percentile(values, 50) * 1000:8.1f} "
            f"{percentile(values, 99) * 1000:8.1f}  {dict(sorted(statuses.items()))}"
        )
    shed = sum(n for (_, s), n in results.statuses.items() if s in SHED)
    print(
        f"\nshed (429/503): {shed}; errors: {sum(results.errors.values())} {dict(results.errors)}"
    )
    print("\nresident memory per worker (MB):")
    for at, values in samples[:: max(1, len(samples) // 12)] + samples[-1:]:
        print(f"  t={at:5.0f} s  " + "  ".join(f"{v:7.1f}" for v in values))
    for worker, slope in enumerate(growth(samples)):
        print(f"worker {worker}: {slope:+.0f} MB/min over the second half of the run")
    plateau = levelled_off(samples)
    print(f"memory levelled off: {'yes' if plateau else 'NO'}")
    return not results.errors and plateau


def growth(samples: list[tuple[float, list[float]]]) -> list[float]:
    """Each worker's memory trend over the second half of the run, in MB per minute."""
    half = [(at, values) for at, values in samples[len(samples) // 2 :] if values]
    if len(half) < 3:
        return []
    times = [at for at, _ in half]
    return [
        60 * statistics.linear_regression(times, [v[w] for _, v in half]).slope
        for w in range(min(len(v) for _, v in half))
    ]


def levelled_off(samples: list[tuple[float, list[float]]], tolerance: float = 0.10) -> bool:
    """Whether each worker's memory over the last third of the run stays, on average, within
    10% of the highest it reached before: a leak climbs past its old peaks, a plateau with the
    ups and downs of requests coming and going does not."""
    usable = [values for _, values in samples if values]
    if len(usable) < 6:
        return False
    third = len(usable) // 3
    for worker in range(min(len(v) for v in usable)):
        earlier_peak = max(v[worker] for v in usable[: 2 * third])
        last = statistics.mean(v[worker] for v in usable[2 * third :])
        if last > earlier_peak * (1 + tolerance):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=16, help="concurrent connections")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="soak-")) / "server.log"
    process = start_server(port, args.workers, log)
    try:
        schema = wait_ready(port, process)
        rng = np.random.default_rng(args.seed)
        calls = mix_from_schema(schema) + heavy_and_hostile(rng)
        covered = {c.label for c in calls}
        operations = {f"{m.upper()} {p}" for p, ops in schema["paths"].items() for m in ops}
        missing = sorted(operations - covered)
        print(f"{len(calls)} kinds of request; operations not exercised: {missing}")
        results = Results()
        samples: list[tuple[float, list[float]]] = []
        start = time.monotonic()
        until = start + args.duration
        threads = [
            threading.Thread(target=client_loop, args=(port, calls, until, results, args.seed + i))
            for i in range(args.clients)
        ]
        threads.append(threading.Thread(target=sample_memory, args=(process.pid, until, samples)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        passed = report(results, time.monotonic() - start, samples)
        print(f"\nserver messages ({log}):")
        for line in server_events(log)[-40:]:
            print(f"  {line}")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()

"""Load and soak test: concurrent clients mixing every operation against a real server.

Starts ``tensorgrade serve --workers 2`` on a free loopback port, with an instructor key, a
student key and a variant secret made for the run, and builds the mix from the served OpenAPI
schema: every operation with each of its named examples, every value of an enumerated path or
query parameter, and the assignments and problems the server lists (a check example goes to
the problem it names under ``x-path-parameters``, ``{"problem": "1.1a"}``).

Calibration sends each of these requests once. An example sent to a model it was not written
for gets the refusal the operation declares (404: no recurrent state on a convolution, 422: a
body that does not fit the model); such requests are counted and left out of the load, as are
examples of a slow operation (over a second) that take more than twice its fastest one. Any
other answer than 200 is an error.

Then ``--clients`` threads run for ``--duration`` seconds. Each keeps one HTTP/1.1 connection
and sends requests drawn at random from the kept ones (weighted by operation; a slow operation
rarely, one such request in flight at a time), with heavier conv2d work and requests that must
be refused (no key, a student key on an instructor route, NaN...). Every request carries the
instructor key, except a share of the traffic of the routes students may call, which carries
the student key; requests about a student name one of 50 students, so their variants differ.

It reports requests per second, p50 and p99 latency per operation, the statuses seen, the
errors (anything but the expected status, where only 429 and 503, the service shedding load,
are tolerated), the operations that never answered 200, and the resident memory of each worker
sampled once a second, which must level off rather than climb. It exits non-zero on any error,
an operation not exercised, or memory that climbs.

Traffic goes to 127.0.0.1 only, and the run is bounded in time and stops by itself.

    python bench/soak.py --duration 60 --clients 16
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import itertools
import json
import os
import random
import secrets
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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHED = {429, 503}
RECONNECT_EVERY = 20
REFUSALS = {404, 422}
"""What an example may get on a model it was not written for, where the operation declares it."""
STUDENTS = [f"student-{i:03d}" for i in range(1, 51)]
STUDENT_MARK = "@student@"
"""Stands for the student id in a path or body; each request puts one of ``STUDENTS`` there."""
STUDENT_SHARE = 0.3
"""The share of the traffic of the routes students may call that carries the student key."""
SLOW_SECONDS = 1.0
MUCH_SLOWER = 2.0
SLOW_WEIGHT = 0.03
"""The weight of a slow operation, all its examples together (others weigh one an example).
An experiment holds a worker for seconds (ten and more under load): at most one slow request is
in flight at a time, and one in about 2,000 requests is one."""
CALIBRATION_PATIENCE = 120.0

Key = Literal["instructor", "student", "either", "none", "unknown"]
Listing = dict[str, list[str]]
"""The problem ids of each assignment the server lists."""


@dataclass(frozen=True)
class Keys:
    """The API keys and variant secret of one run."""

    instructor: str
    student: str
    secret: str

    @classmethod
    def generate(cls) -> Keys:
        return cls(secrets.token_hex(16), secrets.token_hex(16), secrets.token_hex(16))

    def environment(self) -> dict[str, str]:
        return {
            "TENSORGRADE_INSTRUCTOR_KEYS": self.instructor,
            "TENSORGRADE_STUDENT_KEYS": self.student,
            "TENSORGRADE_VARIANT_SECRET": self.secret,
        }

    def headers(self, key: Key) -> dict[str, str]:
        values = {"instructor": self.instructor, "student": self.student, "unknown": "0" * 32}
        return {"X-API-Key": values[key]} if key in values else {}


@dataclass(frozen=True)
class Request:
    """One request as sent, and the row of the table it counts in."""

    label: str
    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]
    expected: frozenset[int]


@dataclass(frozen=True)
class Call:
    """One request of the mix and the statuses that count as a correct answer.

    Attributes:
        label: the row of the table (the operation, for the schema's requests).
        operation: the schema's operation (``POST /v1/shapes/conv``), if the call is one.
        name: the example, for the calibration's messages.
        key: whose key goes with it; ``either``: the student key on a share of the traffic.
        refusals: answers of calibration that leave the call out of the load (not errors).
        per_student: the path or body holds ``STUDENT_MARK``.
        solo: a slow call; the clients hold one such request in flight at most.
    """

    label: str
    method: str
    path: str
    body: bytes | None
    expected: frozenset[int]
    weight: float = 1.0
    operation: str | None = None
    name: str = ""
    key: Key = "instructor"
    refusals: frozenset[int] = frozenset()
    per_student: bool = False
    solo: bool = False

    def render(self, keys: Keys, rng: random.Random) -> Request:
        """The request to send: a key, and a student where the call names one."""
        key: Key = self.key
        if key == "either":
            key = "student" if rng.random() < STUDENT_SHARE else "instructor"
        path, body = self.path, self.body
        if self.per_student:
            student = rng.choice(STUDENTS)
            path = path.replace(STUDENT_MARK, student)
            body = body.replace(STUDENT_MARK.encode(), student.encode()) if body else body
        headers = keys.headers(key)
        if body is not None:
            headers["Content-Type"] = "application/json"
        label = (
            f"{self.label} (student key)"
            if key == "student" and self.key == "either"
            else self.label
        )
        return Request(label, self.method, path, body, headers, self.expected)


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    answered: set[str] = field(default_factory=set)
    """Operations that answered 200."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, call: Call, request: Request, status: int, seconds: float) -> None:
        with self.lock:
            self.latencies[request.label].append(seconds)
            self.statuses[(request.label, status)] += 1
            if status not in request.expected and status not in SHED:
                self.errors[f"{request.label}: {status}"] += 1
            if status == 200 and call.operation:
                self.answered.add(call.operation)

    def fail(self, request: Request, error: Exception) -> None:
        with self.lock:
            self.errors[f"{request.label}: {type(error).__name__}"] += 1


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


PATH_PARAMETERS = "x-path-parameters"
"""The member of a body example naming the path parameters it is for (``service.examples``)."""


def schema_operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Each operation of the schema: path, method and its object."""
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            yield path, method, operation


def examples(operation: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """The operation's named JSON examples (name, the problem it is for or "", value); one
    without a body if none."""
    content = operation.get("requestBody", {}).get("content", {})
    named = content.get("application/json", {}).get("examples", {})
    return [
        (name, e.get(PATH_PARAMETERS, {}).get("problem", ""), e["value"])
        for name, e in named.items()
    ] or [("", "", None)]


def places(listing: Listing, problem: str, with_problem: bool) -> list[tuple[str, str]]:
    """(assignment, problem) pairs for a path: every problem, or the one the example is for
    where it names a listed one."""
    if not with_problem:
        return [(assignment, "") for assignment in listing]
    pairs = [(a, p) for a, problems in listing.items() for p in problems]
    return [(a, p) for a, p in pairs if p == problem] if problem else pairs


def query_options(operation: dict[str, Any]) -> list[str]:
    """Every query string: each value of an enumerated parameter, a student where one is
    required."""
    choices = []
    for parameter in operation.get("parameters", []):
        if parameter.get("in") != "query":
            continue
        name, options = parameter["name"], parameter["schema"].get("enum")
        if options:
            choices.append([f"{name}={quote(str(v))}" for v in options])
        elif name == "student_id":
            choices.append([f"{name}={STUDENT_MARK}"])
        elif parameter.get("required"):
            raise SystemExit(f"no values for the required query parameter {name!r}")
    return ["?" + "&".join(c) if c else "" for c in itertools.product(*choices)]


def concrete_paths(
    path: str, operation: dict[str, Any], problem: str, listing: Listing
) -> tuple[list[str], bool]:
    """The path with every parameter filled, and whether an enumerated path parameter took
    more than one value (an example then meets models it was not written for)."""
    paths, several = [path], False
    for parameter in operation.get("parameters", []):
        options = parameter["schema"].get("enum")
        if parameter.get("in") == "path" and options:
            mark = "{" + parameter["name"] + "}"
            paths = [p.replace(mark, quote(str(v), safe="")) for p in paths for v in options]
            several = several or len(options) > 1
    if "{assignment}" in path:
        pairs = places(listing, problem, "{problem}" in path)
        paths = [
            p.replace("{assignment}", quote(a, safe="")).replace("{problem}", quote(q, safe=""))
            for p in paths
            for a, q in pairs
        ]
    if any("{" in p for p in paths):
        raise SystemExit(f"no values for a path parameter of {path}")
    return [p + q for p in paths for q in query_options(operation)], several


def student_body(value: Any) -> tuple[bytes | None, bool]:
    """The example's JSON body, with ``STUDENT_MARK`` for its student; whether it has one."""
    if value is None:
        return None, False
    if isinstance(value, dict) and "student_id" in value:
        return json.dumps({**value, "student_id": STUDENT_MARK}).encode(), True
    return json.dumps(value).encode(), False


def candidates(schema: dict[str, Any], listing: Listing) -> list[Call]:
    """Every operation of the schema: each named example, at every path it can be sent to.

    The weight of each call is its operation's (one an example); it is shared among the calls
    calibration keeps.
    """
    calls = []
    for path, method, operation in schema_operations(schema):
        label = f"{method.upper()} {path}"
        declared = {int(s) for s in operation.get("responses", {}) if s.isdigit()}
        # Routes that declare no 403 admit students (API.md "Roles").
        key: Key = "either" if operation.get("security") and 403 not in declared else "instructor"
        named = examples(operation)
        for name, problem, value in named:
            body, per_student = student_body(value)
            paths, several = concrete_paths(path, operation, problem, listing)
            if not paths:
                print(f"{label}: example {name} left out, it names no listed problem")
            refusals = frozenset(REFUSALS & declared if several else set())
            for concrete in paths:
                calls.append(
                    Call(
                        label,
                        method.upper(),
                        concrete,
                        body,
                        frozenset({200}),
                        weight=len(named),
                        operation=label,
                        name=name or concrete,
                        key=key,
                        refusals=refusals,
                        per_student=per_student or STUDENT_MARK in concrete,
                    )
                )
    return calls


def heavy_and_hostile(rng: np.random.Generator) -> list[Call]:
    """Work that costs something, and requests that must be refused."""
    image = {"params": {"weight": b64_tensor([16, 3, 3, 3], rng)}, "config": {"padding": 1}}
    x = b64_tensor([3, 64, 64], rng)
    forward = {**image, "inputs": {"x": x}, "encoding": "b64"}
    shape = {"input_size": [21, 12], "kernel_size": [4, 5], "stride": 4}
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
        replace(
            json_call("refused: student key, instructor route", "/v1/shapes/conv", shape, {403}),
            key="student",
        ),
        replace(json_call("refused: no API key", "/v1/shapes/conv", shape, {401}), key="none"),
        replace(
            json_call("refused: unknown API key", "/v1/shapes/conv", shape, {401}), key="unknown"
        ),
        Call(
            "refused: unknown assignment",
            "GET",
            "/v1/assignments/no-such-assignment/problems/1.1a?student_id=student-001",
            None,
            frozenset({404}),
        ),
        Call("refused: unknown path", "GET", "/v1/nothing", None, frozenset({404})),
    ]


def send(connection: http.client.HTTPConnection, request: Request) -> int:
    """Send one request on the connection and read the whole answer; its status."""
    connection.request(request.method, request.path, body=request.body, headers=request.headers)
    response = connection.getresponse()
    response.read()
    if response.getheader("connection", "").lower() == "close":
        connection.close()
    return response.status


@dataclass
class Calibration:
    """What sending each candidate once gave."""

    kept: dict[Call, float] = field(default_factory=dict)
    """The calls that answered 200, with the seconds they took."""
    refused: Counter[tuple[str, int]] = field(default_factory=Counter)
    slow: set[str] = field(default_factory=set)
    """Operations whose fastest example takes over ``SLOW_SECONDS``."""
    too_slow: list[tuple[Call, float]] = field(default_factory=list)
    """Examples of a slow operation left out: much slower than its fastest."""
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def probe(port: int, keys: Keys, call: Call) -> tuple[int, float]:
    """One answer to the call with the instructor key (not rate-limited), retried while the
    service sheds it (an experiment already running on that worker); status and seconds."""
    request = replace(call, key="instructor").render(keys, random.Random(0))
    deadline = time.monotonic() + CALIBRATION_PATIENCE
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            start = time.perf_counter()
            status = send(connection, request)
            seconds = time.perf_counter() - start
        finally:
            connection.close()
        if status not in SHED or time.monotonic() > deadline:
            return status, seconds
        time.sleep(0.5)


def calibrate(port: int, keys: Keys, calls: list[Call], parallel: int) -> Calibration:
    """Send each call once (``parallel`` at a time); keep those that answer 200."""
    result = Calibration()
    start = time.monotonic()
    with ThreadPoolExecutor(parallel) as pool:
        futures = [(call, pool.submit(probe, port, keys, call)) for call in calls]
        for call, future in futures:
            where = f"calibration: {call.operation} {call.name} at {call.path}"
            try:
                status, seconds = future.result()
            except (OSError, http.client.HTTPException) as error:
                result.errors[f"{where}: {type(error).__name__}"] += 1
                continue
            if status == 200:
                result.kept[call] = seconds
            elif status in call.refusals:
                result.refused[(call.label, status)] += 1
            else:
                result.errors[f"{where}: {status}"] += 1
    result.seconds = time.monotonic() - start
    drop_slow(result)
    return result


def drop_slow(result: Calibration) -> None:
    """Leave out the examples of a slow operation that take much longer than its fastest."""
    by_operation: dict[str, list[tuple[Call, float]]] = defaultdict(list)
    for call, seconds in result.kept.items():
        by_operation[call.label].append((call, seconds))
    for label, timed in by_operation.items():
        fastest = min(seconds for _, seconds in timed)
        if fastest <= SLOW_SECONDS:
            continue
        result.slow.add(label)
        for call, seconds in timed:
            if seconds > MUCH_SLOWER * fastest:
                result.too_slow.append((call, seconds))
                del result.kept[call]


def load_mix(result: Calibration) -> list[Call]:
    """The kept calls, each operation's weight shared among them (slow ones: ``SLOW_WEIGHT``)."""
    count = Counter(call.label for call in result.kept)

    def weighed(call: Call) -> Call:
        slow = call.label in result.slow
        weight = (SLOW_WEIGHT if slow else call.weight) / count[call.label]
        return replace(call, weight=weight, solo=slow)

    return [weighed(call) for call in result.kept]


def print_calibration(candidates: list[Call], result: Calibration) -> None:
    print(
        f"calibration: {len(candidates)} requests (each example once, at every path) "
        f"in {result.seconds:.1f} s"
    )
    labels = list(dict.fromkeys(call.label for call in candidates))
    width = max(len(label) for label in labels)
    for label in labels:
        total = sum(1 for call in candidates if call.label == label)
        kept = sum(1 for call in result.kept if call.label == label)
        refused = ", ".join(
            f"{s}: {n}" for (lab, s), n in sorted(result.refused.items()) if lab == label
        )
        notes = [f"refused {refused}"] if refused else []
        notes += [f"too slow: {c.name} ({s:.1f} s)" for c, s in result.too_slow if c.label == label]
        if label in result.slow:
            timed = [f"{c.name} {s:.1f} s" for c, s in result.kept.items() if c.label == label]
            notes.append(f"slow, weight {SLOW_WEIGHT}: {', '.join(timed)}")
        print(f"  {label:{width}}  kept {kept:3d} of {total:3d}  {'; '.join(notes)}")
    for error, n in result.errors.items():
        print(f"  ERROR {error} (x{n})")


def client_loop(
    port: int,
    keys: Keys,
    calls: list[Call],
    until: float,
    results: Results,
    seed: int,
    solo: threading.Lock,
) -> None:
    """Send requests drawn from ``calls`` on one connection until ``until``; ``solo`` is held
    while a slow request is in flight (a client that draws another one draws again)."""
    rng = random.Random(seed)
    cumulative = list(itertools.accumulate(c.weight for c in calls))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    sent = 0
    try:
        while time.monotonic() < until:
            sent += 1
            if sent % RECONNECT_EVERY == 0:
                # A kept-alive connection stays with the worker that accepted it: reconnect now
                # and then, as scripts do, so the load spreads over the workers.
                connection.close()
            call = rng.choices(calls, cum_weights=cumulative)[0]
            if call.solo and not solo.acquire(blocking=False):
                continue
            request = call.render(keys, rng)
            start = time.perf_counter()
            try:
                status = send(connection, request)
                results.record(call, request, status, time.perf_counter() - start)
            except (OSError, http.client.HTTPException) as error:
                results.fail(request, error)
                connection.close()
            finally:
                if call.solo:
                    solo.release()
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


def get_json(port: int, path: str, keys: Keys | None = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers=keys.headers("instructor") if keys else {}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def wait_ready(port: int, process: subprocess.Popen[bytes]) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                pass
            schema: dict[str, Any] = get_json(port, "/openapi.json")
            return schema
        except OSError:
            time.sleep(0.3)
    raise SystemExit("the server did not become ready")


def assignment_listing(port: int, keys: Keys) -> Listing:
    """The problem ids of each assignment, from ``GET /v1/assignments``."""
    listed = get_json(port, "/v1/assignments", keys)["assignments"]
    return {a["id"]: [p["id"] for p in a["problems"]] for a in listed}


def start_server(port: int, workers: int, keys: Keys, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    with log.open("wb") as out:
        return subprocess.Popen(
            [*command, "--workers", str(workers)],
            cwd=ROOT,
            env={**os.environ, "TENSORGRADE_LOG_LEVEL": "info", **keys.environment()},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def server_events(log: Path) -> list[str]:
    """The server's own messages: starts, stops, restarts, errors; of its access log (one JSON
    line a request), only the 5xx answers other than load shed."""
    return [line for line in log.read_text(errors="replace").splitlines() if not access(line)]


def access(line: str) -> bool:
    """Whether the log line is the access log of a request answered below 500 or shed."""
    try:
        entry = json.loads(line)
    except ValueError:
        return "HTTP/1.1" in line  # uvicorn's own access log, if the format is not JSON
    if not isinstance(entry, dict) or entry.get("logger") != "tensorgrade.access":
        return False
    status = int(entry.get("status", 0))
    return status < 500 or status in SHED


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
    width = max((len(label) for label in results.latencies), default=9)
    print(f"\n{'operation':{width}} {'count':>6} {'p50 ms':>8} {'p99 ms':>8}  statuses")
    for label in sorted(results.latencies):
        values = results.latencies[label]
        statuses = {s: n for (lab, s), n in results.statuses.items() if lab == label}
        print(
            f"{label:{width}} {len(values):6d} {percentile(values, 50) * 1000:8.1f} "
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


def run_load(
    port: int, pid: int, keys: Keys, calls: list[Call], args: argparse.Namespace
) -> tuple[Results, float, list[tuple[float, list[float]]]]:
    """The clients and the memory sampler for the run's duration."""
    results = Results()
    samples: list[tuple[float, list[float]]] = []
    start = time.monotonic()
    until = start + args.duration
    solo = threading.Lock()
    threads = [
        threading.Thread(
            target=client_loop, args=(port, keys, calls, until, results, args.seed + i, solo)
        )
        for i in range(args.clients)
    ]
    threads.append(threading.Thread(target=sample_memory, args=(pid, until, samples)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.monotonic() - start, samples


def soak(port: int, process: subprocess.Popen[bytes], keys: Keys, args: argparse.Namespace) -> bool:
    """Calibrate, run the load and report; whether the run passed."""
    schema = wait_ready(port, process)
    operations = {f"{method.upper()} {path}" for path, method, _ in schema_operations(schema)}
    tried = candidates(schema, assignment_listing(port, keys))
    calibration = calibrate(port, keys, tried, args.workers)
    print_calibration(tried, calibration)
    calls = load_mix(calibration) + heavy_and_hostile(np.random.default_rng(args.seed))
    print(f"\n{len(calls)} kinds of request in the load")
    results, seconds, samples = run_load(port, process.pid, keys, calls, args)
    passed = report(results, seconds, samples)
    exercised = results.answered | {call.label for call in calibration.kept}
    missing = sorted(operations - exercised)
    print(f"operations not exercised: {missing}")
    print(f"calibration errors: {sum(calibration.errors.values())}")
    return passed and not missing and not calibration.errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=16, help="concurrent connections")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    port = free_port()
    keys = Keys.generate()
    log = Path(tempfile.mkdtemp(prefix="soak-")) / "server.log"
    process = start_server(port, args.workers, keys, log)
    try:
        passed = soak(port, process, keys, args)
        print(f"\nserver messages ({log}):")
        for line in server_events(log)[-40:]:
            print(f"  {line}")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()

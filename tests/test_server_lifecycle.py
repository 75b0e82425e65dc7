"""Against a real uvicorn process started by ``tensorgrade serve``: the body limit on the wire
(declared and chunked), what the server logs, and a graceful shutdown on SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from service import cli
from service.examples import SEED_W_1x5x3, SEED_X_5x7
from service.logs import log_config
from service.metrics import MULTIPROC_ENV
from service.settings import get_settings
from tests.test_safety import MARKERS, SECRET, assert_clean
from tests.test_serve import free_port

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 65_536
SEED = {"config": {"stride": 2}, "params": {"weight": SEED_W_1x5x3}, "inputs": {"x": SEED_X_5x7}}


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def get(self, path: str) -> tuple[int, bytes]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return r.status, r.read()


def start_server(log: Path) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "TENSORGRADE_MAX_BODY_BYTES": str(LIMIT),
        "TENSORGRADE_GRACEFUL_SHUTDOWN_SECONDS": "30",
        "TENSORGRADE_VARIANT_SECRET": SECRET,
        "TENSORGRADE_LOG_LEVEL": "debug",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, port, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if server.get("/readyz")[0] == 200:
                return server
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError(f"the server did not become ready:\n{log.read_text()}")


def stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        server.process.wait(timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("server") / "log")
    yield running
    stop(running)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response whose body has a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        received = sock.recv(65536)
        if not received:
            raise AssertionError("the server closed without answering")
        data += received
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


def post_head(path: str, framing: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()


@pytest.mark.slow
def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(post_head("/v1/shapes/conv", f"Content-Length: {10 * LIMIT}"))
        status, headers, body = read_response(sock)  # no byte of the body was sent
    assert status == 413 and headers["content-type"] == "application/problem+json"
    assert f"the limit is {LIMIT:,}" in json.loads(body)["detail"]


@pytest.mark.slow
def test_a_chunked_body_over_the_limit_is_refused_as_it_streams(server: Server) -> None:
    chunk = b" " * 8192
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(post_head("/v1/shapes/conv", "Transfer-Encoding: chunked"))
        for _ in range(LIMIT // len(chunk) + 1):  # the last one passes the limit; no end chunk
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, headers, body = read_response(sock)
    assert status == 413 and headers["connection"] == "close"
    assert f"larger than the limit of {LIMIT:,} bytes" in json.loads(body)["detail"]
    assert server.get("/healthz")[0] == 200


@pytest.mark.slow
def test_the_server_logs_neither_tensors_nor_keys(server: Server) -> None:
    body = json.dumps({**SEED, "inputs": {"x": [[MARKERS[0]] * 7] * 5}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/v1/models/conv1d/forward",
        data=body,
        headers={"Content-Type": "application/json", "X-API-Key": SECRET},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    time.sleep(0.2)  # the access log line is written after the response
    text = server.log.read_text()
    assert "POST /v1/models/conv1d/forward" in text  # the capture works
    assert_clean(text)


@pytest.mark.slow
def test_sigterm_lets_in_flight_requests_finish_and_refuses_new_ones(tmp_path: Path) -> None:
    server = start_server(tmp_path / "log")
    try:
        body = json.dumps(SEED).encode()
        first_sent, rest_may_go = threading.Event(), threading.Event()

        def slow_body() -> Iterator[bytes]:
            yield body[:40]
            first_sent.set()
            assert rest_may_go.wait(timeout=60)
            yield body[40:]

        answer: dict[str, Any] = {}

        def in_flight() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            try:
                connection.request(
                    "POST",
                    "/v1/models/conv1d/forward",
                    body=slow_body(),
                    headers={"Content-Type": "application/json"},
                )
                response = connection.getresponse()
                answer["status"], answer["body"] = response.status, response.read()
            finally:
                connection.close()

        client = threading.Thread(target=in_flight)
        client.start()
        assert first_sent.wait(timeout=30)
        # A request answered after the first part was sent shows the server has read it.
        assert server.get("/healthz")[0] == 200
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while True:  # new connections are refused once the server stops listening
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "the server kept accepting after SIGTERM"
            time.sleep(0.05)
        assert client.is_alive() and server.process.poll() is None
        rest_may_go.set()
        client.join(timeout=60)
        assert answer["status"] == 200
        assert json.loads(answer["body"])["outputs"]["y"]["shape"] == [1, 3]
        # uvicorn re-raises the signal once shut down, so the exit is "terminated by SIGTERM".
        assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        stop(server)


def test_serve_passes_the_graceful_shutdown_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setenv("TENSORGRADE_GRACEFUL_SHUTDOWN_SECONDS", "7")
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)  # serve would clear that folder
    get_settings.cache_clear()
    # `serve` imports uvicorn when it runs (the other commands do not need it).
    monkeypatch.setattr(uvicorn, "run", lambda *_, **kwargs: seen.update(kwargs))
    try:
        assert cli.main(["serve"]) == 0
    finally:
        get_settings.cache_clear()
    assert seen["timeout_graceful_shutdown"] == 7
    # The rest of what serve sets up still holds: logs as JSON, no uvicorn access log, and
    # h11, never "auto", which takes httptools wherever it is installed (test_http_protocol).
    assert seen["log_config"] == log_config(seen["log_level"]) and seen["access_log"] is False
    assert seen["http"] == "h11"

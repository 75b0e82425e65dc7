"""Serving an app for tests: over real HTTP (uvicorn in a thread) or in-process to httpx."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from starlette.types import ASGIApp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def uvicorn_thread(app: ASGIApp) -> Iterator[str]:
    """A real uvicorn server for ``app`` on a free loopback port; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # h11, as `tensorgrade serve` runs it (service/cli.py), whatever else is installed.
    config = uvicorn.Config(app, http="h11", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


class InProcess(httpx.BaseTransport):
    """An httpx transport that hands each request to the app in-process (no socket).

    Starlette's ``TestClient`` speaks ``httpx2``; this adapts it to the ``httpx`` the client
    of the service uses.
    """

    def __init__(self, test_client: TestClient) -> None:
        self.test_client = test_client
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.test_client.request(
            request.method,
            str(request.url),
            content=request.read(),
            headers=dict(request.headers),
        )
        return httpx.Response(
            answer.status_code, headers=list(answer.headers.multi_items()), content=answer.content
        )


class Answers:
    """Reads HTTP answers off a socket one at a time, keeping what arrived of the next ones
    (pipelined answers may come in one read)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = b""

    def _more(self, what: str) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"the connection closed {what}: {self.data[:200]!r}"
        self.data += chunk

    def next(self) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body (by its Content-Length, or up to the
        end of the connection without one)."""
        while b"\r\n\r\n" not in self.data:
            self._more("before an answer")
        head, _, self.data = self.data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines)}
        if "content-length" not in headers:
            return int(status_line.split()[1]), headers, self.rest()
        length = int(headers["content-length"])
        while len(self.data) < length:
            self._more("inside an answer's body")
        body, self.data = self.data[:length], self.data[length:]
        return int(status_line.split()[1]), headers, body

    def rest(self) -> bytes:
        """What is left until the server closes the connection (or resets it: a server that
        closes with bytes of ours unread resets the connection after its answer)."""
        data, self.data = self.data, b""
        try:
            while chunk := self.sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        return data


def send_until_answered(sock: socket.socket, start: bytes, filler: bytes, most: int) -> int:
    """Send ``start``, then ``filler`` again and again until the server answers or closes;
    returns the bytes sent. Fails past ``most`` bytes: the server buffered them all."""
    sock.sendall(start)
    sent = len(start)
    while sent < most:
        readable, _, _ = select.select([sock], [], [], 0.05)
        if readable:
            return sent
        try:
            sock.sendall(filler)
        except (BrokenPipeError, ConnectionResetError):
            return sent
        sent += len(filler)
    pytest.fail(f"the server took {sent:,} bytes of a request head without answering")

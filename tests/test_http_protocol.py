"""The HTTP protocol the service is served with (``service/httpprotocol.py``): httptools, with
a bound on the request line and headers that plain httptools does not have.

Each test speaks HTTP over a raw socket to a real uvicorn server, so that what is sent is
exactly what the test says (a client library would refuse to send some of it).
"""

from __future__ import annotations

import importlib.util
import json
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service import httpprotocol
from service.httpprotocol import MAX_HEAD_BYTES, PROTOCOL, http_protocol
from tests.servers import Answers, send_until_answered, uvicorn_thread


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse(
        {"path": request.url.path, "headers": len(request.headers), "body": len(body)}
    )


APP = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])


@pytest.fixture(scope="module")
def address() -> Iterator[tuple[str, int]]:
    with uvicorn_thread(APP) as url:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        yield parts.hostname, parts.port


def assert_head_refused(sock: socket.socket) -> None:
    status, headers, body = Answers(sock).next()
    assert status == 431
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    assert "date" in headers and headers["server"] == "uvicorn"
    problem = json.loads(body)
    assert problem["type"] == "https://tensorgrade.dev/problems/header-too-large"
    assert problem["status"] == 431
    assert f"{MAX_HEAD_BYTES:,} bytes" in problem["detail"]
    assert sock.recv(1) == b"", "the connection stays open after the 431"


def test_the_service_is_served_by_the_bounded_httptools_protocol() -> None:
    assert importlib.util.find_spec("httptools") is not None  # a dependency of the project
    assert http_protocol() == PROTOCOL


def test_without_httptools_the_service_is_served_by_h11(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        httpprotocol.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "httptools" else real(name, *args),
    )
    assert http_protocol() == "h11"  # h11 bounds the head itself (16 KiB)


def test_an_endless_header_line_is_refused_with_431(address: tuple[str, int]) -> None:
    with socket.create_connection(address, timeout=10) as sock:
        start = b"GET /x HTTP/1.1\r\nHost: x\r\nX-Big: "
        sent = send_until_answered(sock, start, b"a" * 16384, 1 << 20)
        # Refused within one read of the bound, not after megabytes.
        assert sent < MAX_HEAD_BYTES + (1 << 18)
        assert_head_refused(sock)


def test_endless_small_headers_are_refused_with_431(address: tuple[str, int]) -> None:
    with socket.create_connection(address, timeout=10) as sock:
        start = b"GET /x HTTP/1.1\r\nHost: x\r\n"
        sent = send_until_answered(sock, start, b"X-A: 1\r\n" * 2048, 1 << 20)
        assert sent < MAX_HEAD_BYTES + (1 << 18)
        assert_head_refused(sock)


def test_an_endless_request_line_is_refused_with_431(address: tuple[str, int]) -> None:
    with socket.create_connection(address, timeout=10) as sock:
        sent = send_until_answered(sock, b"GET /", b"a" * 16384, 1 << 20)
        assert sent < MAX_HEAD_BYTES + (1 << 18)
        assert_head_refused(sock)


def test_heads_under_the_bound_are_answered_on_a_kept_alive_connection(
    address: tuple[str, int],
) -> None:
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(100))  # ~11 KiB
    assert len(headers) < MAX_HEAD_BYTES
    request = b"GET /first HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
    with socket.create_connection(address, timeout=10) as sock:
        answers = Answers(sock)
        for _ in range(3):  # the count starts again with each request
            sock.sendall(request)
            status, _, body = answers.next()
            assert status == 200 and json.loads(body)["headers"] == 101


def test_a_large_body_does_not_count_towards_the_head(address: tuple[str, int]) -> None:
    body = b"b" * (2 << 20)
    head = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    with socket.create_connection(address, timeout=10) as sock:
        answers = Answers(sock)
        sock.sendall(head + body)  # in one go: the reads mix the head and the body
        status, _, answer = answers.next()
        assert status == 200 and json.loads(answer)["body"] == len(body)
        # A body sent in small pieces after its head, then another request.
        sock.sendall(head)
        for offset in range(0, len(body), 8192):
            sock.sendall(body[offset : offset + 8192])
        status, _, answer = answers.next()
        assert status == 200 and json.loads(answer)["body"] == len(body)


def test_pipelined_requests_are_each_answered(address: tuple[str, int]) -> None:
    big = b"X-Big: " + b"v" * (MAX_HEAD_BYTES // 2) + b"\r\n"
    one = b"GET /one HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n"
    two = b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n" + big + b"\r\nabc"
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(one + two + one)
        answers = Answers(sock)
        paths = []
        for _ in range(3):
            status, _, body = answers.next()
            assert status == 200
            paths.append(json.loads(body)["path"])
        assert paths == ["/one", "/two", "/one"]

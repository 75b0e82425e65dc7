"""What the HTTP/1.1 protocol the service is served with (uvicorn's h11, ``service/cli.py``)
guarantees a client, as README's "What a request goes through" states it.

Each test speaks HTTP over a raw socket to a real uvicorn server, so that what is sent is
exactly what the test says (a client library would refuse to send some of it). Several of
these requests broke the service under uvicorn's httptools protocol (an endless header or
trailer grew the worker without limit, an `Upgrade` header lost a POST's body, a
`Content-Length` with a trailing space was not refused before the upload): they are here so
that a change of protocol must pass them first.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from service.app import create_app
from service.settings import Settings
from tests.servers import Answers, send_until_answered, uvicorn_thread

BODY_LIMIT = 100_000
HEAD_BOUND = 16 * 1024  # h11's default, as uvicorn runs it
ONE_READ = 1 << 18  # a bound is checked once per read: allow one read beyond it
SHAPE = b'{"input_size": [21, 12], "kernel_size": [4, 5], "stride": 4}'


@pytest.fixture(scope="module")
def address() -> Iterator[tuple[str, int]]:
    with uvicorn_thread(create_app(Settings(max_body_bytes=BODY_LIMIT))) as url:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        yield parts.hostname, parts.port


def refused_unread(sock: socket.socket) -> None:
    """h11's answer to a head it will not buffer: a plain-text 400, and the connection closed."""
    status, headers, _ = Answers(sock).next()
    assert status == 400 and headers["connection"] == "close"


@pytest.mark.parametrize(
    ("start", "filler"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ", b"a" * 16384),  # one endless header
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-A: 1\r\n" * 2048),  # endless headers
        (b"GET /", b"a" * 16384),  # an endless request line
    ],
    ids=["header-line", "many-headers", "request-line"],
)
def test_a_head_that_does_not_end_is_refused_within_its_bound(
    address: tuple[str, int], start: bytes, filler: bytes
) -> None:
    with socket.create_connection(address, timeout=10) as sock:
        sent = send_until_answered(sock, start, filler, 1 << 22)
        assert sent < HEAD_BOUND + ONE_READ, f"{sent:,} bytes taken before the answer"
        refused_unread(sock)


def test_endless_trailers_after_a_chunked_body_are_cut_off(address: tuple[str, int]) -> None:
    # Trailers are header lines after the last chunk: httptools took them without end (and
    # added them to the request's headers, after its answer had gone).
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n")
        answers = Answers(sock)
        assert answers.next()[0] == 200  # answered before its trailers end
        sent = send_until_answered(sock, b"", b"X-T: 1\r\n" * 2048, 1 << 22)
        assert sent < HEAD_BOUND + ONE_READ, f"{sent:,} bytes of trailers taken"
        assert answers.rest() == b""  # closed: there is no request left to answer


def test_heads_under_the_bound_are_answered_on_a_kept_alive_connection(
    address: tuple[str, int],
) -> None:
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(100))  # ~11 KiB
    assert len(headers) < HEAD_BOUND
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
    with socket.create_connection(address, timeout=10) as sock:
        answers = Answers(sock)
        for _ in range(3):  # the bound is per request
            sock.sendall(request)
            assert answers.next()[0] == 200


def test_pipelined_requests_are_answered_in_order(address: tuple[str, int]) -> None:
    shape = b"POST /v1/shapes/conv HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    shape += b"Content-Length: %d\r\n\r\n%s" % (len(SHAPE), SHAPE)
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall((health + shape) * 50)
        answers = Answers(sock)
        for _ in range(50):
            assert answers.next()[2] == b'{"status":"ok"}'
            status, _, body = answers.next()
            assert status == 200 and json.loads(body)["output_size"] == [5, 2]


def test_an_upgrade_header_leaves_a_posts_body_to_the_route(address: tuple[str, int]) -> None:
    # What Java's HttpClient sends by default: an offer of HTTP/2 over the same connection,
    # which the server may ignore. The body is still the request's (httptools dropped it).
    head = (
        b"POST /v1/shapes/conv HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(SHAPE)
    )
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head + SHAPE)
        status, _, body = Answers(sock).next()
        assert status == 200 and json.loads(body)["output_size"] == [5, 2]


@pytest.mark.parametrize("length", [b"200000", b"200000 ", b"\t200000"])
def test_expect_100_continue_learns_of_the_413_before_uploading(
    address: tuple[str, int], length: bytes
) -> None:
    # Spaces and tabs around a value are not part of it (RFC 9110 5.5).
    head = (
        b"POST /v1/shapes/conv HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: " + length + b"\r\n\r\n"
    )
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head)  # and nothing more: a 100 Continue would have the client upload
        status, headers, body = Answers(sock).next()
        assert status == 413, (status, body)
        assert headers["content-type"] == "application/problem+json"
        assert json.loads(body)["type"].endswith("/body-too-large")

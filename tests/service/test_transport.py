"""The client's plain-HTTP transport (``service.transport``) against scripted raw servers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from service.client import Client
from service.transport import ClosedBeforeAnswer, StdlibTransport

Handler = Callable[[socket.socket, bytes], None]
"""Answers one request read from a connection (or does not: closes, stalls)."""


def read_request(conn: socket.socket) -> bytes:
    """One request, head and body (by its Content-Length); b"" once the client has gone."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    fields = dict(line.partition(b":")[::2] for line in head.split(b"\r\n")[1:])
    length = int({k.lower(): v for k, v in fields.items()}.get(b"content-length", b"0"))
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def answer(body: bytes, *extra: bytes) -> bytes:
    head = [b"HTTP/1.1 200 OK", b"Content-Length: " + str(len(body)).encode(), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


@contextmanager
def raw_server(*handlers: Handler) -> Iterator[tuple[str, list[bytes], list[int]]]:
    """A loopback server taking each request in turn to the next handler.

    Yields its URL, the requests received and, for each request, the number of the
    connection it came on (1, 2, ...), so that reuse can be seen.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    queue = list(handlers)
    requests: list[bytes] = []
    connections: list[int] = []
    count = 0

    def serve_connection(conn: socket.socket, number: int) -> None:
        with conn:
            while queue:
                request = read_request(conn)
                if not request:
                    return
                requests.append(request)
                connections.append(number)
                handler = queue.pop(0)
                handler(conn, request)
                if conn.fileno() == -1:  # the handler closed it
                    return

    def accept() -> None:
        nonlocal count
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            count += 1
            threading.Thread(target=serve_connection, args=(conn, count), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", requests, connections
    finally:
        listener.close()


def ok(body: bytes = b"ok") -> Handler:
    return lambda conn, _: conn.sendall(answer(body))


def ok_then_close(body: bytes = b"ok") -> Handler:
    """Answer with keep-alive, then close the connection as an idle-timeout would."""

    def handle(conn: socket.socket, _: bytes) -> None:
        conn.sendall(answer(body))
        conn.shutdown(socket.SHUT_RDWR)
        conn.close()

    return handle


def close_without_answer(conn: socket.socket, _: bytes) -> None:
    conn.close()


def test_requests_arrive_whole_and_connections_are_kept_alive() -> None:
    big = bytes(range(256)) * 40_000  # 10 MB: read in one piece
    with (
        raw_server(ok(big), ok(b"second")) as (url, requests, connections),
        httpx.Client(transport=StdlibTransport()) as client,
    ):
        first = client.post(
            url + "/v1/check?format=gradescope",
            content=b'{"a": 1}',
            headers={"X-API-Key": "k", "Content-Type": "application/json"},
        )
        second = client.get(url + "/healthz")
    assert first.status_code == 200 and first.content == big
    assert first.headers["content-length"] == str(len(big))
    assert first.http_version == "HTTP/1.1" and first.reason_phrase == "OK"
    assert second.content == b"second"
    head, body = requests[0].split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/check?format=gradescope HTTP/1.1"
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    assert headers[b"x-api-key"] == b"k" and headers[b"content-length"] == b"8"
    assert headers[b"host"] == url.removeprefix("http://").encode()
    assert body == b'{"a": 1}'
    assert connections == [1, 1]  # one connection for both


def test_a_connection_the_server_closed_while_idle_is_replaced_before_use() -> None:
    """The request is never sent on the closed connection (uvicorn closes idle ones after
    5 s): it goes once, on a fresh one, and succeeds."""
    closed = threading.Event()

    def answer_then_close(conn: socket.socket, _: bytes) -> None:
        ok_then_close(b"one")(conn, _)
        closed.set()

    with (
        raw_server(answer_then_close, ok(b"two")) as (url, requests, connections),
        httpx.Client(transport=StdlibTransport()) as client,
    ):
        assert client.get(url + "/a").content == b"one"
        assert closed.wait(5)
        assert client.post(url + "/b", content=b"{}").content == b"two"
    assert connections == [1, 2] and len(requests) == 2


def test_an_answer_that_says_close_is_not_pooled() -> None:
    def closing(conn: socket.socket, _: bytes) -> None:
        conn.sendall(answer(b"bye", b"Connection: close"))
        conn.close()

    with raw_server(closing, ok(b"fresh")) as (url, _, connections):
        transport = StdlibTransport()
        with httpx.Client(transport=transport) as client:
            assert client.get(url).content == b"bye"
            assert client.get(url).content == b"fresh"
    assert connections == [1, 2]


def test_a_large_answer_that_says_close_is_read_whole() -> None:
    """The connection closes its socket as soon as the head says so: the body is still read
    from it (more than the head's read took in), by the deadline too."""
    body = b"z" * 3_000_000

    def closing(conn: socket.socket, _: bytes) -> None:
        conn.sendall(answer(body, b"Connection: close"))
        conn.close()

    with (
        raw_server(closing) as (url, _, _),
        httpx.Client(transport=StdlibTransport(), timeout=5.0) as client,
    ):
        assert client.get(url).content == body


def test_a_chunked_answer_is_read_whole() -> None:
    def chunked(conn: socket.socket, _: bytes) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )

    with raw_server(chunked) as (url, _, _), httpx.Client(transport=StdlibTransport()) as client:
        assert client.get(url).content == b"hello world"


def test_failures_on_the_wire_are_httpx_errors() -> None:
    with (
        raw_server(close_without_answer) as (url, _, _),
        httpx.Client(transport=StdlibTransport()) as client,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        client.get(url)  # a fresh connection: no second try

    def stall(conn: socket.socket, _: bytes) -> None:
        threading.Event().wait(2)

    with (
        raw_server(stall) as (url, _, _),
        httpx.Client(transport=StdlibTransport(), timeout=0.2) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.get(url)

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: refused
        with httpx.Client(transport=StdlibTransport()) as client, pytest.raises(httpx.ConnectError):
            client.get(f"http://127.0.0.1:{port}/")


def test_other_schemes_go_to_the_other_transport() -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, text="tls")

    transport = StdlibTransport(other=httpx.MockTransport(handle))
    with httpx.Client(transport=transport) as client:
        assert client.get("https://example.test/x").text == "tls"
    assert seen == ["https://example.test/x"]


def close_after(seconds: float) -> Handler:
    """Take the request, then close the connection without an answer: a worker that died
    while computing."""

    def handle(conn: socket.socket, _: bytes) -> None:
        threading.Event().wait(seconds)
        conn.close()

    return handle


def test_a_connection_closed_after_the_request_was_sent_is_not_sent_again() -> None:
    """However soon the server closes a reused connection after the request reached it (a
    worker that died at once), the transport does not send it again: the server had it, and
    a POST reached the server twice per call (6 times with the client's retries on top)."""
    with (
        raw_server(ok(b"one"), close_after(0), ok(b"three")) as (url, requests, connections),
        httpx.Client(transport=StdlibTransport()) as client,
    ):
        assert client.get(url + "/a").content == b"one"
        with pytest.raises(ClosedBeforeAnswer, match="closed the connection before answering"):
            client.post(url + "/b", content=b"{}")
        assert len(requests) == 2  # not sent again
        assert client.get(url + "/c").content == b"three"
    assert connections == [1, 1, 2]


def test_a_client_call_reaches_the_server_at_most_once_per_retry() -> None:
    """1 + retries sends, as documented, also on a kept-alive connection."""
    healthy = answer(b'{"status": "ok"}', b"Content-Type: application/json")
    handlers = [lambda conn, _: conn.sendall(healthy), *[close_after(0)] * 4]
    with (
        raw_server(*handlers) as (url, requests, _),
        Client(url, retries=2, sleep=lambda _: None) as tg,
    ):
        assert tg.health() == {"status": "ok"}
        with pytest.raises(ClosedBeforeAnswer):
            tg.health()
    assert len(requests) == 1 + 3


def trickle(body: bytes, piece: int, every: float) -> Handler:
    """Answer ``piece`` bytes at a time, ``every`` seconds apart: each read is quick, the
    whole answer slow."""

    def handle(conn: socket.socket, _: bytes) -> None:
        data = answer(body)
        for start in range(0, len(data), piece):
            threading.Event().wait(every)
            try:
                conn.sendall(data[start : start + piece])
            except OSError:  # the client gave up
                return

    return handle


def test_the_read_timeout_bounds_the_whole_answer() -> None:
    """A server sending 40 bytes every 0.25 s never lets one read wait 1 s, and took 2 s
    for a 243-byte answer with a timeout of 1 s: the caller is held no longer than asked."""
    with (
        raw_server(trickle(b"x" * 200, 40, 0.25)) as (url, _, _),
        httpx.Client(transport=StdlibTransport(), timeout=1.0) as client,
    ):
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            client.get(url)
        assert time.monotonic() - started < 1.5


def test_an_answer_within_the_read_timeout_keeps_its_connection() -> None:
    """Read by a deadline or with none, answers arrive whole and the connection is kept."""
    with (
        raw_server(trickle(b"y" * 100, 40, 0.01), ok(b"two"), ok(b"three")) as (url, _, used),
        httpx.Client(transport=StdlibTransport(), timeout=5.0) as client,
    ):
        assert client.get(url + "/a").content == b"y" * 100
        assert client.get(url + "/b", timeout=None).content == b"two"
        assert client.get(url + "/c").content == b"three"
    assert used == [1, 1, 1]

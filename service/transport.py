"""An httpx transport that speaks plain HTTP/1.1 through the standard library's ``http.client``.

Why the client does not use httpx's own transport for ``http://``: httpcore reads a response
64 KiB at a time and h11 copies each piece three more times (into its receive buffer, out as
an event, and into the joined body), with Python work per piece, so a 32 MB safetensors
Jacobian arrives about 1.5x slower than with ``urllib.request``. ``http.client`` reads a body
of known ``Content-Length`` with one read into one buffer, which the socket fills directly.
Everything above the wire stays httpx (``httpx.Client``, its headers, timeouts and errors; the
client's retries); ``https://`` and other schemes go to httpx's own transport.

Proxies: httpx reads ``HTTP_PROXY`` and the like only for a client without a transport of its
own, so the client asks ``environment_proxy`` which proxy applies to its base URL and hands it
to this transport. Plain HTTP then goes to an ``http://`` proxy the same way, one buffer for the
body, with the request's absolute URL in its request line; other schemes, and proxies this
transport does not speak (``https://``, ``socks5://``), go through httpx's own transport with
the proxy.

Connections are kept alive and reused, one request at a time each, from a small pool that is
safe to share between threads. A kept-alive connection that the server closed while it was
idle (uvicorn closes them after 5 s) is readable at once (its end of stream): it is dropped
before use and the request goes on a fresh connection, sent once. A connection that fails
after the request went out is never sent on again here: the server may have had the request
(a worker that died while computing, say), so the failure is raised ("closed the connection
before answering") for the client's retries alone to count, and one call reaches the server
at most ``1 + retries`` times. The rare stale connection closed in the instant between that
check and the request is such a failure too, and its retry is counted likewise.

The read timeout bounds the whole answer, status line, headers and body, from the moment the
request was sent: a server that trickles its answer a few bytes at a time cannot hold the
caller past it (a bound on each read alone would let it, for as long as it likes).
"""

from __future__ import annotations

import base64
import functools
import http.client
import io
import select
import socket
import threading
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

import httpx

# Failures that mean "the server closed the connection".
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
_DROPPED_HEADERS = frozenset({b"transfer-encoding", b"content-length"})


class ClosedBeforeAnswer(httpx.RemoteProtocolError):
    """The server had the request (all of it was sent), and closed the connection without
    answering it (a worker that stopped while computing, say): not sent again here, for the
    client's retries to count."""


def environment_proxy(url: httpx.URL | str) -> str | None:
    """The proxy the environment names for ``url``, as httpx would read it.

    Args:
        url: where requests go (the client's base URL).

    Returns:
        The proxy's URL (``http://`` added to a bare ``host:port``), from ``HTTP_PROXY`` or
        ``HTTPS_PROXY`` by ``url``'s scheme, else ``ALL_PROXY`` (each also in lower case,
        which wins); None where none is set or ``NO_PROXY`` names ``url``'s host.
    """
    target = httpx.URL(url)
    # getproxies() is what httpx itself reads (with, on macOS and Windows, the system's
    # settings where the environment names none); proxy_bypass() applies NO_PROXY to it.
    proxies = urllib.request.getproxies()
    proxy = proxies.get(target.scheme) or proxies.get("all")
    if not proxy:
        return None
    host = target.host if target.port is None else f"{target.host}:{target.port}"
    if urllib.request.proxy_bypass(host):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


class StdlibTransport(httpx.BaseTransport):
    """Plain-HTTP requests over pooled ``http.client`` connections; others through httpx.

    Args:
        max_idle: the most idle connections kept per host and port.
        other: the transport for every scheme but ``http`` (default: httpx's own, made when
            first needed, with ``proxy``).
        proxy: a proxy every request goes through (``http://user:password@host:port``), or
            None. A proxy other than ``http://`` takes plain HTTP to httpx's transport too.
        trust_env: passed to httpx's transport (``SSL_CERT_FILE``, ``SSL_CERT_DIR``).
    """

    def __init__(
        self,
        max_idle: int = 8,
        other: httpx.BaseTransport | None = None,
        *,
        proxy: httpx.URL | str | None = None,
        trust_env: bool = True,
    ) -> None:
        self._max_idle = max_idle
        self._idle: dict[tuple[str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._other = other
        self._proxy = None if proxy is None else httpx.URL(proxy)
        self._trust_env = trust_env
        self._proxy_headers: list[tuple[bytes, bytes]] = []
        if self._proxy is not None and (self._proxy.username or self._proxy.password):
            # What httpx sends a forward proxy: Basic auth from the URL's (decoded) userinfo.
            userpass = f"{self._proxy.username}:{self._proxy.password}".encode()
            self._proxy_headers.append(
                (b"Proxy-Authorization", b"Basic " + base64.b64encode(userpass))
            )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and read its whole answer.

        Args:
            request: the request, as httpx built it (headers included).

        Returns:
            The response, its body already read.

        Raises:
            httpx.TransportError: the matching httpx error (``ConnectError``,
                ``ReadTimeout``, ``RemoteProtocolError``...) for a failure on the wire.
        """
        proxy = self._proxy
        if request.url.scheme != "http" or (proxy is not None and proxy.scheme != "http"):
            with self._lock:
                if self._other is None:
                    self._other = httpx.HTTPTransport(proxy=proxy, trust_env=self._trust_env)
                other = self._other
            return other.handle_request(request)
        timeouts: Mapping[str, float | None] = request.extensions.get("timeout", {})
        body = request.read()
        headers = [(k, v) for k, v in request.headers.raw if k.lower() not in _DROPPED_HEADERS]
        if body or request.method in ("POST", "PUT", "PATCH"):
            headers.append((b"Content-Length", str(len(body)).encode()))
        path = request.url.raw_path.decode("ascii")
        if proxy is None:
            key = (request.url.host, request.url.port or 80)
            target = path
        else:
            key = (proxy.host, proxy.port or 80)
            # A forward proxy reads where to go from the request line: the absolute form
            # (RFC 9112, 3.2.2), without userinfo or fragment.
            target = f"http://{request.url.netloc.decode('ascii')}{path}"
            headers += self._proxy_headers
        connection = self._take(key)
        try:
            answer = _exchange(connection, request, target, headers, body, timeouts)
        except BaseException:
            connection.close()
            raise
        self._give_back(key, connection)
        return answer

    def close(self) -> None:
        """Close every idle connection (and httpx's transport, if it was used)."""
        with self._lock:
            idle = [c for pool in self._idle.values() for c in pool]
            self._idle.clear()
            other = self._other
        for connection in idle:
            connection.close()
        if other is not None:
            other.close()

    def _take(self, key: tuple[str, int]) -> http.client.HTTPConnection:
        """An idle connection to ``key`` that is still open, else a new one (not connected)."""
        while True:
            with self._lock:
                pool = self._idle.get(key)
                connection = pool.pop() if pool else None
            if connection is None:
                host, port = key
                return http.client.HTTPConnection(host, port)
            if not _dropped(connection):
                return connection
            connection.close()

    def _give_back(self, key: tuple[str, int], connection: http.client.HTTPConnection) -> None:
        if connection.sock is None:  # the answer said Connection: close
            return
        with self._lock:
            pool = self._idle.setdefault(key, [])
            if len(pool) < self._max_idle:
                pool.append(connection)
                return
        connection.close()


def _exchange(
    connection: http.client.HTTPConnection,
    request: httpx.Request,
    target: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    timeouts: Mapping[str, float | None],
) -> httpx.Response:
    """One request for ``target`` (its request line's) and its answer on ``connection``;
    errors mapped to httpx's."""
    stage = "connect"
    read_timeout = timeouts.get("read")
    try:
        if connection.sock is None:
            connection.timeout = timeouts.get("connect")
            connection.connect()
        stage = "write"
        _set_timeout(connection, timeouts.get("write"))
        connection.putrequest(
            request.method,
            target,
            skip_host=True,
            skip_accept_encoding=True,
        )
        for name, value in headers:
            connection.putheader(name.decode("latin-1"), value)
        connection.endheaders(body or None)
        stage = "read"
        # Set for every request: the connection keeps it for the next one.
        connection.response_class = (
            http.client.HTTPResponse
            if read_timeout is None
            else functools.partial(  # type: ignore[assignment]
                _DeadlineResponse, deadline=time.monotonic() + read_timeout
            )
        )
        _set_timeout(connection, read_timeout)
        response = connection.getresponse()
        content = response.read()  # a known length: one buffer, filled by the socket
    except _STALE as error:
        if stage == "connect":
            raise httpx.ConnectError("connection reset", request=request) from None
        if stage == "write":
            raise httpx.WriteError(
                f"the server closed the connection while the request was sent: {error}",
                request=request,
            ) from error
        raise ClosedBeforeAnswer(
            f"the server closed the connection before answering: {error}", request=request
        ) from error
    except TimeoutError as error:
        kind = {
            "connect": httpx.ConnectTimeout,
            "write": httpx.WriteTimeout,
            "read": httpx.ReadTimeout,
        }[stage]
        raise kind(str(error) or "timed out", request=request) from error
    except http.client.HTTPException as error:
        raise httpx.RemoteProtocolError(str(error), request=request) from error
    except OSError as error:
        failure: type[httpx.NetworkError] = {
            "connect": httpx.ConnectError,
            "write": httpx.WriteError,
        }.get(stage, httpx.ReadError)
        raise failure(str(error), request=request) from error
    raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.getheaders()]
    extensions: dict[str, Any] = {
        "http_version": b"HTTP/1.1" if response.version == 11 else b"HTTP/1.0",
        "reason_phrase": response.reason.encode("latin-1"),
    }
    return httpx.Response(
        response.status,
        headers=raw_headers,
        stream=httpx.ByteStream(content),
        extensions=extensions,
    )


def _set_timeout(connection: http.client.HTTPConnection, seconds: float | None) -> None:
    if connection.sock is not None:
        connection.sock.settimeout(seconds)


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle kept-alive connection can no longer carry a request: closed by the
    server (readable: its end of stream, or a reset) or by us. An idle HTTP/1.1 connection has
    nothing to read, so anything readable means it is done, as urllib3 judges too."""
    sock = connection.sock
    if sock is None:
        return True
    try:
        if hasattr(select, "poll"):  # no limit on descriptor numbers, unlike select()
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class _DeadlineResponse(http.client.HTTPResponse):
    """An ``HTTPResponse`` that reads its status line, headers and body by ``deadline`` (a
    ``time.monotonic()`` instant), or raises ``TimeoutError``."""

    def __init__(self, sock: socket.socket, *args: Any, deadline: float, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        # The socket's own reader, kept: it holds the socket open for the body after the
        # connection closes it (an answer that says Connection: close hands it over so).
        raw = self.fp.detach()
        self.fp = io.BufferedReader(_DeadlineReader(raw, sock, deadline))


class _DeadlineReader(io.RawIOBase):
    """The socket's bytes, each read waiting at most until ``deadline``: the socket's own
    timeout bounds one read, and a server sending a byte just before each ran out would
    otherwise hold the caller without end. Reads go straight into the caller's buffer, as
    ``socket.makefile`` does, so a large body is still read in one piece."""

    def __init__(self, raw: Any, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._raw = raw
        self._sock = sock
        self._deadline = deadline
        self._per_read = sock.gettimeout()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the whole answer did not arrive within the read timeout")
        wait = left if self._per_read is None else min(left, self._per_read)
        self._sock.settimeout(wait)
        read: int = self._raw.readinto(buffer)
        return read

    def close(self) -> None:
        self._raw.close()
        super().close()

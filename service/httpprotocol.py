"""The HTTP/1.1 protocol ``tensorgrade serve`` runs uvicorn with: httptools, with a bound on
the size of a request's head.

Why httptools: uvicorn's C parser answers about 1.7 times the requests of its pure-Python one
(h11) on this service's busiest route (``bench/``). Why a subclass: uvicorn's h11 protocol
refuses a request line and headers that grow past 16 KiB without ending
(``h11_max_incomplete_event_size``), but its httptools protocol has no bound at all: one
connection sending an endless header line held 276 MB of a worker's memory after 200 MB, and
would have held all of it. ``BoundedHttpToolsProtocol`` counts the bytes of a request's head as
they arrive and, once more than ``MAX_HEAD_BYTES`` have arrived without the head ending,
answers 431 and closes the connection: h11's bound, kept. Where httptools is not installed,
``http_protocol()`` names h11, which bounds the head itself.

Written against uvicorn's ``HttpToolsProtocol`` (its parser callbacks ``on_headers_complete``
and ``on_message_complete``, and ``data_received``); ``tests/test_http_protocol.py`` sends endless
heads to a served worker, so a uvicorn release that changes them fails the suite rather than
opening the hole again.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import orjson

MAX_HEAD_BYTES = 16 * 1024
"""The most bytes of a request line and headers buffered before they end: h11's default, the
bound the service had before it moved to httptools."""

PROTOCOL = f"{__name__}:BoundedHttpToolsProtocol"
"""The protocol as uvicorn's ``http`` setting takes it (a worker imports it by this name)."""


def http_protocol() -> str:
    """uvicorn's ``http`` setting for the service: the bounded httptools protocol, or h11
    where httptools is not installed."""
    return PROTOCOL if importlib.util.find_spec("httptools") is not None else "h11"


def head_too_large(
    limit: int = MAX_HEAD_BYTES, headers: Sequence[tuple[bytes, bytes]] = ()
) -> bytes:
    """The 431 answer, as a problem detail, with the server's ``headers`` (its date and name)
    added; written by the protocol itself, as no app sees the request."""
    # Here, not at the top: the supervisor imports this module and has no use for torch,
    # which service.problems brings.
    from service.problems import TYPE_BASE

    body = orjson.dumps(
        {
            "type": TYPE_BASE + "header-too-large",
            "title": "Request Header Fields Too Large",
            "status": 431,
            "detail": f"the request line and headers are larger than the limit of {limit:,} "
            "bytes; send fewer or shorter headers",
        }
    )
    head = (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        + b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        + b"content-type: application/problem+json\r\n"
        + b"content-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n\r\n"
    )
    return head + body


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools: http_protocol() names h11, and this class is never used
    HttpToolsProtocol = object  # type: ignore[misc,assignment]


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request head larger than ``MAX_HEAD_BYTES``.

    Counts every byte that arrives while no body is being read; the count starts again when a
    head ends. A chunk that ends one request and starts the next is not counted towards the
    next one's head, so the bound may be passed by at most one read (a few hundred KiB), as
    h11's may: it is a bound on memory, not a limit to the byte.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_body = False

    def data_received(self, data: bytes) -> None:
        if not self._in_body:
            self._head_bytes += len(data)
        super().data_received(data)
        if (
            not self._in_body
            and self._head_bytes > MAX_HEAD_BYTES
            and not self.transport.is_closing()
        ):
            self._refuse_head()

    def on_headers_complete(self) -> None:
        self._head_bytes = 0
        self._in_body = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    def _refuse_head(self) -> None:
        self.logger.warning("Request head larger than %d bytes: answered 431", MAX_HEAD_BYTES)
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.write(head_too_large(headers=self.server_state.default_headers))
        # else a pipelined request is still being answered: an answer now would cut into it.
        self.transport.close()

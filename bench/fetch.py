"""A lean HTTP client for the rows that measure the server rather than a client.

The nested-JSON row (request sent to body received) and the 1,000 sequential ``/v1/check``
of the batch row's baseline use it: the less the client costs, the more the row says about the
server, and for the baseline of a speed-up the less it flatters the speed-up. The rows about
the project's own client use ``service.client.Client``. What makes a client fast on a large
body: one kept-alive connection (no handshake per request), and reading a body of known
``Content-Length`` in one call, which ``http.client`` turns into a single buffer filled by the
socket (no list of chunks joined at the end, no per-chunk Python work).
"""

from __future__ import annotations

import http.client


class Fetcher:
    """POSTs bodies to one server over a single kept-alive connection.

    Args:
        host: the server's address.
        port: its port.
        timeout: seconds to wait on the socket.
    """

    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        self._connection = http.client.HTTPConnection(host, port, timeout=timeout)

    def post(self, path: str, body: bytes, content_type: str = "application/json") -> bytes:
        """The body of the answer to ``POST path``.

        Args:
            path: the request path, e.g. ``/v1/models/conv1d/jacobian``.
            body: the request body.
            content_type: its media type.

        Returns:
            The response body.

        Raises:
            OSError: the server answered with a status other than 2xx.
        """
        self._connection.request("POST", path, body, {"content-type": content_type})
        response = self._connection.getresponse()
        data = response.read()
        if not 200 <= response.status < 300:
            raise OSError(f"{path} answered {response.status}: {data[:300]!r}")
        return data

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()

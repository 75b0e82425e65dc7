"""Throughput of one POST endpoint under concurrent keep-alive connections.

``wrk`` (a C load generator; ``apt-get install wrk`` on Debian) is used when it is on the
PATH, because a load generator written in Python needs a core of its own to keep up with the
server; otherwise an asyncio client with the same number of connections stands in. Whichever
is chosen drives the service and the baseline alike.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CONNECTIONS = 16


def generator() -> str:
    """The load generator that ``requests_per_second`` will use."""
    return "wrk" if shutil.which("wrk") else "asyncio"


def requests_per_second(url: str, body: bytes, seconds: float) -> float:
    """Completed requests per second of ``POST url`` with ``body`` over 16 connections.

    Args:
        url: ``http://host:port/path``.
        body: the JSON request body.
        seconds: how long to load the server.

    Returns:
        Successful requests per second.

    Raises:
        RuntimeError: some answers were not 2xx.
    """
    if generator() == "wrk":
        return _wrk(url, body, seconds)
    return asyncio.run(_asyncio_load(url, body, seconds))


def _wrk(url: str, body: bytes, seconds: float) -> float:
    script = (
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [==[{body.decode()}]==]\n"
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "post.lua"
        path.write_text(script)
        duration = f"-d{max(1, round(seconds))}s"
        result = subprocess.run(
            ["wrk", "-t1", f"-c{CONNECTIONS}", duration, "-s", str(path), url],
            capture_output=True,
            text=True,
            check=True,
        )
    if "Non-2xx" in result.stdout:
        raise RuntimeError(f"{url} answered errors under load:\n{result.stdout}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    if match is None:
        raise RuntimeError(f"cannot read wrk's output:\n{result.stdout}{result.stderr}")
    return float(match.group(1))


async def _asyncio_load(url: str, body: bytes, seconds: float) -> float:
    match = re.fullmatch(r"http://([^:/]+):(\d+)(/.*)", url)
    if match is None:
        raise ValueError(f"not an http://host:port/path URL: {url}")
    host, port, path = match.group(1), int(match.group(2)), match.group(3)
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    deadline = time.perf_counter() + seconds
    counts = [0] * CONNECTIONS

    async def connection(slot: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = re.search(rb"(?i)content-length:\s*(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                if not 200 <= status < 300:
                    raise RuntimeError(f"{url} answered {status} under load")
                counts[slot] += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection(i) for i in range(CONNECTIONS)))
    return sum(counts) / (time.perf_counter() - start)

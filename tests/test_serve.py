"""The service started the README's way answers over real HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
def test_tensorgrade_serve_answers_healthz_and_readyz() -> None:
    script = Path(sys.executable).with_name("tensorgrade")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]
    port = free_port()
    process = subprocess.Popen(
        [*command, "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    ready = r.read()
                    break
            except OSError:
                time.sleep(0.2)
        assert ready == b'{"status":"ready"}', "the service did not become ready"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200 and r.read() == b'{"status":"ok"}'
    finally:
        process.terminate()
        process.wait(timeout=20)
        process.stderr.close()

"""The service started the README's way answers over real HTTP; what ``tensorgrade serve``
checks and sets up before its workers start."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from service import cli, preflight
from service.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent
SECRET_ENV = "TENSORGRADE_VARIANT_SECRET"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


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


@pytest.fixture
def serve_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """``tensorgrade serve`` in this process, its settings read again from the environment,
    open mode, and no metrics folder for it to clear."""
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


def no_uvicorn(*args: Any, **kwargs: Any) -> None:
    pytest.fail("uvicorn started")


def test_the_supervisor_of_several_workers_never_imports_torch(tmp_path: Path) -> None:
    """torch is a few hundred megabytes the supervisor has no use for (the start-up check of
    the assignments, which needs it, runs in a child process)."""
    script = (
        "import os, sys, uvicorn\n"
        "uvicorn.run = lambda *a, **k: print('uvicorn', k['workers'])\n"
        "from service.cli import main\n"
        "status = main(['serve', '--workers', '2'])\n"
        "print('status', status)\n"
        "print('torch', sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != SECRET_ENV}
    env[MULTIPROC_ENV] = str(tmp_path / "metrics")
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.stdout.splitlines() == ["uvicorn 2", "status 0", "torch []"], done


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    ("variable", "value", "told"),
    [
        (
            "TENSORGRADE_ASSIGNMENTS_DIR",
            "/nonexistent",
            "/nonexistent: TENSORGRADE_ASSIGNMENTS_DIR is not a folder",
        ),
        ("TENSORGRADE_MAX_REQUEST_ELEMENTS", "10", "the limit per request is 10"),
    ],
)
def test_assignments_that_cannot_load_stop_serve_before_the_workers(
    serve_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    workers: int,
    variable: str,
    value: str,
    told: str,
) -> None:
    """Every worker would fail at start-up: with several, uvicorn started them again forever;
    with one, a raw traceback and exit status 1."""
    serve_env.setenv(variable, value)
    serve_env.setattr(uvicorn, "run", no_uvicorn)
    assert cli.main(["serve", "--workers", str(workers)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tensorgrade: invalid configuration: ") and told in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_failing_start_up_check_stops_serve_too(
    serve_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    serve_env.setattr(sys, "executable", "/bin/false")  # the child fails, as it never should
    serve_env.setattr(uvicorn, "run", no_uvicorn)
    assert cli.main(["serve", "--workers", "2"]) == 1
    assert "the start-up check of the assignments exited with 1" in capsys.readouterr().err
    with pytest.raises(RuntimeError):
        preflight.assignments_problem_in_child()

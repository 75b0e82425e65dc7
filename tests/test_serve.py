"""The service started the README's way answers over real HTTP; what ``tensorgrade serve``
checks and sets up before its workers start."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from bench.soak import workers
from service import cli, preflight
from service.app import create_app
from service.settings import (
    CLIENT_VARIABLES,
    UnknownVariableError,
    check_environment,
    get_settings,
)

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


def test_serve_hands_its_workers_one_variant_secret_when_none_is_set(
    serve_env: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each worker would otherwise make a secret of its own, and a student would get another
    variant from each: a right answer graded wrong about half the time."""
    seen: list[str | None] = []
    serve_env.setattr(uvicorn, "run", lambda *_, **__: seen.append(os.environ.get(SECRET_ENV)))
    for _ in range(2):
        assert cli.main(["serve", "--workers", "2"]) == 0
    first, second = seen
    assert first and second and len(first) >= 32
    assert first != second  # a new one at every start: variants change at restart
    assert SECRET_ENV not in os.environ  # the environment is left as it was
    captured = capfd.readouterr()
    output = captured.out + captured.err + caplog.text
    assert first not in output and second not in output  # never logged
    assert "TENSORGRADE_VARIANT_SECRET is not set" in output
    assert "change at restart and differ between replicas" in output


def test_serve_keeps_a_configured_variant_secret(serve_env: pytest.MonkeyPatch) -> None:
    serve_env.setenv(SECRET_ENV, "v" * 32)
    seen: list[str | None] = []
    serve_env.setattr(uvicorn, "run", lambda *_, **__: seen.append(os.environ.get(SECRET_ENV)))
    assert cli.main(["serve"]) == 0
    assert seen == ["v" * 32] and os.environ[SECRET_ENV] == "v" * 32


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
def test_every_worker_gives_a_student_the_same_variant_in_open_mode(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in (SECRET_ENV, MULTIPROC_ENV)}
    env |= {"TENSORGRADE_LOG_LEVEL": "warning", "TENSORGRADE_CHECK_RATE_LIMIT": ""}
    log = tmp_path / "log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--workers", "2", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, base)
        # Which worker answers a connection is the kernel's choice: the secret each worker
        # was started with says for certain whether they agree.
        found = workers(process.pid)
        secrets = {worker_environment(pid).get(SECRET_ENV.encode()) for pid in found}
        assert len(found) == 2 and len(secrets) == 1 and None not in secrets
        url = f"{base}/v1/assignments/cnn-rnn/problems/1.1c-i?student_id=ada"

        def fetch(_: int) -> Any:
            with urllib.request.urlopen(url, timeout=30) as answer:  # a new connection each
                return json.loads(answer.read())["given"]

        with ThreadPoolExecutor(8) as pool:  # at once: both workers accept connections
            variants = {json.dumps(given, sort_keys=True) for given in pool.map(fetch, range(48))}
        assert len(variants) == 1, "the workers gave one student different variants"
    finally:
        process.terminate()
        process.wait(timeout=60)


def worker_environment(pid: int) -> dict[bytes, bytes]:
    """The environment a process was started with."""
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(pair.split(b"=", 1) for pair in pairs if b"=" in pair)


def wait_ready(process: subprocess.Popen[bytes], base: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the service did not become ready")


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


@pytest.mark.parametrize(
    ("variable", "told"),
    [
        ("TENSORGRADE_INSTRUCTOR_KEY", "(did you mean TENSORGRADE_INSTRUCTOR_KEYS?)"),
        ("tensorgrade_variant_secrets", "(did you mean TENSORGRADE_VARIANT_SECRET?)"),
        ("TENSORGRADE_WORKER", "(did you mean TENSORGRADE_WORKERS?)"),
        ("TENSORGRADE_NOTHING_LIKE_IT", "TENSORGRADE_NOTHING_LIKE_IT is not a setting"),
        ("TENSORGRADE_GPU_SERVICE_HOST", "enableServiceLinks: false"),
    ],
)
def test_a_misspelt_setting_stops_the_service(
    serve_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    told: str,
) -> None:
    """Ignored, ``TENSORGRADE_INSTRUCTOR_KEY`` (singular) would start the service open: every
    caller could read every answer. The value is never quoted (it may be a key)."""
    value = "a-misspelt-key-0123456789"
    serve_env.setenv(variable, value)
    serve_env.setattr(uvicorn, "run", no_uvicorn)
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tensorgrade: invalid configuration: ") and told in err, err
    assert len(err.strip().splitlines()) == 1 and value not in err
    # And the app, as `uvicorn service.app:app` builds it from the environment.
    with pytest.raises(UnknownVariableError, match=variable) as raised:
        create_app()
    assert value not in str(raised.value)


def test_the_client_commands_variables_are_no_mistake(serve_env: pytest.MonkeyPatch) -> None:
    assert {cli.URL_ENV, cli.API_KEY_ENV} == CLIENT_VARIABLES
    for name in CLIENT_VARIABLES:
        serve_env.setenv(name, "http://127.0.0.1:8000")
    serve_env.setenv("TENSORGRADE_WORKERS", "1")
    serve_env.setenv("OTHER_TENSORGRADE_THING", "1")  # another program's
    check_environment()
    create_app()

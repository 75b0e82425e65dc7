"""What an install of the project holds: the built wheel carries the typing marker (so that
mypy checks grading scripts against the client's types) and the built-in assignment."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_holds_py_typed_and_the_built_in_assignment(tmp_path: Path) -> None:
    # Built from a copy: a build in the checkout would leave build/ and *.egg-info there.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("service", "models"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    wheels = tmp_path / "wheels"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*command, "--no-index", "-q", "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = wheels.glob("tensorgrade-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"service/py.typed", "models/py.typed", "service/assignments/cnn-rnn.toml"} <= names


def test_uvicorn_serves_with_its_c_parser_and_loop() -> None:
    # `tensorgrade serve` leaves uvicorn's http and loop at "auto": with httptools and uvloop
    # installed (dependencies of the project) uvicorn picks them, for about 1.5-2x the requests
    # a worker answers; should either go missing, it would quietly serve on h11 and asyncio.
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    config = uvicorn.Config("service.app:app", http="auto", loop="auto")
    config.load()
    assert config.http_protocol_class is HttpToolsProtocol
    factory = config.get_loop_factory()
    assert factory is not None
    loop = factory()
    try:
        expected = "asyncio" if sys.platform == "win32" else "uvloop"
        assert type(loop).__module__.split(".")[0] == expected
    finally:
        loop.close()

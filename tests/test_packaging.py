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

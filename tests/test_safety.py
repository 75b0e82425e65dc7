"""Nothing a client sends is ever run as code, and nothing it sends is ever logged.

The source scan reads the syntax tree, not the text: a docstring or comment that names
``eval`` is fine, a call to it is not.
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.registry import MODELS, get_model
from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("service", "models")

BANNED_CALLS = {"eval", "exec", "compile", "__import__", "sympify", "parse_expr"}
"""Names that run or parse text as code when called by their bare name (``model.eval()`` of a
torch module, or ``torch.compile``, are methods of other things, and fine)."""
BANNED_METHODS = {"sympify", "parse_expr"}
"""Names that parse text as code whatever they are reached through."""
BANNED_ATTRIBUTES = {
    "builtins.eval",
    "builtins.exec",
    "torch.load",
    "torch.jit.load",
    "np.load",
    "numpy.load",
    "yaml.load",
}
BANNED_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve", "cloudpickle"}


def dotted(node: ast.AST) -> str:
    """``torch.jit.load`` for the expression ``torch.jit.load``; empty for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def findings(source: str, filename: str = "<source>") -> list[str]:
    """Every banned call, attribute or import in ``source``, with its line."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Name) and func.id in BANNED_CALLS) or (
                isinstance(func, ast.Attribute) and func.attr in BANNED_METHODS
            ):
                found.append(f"{where} calls {dotted(func) or ast.unparse(func)}")
        if isinstance(node, ast.Attribute) and dotted(node) in BANNED_ATTRIBUTES:
            found.append(f"{where} uses {dotted(node)}")
        if isinstance(node, ast.Import):
            found += [
                f"{where} imports {a.name}"
                for a in node.names
                if a.name.split(".")[0] in BANNED_MODULES
            ]
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.split(".")[0] in BANNED_MODULES:
                found.append(f"{where} imports from {module}")
            found += [
                f"{where} imports {a.name} from {module}"
                for a in node.names
                if a.name in BANNED_CALLS or f"{module}.{a.name}" in BANNED_ATTRIBUTES
            ]
    return found


def test_the_source_never_runs_input_as_code() -> None:
    files = sorted(p for package in SCANNED for p in (ROOT / package).rglob("*.py"))
    assert len(files) > 10
    problems = [f for p in files for f in findings(p.read_text(), str(p.relative_to(ROOT)))]
    assert problems == []


@pytest.mark.parametrize(
    "snippet",
    [
        "eval(text)",
        "exec(text)",
        "builtins.eval(text)",
        "compile(text, 'f', 'exec')",
        "import pickle",
        "from pickle import loads",
        "import marshal as m",
        "torch.load(path)",
        "f = torch.load",
        "torch.jit.load(path)",
        "np.load(path, allow_pickle=True)",
        "sympy.sympify(text)",
        "sp.sympify(text)",
        "builtins.exec(text)",
        "from sympy import sympify",
        "from sympy.parsing.sympy_parser import parse_expr",
        "parse_expr(text)",
    ],
)
def test_the_scan_finds_each_banned_construct(snippet: str) -> None:
    assert findings(snippet)


def test_the_scan_ignores_words_in_docstrings_comments_and_methods() -> None:
    source = '''
"""Never eval(x) or torch.load(f) or pickle what a client sends."""
import re
# exec(x) would be wrong here
PATTERN = re.compile(r"eval\\(")
def parse(text: str, module: torch.nn.Module) -> str:
    """Unlike sympy.sympify(text), this reads a whitelist only."""
    module.eval()
    fast = torch.compile(module)
    return "exec(" + text
'''
    assert findings(source) == []


SECRET = "s3cr3t-k3y-7f2b9e"
STUDENT_SECRET = "st0d3nt-k3y-4c1a8d"
VARIANT_SECRET = "v4r14nt-s3cr3t-9e7f0b"
SECRETS = (SECRET, STUDENT_SECRET, VARIANT_SECRET)
MARKERS = [271828.182845, -314159.265358]
"""Values no log line could hold by chance."""


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog


def marked_requests(client: TestClient) -> list[int]:
    x = [[MARKERS[0]] * 7] * 5
    b64 = base64.b64encode(np.full(35, MARKERS[1], dtype="<f8").tobytes()).decode()
    headers = {"X-API-Key": SECRET, "Authorization": f"Bearer {SECRET}"}
    weight = [[[1.0, 0.0, -1.0]] * 5]
    bodies: list[tuple[str, dict[str, Any]]] = [
        ("forward", {"params": {"weight": weight}, "inputs": {"x": x}}),
        ("forward", {"params": {"weight": weight}, "inputs": {"x": {"shape": [5, 7], "b64": b64}}}),
        ("jacobian", {"params": {"weight": weight}, "inputs": {"x": x}, "of": "y", "wrt": "x"}),
        ("forward", {"params": {"weight": weight}, "inputs": {"x": [[MARKERS[0]], [1.0, 2.0]]}}),
        ("forward", {"params": {"weight": weight}, "inputs": {"x": x}, "device": str(MARKERS)}),
    ]
    return [
        client.post(f"/v1/models/conv1d/{op}", json=body, headers=headers).status_code
        for op, body in bodies
    ]


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
    for marker in MARKERS:
        assert str(marker) not in text and f"{marker:g}" not in text


def test_tensors_and_keys_never_reach_the_logs(
    logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENSORGRADE_INSTRUCTOR_KEYS", SECRET)
    monkeypatch.setenv("TENSORGRADE_STUDENT_KEYS", STUDENT_SECRET)
    monkeypatch.setenv("TENSORGRADE_VARIANT_SECRET", VARIANT_SECRET)
    app = create_app(Settings())
    with TestClient(app, raise_server_exceptions=False) as client:
        assert app.state.ready.wait(timeout=30)
        assert marked_requests(client) == [200, 200, 200, 422, 422]
        assert client.get("/v1/models", headers={"X-API-Key": STUDENT_SECRET}).status_code == 403
        model = get_model("conv1d")

        def failing(*_: Any) -> Any:
            raise RuntimeError("the computation failed")

        monkeypatch.setitem(
            MODELS,
            "conv1d",
            dataclasses.replace(model, forward=failing, closed_form_jacobian=failing),
        )
        assert marked_requests(client)[:3] == [500, 500, 500]
    # The failures were logged (so the capture works), without what the client sent.
    assert "unhandled error on POST /v1/models/conv1d/forward" in logs.text
    assert "the computation failed" in logs.text
    assert_clean(logs.text)

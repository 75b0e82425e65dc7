"""The README stays true to the code: every setting documented, the quick start is what CI runs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from service.problems import Problem
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_setting_has_a_row_in_the_configuration_table() -> None:
    missing = [
        f"TENSORGRADE_{name.upper()}"
        for name in Settings.model_fields
        if f"| `TENSORGRADE_{name.upper()}` |" not in README
    ]
    assert not missing, f"README's configuration table lacks {missing}"


def test_documented_settings_exist() -> None:
    documented = set(re.findall(r"^\| `TENSORGRADE_([A-Z_]+)` \|", README, re.MULTILINE))
    client_side = {"URL", "API_KEY"}  # read by the client commands, not by the server
    unknown = documented - client_side - {n.upper() for n in Settings.model_fields}
    assert not unknown, f"README documents settings that do not exist: {unknown}"


def test_quick_start_is_two_commands_and_ci_runs_the_second() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    quick_start = quick_start.split("### ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)\n```", quick_start, re.DOTALL)
    assert len(commands) == 2 and all("\n" not in c for c in commands), commands
    assert "tensorgrade serve" in commands[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines()


FRAMEWORK_STATUSES = (400, 404, 405)
"""What Starlette and FastAPI raise themselves, as an ``HTTPException``: a body that cannot be
read whole, a path no route has, a method the path does not take. The service answers each
as a problem of its status's own type (``problems.install_problem_handlers``)."""


def literal_types(node: ast.expr | None, assigned: dict[str, list[ast.expr]]) -> set[str]:
    """The problem types an expression given as a ``kind`` may hold: its strings, through
    conditionals and the names it reads (what the same function assigns them).

    Raises:
        AssertionError: a type made at run time (an f-string), which cannot be listed.
    """
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return literal_types(node.body, assigned) | literal_types(node.orelse, assigned)
    if isinstance(node, ast.Name):
        rest = {name: values for name, values in assigned.items() if name != node.id}
        return set().union(*(literal_types(value, rest) for value in assigned.get(node.id, ())))
    assert not isinstance(node, ast.JoinedStr), f"a type made at run time: {ast.unparse(node)}"
    return set()  # another problem's type, passed on (``kind=error.kind``), or none


def assignments_in(function: ast.AST) -> dict[str, list[ast.expr]]:
    """What a function assigns to each name (``kind = "invalid-json"``, and ``message, kind =
    ..., "invalid-json"`` part by part)."""
    assigned: dict[str, list[ast.expr]] = {}
    for node in ast.walk(function):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            pairs = [(target, node.value)]
            if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                pairs = list(zip(target.elts, node.value.elts, strict=True))
            for name, value in pairs:
                if isinstance(name, ast.Name):
                    assigned.setdefault(name.id, []).append(value)
    return assigned


def emitted_types(tree: ast.Module) -> set[str]:
    """Every problem type a module can answer: the ``kind`` of each ``Problem`` it makes (the
    status's own type where it gives none), of each ``body_problem``, and each type it sets
    on a problem made elsewhere (``problem.kind = ...``)."""
    found = set()
    scopes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))]
    for scope in scopes:
        assigned = assignments_in(scope)
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    targets = target.elts if isinstance(target, ast.Tuple) else [target]
                    values = node.value.elts if isinstance(node.value, ast.Tuple) else []
                    for index, part in enumerate(targets):
                        if isinstance(part, ast.Attribute) and part.attr == "kind" and values:
                            found |= literal_types(values[index], assigned)
            if not isinstance(node, ast.Call):
                continue
            called = getattr(node.func, "id", getattr(node.func, "attr", ""))
            kind = next((k.value for k in node.keywords if k.arg == "kind"), None)
            if called == "body_problem":
                found |= literal_types(node.args[1], assigned)
            elif called == "Problem" and kind is not None:
                found |= literal_types(kind, assigned)
            elif called == "Problem" and isinstance(node.args[0], ast.Constant):
                found.add(Problem(node.args[0].value, "").kind)
    return found


def test_every_problem_type_the_code_can_answer_has_a_row_in_the_problem_types_table() -> None:
    code = {Problem(status, "").kind for status in FRAMEWORK_STATUSES}
    for source in sorted((ROOT / "service").rglob("*.py")):
        if source.name != "client.py":  # the client's, not the server's
            code |= emitted_types(ast.parse(source.read_text()))
    assert len(code) > 30, code  # the walk found the problems
    table = README.split("\n### Problem types\n", 1)[1].split("\n### ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z-]+)` \| \d{3} \|", table, re.MULTILINE))
    assert code - documented == set(), "README's table of problem types lacks these"
    assert documented - code == set(), "README's table lists types the service never answers"

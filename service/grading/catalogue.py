"""Loading assignment files at start-up: the built-in folder and a configured one.

A file that is wrong stops start-up with ``AssignmentFileError``, whose message names the
file and the key at fault (``cnn-rnn.toml: problems[2] (1.1c-i).given.x.low: ...``).
"""

from __future__ import annotations

import secrets
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from models.errors import UnknownName
from service.grading.schema import AssignmentSpec, ProblemSpec
from service.grading.variants import Variant, make_variant
from service.settings import Settings

BUILTIN_FOLDER = "assignments"
"""The folder of the built-in assignments inside the ``service`` package (package data)."""

PROBE_STUDENT = "__probe__"
"""The student whose variant ``validate_spec`` checks at load."""

SpecValidator = Callable[[Mapping[str, Any]], None]
"""Checks one resolved ``expected`` spec (raising ``ValueError`` with the reason)."""


class AssignmentFileError(Exception):
    """An assignment file that cannot be served, with the file and the key at fault."""

    def __init__(self, file: str, key: str, message: str) -> None:
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")
        self.file = file
        self.key = key
        self.message = message


def _key(loc: tuple[int | str, ...], data: Any) -> str:
    """A pydantic location as the key a TA finds in the file: ``problems[2] (1.1c-i).given``."""
    parts: list[str] = []
    node = data
    for part in loc:
        child = _child(node, part)
        if isinstance(part, int):
            problem_id = child.get("id") if isinstance(child, dict) else None
            parts.append(f"[{part}] ({problem_id})" if isinstance(problem_id, str) else f"[{part}]")
        else:
            parts.append(f".{part}" if parts else part)
        node = child
    return "".join(parts) or "(top level)"


def _child(node: Any, part: int | str) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def parse_assignment(text: str, file: str) -> AssignmentSpec:
    """Parse and validate one assignment file's text.

    Args:
        text: the TOML text.
        file: how to name the file in errors.

    Returns:
        The validated assignment.

    Raises:
        AssignmentFileError: naming the file and the first key at fault (all of them in the
            message when there are several).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise AssignmentFileError(file, "", f"not valid TOML: {error}") from None
    try:
        return AssignmentSpec.model_validate(data)
    except ValidationError as error:
        found = [
            (_key(e["loc"], data), e["msg"].removeprefix("Value error, ")) for e in error.errors()
        ]
        key, message = found[0]
        more = "".join(f"\n  {k}: {m}" for k, m in found[1:])
        raise AssignmentFileError(file, key, message + more) from None


def _files(folder: Traversable) -> list[Traversable]:
    found = (f for f in folder.iterdir() if f.name.endswith(".toml") and f.is_file())
    return sorted(found, key=lambda f: f.name)


@dataclass(frozen=True)
class Catalogue:
    """Every assignment this server serves, and the secret their variants come from."""

    assignments: dict[str, AssignmentSpec]
    secret: bytes

    def assignment(self, assignment_id: str) -> AssignmentSpec:
        """The assignment, or ``UnknownName`` listing those there are."""
        try:
            return self.assignments[assignment_id]
        except KeyError:
            known = ", ".join(sorted(self.assignments)) or "none"
            raise UnknownName(
                f"there is no assignment {assignment_id!r}; the assignments are {known}",
                "assignment",
            ) from None

    def problem(self, assignment_id: str, problem_id: str) -> ProblemSpec:
        """The problem, or ``UnknownName`` listing the problems of the assignment."""
        assignment = self.assignment(assignment_id)
        problem = assignment.problem(problem_id)
        if problem is None:
            known = ", ".join(p.id for p in assignment.problems)
            raise UnknownName(
                f"assignment {assignment_id!r} has no problem {problem_id!r}; "
                f"its problems are {known}",
                "problem",
            )
        return problem

    def variant(self, assignment_id: str, problem_id: str, student: str) -> Variant:
        """``student``'s variant of a problem (given tensors and the resolved reference)."""
        problem = self.problem(assignment_id, problem_id)
        return make_variant(self.secret, assignment_id, problem, student)


def load_catalogue(
    sources: Iterable[tuple[Traversable, str]],
    secret: bytes,
    validate_spec: SpecValidator | None = None,
) -> Catalogue:
    """Load every ``*.toml`` of the given folders.

    Args:
        sources: ``(folder, label)`` pairs; files are named ``label/<name>`` in errors.
        secret: the variant secret.
        validate_spec: checks each problem's resolved reference (drawn for a probe student);
            its ``ValueError`` stops the load naming the file and ``problems[i].expected``.

    Returns:
        The catalogue.

    Raises:
        AssignmentFileError: a file is wrong, or two files define the same assignment id.
    """
    assignments: dict[str, AssignmentSpec] = {}
    origin: dict[str, str] = {}
    for folder, label in sources:
        for path in _files(folder):
            file = f"{label}/{path.name}"
            assignment = parse_assignment(path.read_text(encoding="utf-8"), file)
            if assignment.id in assignments:
                raise AssignmentFileError(
                    file,
                    "id",
                    f"assignment {assignment.id!r} is also defined in {origin[assignment.id]}",
                )
            if validate_spec is not None:
                _validate_specs(assignment, file, secret, validate_spec)
            assignments[assignment.id] = assignment
            origin[assignment.id] = file
    return Catalogue(assignments, secret)


def _validate_specs(
    assignment: AssignmentSpec, file: str, secret: bytes, validate_spec: SpecValidator
) -> None:
    for index, problem in enumerate(assignment.problems):
        variant = make_variant(secret, assignment.id, problem, PROBE_STUDENT)
        try:
            validate_spec(variant.expected)
        except ValueError as error:
            raise AssignmentFileError(
                file, f"problems[{index}] ({problem.id}).expected", str(error)
            ) from None


def catalogue_from_settings(
    settings: Settings, validate_spec: SpecValidator | None = None
) -> Catalogue:
    """The built-in assignments (unless turned off) and those of ``assignments_dir``."""
    sources: list[tuple[Traversable, str]] = []
    if settings.builtin_assignments:
        sources.append((files("service") / BUILTIN_FOLDER, f"service/{BUILTIN_FOLDER}"))
    if settings.assignments_dir is not None:
        folder = settings.assignments_dir
        if not folder.is_dir():
            raise AssignmentFileError(
                str(folder), "", "TENSORGRADE_ASSIGNMENTS_DIR is not a folder"
            )
        sources.append((Path(folder), str(folder)))
    return load_catalogue(sources, variant_secret(settings), validate_spec)


def variant_secret(settings: Settings) -> bytes:
    """The configured variant secret, or a random one (open mode only: ``Settings`` requires
    a secret when keys are configured)."""
    if settings.variant_secret is not None:
        return settings.variant_secret.get_secret_value().encode()
    return secrets.token_bytes(32)

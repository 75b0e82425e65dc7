"""Loading assignment files at start-up: the built-in folder and a configured one.

A file that is wrong stops start-up with ``AssignmentFileError``, whose message names the
file and the key at fault (``cnn-rnn.toml: problems[2] (1.1c-i).given.x.low: ...``).

A problem's ``distinct_from`` names mistakes that every variant must tell from the right
answer. Random numbers sometimes make a mistake harmless: a term that is nearly zero for one
student's tensors, a matrix that happens to be nearly symmetric. For such a student an answer
with the mistake would be judged correct, so their variant is drawn again (the ``draw``-th
redraw has a seed of its own), up to ``MAX_DRAWS`` draws. Which draw a student gets depends
only on the secret, the file and the student, so it is the same on every replica; each worker
remembers it once worked out (``MAX_REMEMBERED_DRAWS``).

Each assignment has a ``revision`` (``assignment_revision``): what a grade of it depends on
besides the answers, so that a grading script can tell that a result it kept was graded
against another answer key and grade it again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from models.errors import UnknownName
from service.grading.schema import (
    AssignmentSpec,
    ProblemSpec,
    Tolerance,
    given_references,
    variant_groups,
)
from service.grading.variants import Variant, make_variant, variant_seed
from service.settings import Settings

BUILTIN_FOLDER = "assignments"
"""The folder of the built-in assignments inside the ``service`` package (package data)."""

PROBE_STUDENT = "__probe__"
"""The student whose variant ``validate_spec`` checks at load."""

SpecValidator = Callable[[Mapping[str, Any]], None]
"""Checks one resolved ``expected`` spec (raising ``ValueError`` with the reason)."""

MAX_DRAWS = 8
"""The most draws tried for a variant that tells every ``distinct_from`` mistake from the
answer; where none does, the first draw is kept (start-up refuses a file for which the probe
student gets none)."""
MAX_REMEMBERED_DRAWS = 100_000
"""The students' draws a worker remembers (about 100 bytes each, 10 MB in all), forgotten all at
once when full."""

SECRET_FINGERPRINT_MESSAGE = b"tensorgrade/assignment-revision/v1"
"""The constant whose HMAC under the variant secret stands for the secret in a revision."""


class Screen(Protocol):
    """Which mistakes an answer could make on a variant and still be judged correct."""

    codes: frozenset[str]
    """Every mistake code it can screen for."""

    def __call__(
        self, expected: Mapping[str, Any], tolerance: Tolerance, codes: Collection[str]
    ) -> list[str]:
        """Those of ``codes`` that are indistinct from the answer of ``expected``."""

    def applicable(self, expected: Mapping[str, Any], codes: Collection[str]) -> list[str]:
        """Those of ``codes`` an answer to ``expected`` can make at all."""


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
        assignment = AssignmentSpec.model_validate(data)
    except ValidationError as error:
        found = [
            (_key(e["loc"], data), e["msg"].removeprefix("Value error, ")) for e in error.errors()
        ]
        key, message = found[0]
        more = "".join(f"\n  {k}: {m}" for k, m in found[1:])
        raise AssignmentFileError(file, key, message + more) from None
    _check_givens_used(assignment, file)
    return assignment


def _check_givens_used(assignment: AssignmentSpec, file: str) -> None:
    """Every given tensor is referred to by an ``expected`` of its variant, or marked
    ``statement_only``, and only then.

    A tensor the student is given but no reference uses is most often a forgotten reference:
    a bias declared and left out of ``params`` makes every student who adds it wrong, and
    nothing else would show it before the grades do.
    """
    for key, group in variant_groups(assignment.problems).items():
        used: dict[str, str] = {}
        for _, problem in group:
            for where, name in given_references(problem.expected, "expected"):
                used.setdefault(name, f"{where} of {problem.id!r}")
        # Problems of one variant declare their common tensors alike, so each is seen once.
        seen: set[str] = set()
        for index, problem in group:
            for name, spec in problem.given.items():
                if name in seen:
                    continue
                seen.add(name)
                at = f"problems[{index}] ({problem.id}).given.{name}"
                shared = f" of variant {key!r}" if len(group) > 1 else ""
                if spec.statement_only and name in used:
                    raise AssignmentFileError(
                        file,
                        f"{at}.statement_only",
                        f"{used[name]} refers to {name!r}; remove `statement_only`",
                    )
                if not spec.statement_only and name not in used:
                    raise AssignmentFileError(
                        file,
                        at,
                        f"no `expected`{shared} refers to {name!r} "
                        f'(`{{ given = "{name}" }}`): refer to it where the reference uses it, '
                        "or set `statement_only = true` if only the statement does",
                    )


def _files(folder: Traversable) -> list[Traversable]:
    found = (f for f in folder.iterdir() if f.name.endswith(".toml") and f.is_file())
    return sorted(found, key=lambda f: f.name)


@dataclass(frozen=True)
class Catalogue:
    """Every assignment this server serves, and the secret their variants come from."""

    assignments: dict[str, AssignmentSpec]
    secret: bytes
    screen: Screen | None = None
    """Screens variants for ``distinct_from`` (None: every student keeps the first draw)."""
    _draws: dict[int, int] = field(default_factory=dict, compare=False, repr=False)
    _revisions: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

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

    def revision(self, assignment_id: str) -> str:
        """The assignment's ``assignment_revision`` (worked out once per worker)."""
        revision = self._revisions.get(assignment_id)
        if revision is None:
            revision = assignment_revision(self.assignment(assignment_id), self.secret)
            self._revisions[assignment_id] = revision
        return revision

    def problem(self, assignment_id: str, problem_id: str) -> ProblemSpec:
        """The problem, or ``UnknownName`` listing the problems of the assignment."""
        assignment = self.assignment(assignment_id)
        problem = assignment.problem(problem_id)
        if problem is None:
            parts = assignment.parts(problem_id)
            if parts:
                raise UnknownName(
                    f"assignment {assignment_id!r} splits question {problem_id!r} into the "
                    f"problems {', '.join(parts.values())}: ask for each by its id (a grade "
                    f'also takes {{"{problem_id}": {{"{next(iter(parts))}": ...}}}})',
                    "problem",
                )
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
        draw = self.draw(assignment_id, problem, student)
        return make_variant(self.secret, assignment_id, problem, student, draw)

    def draw(self, assignment_id: str, problem: ProblemSpec, student: str) -> int:
        """Which draw of ``problem`` the student gets: the first that tells every
        ``distinct_from`` mistake of its variant group from the answer (0 if none does)."""
        group = screened_group(self.assignments[assignment_id], problem)
        if not group or self.screen is None:
            return 0
        # Remembered by the variant's seed (8 bytes), not by the student id (up to 200 chars).
        remembered = variant_seed(self.secret, assignment_id, problem.variant_key, student)
        draw = self._draws.get(remembered)
        if draw is None:
            found = first_distinct_draw(self.secret, assignment_id, group, student, self.screen)
            draw = 0 if found is None else found
            if len(self._draws) >= MAX_REMEMBERED_DRAWS:
                self._draws.clear()
            self._draws[remembered] = draw
        return draw


def secret_fingerprint(secret: bytes) -> str:
    """HMAC-SHA256 of a constant under the variant secret, in hex: it changes with the secret
    and tells nothing of it (never the secret itself, nor a plain hash of it)."""
    return hmac.new(secret, SECRET_FINGERPRINT_MESSAGE, hashlib.sha256).hexdigest()


_NOT_GRADED: dict[str, Any] = {"problems": {"__all__": {"given": {"__all__": {"statement_only"}}}}}


def assignment_revision(assignment: AssignmentSpec, secret: bytes) -> str:
    """What a grade of ``assignment`` depends on besides the answers, as 32 hex digits.

    The SHA-256 of the parsed assignment written canonically (every problem's reference,
    tolerance, given tensors and points, defaults filled in), of ``secret_fingerprint`` and of
    the numbers drawn for one student (``PROBE_STUDENT``'s first draw of every problem): a new
    secret (other variants), a changed tolerance or reference give another revision, and so
    does a torch whose random numbers differ (another version: every variant changes though
    the file and the secret do not); a file only reformatted (comments, spacing, quotes) gives
    the same. It is the same on every replica that serves the same file with the same secret
    and torch, and after a restart.

    Keys keep the file's order: the given tensors are drawn in that order, so reordering them
    changes every variant.
    """
    spec = json.dumps(
        # A given's `statement_only` changes no grade (start-up refuses it on a tensor in use).
        assignment.model_dump(exclude=_NOT_GRADED),
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,  # a TOML date, should a file hold one
    )
    drawn = json.dumps(
        [
            {
                name: tensor.tolist()
                for name, tensor in make_variant(
                    secret, assignment.id, problem, PROBE_STUDENT
                ).given.items()
            }
            for problem in assignment.problems
        ],
        separators=(",", ":"),
    )
    text = f"{spec}\n{secret_fingerprint(secret)}\n{drawn}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def screened_group(assignment: AssignmentSpec, problem: ProblemSpec) -> list[ProblemSpec]:
    """The problems drawn from ``problem``'s seed that name mistakes in ``distinct_from``:
    they are drawn again together, so that they keep showing the same tensors."""
    return [
        p for p in assignment.problems if p.variant_key == problem.variant_key and p.distinct_from
    ]


def first_distinct_draw(
    secret: bytes, assignment_id: str, group: list[ProblemSpec], student: str, screen: Screen
) -> int | None:
    """The first draw for which no problem of ``group`` has an indistinct mistake, or None."""
    for draw in range(MAX_DRAWS):
        variants = [make_variant(secret, assignment_id, p, student, draw) for p in group]
        if not any(
            screen(v.expected, v.problem.tolerance, v.problem.distinct_from) for v in variants
        ):
            return draw
    return None


def _read_text(path: Traversable | Path, file: str) -> str:
    """A file's text, UTF-8 as TOML requires; a byte-order mark (which Windows editors write)
    is no part of it. Otherwise an ``AssignmentFileError`` that names the file: the decoder's
    own message named none."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise AssignmentFileError(
            file,
            "",
            f"not UTF-8 text (byte 0x{error.object[error.start]:02X} at offset {error.start}): "
            "save it as UTF-8, as TOML requires",
        ) from None


def load_catalogue(
    sources: Iterable[tuple[Traversable, str]],
    secret: bytes,
    validate_spec: SpecValidator | None = None,
    screen: Screen | None = None,
) -> Catalogue:
    """Load every ``*.toml`` of the given folders.

    Args:
        sources: ``(folder, label)`` pairs; files are named ``label/<name>`` in errors.
        secret: the variant secret.
        validate_spec: checks each problem's resolved reference (drawn for a probe student);
            its ``ValueError`` stops the load naming the file and ``problems[i].expected``.
        screen: screens variants for ``distinct_from``; the file's codes must be among its
            ``codes``, and the probe student must find a draw that tells them all apart.

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
            assignment = parse_assignment(_read_text(path, file), file)
            if assignment.id in assignments:
                raise AssignmentFileError(
                    file,
                    "id",
                    f"assignment {assignment.id!r} is also defined in {origin[assignment.id]}",
                )
            _validate_specs(assignment, file, secret, validate_spec)
            if screen is not None:
                _validate_distinct(assignment, file, secret, screen)
            assignments[assignment.id] = assignment
            origin[assignment.id] = file
    return Catalogue(assignments, secret, screen)


def _validate_specs(
    assignment: AssignmentSpec, file: str, secret: bytes, validate_spec: SpecValidator | None
) -> None:
    """Each problem's key, for the probe student: one an answer of its kind can match, and
    (with ``validate_spec``) one the checking engine computes."""
    for index, problem in enumerate(assignment.problems):
        variant = make_variant(secret, assignment.id, problem, PROBE_STUDENT)
        try:
            fault = unanswerable(problem.answer_kind, variant.expected)
            if fault is not None:
                raise ValueError(fault)
            if validate_spec is not None:
                validate_spec(variant.expected)
        except ValueError as error:
            raise AssignmentFileError(
                file, f"problems[{index}] ({problem.id}).expected", str(error)
            ) from None


def unanswerable(kind: str, expected: Mapping[str, Any]) -> str | None:
    """Why no answer of ``kind`` can match a key given as a ``value`` (resolved for a
    student), or None: a shape's sizes are whole numbers of at least 0 (a size drawn without
    ``integer = true`` is 2.856..., which "3" misses and "2.856" is refused as no size), and a
    number's key is one number."""
    if expected.get("op") != "value":
        return None
    value = expected.get("value")
    if kind == "shape":
        sizes = value if isinstance(value, list) else [value]
        if not all(
            isinstance(size, int | float)
            and not isinstance(size, bool)
            and float(size).is_integer()
            and size >= 0
            for size in sizes
        ):
            return (
                f"value: {json.dumps(value)[:60]} is no shape: a shape's key is a list of whole "
                "numbers of at least 0, which a student can answer (draw its sizes with "
                "integer = true)"
            )
    if kind == "number" and isinstance(value, list) and _count(value) != 1:
        return (
            f"value: {json.dumps(value)[:60]} is not one number, which a number's answer is "
            'compared with: give one number, or answer_kind = "tensor"'
        )
    return None


def _count(value: Any) -> int:
    """The numbers in a nested list."""
    return sum(_count(item) for item in value) if isinstance(value, list) else 1


def _validate_distinct(
    assignment: AssignmentSpec, file: str, secret: bytes, screen: Screen
) -> None:
    for index, problem in enumerate(assignment.problems):
        if not problem.distinct_from:
            continue
        where = f"problems[{index}] ({problem.id}).distinct_from"
        unknown = sorted(set(problem.distinct_from) - screen.codes)
        if unknown:
            raise AssignmentFileError(
                file,
                where,
                f"no mistake is called {unknown[0]!r}; the codes are "
                + ", ".join(sorted(screen.codes)),
            )
        if problem.answer_kind != "tensor":
            raise AssignmentFileError(
                file, where, "only a tensor answer is screened for mistakes (answer_kind)"
            )
        # A mistake this key's answer cannot make (a recurrent one on a convolution) would be
        # screened for in vain: the file would promise what no draw checks.
        probe = make_variant(secret, assignment.id, problem, PROBE_STUDENT)
        made = set(screen.applicable(probe.expected, problem.distinct_from))
        never = [code for code in problem.distinct_from if code not in made]
        if never:
            raise AssignmentFileError(
                file,
                where,
                f"{never[0]!r} is no mistake an answer to this problem can make (it gives no "
                "answer of the key's shape for its op and model); remove it",
            )
        group = screened_group(assignment, problem)
        if first_distinct_draw(secret, assignment.id, group, PROBE_STUDENT, screen) is None:
            raise AssignmentFileError(
                file,
                where,
                f"none of {MAX_DRAWS} draws for a probe student tells these mistakes from the "
                "answer: for this problem one of them may give the right answer whatever the "
                "numbers; remove it",
            )


def catalogue_from_settings(
    settings: Settings,
    validate_spec: SpecValidator | None = None,
    screen: Screen | None = None,
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
    return load_catalogue(sources, variant_secret(settings), validate_spec, screen)


def variant_secret(settings: Settings) -> bytes:
    """The configured variant secret, or a random one (open mode only: ``Settings`` requires
    a secret when keys are configured)."""
    if settings.variant_secret is not None:
        return settings.variant_secret.get_secret_value().encode()
    return secrets.token_bytes(32)

"""The format of an assignment file (TOML), validated with pydantic.

An assignment is a list of problems. Each problem says what the student is asked
(``statement``, Markdown), how it is scored (``points``, ``tolerance``), what kind of answer it
takes, which tensors each student is given (drawn per student, see ``variants.py``) and the
reference as the spec ``POST /v1/check`` takes in ``expected``, where ``{given = "x"}`` stands
for the student's own tensor ``x``. The README documents the format with a complete example.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from typing import Any, Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""Assignment, problem and given-tensor ids: no ``/``, so ``assignment/problem/student`` (the
message a variant's seed is derived from) splits one way only."""

AnswerKind = Literal["shape", "tensor", "formula", "number", "choice"]
FeedbackLevel = Literal["verdict", "report", "diagnosis"]
Visibility = Literal["visible", "hidden", "after_due_date", "after_published"]

MAX_GIVEN_ELEMENTS = 4096
MAX_GIVEN_RANK = 6

REQUIRED_BY_OP: dict[str, tuple[str, ...]] = {
    "conv_shape": ("input_size", "kernel_size"),
    "forward": ("model",),
    "backward": ("model", "grad_outputs", "select"),
    "jacobian": ("model", "of", "wrt"),
    "state_jacobians": ("model",),
    "value": ("value",),
    "formula": (),
    "choice": ("correct",),
}
"""The keys each op of ``expected`` needs. ``choice`` is checked by the grader itself (the
option's id must match); every other op is the spec of ``POST /v1/check``."""

_MODEL_KEYS = ("op", "model", "config", "params", "inputs", "device", "dtype", "select", "names")
ALLOWED_BY_OP: dict[str, frozenset[str]] = {
    "conv_shape": frozenset(
        {
            "op",
            "input_size",
            "kernel_size",
            "stride",
            "padding",
            "dilation",
            "in_channels",
            "out_channels",
            "transposed",
            "output_padding",
        }
    ),
    "forward": frozenset(_MODEL_KEYS),
    "backward": frozenset({*_MODEL_KEYS, "grad_outputs"}),
    "jacobian": frozenset({*_MODEL_KEYS, "of", "wrt"}),
    "state_jacobians": frozenset(_MODEL_KEYS),
    "value": frozenset({"op", "value", "label"}),
    "formula": frozenset({"op", "reference", "named", "variables", "constraints", "mistakes"}),
    "choice": frozenset({"op", "correct"}),
}
"""Every key an op of ``expected`` takes: the fields of the endpoint it stands for (e.g. the
body of ``/v1/shapes/conv`` for ``conv_shape``), so a misspelt key is an error, not ignored."""

OPS_BY_KIND: dict[str, frozenset[str]] = {
    "shape": frozenset({"conv_shape", "value"}),
    "tensor": frozenset({"forward", "backward", "jacobian", "state_jacobians", "value"}),
    "formula": frozenset({"formula"}),
    "number": frozenset({"value", "forward"}),
    "choice": frozenset({"choice"}),
}


class FileModel(BaseModel):
    """A table of an assignment file: unknown keys are errors, so a typo never passes silently;
    and values are of their key's type, never converted (strict): ``rtol = true`` was read as
    1.0, which passed every answer, and ``points = "2"`` as 2.0."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Tolerance(FileModel):
    """How close a numeric answer must be, each entry:
    ``|answer - key| <= max(atol, floor * scale) + rtol * |key|``, with ``scale`` the largest
    magnitude of the key (the rule of ``POST /v1/check``)."""

    rtol: float = Field(1e-4, ge=0, le=1, allow_inf_nan=False)
    atol: float = Field(1e-6, ge=0, allow_inf_nan=False)
    floor: float = Field(1e-6, ge=0, le=1, allow_inf_nan=False)


class GivenSpec(FileModel):
    """How one given tensor is drawn for each student, or its fixed value.

    ``distribution = "uniform"`` draws from ``[low, high]`` (integers from ``low`` to ``high``
    inclusive with ``integer = true``); ``"normal"`` from ``mean + std * N(0, 1)``, rounded
    with ``integer = true``. ``decimals`` rounds to that many decimals, so numbers stay
    readable. ``value`` gives the tensor itself, the same for every student.
    """

    description: str = Field("", description="What the tensor is, shown to the student.")
    shape: list[int] | None = Field(None, description="The shape; [] for a number.")
    value: Any = Field(None, description="A fixed value (nested list or number).")
    distribution: Literal["uniform", "normal"] | None = None
    low: float = Field(-1.0, allow_inf_nan=False)
    high: float = Field(1.0, allow_inf_nan=False)
    mean: float = Field(0.0, allow_inf_nan=False)
    std: float = Field(1.0, gt=0, allow_inf_nan=False)
    integer: bool = False
    decimals: int | None = Field(None, ge=0, le=6)
    statement_only: bool = Field(
        False,
        description=(
            "Shown to the student, but no reference uses it (a size the statement asks about, "
            "a distractor). Without it, a given tensor that no `expected` of its variant "
            "refers to stops start-up: it is usually a forgotten reference (a bias declared "
            "but left out of `params`)."
        ),
    )

    @field_validator("shape")
    @classmethod
    def _check_shape(cls, shape: list[int] | None) -> list[int] | None:
        if shape is None:
            return None
        if len(shape) > MAX_GIVEN_RANK or any(size < 1 for size in shape):
            raise ValueError(f"a shape has at most {MAX_GIVEN_RANK} sizes, each at least 1")
        if math.prod(shape) > MAX_GIVEN_ELEMENTS:
            raise ValueError(f"a given tensor has at most {MAX_GIVEN_ELEMENTS} elements")
        return shape

    @model_validator(mode="after")
    def _check_drawing(self) -> Self:
        given = self.model_fields_set
        if (self.value is None) == (self.distribution is None):
            raise ValueError("give exactly one of `value` (fixed) or `distribution` (drawn)")
        if self.value is not None:
            self._check_value(given)
            return self
        if self.shape is None:
            raise ValueError("a drawn tensor needs `shape` ([] for a number)")
        own = {"uniform": {"low", "high"}, "normal": {"mean", "std"}}
        other = "normal" if self.distribution == "uniform" else "uniform"
        stray = sorted(given & own[other])
        if stray:
            raise ValueError(f"{', '.join(stray)} belong to the {other} distribution")
        if self.integer and self.decimals is not None:
            raise ValueError("`integer` and `decimals` exclude each other")
        if self.distribution == "uniform":
            if self.low >= self.high:
                raise ValueError(f"`low` ({self.low}) must be less than `high` ({self.high})")
            if self.integer and not (self.low.is_integer() and self.high.is_integer()):
                raise ValueError("with `integer = true`, `low` and `high` are integers")
        return self

    def _check_value(self, given: set[str]) -> None:
        stray = sorted(given & {"distribution", "low", "high", "mean", "std", "decimals"})
        if stray:
            raise ValueError(f"a fixed `value` takes no {', '.join(stray)}")
        try:
            array = np.asarray(self.value, dtype=np.float64)
        except (ValueError, TypeError):
            raise ValueError("`value` must be a number or a rectangular nested list") from None
        if not np.isfinite(array).all():
            raise ValueError("`value` must be finite")
        if array.size > MAX_GIVEN_ELEMENTS or array.ndim > MAX_GIVEN_RANK:
            raise ValueError(f"a given tensor has at most {MAX_GIVEN_ELEMENTS} elements")
        if self.shape is not None and list(array.shape) != self.shape:
            raise ValueError(f"`value` has shape {list(array.shape)}, not `shape` {self.shape}")
        if self.integer and not np.equal(np.round(array), array).all():
            raise ValueError("`integer = true` but `value` holds a non-integer")


class Choice(FileModel):
    id: str = Field(pattern=ID_PATTERN, description="What the student answers.")
    text: str = Field(min_length=1, description="The option as the student reads it.")


class ProblemSpec(FileModel):
    """One problem of an assignment."""

    id: str = Field(pattern=ID_PATTERN)
    title: str = Field(min_length=1)
    statement: str = Field(min_length=1, description="Markdown.")
    points: float = Field(gt=0, allow_inf_nan=False)
    answer_kind: AnswerKind
    expected: dict[str, Any] = Field(description="The spec `POST /v1/check` takes.")
    given: dict[str, GivenSpec] = Field(default_factory=dict)
    variant: str | None = Field(
        None,
        pattern=ID_PATTERN,
        description=(
            "Problems with the same `variant` draw from one seed, so a student sees the same "
            "tensors in each (they declare their common tensors first, in the same order)."
        ),
    )
    choices: list[Choice] = Field(default_factory=list)
    tolerance: Tolerance = Field(default_factory=Tolerance)
    feedback: FeedbackLevel = "diagnosis"
    visibility: Visibility = "visible"
    distinct_from: list[str] = Field(
        default_factory=list,
        description=(
            "Codes of diagnosed mistakes (`score_path_missing`, `transposed`, ...) that every "
            "variant must tell from the right answer: a student's draw for which an answer "
            "with one of these mistakes would be judged correct is drawn again."
        ),
    )

    @property
    def variant_key(self) -> str:
        """What the seed of a variant is derived from: ``variant``, else the problem's id."""
        return self.variant or self.id

    @field_validator("given")
    @classmethod
    def _check_given_names(cls, given: dict[str, GivenSpec]) -> dict[str, GivenSpec]:
        for name in given:
            if not re.fullmatch(ID_PATTERN, name):  # match's $ lets a final newline pass
                raise ValueError(f"given tensor name {name!r} does not match {ID_PATTERN}")
        return given

    @model_validator(mode="after")
    def _check_expected(self) -> Self:
        op = self.expected.get("op")
        if op not in REQUIRED_BY_OP:
            raise ValueError(f"expected.op must be one of {', '.join(REQUIRED_BY_OP)}, got {op!r}")
        missing = [key for key in REQUIRED_BY_OP[op] if key not in self.expected]
        if missing:
            raise ValueError(f"expected (op {op}) needs {', '.join(missing)}")
        unknown = sorted(set(self.expected) - ALLOWED_BY_OP[op])
        if unknown:
            takes = ", ".join(sorted(ALLOWED_BY_OP[op]))
            raise ValueError(f"expected.{unknown[0]} is not a key of op {op}; it takes {takes}")
        if op == "formula" and ("reference" in self.expected) == ("named" in self.expected):
            raise ValueError("expected (op formula) needs one of `reference` or `named`")
        if op not in OPS_BY_KIND[self.answer_kind]:
            allowed = ", ".join(sorted(OPS_BY_KIND[self.answer_kind]))
            raise ValueError(f"answer_kind {self.answer_kind} takes expected.op {allowed}")
        for where, name in given_references(self.expected, "expected"):
            if name not in self.given:
                declared = ", ".join(self.given) or "none"
                raise ValueError(
                    f"{where} refers to given tensor {name!r}, which is not declared under "
                    f"`given` (declared: {declared})"
                )
        ids = [choice.id for choice in self.choices]
        if (self.answer_kind == "choice") != bool(ids):
            raise ValueError("`choices` are given exactly when answer_kind is choice")
        _check_choice_ids(ids)
        if op == "choice" and self.expected["correct"] not in ids:
            raise ValueError(f"expected.correct must be one of the choices: {', '.join(ids)}")
        return self


def _check_choice_ids(ids: list[str]) -> None:
    """Refuse two options that a student's answer cannot tell apart.

    Answers are matched to option ids ignoring case (``grade.check_choice``: a student who
    types ``b`` for option ``B`` is not wrong), so options ``A`` and ``a`` would be two to the
    student and one to the grader: both answers would be judged as the correct one.
    """
    seen: dict[str, str] = {}
    for choice_id in ids:
        other = seen.get(choice_id.lower())
        if other == choice_id:
            raise ValueError(f"two choices have the id {choice_id!r}")
        if other is not None:
            raise ValueError(
                f"choices {other!r} and {choice_id!r} differ only by case: answers are matched "
                "to option ids ignoring case, so give each option an id of its own "
                "(e.g. A and B)"
            )
        seen[choice_id.lower()] = choice_id


class Defaults(FileModel):
    """What a problem takes when it does not say."""

    tolerance: Tolerance = Field(default_factory=Tolerance)
    feedback: FeedbackLevel = "diagnosis"
    visibility: Visibility = "visible"


class GradescopeOptions(FileModel):
    """The top-level visibility of a Gradescope ``results.json``."""

    visibility: Visibility = "visible"
    stdout_visibility: Visibility = "hidden"


INHERITED = ("tolerance", "feedback", "visibility")


class AssignmentSpec(FileModel):
    """One assignment file. Every problem carries its tolerance, feedback and visibility,
    taken from ``defaults`` where it gives none."""

    id: str = Field(pattern=ID_PATTERN)
    title: str = Field(min_length=1)
    description: str = Field("", description="Markdown, shown with the list of problems.")
    defaults: Defaults = Field(default_factory=Defaults)
    gradescope: GradescopeOptions = Field(default_factory=GradescopeOptions)
    problems: list[ProblemSpec] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _inherit_defaults(cls, data: Any) -> Any:
        # Before validation, so a problem validates its inherited values as its own.
        if not isinstance(data, dict) or not isinstance(data.get("problems"), list):
            return data
        defaults = data.get("defaults")
        inherited = (
            {k: defaults[k] for k in INHERITED if k in defaults}
            if isinstance(defaults, dict)
            else {}
        )
        problems = [{**inherited, **p} if isinstance(p, dict) else p for p in data["problems"]]
        return {**data, "problems": problems}

    @field_validator("problems")
    @classmethod
    def _check_problems(cls, problems: list[ProblemSpec]) -> list[ProblemSpec]:
        first: dict[str, int] = {}
        for index, problem in enumerate(problems):
            if problem.id in first:
                raise ValueError(
                    f"problems[{index}] has the id {problem.id!r} of problems[{first[problem.id]}]"
                )
            first[problem.id] = index
        for key, group in variant_groups(problems).items():
            _check_shared_variant(key, [problem for _, problem in group])
        return problems

    @property
    def total_points(self) -> float:
        return sum(problem.points for problem in self.problems)

    def problem(self, problem_id: str) -> ProblemSpec | None:
        return next((p for p in self.problems if p.id == problem_id), None)

    def parts(self, question: str) -> dict[str, str]:
        """The problems a question is split into, by suffix: ``1.2.1d`` of ``cnn-rnn`` is
        ``{"jacobian": "1.2.1d-jacobian", "vanishing": "1.2.1d-vanishing"}``; empty where
        the question is a problem itself or no problem's id starts with it and a ``-``."""
        if self.problem(question) is not None:
            return {}
        prefix = f"{question}-"
        return {p.id.removeprefix(prefix): p.id for p in self.problems if p.id.startswith(prefix)}


def variant_groups(problems: Sequence[ProblemSpec]) -> dict[str, list[tuple[int, ProblemSpec]]]:
    """The problems by the seed they draw from (``variant_key``), each with its index."""
    groups: dict[str, list[tuple[int, ProblemSpec]]] = {}
    for index, problem in enumerate(problems):
        groups.setdefault(problem.variant_key, []).append((index, problem))
    return groups


def _check_shared_variant(key: str, group: list[ProblemSpec]) -> None:
    """Problems drawing from one seed get the same tensors only where they declare the same
    specs in the same order: the shorter list of given tensors must begin the longer one."""
    longest = max(group, key=lambda p: len(p.given))
    reference = list(longest.given.items())
    for problem in group:
        for (name, spec), (other_name, other) in zip(
            problem.given.items(), reference, strict=False
        ):
            if name != other_name or spec.model_dump() != other.model_dump():
                raise ValueError(
                    f"problems {problem.id!r} and {longest.id!r} share variant {key!r} but differ "
                    f"at given tensor {name!r}: declare the common tensors first, in the same "
                    "order, with the same specs"
                )


def given_references(spec: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every ``{given = "name"}`` in a spec, with where it sits (``expected.params.weight``)."""
    if isinstance(spec, dict):
        if set(spec) == {"given"}:
            if not isinstance(spec["given"], str):
                raise ValueError(f"{where}: `given` names a given tensor, as a string")
            yield where, spec["given"]
            return
        for key, value in spec.items():
            yield from given_references(value, f"{where}.{key}")
    elif isinstance(spec, list):
        for index, value in enumerate(spec):
            yield from given_references(value, f"{where}[{index}]")

"""The checking engine as the grader's ``check`` (``grade.CheckFn``), and the validation of the
references of assignment files against that same engine.

The engine (``check.py``) judges one answer against one ``expected`` spec, exactly as
``POST /v1/check`` does. For a grader the two ways a check can fail are not alike:

- the answer is at fault (ragged, not a shape, a formula that does not parse, over the
  element budget): that is the student's, so it becomes ``MalformedAnswer`` and the problem
  scores 0 with the reason, without failing the rest of the submission;
- the key cannot be computed: the assignment file (or the service) is at fault, never the
  student, so the grade fails with a 500 problem that says so and is logged, instead of
  blaming the answer or quietly scoring it 0.

``spec_validator`` runs the engine's own validation and key computation on each problem at
start-up, so a reference that names a wrong model, output or gradient stops the service with
the file and the key at fault.

Both compute keys under ``key_settings``: the limits on what a reference may compute are at
least their defaults. Those limits protect the service from what clients send; an
assignment's references are the instructors' own, checked at start-up, and an operator who
lowers a request limit must not make the shipped homework ungradable. The student's answer is
still decoded under the configured request budgets.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import ValidationError

from models.errors import ModelError
from service.gate import ComputeGate
from service.grading import compare
from service.grading.catalogue import SpecValidator
from service.grading.check import CheckFailed, check_one, compute_key
from service.grading.diagnosis import applicable, indistinct, mistake_codes
from service.grading.grade import MalformedAnswer
from service.grading.keys import TensorKey
from service.grading.schema import Tolerance
from service.grading.schemas import CheckRequest
from service.metrics import unrecorded
from service.problems import Problem, json_path
from service.settings import Settings

logger = logging.getLogger("tensorgrade")

CHOICE_OP = "choice"
"""The one op of an assignment file that the grader judges itself (not an engine op)."""

KEY_LIMITS = ("max_jacobian_elements", "max_sequence_length", "max_hidden_size", "max_k")
"""The settings that bound what a reference computes (never what an answer may hold)."""


def key_settings(settings: Settings, limits: Collection[str] = KEY_LIMITS) -> Settings:
    """``settings`` with each of ``limits`` at least its default (see the module notes)."""
    raised = {
        name: max(getattr(settings, name), Settings.model_fields[name].default) for name in limits
    }
    return settings.model_copy(update=raised)


def key_failure(detail: str) -> Problem:
    """The 500 of a key that cannot be computed: the assignment's fault, said plainly."""
    return Problem(
        500,
        f"the reference answer of this problem cannot be computed for this variant ({detail}); "
        "the assignment file is at fault, not the answer: tell the course staff",
        kind="assignment-error",
        title="The assignment cannot be graded",
    )


def _describe(error: ValidationError, body: Mapping[str, Any]) -> str:
    """A pydantic error of ``body`` as ``where: what`` (the first one, and how many more there
    are), ``where`` a path into ``body`` itself (``expected.dtype``, not pydantic's
    ``expected.forward.dtype``, which names a member of the union it tried)."""
    errors = error.errors()
    first = errors[0]
    where = ".".join(
        str(part) for part in json_path(first["loc"], body, first["type"] == "missing")
    )
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def _request(expected: Mapping[str, Any], answer: Any, tolerance: Tolerance) -> CheckRequest:
    """The body of ``POST /v1/check`` for one answer. The answer is free-form (the engine
    judges it), so a validation error here is the spec's or the tolerance's."""
    body = {
        "expected": dict(expected),
        "answer": answer,
        "tolerance": {"rtol": tolerance.rtol, "atol": tolerance.atol, "floor": tolerance.floor},
    }
    try:
        return CheckRequest.model_validate(body)
    except ValidationError as error:
        raise key_failure(_describe(error, body)) from None


class EngineCheck:
    """``grade.CheckFn`` backed by the checking engine of ``POST /v1/check``."""

    def __init__(self, settings: Settings, gate: ComputeGate | None = None) -> None:
        self.settings = key_settings(settings)
        self.gate = gate

    def __call__(
        self, expected: Mapping[str, Any], answer: Any, tolerance: Tolerance
    ) -> Mapping[str, Any]:
        """Judge one answer; see the module docstring for which faults raise what.

        Returns:
            The engine's answer: ``correct``, ``score``, ``report``, ``diagnosis``.

        Raises:
            MalformedAnswer: the answer cannot be judged, with the reason.
            Problem: a 500 when the key cannot be computed; the engine's own 5xx otherwise.
        """
        request = _request(expected, answer, tolerance)
        try:
            return check_one(request, self.settings, self.gate)
        except CheckFailed as failure:
            problem = failure.problem
            if failure.in_expected:
                logger.error("an assignment's key cannot be computed: %s", problem.detail)
                raise key_failure(problem.detail) from None
            if 400 <= problem.status < 500:
                raise MalformedAnswer(problem.detail) from None
            raise problem from None


def spec_validator(settings: Settings) -> SpecValidator:
    """A ``validate_spec`` for ``catalogue_from_settings``: each resolved ``expected`` must be
    a spec ``POST /v1/check`` accepts and its key must compute (on the CPU, unless the spec
    names a device).

    Args:
        settings: the budgets the keys are computed under.

    Returns:
        A function raising ``ValueError`` with the reason (the field of ``expected`` first).
    """
    settings = key_settings(settings)
    gate = ComputeGate.from_settings(settings)

    def validate(expected: Mapping[str, Any]) -> None:
        if expected.get("op") == CHOICE_OP:
            return
        body = {"expected": dict(expected), "answer": None}
        try:
            request = CheckRequest.model_validate(body)
        except ValidationError as error:
            # Under the file's own key, which ends in `.expected` already.
            raise ValueError(_describe(error, body).removeprefix("expected.")) from None
        if getattr(request.expected, "device", None) == "auto":
            # Checked on the CPU: a key that computes there computes on a GPU too, and on a
            # GPU host the check would otherwise create a CUDA context in every worker at
            # start-up (about 700 MB of host memory each, measured on an H200 machine), before
            # any request asks for the GPU.
            on_cpu = request.expected.model_copy(update={"device": "cpu"})
            request = request.model_copy(update={"expected": on_cpu})
        try:
            with unrecorded():  # no traffic: not counted in the compute metrics
                compute_key(request, settings, gate)
        except ModelError as error:
            where = f"{error.where}: " if error.where else ""
            raise ValueError(f"{where}{error.message}") from None
        except Problem as error:
            detail = error.detail
            if error.kind == "over-compute-deadline":
                # Told to the operator at start-up, not to a client: the setting is theirs.
                # The advice to a client ("Send smaller tensors") gives way to the operator's.
                head = detail.split(". Send smaller tensors")[0].removesuffix(".")
                detail = (
                    f"{head}; an assignment's key must compute within "
                    f"TENSORGRADE_COMPUTE_DEADLINE_SECONDS ({settings.compute_deadline_seconds:g} "
                    "s); raise it, or give the problem smaller tensors"
                )
            raise ValueError(detail) from None

    return validate


SCREEN_LIMITS = (
    *KEY_LIMITS,
    "max_tensor_elements",
    "max_request_elements",
    "compute_deadline_seconds",
    "cpu_flops_per_second",
)
"""The settings a screened key is computed under at least at their defaults, so that which draw
a student gets does not depend on a replica's configuration."""


SCREEN_WAIT_SECONDS = 3600.0
"""How long a screen waits for its own gate: in effect forever (it only queues behind other
screens, each a few milliseconds)."""


class VariantScreen:
    """``catalogue.Screen`` backed by the checking engine: computes a variant's key as a check
    of it would and makes each named mistake on it.

    Which draw a student gets must be the same on every replica, at every load: so the key is
    always computed on the CPU, under the default limits (or larger ones), and through a gate
    of its own that never refuses (never the service's, whose 503 under load would look like
    a key that cannot be computed). These keys are the instructors' own, checked at start-up.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = key_settings(settings, SCREEN_LIMITS)
        self.gate = ComputeGate(capacity=2, queue_size=2**31, timeout=SCREEN_WAIT_SECONDS)
        self.codes = mistake_codes()

    def __call__(
        self, expected: Mapping[str, Any], tolerance: Tolerance, codes: Collection[str]
    ) -> list[str]:
        """Those of ``codes`` an answer could make and still be judged correct; none where the
        key cannot be computed (the check of an answer then says why)."""
        key = self._key(expected)
        if key is None:
            return []
        judged = compare.Tolerance(tolerance.rtol, tolerance.atol, tolerance.floor)
        return indistinct(key, judged, codes)

    def applicable(self, expected: Mapping[str, Any], codes: Collection[str]) -> list[str]:
        """Those of ``codes`` an answer to ``expected`` can make at all (``diagnosis.
        applicable``); all of them where the key cannot be computed here (the key's own check
        says why)."""
        key = self._key(expected)
        return list(codes) if key is None else applicable(key, codes)

    def _key(self, expected: Mapping[str, Any]) -> TensorKey | None:
        """The key of ``expected`` on the CPU, or None where it is no tensor or cannot be
        computed."""
        try:
            request = CheckRequest.model_validate({"expected": dict(expected), "answer": None})
            if getattr(request.expected, "device", None) is not None:  # "cuda" too
                on_cpu = request.expected.model_copy(update={"device": "cpu"})
                request = request.model_copy(update={"expected": on_cpu})
            with unrecorded():  # no request asked for it: not counted in the compute metrics
                key = compute_key(request, self.settings, self.gate)
        except (ValidationError, ModelError, Problem):
            return None
        return key if isinstance(key, TensorKey) else None

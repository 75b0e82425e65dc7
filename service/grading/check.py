"""The checking engine: one path for ``/v1/check`` and ``/v1/check/batch``.

Checks are grouped by their ``expected`` (its canonical JSON, keys sorted), and each key is
computed once per group. Within a group, tensor answers that share a shape and a tolerance
are stacked and judged together (``compare.judge``), and the wrong ones are diagnosed
together (``diagnosis.diagnose``); formula answers that parse to the same tree are evaluated
once.
A class of 1,000 answers to one question is therefore one reference computation and a few
tensor operations, plus the decoding of each answer.

A single check raises its error (a 4xx problem); in a batch, a check that cannot be judged
gets an ``error`` in its place and the others are judged.

A model's key and its diagnoses are computed as the model endpoints compute: under the compute
deadline (a key estimated too slow is a 422 like any key that cannot be computed) and in one of
the device's slots (``service.gate``). A batch's model keys and formulas share one compute
deadline: each key is computed only if its estimate fits in what the keys and formulas before
it left of the deadline, and once their time reaches it the remaining ones are refused in
their places (``over-compute-deadline``), so that many distinct keys, each within the deadline,
cannot hold a worker for many times it. The diagnoses of a request share another: past it,
the remaining wrong answers are judged but not diagnosed. A device that stays busy is a 503
for the whole request, single or batch: it says nothing about the checks, and the client
retries them all. The answers to one formula share that deadline too: each is evaluated at
up to 400 points, and past the deadline the rest of them are refused in their places. A batch
whose client has disconnected stops before its next key, formula or formula answer
(``ClientDisconnected``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import torch
from pydantic import TypeAdapter, ValidationError

from models.errors import ModelError
from service.client import batch_summary as counted
from service.compute import new_budget
from service.devices import resolve_device
from service.gate import ComputeGate
from service.grading import (
    conv_mistakes,  # noqa: F401  (registers the conv mistakes)
    rnn_mistakes,  # noqa: F401  (registers the recurrent mistakes)
)
from service.grading.compare import (
    Tolerance,
    as_scalar_if_one,
    judge,
    key_scale,
    shape_mismatch,
)
from service.grading.diagnosis import MAX_DIAGNOSED_ELEMENTS, Diagnosis, Work, diagnose
from service.grading.errors import InvalidAnswer
from service.grading.formula_mistakes import with_mistakes
from service.grading.formulas import FormulaKey, formula_key
from service.grading.keys import TensorKey, model_key, value_key
from service.grading.schemas import (
    CheckRequest,
    ConvShapeExpected,
    FormulaExpected,
    ValueExpected,
)
from service.grading.shapes import ShapeKey, judge_shape, parse_shape_answer, shape_key
from service.problems import Problem, body_problem, from_model_error, validation_problem
from service.settings import Settings
from service.tensors import Budget, decode

Key = TensorKey | ShapeKey | FormulaKey
Result = dict[str, Any]


class ClientDisconnected(Exception):
    """The client of a batch went away: nobody will read the remaining results."""


class CheckFailed(Exception):
    """A check that could not be judged: its problem, located in the request.

    Attributes:
        problem: the problem detail, its fields located in the request.
        in_expected: whether the key could not be computed (the fault is in ``expected``);
            otherwise the answer could not be judged.
    """

    def __init__(self, problem: Problem, *, in_expected: bool = False) -> None:
        super().__init__(problem.detail)
        self.problem = problem
        self.in_expected = in_expected


def relocate(error: Problem | ModelError, prefix: str) -> Problem:
    """The error as a problem whose field paths start at ``prefix`` (``expected``,
    ``checks.3.expected``, or nothing), so the client sees where in its request the fault is."""
    if isinstance(error, ModelError):
        where = ".".join(part for part in (prefix, error.where) if part)
        # A copy: the same error may answer every check of a group, each at its own place.
        located = copy.copy(error)
        located.where = where
        problem = from_model_error(located)
        if where:
            problem.detail = f"{where}: {error.message}"
        if error.where == "answer":
            problem.kind, problem.title = "invalid-answer", "The answer cannot be judged"
    elif prefix:
        path = ".".join(str(p) for p in error.errors[0]["loc"][1:]) if error.errors else ""
        detail = (
            f"{prefix}.{error.detail}"
            if path and error.detail.startswith(path)
            else f"{prefix}: {error.detail}"
        )
        problem = Problem(
            error.status,
            detail,
            kind=error.kind,
            title=error.title,
            errors=[{**e, "loc": ["body", *prefix.split("."), *e["loc"][1:]]} for e in error.errors]
            if error.errors is not None
            else None,
            headers=error.headers,
        )
    else:
        problem = error
    if problem.errors is not None:
        problem.errors = [
            {**e, "loc": [int(p) if isinstance(p, str) and p.isdigit() else p for p in e["loc"]]}
            for e in problem.errors
        ]
    return problem


def canonical(check: CheckRequest, index: int) -> bytes:
    """The identity of a check's key: its ``expected`` as JSON with sorted keys.

    orjson writes at most 254 levels of nesting, and the body's parser allows 1024. An
    ``expected`` nested deeper is refused by the key's own validation (a tensor's rank over
    the limit, a config value that is not a number), so it gets a group of its own
    (``index``, the check's place) and that validation says what is wrong with it.
    """
    try:
        return orjson.dumps(check.expected.model_dump(), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return f"\0unshared {index}".encode()


def compute_key(
    check: CheckRequest, settings: Settings, gate: ComputeGate, spent: float = 0.0
) -> Key:
    """The key of a check's ``expected``; raises ``ModelError`` or ``Problem``.

    A model's key is computed under ``gate`` and the compute deadline, as the model endpoints
    compute, less the ``spent`` seconds the request's keys before it took; the other keys
    (shapes, formulas, given values) take no device time.
    """
    expected = check.expected
    if isinstance(expected, ConvShapeExpected):
        return shape_key(expected)
    if isinstance(expected, FormulaExpected):
        key = formula_key(
            expected.reference, expected.named, expected.variables, expected.constraints
        )
        mistakes = expected.mistakes
        declared = mistakes if isinstance(mistakes, str) else mistakes.model_dump()
        return with_mistakes(key, declared, expected.named)
    if isinstance(expected, ValueExpected):
        return value_key(expected, settings)
    return model_key(expected, settings, gate, spent)


def _device_refused(check: CheckRequest) -> tuple[Problem, str] | None:
    """Why the device a check names at its top or in its ``expected`` is refused, and which
    of the two fields (``""``: the top); None when it names none, or one there is."""
    for field, device in (
        ("", check.device),
        ("expected", getattr(check.expected, "device", None)),
    ):
        if device is None:
            continue
        try:
            resolve_device(device)
        except Problem as refused:
            return refused, field
    return None


def computes(check: CheckRequest) -> bool:
    """Whether a check's key takes compute time (a model's key, a formula's evaluation) and so
    counts against a batch's compute deadline; shapes and given values take next to none."""
    return not isinstance(check.expected, ConvShapeExpected | ValueExpected)


def tolerance_of(check: CheckRequest) -> Tolerance:
    given = check.tolerance
    return Tolerance(given.rtol, given.atol, given.floor)


def _result(
    correct: bool, score: float, report: dict[str, Any], diagnosis: list[Diagnosis], echo: Any
) -> Result:
    return {
        "correct": correct,
        "score": score,
        "report": report,
        "diagnosis": [{"code": d.code, "message": d.message} for d in diagnosis],
        "tolerance": echo,
    }


@dataclass
class Slot:
    """One check of a group: where its result goes and where its fields are in the request."""

    index: int
    check: CheckRequest
    prefix: str


class Engine:
    """Judges a list of checks in order, computing each distinct key once."""

    def __init__(
        self,
        settings: Settings,
        gate: ComputeGate,
        *,
        batch: bool,
        disconnected: Callable[[], bool] | None = None,
    ) -> None:
        """``disconnected``: asked before each key, formula or formula answer that takes
        compute time (at most every ``POLL_SECONDS``), whether the client is gone; then
        ``run`` raises ``ClientDisconnected`` and computes nothing more."""
        self.settings = settings
        self.gate = gate
        self.batch = batch
        self.disconnected = disconnected
        self.polled = 0.0
        self.budget: Budget = new_budget(settings)
        self.results: list[Result | None] = []
        self.keys = 0
        self.key_elements = 0
        self.compute_seconds = 0.0
        """Seconds the model keys and the formulas of the request have taken so far."""
        self.diagnosis_seconds = 0.0

    def _prefix(self, index: int) -> str:
        return f"checks.{index}." if self.batch else ""

    def _fail(self, slot: Slot, error: Problem | ModelError, field: str) -> None:
        problem = relocate(error, f"{slot.prefix}{field}".rstrip("."))
        if not self.batch:
            raise CheckFailed(problem, in_expected=field == "expected")
        self.results[slot.index] = {"error": problem.body()}

    def run(self, checks: Sequence[CheckRequest | Problem]) -> list[Result]:
        """A result per check, in order (an ``{"error": ...}`` for a batch's invalid ones, the
        ``Problem``s among ``checks`` included)."""
        self.results = [None] * len(checks)
        groups: dict[bytes, list[Slot]] = {}
        for index, check in enumerate(checks):
            if isinstance(check, Problem):
                self.results[index] = {"error": check.body()}
                continue
            slot = Slot(index, check, self._prefix(index))
            # Every check, whatever its op: `"device": "cuda"` on a server without a GPU is
            # refused where it was given, as the model endpoints refuse it, though a shape,
            # a value or a formula would compute no tensor.
            refused = _device_refused(check)
            if refused is not None:
                self._fail(slot, *refused)
                continue
            groups.setdefault(canonical(check, index), []).append(slot)
        for slots in groups.values():
            self._run_group(slots)
        assert all(result is not None for result in self.results)
        return [result for result in self.results if result is not None]

    def _run_group(self, slots: list[Slot]) -> None:
        check = slots[0].check
        if not computes(check):
            self._judge_group(slots)
            return
        self._stop_if_disconnected()
        # Each distinct key has the whole deadline to itself at the model endpoints; a batch
        # may hold thousands: 8 AttentionRNN(inf) backward keys, each within the deadline,
        # took 80 s. Formulas are evaluated in Python at up to 400 points, a key and each
        # answer: 200 distinct long formulas over wide ranges took 39 s. So they share the
        # deadline: a model key is computed only if its estimate fits in what is left, and
        # once the time taken reaches the deadline the rest are refused in their places.
        # The answers of one formula key are evaluated one by one, and count as well: 5,000
        # answers to one long reference took 243 s when only the groups were held to it.
        problem = self._over_deadline()
        if problem is not None:
            for slot in slots:
                self._fail(slot, problem, "expected")
            return
        self._judge_group(slots, timed=True)

    def _over_deadline(self) -> Problem | None:
        """The ``over-compute-deadline`` problem of the checks left once the keys and formulas
        of the request have taken the whole compute deadline; None while some is left."""
        deadline = self.settings.compute_deadline_seconds
        if self.compute_seconds < deadline:
            return None
        return body_problem(
            f"the keys and formulas of this batch before this check took "
            f"{self.compute_seconds:,.1f} s, the whole compute deadline ({deadline:g} s); "
            "send the remaining checks in another batch",
            "over-compute-deadline",
            "Over the compute deadline",
            "compute_deadline",
        )

    POLL_SECONDS = 1.0
    """Longest the engine computes between two questions whether the client is still there.
    Not shorter: each question is a trip to the event loop, and lets the server read once
    more from the connection (up to 256 KiB of whatever the client sends after its batch,
    pipelined requests included, which h11 then holds): ten a second let one connection
    pipelining behind a long batch grow the worker by 14 MB in 4 s."""

    def _stop_if_disconnected(self) -> None:
        if self.disconnected is None:
            return
        now = time.perf_counter()
        if now - self.polled < self.POLL_SECONDS:
            return
        self.polled = now
        if self.disconnected():
            raise ClientDisconnected

    def _judge_group(self, slots: list[Slot], *, timed: bool = False) -> None:
        """Compute the group's key and judge its checks; ``timed``: the key's time counts
        against the request's compute deadline (a model's key, a formula), and so does each
        formula answer's (see ``_judge_each``)."""
        started = time.perf_counter()
        try:
            key = compute_key(slots[0].check, self.settings, self.gate, self.compute_seconds)
            self._charge(key)
        except (Problem, ModelError) as error:
            if isinstance(error, Problem) and error.status == 503:
                raise  # the device is busy: nothing wrong with the checks, retry them all
            for slot in slots:
                self._fail(slot, error, "expected")
            return
        finally:
            if timed:
                self.compute_seconds += time.perf_counter() - started
        self.keys += 1
        if isinstance(key, TensorKey):
            self._judge_tensors(key, slots)
        elif isinstance(key, ShapeKey):
            self._judge_each(slots, lambda slot: self._judge_shape(key, slot))
        else:
            self._judge_each(slots, lambda slot: self._judge_formula(key, slot), timed=timed)

    def _charge(self, key: Key) -> None:
        """Bound the keys of one batch together, as one Jacobian is bounded: many distinct
        large keys in one request would otherwise multiply the work without limit."""
        if not isinstance(key, TensorKey):
            return
        self.key_elements += key.tensor.numel()
        limit = self.settings.max_jacobian_elements
        if self.key_elements > limit:
            raise Problem(
                413,
                f"the keys of this batch hold more than {limit:,} elements in all "
                "(TENSORGRADE_MAX_JACOBIAN_ELEMENTS); split the batch",
                kind="budget-exceeded",
                title="Over the element budget",
            )

    def _slot(self, key: TensorKey) -> AbstractContextManager[None]:
        """A device slot for recomputing a model's key; none for a key given as a value."""
        if key.source is None:
            return nullcontext()
        return self.gate.slot(key.source.prepared.device)

    def _judge_each(
        self, slots: list[Slot], judge_one: Callable[[Slot], Result], *, timed: bool = False
    ) -> None:
        """Judge a group's checks one by one. ``timed`` (a formula's answers, each evaluated at
        up to 400 points): each answer's time counts against the compute deadline, and after
        the first, each is judged only while some of the deadline is left and the client is
        still there; once the deadline is taken the rest are refused in their places, as the
        groups after them are."""
        for position, slot in enumerate(slots):
            if timed and position > 0:
                self._stop_if_disconnected()
                problem = self._over_deadline()
                if problem is not None:
                    for rest in slots[position:]:
                        self._fail(rest, problem, "expected")
                    return
            started = time.perf_counter()
            try:
                self.results[slot.index] = judge_one(slot)
            except (Problem, ModelError) as error:
                self._fail(slot, error, "")
            finally:
                if timed:
                    self.compute_seconds += time.perf_counter() - started

    def _judge_shape(self, key: ShapeKey, slot: Slot) -> Result:
        given = parse_shape_answer(slot.check.answer, "answer")
        correct, score, report, found = judge_shape(key, given, slot.check.partial_credit)
        return _result(correct, score, report, found, tolerance_of(slot.check).shape_echo())

    def _judge_formula(self, key: FormulaKey, slot: Slot) -> Result:
        answer = slot.check.answer
        if not isinstance(answer, str):
            raise InvalidAnswer(
                "a formula answer is an expression string, e.g. 'floor(H/2)'", "answer"
            )
        tolerance = tolerance_of(slot.check)
        judged = key.judge(answer, "answer", rtol=tolerance.rtol, atol=tolerance.atol)
        agree, disagree = judged.agree, judged.disagree
        checked = len(key.points)
        correct = agree == checked
        report: dict[str, Any] = {
            "kind": "formula",
            "reference": key.reference.text,
            "named": key.name,
            "points_checked": checked,
            "points_disagreeing": checked - agree,
            "constraints": list(key.constraints),
        }
        if correct:
            report["message"] = f"the formula agrees with the reference at all {checked} points"
        else:
            first = disagree[0]
            report["counterexample"] = {
                "point": first.point,
                "expected": first.expected,
                "given": first.given,
                "reason": first.reason,
            }
            given = "undefined" if first.given is None else first.given
            point = ", ".join(f"{n}={v}" for n, v in first.point.items())
            report["message"] = (
                f"the formula disagrees with the reference at {checked - agree} of {checked} "
                f"points; at {point} the reference is {first.expected} and the answer "
                f"{given}" + (f" ({first.reason})" if first.given is None else "")
            )
        partial = slot.check.partial_credit
        score = 1.0 if correct else (agree / checked if partial != "none" else 0.0)
        # A mistake agrees with the answer at every point, and a right answer has none.
        found = [] if correct else [Diagnosis(code, said) for code, said in judged.diagnoses]
        return _result(correct, score, report, found, tolerance.formula_echo(key.exact))

    def _decode(self, key: TensorKey, slot: Slot) -> tuple[np.ndarray, bool] | None:
        try:
            array = decode(slot.check.answer, "answer", self.budget)
        except Problem as error:
            self._fail(slot, error, "")
            return None
        return as_scalar_if_one(tuple(key.tensor.shape), array)

    def _judge_tensors(self, key: TensorKey, slots: list[Slot]) -> None:
        """Stack the answers of one shape and tolerance; judge and diagnose each stack."""
        stacks: dict[tuple[Any, ...], list[tuple[Slot, np.ndarray, bool]]] = {}
        for slot in slots:
            decoded = self._decode(key, slot)
            if decoded is None:
                continue
            array, scalar = decoded
            group = (tuple(array.shape), tolerance_of(slot.check), slot.check.partial_credit)
            stacks.setdefault(group, []).append((slot, array, scalar))
        key_shape = tuple(key.tensor.shape)
        for (shape, tolerance, partial), members in stacks.items():
            answers = torch.from_numpy(
                np.stack([array for _, array, _ in members]).astype(np.float64, copy=False)
            )
            echo = tolerance.echo(key_scale(key.tensor))
            if shape == key_shape:
                verdicts = judge(
                    key.tensor, answers, tolerance, partial, key.label, [s for _, _, s in members]
                )
            else:
                verdicts = [shape_mismatch(key.tensor, shape, key.label) for _ in members]
            wrong = [n for n, verdict in enumerate(verdicts) if not verdict.correct]
            found: list[list[Diagnosis]] = [[] for _ in members]
            skipped = self._skip_diagnosis(key) if wrong else None
            if skipped is not None:
                for n in wrong:
                    verdicts[n].report["diagnosis_skipped"] = skipped
            elif wrong:
                diagnosed = self._diagnose(key, answers[wrong], tolerance)
                for n, diagnoses in zip(wrong, diagnosed, strict=True):
                    found[n] = diagnoses
            for (slot, _, _), verdict, diagnoses in zip(members, verdicts, found, strict=True):
                self.results[slot.index] = _result(
                    verdict.correct, verdict.score, verdict.report, diagnoses, echo
                )

    def _skip_diagnosis(self, key: TensorKey) -> str | None:
        """Why the wrong answers of ``key`` are not diagnosed, or None when they are."""
        if key.tensor.numel() > MAX_DIAGNOSED_ELEMENTS:
            return (
                f"the key has {key.tensor.numel():,} elements; mistakes are diagnosed "
                f"for keys of at most {MAX_DIAGNOSED_ELEMENTS:,}"
            )
        deadline = self.settings.compute_deadline_seconds
        if self.diagnosis_seconds >= deadline:
            return (
                f"the diagnoses of this request took the compute deadline ({deadline:g} s) "
                "before these answers were reached"
            )
        return None

    def _diagnose(
        self, key: TensorKey, answers: torch.Tensor, tolerance: Tolerance
    ) -> list[list[Diagnosis]]:
        """Diagnose a stack within what is left of the compute deadline for diagnoses.

        Each diagnosis is bounded by its own budget (``diagnosis.Work``), but a batch holds many:
        16 large keys took several times the deadline. As for formulas, their time adds up and
        a diagnosis stops (saying nothing more) where the request's total reaches the deadline.
        """
        left = self.settings.compute_deadline_seconds - self.diagnosis_seconds
        # Diagnoses recompute the key with mistakes made: device work, so in a slot.
        with self._slot(key):
            started = time.perf_counter()
            try:
                return diagnose(key, answers, tolerance, Work(deadline=started + left))
            finally:
                self.diagnosis_seconds += time.perf_counter() - started


def check_one(check: CheckRequest, settings: Settings, gate: ComputeGate | None = None) -> Result:
    """Judge one check; raises ``CheckFailed`` with the problem when it cannot be judged.

    Args:
        check: the check.
        settings: budgets and the compute deadline.
        gate: the device slots to compute in: the service's shared gate; a script or a test
            may leave it out for a gate of its own, sized by ``settings``.

    Returns:
        The result.
    """
    engine = Engine(
        settings, gate if gate is not None else ComputeGate.from_settings(settings), batch=False
    )
    return engine.run([check])[0]


MAX_CHECK_ERRORS = 10
"""The most errors listed for one invalid check of a batch (its detail counts them all): a batch
of thousands of checks, each wrong in many fields, would otherwise answer tens of megabytes."""

_CHECK = TypeAdapter(CheckRequest)
_CHECKS = TypeAdapter(list[CheckRequest])


def validate_checks(items: Sequence[Any]) -> list[CheckRequest | Problem]:
    """Each item of a batch as a ``CheckRequest``, or the 422 problem of why it is not one.

    The whole list is validated at once (the usual case: every check is valid); only when
    that fails is each item validated alone, so the others are still judged.
    """
    try:
        return list(_CHECKS.validate_python(items))
    except ValidationError:
        pass
    checked: list[CheckRequest | Problem] = []
    for index, item in enumerate(items):
        try:
            checked.append(_CHECK.validate_python(item))
        except ValidationError as error:
            located = [
                {**e, "loc": ("body", "checks", index, *e["loc"])}
                for e in error.errors(include_url=False)[:MAX_CHECK_ERRORS]
            ]
            # The batch's items only, as its body: each one's errors are located in it.
            body = {"checks": {index: item}}
            checked.append(
                validation_problem(
                    located,
                    skip=1,
                    body=body,
                    total=error.error_count(),
                    listed=MAX_CHECK_ERRORS,
                )
            )
    return checked


def batch_summary(results: list[Result], keys: int) -> dict[str, int]:
    """The ``summary`` of a batch's answer: its checks counted by outcome (the client's count,
    which it also works out from results alone), and the distinct keys they were judged
    against."""
    return {**counted(results), "keys": keys}


def check_many(
    checks: Sequence[Any],
    settings: Settings,
    gate: ComputeGate | None = None,
    disconnected: Callable[[], bool] | None = None,
) -> tuple[list[Result], int]:
    """Judge checks in order; returns the results and how many distinct keys were computed.

    Args:
        checks: ``CheckRequest``s, or what a client sent as such: an item that is not a valid
            check gets its 422 problem as an ``error`` in its place.
        settings: as for ``check_one``.
        gate: as for ``check_one``.
        disconnected: whether the client has gone away, asked between keys (see ``Engine``).

    Raises:
        ClientDisconnected: ``disconnected`` said so; nothing more was computed.
    """
    engine = Engine(
        settings,
        gate if gate is not None else ComputeGate.from_settings(settings),
        batch=True,
        disconnected=disconnected,
    )
    results = engine.run(validate_checks(checks))
    return results, engine.keys

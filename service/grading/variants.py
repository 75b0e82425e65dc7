"""Per-student variants: the given tensors of a problem, drawn from a seed nobody can predict.

The seed of problem p for student s is HMAC-SHA256(secret, "assignment/p/s") (p is the
problem's ``variant`` key where problems share one, else its id), so a student
gets the same numbers on every replica and after every restart, other students get other
numbers, and nothing is stored. The numbers depend on the secret, the assignment file and the
torch version (pinned), never on the device: drawing happens on the CPU.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from service.grading.schema import GivenSpec, ProblemSpec


def variant_seed(secret: bytes, assignment: str, problem: str, student: str, draw: int = 0) -> int:
    """The 64-bit seed of one student's variant of one problem (``draw`` > 0: of its
    ``draw``-th redraw, see ``catalogue.py``).

    Ids of assignments and problems hold no ``/``, and student ids no line break, so the
    message splits one way only.

    Example:
        >>> variant_seed(b"k" * 32, "cnn-rnn", "1.1c-i", "alice") < 2**64
        True
    """
    message = f"{assignment}/{problem}/{student}".encode()
    if draw:
        message += f"\nredraw {draw}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big")


def draw_given(spec: GivenSpec, generator: torch.Generator) -> torch.Tensor:
    """One given tensor in float64, drawn from ``generator`` or fixed by the spec."""
    if spec.value is not None:
        return torch.tensor(spec.value, dtype=torch.float64)
    shape = tuple(spec.shape or ())
    options: dict[str, Any] = {"generator": generator, "dtype": torch.float64}
    if spec.distribution == "uniform" and spec.integer:
        return torch.randint(int(spec.low), int(spec.high) + 1, shape, **options)
    if spec.distribution == "uniform":
        values = spec.low + (spec.high - spec.low) * torch.rand(shape, **options)
    else:
        values = spec.mean + spec.std * torch.randn(shape, **options)
    if spec.integer:
        return torch.round(values)
    if spec.decimals is not None:
        return torch.round(values, decimals=spec.decimals)
    return values


@dataclass(frozen=True)
class Variant:
    """One student's variant of one problem: what they are given and the resolved reference."""

    assignment: str
    problem: ProblemSpec
    student: str
    given: dict[str, torch.Tensor]
    expected: dict[str, Any]


def make_variant(
    secret: bytes, assignment: str, problem: ProblemSpec, student: str, draw: int = 0
) -> Variant:
    """Draw the given tensors of ``problem`` for ``student`` (in the order the file declares
    them, from one generator) and put them into the reference spec.

    Args:
        secret: the variant secret.
        assignment: the assignment's id.
        problem: the problem.
        student: the student's id, exactly as sent.
        draw: which draw (0: the first; see ``distinct_from`` in ``catalogue.py``).

    Returns:
        The variant: given tensors in float64 and ``expected`` with every reference resolved.
    """
    generator = torch.Generator(device="cpu")
    generator.manual_seed(variant_seed(secret, assignment, problem.variant_key, student, draw))
    given = {name: draw_given(spec, generator) for name, spec in problem.given.items()}
    values = {name: as_json(tensor, problem.given[name].integer) for name, tensor in given.items()}
    expected = resolve(problem.expected, values)
    # The names the file gives win over those that follow from its given tensors.
    names = {**given_names(problem.expected), **(expected.get("names") or {})}
    if names:
        expected["names"] = names
    return Variant(assignment, problem, student, given, expected)


MODEL_OPS = frozenset({"forward", "backward", "jacobian", "state_jacobians"})


def given_names(spec: Mapping[str, Any]) -> dict[str, str]:
    """The model's arguments that the problem names otherwise, by the given tensor each one
    is (``params = { weight = { given = "W" } }``: ``{"weight": "W"}``), so that the feedback
    says dy/dW, as the statement does, not dy/dweight."""
    if spec.get("op") not in MODEL_OPS:
        return {}
    names = {}
    for section in ("params", "inputs"):
        arguments = spec.get(section)
        if not isinstance(arguments, dict):
            continue
        for argument, value in arguments.items():
            if isinstance(value, dict) and set(value) == {"given"} and value["given"] != argument:
                names[argument] = str(value["given"])
    return names


def as_json(tensor: torch.Tensor, integer: bool) -> Any:
    """A given tensor as the nested list (or number) the spec holds; ints when integer-valued,
    so that sizes (``input_size = [{given = "H"}, ...]``) stay ints."""
    return tensor.to(torch.int64).tolist() if integer else tensor.tolist()


def resolve(spec: Any, values: Mapping[str, Any]) -> Any:
    """``spec`` with every ``{given = "name"}`` replaced by the value of that given tensor."""
    if isinstance(spec, dict):
        if set(spec) == {"given"}:
            return values[spec["given"]]
        return {key: resolve(value, values) for key, value in spec.items()}
    if isinstance(spec, list):
        return [resolve(value, values) for value in spec]
    return spec

"""The common mistakes of a formula answer, for a reference whose mistakes are known.

A formula check says which family of mistakes its reference belongs to (``expected.mistakes``):
``"auto"`` (the default) recognises it, ``"none"`` diagnoses nothing, and a family's name (or
``{"family": ..., "variables": {...}}`` where the variables have other names) declares it.
The one family today is the convolution's output size of the seed's 1.1(b),
``floor((H + 2P - D(K - 1) - 1) / S) + 1``, whose mistakes are those the conv-shape checker
knows (``shapes.CONV_SLIPS``: the formula changed in one place), the transposed convolution's
formula given instead, and two of the changes made together (the floor and the dilation left
out, as the seed's 1.1(a) formula copied for 1.1(b) gives). As ceil(N/S) = floor((N - 1)/S)
+ 1, a ceil with the + 1 left out is the same formula as the - 1 taken twice: the ceil pair is
told to an answer that writes ceil, the one change to any other (``FormulaKey.judge``). Where
several mistakes (or several pairs) give the same formula, each is told as one of them
(``formulas.told``).

An answer is diagnosed with a mistake only where it agrees with the mistaken formula at every
point the answer is checked at (``FormulaKey.judge``); the messages name the mistake in the
homework's notation, with the variables of the formula asked (``shapes.Notation``), and never
state the reference.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from service.grading.errors import FormulaError
from service.grading.formulas import FormulaKey, Mistake, Point, Range, same_value
from service.grading.shapes import (
    CONV_SLIPS,
    Dim,
    Notation,
    Slips,
    slipped_size,
    transposed_formula,
    transposed_size,
)

CONV_OUTPUT_SIZE = "conv_output_size"
FAMILIES = (CONV_OUTPUT_SIZE,)
"""The families of mistakes a formula check may name in ``expected.mistakes``."""

ROLES: dict[str, str] = {
    "H": "the input size",
    "K": "the kernel size",
    "P": "the padding",
    "S": "the stride",
    "D": "the dilation",
}
"""The parts of the convolution formula, by the homework's letters."""
ABSENT: dict[str, int] = {"P": 0, "S": 1, "D": 1}
"""The value of a part that no variable plays: no padding, stride 1, no dilation."""
INPUT_NAMES = ("H", "W", "L")
"""The names the input size goes by when the variables do not say (1.1(b) H, 1.1(c) L)."""

NAMED_ROLES: dict[str, dict[str, str]] = {
    "conv_output_size": {},
    "conv1d_output_length": {"H": "L"},
}
"""The built-in references of the conv family, with the variables that play each part."""


@dataclass(frozen=True)
class ConvRoles:
    """The variable that plays each part of the convolution formula (None: absent)."""

    names: dict[str, str | None]
    _dims: dict[tuple[int, ...], Dim] = field(default_factory=dict, compare=False, repr=False)

    def dim(self, point: Point) -> Dim:
        """The dimension at ``point`` (made once per point: every mistake evaluates it)."""
        values = tuple(
            ABSENT[role] if name is None else int(point[name]) for role, name in self.names.items()
        )
        found = self._dims.get(values)
        if found is None:
            part = dict(zip(self.names, values, strict=True))
            padding = part["P"]
            found = Dim(part["H"], part["K"], part["S"], padding, padding, part["D"])
            if len(self._dims) < 4096:
                self._dims[values] = found
        return found

    def notation(self) -> Notation:
        """The messages' names for the parts: the variables that play them."""
        names = self.names
        assert names["H"] is not None and names["K"] is not None  # _resolve refuses less
        return Notation(names["H"], names["K"], names["P"], names["S"], names["D"])


def _resolve(
    given: Mapping[str, str], ranges: Mapping[str, Range], where: str, *, strict: bool
) -> ConvRoles | None:
    """The roles of ``given`` (role -> variable), each other role played by the variable of its
    letter where there is one; None (or, ``strict``, a ``FormulaError``) where a role is
    unknown, a variable is missing or not an integer, or no variable plays the input or the
    kernel."""

    def refuse(message: str, place: str = where) -> None:
        if strict:
            raise FormulaError(message, place)

    names: dict[str, str | None] = {}
    for role, name in given.items():
        if role not in ROLES:
            refuse(
                f"{role!r} is not a part of the convolution formula; the parts are "
                + ", ".join(f"{r} ({what})" for r, what in ROLES.items()),
                f"{where}.variables.{role}",
            )
            return None
        if name not in ranges:
            known = ", ".join(sorted(ranges))
            refuse(
                f"{name!r} is not a variable of the formula; the variables are {known}",
                f"{where}.variables.{role}",
            )
            return None
        names[role] = name
    for role in ROLES:
        if role in names:
            continue
        candidates = INPUT_NAMES if role == "H" else (role,)
        names[role] = next((n for n in candidates if n in ranges), None)
    for role in ("H", "K"):
        if names[role] is None:
            refuse(
                f"no variable is {ROLES[role]} ({role}) of the convolution formula; name it, "
                f'e.g. {{"family": "{CONV_OUTPUT_SIZE}", "variables": {{"{role}": "..."}}}}'
            )
            return None
    for role, player in names.items():
        if player is not None and not ranges[player].integer:
            refuse(f"{ROLES[role]} ({role}) must be a whole number: give {player} integer bounds")
            return None
    return ConvRoles(names)


def _size(roles: ConvRoles, slips: Slips) -> Any:
    return lambda point: slipped_size(roles.dim(point), slips)


def _writes(slips: Slips) -> frozenset[str]:
    """What an answer that makes ``slips`` writes that the reference does not: a ceil."""
    return frozenset({"ceil"}) if slips.rounding == "ceil" else frozenset()


def conv_mistakes(roles: ConvRoles) -> tuple[Mistake, ...]:
    """The conv formula's mistakes with these roles: each change alone, the transposed
    convolution's formula, then each two changes made together (simplest first).

    A change to a part no variable plays (the padding of 1.1(c)'s ``floor((L - K)/S) + 1``)
    changes nothing and is left out, and the messages name the formula's own variables: a
    student asked about L, K and S is told of no padding or dilation."""
    notation = roles.notation()
    played = {role for role, name in roles.names.items() if name is not None}
    slips = [
        (code, slip.slips, slip.message(notation))
        for code, slip in CONV_SLIPS.items()
        if slip.parts <= played
    ]
    singles = [Mistake(((code, said),), _size(roles, s), _writes(s)) for code, s, said in slips]
    transposed = Mistake(
        (transposed_formula(notation),), lambda point: transposed_size(roles.dim(point))
    )
    pairs = []
    for (first, a, said_a), (second, b, said_b) in itertools.combinations(slips, 2):
        both = a | b
        if both is not None:
            told = ((first, said_a), (second, said_b))
            pairs.append(Mistake(told, _size(roles, both), _writes(both)))
    return (*singles, transposed, *pairs)


def _is_conv_size(key: FormulaKey, roles: ConvRoles) -> tuple[bool, Point | None]:
    """Whether the reference is the convolution's output size at every point, and the first
    point where it is not."""
    right = Slips()
    for point, value in zip(key.points, key.values, strict=True):
        try:
            size = slipped_size(roles.dim(point), right)
        except ArithmeticError:  # a stride of 0 in the ranges: no convolution's size there
            return False, point
        if size is None or not same_value(size, value):
            return False, point
    return True, None


def with_mistakes(
    key: FormulaKey, mistakes: str | Mapping[str, Any] | None, named: str | None
) -> FormulaKey:
    """``key`` with the mistakes of its family to diagnose wrong answers with.

    Args:
        key: the reference's key.
        mistakes: ``expected.mistakes``: ``"auto"`` (or None), ``"none"``, a family's name, or
            ``{"family": ..., "variables": {role: variable}}``.
        named: ``expected.named``, whose family is known.

    Raises:
        FormulaError: a declared family whose parts the variables do not play, or that the
            reference is not (at the first point where it is not).
    """
    if mistakes == "none":
        return key
    where = "mistakes"
    if mistakes is None or mistakes == "auto":
        if named is not None and named not in NAMED_ROLES:
            return key
        # Recognised or not, never refused: a reference that is no convolution's size, or a
        # named one whose variables were given other ranges, is judged without diagnoses.
        roles = _resolve(NAMED_ROLES.get(named or "", {}), key.ranges, where, strict=False)
        if roles is None or not _is_conv_size(key, roles)[0]:
            return key
        return replace(key, mistakes=conv_mistakes(roles), _cache={}, _mistaken=[])
    if isinstance(mistakes, str):
        family, given = mistakes, {}
    else:
        family, given = str(mistakes.get("family")), dict(mistakes.get("variables") or {})
    if family not in FAMILIES:
        raise FormulaError(
            f"there is no family of mistakes {family!r}; there are {', '.join(FAMILIES)}", where
        )
    roles = _resolve(given, key.ranges, where, strict=True)
    assert roles is not None
    conv, point = _is_conv_size(key, roles)
    if not conv:
        assert point is not None
        at = ", ".join(f"{name}={value}" for name, value in sorted(point.items()))
        parts = ", ".join(f"{r}={n}" for r, n in roles.names.items() if n is not None)
        raise FormulaError(
            f"the reference is not the convolution's output size (with {parts}) at {at}, so "
            f"its mistakes cannot be diagnosed: name the variables that play each part, or "
            f'give "none"',
            where,
        )
    return replace(key, mistakes=conv_mistakes(roles), _cache={}, _mistaken=[])

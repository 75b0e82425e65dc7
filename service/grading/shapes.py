"""Checking convolution output shapes (``expected.op == "conv_shape"``, seed 1.1(a)-(b)).

The key is what ``POST /v1/shapes/conv`` answers: ``output_shape`` when ``out_channels`` is
given, else ``output_size``. An answer is a list of ints (``[5, 2]``), an int for one
dimension (``3``), or a string as a student writes it (``"5x2"``, ``"5 x 2"`` with a
multiplication sign, ``"(8, 5, 2)"``).

Each shape mistake recomputes the size with the seed's formula
``floor((in + 2P - D(K - 1) - 1) / S) + 1`` changed in one place, or, for a transposed
convolution, ``(in - 1) S - 2P + D(K - 1) + output_padding + 1``. Padding ``"valid"`` is 0 and
``"same"`` the amounts the service pads with (``explicit_padding``); a mistake that gives the
right size (a ceil or a stride with stride 1) is no mistake and is never diagnosed. Where
several mistakes give the same size, each is told as one of them (``diagnosis.alternatives``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, Literal

from models.conv import conv_output_size, explicit_padding, parse_padding
from service.grading.compare import PartialCredit
from service.grading.diagnosis import Diagnosis, alternatives
from service.grading.errors import InvalidAnswer
from service.grading.schemas import ConvShapeExpected

_SEPARATORS = re.compile("\\s*(?:[x\u00d7*,]|\\s|by)\\s*", re.IGNORECASE)
MAX_SHAPE_TEXT = 200


@dataclass(frozen=True)
class Dim:
    """One spatial dimension's numbers: input, kernel, stride, padding before and after the
    input (equal, except for ``"same"`` with an odd D(K - 1)), dilation, output padding."""

    n: int
    k: int
    s: int
    before: int
    after: int
    d: int
    op: int = 0

    @property
    def padding(self) -> int:
        """What the formula's 2P stands for: the padding on both sides."""
        return self.before + self.after

    @property
    def once(self) -> int | None:
        """P, the padding of one side; None where the sides differ (no one P to count once)."""
        return self.before if self.before == self.after else None


@dataclass(frozen=True)
class ShapeMistake:
    """The output size of one dimension with one mistake made (None where the mistake has no
    meaning for that dimension), and what the mistake is."""

    code: str
    size: Callable[[Dim], int | None]
    message: str


Rounding = Literal["floor", "ceil", "none"]


@dataclass(frozen=True)
class Slips:
    """Changes that students make to the seed's ``floor((in + 2P - D(K - 1) - 1) / S) + 1``,
    each a common mistake of its own (``CONV_SLIPS``); several may be made at once."""

    rounding: Rounding = "floor"
    padding_once: bool = False
    padding_ignored: bool = False
    dilation_ignored: bool = False
    minus_one_missing: bool = False
    minus_one_extra: bool = False
    stride_ignored: bool = False
    plus_one_missing: bool = False
    plus_one_extra: bool = False

    def __or__(self, other: Slips) -> Slips | None:
        """Both sets of changes made together; None where they change the same thing two
        ways (rounded up and not rounded at all, the padding counted once and left out, the
        - 1 left out and taken twice)."""
        if "floor" not in (self.rounding, other.rounding):
            return None
        merged = {name: getattr(self, name) or getattr(other, name) for name in _CHANGES}
        if any(merged[a] and merged[b] for a, b in _EXCLUSIVE):
            return None
        rounding = other.rounding if self.rounding == "floor" else self.rounding
        return Slips(rounding, **merged)


_CHANGES = (
    "padding_once",
    "padding_ignored",
    "dilation_ignored",
    "minus_one_missing",
    "minus_one_extra",
    "stride_ignored",
    "plus_one_missing",
    "plus_one_extra",
)
_EXCLUSIVE = (
    ("padding_once", "padding_ignored"),
    ("minus_one_missing", "minus_one_extra"),
    ("plus_one_missing", "plus_one_extra"),
)
"""Changes to the same term, which one answer cannot make both of."""


def slipped_size(x: Dim, slips: Slips) -> int | Fraction | None:
    """The output size of one dimension by the seed's formula with ``slips`` made (none: the
    right size), in exact arithmetic: a fraction where the rounding is left out. None where a
    change has no meaning for this dimension (padding counted once where the sides differ)."""
    padding = 0 if slips.padding_ignored else x.padding
    if slips.padding_once:
        if x.once is None:
            return None
        padding = x.once
    span = (x.k - 1) if slips.dilation_ignored else x.d * (x.k - 1)
    taken = 0 if slips.minus_one_missing else 2 if slips.minus_one_extra else 1
    top = x.n + padding - span - taken
    stride = 1 if slips.stride_ignored else x.s
    steps: int | Fraction
    if slips.rounding == "floor":
        steps = top // stride
    elif slips.rounding == "ceil":
        steps = -(-top // stride)
    else:
        quotient = Fraction(top, stride)
        steps = quotient.numerator if quotient.denominator == 1 else quotient
    added = 0 if slips.plus_one_missing else 2 if slips.plus_one_extra else 1
    return steps + added


def transposed_size(x: Dim) -> int:
    """The output size of a transposed convolution, ``(in - 1) S - 2P + D(K - 1) +
    output_padding + 1``: what a student who takes one formula for the other gives."""
    return (x.n - 1) * x.s - x.padding + x.d * (x.k - 1) + x.op + 1


@dataclass(frozen=True)
class Notation:
    """The names a message gives the parts of the convolution formula: the homework's letters
    (a shape's mistakes), or the variables of a formula that plays them, None for a part the
    formula does not have (1.1(c)'s ``floor((L - K)/S) + 1`` has no P and no D)."""

    input: str = "in"
    K: str = "K"
    P: str | None = "P"
    S: str | None = "S"
    D: str | None = "D"

    def words(self) -> dict[str, str]:
        """The phrases of ``ConvSlip.text`` in this notation (a part it lacks as absent:
        no padding, stride 1, no dilation), never naming a part it lacks."""
        k = self.K
        span = _times(self.D, f"({k} - 1)") if self.D else f"{k} - 1"
        spanned = f"{span} + 1" if self.D else k
        kernel = f"a kernel of size {k}" + (f" with dilation {self.D}" if self.D else "")
        transposed = _times(f"({self.input} - 1)", self.S) if self.S else f"{self.input} - 1"
        transposed += f" - {_times('2', self.P)}" if self.P else ""
        transposed += f" + {spanned}"
        return {
            "K": k,
            "P": self.P or "",
            "2P": _times("2", self.P) if self.P else "",
            "S": self.S or "",
            "span": span,
            "spanned": spanned,
            "kernel": kernel,
            "input": "the padded input" if self.P else "the input",
            # The seed's - D(K - 1) - 1 has a - 1 to leave out; 1.1(c)'s - K has none.
            "short": "You left out the - 1" if self.D else f"You took away only {k} - 1",
            "transposed": transposed,
            "divided": (
                f" and divides by the stride {self.S} instead of multiplying by it"
                if self.S
                else ", which shrinks it"
            ),
        }


def _times(factor: str, name: str) -> str:
    """``factor`` times ``name`` as the homework writes it (``2P``, ``D(K - 1)``, ``(in - 1)
    S``), with a ``*`` where a name is longer than a letter (``2*pad``): ``2pad`` reads as one
    name."""
    plain = all(len(x) == 1 or x.isdigit() or x.startswith("(") for x in (factor, name))
    if not plain:
        return f"{factor}*{name}"
    return f"{factor} {name}" if factor.endswith(")") else f"{factor}{name}"


LETTERS = Notation()
"""The homework's letters, every part present: the notation of a shape's mistakes."""


@dataclass(frozen=True)
class ConvSlip:
    """One change to the seed's formula: the change, what it is (``text``, in the phrases of
    ``Notation.words``), and the parts it changes, without which it changes nothing."""

    slips: Slips
    text: str
    parts: frozenset[str] = frozenset()

    def message(self, notation: Notation = LETTERS) -> str:
        """What the change is, in ``notation``."""
        return self.text.format_map(notation.words())


CONV_SLIPS: dict[str, ConvSlip] = {
    "floor_missing": ConvSlip(
        Slips(rounding="none"),
        "You left out the floor: the kernel moves in whole steps of {S}, so the number of steps "
        "after the first position is rounded down before adding 1 (a size is a whole number).",
        frozenset("S"),
    ),
    "ceil_instead_of_floor": ConvSlip(
        Slips(rounding="ceil"),
        "You rounded up (ceil) where the formula rounds down (floor): a last window that does "
        "not fit inside {input} gives no output.",
        frozenset("S"),
    ),
    "padding_counted_once": ConvSlip(
        Slips(padding_once=True),
        "You counted the padding once ({P} instead of {2P}): it is added on both sides.",
        frozenset("P"),
    ),
    "padding_ignored": ConvSlip(
        Slips(padding_ignored=True),
        "You left out the padding: {P} is added on both sides of the input, {2P} in all, before "
        "the kernel slides over it.",
        frozenset("P"),
    ),
    "dilation_ignored": ConvSlip(
        Slips(dilation_ignored=True),
        "You ignored the dilation: {kernel} spans {spanned} inputs.",
        frozenset("D"),
    ),
    "minus_one_missing": ConvSlip(
        Slips(minus_one_missing=True),
        "{short}: {kernel} spans {spanned} inputs, not {span}, and all of them must fit inside "
        "{input}.",
    ),
    "stride_ignored": ConvSlip(
        Slips(stride_ignored=True),
        "You ignored the stride: the kernel moves {S} positions at a time, so divide by {S} "
        "(rounding down) before adding 1.",
        frozenset("S"),
    ),
    "plus_one_missing": ConvSlip(
        Slips(plus_one_missing=True),
        "You left out the + 1: the first position of the kernel gives an output too.",
    ),
    "minus_one_extra": ConvSlip(
        Slips(minus_one_extra=True),
        "You took away 1 too many: {kernel} spans {spanned} inputs, and taking that span away "
        "once keeps it inside {input}; another - 1 leaves out the last place where it fits.",
    ),
    "plus_one_extra": ConvSlip(
        Slips(plus_one_extra=True),
        "You added 1 too many: the + 1 counts the first position of the kernel, which gives "
        "one output, not two.",
    ),
}
"""The mistakes in the seed's convolution formula, by code: the change and what it is, in the
homework's notation and without the formula itself (the message may reach a student). Several
that give one answer are told in this order (the 1 taken away or added twice last, so that
the answers the others give are told them as before)."""


def transposed_formula(notation: Notation = LETTERS) -> tuple[str, str]:
    """The code and the message of the transposed convolution's formula given for a
    convolution's, in ``notation``."""
    text = (
        "You gave the size of a transposed convolution, {transposed}, which enlarges its "
        "input; a convolution slides the kernel over {input}{divided}."
    )
    return "transposed_formula", text.format_map(notation.words())


def _slipped(slips: Slips) -> Callable[[Dim], int | None]:
    """A whole-numbered slip's size as ``ShapeMistake.size`` computes it."""

    def size(x: Dim) -> int | None:
        value = slipped_size(x, slips)
        return None if value is None else int(value)

    return size


def _odd_padding_left_out(x: Dim) -> int | None:
    """The size with the padding of the side before the input on both sides: "same" with an
    odd D(K - 1) read as the same P on each side, one short in all. Where the sides are padded
    alike, the right size: another dimension may be the odd one, and a shape none of whose
    dimensions is odd equals the key, which is no mistake."""
    if x.before == x.after:
        return _slipped(Slips())(x)
    return _slipped(Slips())(replace(x, after=x.before))


def _from_slip(code: str) -> ShapeMistake:
    slip = CONV_SLIPS[code]
    return ShapeMistake(code, _slipped(slip.slips), slip.message())


SHAPE_MISTAKES: tuple[ShapeMistake, ...] = (
    _from_slip("ceil_instead_of_floor"),
    _from_slip("padding_counted_once"),
    _from_slip("padding_ignored"),
    ShapeMistake(
        "odd_padding_left_out",
        _odd_padding_left_out,
        'Your padding is one short: "same" pads D(K - 1) in all, and where that is odd, one '
        "more after the input than before it.",
    ),
    _from_slip("dilation_ignored"),
    _from_slip("stride_ignored"),
    _from_slip("plus_one_missing"),
)
"""The mistakes of a convolution's output shape, in the order several that give one size are
told in (``floor_missing`` gives no whole size, and ``minus_one_missing``, ``minus_one_extra``
and ``plus_one_extra`` are a formula's). ``odd_padding_left_out`` is a shape's alone: a
formula's P pads both sides alike."""

TRANSPOSED_MISTAKES: tuple[ShapeMistake, ...] = (
    # No ceil: the transposed formula rounds nothing.
    ShapeMistake(
        "padding_counted_once",
        lambda x: (x.n - 1) * x.s - x.before + x.d * (x.k - 1) + x.op + 1,
        "You counted the padding once (P instead of 2P): a transposed convolution removes it "
        "from both ends of its output.",
    ),
    ShapeMistake(
        "padding_ignored",
        lambda x: (x.n - 1) * x.s + x.d * (x.k - 1) + x.op + 1,
        "You left out the padding: a transposed convolution removes P from both ends of its "
        "output, 2P in all.",
    ),
    ShapeMistake(
        "dilation_ignored",
        lambda x: (x.n - 1) * x.s - x.padding + (x.k - 1) + x.op + 1,
        "You ignored the dilation: a kernel of size K with dilation D spans D(K - 1) + 1 outputs.",
    ),
    ShapeMistake(
        "stride_ignored",
        lambda x: (x.n - 1) - x.padding + x.d * (x.k - 1) + x.op + 1,
        "You ignored the stride: each step along the input moves the kernel S positions along "
        "the output, so (in - 1) is multiplied by S.",
    ),
    ShapeMistake(
        "plus_one_missing",
        lambda x: (x.n - 1) * x.s - x.padding + x.d * (x.k - 1) + x.op,
        "You left out the + 1: the formula is (in - 1) S - 2P + D(K - 1) + output_padding + 1.",
    ),
)


@dataclass(frozen=True)
class ShapeKey:
    """The expected output size or shape, with what is needed to recompute it wrongly."""

    shape: list[int]
    label: str
    channels: int | None
    dims: list[Dim]
    transposed: bool
    steps: list[dict[str, Any]]


def _per_dim(value: Any, count: int) -> list[int]:
    return [value] * count if isinstance(value, int) else list(value)


def shape_key(expected: ConvShapeExpected) -> ShapeKey:
    """The key of a conv_shape check; ``ModelError`` with the field at fault if invalid."""
    steps = conv_output_size(
        expected.input_size,
        expected.kernel_size,
        expected.stride,
        expected.padding,
        expected.dilation,
        transposed=expected.transposed,
        output_padding=expected.output_padding,
    )
    size = [s.result for s in steps]
    channels = expected.out_channels
    count = len(size)
    kernel = _per_dim(expected.kernel_size, count)
    dilation = _per_dim(expected.dilation, count)
    # "valid" and "same" as the numbers they pad with, so that their mistakes are found as
    # those of an explicit padding are (conv_output_size has validated every value).
    pads = explicit_padding(parse_padding(expected.padding, count), kernel, dilation)
    dims = [
        Dim(n, k, s, before, after, d, op)
        for n, k, s, (before, after), d, op in zip(
            expected.input_size,
            kernel,
            _per_dim(expected.stride, count),
            pads,
            dilation,
            _per_dim(expected.output_padding, count),
            strict=True,
        )
    ]
    return ShapeKey(
        [channels, *size] if channels is not None else size,
        "output shape" if channels is not None else "output size",
        channels,
        dims,
        expected.transposed,
        [vars(s) for s in steps],
    )


def parse_shape_answer(answer: Any, where: str = "answer") -> list[int]:
    """A shape answer as a list of ints; ``InvalidAnswer`` when it is not one."""
    if isinstance(answer, str):
        # A one-size tuple as Python prints it, "(7,)", has a trailing comma.
        text = answer.strip().strip("[]()").strip().removesuffix(",").strip()
        if len(answer) > MAX_SHAPE_TEXT or not text:
            raise InvalidAnswer(f"{answer!r:.40} is not a shape such as [16, 16] or '16x16'", where)
        parts = _SEPARATORS.split(text)
        if not all(part.isdecimal() and part.isascii() for part in parts):
            raise InvalidAnswer(
                f"{answer!r:.40} is not a shape: write sizes separated by x or commas, "
                "e.g. '16x16' or [16, 16]",
                where,
            )
        return [int(part) for part in parts]
    values = [answer] if not isinstance(answer, list) else answer
    sizes = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            # The whole answer as sent: its faulty item alone reads as a right answer when
            # the list is nested ([[5, 2]] would print as [5, 2]).
            nested = (
                " (a nested list: give the sizes in one flat list)"
                if isinstance(value, list)
                else ""
            )
            raise InvalidAnswer(
                f"a shape is a list of integers, e.g. [16, 16]; got {_as_sent(answer)}{nested}",
                where,
            )
        if isinstance(value, float) and not value.is_integer():
            raise InvalidAnswer(f"a size must be a whole number, got {value}", where)
        sizes.append(int(value))
    if not sizes or len(sizes) > 8:
        raise InvalidAnswer("a shape has 1 to 8 sizes", where)
    return sizes


def _tokens(value: Any) -> Iterator[str]:
    """``value`` as JSON text, piece by piece (a long answer is only written as far as read)."""
    if isinstance(value, list):
        yield "["
        for index, item in enumerate(value):
            yield ", " if index else ""
            yield from _tokens(item)
        yield "]"
    elif isinstance(value, dict):
        yield "{...}"
    else:
        yield json.dumps(value, ensure_ascii=False)


def _as_sent(answer: Any, limit: int = 40) -> str:
    """The answer as the client wrote it, in JSON (``null``, ``true``), cut to ``limit``."""
    text = ""
    for token in _tokens(answer):
        text += token
        if len(text) > limit:
            return text[: limit - 3] + "..."
    return text


def _mistaken_shapes(key: ShapeKey) -> list[tuple[list[int], Diagnosis]]:
    found = []
    for mistake in TRANSPOSED_MISTAKES if key.transposed else SHAPE_MISTAKES:
        sizes = [mistake.size(dim) for dim in key.dims]
        size = [n for n in sizes if n is not None and n >= 1]
        if len(size) != len(sizes):
            continue  # no meaning in some dimension, or no output there
        shape = [key.channels, *size] if key.channels is not None else size
        if shape != key.shape:
            found.append((shape, Diagnosis(mistake.code, mistake.message)))
    if key.channels is not None:
        found.append(
            (
                key.shape[1:],
                # No number in the sentence: it may reach a student, to whom the number of
                # filters is part of the key (the report gives it to an instructor).
                Diagnosis(
                    "channels_missing",
                    "You gave only the spatial size; the output shape starts with the number "
                    "of filters (the output channels).",
                ),
            )
        )
    return found


def judge_shape(
    key: ShapeKey, given: Sequence[int], partial: PartialCredit
) -> tuple[bool, float, dict[str, Any], list[Diagnosis]]:
    """Correct or not, the score, the report, and the mistakes that give this answer."""
    given = list(given)
    correct = given == key.shape
    dims = [
        {"dimension": d, "expected": e, "given": g, "correct": e == g}
        for d, (e, g) in enumerate(zip(key.shape, given, strict=False))
    ]
    if correct:
        message = f"the {key.label} {key.shape} is right"
    elif len(given) != len(key.shape):
        message = (
            f"the {key.label} has {len(key.shape)} sizes, {key.shape}; the answer has "
            f"{len(given)}, {given}"
        )
    else:
        wrong = [
            f"{d['given']} instead of {d['expected']} in dimension {d['dimension']}"
            for d in dims
            if not d["correct"]
        ]
        message = f"the {key.label} is {key.shape}; the answer has " + ", ".join(wrong)
    report = {
        "kind": "shape",
        "label": key.label,
        "expected": key.shape,
        "given": given,
        "dimensions": dims,
        "steps": key.steps,
        "message": message,
    }
    score = 1.0 if correct else 0.0
    if partial != "none" and not correct and len(given) == len(key.shape):
        score = sum(d["correct"] for d in dims) / len(dims)
    # Several mistakes can give the same size (P = 1, S = 2 and in = 7: the padding counted
    # once and the + 1 left out both give 3): each is then told as one of them.
    diagnosis = (
        [] if correct else alternatives([d for shape, d in _mistaken_shapes(key) if shape == given])
    )
    return correct, score, report, diagnosis

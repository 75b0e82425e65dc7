"""Diagnosis of common mistakes, by recomputing the key with the mistake made.

Each mistake is a small registered class. Given the key (and, through ``key.source``, the
model call that produced it) and the shape of the wrong answers, it yields candidate
tensors, each the reference with that one mistake made, and a sentence a student
understands. An answer is diagnosed with a mistake when it matches the candidate within the
check's own tolerance; nothing is guessed. A candidate that equals the key itself (a
symmetric matrix transposed, a shift of zeros) is skipped: it cannot tell right from wrong.
So is a candidate of zeros (within the tolerance) where the key is not: an answer left as
zeros would match it whatever its cause, so it explains nothing (such an answer gets
``all_zeros`` instead).

Wrong answers that share a key and a shape are stacked, so each candidate is computed once
and compared with all of them in one operation. Only wrong answers are diagnosed: a correct
answer never gets a diagnosis. Where several mistakes each give an answer, none is stated as
a fact: each is told as one of them (``alternatives``, which the shape checks use too; two
mistakes of one code, in one diagnosis, through ``Candidate.alike``).

The work is bounded (``Work``): each candidate is a key-sized tensor made and compared, so a
diagnosis makes candidates worth at most ``MAX_DIAGNOSIS_ELEMENTS`` elements, and none past a
deadline when one is given. A large key is therefore tried against fewer candidates (the most
likely first), and an answer whose mistake is not reached gets no diagnosis rather than a
slow one: a rank-6 key of 1M elements with every axis the same size has 720 axis orders.

Register a new mistake with ``@register`` on a ``Mistake`` subclass; ``order`` sets where it
is tried (specific mistakes first) and its sentence appears; ``share`` bounds the part of the
budget left that it may spend.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar, TypeVar

import torch

from service.grading.compare import Tolerance, key_scale, within
from service.grading.keys import TensorKey

Shape = tuple[int, ...]
POSITION_AXES = frozenset({"L", "H", "W", "L_out", "H_out", "W_out"})
"""Symbols of the axes that index a convolution's positions (where the seed's 1-based
``2i-1+m`` read with 0-based arrays shifts by one)."""
TIME_AXES = frozenset({"T"})
"""Symbols of the axes that index time steps: t = 1..T, stored in rows 0..T-1."""

MAX_PERMUTED_RANK = 6
"""Up to this rank every axis order is a candidate; above it, only the most likely ones."""
MAX_DIAGNOSED_ELEMENTS = 1_000_000
"""Keys larger than this are judged but not diagnosed: each candidate is a key-sized tensor."""
MAX_DIAGNOSIS_ELEMENTS = 16_000_000
"""The elements of all the candidates one diagnosis may make and compare: 16 candidates of a
1M-element key (about a quarter of a second), every candidate of a small one."""


@dataclass(frozen=True)
class Diagnosis:
    """A mistake found in an answer: a stable ``code`` and a sentence for the student."""

    code: str
    message: str


@dataclass(frozen=True)
class Candidate:
    """The key with one mistake made; ``code`` overrides the mistake's own when given.

    ``alike``: the result of another mistake of the same code that can give the same numbers
    (the states one row off, and x read one step earlier, where h[0] = 0). An answer that
    matches both within the tolerance is told ``alike.message``, which says it is one of the
    two: nothing tells which one the student made.
    """

    tensor: torch.Tensor
    message: str
    code: str | None = None
    alike: Candidate | None = None


class Seen:
    """Candidates already matched with some answer of a stack, by the family of the mistake
    that matched them (``Mistake.family``)."""

    def __init__(self) -> None:
        self.tensors: list[tuple[str, torch.Tensor]] = []

    def has(self, tensor: torch.Tensor, family: str) -> bool:
        return any(
            of == family
            and t.shape == tensor.shape
            and torch.allclose(t, tensor, rtol=1e-12, atol=1e-300)
            for of, t in self.tensors
        )

    def add(self, tensor: torch.Tensor, family: str) -> None:
        self.tensors.append((family, tensor))


class Work:
    """What a diagnosis may still spend: candidate elements, and time up to ``deadline``.

    Attributes:
        elements: elements of candidates that may still be made and compared
            (``MAX_DIAGNOSIS_ELEMENTS`` when not given).
        deadline: a ``time.perf_counter()`` past which no candidate is tried; None: none.
        spent: the elements of the candidates tried so far.
        candidates: how many candidates were tried.
    """

    def __init__(self, elements: int | None = None, deadline: float | None = None) -> None:
        # Read at each call rather than bound as a default, so that a lowered limit applies.
        self.elements = MAX_DIAGNOSIS_ELEMENTS if elements is None else elements
        self.deadline = deadline
        self.spent = 0
        self.candidates = 0

    def affords(self, elements: int) -> bool:
        """Whether one more candidate of ``elements`` fits, in elements and in time."""
        if elements > self.elements:
            return False
        return self.deadline is None or time.perf_counter() <= self.deadline

    def charge(self, elements: int) -> None:
        """Count one candidate of ``elements`` as made."""
        self.elements -= elements
        self.spent += elements
        self.candidates += 1

    def afford(self, elements: int) -> bool:
        """Charge one candidate of ``elements`` if it fits (False, and nothing charged, if not)."""
        if not self.affords(elements):
            return False
        self.charge(elements)
        return True

    def part(self, share: float) -> Work:
        """A budget of ``share`` of what is left, to be ``take``n back once spent."""
        return Work(int(self.elements * share), self.deadline)

    def take(self, part: Work) -> None:
        """Charge what ``part`` spent."""
        self.elements -= part.spent
        self.spent += part.spent
        self.candidates += part.candidates


def metered(candidates: Iterator[Candidate], size: int, work: Work) -> Iterator[Candidate]:
    """The candidates while ``work`` affords one more of ``size`` elements: the next one is
    not even made when it does not (making it is most of its cost)."""
    while work.affords(size):
        candidate = next(candidates, None)
        if candidate is None:  # nothing made: nothing charged
            return
        work.charge(size)
        yield candidate


class Mistake:
    """A common mistake: yields the key recomputed with it made, for a given answer shape."""

    code: ClassVar[str]
    order: ClassVar[int]
    also: ClassVar[tuple[str, ...]] = ()
    """The other codes its candidates may carry (``Candidate.code``)."""
    share: ClassVar[float] = 1.0
    """The most of what is left of the diagnosis' budget this mistake may spend: one with many
    candidates leaves the rest to the mistakes after it."""
    family: ClassVar[str | None] = None
    """Mistakes of one family describe one kind of change to the key (how its numbers are laid
    out, by what factor they are scaled): a candidate equal to one that an earlier mistake of
    the family matched is that answer described again (a column-major read that is a
    transpose), and is skipped. Mistakes of other families (or of none) that give the same
    numbers are each told, as one of several (``alternatives``): with a stride of 1 and
    "same" padding the kernel flipped gives dy/dx with its halves swapped, and nothing tells
    which mistake the student made."""

    @property
    def kin(self) -> str:
        """The family it is skipped within: its own, or the mistake alone."""
        return self.family or self.code

    def candidates(self, key: TensorKey, shape: Shape) -> Iterator[Candidate]:
        """The key with this mistake made, shaped like the answers (``shape``)."""
        return iter(())

    def match(
        self, key: TensorKey, answers: torch.Tensor, tolerance: Tolerance, seen: Seen, work: Work
    ) -> list[Diagnosis | None]:
        """For each stacked answer, this mistake's diagnosis if the answer makes it.

        ``seen`` holds the candidates that earlier mistakes matched: one that equals those of
        this mistake's family is the same answer described again and is skipped; the ones this
        mistake matches are added. Candidates are tried while ``work``
        affords them.
        """
        found: list[Diagnosis | None] = [None] * answers.shape[0]
        shape = tuple(answers.shape[1:])
        scale = key_scale(key.tensor)
        # A key of zeros (dy/dx of a constant): its candidates are its zeros rearranged, which
        # do tell an answer of zeros in the wrong shape what is wrong with it.
        zero_key = _zeros(key.tensor, tolerance, scale)
        for candidate in metered(self.candidates(key, shape), math.prod(shape), work):
            tensor = candidate.tensor
            if tuple(tensor.shape) != shape or not bool(torch.isfinite(tensor).all()):
                continue
            if shape == tuple(key.tensor.shape) and bool(
                within(key.tensor[None], tensor, tolerance, scale)[0]
            ):
                continue
            if not zero_key and _zeros(tensor, tolerance, scale):
                # x read one position off where the only nonzero input falls off the end, a
                # sum whose terms cancel: zeros, which an unfilled answer matches as well.
                continue
            if seen.has(tensor, self.kin):
                continue
            hits = torch.nonzero(within(answers, tensor, tolerance, scale)).reshape(-1).tolist()
            if hits:
                seen.add(tensor, self.kin)
            both = _also_matched(candidate.alike, answers, hits, tolerance, scale)
            for n in hits:
                if found[n] is None:
                    told = candidate.alike if n in both and candidate.alike else candidate
                    found[n] = Diagnosis(candidate.code or self.code, told.message)
        return found


def _also_matched(
    alike: Candidate | None,
    answers: torch.Tensor,
    hits: list[int],
    tolerance: Tolerance,
    scale: float,
) -> set[int]:
    """Those of the answers ``hits`` that ``alike`` (another mistake's result) matches too."""
    if alike is None or not hits or alike.tensor.shape != answers.shape[1:]:
        return set()
    if not bool(torch.isfinite(alike.tensor).all()):
        return set()
    matched = within(answers[hits], alike.tensor, tolerance, scale).tolist()
    return {n for n, hit in zip(hits, matched, strict=True) if hit}


def _zeros(tensor: torch.Tensor, tolerance: Tolerance, scale: float) -> bool:
    """Whether an answer of zeros would match ``tensor`` within the tolerance."""
    return bool(within(torch.zeros_like(tensor)[None], tensor, tolerance, scale)[0])


MISTAKES: list[Mistake] = []

M = TypeVar("M", bound=type[Mistake])


def register(cls: M) -> M:
    """Add a mistake to the ones every wrong tensor answer is tested for."""
    MISTAKES.append(cls())
    MISTAKES.sort(key=lambda mistake: mistake.order)
    return cls


def mistake_codes() -> frozenset[str]:
    """Every code a registered mistake may diagnose."""
    return frozenset(code for m in MISTAKES for code in (m.code, *m.also))


def indistinct(key: TensorKey, tolerance: Tolerance, codes: Collection[str]) -> list[str]:
    """Those of ``codes`` whose mistake, made on this key, gives an answer within the
    tolerance of the key itself: an answer with that mistake would be judged correct.

    An assignment file's ``distinct_from`` names such mistakes; a student's variant for which
    one of them is indistinct is drawn again (``grading/catalogue.py``).
    """
    scale = key_scale(key.tensor)
    found: list[str] = []
    for code, tensor in _made(key, codes):
        if code not in found and bool(within(tensor[None], key.tensor, tolerance, scale)[0]):
            found.append(code)  # judged so
    return found


def _made(key: TensorKey, codes: Collection[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Each of ``codes`` with the answer its mistake gives on this key, of the key's shape
    (the answers ``distinct_from`` screens), in the mistakes' order."""
    shape = tuple(key.tensor.shape)
    for mistake in MISTAKES:
        if not set(codes) & {mistake.code, *mistake.also}:
            continue
        for candidate in mistake.candidates(key, shape):
            code = candidate.code or mistake.code
            if code in codes and tuple(candidate.tensor.shape) == shape:
                yield code, candidate.tensor


def applicable(key: TensorKey, codes: Collection[str]) -> list[str]:
    """Those of ``codes`` whose mistake, made on this key, gives an answer of its shape at all:
    the others (a recurrent mistake on a convolution's key) can never be screened for by
    ``distinct_from``, nor told."""
    return sorted({code for code, _ in _made(key, codes)})


def diagnose(
    key: TensorKey, answers: torch.Tensor, tolerance: Tolerance, work: Work | None = None
) -> list[list[Diagnosis]]:
    """The mistakes each wrong answer (stacked as ``(N, *shape)``) makes, at most one per code.

    Args:
        key: the key, with its source when a model computed it.
        answers: wrong answers of one shape, float64 on the CPU.
        tolerance: the check's tolerance, used to match answers with candidates.
        work: what the diagnosis may spend (``MAX_DIAGNOSIS_ELEMENTS`` and no deadline if
            None); it is charged with what was spent.

    Returns:
        For each answer, its diagnoses in the order of ``MISTAKES``, each said to be one of
        several where more than one matches (``alternatives``); a mistake whose candidates the
        budget does not reach is not diagnosed.
    """
    work = Work() if work is None else work
    results: list[list[Diagnosis]] = [[] for _ in range(answers.shape[0])]
    seen = Seen()
    for mistake in MISTAKES:
        part = work.part(mistake.share)
        matched = mistake.match(key, answers, tolerance, seen, part)
        work.take(part)
        for n, found in enumerate(matched):
            if found is not None and all(d.code != found.code for d in results[n]):
                results[n].append(found)
    return [alternatives(found) for found in results]


def alternatives(found: list[Diagnosis]) -> list[Diagnosis]:
    """The diagnoses of one answer as they are told: where several mistakes each give the
    answer, none is stated as a fact (only one of them can be the student's, and nothing
    tells which); each keeps its code and says it is one of them.

    Example:
        >>> found = [Diagnosis("a", "You did A."), Diagnosis("b", "You did B.")]
        >>> alternatives(found)[1].message
        'Your answer fits 2 mistakes; if yours is this one, you did B.'
    """
    if len(found) < 2:
        return found
    lead = f"Your answer fits {len(found)} mistakes; if yours is this one, "
    return [Diagnosis(d.code, lead + _lowered(d.message)) for d in found]


def _lowered(sentence: str) -> str:
    """``sentence`` to follow a comma: its first word in lower case, unless it is a symbol
    (``W_x``, ``L``) rather than a capitalised word."""
    first = sentence.split(" ", 1)[0]
    if len(first) > 1 and first[0].isupper() and first[1:].isalpha() and first[1:].islower():
        return sentence[0].lower() + sentence[1:]
    return sentence


AXIS_WORDS = {
    "L": "the length L",
    "H": "the height H",
    "W": "the width W",
    "L_out": "the length L_out",
    "H_out": "the height H_out",
    "W_out": "the width W_out",
    "F": "the filters F",
    "C": "the channels C",
    "K": "the kernel taps K",
    "KH": "the kernel rows KH",
    "KW": "the kernel columns KW",
    "T": "the time steps T",
    "m": "the hidden units m",
    "n": "the features n",
    "k+1": "the k+1 attended terms",
}
"""How a sentence names an axis of one of a Jacobian's tensors, by its symbol."""


def _axis(key: TensorKey, index: int) -> str:
    """An axis as a student reads it. A Jacobian's axes are labelled with their tensor
    (``x:L``), a label of the service's, not the homework's: said in words, "the length L of
    x"; any other axis by its symbol alone (``L_out``, ``T``), as the homework names it."""
    tensor, _, symbol = key.axis(index).rpartition(":")
    if not tensor:
        return symbol
    return f"{AXIS_WORDS.get(symbol, f'the axis {symbol}')} of {tensor}"


def _names(key: TensorKey, axes: tuple[int, ...]) -> str:
    return ", ".join(_axis(key, a) for a in axes)


def _gradient(key: TensorKey, name: str) -> str:
    """A tensor of a backward pass as a student reads it: ``dl/dx`` for the gradient against an
    argument, an extra answer by its name in words (never a field name: ``state_grads``)."""
    assert key.source is not None
    extra = key.source.model.extra(name)
    if extra is not None:
        return extra.called
    return f"dl/d{key.called(name)}"


@register
class AllZeros(Mistake):
    """An answer of zeros only, where the key is not: an array never filled, a result never
    written back. Said plainly rather than explained by a mistake whose result is zero."""

    code = "all_zeros"
    order = 5

    def match(
        self, key: TensorKey, answers: torch.Tensor, tolerance: Tolerance, seen: Seen, work: Work
    ) -> list[Diagnosis | None]:
        count = answers.shape[0]
        scale = key_scale(key.tensor)
        # One number answered 0 is just a wrong number: "all zeros" would say nothing more.
        # An answer of another shape is not told whether the key is zeros.
        if (
            math.prod(answers.shape[1:]) < 2
            or tuple(answers.shape[1:]) != tuple(key.tensor.shape)
            or _zeros(key.tensor, tolerance, scale)
        ):
            return [None] * count
        # Zeros as the other candidates are skipped: within the tolerance of the key (1e-17
        # is a zero left by rounding).
        atol = tolerance.effective_atol(scale)
        zeros = (answers.reshape(count, -1).abs() <= atol).all(dim=1).tolist()
        message = (
            "Your answer is all zeros, and the key is not: check that the result is computed "
            "into the array you return (an array left as it was created, or a loop that never "
            "writes to it?)."
        )
        return [Diagnosis(self.code, message) if zero else None for zero in zeros]


@register
class WrongArgument(Mistake):
    """dy/dx given where dy/dW is asked (or the reverse); another gradient or output."""

    code = "wrong_argument"
    order = 10

    def candidates(self, key: TensorKey, shape: Shape) -> Iterator[Candidate]:
        source = key.source
        if source is None:
            return
        # The tensors as the question calls them (W, not weight): what the student read.
        called = key.called
        if source.op == "jacobian":
            of, wrt = source.of, source.wrt
            asked_of, asked_wrt = called(of), called(wrt)
            outputs = source.prepared.output_shapes
            for name, arg in source.prepared.args.items():
                if name != wrt and (*outputs[of], *arg.shape) == shape:
                    jacobian = source.jacobian(of, name)
                    if jacobian is not None:
                        other = called(name)
                        yield Candidate(
                            jacobian,
                            f"This is d{asked_of}/d{other}, the Jacobian against {other}; the "
                            f"question asks for d{asked_of}/d{asked_wrt}, against {asked_wrt}.",
                        )
            for name, out_shape in outputs.items():
                if name != of and (*out_shape, *source.prepared.args[wrt].shape) == shape:
                    jacobian = source.jacobian(name, wrt)
                    if jacobian is not None:
                        other = called(name)
                        yield Candidate(
                            jacobian,
                            f"This is d{other}/d{asked_wrt}, the Jacobian of {other}; the "
                            f"question asks for d{asked_of}/d{asked_wrt}.",
                            "wrong_output",
                        )
            return
        for name, tensor in source.tensors.items():
            if name == source.select or tuple(tensor.shape) != shape:
                continue
            if source.op == "backward":
                yield Candidate(
                    tensor,
                    f"This is {_gradient(key, name)}; the question asks for "
                    f"{_gradient(key, source.select)}.",
                )
            else:
                yield Candidate(
                    tensor,
                    f"This is {called(name)}; the question asks for {called(source.select)}.",
                    "wrong_output",
                )


@register
class SignFlipped(Mistake):
    code = "sign_flipped"
    order = 30
    family = "scale"

    def candidates(self, key: TensorKey, shape: Shape) -> Iterator[Candidate]:
        yield Candidate(
            -key.tensor,
            "Your answer is the negative of the key: the sign is flipped (a minus sign lost "
            "or added, or the difference taken the other way round).",
        )


def _nice_factor(value: float) -> Fraction | None:
    """``value`` as a simple fraction (denominator at most 64), or None if it is not one."""
    if not math.isfinite(value) or value == 0:
        return None
    fraction = Fraction(value).limit_denominator(64)
    if fraction in (0, 1, -1) or abs(fraction.numerator) > 10**6:
        return None
    if abs(float(fraction) - value) > 1e-3 * abs(value):
        return None
    return fraction


@register
class ConstantFactor(Mistake):
    """x2, x1/2, xN: the factor is fitted per answer, then the scaled key must match."""

    code = "constant_factor"
    order = 31
    family = "scale"

    def match(
        self, key: TensorKey, answers: torch.Tensor, tolerance: Tolerance, seen: Seen, work: Work
    ) -> list[Diagnosis | None]:
        found: list[Diagnosis | None] = [None] * answers.shape[0]
        size = key.tensor.numel()
        scale = key_scale(key.tensor)
        magnitude = key.tensor.abs()
        beyond_zero = magnitude > tolerance.effective_atol(scale) + tolerance.rtol * magnitude
        if int(beyond_zero.sum()) <= 1:
            # Any number is some multiple of a one-number key, or of a key with one entry that
            # an answer of zero would not match (an answer with that entry set, zeros
            # elsewhere): "31/30 times the key" is then a ratio, not a mistake, and it states
            # the key.
            return found
        # The fit is one pass over the answers, charged as a candidate; so is each factor.
        if tuple(answers.shape[1:]) != tuple(key.tensor.shape) or not work.afford(size):
            return found
        flat_key = key.tensor.reshape(-1)
        norm = float(flat_key @ flat_key)
        if norm == 0:
            return found
        fitted = (answers.reshape(answers.shape[0], -1) @ flat_key / norm).tolist()
        by_factor: dict[Fraction, list[int]] = {}
        for n, value in enumerate(fitted):
            factor = _nice_factor(value)
            if factor is not None:
                by_factor.setdefault(factor, []).append(n)
        for factor, rows in by_factor.items():
            if not work.afford(size):
                break
            target = float(factor) * key.tensor
            # The tolerance scales with the factor: the candidate's own magnitude.
            if seen.has(target, self.kin):
                continue
            hits = within(answers[rows], target, tolerance, scale * abs(float(factor)))
            if bool(hits.any()):
                seen.add(target, self.kin)
            message = self._message(factor, key)
            for n, hit in zip(rows, hits.tolist(), strict=True):
                if hit:
                    found[n] = Diagnosis(self.code, message)
        return found

    @staticmethod
    def _message(factor: Fraction, key: TensorKey) -> str:
        size = abs(factor) if abs(factor).denominator == 1 else 1 / abs(factor)
        shown = str(abs(factor))
        text = (
            f"Your answer is {shown} times the key: off by a constant factor of {shown}"
            if factor > 0
            else f"Your answer is -{shown} times the key: the sign is flipped and it is off by "
            f"a factor of {shown}"
        )
        named = _sized(key, int(size)) if size.denominator == 1 and size > 1 else []
        if named:
            which = "it" if len(named) == 1 else "one of them"
            text += (
                f" ({size} is the size of {_of(named)}: a sum or a mean over "
                f"{which}, or a term counted that many times?)"
            )
        elif abs(factor) == 2:
            text += " (a term counted twice?)"
        elif abs(factor) == Fraction(1, 2):
            text += " (a mean where a sum belongs, or a factor 1/2 too many?)"
        return text + "."


SUMMED_AXES = {
    "L_out": "the output positions L_out",
    "H_out": "the output rows H_out",
    "W_out": "the output columns W_out",
    "T": "the time steps T",
    "F": "the filters F",
    "C": "the input channels C",
    "K": "the kernel taps K",
    "KH": "the kernel rows KH",
    "KW": "the kernel columns KW",
    "m": "the hidden units m",
    "n": "the input features n",
    "k+1": "the k+1 attended terms",
}
"""How a factor's message names an axis that the key's computation sums away (it is none of
the key's own axes, which are named by their symbol alone)."""


def _of(names: list[str]) -> str:
    """``A``, ``A and of B``, ``A, of B and of C``: every axis a size could be."""
    if len(names) == 1:
        return names[0]
    return ", of ".join(names[:-1]) + " and of " + names[-1]


def _sized(key: TensorKey, size: int) -> list[str] | None:
    """The axes of ``size`` that a sum or a mean may have run over: the key's own, and the
    ones its computation sums away (``_summed_away``). Empty when none; None when it cannot
    be told (a key given as a value, whose sums are unknown): naming one axis where another
    of the same size may be the one would mislead."""
    summed = _summed_away(key)
    if summed is None:
        return None
    named: list[str] = []
    for axis, n in enumerate(key.tensor.shape):
        name = _axis(key, axis)
        if n == size and name not in named:
            named.append(name)
    for symbol, sizes in summed.items():
        if size in sizes:
            if len(sizes) > 1:
                return None  # a symbol of several sizes (k+1 of AttentionRNN(inf)): unclear
            named.append(SUMMED_AXES.get(symbol, symbol))
    return named


def _summed_away(key: TensorKey) -> dict[str, set[int]] | None:
    """The axes that the key's computation sums away, each symbol with the sizes it has in the
    request: for a backward pass, the axes of the upstream gradients that the key lacks (the
    chain rule sums over every output entry: dl/dW of a convolution sums over the output
    positions L_out, of an RNN over the time steps T); for a forward pass, the axes of the
    parameters and inputs that the output lacks, but the input positions (which the output's
    positions replace). A Jacobian or the state Jacobians sum nothing away (each entry is one
    derivative). None where unknown: a key given as a value."""
    source = key.source
    if source is None:
        return None
    model, prepared = source.model, source.prepared
    sizes: dict[str, set[int]] = {}
    shapes = [
        (spec.shape, tuple(t.shape))
        for spec in model.arguments
        if (t := prepared.args.get(spec.name)) is not None
    ]
    shapes += [(model.output(name).shape, shape) for name, shape in prepared.output_shapes.items()]
    for symbols, shape in shapes:
        if len(symbols) == len(shape):
            for symbol, n in zip(symbols, shape, strict=True):
                sizes.setdefault(symbol, set()).add(n)
    own = {_symbol(key.axis(a)) for a in range(key.tensor.dim())}
    if source.op == "backward":
        summed = {s for name in source.grad_outputs for s in model.output(name).shape}
    elif source.op == "forward":
        summed = {s for spec in model.arguments if spec.name in prepared.args for s in spec.shape}
        summed -= POSITION_AXES
    else:
        return {}
    return {symbol: sizes[symbol] for symbol in summed - own if symbol in sizes}


@register
class AxesPermuted(Mistake):
    """Transposed or re-ordered axes, including the two halves of a Jacobian swapped.

    The orders are tried most likely first: the halves of a Jacobian swapped, the last two
    axes swapped (a matrix transposed), every axis reversed (a column-major layout), two axes
    swapped, then the others; a large key reaches only the first few within its ``share``.
    """

    code = "axes_permuted"
    order = 40
    family = "layout"
    also = ("jacobian_halves_swapped", "transposed")
    share = 0.5

    def candidates(self, key: TensorKey, shape: Shape) -> Iterator[Candidate]:
        tensor = key.tensor
        rank = tensor.dim()
        if rank < 2 or len(shape) != rank or sorted(shape) != sorted(tensor.shape):
            return
        halves = self._halves(key)
        last_two = _swap(rank, rank - 2, rank - 1)
        reversal = tuple(reversed(range(rank)))
        orders = (
            itertools.permutations(range(rank))
            if rank <= MAX_PERMUTED_RANK
            else [
                *([halves] if halves is not None else []),
                last_two,
                reversal,
                *(_swap(rank, a, b) for a, b in itertools.combinations(range(rank), 2)),
            ]
        )

        def moved(order: tuple[int, ...]) -> tuple[int, ...]:
            """The axes of size above 1 in ``order``: all that sets the candidate's numbers."""
            return tuple(a for a in order if tensor.shape[a] != 1)

        def simplicity(order: tuple[int, ...]) -> tuple[bool, bool]:
            return order != halves, sum(a != b for a, b in enumerate(order)) != 2

        # Size-1 axes let several orders give the same numbers: each is made once, under the
        # simplest explanation (halves swapped, then two axes swapped).
        best: dict[tuple[int, ...], tuple[int, ...]] = {}
        for order in orders:
            numbers = moved(order)
            if tuple(tensor.shape[a] for a in order) != shape or numbers == tuple(sorted(numbers)):
                continue  # another shape, or only axes of size 1 moved (a reshape, not this)
            if numbers not in best or simplicity(order) < simplicity(best[numbers]):
                best[numbers] = order
        likely = [moved(o) for o in (halves, last_two, reversal) if o is not None]

        def likelihood(numbers: tuple[int, ...]) -> tuple[int, bool]:
            rank_of = likely.index(numbers) if numbers in likely else len(likely)
            return rank_of, simplicity(best[numbers])[1]

        for numbers in sorted(best, key=likelihood):
            order = best[numbers]
            yield self._candidate(key, order, order == halves)

    @staticmethod
    def _halves(key: TensorKey) -> tuple[int, ...] | None:
        """The order that swaps a Jacobian's output axes and argument axes."""
        source = key.source
        if source is None or source.op != "jacobian":
            return None
        split, rank = len(source.prepared.output_shapes[source.of]), key.tensor.dim()
        return (*range(split, rank), *range(split))

    def _candidate(self, key: TensorKey, order: tuple[int, ...], halves: bool) -> Candidate:
        permuted = key.tensor.permute(order).contiguous()
        source = key.source
        if halves and source is not None:
            of, wrt = key.called(source.of), key.called(source.wrt)
            return Candidate(
                permuted,
                # Diagnoses may reach students: no sizes of the key (the dimension of a
                # Jacobian can be the question); the report gives them to instructors.
                f"The two halves of the Jacobian's shape are swapped: you laid it out as the "
                f"shape of {wrt} followed by the shape of {of}; d{of}/d{wrt} is the shape of "
                f"{of} followed by the shape of {wrt}.",
                "jacobian_halves_swapped",
            )
        swapped = [a for a, b in enumerate(order) if a != b]
        if len(swapped) == 2:
            a, b = swapped
            return Candidate(
                permuted,
                f"Your answer is the key transposed: axes {a} ({_axis(key, a)}) and {b} "
                f"({_axis(key, b)}) are swapped.",
                "transposed",
            )
        return Candidate(
            permuted,
            f"Your answer has the right numbers with the axes in another order: yours are "
            f"({_names(key, order)}), the key's are ({_names(key, tuple(range(len(order))))}).",
        )


def _swap(rank: int, a: int, b: int) -> tuple[int, ...]:
    order = list(range(rank))
    order[a], order[b] = order[b], order[a]
    return tuple(order)


@register
class Reshaped(Mistake):
    code = "reshaped"
    order = 50
    family = "layout"

    def candidates(self, key: TensorKey, shape: Shape) -> Iterator[Candidate]:
        tensor = key.tensor
        if shape != tuple(tensor.shape) and math.prod(shape) == tensor.numel():
            yield Candidate(
                tensor.reshape(shape),
                f"Your numbers are right and in the right order, but your answer's shape "
                f"{list(shape)} is not the shape asked for: reshape it (row-major, the numbers "
                "in the same order).",
            )


@register
class ColumnMajor(Mistake):
    """Numbers laid out in column-major (Fortran) order where row-major (C) is the rule."""

    code = "column_major"
    order = 51
    family = "layout"

    def candidates(self, key: TensorKey, shape: Shape) -> Iterator[Candidate]:
        tensor = key.tensor
        if math.prod(shape) != tensor.numel() or max(len(shape), tensor.dim()) < 2:
            return
        if shape == tuple(reversed(tensor.shape)):
            return  # a column-major read into the reversed shape is the transpose (above)
        reverse = tuple(reversed(range(tensor.dim())))
        as_rows = tensor.reshape(shape)
        message = (
            "Your numbers are the key's in column-major (Fortran) order: lay them out "
            "row-major (C order, numpy's default), last index fastest."
        )
        read_by_columns = tensor.permute(reverse).reshape(shape)
        if not torch.equal(read_by_columns, as_rows):
            yield Candidate(read_by_columns, message)
        filled_by_columns = tensor.reshape(tuple(reversed(shape))).permute(
            tuple(reversed(range(len(shape))))
        )
        if not torch.equal(filled_by_columns, as_rows):
            yield Candidate(filled_by_columns.contiguous(), message)


def _shift(tensor: torch.Tensor, axis: int, delta: int, wrap: bool) -> torch.Tensor:
    """``out[..., i, ...] = tensor[..., i + delta, ...]``, zero (or wrapped) past the ends."""
    if wrap:
        return torch.roll(tensor, -delta, dims=axis)
    out = torch.zeros_like(tensor)
    size = tensor.shape[axis]
    if delta > 0:
        out.narrow(axis, 0, size - delta).copy_(tensor.narrow(axis, delta, size - delta))
    else:
        out.narrow(axis, -delta, size + delta).copy_(tensor.narrow(axis, 0, size + delta))
    return out


@register
class OffByOne(Mistake):
    """An index one position or one time step off.

    Along a convolution's positions: the seed's 1-based ``2i-1+m`` read with 0-based arrays.
    Along time: the homework's 1-based ``h[1..T]`` stored in the 0-based rows ``0..T-1``
    one row off (row t-1 holding h[t-1], h[0] included, instead of h[t]).

    First the key shifted by one step along a time axis (a student's rows one step off); then
    the reference recomputed with an input read one position or step later or earlier; then
    the key shifted by one along each other axis. With h[0] = 0 the states one row off (h[0]
    included) are also the reference with x read one step earlier: an answer that both give
    is told as one of the two, neither as a fact (``Candidate.alike``).
    """

    code = "off_by_one"
    order = 60
    hint = "an off-by-one index, such as the seed's 1-based 2i-1+m used with 0-based arrays"
    plain_hint = "an off-by-one index (a 1-based index used with 0-based arrays?)"
    """Along an axis of a recurrent model other than time (its hidden units, say)."""

    @staticmethod
    def time_hint(item: str = "h") -> str:
        """The hint for a time axis: the homework counts steps from 1, rows count from 0."""
        return (
            f"an off-by-one time index, such as the homework's 1-based {item}[1..T] stored in "
            f"the 0-based rows 0..T-1 (row t-1 holds {item}[t])"
        )

    def candidates(self, key: TensorKey, shape: Shape) -> Iterator[Candidate]:
        if shape != tuple(key.tensor.shape):
            return
        axes = [axis for axis, size in enumerate(shape) if size >= 2]
        timed = [axis for axis in axes if _symbol(key.axis(axis)) in TIME_AXES]
        # Each recomputation once: the states one row off compare with x read one step
        # earlier before that is yielded as a candidate of its own.
        reads: dict[tuple[str, int, int], Candidate | None] = {}
        for axis in timed:
            yield from self._shifted_steps(key, axis, reads)
        yield from self._shifted_inputs(key, reads)
        hint = self.plain_hint if _recurrent(key) else self.hint
        for axis in axes:
            if axis in timed:
                continue
            for delta in (1, -1):
                where = "later" if delta > 0 else "earlier"
                yield Candidate(
                    _shift(key.tensor, axis, delta, wrap=False),
                    f"Your answer is the key read one position {where} along {_axis(key, axis)}: "
                    f"{hint}.",
                )
                yield Candidate(
                    _shift(key.tensor, axis, delta, wrap=True),
                    f"Your answer is the key read one position {where} along {_axis(key, axis)}, "
                    f"wrapping around at the end (a negative index): {hint}.",
                )

    def _shifted_steps(
        self, key: TensorKey, axis: int, reads: dict[tuple[str, int, int], Candidate | None]
    ) -> Iterator[Candidate]:
        """The key one time step off along ``axis``: in the homework's terms where the rows
        are the steps of a tensor the question names (row t-1 holds h[t])."""
        tensor = key.tensor
        item = _stepped(key) if axis == 0 else None
        if item is None:
            name = _axis(key, axis)
            for delta in (1, -1):
                where = "later" if delta > 0 else "earlier"
                ends = (
                    "the first step left out, zeros last"
                    if delta > 0
                    else "zeros first, the last step left out"
                )
                yield Candidate(
                    _shift(tensor, axis, delta, wrap=False),
                    f"Your answer is the key read one time step {where} along {name} (step "
                    f"t{delta:+d} where step t belongs; {ends}): {self.time_hint()}.",
                )
                yield Candidate(
                    _shift(tensor, axis, delta, wrap=True),
                    f"Your answer is the key read one time step {where} along {name}, "
                    f"wrapping around at the end (a negative index): {self.time_hint()}.",
                )
            return
        rows = (
            f"Your rows are one time step off: row t-1 must hold {item}[t] (the homework's "
            f"{item}[1..T]); yours hold"
        )
        earlier = _shift(tensor, 0, -1, wrap=False)
        initial = _initial_state(key)
        # The states one row off are the reference with x read one step earlier wherever the
        # step on x[0] = 0 from h[0] gives h[0] again (h[0] = 0): which one the student did,
        # nothing tells. Compared by the tolerance, as the answers are.
        read = self._read_earlier(key, reads) if initial is not None else None
        if initial is not None:
            first = earlier.clone()
            first[0] = initial
            message = f"{rows} {item}[t-1] ({item}[0] included, {item}[T] left out)."
            yield Candidate(first, message, alike=_one_of(message, read))
        if initial is None or bool(initial.any()):
            message = f"{rows} {item}[t-1] (a row of zeros first, {item}[T] left out)."
            yield Candidate(earlier, message, alike=_one_of(message, read))
        yield Candidate(
            _shift(tensor, 0, 1, wrap=False),
            f"{rows} {item}[t+1] ({item}[1] left out, a row of zeros last).",
        )
        yield Candidate(
            _shift(tensor, 0, -1, wrap=True),
            f"{rows} {item}[t-1], with {item}[T] in row 0 (the index -1 wraps around to the "
            "last row).",
        )
        yield Candidate(
            _shift(tensor, 0, 1, wrap=True),
            f"{rows} {item}[t+1], with {item}[1] in the last row (the index wraps around at "
            "the end).",
        )

    def _shifted_inputs(
        self, key: TensorKey, reads: dict[tuple[str, int, int], Candidate | None]
    ) -> Iterator[Candidate]:
        source = key.source
        if source is None:
            return
        args = source.prepared.args
        for spec in source.model.inputs:
            if spec.name not in args:
                continue
            for axis, symbol in enumerate(spec.shape):
                timed = symbol in TIME_AXES
                if not (timed or symbol in POSITION_AXES) or args[spec.name].shape[axis] < 2:
                    continue
                for delta in (1, -1):
                    candidate = self._read(key, spec.name, axis, delta, reads)
                    if candidate is not None:
                        yield candidate

    def _read_earlier(
        self, key: TensorKey, reads: dict[tuple[str, int, int], Candidate | None]
    ) -> Candidate | None:
        """The reference with the time-stepped input (x) read one step earlier, if any."""
        source = key.source
        if source is None:
            return None
        for spec in source.model.inputs:
            given = source.prepared.args.get(spec.name)
            if given is None:
                continue
            for axis, symbol in enumerate(spec.shape):
                if symbol in TIME_AXES and given.shape[axis] >= 2:
                    return self._read(key, spec.name, axis, -1, reads)
        return None

    def _read(
        self,
        key: TensorKey,
        name: str,
        axis: int,
        delta: int,
        reads: dict[tuple[str, int, int], Candidate | None],
    ) -> Candidate | None:
        """The reference recomputed with input ``name`` read ``delta`` along ``axis`` (made
        once per diagnosis: ``reads``); None where it cannot be computed."""
        if (name, axis, delta) in reads:
            return reads[name, axis, delta]
        source = key.source
        assert source is not None
        args = source.prepared.args
        symbol = source.model.argument(name).shape[axis]
        tensor = source.compute({**args, name: _shift(args[name], axis, delta, wrap=False)})
        called = key.called(name)
        where = "later" if delta > 0 else "earlier"
        if symbol in TIME_AXES:
            message = (
                f"Your answer is the reference computed with {called}[t] read one "
                f"step {where} ({called}[t{delta:+d}] in place of {called}[t]): "
                f"{self.time_hint(called)}."
            )
        else:
            message = (
                f"Your answer is the reference computed with {called} read one "
                f"position {where} along {symbol} (its index off by {delta:+d}): "
                f"{self.hint}."
            )
        made = None if tensor is None else Candidate(tensor, message)
        reads[name, axis, delta] = made
        return made


def _one_of(message: str, other: Candidate | None) -> Candidate | None:
    """``other`` told together with the mistake of ``message``, as one of the two."""
    if other is None:
        return None
    return Candidate(
        other.tensor,
        f"Your answer fits 2 mistakes one time step off, one of these: {_lowered(message)} "
        f"Or {_lowered(other.message)}",
    )


def _symbol(name: str) -> str:
    """The symbol of an axis name: a Jacobian's axes are named with their tensor (``h:T``)."""
    return name.rpartition(":")[2]


def _recurrent(key: TensorKey) -> bool:
    """Whether the key's model steps through time (an input with a time axis)."""
    source = key.source
    return source is not None and any(TIME_AXES & set(spec.shape) for spec in source.model.inputs)


def _stepped(key: TensorKey) -> str | None:
    """What the question calls the tensor whose rows are the time steps of the key (``h``
    for h[t] in row t-1, ``dl/dx`` for dl/dx[t]), or None where the key is another tensor (a
    Jacobian, the gradients through time) or its first axis is not time."""
    source = key.source
    if source is None or _symbol(key.axis(0)) not in TIME_AXES:
        return None
    if source.op == "forward":
        return key.called(source.select)
    if source.op == "backward" and source.select in source.prepared.args:
        return f"dl/d{key.called(source.select)}"
    return None


def _initial_state(key: TensorKey) -> torch.Tensor | None:
    """h[0], where the key is the states h[t] of a recurrent model: its ``h0`` when given,
    else zeros (both recurrent models call their state h, and h[t] = 0 for t < 1)."""
    source = key.source
    if source is None or source.op != "forward" or source.select != "h" or not _recurrent(key):
        return None
    given = source.prepared.args.get("h0")
    row = torch.zeros_like(key.tensor[0])
    if given is not None and tuple(given.shape) == tuple(row.shape):
        row = given.detach().to(device="cpu", dtype=row.dtype)
    return row


@register
class SummedAxis(Mistake):
    """A batch, time or position axis summed (or averaged) away."""

    code = "summed_axis"
    order = 70

    def candidates(self, key: TensorKey, shape: Shape) -> Iterator[Candidate]:
        tensor = key.tensor
        if len(shape) != tensor.dim() - 1:
            return
        for axis in range(tensor.dim()):
            if tuple(tensor.shape[:axis] + tensor.shape[axis + 1 :]) != shape:
                continue
            if tensor.shape[axis] == 1:
                continue  # nothing to sum: the axis dropped is the key reshaped (above)
            name = _axis(key, axis)
            yield Candidate(
                tensor.sum(dim=axis),
                f"Your answer is the key summed over axis {axis} ({name}): that axis was summed "
                f"away; the answer keeps one entry per {name}.",
            )
            yield Candidate(
                tensor.mean(dim=axis),
                f"Your answer is the key averaged over axis {axis} ({name}): that axis was "
                f"averaged away; the answer keeps one entry per {name}.",
            )

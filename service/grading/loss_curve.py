"""Diagnosing a loss curve the way the seed's part 1.3 does.

The homework's curve of a 4-class sequence classifier had spikes: its ``train()`` returned
the *last* batch's ``loss.item()`` instead of the mean over the epoch's batches (problem 1),
and some spikes rose above the initial loss log 4 because cross-entropy costs -log p of the
true class, which a confident wrong prediction makes larger than chance does (problem 2).

Given every batch's loss of every epoch, this module computes both curves (epoch means and
last batches), finds the spikes of the last-batch curve, and explains them in those terms, or
as the training's own where the epoch's typical batch jumps or several of its batches spike
(a learning rate too high; problem 3's clipping). It also reads the curve as a whole: a loss
that rises over training (divergence, or another curve given as the loss), in particular one
that rises from 1/C within [0, 1], which is the accuracy curve (problem 4 reads the loss at
log C and the accuracy at 1/C), as is one that rises within [0, 1] from above 1/C for 3
classes or more, whose loss starts above 1; a loss that falls and climbs back (overfitting,
or instability); and one that swings back to chance every epoch.
No HTTP and no torch (numpy reads a long curve as a whole).

Example:
    >>> d = diagnose([[1.41, 1.38, 1.35], [1.1, 0.9, 3.4]], 4)
    >>> d.spikes, [round(m, 3) for m in d.epoch_mean], d.looks_like_last_batch_reporting
    ([1], [1.38, 1.8], True)
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np
import numpy.typing as npt

from models.errors import ModelError

_Floats = npt.NDArray[np.float64]
_Ints = npt.NDArray[np.int64]
_Bools = npt.NDArray[np.bool_]

# A last batch is an outlier of its epoch when it sits more than OUTLIER_SIGMAS standard
# deviations of the epoch's other batches above their mean, and by more than
# OUTLIER_MARGIN * log C: the margin keeps an epoch of nearly equal batches from being flagged
# for a difference nobody would see on the plot. log C, the loss at chance, sets the scale.
# Only above: a last batch below the others is what a loss falling within the epoch gives
# (a two-sided test flagged over half of such curves of 2 to 3 batches an epoch). At least
# two other batches: one has no standard deviation, and the margin alone would call the later
# of two batches an outlier whenever batch noise makes it the higher by 0.25 log C.
OUTLIER_SIGMAS = 3.0
OUTLIER_MARGIN = 0.25
# A reported value is above the initial loss when it exceeds it by more than this times log C,
# so that the noise of an untrained model's batches around log C is not called a spike.
ABOVE_INITIAL_MARGIN = 0.1
# An epoch whose median batch loss exceeds both neighbouring epochs' medians by more than this
# times log C is a jump of the training itself, not of the reporting. The median, because one
# outlying batch moves the mean (that is last-batch reporting's symptom, not instability); and
# of at least TYPICAL_BATCHES batches, since the median of one or two is no typical batch.
JUMP_MARGIN = 0.25
TYPICAL_BATCHES = 3
# A curve of one value per epoch, what students usually have, has no median batch: the curve's
# own noise stands in for it. An epoch jumps when its value exceeds both neighbours' by more
# than JUMP_MARGIN * log C, and its rise above their mean by more than JUMP_SIGMAS standard
# deviations of the same rise at the other epochs: ROBUST_SD times its median absolute value,
# which the few jumps among them do not move. That rise is noise (and a little curvature,
# which makes the estimate cautious), where the differences between epochs are mostly the
# trend. The epochs beside the jump are left out (its jump moves their rises), so one at
# least two epochs away is needed. A smooth falling curve never rises above its neighbours;
# one that zigzags by as much all along is that noisy (a margin alone flagged its every peak).
JUMP_SIGMAS = 3.0
ROBUST_SD = 1.4826  # standard deviation over median absolute deviation, for normal noise
# An epoch spikes again and again when several of its batches, not one, sit far above both its
# typical (median) batch and the initial loss: by more than SPIKING_MARGIN * log C, and by more
# than SPIKING_SIGMAS robust standard deviations of the epoch's batches (ROBUST_SD times their
# median absolute deviation from the median). One such batch is the seed's case, confident
# mistakes that the last-batch curve shows when it is the last (problems 1 and 2); several in
# one epoch are the training thrown off again and again, a learning rate too high, which the
# epoch mean carries too. The median alone hides them (Adam at lr = 1 had 2 to 5 of 19 batches
# at 2.5 to 44, and every other batch near 0, so a median and a spread of 0). Above the initial
# loss as well: in every healthy run, epoch 1's first batches, still near log C while the rest
# of the epoch has learned, sit far above its median. Above the epoch's own spread: the loss of
# small batches has a heavy tail, the more so with noisy labels, whose confident mistakes a
# batch of 8 may hold several of. Healthy runs of SGD on batches of 8 (2 to 10 classes, up to
# 30% of labels noisy) had epochs of 96 to 128 batches with 5 to 7 of them up to 2.1 log C above
# the initial loss (a margin in log C alone would have to be larger than the Adam run's
# spikes), but never more than 4.3 robust standard deviations above their median. Several: at
# least SPIKING_BATCHES, and at least SPIKING_SHARE of the epoch's batches.
SPIKING_MARGIN = 0.5
SPIKING_SIGMAS = 10.0
SPIKING_BATCHES = 2
SPIKING_SHARE = 0.05
# How far the first epoch's mean loss may sit from log C (at least 0.15 nats below and 0.3
# above, or this fraction of log C for many classes) and its accuracy from 1/C, and still read
# as "at chance".
INITIAL_LOSS_TOLERANCE = 0.1
INITIAL_LOSS_TOLERANCE_MIN = 0.15
# Wider above: random initial logits put an untrained model above log C, never below it but by
# the noise of its batches. Logits of standard deviation s cost about log C + s^2/2 (1 - 1/C);
# PyTorch's default init of a linear layer, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), gives logits
# of variance about E[x^2]/3 for inputs x, s near 0.6 on standardised inputs: 0.13 to 0.18
# nats above log C for 4 to 100 classes, and a default linear classifier of 4 classes started
# at 1.46 to 1.58 over 30 seeds (log 4 = 1.386). 0.3 nats is logits of s near 0.9 for 4
# classes and 0.8 for 100; weights 4 times too large started at 3.78, 10 times at 53.6.
INITIAL_LOSS_TOLERANCE_ABOVE_MIN = 0.3
INITIAL_ACCURACY_TOLERANCE = 0.12
INITIAL_ACCURACY_TOLERANCE_OF_CHANCE = 2.0  # for many classes: within 2/C of 1/C
# A curve rises over training when the median of its late epochs' means (the last third, at
# least two epochs) sits more than RISE_MARGIN * log C above epoch 0's mean, and none of them
# below it: a clear upward trend, where one late spike (a single late epoch) or the noise of a
# flat curve (epoch 0 low by chance) is not. At least RISE_MIN_EPOCHS epochs: two make no trend.
RISE_MARGIN = 0.25
RISE_MIN_EPOCHS = 3
# With one value an epoch, a value above the initial loss may be one batch of confident
# mistakes (the last batch reported) or the whole epoch's mean. The findings offer the second
# reading, a diverging training, where the curve climbs into that value over RISE_MIN_EPOCHS
# epochs or more from its latest minimum, the epoch before it already CLIMB_MARGIN * log C
# above that minimum (a flat curve and then one jump is no climb; SGD whose learning rate
# doubled every epoch went 0.58, 0.60, 0.65, 0.92, then 7.13), or where the value explodes
# past EXPLODED_LOSS * log C: a true class given less than C^-10 on (geometric) average, which
# takes logits blown up (the seed's confident mistakes reached 3 to 4, about 2.5 log 4).
CLIMB_MARGIN = 0.1
EXPLODED_LOSS = 10.0
# The same rise in the units of an accuracy, a quarter of [0, 1], from about 1/C (within the
# tolerance of "near chance" above) and with every value in [0, 1]: the accuracy curve. Not in
# log C: at C = 1000, 0.25 log C is 1.7, more than any accuracy can rise.
ACCURACY_RISE_MARGIN = 0.25
# Without an epoch 0 at chance (logged from epoch 1, or after some training), the same rise
# with most epochs above the first, where log C > 1 (3 classes or more): no untrained model's
# loss lies in [0, 1] there, and one that got below 1 and then climbs by a quarter within it
# is rarer than the accuracy logged as the loss. Not at C = 2, whose loss (log 2 = 0.69) lies
# in [0, 1] all along: there only a start near 1/2 tells.
# A curve that falls and then climbs back: RISE_MIN_EPOCHS epochs or more after its minimum
# (after epoch 0: the curve fell first), the late epochs (all after the minimum) have a median
# more than REBOUND_MARGIN * log C above it, or JUMP_SIGMAS times the curve's noise where that
# is more (as ``mean_jump`` measures it), and none is back at the minimum. A test curve that
# does this overfits; a training curve is unstable or broken. Less than RISE_MARGIN: from 1.00
# back to 1.18 of 4 classes (0.13 log C) is no noise of a smooth curve, while the noise
# margin keeps a flat, noisy curve's lowest epoch from being taken for a turn.
REBOUND_MARGIN = 0.1
# A curve that zigzags: at least ZIGZAG_STEPS steps from epoch to epoch, ZIGZAG_SHARE of them
# turning back from the step before, a median step of more than JUMP_MARGIN * log C, and peaks
# (a median of them) back at chance, within the tolerance of "at chance" below and above
# log C (peaks of 3 to 4 nats at C = 4 are far above chance, not back at it). The training
# undoes what it learned every other epoch: a learning rate too high. No spike of one epoch
# (its noise is the whole curve's), so only a finding says so, and "No spikes" is not said.
ZIGZAG_STEPS = 5
ZIGZAG_SHARE = 0.8
# At most this many epochs are named in a finding and detailed in ``spike_details``: a million
# epochs of alternating spikes made a 114 MB answer (``spikes`` still lists them all).
LISTED_EPOCHS = 12
DETAILED_SPIKES = 1000
# The largest batch loss accepted. A cross-entropy is unbounded when the logits overflow, but
# far below this; the bound keeps every sum and square of the analysis finite (a million
# losses of 1e100 sum to 1e106, their squares to 1e206), where 1e308 would overflow.
MAX_LOSS = 1e100
# A loss from this on is written in a general format (1.673e+07) in the findings.
LARGE_LOSS = 1e6


CurveFlag = Literal["rising_loss", "looks_like_accuracy", "rising_after_minimum"]
"""What the curve as a whole shows (``CurveDiagnosis.curve_flags``): ``rising_loss``, it rises
over training by more than ``RISE_MARGIN`` log C; ``looks_like_accuracy``, it rises by more
than ``ACCURACY_RISE_MARGIN`` from about 1/C (or, for 3 classes or more, with most epochs above
the first, where the accuracies sent beside it, if any, rise too) and never leaves [0, 1];
``rising_after_minimum``, neither, but it falls and then climbs back above its minimum
(see ``REBOUND_MARGIN``)."""


class CurveError(ModelError):
    """A curve that cannot be analysed (empty epochs, negative losses, mismatched series)."""


@dataclass(frozen=True)
class Spike:
    """An epoch whose reported (last-batch) value stands out, and why.

    Attributes:
        epoch: 0-based index of the epoch (row of ``batch_losses``).
        last_batch: the reported value, the epoch's last batch loss.
        epoch_mean: the mean over the epoch's batches.
        others_mean: the mean of the epoch's other batches (``None`` with a single batch).
        others_sd: their standard deviation (``None`` with fewer than two other batches).
        reasons: ``last_batch_outlier`` (far above the epoch's other batches),
            ``above_initial_loss`` (above log C and the first epoch's mean), or
            ``mean_jump`` (the epoch's median batch loss itself jumps above its neighbours',
            and so does its reported value; in a curve of one value per epoch, that value
            jumps above its neighbours' by more than the curve's noise, see ``JUMP_SIGMAS``).
        true_class_probability: exp(-last_batch), the geometric mean over the last batch of
            the probability the model gave the true class.
    """

    epoch: int
    last_batch: float
    epoch_mean: float
    others_mean: float | None
    others_sd: float | None
    reasons: tuple[str, ...]
    true_class_probability: float


@dataclass(frozen=True)
class CurveDiagnosis:
    """What ``diagnose`` finds; see its docstring."""

    num_classes: int
    epoch_mean: list[float]
    last_batch: list[float]
    spikes: list[int]
    spike_details: list[Spike]
    unstable_epochs: list[int]
    curve_flags: list[CurveFlag]
    expected_initial_loss: float
    chance_accuracy: float
    initial_loss: float
    looks_like_last_batch_reporting: bool | None
    accuracy_epoch_mean: list[float] | None
    accuracy_last_batch: list[float] | None
    findings: list[str]


def _check(
    batch_losses: Sequence[Sequence[float]],
    batch_accuracies: Sequence[Sequence[float]] | None,
    num_classes: int,
) -> None:
    if num_classes < 2:
        raise CurveError(
            f"num_classes must be at least 2 (a classifier chooses among classes), got "
            f"{num_classes}",
            "num_classes",
        )
    if not batch_losses:
        raise CurveError(
            "batch_losses has no epochs; give one list of batch losses per epoch", "batch_losses"
        )
    if not (all(map(len, batch_losses)) and _floats_within(batch_losses, 0, MAX_LOSS)):
        _check_losses(batch_losses)
    if batch_accuracies is None:
        return
    if len(batch_accuracies) != len(batch_losses):
        raise CurveError(
            f"batch_accuracies has {len(batch_accuracies)} epochs but batch_losses has "
            f"{len(batch_losses)}; give one accuracy per batch loss",
            "batch_accuracies",
        )
    if _floats_within(batch_accuracies, 0, 1) and list(map(len, batch_accuracies)) == list(
        map(len, batch_losses)
    ):
        return
    _check_accuracies(batch_accuracies, batch_losses)


def _floats_within(rows: Sequence[Sequence[float]], low: float, high: float) -> bool:
    """Whether every value of ``rows`` is a float in [low, high] (NaN is not), checked in numpy:
    the loops that say which value is wrong run only where one is (or where another type than
    float, an int, needs Python's own comparison)."""
    values = list(itertools.chain.from_iterable(rows))
    if not set(map(type, values)) <= {float}:
        return False
    array = np.array(values, dtype=np.float64)
    return bool(np.all((array >= low) & (array <= high)))


def _check_losses(batch_losses: Sequence[Sequence[float]]) -> None:
    for e, losses in enumerate(batch_losses):
        if not losses:
            raise CurveError(
                f"epoch {e} has no batch losses; give at least one per epoch",
                f"batch_losses.{e}",
            )
        for b, loss in enumerate(losses):
            if not 0 <= loss <= MAX_LOSS:  # also false for NaN
                raise CurveError(
                    f"batch {b} of epoch {e} has loss {loss!r}: a cross-entropy loss is a "
                    f"finite number >= 0 (and at most {MAX_LOSS:g} here)",
                    f"batch_losses.{e}.{b}",
                )


def _check_accuracies(
    batch_accuracies: Sequence[Sequence[float]], batch_losses: Sequence[Sequence[float]]
) -> None:
    for e, (accs, losses) in enumerate(zip(batch_accuracies, batch_losses, strict=True)):
        if len(accs) != len(losses):
            raise CurveError(
                f"epoch {e} has {len(accs)} batch accuracies but {len(losses)} batch losses; "
                "give one accuracy per batch loss",
                f"batch_accuracies.{e}",
            )
        for b, acc in enumerate(accs):
            if not 0 <= acc <= 1:
                raise CurveError(
                    f"batch {b} of epoch {e} has accuracy {acc!r}: give fractions in [0, 1] "
                    "(0.25, not 25)",
                    f"batch_accuracies.{e}.{b}",
                )


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _chance_tolerance(num_classes: int) -> float:
    """How far an accuracy may sit from 1/C and still be "near chance": 0.12 for a few classes;
    2/C for many (12% is not chance at C = 1000, while a model at chance scores 1/C give or take
    the sampling noise of a few hundred answers)."""
    return min(INITIAL_ACCURACY_TOLERANCE, INITIAL_ACCURACY_TOLERANCE_OF_CHANCE / num_classes)


def _chance_loss_band(log_c: float) -> tuple[float, float]:
    """How far a loss may sit below and above log C and still be "at chance" (see
    ``INITIAL_LOSS_TOLERANCE``)."""
    return (
        max(INITIAL_LOSS_TOLERANCE_MIN, INITIAL_LOSS_TOLERANCE * log_c),
        max(INITIAL_LOSS_TOLERANCE_ABOVE_MIN, INITIAL_LOSS_TOLERANCE * log_c),
    )


def _late(means: Sequence[float]) -> Sequence[float]:
    """The late epochs a trend is read from: the last third, at least two."""
    return means[-max(2, len(means) // 3) :]


def _rises(means: Sequence[float], margin: float) -> bool:
    """Whether the epoch means rise over training: the late epochs' median more than ``margin``
    above epoch 0's mean, and none of them below it (see ``RISE_MARGIN``)."""
    if len(means) < RISE_MIN_EPOCHS:
        return False
    late = _late(means)
    return _median(late) - means[0] > margin and min(late) > means[0]


def _curve_flags(
    values: _Floats,
    means: Sequence[float],
    num_classes: int,
    acc_means: Sequence[float] | None,
) -> list[CurveFlag]:
    flags: list[CurveFlag] = []
    if _rises(means, RISE_MARGIN * math.log(num_classes)):
        flags.append("rising_loss")
    # Without an epoch 0 at chance, a curve that climbs within [0, 1] is as much a loss that
    # overfits (a validation loss of 10 classes) as an accuracy: with accuracies sent beside
    # it, it reads as accuracy only if they climb too (the test accuracy plotted as the loss,
    # the training accuracy beside it). A start at chance is accuracy whatever is beside it.
    from_above = _rises_from_above_chance(means, num_classes) and (
        acc_means is None or _rises(acc_means, ACCURACY_RISE_MARGIN)
    )
    if (
        (_near_chance(means[0], num_classes) or from_above)
        and _rises(means, ACCURACY_RISE_MARGIN)
        and bool(np.all(values <= 1))  # every batch loss
    ):
        flags.append("looks_like_accuracy")
    if not flags and _rebound(means, math.log(num_classes)) is not None:
        flags.append("rising_after_minimum")
    return flags


def _rebound(means: Sequence[float], log_c: float) -> int | None:
    """The epoch of the minimum that the curve climbs back from (see ``REBOUND_MARGIN``), or
    None where it does not."""
    values = np.asarray(means, dtype=np.float64)
    low = int(np.argmin(values))  # the first, where several tie
    late = _late(means)
    if low == 0 or len(means) - 1 - low < RISE_MIN_EPOCHS or len(means) - len(late) <= low:
        return None
    rises = np.abs(values[1:-1] - (values[:-2] + values[2:]) / 2)  # ``_rise`` of each epoch
    noise = ROBUST_SD * _median(rises)
    margin = max(REBOUND_MARGIN * log_c, JUMP_SIGMAS * noise)
    climbed = _median(late) - means[low] > margin and min(late) > means[low]
    return low if climbed else None


def _near_chance(accuracy: float, num_classes: int) -> bool:
    return abs(accuracy - 1 / num_classes) <= _chance_tolerance(num_classes)


def _rises_from_above_chance(means: Sequence[float], num_classes: int) -> bool:
    """The start of an accuracy curve without an epoch 0 at chance: 3 classes or more, and most
    epochs above the first (see ``ACCURACY_RISE_MARGIN``)."""
    above = int(np.count_nonzero(np.asarray(means[1:], dtype=np.float64) > means[0]))
    return math.log(num_classes) > 1 and above > (len(means) - 1) / 2


def _rise(values: Sequence[float], epoch: int) -> float:
    """How far an epoch's value sits above the mean of its neighbours'."""
    return values[epoch] - (values[epoch - 1] + values[epoch + 1]) / 2


def _outlier(value: float, others_mean: float, others_sd: float | None, log_c: float) -> bool:
    """Whether a batch loss is an outlier above the others (see ``OUTLIER_SIGMAS``); never
    without their standard deviation (``others_sd`` is ``None`` with fewer than two)."""
    if others_sd is None:
        return False
    return value - others_mean > max(OUTLIER_SIGMAS * others_sd, OUTLIER_MARGIN * log_c)


def _start(losses: Sequence[float], log_c: float) -> tuple[float, int | None]:
    """Where the curve starts: epoch 0's mean loss, leaving out one batch that is an outlier
    above the others by the last batch's rule (the last batch where it is one, as its spike
    says; otherwise the highest, but never batch 0), and that batch's index (``None`` where
    none is left out).

    One batch of confident mistakes at 3.5 among batches at log 4 is no badly initialised
    model, and it would raise the bar of ``above_initial_loss`` for every later epoch. Never
    batch 0: measured the closest to the initialisation, a batch 0 far above the rest is the
    very symptom of large initial logits that the start is read for. Not the median: that
    would move the start of every curve whose loss falls within epoch 0, where the mean is
    what the fixed plot shows."""
    values = np.asarray(losses, dtype=np.float64)
    highest = int(np.argmax(values))  # the first, as max() takes it
    for b in dict.fromkeys((len(losses) - 1, highest)):
        if b == 0:
            continue
        others = [*losses[:b], *losses[b + 1 :]]
        if len(others) < 2:
            break
        others_mean = _mean(others)
        # The margin first: it spares the standard deviation of an epoch of a million batches.
        if losses[b] - others_mean > OUTLIER_MARGIN * log_c and _outlier(
            losses[b], others_mean, _pstdev(np.delete(values, b)), log_c
        ):
            return others_mean, b
    return _mean(losses), None


# Every epoch's statistics in numpy, a row length at a time: one epoch at a time in Python, a
# million batch losses took seconds (statistics.pstdev's exact fractions alone 8 s for 100,000
# epochs of 10 batches). Each gives the very floats of the rule it replaces, the comparisons
# made in the same order; where a float estimate decides, the exact value settles the close
# calls.


@dataclass(frozen=True)
class _Rows:
    """Every batch loss in one array, epoch after epoch, and where each epoch's row lies."""

    values: _Floats
    lengths: _Ints
    starts: _Ints

    @classmethod
    def of(cls, batch_losses: Sequence[Sequence[float]]) -> _Rows:
        lengths = np.fromiter(map(len, batch_losses), dtype=np.int64, count=len(batch_losses))
        values = np.array(list(itertools.chain.from_iterable(batch_losses)), dtype=np.float64)
        starts = np.zeros_like(lengths)
        np.cumsum(lengths[:-1], out=starts[1:])
        return cls(values, lengths, starts)

    @property
    def lasts(self) -> _Floats:
        last: _Floats = self.values[self.starts + self.lengths - 1]
        return last

    def others(self, epoch: int) -> _Floats:
        """The epoch's batches before the last."""
        start = int(self.starts[epoch])
        return self.values[start : start + int(self.lengths[epoch]) - 1]

    def blocks(self) -> Iterator[tuple[_Ints, _Floats]]:
        """The epochs of each row length, and their rows as one matrix: numpy works on rows of
        equal length, and a million values come in at most 1,414 lengths."""
        order = np.argsort(self.lengths, kind="stable")
        bounds = np.flatnonzero(np.diff(self.lengths[order])) + 1
        for epochs in np.split(order, bounds):
            length = int(self.lengths[epochs[0]])
            yield epochs, self.values[self.starts[epochs, None] + np.arange(length)]


def _sorted_medians(ordered: _Floats) -> _Floats:
    """The median of each sorted row as ``statistics.median`` takes it: the middle value, or
    (a + b) / 2 of the two middle ones."""
    mid = ordered.shape[1] // 2
    if ordered.shape[1] % 2:
        return ordered[:, mid]
    return (ordered[:, mid - 1] + ordered[:, mid]) / 2


def _median(values: Sequence[float] | _Floats) -> float:
    """``statistics.median`` of floats, sorted by numpy."""
    return float(_sorted_medians(np.sort(np.asarray(values, dtype=np.float64))[None, :])[0])


@dataclass(frozen=True)
class _EpochStats:
    """Per epoch (arrays indexed by epoch; NaN where the epoch has too few batches):

    Attributes:
        medians: the median batch loss.
        lows: the lowest batch loss.
        spiking: how many batches spike far above the rest (see ``SPIKING_MARGIN``).
        others_sd: the standard deviation of the batches before the last, a float estimate
            (two passes), with at least two of them.
        others_max: the highest of those batches.
    """

    medians: _Floats
    lows: _Floats
    spiking: _Ints
    others_sd: _Floats
    others_max: _Floats


def _epoch_stats(rows: _Rows, initial: float, log_c: float) -> _EpochStats:
    n = rows.lengths.size
    medians, lows = np.empty(n), np.empty(n)
    others_sd, others_max = np.full(n, np.nan), np.full(n, np.nan)
    spiking = np.zeros(n, dtype=np.int64)
    for epochs, block in rows.blocks():
        ordered = np.sort(block, axis=1)
        medians[epochs] = _sorted_medians(ordered)
        lows[epochs] = ordered[:, 0]
        if block.shape[1] >= TYPICAL_BATCHES:
            spiking[epochs] = _spiking_counts(ordered, medians[epochs], initial, log_c)
            others = block[:, :-1]
            deviations = others - others.mean(axis=1, keepdims=True)
            others_sd[epochs] = np.sqrt((deviations * deviations).mean(axis=1))
            others_max[epochs] = others.max(axis=1)
    return _EpochStats(medians, lows, spiking, others_sd, others_max)


def _spiking_counts(ordered: _Floats, medians: _Floats, initial: float, log_c: float) -> _Ints:
    """How many of each epoch's batches (sorted rows) sit far above both its median batch and
    the initial loss, and above the epoch's own spread (see ``SPIKING_MARGIN``). The spread, a
    second sort, only for the epochs with a batch above the first bar."""
    counts = np.zeros(len(ordered), dtype=np.int64)
    bar = np.maximum(medians, initial) + SPIKING_MARGIN * log_c
    high = np.flatnonzero(ordered[:, -1] > bar)
    if not high.size:
        return counts
    deviations = np.sort(np.abs(ordered[high] - medians[high, None]), axis=1)
    spread = ROBUST_SD * _sorted_medians(deviations)
    bar = np.maximum(bar[high], medians[high] + SPIKING_SIGMAS * spread)
    counts[high] = np.count_nonzero(ordered[high] > bar[:, None], axis=1)
    return counts


def _others_means(batch_losses: Sequence[Sequence[float]], lengths: _Ints) -> _Floats:
    """The mean of each epoch's batches before the last, as ``_mean`` takes it (math.fsum, a
    correctly rounded sum that numpy's does not match); 0 where there are none."""
    sums = np.fromiter(
        map(math.fsum, map(operator.itemgetter(slice(None, -1)), batch_losses)),
        dtype=np.float64,
        count=len(batch_losses),
    )
    counts = lengths - 1
    return np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)


def _outliers(
    rows: _Rows,
    stats: _EpochStats,
    others_means: _Floats,
    log_c: float,
) -> _Bools:
    """Whether each epoch's last batch is an outlier above the others (``_outlier``), the
    standard deviation estimated in floats, and exact (``_pstdev``) where the estimate is too
    close to the bar to tell: its error is far below 1e-7 of the values compared."""
    rise = rows.lasts - others_means
    candidates = (rows.lengths >= 3) & (rise > OUTLIER_MARGIN * log_c)
    bar = OUTLIER_SIGMAS * stats.others_sd
    outlier = candidates & (rise > bar)
    close = candidates & (np.abs(rise - bar) <= 1e-7 * (np.abs(rise) + bar + stats.others_max))
    exact: dict[bytes, float] = {}  # epochs of the same batches (a quantised curve) share one
    for e in np.flatnonzero(close).tolist():
        others = rows.others(e)
        key = others.tobytes()
        if key not in exact:
            exact[key] = _pstdev(others)
        outlier[e] = rise[e] > OUTLIER_SIGMAS * exact[key]
    return outlier


# The reasons of a spike, by the bits of ``_spikes``: 1, 2 and 4 for these in this order.
_REASON_NAMES = ("last_batch_outlier", "above_initial_loss", "mean_jump")
_REASONS = {
    code: tuple(name for bit, name in enumerate(_REASON_NAMES) if code >> bit & 1)
    for code in range(1, 8)
}


def _spikes(
    rows: _Rows,
    batch_losses: Sequence[Sequence[float]],
    stats: _EpochStats,
    means: Sequence[float],
    lasts: Sequence[float],
    jumping: _Bools,
    initial: float,
    log_c: float,
) -> list[Spike]:
    """The spikes of the reported (last-batch) curve, each epoch's reasons in numpy."""
    last = rows.lasts
    others_means = _others_means(batch_losses, rows.lengths)
    outlier = _outliers(rows, stats, others_means, log_c)
    above = (np.arange(len(last)) > 0) & (last > initial + ABOVE_INITIAL_MARGIN * log_c)
    # A jump of the training shows as a spike where the reported value jumps too (a last
    # batch that dips in a jumping epoch is no spike of the plot). The first and last epochs
    # never jump, so the missing neighbour's -inf decides nothing.
    beside = np.maximum(np.append(-np.inf, last[:-1]), np.append(last[1:], -np.inf))
    mean_jump = jumping & (last > beside)
    # Each epoch's reasons as bits (one per reason, in ``_REASONS``' order), read as lists: a
    # million spikes is a million Spikes, without numpy's slower element access.
    codes = outlier * 1 + above * 2 + mean_jump * 4
    epochs = np.flatnonzero(codes)
    details: list[Spike] = []
    for e, code, others_mean, length in zip(
        epochs.tolist(),
        codes[epochs].tolist(),
        others_means[epochs].tolist(),
        rows.lengths[epochs].tolist(),
        strict=True,
    ):
        others_sd = None
        if length >= 3:
            # Exact where an answer shows it; past that, the estimate (no answer shows it).
            exact = len(details) < DETAILED_SPIKES
            others_sd = _pstdev(rows.others(e)) if exact else float(stats.others_sd[e])
        last_batch = lasts[e]
        details.append(
            Spike(
                e,
                last_batch,
                means[e],
                others_mean if length >= 2 else None,
                others_sd,
                _REASONS[code],
                math.exp(-last_batch),
            )
        )
    return details


SHORT_ROW = 32
"""Below this many values ``statistics.pstdev`` is the faster exact one (18 us for 2 values
against 21 us; 73 us for 100 against 40 us)."""


def _pstdev(values: _Floats) -> float:
    """``statistics.pstdev`` of floats, the same float (the correctly rounded root of the exact
    variance), from exact sums that math.fsum finds instead of a fraction per value. Values
    below 2**-400, whose squares' rounding errors fall below the smallest float, take
    statistics' way, and so do fewer than ``SHORT_ROW`` values, for which it is faster."""
    if len(values) < SHORT_ROW or np.any((values > 0) & (values < 2.0**-400)):
        return float(statistics.pstdev(values.tolist()))
    squares = values * values
    n = len(values)
    sx = _exact_sum(values)
    sxx = _exact_sum(np.concatenate((squares, _square_errors(values, squares))))
    variance = (n * sxx - sx * sx) / n / n
    return _sqrt_of_fraction(variance.numerator, variance.denominator)


def _square_errors(values: _Floats, squares: _Floats) -> _Floats:
    """What rounding took from each square: x * x == squares + errors exactly (Dekker's
    product, with Veltkamp's split of x into two halves whose products are exact)."""
    scaled = 134217729.0 * values  # 2**27 + 1
    high = scaled - (scaled - values)
    low = values - high
    return low * low - (((squares - high * high) - low * high) - high * low)


def _exact_sum(values: _Floats) -> Fraction:
    """The exact sum of floats: math.fsum rounds it once, so the sum is what it returns plus
    the exact sum of what it left over, found the same way (each round takes 53 more bits)."""
    items = values.tolist()
    total = Fraction(0)
    while part := math.fsum(items):
        total += Fraction(part)
        items.append(-part)
    return total


def _sqrt_of_fraction(n: int, m: int) -> float:
    """The square root of n/m, correctly rounded, as ``statistics`` computes it: the root
    rounded to an integer of 2 * 53 + 3 bits with round-to-odd, then to a float."""
    q = (n.bit_length() - m.bit_length() - 109) // 2
    if q >= 0:
        return float(_isqrt_to_odd(n, m << 2 * q) << q)
    return _isqrt_to_odd(n << -2 * q, m) / (1 << -q)


def _isqrt_to_odd(n: int, m: int) -> int:
    """The square root of n/m rounded to an integer, round-to-odd."""
    a = math.isqrt(n // m)
    return a | (a * a * m != n)


def _single_value_jumps(values: _Floats, log_c: float) -> _Bools:
    """For a curve of one value per epoch, whether each epoch's value jumps above both
    neighbours' by more than the margin and the curve's noise (see ``JUMP_SIGMAS``)."""
    n = len(values)
    jumping = np.zeros(n, dtype=bool)
    if n < 3:
        return jumping
    inner, before, after = values[1:-1], values[:-2], values[2:]
    candidates = np.flatnonzero(inner - np.maximum(before, after) > JUMP_MARGIN * log_c) + 1
    if not candidates.size:
        return jumping
    rises = inner - (before + after) / 2  # ``_rise`` of every interior epoch
    noise = ROBUST_SD * _medians_without_neighbours(np.abs(rises), candidates)
    jumping[candidates] = rises[candidates - 1] > JUMP_SIGMAS * noise
    return jumping


def _medians_without_neighbours(rises: _Floats, candidates: _Ints) -> _Floats:
    """For each candidate epoch, the median of every interior epoch's absolute rise (``rises``,
    of epochs 1 to n - 2) but its own and its neighbours': one sort, and each median found by
    rank, moving past the (at most three) ranks left out. NaN where none is left."""
    m = len(rises)
    order = np.argsort(rises, kind="stable")
    ordered = rises[order]
    rank = np.empty(m, dtype=np.int64)
    rank[order] = np.arange(m)
    # The ranks left out, sorted; a rank past every index where the neighbour is no interior
    # epoch (the first and last epochs have no rise).
    past = m + 3
    index = candidates - 1
    left_out = np.stack(
        (
            np.where(index >= 1, rank[np.maximum(index - 1, 0)], past),
            rank[index],
            np.where(index <= m - 2, rank[np.minimum(index + 1, m - 1)], past),
        ),
        axis=1,
    )
    left_out.sort(axis=1)
    kept = m - np.count_nonzero(left_out < past, axis=1)

    def at(k: _Ints) -> _Floats:
        for r in left_out.T:  # each rank left out at or below k moves the k-th kept one up
            k = k + (r <= k)
        return ordered[np.minimum(k, m - 1)]

    medians = (at((kept - 1) // 2) + at(kept // 2)) / 2
    return np.where(kept > 0, medians, np.nan)


def _median_jumps(medians: _Floats, lengths: _Ints, log_c: float) -> _Bools:
    """Whether each epoch's typical (median) batch loss jumps above both neighbours' (only for
    epochs of ``TYPICAL_BATCHES`` batches or more: a single batch's median is no typical one;
    and not for the first or last epoch, whose rise above the one before may be a trend)."""
    jumping = np.zeros(len(medians), dtype=bool)
    if len(medians) >= 3:
        beside = np.maximum(medians[:-2], medians[2:])
        jumping[1:-1] = (lengths[1:-1] >= TYPICAL_BATCHES) & (
            medians[1:-1] - beside > JUMP_MARGIN * log_c
        )
    return jumping


def _epochs(indices: Sequence[int]) -> str:
    """``epoch 3`` or ``epochs 3, 7``; past ``LISTED_EPOCHS``, the first ones and the count."""
    if len(indices) == 1:
        return f"epoch {indices[0]}"
    shown = ", ".join(map(str, indices[:LISTED_EPOCHS]))
    if len(indices) > LISTED_EPOCHS:
        return f"epochs {shown}, ... ({len(indices):,} in all)"
    return f"epochs {shown}"


def _nats(value: float) -> str:
    """A loss in a sentence: three decimals, or a general format for a value so large that its
    decimals would fill the line (1e+100, not 101 digits)."""
    return f"{value:.3f}" if value < LARGE_LOSS else f"{value:.4g}"


def _log_c(num_classes: int) -> str:
    return f"log {num_classes} = {math.log(num_classes):.3f}"


def _initial_findings(
    means: Sequence[float],
    left_out: tuple[int, float] | None,
    acc_means: Sequence[float] | None,
    num_classes: int,
    rising: bool,
) -> list[str]:
    """Epoch 0 beside log C and 1/C; ``means[0]`` is the start of the curve (``_start``), which
    leaves out the batch ``left_out`` (its index and loss), if any."""
    log_c = math.log(num_classes)
    findings = [
        f"Before training, a model at chance gives each of the C = {num_classes} classes "
        f"probability 1/C = {1 / num_classes:.3g}, so its cross-entropy is -log(1/C) = "
        f"{_log_c(num_classes)} and its accuracy 1/C = {100 / num_classes:.3g}%."
    ]
    below, above = _chance_loss_band(log_c)
    first = means[0]
    mean = f"Epoch 0's mean loss {_nats(first)}"
    if left_out is not None:
        mean += (
            f" (leaving out batch {left_out[0]}, {_nats(left_out[1])}, far above the epoch's other "
            "batches)"
        )
    if -below <= first - log_c <= above:
        findings.append(
            f"{mean} is close to {_log_c(num_classes)}: the curve starts at chance, as an "
            "untrained model should"
            + (
                " (a little above it, as random initial weights put it: their logits are not "
                "all equal)."
                if first - log_c > below
                else "."
            )
        )
    elif first > log_c:
        findings.append(
            f"{mean} is well above {_log_c(num_classes)}: an untrained model should sit near "
            "chance. Look for large initial logits (weights initialised too large), a loss "
            "summed instead of averaged over the batch, or a number of classes other than "
            "num_classes."
        )
    elif rising:
        # Not "after some training": a curve that then rises is no trained model's loss.
        findings.append(
            f"{mean} is well below {_log_c(num_classes)}, and the curve rises from there "
            "instead of falling (see below)."
        )
    else:
        findings.append(
            f"{mean} is well below {_log_c(num_classes)}: this first row is already after some "
            "training (or the classes are far from balanced), so it is not the model at chance."
        )
    if acc_means is not None:
        chance = 1 / num_classes
        tolerance = _chance_tolerance(num_classes)
        verdict = "near chance" if abs(acc_means[0] - chance) <= tolerance else "far from chance"
        findings.append(
            f"Epoch 0's accuracy {100 * acc_means[0]:.3g}% is {verdict} "
            f"(1/C = {100 * chance:.3g}%)."
        )
    return findings


def _trend_findings(
    means: Sequence[float], flags: Sequence[CurveFlag], num_classes: int
) -> list[str]:
    """The curve as a whole: an accuracy curve given as the loss, or a loss that rises (from
    the start, or after a minimum)."""
    if not flags:
        return []
    late = _late(means)
    level = _median(late)
    late_epochs = f"epochs {len(means) - len(late)}-{len(means) - 1}"
    if "rising_after_minimum" in flags:
        low = int(np.argmin(np.asarray(means, dtype=np.float64)))  # the first, as min() takes
        return [
            f"The loss falls to {_nats(means[low])} at epoch {low}, then climbs back: "
            f"{_nats(level)} (the median of {late_epochs}), "
            f"{(level - means[low]) / math.log(num_classes):.2g} log C above its minimum. For a "
            "test (validation) curve this is overfitting: the model keeps fitting the training "
            f"set and generalises worse; keep the weights of epoch {low} (early stopping), or "
            "regularise (weight decay, dropout, more data). For a training curve it is "
            "instability, a learning rate too high for this stage of training (lower it or "
            "decay it, clip the gradient norm; seed 1.3, problem 3), or a bug in the training "
            "loop."
        ]
    if "looks_like_accuracy" in flags and _near_chance(means[0], num_classes):
        return [
            f"These values rise from {means[0]:.3g} at epoch 0, about 1/{num_classes} = "
            f"{1 / num_classes:.3g} (chance accuracy for {num_classes} classes), to {level:.3g} "
            f"(the median of {late_epochs}) and never leave [0, 1]: this looks like accuracy, "
            f"not the cross-entropy loss, which starts near {_log_c(num_classes)} and falls. "
            "Check which column you plotted or logged as the loss (seed 1.3, problem 4: the "
            "loss starts at log C, the accuracy at 1/C). If these are losses after all, the "
            "loss rises over training: the training diverges (a learning rate too high, or a "
            "sign error in the update)."
        ]
    if "looks_like_accuracy" in flags:
        return [
            f"These values rise from {means[0]:.3g} at epoch 0 to {level:.3g} (the median of "
            f"{late_epochs}), most epochs above the first, and never leave [0, 1]: this looks "
            "like accuracy, not the cross-entropy loss, which for "
            f"{num_classes} classes starts near {_log_c(num_classes)}, above 1, and falls. "
            "The curve has no epoch 0 of the untrained model, whose accuracy would sit near "
            f"1/{num_classes} = {1 / num_classes:.3g}: it starts after some training. Check "
            "which column you plotted or logged as the loss (seed 1.3, problem 4: the loss "
            "starts at log C, the accuracy at 1/C). If these are losses after all, the loss "
            "rises over training: on a test (validation) set the model overfits; on the "
            "training set the training diverges (a learning rate too high, or a sign error in "
            "the update)."
        ]
    rise = (level - means[0]) / math.log(num_classes)
    return [
        f"The loss rises over training instead of falling: from {_nats(means[0])} at epoch 0 "
        f"to {_nats(level)} (the median of {late_epochs}), {rise:.2g} log C higher. A loss that "
        "rises steadily is divergence: a learning rate too high (lower it, or clip the "
        "gradient norm; seed 1.3, problem 3), or a sign error in the update (p += lr * grad "
        "climbs the loss; the step is p -= lr * grad). Or the curve is not the training loss: "
        "check which column you plotted."
    ]


def _climbs(values: Sequence[float], epoch: int, low: int, peak: float, log_c: float) -> bool:
    """Whether the values climb into ``epoch`` from ``low``, their latest minimum before it (see
    ``EXPLODED_LOSS``): over ``RISE_MIN_EPOCHS`` epochs or more, to an epoch just before it more
    than ``CLIMB_MARGIN`` log C above that minimum, and to a top above ``peak``, the highest
    value between them (a curve that jumped and falls back is no climb)."""
    climbed = values[epoch - 1] - values[low] > CLIMB_MARGIN * log_c
    return epoch - low >= RISE_MIN_EPOCHS and climbed and values[epoch] > peak


def _divergence_reading(values: Sequence[float], epochs: Sequence[int], log_c: float) -> str:
    """For a curve of one value an epoch, the reading of its values above the initial loss at
    ``epochs`` (ascending, after epoch 0) as epoch means, where the curve climbs into one or it
    explodes (see ``EXPLODED_LOSS``); "" where neither."""
    # The latest minimum before the epoch and the highest value since, in one pass.
    low, peak, scanned = 0, -math.inf, 1
    for epoch in epochs:
        for e in range(scanned, epoch):
            if values[e] <= values[low]:
                low, peak = e, -math.inf
            else:
                peak = max(peak, values[e])
        scanned = max(scanned, epoch)
        climbs = _climbs(values, epoch, low, peak, log_c)
        exploded = values[epoch] > EXPLODED_LOSS * log_c
        if not climbs and not exploded:
            continue
        how = "explodes"
        if climbs:
            how = f"climbs for {epoch - low} epochs from {_nats(values[low])} at epoch {low}"
            how += " and explodes" if exploded else ""
        how += f" to {_nats(values[epoch])} at epoch {epoch}"
        if exploded:
            how += (
                f" (more than {EXPLODED_LOSS:g} log C: a probability of the true class below "
                f"C^-{EXPLODED_LOSS:g} on average, which takes logits blown up)"
            )
        return (
            " With one value an epoch, this may also be the epoch's mean: if these are epoch "
            f"means, the loss {how}, the whole epoch doing worse than an untrained model, so "
            "the training diverges. Lower the learning rate (or decay it), or clip the gradient "
            "norm (seed 1.3, problem 3)."
        )
    return ""


def _initial_named(initial: float, num_classes: int) -> str:
    """The initial loss a finding compares with: log C, or epoch 0's mean where it is higher."""
    if initial > math.log(num_classes):
        return f"the initial loss (epoch 0's mean, {_nats(initial)})"
    return f"the initial loss {_log_c(num_classes)}"


@dataclass(frozen=True)
class _Reading:
    """What ``diagnose`` found in the batches, as its findings read it.

    Attributes:
        details: the spikes of the reported (last-batch) curve.
        jumps: the epochs whose typical batch (or single value) jumps above its neighbours'.
        diverging: the epochs whose typical batch stays above the initial loss.
        spiking: the epochs whose batches spike again and again (``SPIKING_MARGIN``).
        unstable: the training's own epochs (``CurveDiagnosis.unstable_epochs``).
        initial: the initial loss spikes are compared with: log C or epoch 0's mean.
        num_classes: C.
        single_batches: every epoch has a single batch.
        flags: what the curve as a whole shows.
        lasts: the reported curve, each epoch's last batch.
    """

    details: Sequence[Spike]
    jumps: Sequence[int]
    diverging: Sequence[int]
    spiking: Sequence[int]
    unstable: frozenset[int]
    initial: float
    num_classes: int
    single_batches: bool
    flags: Sequence[CurveFlag]
    lasts: Sequence[float]

    @functools.cached_property
    def spiked(self) -> frozenset[int]:
        """``spiking`` as a set."""
        return frozenset(self.spiking)

    @property
    def rising(self) -> bool:
        """The curve rises from the start (a loss, or an accuracy given as one)."""
        return "rising_loss" in self.flags or "looks_like_accuracy" in self.flags


def _spike_findings(reading: _Reading, *, zigzag: bool) -> list[str]:
    """The spikes of the reported curve (the last batches) and the training's own; "No spikes"
    only where nothing, a zigzag of the whole curve (``zigzag``) included, is found."""
    details, jumps, diverging = reading.details, reading.jumps, reading.diverging
    initial, num_classes, flags = reading.initial, reading.num_classes, reading.flags
    single_batches, unstable = reading.single_batches, reading.unstable
    findings = []
    # In an epoch whose batches spike again and again, the last batch is one of many: that is
    # the training's (``_spiking_findings``), not the reporting's alone.
    spiked = reading.spiked
    outliers = [s for s in details if "last_batch_outlier" in s.reasons and s.epoch not in spiked]
    if outliers:
        worst = max(outliers, key=lambda s: s.last_batch - (s.others_mean or 0.0))
        findings.append(
            f"At {_epochs([s.epoch for s in outliers])} the last batch's loss sits far above "
            f"the epoch's other batches (epoch {worst.epoch}: last batch "
            f"{_nats(worst.last_batch)}, the others {_nats(worst.others_mean or 0.0)} on "
            f"average, epoch mean {_nats(worst.epoch_mean)}). This is last-batch reporting: a "
            "train() or test() that returns loss.item() of the last batch plots one batch, whose "
            "difficulty and class mix change from epoch to epoch, not the epoch (seed 1.3, "
            "problem 1). Accumulate loss.item() over every batch and report the mean, the "
            "epoch_mean curve here (problem 3)."
        )
    # Above the initial loss with the rest of the epoch below it: one batch of confident
    # mistakes. Where the whole epoch is above it, the training itself is (below); where the
    # whole curve rises, the rise is (its own finding), unless the last batch is an outlier.
    # A climb back from a minimum is no rise from the start: a value above the initial loss
    # there is still said.
    rises = reading.rising
    above = [
        s
        for s in details
        if "above_initial_loss" in s.reasons
        and s.epoch not in unstable
        and (not rises or "last_batch_outlier" in s.reasons)
    ]
    if above:
        worst = max(above, key=lambda s: s.last_batch)
        epochs = [s.epoch for s in above]
        log_c = math.log(num_classes)
        findings.append(
            f"At {_epochs(epochs)} the reported loss rises above "
            f"{_initial_named(initial, num_classes)} (epoch {worst.epoch}: "
            f"{_nats(worst.last_batch)}). Cross-entropy costs -log p of the true class: "
            "guessing at chance costs log C, but a confident wrong prediction costs more; "
            f"{_nats(worst.last_batch)} means the model gave the true class a probability of "
            f"exp(-{_nats(worst.last_batch)}) = {worst.true_class_probability:.3g} on (geometric) "
            f"average over that batch, worse than the 1/{num_classes} of guessing (seed 1.3, "
            "problem 2)."
            + (_divergence_reading(reading.lasts, epochs, log_c) if single_batches else "")
        )
    if jumps and single_batches:
        findings.append(
            f"At {_epochs(list(jumps))} the loss jumps above the epochs beside it, by more than "
            "0.25 log C and by more than the curve's epoch-to-epoch noise elsewhere. With "
            "one value an epoch, either the training itself jumps there (if these are epoch "
            "means: clip the gradient norm, lower the learning rate (or decay it) or use larger "
            "batches; seed 1.3, problem 3) or one unrepresentative batch was reported (if they "
            "are last batches; problem 1)."
        )
    elif jumps:
        findings.append(
            f"At {_epochs(list(jumps))} the typical (median) batch loss itself jumps above the "
            "epochs beside it: the training itself jumps, whatever the reporting shows. Clip "
            "the gradient norm, lower the learning rate (or decay it) or use larger batches "
            "(seed 1.3, problem 3)."
        )
    # An accuracy curve's values above log 2 are no divergence (its finding says both readings).
    jumped = set(jumps)
    rising = [] if "looks_like_accuracy" in flags else [e for e in diverging if e not in jumped]
    if rising:
        findings.append(
            f"At {_epochs(rising)} the typical (median) batch loss itself stays above "
            f"{_initial_named(initial, num_classes)}: the whole epoch, not only its last batch, "
            "does worse than an untrained model, so the training diverges. Lower the learning "
            "rate (or clip the gradient norm) (seed 1.3, problem 3)."
        )
    if not details and not unstable and not flags and not zigzag:
        findings.append(
            "No spikes: no epoch's last batch rises far above its other batches, and no "
            "reported value rises above the initial loss."
        )
    if single_batches:
        findings.append(
            "Every epoch has a single loss, so last-batch reporting cannot be told apart from "
            "the epoch mean here: send every batch's loss of each epoch."
        )
    return findings


def _spiking_findings(
    reading: _Reading,
    batch_losses: Sequence[Sequence[float]],
    counts: _Ints,
    medians: Sequence[float],
    means: Sequence[float],
) -> list[str]:
    """Epochs whose batches spike again and again: the learning rate, not the reporting."""
    spiking, initial, num_classes = reading.spiking, reading.initial, reading.num_classes
    if not spiking:
        return []
    worst = max(spiking, key=means.__getitem__)
    losses = batch_losses[worst]
    count = int(counts[worst])
    findings = [
        f"At {_epochs(spiking)} several batches, not one, sit far above the epoch's typical "
        f"(median) batch and above {_initial_named(initial, num_classes)} (epoch {worst}: "
        f"{count} of {len(losses)} batches, up to {_nats(max(losses))}, where the median is "
        f"{_nats(medians[worst])}; the epoch's mean {_nats(means[worst])}). That is no "
        "unrepresentative batch reported, but the training thrown off again and again within "
        "the epoch: the learning rate is too high. Lower it (or decay it) and clip the gradient "
        "norm (seed 1.3, problem 3); the epoch mean carries these spikes too, so reporting it "
        "instead of the last batch will not smooth them away. (Batches that are not shuffled, "
        "each of one class, throw the training off the same way.)"
    ]
    spiked = reading.spiked
    last = [
        s.epoch for s in reading.details if "last_batch_outlier" in s.reasons and s.epoch in spiked
    ]
    if last:
        findings.append(
            f"At {_epochs(last)} the last batch is one of those spikes: the last-batch curve "
            "shows it, but it is not last-batch reporting alone (above)."
        )
    return findings


def _zigzag_findings(means: Sequence[float], num_classes: int) -> list[str]:
    """A curve that swings up and down every epoch, back to chance each time (see
    ``ZIGZAG_STEPS``). The cheap test first, in numpy: most curves do not turn back at 4 steps
    in 5, and a million epochs need no median of their steps then."""
    if len(means) - 1 < ZIGZAG_STEPS:
        return []
    values = np.asarray(means, dtype=np.float64)
    steps = np.diff(values)
    rising = steps > 0
    turns = int(np.count_nonzero(rising[1:] != rising[:-1]))
    if turns < ZIGZAG_SHARE * (len(steps) - 1):
        return []
    log_c = math.log(num_classes)
    swing = float(np.median(np.abs(steps)))
    if swing <= JUMP_MARGIN * log_c:
        return []
    inner = values[1:-1]
    peaks = inner[(values[:-2] < inner) & (inner > values[2:])]
    below, above = _chance_loss_band(log_c)
    if not peaks.size or not -below <= float(np.median(peaks)) - log_c <= above:
        return []
    return [
        f"The loss swings up and down from epoch to epoch, by {swing:.2f} nats (the median "
        f"step), and its peaks keep coming back to the loss at chance, {_log_c(num_classes)}: "
        "the training undoes what it learned again and again. Swings this large that return to "
        "chance point to a learning rate too high: lower it (or decay it), or clip the gradient "
        "norm (seed 1.3, problem 3)."
    ]


def _learning_findings(
    means: Sequence[float],
    acc_means: Sequence[float] | None,
    num_classes: int,
    flagged: bool,
) -> list[str]:
    """A curve that never leaves chance: the model has not learned (the seed's paper lengths).
    Not said beside another explanation of the curve (``flagged``), nor where the accuracies
    leave chance."""
    log_c = math.log(num_classes)
    if (
        flagged
        or len(means) < 3
        or bool(
            np.any(
                np.abs(np.asarray(means, dtype=np.float64) - log_c) > INITIAL_LOSS_TOLERANCE * log_c
            )
        )
    ):
        return []
    if acc_means is not None:
        tolerance = _chance_tolerance(num_classes)
        if any(abs(a - 1 / num_classes) > tolerance for a in acc_means):
            return []
    return [
        f"The mean loss never leaves {_log_c(num_classes)}: the model predicts no better than "
        "chance in any epoch, so it has not learned the task (yet). The usual causes first: a "
        "learning rate too low, or a training loop that never updates the weights "
        "(optimizer.step() missing, or optimizer.zero_grad() missing so that the gradients "
        "pile up); check that the parameters change from one step to the next. Otherwise more "
        "epochs, or a shorter task (as in the seed's experiment), may change that."
    ]


def diagnose(
    batch_losses: Sequence[Sequence[float]],
    num_classes: int,
    batch_accuracies: Sequence[Sequence[float]] | None = None,
) -> CurveDiagnosis:
    """Both curves of a training run, its spikes and what explains them.

    Args:
        batch_losses: one list per epoch (epoch 0 first, ideally the untrained model) of
            every batch's mean cross-entropy, in the order the batches ran.
        num_classes: C, the number of classes.
        batch_accuracies: optional, the same shape as ``batch_losses``, fractions in [0, 1].

    Returns:
        The epoch means and last-batch values; the spikes of the last-batch curve (epochs,
        0-based) with their reasons (the first ``DETAILED_SPIKES`` detailed); the epochs whose
        typical (median) batch loss itself jumps or exceeds the initial loss, or whose batches
        spike again and again (``unstable_epochs``, epochs of ``TYPICAL_BATCHES`` batches or
        more; see ``SPIKING_MARGIN``); what the curve as a whole shows (``curve_flags``:
        ``rising_loss``, ``looks_like_accuracy``, ``rising_after_minimum``); log C and 1/C;
        whether the last-batch curve looks like last-batch reporting (``None`` when
        every epoch has a single batch, which cannot tell); and findings in words.

    Raises:
        CurveError: with the offending field, for an empty curve or epoch, a loss that is not
            a finite number >= 0, an accuracy outside [0, 1], mismatched series, or C < 2.
    """
    _check(batch_losses, batch_accuracies, num_classes)
    log_c = math.log(num_classes)
    rows = _Rows.of(batch_losses)
    sums = np.fromiter(map(math.fsum, batch_losses), dtype=np.float64, count=len(batch_losses))
    means = (sums / rows.lengths).tolist()  # ``_mean`` of each epoch
    lasts = list(map(operator.itemgetter(-1), batch_losses))
    first, left_out = _start(batch_losses[0], log_c)
    initial = max(log_c, first)
    # The curve as the findings read it: from where it starts (``_start``).
    read = [first, *means[1:]]
    single_batches = bool(np.all(rows.lengths == 1))
    stats = _epoch_stats(rows, initial, log_c)
    medians = stats.medians.tolist()
    if single_batches:
        jumping = _single_value_jumps(rows.lasts, log_c)
    else:
        jumping = _median_jumps(stats.medians, rows.lengths, log_c)
    details = _spikes(rows, batch_losses, stats, means, lasts, jumping, initial, log_c)
    jumps = np.flatnonzero(jumping).tolist()
    after_0 = np.arange(len(batch_losses)) > 0
    # The typical batch: the median, or with two batches the lower one (both high is the
    # whole epoch; one batch per epoch cannot tell the reporting from the training).
    typical = np.where(rows.lengths >= TYPICAL_BATCHES, stats.medians, stats.lows)
    diverging = np.flatnonzero(
        after_0 & (rows.lengths >= 2) & (typical > initial + ABOVE_INITIAL_MARGIN * log_c)
    ).tolist()
    # Several spiking batches: at least SPIKING_BATCHES, and SPIKING_SHARE of the epoch's.
    several = np.maximum(SPIKING_BATCHES, SPIKING_SHARE * rows.lengths)
    spiking = np.flatnonzero(
        after_0 & (rows.lengths >= TYPICAL_BATCHES) & (stats.spiking >= several)
    ).tolist()
    acc_means = acc_lasts = None
    if batch_accuracies is not None:
        acc_means = list(map(_mean, batch_accuracies))
        acc_lasts = [accs[-1] for accs in batch_accuracies]
    flags = _curve_flags(rows.values, read, num_classes, acc_means)
    reading = _Reading(
        details=details,
        jumps=jumps,
        diverging=diverging,
        spiking=spiking,
        # The training's own, which a curve of one value an epoch cannot tell from the
        # reporting.
        unstable=frozenset(diverging)
        | frozenset(spiking)
        | frozenset(() if single_batches else jumps),
        initial=initial,
        num_classes=num_classes,
        single_batches=single_batches,
        flags=flags,
        lasts=lasts,
    )
    unstable = sorted(reading.unstable)
    # A last batch far above its epoch's others, where they do not spike again and again.
    spiked = reading.spiked
    looks_like = (
        None
        if single_batches
        else any("last_batch_outlier" in s.reasons and s.epoch not in spiked for s in details)
    )
    dropped = None if left_out is None else (left_out, batch_losses[0][left_out])
    findings = _initial_findings(read, dropped, acc_means, num_classes, reading.rising)
    findings += _trend_findings(read, flags, num_classes)
    zigzag = _zigzag_findings(read, num_classes)
    findings += _spike_findings(reading, zigzag=bool(zigzag))
    findings += _spiking_findings(reading, batch_losses, stats.spiking, medians, means)
    findings += zigzag
    findings += _learning_findings(read, acc_means, num_classes, bool(details or unstable or flags))
    return CurveDiagnosis(
        num_classes=num_classes,
        epoch_mean=means,
        last_batch=lasts,
        spikes=[s.epoch for s in details],
        spike_details=details[:DETAILED_SPIKES],
        unstable_epochs=unstable,
        curve_flags=flags,
        expected_initial_loss=log_c,
        chance_accuracy=1 / num_classes,
        initial_loss=first,
        looks_like_last_batch_reporting=looks_like,
        accuracy_epoch_mean=acc_means,
        accuracy_last_batch=acc_lasts,
        findings=findings,
    )

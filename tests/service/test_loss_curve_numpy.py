"""The loss curve's numpy statistics give the very floats of the per-epoch rules they replace:
each is compared with the rule written plainly in Python, over seeded random curves."""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest

from service.grading import loss_curve
from service.grading.loss_curve import (
    JUMP_MARGIN,
    JUMP_SIGMAS,
    OUTLIER_MARGIN,
    OUTLIER_SIGMAS,
    ROBUST_SD,
    SPIKING_MARGIN,
    SPIKING_SIGMAS,
    TYPICAL_BATCHES,
    _epoch_stats,
    _median_jumps,
    _others_means,
    _outliers,
    _pstdev,
    _Rows,
    _single_value_jumps,
    diagnose,
)

SEEDS = range(60)


def random_curve(rng: random.Random) -> list[list[float]]:
    """Epochs of varied lengths (one epoch, one batch an epoch, ragged), falling noisy losses
    with spikes, ties (rounded values, constant epochs) and zeros."""
    epochs = rng.choice([1, 2, 3, rng.randint(4, 40)])
    shape = rng.choice(["one", "fixed", "ragged"])
    fixed = rng.randint(1, 12)
    curve = []
    for e in range(epochs):
        batches = {"one": 1, "fixed": fixed, "ragged": rng.randint(1, 12)}[shape]
        level = math.log(4) * math.exp(-e / 5)
        row = [abs(rng.gauss(level, rng.choice([0.0, 0.01, 0.2]))) for _ in range(batches)]
        if rng.random() < 0.3:
            row = [round(x, 1) for x in row]  # ties
        if rng.random() < 0.3:
            row[rng.randrange(batches)] += rng.uniform(0.5, 5)  # a spike
        if rng.random() < 0.1:
            row[-1] = 0.0
        curve.append(row)
    return curve


def plain_pstdev_cases(rng: random.Random) -> list[float]:
    n = rng.randint(1, 200)  # the exact sums from SHORT_ROW values on, statistics below
    scale = 10.0 ** rng.randint(-120, 99)
    kind = rng.choice(["spread", "ties", "constant", "offset"])
    if kind == "constant":
        return [scale * 1.1] * n
    if kind == "ties":
        return [scale * rng.choice([0.0, 0.5, 1.5]) for _ in range(n)]
    if kind == "offset":  # tiny spread on a large mean: the float formula's worst case
        return [scale * (1 + rng.random() * 1e-12) for _ in range(n)]
    return [scale * rng.random() for _ in range(n)]


@pytest.mark.parametrize("seed", range(300))
def test_pstdev_is_statistics_pstdev(seed: int) -> None:
    values = plain_pstdev_cases(random.Random(seed))
    assert _pstdev(np.array(values)) == statistics.pstdev(values)


def test_pstdev_of_tiny_values_is_statistics_pstdev() -> None:
    values = [1e-300, 3e-300, 0.0, 2.5e-310]
    assert _pstdev(np.array(values)) == statistics.pstdev(values)


def plain_spiking_batches(losses: list[float], median: float, initial: float, log_c: float) -> int:
    bar = max(median, initial) + SPIKING_MARGIN * log_c
    high = [loss for loss in losses if loss > bar]
    if not high:
        return 0
    spread = ROBUST_SD * statistics.median(abs(loss - median) for loss in losses)
    bar = max(bar, median + SPIKING_SIGMAS * spread)
    return sum(loss > bar for loss in high)


@pytest.mark.parametrize("seed", SEEDS)
def test_epoch_stats_are_the_plain_ones(seed: int) -> None:
    curve = random_curve(random.Random(seed))
    log_c, initial = math.log(4), math.log(4) + 0.05
    stats = _epoch_stats(_Rows.of(curve), initial, log_c)
    assert stats.medians.tolist() == [statistics.median(row) for row in curve]
    assert stats.lows.tolist() == [min(row) for row in curve]
    spiking = [
        plain_spiking_batches(row, statistics.median(row), initial, log_c)
        if len(row) >= TYPICAL_BATCHES
        else 0
        for row in curve
    ]
    assert stats.spiking.tolist() == spiking


def plain_outlier(losses: list[float], log_c: float) -> bool:
    others = losses[:-1]
    if len(others) < 2:
        return False
    mean = math.fsum(others) / len(others)
    bar = max(OUTLIER_SIGMAS * statistics.pstdev(others), OUTLIER_MARGIN * log_c)
    return losses[-1] - mean > bar


@pytest.mark.parametrize("seed", SEEDS)
def test_outliers_are_the_plain_ones(seed: int) -> None:
    curve = random_curve(random.Random(seed))
    log_c = math.log(2)
    rows = _Rows.of(curve)
    means = _others_means(curve, rows.lengths)
    outliers = _outliers(rows, _epoch_stats(rows, log_c, log_c), means, log_c)
    assert outliers.tolist() == [plain_outlier(row, log_c) for row in curve]
    assert [means[e] for e, row in enumerate(curve) if len(row) > 1] == [
        math.fsum(row[:-1]) / (len(row) - 1) for row in curve if len(row) > 1
    ]


def test_a_last_batch_exactly_at_the_bar_is_no_outlier() -> None:
    # Others 0 and 2: mean 1, standard deviation 1; the last batch 3 standard deviations up,
    # exactly at the bar, and a hair above it.
    curve = [[0.0, 2.0, 4.0], [0.0, 2.0, math.nextafter(4.0, 5.0)]]
    rows = _Rows.of(curve)
    log_c = math.log(2)
    outliers = _outliers(
        rows, _epoch_stats(rows, log_c, log_c), _others_means(curve, rows.lengths), log_c
    )
    assert outliers.tolist() == [False, True] == [plain_outlier(row, log_c) for row in curve]


def plain_single_value_jumps(values: list[float], log_c: float) -> list[bool]:
    n = len(values)

    def rise(e: int) -> float:
        return values[e] - (values[e - 1] + values[e + 1]) / 2

    jumping = [False] * n
    for e in range(1, n - 1):
        if values[e] - max(values[e - 1], values[e + 1]) <= JUMP_MARGIN * log_c:
            continue
        rest = [abs(rise(i)) for i in range(1, n - 1) if abs(i - e) > 1]
        if rest:
            jumping[e] = rise(e) > JUMP_SIGMAS * (ROBUST_SD * statistics.median(rest))
    return jumping


@pytest.mark.parametrize("seed", range(200))
def test_single_value_jumps_are_the_plain_ones(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.choice([1, 2, 3, 4, 5, rng.randint(6, 60)])
    values = [abs(rng.gauss(1.0, rng.choice([0.05, 0.3]))) for _ in range(n)]
    for _ in range(rng.randint(0, 4)):
        values[rng.randrange(n)] += rng.uniform(0.2, 3)
    if rng.random() < 0.3:
        values = [round(v, 1) for v in values]  # ties among the rises
    log_c = math.log(rng.choice([2, 4, 10]))
    found = _single_value_jumps(np.array(values), log_c).tolist()
    assert found == plain_single_value_jumps(values, log_c)


@pytest.mark.parametrize("seed", SEEDS)
def test_median_jumps_are_the_plain_ones(seed: int) -> None:
    curve = random_curve(random.Random(seed))
    log_c = math.log(4)
    medians = [statistics.median(row) for row in curve]
    plain = [
        0 < e < len(curve) - 1
        and len(curve[e]) >= TYPICAL_BATCHES
        and medians[e] - max(medians[e - 1], medians[e + 1]) > JUMP_MARGIN * log_c
        for e in range(len(curve))
    ]
    found = _median_jumps(np.array(medians), _Rows.of(curve).lengths, log_c).tolist()
    assert found == plain


@pytest.mark.parametrize("seed", SEEDS)
def test_spike_details_are_the_plain_ones(seed: int) -> None:
    curve = random_curve(random.Random(seed))
    d = diagnose(curve, 4)
    assert d.epoch_mean == [math.fsum(row) / len(row) for row in curve]
    for spike in d.spike_details:
        others = curve[spike.epoch][:-1]
        assert spike.others_mean == (math.fsum(others) / len(others) if others else None)
        assert spike.others_sd == (statistics.pstdev(others) if len(others) >= 2 else None)
        assert spike.true_class_probability == math.exp(-curve[spike.epoch][-1])


def test_epochs_of_the_same_batches_at_the_bar_share_one_exact_deviation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A quantised curve whose every epoch sits on the outlier bar (333,333 epochs of 0.1,
    0.3, 0.5) took each epoch's exact deviation apart: 8 s at the value cap."""
    calls: list[int] = []

    def counted(values: np.ndarray) -> float:
        calls.append(len(values))
        return float(statistics.pstdev(values.tolist()))

    monkeypatch.setattr(loss_curve, "_pstdev", counted)
    reading = loss_curve.diagnose([[0.1, 0.3, 0.5]] * 1000, 2)
    assert calls == [2, 2] and reading.spikes == []  # epoch 0's start, then the one shared

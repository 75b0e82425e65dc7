"""Loss-curve diagnosis (seed 1.3) on synthetic curves whose spikes are known by construction."""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from service.examples import SEED_BATCH_ACCURACIES, SEED_BATCH_LOSSES
from service.grading.loss_curve import CurveError, diagnose

LOG4 = math.log(4)


def smooth_curve(epochs: int, batches: int, seed: int) -> list[list[float]]:
    """A decaying loss from log 4 with +-2% batch noise: no spikes by construction."""
    rng = random.Random(seed)
    levels = [0.15 + (LOG4 - 0.15) * math.exp(-e / 3) for e in range(epochs)]
    return [[level * (1 + rng.uniform(-0.02, 0.02)) for _ in range(batches)] for level in levels]


def test_epoch_means_and_last_batches() -> None:
    curve = smooth_curve(8, 6, seed=0)
    d = diagnose(curve, 4)
    assert d.epoch_mean == pytest.approx([statistics.fmean(e) for e in curve], rel=1e-15)
    assert d.epoch_mean == pytest.approx(np.mean(np.array(curve), axis=1).tolist(), rel=1e-15)
    assert d.last_batch == [e[-1] for e in curve]
    assert d.initial_loss == d.epoch_mean[0]


@pytest.mark.parametrize("num_classes", [2, 4, 10, 1000])
def test_chance_level_is_log_c_and_one_over_c(num_classes: int) -> None:
    d = diagnose([[1.0]], num_classes)
    # Oracle: cross-entropy of a model whose logits are all equal (uniform prediction).
    uniform = F.cross_entropy(torch.zeros(1, num_classes, dtype=torch.float64), torch.tensor([0]))
    assert d.expected_initial_loss == pytest.approx(float(uniform), rel=1e-12)
    assert d.expected_initial_loss == pytest.approx(-math.log(1 / num_classes), rel=1e-12)
    assert d.chance_accuracy == 1 / num_classes


def test_smooth_curve_has_no_spikes() -> None:
    d = diagnose(smooth_curve(10, 8, seed=1), 4)
    assert d.spikes == [] and d.unstable_epochs == []
    assert d.looks_like_last_batch_reporting is False
    assert any(f.startswith("No spikes") for f in d.findings)
    assert any("close to log 4" in f for f in d.findings)


def test_last_batch_spikes_are_found_and_explained() -> None:
    curve = smooth_curve(10, 8, seed=2)
    for e, value in ((3, 3.4), (7, 0.9)):
        curve[e][-1] = value
    d = diagnose(curve, 4)
    assert d.spikes == [3, 7]
    assert d.looks_like_last_batch_reporting is True
    assert d.unstable_epochs == []
    by_epoch = {s.epoch: s for s in d.spike_details}
    assert by_epoch[3].reasons == ("last_batch_outlier", "above_initial_loss")
    assert by_epoch[7].reasons == ("last_batch_outlier",)  # 0.9: far above its epoch, below log 4
    assert by_epoch[3].others_mean == pytest.approx(statistics.fmean(curve[3][:-1]))
    assert by_epoch[3].others_sd == pytest.approx(statistics.pstdev(curve[3][:-1]))
    text = " ".join(d.findings)
    assert "last-batch reporting" in text and "epochs 3, 7" in text
    assert "exp(-3.400)" in text and "-log p of the true class" in text


@pytest.mark.parametrize(
    "curve",
    [
        [[1.0, 2.0], [1.0]],
        [[1.39, 1.38, 1.40], [1.0, 1.5], [0.8, 0.7, 0.75]],
    ],
)
def test_a_last_batch_with_a_single_other_batch_is_no_outlier(curve: list[list[float]]) -> None:
    """3 standard deviations of the epoch's other batches need two of them: one other batch
    has no standard deviation, and which of two batches is the odd one nobody can say."""
    d = diagnose(curve, 4)
    assert d.spikes == [] and d.looks_like_last_batch_reporting is False
    assert not any("last-batch reporting" in f for f in d.findings)
    # Two other batches are enough: the same last batch beside a second one is an outlier.
    epoch = next(e for e, losses in enumerate(curve) if len(losses) == 2)
    grown = [list(losses) for losses in curve]
    grown[epoch].insert(0, grown[epoch][0])
    spike = diagnose(grown, 4).spike_details[0]
    assert spike.reasons == ("last_batch_outlier",) and spike.others_sd == 0.0


def test_a_spike_inside_the_epoch_is_not_a_reporting_spike() -> None:
    """Only the last batch is reported: an outlier earlier in the epoch moves the mean only."""
    curve = smooth_curve(6, 8, seed=3)
    curve[2][3] = 3.0
    d = diagnose(curve, 4)
    assert d.spikes == []
    assert d.looks_like_last_batch_reporting is False
    assert d.epoch_mean[2] > d.last_batch[2]


def test_true_class_probability_of_a_confident_mistake() -> None:
    """Seed 1.3 problem 2: p(true) = 0.05 costs -log 0.05 ~ 3.0, p = 0.01 costs ~ 4.6."""
    for p_true in (0.05, 0.01):
        # A batch where the model gives the true class p_true and the rest to a wrong class.
        probs = torch.tensor([[p_true, 1 - p_true - 2e-9, 1e-9, 1e-9]] * 32, dtype=torch.float64)
        loss = float(F.nll_loss(probs.log(), torch.zeros(32, dtype=torch.long)))
        curve = [[1.38, 1.39, 1.40], [0.5, 0.45, loss]]
        spike = diagnose(curve, 4).spike_details[0]
        assert spike.true_class_probability == pytest.approx(p_true, rel=1e-6)
        assert "above_initial_loss" in spike.reasons


def test_single_value_epochs_flag_values_above_the_initial_loss() -> None:
    """One loss per epoch: a value above the initial loss is a spike, but nothing can say
    whether the training jumped or one batch was reported (no instability). No "mean_jump"
    either: beside the middle one of 5 epochs no epoch is left to measure the noise with."""
    d = diagnose([[1.39], [1.1], [2.6], [0.7], [0.6]], 4)
    assert d.spikes == [2]
    assert d.spike_details[0].reasons == ("above_initial_loss",)
    assert d.unstable_epochs == []
    assert d.looks_like_last_batch_reporting is None
    assert any("cannot be told apart" in f for f in d.findings)
    assert not any("is the training" in f for f in d.findings)


def test_a_jump_in_a_curve_of_one_value_per_epoch_is_a_mean_jump() -> None:
    """What students usually have: one value an epoch. Epoch 3 rises 0.5 above both
    neighbours where the rest of the curve falls smoothly: the jump the same values get with
    3 batches an epoch, though it cannot say whether the training or one batch jumped."""
    values = [1.39, 1.0, 0.8, 1.3, 0.5]
    d = diagnose([[v] for v in values], 4)
    assert d.spikes == [3] and d.spike_details[0].reasons == ("mean_jump",)
    assert d.unstable_epochs == []
    text = " ".join(d.findings)
    assert "At epoch 3 the loss jumps above the epochs beside it" in text
    assert "either the training itself jumps there" in text
    assert "one unrepresentative batch was reported" in text and "No spikes" not in text
    batches = diagnose([[v] * 3 for v in values], 4)
    assert batches.spikes == [3] and batches.spike_details[0].reasons == ("mean_jump",)
    assert batches.unstable_epochs == [3]


@pytest.mark.parametrize("seed", range(5))
def test_a_jump_in_a_long_curve_of_one_value_per_epoch_is_found(seed: int) -> None:
    curve = smooth_curve(30, 1, seed)
    curve[12] = [curve[12][0] + 0.6]
    d = diagnose(curve, 4)
    assert d.spikes == [12] and d.spike_details[0].reasons == ("mean_jump",)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("epochs", [5, 10, 40])
def test_a_smooth_falling_curve_of_one_value_per_epoch_has_no_jump(seed: int, epochs: int) -> None:
    d = diagnose(smooth_curve(epochs, 1, seed), 4)
    assert d.spikes == [] and any(f.startswith("No spikes") for f in d.findings)


def test_a_curve_that_zigzags_all_along_has_no_jump() -> None:
    """Every other epoch 0.4 above both neighbours: that is the curve's noise, no jump of one
    epoch. With 3 equal batches an epoch, each peak is a jump of the medians."""
    values = [1.39, 0.9, 1.3, 0.8, 1.25, 0.75, 1.2, 0.7, 1.15, 0.65]
    d = diagnose([[v] for v in values], 4)
    assert d.spikes == [] and any(f.startswith("No spikes") for f in d.findings)
    assert diagnose([[v] * 3 for v in values], 4).unstable_epochs == [2, 4, 6, 8]


def test_a_jump_of_the_whole_epoch_is_instability() -> None:
    curve = smooth_curve(8, 6, seed=4)
    curve[5] = [v + 1.0 for v in curve[5]]
    d = diagnose(curve, 4)
    assert d.unstable_epochs == [5]
    assert "mean_jump" in d.spike_details[0].reasons
    assert "last_batch_outlier" not in d.spike_details[0].reasons
    assert any("Clip the gradient norm" in f for f in d.findings)


def test_small_noise_on_a_flat_epoch_is_not_a_spike() -> None:
    """3 sigma of near-equal batches is tiny: the margin of 0.25 log C keeps it unflagged."""
    curve = [[1.386, 1.387, 1.385, 1.386], [0.50, 0.50, 0.50, 0.60]]
    assert diagnose(curve, 4).spikes == []


def test_seed_example_curve() -> None:
    d = diagnose(SEED_BATCH_LOSSES, 4, SEED_BATCH_ACCURACIES)
    assert d.spikes == [3, 6, 9]
    assert d.looks_like_last_batch_reporting is True
    assert d.accuracy_epoch_mean == pytest.approx(
        [statistics.fmean(a) for a in SEED_BATCH_ACCURACIES]
    )
    assert d.accuracy_last_batch == [a[-1] for a in SEED_BATCH_ACCURACIES]
    assert any("accuracy 25% is near chance" in f for f in d.findings)


@pytest.mark.parametrize(("first", "words"), [(2.5, "well above log 4"), (0.6, "well below log 4")])
def test_first_epoch_far_from_chance_is_explained(first: float, words: str) -> None:
    d = diagnose([[first, first], [0.5, 0.5]], 4)
    assert any(words in f for f in d.findings)


@pytest.mark.parametrize(
    ("curve", "left_out"),
    [
        ([[1.39, 1.38, 3.5], [1.0, 0.9, 0.8]], 2),  # the last batch: epoch 0's spike
        ([[1.39, 3.5, 1.38, 1.40], [1.0, 0.9, 0.8]], 1),  # a batch within the epoch
    ],
)
def test_one_outlying_batch_of_epoch_0_is_no_badly_initialised_model(
    curve: list[list[float]], left_out: int
) -> None:
    """Batches at log 4 and one of confident mistakes: the curve starts at chance. The mean
    with that batch (over 1.9) read as large initial logits, beside a finding that blamed the
    same batch on last-batch reporting."""
    d = diagnose(curve, 4)
    others = [loss for b, loss in enumerate(curve[0]) if b != left_out]
    assert d.initial_loss == pytest.approx(statistics.fmean(others), rel=1e-15)
    assert d.epoch_mean[0] == pytest.approx(statistics.fmean(curve[0]))  # the plot's value
    text = " ".join(d.findings)
    assert (
        f"Epoch 0's mean loss {d.initial_loss:.3f} (leaving out batch {left_out}, 3.500, far "
        "above the epoch's other batches) is close to log 4 = 1.386" in text
    ), d.findings
    assert "well above log 4" not in text and "initialised too large" not in text
    if left_out == len(curve[0]) - 1:
        assert d.spike_details[0].epoch == 0
        assert d.spike_details[0].reasons == ("last_batch_outlier",)


def test_one_outlying_batch_of_epoch_0_does_not_raise_the_bar_of_later_spikes() -> None:
    """Epoch 1 at 1.7 is above log 4 (by more than 0.1 log 4); against epoch 0's mean with its
    outlier (2.09) it was not."""
    d = diagnose([[1.39, 1.38, 3.5], [1.7, 1.7, 1.7], [0.8, 0.8, 0.8]], 4)
    assert d.initial_loss == pytest.approx(1.385)
    by_epoch = {s.epoch: s for s in d.spike_details}
    assert by_epoch[1].reasons == ("above_initial_loss",)
    assert d.unstable_epochs == [1]
    assert any("stays above the initial loss log 4 = 1.386" in f for f in d.findings)


def test_the_whole_curve_is_read_from_where_it_starts() -> None:
    """The findings on the curve as a whole read epoch 0 as ``initial_loss`` too: one batch of
    3.9 in epoch 0 neither hides a rise from log 4 nor a curve that never leaves it."""
    first = [1.39, 3.9, 1.38, 1.40]
    rising = diagnose([first, *([1.45 + 0.1 * e] * 3 for e in range(8))], 4)
    assert rising.curve_flags == ["rising_loss"]
    assert any("rises over training instead of falling: from 1.390" in f for f in rising.findings)
    flat = diagnose([first, *([LOG4] * 3 for _ in range(8))], 4)
    assert any("never leaves log 4" in f for f in flat.findings), flat.findings


@pytest.mark.parametrize(
    ("first", "start"),
    [
        ([2.5, 2.6, 2.4], 2.5),
        ([1.39, 1.38, 3.5, 3.4], 2.4175),  # half the epoch high: no one outlying batch
        ([2.5, 2.6, 2.4, 2.45, 2.55, 3.5], 2.5),  # high, and an outlier above that
        # Batch 0, the nearest the initialisation, far above the rest: large initial logits,
        # the very thing the start is read for; never left out.
        ([4.0, 1.5, 1.45, 1.4], 2.0875),
    ],
)
def test_an_epoch_0_that_is_high_is_still_well_above(first: list[float], start: float) -> None:
    """One outlying batch is left out, no more: where the epoch is high, the start is too."""
    d = diagnose([first, [0.5, 0.5, 0.5]], 4)
    assert d.initial_loss == pytest.approx(start)
    assert any(f"Epoch 0's mean loss {start:.3f}" in f for f in d.findings)
    assert any("well above log 4" in f and "initialised too large" in f for f in d.findings)


@pytest.mark.parametrize(
    ("losses", "accuracies", "classes", "where"),
    [
        ([], None, 4, "batch_losses"),
        ([[1.0], []], None, 4, "batch_losses.1"),
        ([[1.0, math.nan]], None, 4, "batch_losses.0.1"),
        ([[1.0, math.inf]], None, 4, "batch_losses.0.1"),
        ([[1.0, -0.1]], None, 4, "batch_losses.0.1"),
        ([[1.0, 6e307, 1.2e308]], None, 4, "batch_losses.0.1"),  # the sum would overflow
        ([[1.0]], None, 1, "num_classes"),
        ([[1.0], [1.0]], [[0.5]], 4, "batch_accuracies"),
        ([[1.0, 1.0]], [[0.5]], 4, "batch_accuracies.0"),
        ([[1.0]], [[25.0]], 4, "batch_accuracies.0.0"),
    ],
)
def test_bad_curves_raise_curve_errors(
    losses: list[list[float]],
    accuracies: list[list[float]] | None,
    classes: int,
    where: str,
) -> None:
    with pytest.raises(CurveError) as error:
        diagnose(losses, classes, accuracies)
    assert error.value.where == where


@pytest.mark.parametrize(
    ("num_classes", "accuracy", "verdict"),
    [
        (4, 0.30, "near chance"),
        (4, 0.45, "far from chance"),
        (100, 0.10, "far from chance"),
        (1000, 0.121, "far from chance"),
        (1000, 0.0012, "near chance"),
    ],
)
def test_near_chance_scales_with_one_over_c(
    num_classes: int, accuracy: float, verdict: str
) -> None:
    """12% is 121 times chance for 1,000 classes: not near it."""
    d = diagnose([[math.log(num_classes)] * 2], num_classes, [[accuracy] * 2])
    assert any(f"is {verdict} (1/C" in f for f in d.findings), d.findings


def test_a_diverging_run_is_the_training_not_confident_mistakes() -> None:
    """Every epoch's typical batch above the initial loss and rising: the learning rate, not
    one unlucky batch per epoch (problem 2) nor the reporting."""
    d = diagnose([[1.39] * 3, [2.0] * 3, [3.0] * 3, [4.0] * 3, [5.0] * 3], 4)
    assert d.unstable_epochs == [1, 2, 3, 4]
    text = " ".join(d.findings)
    assert "At epochs 1, 2, 3, 4 the typical (median) batch loss itself stays above" in text
    assert "the training diverges" in text and "confident wrong prediction" not in text
    assert "No spikes" not in text


@pytest.mark.parametrize(
    "curve",
    [
        [[1.4, 1.4, 1.4], [1.2, 1.2, 0.05], [1.0, 1.0, 0.01]],
        [[1.39, 1.38], [1.2, 0.8], [0.7, 0.5], [0.45, 0.35]],  # falling within each epoch
        [[1.39, 1.1, 0.7], [0.6, 0.5, 0.4], [0.38, 0.35, 0.33]],
    ],
)
def test_a_last_batch_below_its_epoch_is_no_spike(curve: list[list[float]]) -> None:
    """A loss that falls within the epoch ends low: not last-batch reporting, and the "No
    spikes" sentence says only what holds (no last batch rises far above the others)."""
    d = diagnose(curve, 4)
    assert d.spikes == [] and d.looks_like_last_batch_reporting is False
    assert any(f.startswith("No spikes: no epoch's last batch rises far above") for f in d.findings)


def test_an_epoch_whose_typical_batch_is_above_the_initial_loss_is_unstable() -> None:
    """Epoch 1's median is 3.0, far above log 4, though its last batch (1.0) is not: the epoch
    is unstable, whether or not its reported value is a spike."""
    d = diagnose([[1.39] * 3, [3.0, 3.0, 1.0], [3.1] * 3, [3.2] * 3], 4)
    assert 1 in d.unstable_epochs


def test_a_jumping_epoch_whose_last_batch_dips_is_no_jump_spike() -> None:
    """The plot's spike marks the reported value: a dip in a jumping epoch is an outlier of its
    epoch, not a jump of the curve; the jump is still named as the training's."""
    d = diagnose([[1.39] * 3, [1.0] * 3, [3, 3, 3, 0.5], [0.9] * 3], 4)
    assert 2 not in d.spikes  # the plot's curve dips there
    assert 2 in d.unstable_epochs
    assert any(f.startswith("At epoch 2 the typical (median) batch loss") for f in d.findings)


def test_the_initial_loss_named_is_the_one_compared_with() -> None:
    d = diagnose([[3.0, 3.0], [3.2, 3.2, 3.2]], 4)
    assert any("the initial loss (epoch 0's mean, 3.000)" in f for f in d.findings), d.findings
    assert not any("initial loss log 4 = 1.386" in f for f in d.findings)


def test_a_curve_that_never_leaves_chance_says_the_model_has_not_learned() -> None:
    d = diagnose([[LOG4 * (1 + 0.01 * (b % 3 - 1)) for b in range(5)] for _ in range(10)], 4)
    assert any("never leaves log 4" in f for f in d.findings)
    said = next(f for f in d.findings if "never leaves log 4" in f)
    # The usual causes before "more epochs".
    assert said.index("a learning rate too low") < said.index("more epochs")
    assert "optimizer.step() missing" in said and "optimizer.zero_grad() missing" in said
    assert not any("never leaves" in f for f in diagnose(smooth_curve(10, 8, seed=1), 4).findings)


def test_many_spikes_are_counted_not_all_written_out() -> None:
    """A curve of 20,000 epochs, every other one a spike: the findings name a few epochs and
    the count, ``spike_details`` holds the first 1,000, and ``spikes`` all of them."""
    curve = [[1.386] if e % 2 == 0 else [3.0] for e in range(20_000)]
    d = diagnose(curve, 4)
    assert len(d.spikes) == 10_000 and d.spikes[:2] == [1, 3]
    assert len(d.spike_details) == 1000 and d.spike_details[-1].epoch == 1999
    assert max(len(f) for f in d.findings) < 1500
    assert any("(10,000 in all)" in f for f in d.findings)


@pytest.mark.parametrize(
    ("curve", "accuracies"),
    [
        ([[1.4, 1.4, 1.4, 0.9]] * 4, None),  # no spike, but losses dip: still near log 4
        ([[1.25] * 3, [1.38] * 3, [1.53] * 3], None),  # diverging: its own finding
        ([[1.3, 1.3, 1.3, 1.75]] * 4, None),  # last-batch spikes: their own finding
    ],
)
def test_not_learned_is_said_only_where_nothing_else_explains_the_curve(
    curve: list[list[float]], accuracies: list[list[float]] | None
) -> None:
    d = diagnose(curve, 4, accuracies)
    flagged = bool(d.spikes or d.unstable_epochs)
    said = any("never leaves" in f for f in d.findings)
    assert not (flagged and said), d.findings


def test_not_learned_is_not_said_where_the_accuracy_leaves_chance() -> None:
    """Two classes: losses 0.69 to 0.63 stay within 0.1 log 2, but 77% is far from 50%."""
    losses = [[0.69] * 3, [0.66] * 3, [0.64] * 3, [0.63] * 3]
    accuracies = [[0.5] * 3, [0.62] * 3, [0.7] * 3, [0.77] * 3]
    assert not any("never leaves" in f for f in diagnose(losses, 2, accuracies).findings)
    assert any("never leaves" in f for f in diagnose(losses, 2).findings)


def test_a_diverging_run_of_two_batches_an_epoch_is_the_training_too() -> None:
    """Both batches of an epoch above the initial loss: the whole epoch (with a single batch
    an epoch nothing can tell)."""
    d = diagnose([[1.39, 1.39], [2.0, 2.1], [3.0, 3.1], [4.0, 4.1]], 4)
    assert d.unstable_epochs == [1, 2, 3]
    assert "confident wrong prediction" not in " ".join(d.findings)
    one_high = diagnose([[1.39, 1.39], [1.0, 3.0], [0.8, 0.7]], 4)
    assert one_high.unstable_epochs == []  # one batch of two: not the whole epoch


def accuracy_curve(epochs: int, batches: int, seed: int) -> list[list[float]]:
    """A 4-class accuracy from 1/4 towards 1 with +-2 points of batch noise, clipped to
    [0, 1]: what a loss column holds when the accuracy was logged in its place."""
    rng = random.Random(seed)
    levels = [0.25 + 0.7 * (1 - math.exp(-e / 3)) for e in range(epochs)]
    return [
        [min(1.0, max(0.0, level + rng.uniform(-0.02, 0.02))) for _ in range(batches)]
        for level in levels
    ]


@pytest.mark.parametrize("batches", [1, 5])
def test_an_accuracy_curve_given_as_the_loss_is_named(batches: int) -> None:
    """Values that rise steadily from 0.25 (1/4) to 0.92 within [0, 1]: the accuracy, plotted
    or logged as the loss, not a loss "already after some training" with "no spikes"."""
    curve = [[0.25 + (0.92 - 0.25) * e / 9] * batches for e in range(10)]
    d = diagnose(curve, 4)
    text = " ".join(d.findings)
    assert "this looks like accuracy, not the cross-entropy loss" in text, d.findings
    assert "1/4 = 0.25 (chance accuracy for 4 classes)" in text
    assert "never leave [0, 1]" in text and "starts near log 4 = 1.386 and falls" in text
    assert "Check which column you plotted" in text
    assert "already after some training" not in text
    assert "No spikes" not in text and "never leaves log 4" not in text
    assert d.curve_flags == ["rising_loss", "looks_like_accuracy"]


@pytest.mark.parametrize("seed", range(5))
def test_a_noisy_accuracy_curve_that_levels_off_is_named_too(seed: int) -> None:
    """Accuracies saturate: most of the run is a noisy plateau near 0.95, the rise is early."""
    d = diagnose(accuracy_curve(30, 8, seed), 4)
    assert any("looks like accuracy" in f for f in d.findings)
    assert "looks_like_accuracy" in d.curve_flags


@pytest.mark.parametrize(("num_classes", "top"), [(2, 0.95), (10, 0.9), (1000, 0.6)])
def test_accuracy_curves_of_other_class_counts(num_classes: int, top: float) -> None:
    """From 1/C towards ``top``: at C = 2 the values pass log 2 = 0.693, which must read as
    the accuracy, not as confident mistakes nor a diverging loss."""
    chance = 1 / num_classes
    curve = [[chance + (top - chance) * (1 - math.exp(-e / 2))] * 4 for e in range(8)]
    d = diagnose(curve, num_classes)
    text = " ".join(d.findings)
    assert f"1/{num_classes} = {chance:.3g} (chance accuracy for {num_classes} classes)" in text
    assert "already after some training" not in text
    assert "confident wrong prediction" not in text and "so the training diverges" not in text
    assert "looks_like_accuracy" in d.curve_flags


@pytest.mark.parametrize("batches", [1, 3])
def test_a_loss_rising_from_log_c_is_named_as_rising(batches: int) -> None:
    """From log 4 to 5: the loss rises over training (divergence), not an accuracy (it leaves
    [0, 1]); with one value an epoch, not one confident wrong batch after another either."""
    curve = [[LOG4 + (5.0 - LOG4) * e / 7] * batches for e in range(8)]
    d = diagnose(curve, 4)
    text = " ".join(d.findings)
    assert "The loss rises over training instead of falling: from 1.386 at epoch 0" in text
    assert "learning rate too high" in text and "sign error in the update" in text
    assert "check which column you plotted" in text
    assert "looks like accuracy" not in text and "No spikes" not in text
    assert "confident wrong prediction" not in text
    assert d.curve_flags == ["rising_loss"]


def test_a_rising_loss_that_starts_below_log_c_is_not_called_trained() -> None:
    """0.5 to 1.3 for 4 classes leaves [0, 1] and starts far from 1/4: a rising loss, and its
    low start is no sign of "some training" (the curve gets worse from there)."""
    d = diagnose([[0.5 + 0.1 * e] * 3 for e in range(9)], 4)
    text = " ".join(d.findings)
    assert "well below log 4 = 1.386, and the curve rises from there" in text
    assert "already after some training" not in text
    assert d.curve_flags == ["rising_loss"]


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("batches", [1, 8])
def test_falling_and_noisy_flat_curves_are_not_rising(seed: int, batches: int) -> None:
    """No false alarm: a falling curve, a flat one at chance with noise of +-0.1 log C in each
    value, and a falling one whose last epoch spikes."""
    rng = random.Random(seed)
    flat = [[LOG4 * (1 + rng.uniform(-0.1, 0.1)) for _ in range(batches)] for _ in range(10)]
    late_spike = smooth_curve(10, batches, seed)
    late_spike[-1] = [3.0] * batches
    for curve in (smooth_curve(10, batches, seed), flat, late_spike):
        d = diagnose(curve, 4)
        assert d.curve_flags == [], (curve, d.findings)
        assert not any("rises over training" in f or "looks like accuracy" in f for f in d.findings)


def test_a_curve_falling_from_below_log_c_still_reads_as_after_some_training() -> None:
    """The existing reading where it holds: a low start that keeps falling."""
    d = diagnose([[0.6, 0.6], [0.5, 0.5], [0.4, 0.4]], 4)
    assert d.curve_flags == []
    assert any("already after some training" in f for f in d.findings)


def test_the_seed_curves_have_no_curve_flags() -> None:
    """The homework's loss curve falls (its spikes are the last batches'), and its accuracies
    rise: only given as the loss do they read as an accuracy curve."""
    assert diagnose(SEED_BATCH_LOSSES, 4, SEED_BATCH_ACCURACIES).curve_flags == []
    assert "looks_like_accuracy" in diagnose(SEED_BATCH_ACCURACIES, 4).curve_flags


# Adam at lr = 1, every batch of its first 4 epochs (4 classes, 19 batches an epoch).
ADAM_LR_1 = [
    [float(loss) for loss in epoch.split()]
    for epoch in (
        "1.54 1.56 1.41 1.55 1.5 1.51 1.5 1.57 1.46 1.47 1.43 1.39 1.52 1.54 1.45 1.42 1.46 1.49 "
        "1.37",
        "1.32 43.61 8.58 4.97 0.0 1.97 3.07 0.0 0.0 0.0 0.0 0.0 0.0 0.69 11.96 0.0 1.07 0.0 0.0",
        "0.01 0.0 0.0 1.84 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.62 0.0 0.0 0.0 0.0 2.53 13.7",
        "0.0 0.0 0.0 0.0 0.0 0.0 13.38 0.0 5.73 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0",
    )
]


def test_several_spiking_batches_in_an_epoch_are_a_learning_rate_too_high() -> None:
    """Each epoch's median batch is 0, which hid batches of 2 to 44 (epoch 1's mean is 4.07
    against a start of 1.48): the training thrown off again and again, not one batch reported.
    Epoch 2's last batch (13.7) is one of them, and was called last-batch reporting alone."""
    d = diagnose(ADAM_LR_1, 4)
    assert d.unstable_epochs == [1, 2, 3]
    assert d.looks_like_last_batch_reporting is False
    text = " ".join(d.findings)
    assert "At epochs 1, 2, 3 several batches, not one, sit far above the epoch's typical" in text
    # 43.61, 11.96, 8.58, 4.97, 3.07: 1.97 is within 0.5 log C of the start.
    assert "(epoch 1: 5 of 19 batches, up to 43.610, where the median is 0.000" in text
    assert "the learning rate is too high" in text and "clip the gradient norm" in text
    assert "At epoch 2 the last batch is one of those spikes" in text
    assert "This is last-batch reporting" not in text
    assert "confident wrong prediction" not in text


@pytest.mark.parametrize("last", [3.4, 40.0])
def test_one_outlying_batch_an_epoch_is_still_last_batch_reporting(last: float) -> None:
    """The homework's case, however high its one batch: not the training's instability."""
    curve = [list(losses) for losses in SEED_BATCH_LOSSES]
    curve[3][-1] = last
    d = diagnose(curve, 4)
    assert d.spikes == [3, 6, 9] and d.unstable_epochs == []
    assert d.looks_like_last_batch_reporting is True
    text = " ".join(d.findings)
    assert "This is last-batch reporting" in text and "several batches" not in text


@pytest.mark.parametrize(("high", "unstable"), [(6, []), (7, [1])])
def test_a_few_high_batches_among_many_are_the_heavy_tail_of_small_batches(
    high: int, unstable: list[int]
) -> None:
    """Batches of 8 have a heavy tail: a healthy epoch of 128 of them had up to 5 above the
    initial loss. Several means one in 20 of the epoch's batches (7 of 128) as well as two."""
    epoch = [0.4] * (128 - high) + [2.5] * high
    random.Random(0).shuffle(epoch)
    d = diagnose([[LOG4] * 128, epoch, [0.35] * 128], 4)
    assert d.unstable_epochs == unstable


def noisy_run(num_classes: int, noise: float, seed: int, epochs: int = 8) -> list[list[float]]:
    """A healthy run: a linear classifier trained by SGD (lr 0.05) on batches of 8 of 1,024
    Gaussian points, a share ``noise`` of whose labels is drawn at random. Its batch losses have
    the heavy tail of small batches: those holding several noisy labels, confident mistakes,
    sit far above the rest of the epoch."""
    rng = np.random.default_rng(seed)
    n, dim, batch, lr = 1024, 20, 8, 0.05
    x = rng.standard_normal((n, dim))
    y = (x @ rng.standard_normal((dim, num_classes))).argmax(1)
    y = np.where(rng.random(n) < noise, rng.integers(0, num_classes, n), y)
    bound = 1 / math.sqrt(dim)  # PyTorch's default init of a linear layer
    w = rng.uniform(-bound, bound, (dim, num_classes))
    b = rng.uniform(-bound, bound, num_classes)

    def log_probs(xb: np.ndarray) -> np.ndarray:
        z = xb @ w + b
        z -= z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    def loss(logp: np.ndarray, yb: np.ndarray) -> float:
        return float(-logp[np.arange(len(yb)), yb].mean())

    curve = [[loss(log_probs(x[i : i + batch]), y[i : i + batch]) for i in range(0, n, batch)]]
    for _ in range(epochs):
        order = rng.permutation(n)
        losses = []
        for i in range(0, n, batch):
            xb, yb = x[order[i : i + batch]], y[order[i : i + batch]]
            logp = log_probs(xb)
            losses.append(loss(logp, yb))
            grad = np.exp(logp)
            grad[np.arange(len(yb)), yb] -= 1
            grad /= len(yb)
            w -= lr * xb.T @ grad
            b -= lr * grad.sum(0)
        curve.append(losses)
    return curve


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize(("num_classes", "noise"), [(2, 0.1), (2, 0.3), (4, 0.3)])
def test_the_heavy_tail_of_small_noisy_batches_is_no_instability(
    num_classes: int, noise: float, seed: int
) -> None:
    """Batches of 8 with noisy labels: up to 2 log C above the initial loss, several an epoch,
    flagged 6 to 9 runs in 10 at C = 2 as a learning rate too high. They are no further above
    the epoch's median than its spread allows."""
    d = diagnose(noisy_run(num_classes, noise, seed), num_classes)
    assert d.unstable_epochs == []
    assert not any("several batches, not one" in f for f in d.findings)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize(("num_classes", "outlier"), [(2, 2.5), (4, 4.0)])
def test_last_batch_outliers_of_a_noisy_run_are_last_batch_reporting(
    num_classes: int, outlier: float, seed: int
) -> None:
    """The homework's bug on top of a healthy noisy run: was blamed on the learning rate (the
    outliers counted among the heavy tail's batches), where it is last-batch reporting."""
    curve = noisy_run(num_classes, 0.3, seed)
    for epoch in (3, 5, 6):
        curve[epoch][-1] = outlier
    d = diagnose(curve, num_classes)
    assert d.unstable_epochs == [] and {3, 5, 6} <= set(d.spikes)
    assert d.looks_like_last_batch_reporting is True
    assert any("This is last-batch reporting" in f for f in d.findings)


def test_the_first_batches_of_epoch_1_still_near_chance_are_no_spikes() -> None:
    """The loss falls within epoch 1: its first batches sit far above its median, but not
    above the initial loss."""
    first = [LOG4 + 0.05, LOG4 - 0.02, LOG4 + 0.08, 1.2, 0.9]
    d = diagnose([[LOG4] * 20, first + [0.6] * 15, [0.5] * 20], 4)
    assert d.unstable_epochs == [] and d.spikes == []


@pytest.mark.parametrize(
    ("values", "reading"),
    [
        # Falling to 0.55, climbing back for 6 epochs, then exploding.
        (
            [1.46, 1.29, 1.01, 0.77, 0.62, 0.56, 0.55, 0.57, 0.64, 0.89, 0.85, 1.23, 167.35],
            "the loss climbs for 6 epochs from 0.550 at epoch 6 and explodes to 167.350 at "
            "epoch 12 (more than 10 log C",
        ),
        # SGD whose learning rate doubled every epoch: a climb, no explosion.
        (
            [1.46, 1.29, 0.98, 0.71, 0.58, 0.6, 0.65, 0.92, 7.13],
            "the loss climbs for 4 epochs from 0.580 at epoch 4 to 7.130 at epoch 8, the whole",
        ),
        # An explosion out of a falling curve: no climb.
        (
            [1.39, 1.2, 1.0, 0.9, 0.8, 0.75, 0.7, 60.0, 0.65, 0.6],
            "the loss explodes to 60.000 at epoch 7 (more than 10 log C",
        ),
    ],
)
def test_one_value_an_epoch_that_climbs_or_explodes_may_be_divergence(
    values: list[float], reading: str
) -> None:
    """With one value an epoch, a value above the initial loss reached by a climb over several
    epochs, or exploding, is offered both readings: one batch of confident mistakes, and if
    these are epoch means, the training diverging."""
    d = diagnose([[v] for v in values], 4)
    text = " ".join(d.findings)
    assert "a confident wrong prediction costs more" in text
    assert "if these are epoch means, " + reading in text, d.findings
    assert "so the training diverges. Lower the learning rate" in text
    assert d.unstable_epochs == []  # one value an epoch still cannot tell


@pytest.mark.parametrize(
    "values",
    [
        [1.39, 1.1, 2.6, 0.7, 0.6],
        [1.39, 0.6, 0.58, 0.61, 0.59, 0.6, 2.0, 0.55],  # flat, then one jump: no climb
        [1.46, 0.9, 0.7, 3.0, 2.5, 2.0, 0.6, 0.5],  # a jump falling back: no climb
    ],
)
def test_one_value_an_epoch_above_the_initial_loss_alone_is_one_reading(
    values: list[float],
) -> None:
    d = diagnose([[v] for v in values], 4)
    assert any("a confident wrong prediction costs more" in f for f in d.findings)
    assert not any("if these are epoch means, the loss" in f for f in d.findings), d.findings


@pytest.mark.parametrize(
    ("first", "classes", "above"), [(1.46, 4, False), (1.55, 4, True), (1.58, 4, True)]
)
def test_pytorchs_default_initialisation_starts_at_chance(
    first: float, classes: int, above: bool
) -> None:
    """Random initial logits put an untrained model a little above log C, never below by
    much: a default-initialised linear classifier of 4 classes started at 1.46 to 1.58. Past
    the tolerance below (0.15), the finding says why it is above."""
    d = diagnose([[first], [1.1], [0.8]], classes)
    text = " ".join(d.findings)
    assert f"Epoch 0's mean loss {first:.3f} is close to log {classes}" in text, d.findings
    assert ("a little above it, as random initial weights put it" in text) is above
    assert "well above" not in text and "initialised too large" not in text


@pytest.mark.parametrize(("first", "words"), [(3.78, "well above"), (53.6, "well above")])
def test_weights_initialised_too_large_are_still_named(first: float, words: str) -> None:
    """Weights 4 and 10 times PyTorch's default: 3.78 and 53.6 for 4 classes."""
    d = diagnose([[first], [1.1], [0.8]], 4)
    assert any(words in f and "initialised too large" in f for f in d.findings), d.findings


@pytest.mark.parametrize(("first", "close"), [(1.4, True), (1.24, True), (1.23, False)])
def test_below_log_c_the_tolerance_stays_narrow(first: float, close: bool) -> None:
    """The homework's 1.4 is close to log 4 without a word on the initial weights; 0.15 below
    log 4 is still the limit below."""
    d = diagnose([[first], [1.1], [0.8]], 4)
    assert any("is close to log 4" in f for f in d.findings) is close
    assert not any("random initial weights" in f for f in d.findings)


ACCURACY_FROM_EPOCH_1 = [0.52, 0.73, 0.76, 0.78, 0.79, 0.79, 0.79, 0.8]


@pytest.mark.parametrize("batches", [1, 4])
def test_an_accuracy_curve_without_an_epoch_0_at_chance_is_named(batches: int) -> None:
    """Accuracies logged from epoch 1 (0.52 to 0.80, 4 classes): no loss of 3 classes or more
    starts below 1 and climbs within [0, 1], where it read as a healthy loss."""
    rng = random.Random(0)
    curve = [[a + rng.uniform(-0.01, 0.01) for _ in range(batches)] for a in ACCURACY_FROM_EPOCH_1]
    d = diagnose(curve, 4)
    assert d.curve_flags == ["looks_like_accuracy"]
    text = " ".join(d.findings)
    assert "most epochs above the first, and never leave [0, 1]: this looks like accuracy" in text
    assert "for 4 classes starts near log 4 = 1.386, above 1, and falls" in text
    assert "The curve has no epoch 0 of the untrained model" in text
    assert "Check which column you plotted or logged as the loss" in text
    assert "already after some training (or the classes" not in text and "No spikes" not in text


@pytest.mark.parametrize("seed", range(10))
def test_a_small_noisy_loss_is_no_accuracy(seed: int) -> None:
    """A trained model's loss near 0.02 that wobbles, and one near 0.3 that creeps up by 0.15
    (a validation loss beginning to overfit), stay losses."""
    rng = random.Random(seed)
    small = [[0.02 * (1 + rng.uniform(-0.5, 0.5))] for _ in range(12)]
    creeping = [[0.3 + 0.15 * e / 11 + rng.uniform(-0.02, 0.02)] for e in range(12)]
    for curve in (small, creeping):
        d = diagnose(curve, 4)
        assert "looks_like_accuracy" not in d.curve_flags, curve
        assert not any("looks like accuracy" in f for f in d.findings)


def test_a_binary_loss_rising_within_0_1_is_no_accuracy_without_a_start_at_one_half() -> None:
    """log 2 = 0.69: a loss of 2 classes lies in [0, 1] all along, so only a start near 1/2
    tells an accuracy; 0.3 rising to 0.65 is a loss that rises."""
    d = diagnose([[0.3 + 0.05 * e] for e in range(8)], 2)
    assert d.curve_flags == ["rising_loss"]


FALL_THEN_RISE = [1.42, 1.23, 1.09, 1.01, 1.0, 1.02, 1.06, 1.1, 1.14, 1.18, 1.22]


@pytest.mark.parametrize("batches", [1, 5])
def test_a_loss_that_falls_and_climbs_back_is_overfitting_or_instability(batches: int) -> None:
    """1.42 down to 1.00 at epoch 4, back up to 1.22: below epoch 0 all along, so no
    rising_loss, but the late epochs sit well above the minimum."""
    d = diagnose([[v] * batches for v in FALL_THEN_RISE], 4)
    assert d.curve_flags == ["rising_after_minimum"]
    text = " ".join(d.findings)
    assert "The loss falls to 1.000 at epoch 4, then climbs back: 1.180 (the median of " in text
    assert "For a test (validation) curve this is overfitting" in text
    assert "keep the weights of epoch 4 (early stopping)" in text
    assert "For a training curve it is instability" in text and "a bug" in text
    assert "No spikes" not in text and "well below" not in text


def test_a_climb_back_with_a_late_explosion_keeps_both_findings() -> None:
    values = [1.46, 1.29, 1.01, 0.77, 0.62, 0.56, 0.55, 0.57, 0.64, 0.89, 0.85, 1.23, 167.35]
    d = diagnose([[v] for v in values], 4)
    assert d.curve_flags == ["rising_after_minimum"]
    assert any("then climbs back" in f for f in d.findings)
    assert any("if these are epoch means, the loss climbs" in f for f in d.findings)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("batches", [1, 8])
def test_noise_around_a_plateau_is_no_climb_back(seed: int, batches: int) -> None:
    """A falling curve that levels off with noise: its lowest epoch is the noise's, and the
    late epochs sit within it."""
    rng = random.Random(seed)
    levels = [0.3 + (LOG4 - 0.3) * math.exp(-e / 2) for e in range(15)]
    curve = [[v * (1 + rng.uniform(-0.05, 0.05)) for _ in range(batches)] for v in levels]
    assert diagnose(curve, 4).curve_flags == []


def test_a_loss_that_swings_back_to_chance_every_epoch_points_to_the_learning_rate() -> None:
    """Between about 0.7 and 1.4 every epoch: no spike of one epoch (the whole curve is that
    noisy), but swings of half a nat back to chance are a learning rate too high."""
    values = [1.39, 0.9, 1.3, 0.7, 1.4, 0.8, 1.35, 0.75, 1.3, 0.8, 1.35, 0.7]
    d = diagnose([[v] for v in values], 4)
    assert d.spikes == [] and d.curve_flags == []
    text = " ".join(d.findings)
    assert "The loss swings up and down from epoch to epoch, by 0.55 nats" in text
    assert "peaks keep coming back to the loss at chance, log 4 = 1.386" in text
    assert "point to a learning rate too high" in text
    # Beside "the training undoes what it learned again and again", "No spikes" was a
    # contradiction.
    assert "No spikes" not in text


@pytest.mark.parametrize("batches", [1, 4])
def test_a_zigzag_whose_peaks_are_far_above_chance_is_not_said_to_return_to_chance(
    batches: int,
) -> None:
    """Peaks of 3 to 4 nats at C = 4 are far above log 4, not "back to the loss at chance"."""
    values = [1.39, 0.5, 3.0, 0.4, 3.5, 0.5, 4.0]
    d = diagnose([[v] * batches for v in values], 4)
    assert not any("swings up and down" in f for f in d.findings)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("batches", [1, 8])
def test_noise_is_no_swing_back_to_chance(seed: int, batches: int) -> None:
    """A smooth falling curve, and a flat one at chance with noise of 0.1 log C each way."""
    rng = random.Random(seed)
    flat = [[LOG4 * (1 + rng.uniform(-0.1, 0.1)) for _ in range(batches)] for _ in range(12)]
    for curve in (smooth_curve(12, batches, seed), flat):
        assert not any("swings up and down" in f for f in diagnose(curve, 4).findings)


OVERFITTING_FROM_EPOCH_1 = [0.45, 0.40, 0.47, 0.55, 0.65, 0.75, 0.85, 0.95, 0.99]
ITS_ACCURACIES = [0.86, 0.88, 0.88, 0.87, 0.87, 0.86, 0.86, 0.85, 0.85]


def test_losses_sent_beside_their_accuracies_are_not_read_as_accuracy() -> None:
    """A validation loss of 10 classes logged from epoch 1 that overfits within [0, 1]: alone
    it may be an accuracy curve, but beside the accuracies sent it is the loss, which falls
    and climbs back. It read as accuracy, which hid the climb."""
    curve = [[v] for v in OVERFITTING_FROM_EPOCH_1]
    accuracies = [[a] for a in ITS_ACCURACIES]
    d = diagnose(curve, 10, accuracies)
    assert d.curve_flags == ["rising_after_minimum"]
    text = " ".join(d.findings)
    assert "looks like accuracy" not in text
    assert "The loss falls to 0.400 at epoch 1, then climbs back" in text
    assert "this is overfitting" in text
    # Alone, or with the same values sent as the accuracies, it is still read as accuracy.
    assert diagnose(curve, 10).curve_flags == ["looks_like_accuracy"]
    assert diagnose(curve, 10, curve).curve_flags == ["looks_like_accuracy"]


@pytest.mark.parametrize("num_classes", [2, 10])
def test_an_accuracy_curve_beside_other_accuracies_that_climb_is_still_accuracy(
    num_classes: int,
) -> None:
    """The test accuracy plotted as the loss, the training accuracy (or the same, rounded
    otherwise) sent beside it: both climb, so the curve is read as accuracy, not as a loss
    that diverges (which told the student to lower the learning rate)."""
    chance = 1 / num_classes
    test_accuracy = [chance, chance + 0.15, chance + 0.25, chance + 0.32, chance + 0.38]
    for beside in ([a + 1e-9 for a in test_accuracy], [a + 0.04 for a in test_accuracy]):
        d = diagnose([[a] for a in test_accuracy], num_classes, [[a] for a in beside])
        assert "looks_like_accuracy" in d.curve_flags, (beside, d.curve_flags)
        assert any("looks like accuracy" in f for f in d.findings)

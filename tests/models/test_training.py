"""The reference training loop: every batch's loss recorded, epoch means reported (seed 1.3)."""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from models.errors import InvalidConfig, LimitExceeded
from models.temporal_order import Batch, TaskSpec, build_classifier, generate
from models.training import PassResult, TrainingConfig, evaluate, train, train_epoch

QUICK = TaskSpec(length_range=(20, 24), t1_range=(3, 6), t2_range=(12, 16))
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


F64 = torch.float64


def _batches(n: int, size: int, seed: int) -> list[Batch]:
    gen = torch.Generator().manual_seed(seed)
    return [generate(QUICK, size, gen).to(CPU, F64) for _ in range(n)]


def test_pass_result_means_over_batches() -> None:
    result = PassResult([1.0, 2.0, 6.0], [1, 2, 3], [4, 4, 4])
    assert result.mean_loss == statistics.fmean([1.0, 2.0, 6.0]) == 3.0
    assert result.last_batch_loss == 6.0
    assert result.accuracy == 6 / 12
    assert result.batch_accuracies == [0.25, 0.5, 0.75]
    assert result.last_batch_accuracy == 0.75


def test_evaluate_records_every_batch_and_means_them() -> None:
    model = build_classifier("gated", 8, seed=0, device=CPU, dtype=F64)
    batches = _batches(5, 16, seed=1)
    result = evaluate(model, batches)
    assert result is not None
    assert len(result.batch_losses) == 5
    assert result.mean_loss == pytest.approx(statistics.fmean(result.batch_losses), rel=1e-15)
    with torch.no_grad():
        logits = [model(b.x, b.lengths) for b in batches]
    # Equal batch sizes: the mean of batch means is the mean over every sequence at once.
    everything = F.cross_entropy(torch.cat(logits), torch.cat([b.y for b in batches]))
    assert result.mean_loss == pytest.approx(float(everything), rel=1e-12)
    # The last batch alone, cross-entropy written out: -log softmax of the true class.
    last, y = logits[-1], batches[-1].y
    by_hand = (torch.logsumexp(last, dim=1) - last[torch.arange(len(y)), y]).mean()
    assert result.last_batch_loss == pytest.approx(float(by_hand), rel=1e-12)
    correct = sum(int((lg.argmax(1) == b.y).sum()) for lg, b in zip(logits, batches, strict=True))
    assert result.accuracy == correct / 80


@pytest.mark.parametrize("clip", [None, 0.05])
def test_train_epoch_matches_a_hand_written_loop(clip: float | None) -> None:
    """Each recorded loss is the batch's loss before its step; clipping as its formula says."""
    model = build_classifier("gated", 8, seed=2, device=CPU, dtype=F64)
    twin = copy.deepcopy(model)
    batches = _batches(4, 16, seed=3)
    result = train_epoch(model, batches, torch.optim.Adam(model.parameters(), lr=0.05), clip)
    assert result is not None

    optimizer = torch.optim.Adam(twin.parameters(), lr=0.05)
    expected = []
    for batch in batches:
        optimizer.zero_grad()
        logits = twin(batch.x, batch.lengths)
        log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        loss = -log_p[torch.arange(len(batch.y)), batch.y].mean()
        loss.backward()
        if clip is not None:  # g <- g * min(1, clip / ||g||), ||g|| over every parameter
            grads = [p.grad for p in twin.parameters() if p.grad is not None]
            norm = math.sqrt(sum(float((g**2).sum()) for g in grads))
            for g in grads:
                g.mul_(min(1.0, clip / (norm + 1e-6)))
        optimizer.step()
        expected.append(loss.item())
    assert result.batch_losses == pytest.approx(expected, rel=1e-9)
    assert result.mean_loss == pytest.approx(statistics.fmean(expected), rel=1e-9)
    assert result.last_batch_loss == pytest.approx(expected[-1], rel=1e-9)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-8, atol=1e-10)


def test_quick_run_reports_epoch_means_and_learns() -> None:
    """The README's quick configuration: the seed's gated RNN learns the short task."""
    config = TrainingConfig(spec=QUICK, cell="gated", epochs=6, seed=0)
    run = train(config, CPU, F64)
    assert not run.stopped_early
    assert [e.epoch for e in run.epochs] == list(range(1, 7))
    assert abs(run.initial.mean_loss - math.log(4)) < 0.15
    assert abs(run.initial.accuracy - 0.25) < 0.12
    for e in run.epochs:
        assert len(e.train.batch_losses) == config.train_batches
        assert len(e.test.batch_losses) == config.test_batches
        assert e.train.mean_loss == math.fsum(e.train.batch_losses) / config.train_batches
        assert e.train.last_batch_loss == e.train.batch_losses[-1]
    assert run.epochs[-1].test.accuracy > 0.9
    # The same config and seed give the same run.
    again = train(config, CPU, F64)
    assert [e.train.batch_losses for e in again.epochs] == [
        e.train.batch_losses for e in run.epochs
    ]


def test_stop_check_ends_the_run_with_the_completed_epochs() -> None:
    config = TrainingConfig(spec=QUICK, epochs=5, train_batches=3, test_batches=2, batch_size=8)
    # The test set (2 batches made) and the untrained model's evaluation (2) come first.
    first = 2 + 2
    calls = 0

    def after(asked: int) -> Callable[[], bool]:
        def check() -> bool:
            nonlocal calls
            calls += 1
            return calls > asked

        return check

    run = train(config, CPU, F64, should_stop=after(first))
    assert run.stopped_early and run.epochs == [] and run.initial.batch_losses
    calls = 0
    # Asked before each of 3 training and 2 test batches per epoch.
    run = train(config, CPU, F64, should_stop=after(first + 2 * (3 + 2)))
    assert run.stopped_early
    assert [e.epoch for e in run.epochs] == [1, 2]


@pytest.mark.parametrize("asked", [0, 1, 2, 3])
def test_a_limit_too_short_for_the_untrained_evaluation_is_refused(asked: int) -> None:
    """Making the test set and evaluating the untrained model are under the limit too: a run
    stopped there has no epoch 0 to answer, and says what to change."""
    config = TrainingConfig(spec=QUICK, epochs=5, train_batches=3, test_batches=2, batch_size=8)
    calls = 0

    def check() -> bool:
        nonlocal calls
        calls += 1
        return calls > asked

    with pytest.raises(LimitExceeded) as refused:
        train(config, CPU, F64, should_stop=check)
    assert refused.value.where == "max_seconds" and "raise max_seconds" in str(refused.value)


@pytest.mark.parametrize(
    ("kwargs", "where"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": math.nan}, "learning_rate"),
        ({"clip_grad_norm": -1.0}, "clip_grad_norm"),
    ],
)
def test_bad_training_configs_are_refused(kwargs: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidConfig) as error:
        TrainingConfig(**kwargs)
    assert error.value.where == where

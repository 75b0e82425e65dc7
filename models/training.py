"""The reference training loop of the seed's part 1.3, reporting losses the right way.

The homework's ``train()`` and ``test()`` returned ``loss.item()`` of the *last* batch, so the
plotted curve showed one batch's luck (problem 1) and could rise above the initial loss
log 4 (problem 2). The fix (problem 3) is to average over every batch of the epoch. These
functions record every batch's loss and report both: ``PassResult.mean_loss`` is the fix,
``PassResult.last_batch_loss`` is what the buggy loop plotted.

Example:
    >>> from models.temporal_order import TaskSpec
    >>> config = TrainingConfig(spec=TaskSpec((20, 24), (3, 6), (12, 16)), epochs=1,
    ...                         train_batches=2, test_batches=1, batch_size=8)
    >>> run = train(config, torch.device("cpu"), torch.float64)
    >>> len(run.epochs), len(run.epochs[0].train.batch_losses)
    (1, 2)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from models.errors import InvalidConfig, LimitExceeded
from models.temporal_order import Batch, CellName, TaskSpec, build_classifier, generate

StopCheck = Callable[[], bool]


@dataclass(frozen=True)
class PassResult:
    """One pass over a set of batches (a training epoch or an evaluation).

    Attributes:
        batch_losses: the mean cross-entropy of every batch, in order.
        batch_correct: how many sequences of every batch were classified correctly.
        batch_sizes: the number of sequences in every batch.
    """

    batch_losses: list[float]
    batch_correct: list[int]
    batch_sizes: list[int]

    @property
    def batch_accuracies(self) -> list[float]:
        return [c / n for c, n in zip(self.batch_correct, self.batch_sizes, strict=True)]

    @property
    def mean_loss(self) -> float:
        """The mean over batches of the batch losses: the seed's fix (1.3, problem 3)."""
        return math.fsum(self.batch_losses) / len(self.batch_losses)

    @property
    def last_batch_loss(self) -> float:
        """The last batch's loss: what the seed's buggy loop reported (1.3, problem 1)."""
        return self.batch_losses[-1]

    @property
    def accuracy(self) -> float:
        """The fraction of every sequence of the pass classified correctly."""
        return sum(self.batch_correct) / sum(self.batch_sizes)

    @property
    def last_batch_accuracy(self) -> float:
        return self.batch_correct[-1] / self.batch_sizes[-1]


@dataclass(frozen=True)
class EpochReport:
    """Epoch ``epoch`` (1-based; epoch 0 is the untrained model): its training pass and the
    evaluation on the test set after it."""

    epoch: int
    train: PassResult
    test: PassResult


@dataclass(frozen=True)
class TrainingConfig:
    """Everything a reference run depends on; the same config and seed give the same run on
    the same device.

    Attributes:
        spec: lengths and marker positions of the task.
        cell: the recurrent layer (``lstm``, ``rnn`` or the seed's ``gated``).
        hidden_size: its state size.
        epochs: training epochs; each draws ``train_batches`` fresh batches, as the seed's
            generator does.
        batch_size: sequences per batch.
        train_batches: batches per training epoch.
        test_batches: batches of the fixed test set.
        learning_rate: of Adam.
        clip_grad_norm: when set, the gradient's global norm is clipped to it before each
            step (one of the seed's improvements in 1.3, problem 3).
        seed: seeds the initial weights, the training data and the test set.
    """

    spec: TaskSpec = field(default_factory=TaskSpec)
    cell: CellName = "lstm"
    hidden_size: int = 32
    epochs: int = 10
    batch_size: int = 32
    train_batches: int = 20
    test_batches: int = 8
    learning_rate: float = 0.01
    clip_grad_norm: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "train_batches", "test_batches"):
            if getattr(self, name) < 1:
                raise InvalidConfig(f"{name} must be at least 1, got {getattr(self, name)}", name)
        if not self.learning_rate > 0:
            raise InvalidConfig(
                f"learning_rate must be positive, got {self.learning_rate}", "learning_rate"
            )
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise InvalidConfig(
                f"clip_grad_norm must be positive (or absent), got {self.clip_grad_norm}",
                "clip_grad_norm",
            )


@dataclass(frozen=True)
class TrainingRun:
    """What a run reports: the untrained model on the test set (epoch 0), every completed
    epoch, and whether it stopped before the last epoch because it was told to."""

    initial: PassResult
    epochs: list[EpochReport]
    stopped_early: bool


def _pass(
    model: nn.Module,
    batches: Iterable[Batch],
    step: Callable[[torch.Tensor], None] | None,
    should_stop: StopCheck | None,
) -> PassResult | None:
    losses: list[torch.Tensor] = []
    correct: list[torch.Tensor] = []
    sizes: list[int] = []
    loss_fn = nn.CrossEntropyLoss()
    for batch in batches:
        if should_stop is not None and should_stop():
            return None
        logits = model(batch.x, batch.lengths)  # (N, 4)
        loss = loss_fn(logits, batch.y)
        if step is not None:
            step(loss)
        # Kept on the device and read once at the end: no host sync per batch.
        losses.append(loss.detach())
        correct.append((logits.argmax(dim=1) == batch.y).sum())
        sizes.append(int(batch.y.shape[0]))
    return PassResult(torch.stack(losses).tolist(), torch.stack(correct).tolist(), sizes)


def train_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    clip_grad_norm: float | None = None,
    should_stop: StopCheck | None = None,
) -> PassResult | None:
    """One epoch of training, one optimizer step per batch, recording every batch's loss.

    Args:
        model: maps ``(x, lengths)`` to logits.
        batches: the epoch's batches, on the model's device and dtype.
        optimizer: over the model's parameters.
        clip_grad_norm: clip the gradient's global norm to this before each step, if set.
        should_stop: asked before each batch; when it answers true the epoch is abandoned.

    Returns:
        Each batch's loss (before its step) and accuracy, or ``None`` if stopped.
    """

    def step(loss: torch.Tensor) -> None:
        optimizer.zero_grad()
        torch.autograd.backward(loss)
        if clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()

    model.train()
    return _pass(model, batches, step, should_stop)


def evaluate(
    model: nn.Module, batches: Iterable[Batch], should_stop: StopCheck | None = None
) -> PassResult | None:
    """Loss and accuracy of every batch without training; ``None`` if stopped.

    Args:
        model: maps ``(x, lengths)`` to logits.
        batches: on the model's device and dtype.
        should_stop: asked before each batch.

    Returns:
        Each batch's loss and accuracy, or ``None`` if stopped.
    """
    model.eval()
    with torch.no_grad():
        return _pass(model, batches, None, should_stop)


def _untrained_not_evaluated(config: TrainingConfig) -> LimitExceeded:
    return LimitExceeded(
        f"the wall-time limit ended the run before the untrained model was evaluated on its "
        f"{config.test_batches} test batches of {config.batch_size}: raise max_seconds (up to "
        "the server's experiment_max_seconds) or ask for fewer or smaller test batches",
        "max_seconds",
    )


def _seeds(seed: int) -> tuple[int, int, int]:
    """Independent seeds for the weights, the training data and the test set."""
    init, data, test = (int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(3))
    return init, data, test


def _batches(
    config: TrainingConfig,
    count: int,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> Iterator[Batch]:
    for _ in range(count):
        yield generate(config.spec, config.batch_size, generator).to(device, dtype)


def train(
    config: TrainingConfig,
    device: torch.device,
    dtype: torch.dtype,
    should_stop: StopCheck | None = None,
) -> TrainingRun:
    """A reference run: evaluate the untrained model, then train and evaluate epoch by epoch.

    Args:
        config: the task, model and optimisation settings, and the seed.
        device: where to compute.
        dtype: in which precision.
        should_stop: asked before every training batch; when it answers true the epoch in
            progress is dropped and the run ends with the epochs completed so far.

    Returns:
        The initial evaluation (epoch 0), the completed epochs, and whether it stopped early.
    """
    if config.seed < 0:
        raise InvalidConfig(f"seed must be non-negative, got {config.seed}", "seed")
    init_seed, data_seed, test_seed = _seeds(config.seed)
    model = build_classifier(config.cell, config.hidden_size, init_seed, device, dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    data = torch.Generator().manual_seed(data_seed)
    # The test set and the untrained model's evaluation are under the wall-time limit too: a
    # large test set alone took 22 s where the limit said 0.01. Stopped there, the run has no
    # epoch 0 to answer: the request asks for more than its limit allows.
    test_set = []
    generator = torch.Generator().manual_seed(test_seed)
    for batch in _batches(config, config.test_batches, generator, device, dtype):
        if should_stop is not None and should_stop():
            raise _untrained_not_evaluated(config)
        test_set.append(batch)
    initial = evaluate(model, test_set, should_stop)
    if initial is None:
        raise _untrained_not_evaluated(config)
    epochs: list[EpochReport] = []
    for epoch in range(1, config.epochs + 1):
        batches = _batches(config, config.train_batches, data, device, dtype)
        trained = train_epoch(model, batches, optimizer, config.clip_grad_norm, should_stop)
        tested = evaluate(model, test_set, should_stop) if trained is not None else None
        if trained is None or tested is None:
            return TrainingRun(initial, epochs, stopped_early=True)
        epochs.append(EpochReport(epoch, trained, tested))
    return TrainingRun(initial, epochs, stopped_early=False)

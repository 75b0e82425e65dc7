"""The temporal-order task of Hochreiter and Schmidhuber (1997), experiment 6a, and a small
recurrent classifier for it: the sequence-classification task of the seed's part 1.3.

A sequence is made of one-hot symbols over {a, b, c, d, X, Y, B, E}. It starts with E and ends
with B; every other position holds a random symbol from {a, b, c, d}, except two positions
t1 and t2 that hold X or Y. Its class is what those two say, in order:

    (X, X) -> Q,   (X, Y) -> R,   (Y, X) -> S,   (Y, Y) -> U.

The paper draws the length from [100, 110], t1 from [10, 20] and t2 from [50, 60] (positions
1-based, as in the seed). Every range here is configurable so that a quick version of the task
trains in seconds; the distractors between t1 and t2 are what makes it hard for an RNN.

Example:
    >>> spec = TaskSpec(length_range=(20, 24), t1_range=(3, 6), t2_range=(12, 16))
    >>> batch = generate(spec, 4, torch.Generator().manual_seed(0))
    >>> tuple(batch.x.shape[::2]), batch.x.shape[1] == int(batch.lengths.max())
    ((4, 8), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.errors import InvalidConfig

SYMBOLS = ("a", "b", "c", "d", "X", "Y", "B", "E")
CLASSES = ("Q", "R", "S", "U")
NUM_SYMBOLS = len(SYMBOLS)
NUM_CLASSES = len(CLASSES)
MIN_LENGTH = 4
"""The shortest sequence there can be: E, X/Y at t1, X/Y at t2, B."""

_INDEX = {symbol: i for i, symbol in enumerate(SYMBOLS)}
_DISTRACTORS = torch.tensor([_INDEX[s] for s in "abcd"])
_X, _Y, _B, _E = (_INDEX[s] for s in "XYBE")

CellName = Literal["lstm", "rnn", "gated"]
Range = tuple[int, int]


@dataclass(frozen=True)
class TaskSpec:
    """Lengths and marker positions of the task, inclusive ranges, positions 1-based.

    The defaults are the paper's experiment 6a.
    """

    length_range: Range = (100, 110)
    t1_range: Range = (10, 20)
    t2_range: Range = (50, 60)

    def __post_init__(self) -> None:
        for name in ("length_range", "t1_range", "t2_range"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise InvalidConfig(
                    f"{name} [{low}, {high}] must be two positive integers, low <= high", name
                )
        # E, X/Y at t1, X/Y at t2 and B each take a position of their own: no t1 or t2 range
        # fits a shorter sequence, so say so rather than ask for a t2_range that cannot be.
        if self.length_range[0] < MIN_LENGTH:
            raise InvalidConfig(
                f"length_range starts at {self.length_range[0]}, but a sequence holds E, X/Y at "
                f"t1, X/Y at t2 and B, each at a position of its own: start at {MIN_LENGTH} or "
                "more",
                "length_range",
            )
        # Position 1 is E, so t1 starts at 2; t2 comes strictly after every t1.
        if self.t1_range[0] < 2:
            raise InvalidConfig(
                f"t1_range starts at {self.t1_range[0]}, but position 1 holds E: start at 2 or "
                "later",
                "t1_range",
            )
        if self.t2_range[0] <= self.t1_range[1]:
            raise InvalidConfig(
                f"t2_range {list(self.t2_range)} must start after t1_range "
                f"{list(self.t1_range)} ends, so that X/Y at t1 always comes first",
                "t2_range",
            )
        # The last position L holds B, so t2 must fit before the shortest sequence's end.
        if self.t2_range[1] >= self.length_range[0]:
            raise InvalidConfig(
                f"t2_range ends at {self.t2_range[1]}, but the shortest sequence "
                f"(length {self.length_range[0]}) holds B there or earlier: make t2_range end "
                f"before {self.length_range[0]}, or length_range start after "
                f"{self.t2_range[1]}",
                "t2_range",
            )


@dataclass(frozen=True)
class Batch:
    """A batch of sequences, padded after their end.

    Attributes:
        x: (N, T_max, 8) one-hot symbols, zeros after each sequence's length.
        lengths: (N,) the length of each sequence.
        y: (N,) class indices into ``CLASSES``.
        symbols: (N, T_max) symbol indices into ``SYMBOLS``, -1 after the end.
    """

    x: torch.Tensor
    lengths: torch.Tensor
    y: torch.Tensor
    symbols: torch.Tensor

    def to(self, device: torch.device, dtype: torch.dtype) -> Batch:
        """The same batch with ``x`` in ``dtype`` and everything on ``device``."""
        return Batch(
            self.x.to(device=device, dtype=dtype),
            self.lengths.to(device),
            self.y.to(device),
            self.symbols.to(device),
        )


def _uniform_int(low: int, high: int, n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(low, high + 1, (n,), generator=generator)


def generate(spec: TaskSpec, n: int, generator: torch.Generator) -> Batch:
    """``n`` random sequences of the task and their classes, on the CPU.

    Args:
        spec: lengths and marker positions.
        n: number of sequences (>= 1).
        generator: a CPU generator; the same seed gives the same batch.

    Returns:
        The batch, one-hot in float32 (move it with ``Batch.to``).
    """
    lengths = _uniform_int(*spec.length_range, n, generator)  # (N,)
    t1 = _uniform_int(*spec.t1_range, n, generator) - 1  # (N,) 0-based
    t2 = _uniform_int(*spec.t2_range, n, generator) - 1  # (N,)
    first_is_y = torch.randint(0, 2, (n,), generator=generator)  # (N,) 0: X, 1: Y
    second_is_y = torch.randint(0, 2, (n,), generator=generator)  # (N,)
    t_max = int(lengths.max())
    picks = torch.randint(0, len(_DISTRACTORS), (n, t_max), generator=generator)
    symbols = _DISTRACTORS[picks]  # (N, T_max)
    rows = torch.arange(n)
    symbols[:, 0] = _E
    symbols[rows, t1] = _X + first_is_y
    symbols[rows, t2] = _X + second_is_y
    symbols[rows, lengths - 1] = _B
    past_end = torch.arange(t_max)[None, :] >= lengths[:, None]  # (N, T_max)
    symbols[past_end] = -1
    x = F.one_hot(symbols.clamp(min=0), NUM_SYMBOLS).float()  # (N, T_max, 8)
    x[past_end] = 0.0
    # Q, R, S, U enumerate (first, second) in {X, Y}^2 in order: index = 2 * first + second.
    y = 2 * first_is_y + second_is_y  # (N,)
    return Batch(x, lengths, y, symbols)


def decode_sequence(symbols: torch.Tensor) -> str:
    """One row of ``Batch.symbols`` as a string of symbols, e.g. ``"EabXcd...B"``."""
    return "".join(SYMBOLS[i] for i in symbols.tolist() if i >= 0)


class GatedRNN(nn.Module):
    """The seed's gated RNN, equations (1)-(2), batched, with h[0] = 0:

    c[t] = sigmoid(W_c x[t] + W_h h[t-1]),   h[t] = c[t] * h[t-1] + (1 - c[t]) * (W_x x[t]).
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.W_c = nn.Parameter(torch.empty(hidden_size, input_size))  # (m, n)
        self.W_h = nn.Parameter(torch.empty(hidden_size, hidden_size))  # (m, m)
        self.W_x = nn.Parameter(torch.empty(hidden_size, input_size))  # (m, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every state h[1..T] for a batch ``x`` of shape (N, T, n); returns (N, T, m)."""
        gate_in = x @ self.W_c.T  # (N, T, m): W_c x[t] for every t at once
        candidate = x @ self.W_x.T  # (N, T, m): W_x x[t]
        h = x.new_zeros(x.shape[0], self.W_h.shape[0])  # (N, m)
        states = []
        # Split once rather than indexed per step: the backward of each `gate_in[:, t]` fills
        # a zero tensor of all of gate_in, T of them, so a step's backward grew with T^2
        # (5 s at T = 128, batch 256, m = 128); unbind's backward stacks the T pieces once.
        for gate_t, candidate_t in zip(gate_in.unbind(1), candidate.unbind(1), strict=True):
            c = torch.sigmoid(gate_t + h @ self.W_h.T)  # (N, m)
            h = c * h + (1 - c) * candidate_t  # (N, m)
            states.append(h)
        return torch.stack(states, dim=1)  # (N, T, m)


class SequenceClassifier(nn.Module):
    """A recurrent layer read out at each sequence's last symbol by a linear layer to 4 logits."""

    def __init__(self, cell: CellName, hidden_size: int) -> None:
        super().__init__()
        self.cell = cell
        self.rnn: nn.Module
        if cell == "lstm":
            self.rnn = nn.LSTM(NUM_SYMBOLS, hidden_size, batch_first=True)
        elif cell == "rnn":
            self.rnn = nn.RNN(NUM_SYMBOLS, hidden_size, batch_first=True)
        elif cell == "gated":
            self.rnn = GatedRNN(NUM_SYMBOLS, hidden_size)
        else:
            raise InvalidConfig(f"unknown cell {cell!r}; use lstm, rnn or gated", "cell")
        self.head = nn.Linear(hidden_size, NUM_CLASSES)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits (N, 4) of a padded batch ``x`` (N, T_max, 8) with ``lengths`` (N,)."""
        states = self.rnn(x)
        if isinstance(states, tuple):  # nn.LSTM and nn.RNN also return their final state
            states = states[0]
        # (N, T_max, m). The recurrence is causal and the padding comes after each sequence,
        # so the state at its last symbol never saw the padding.
        last = states[torch.arange(x.shape[0], device=x.device), lengths - 1]  # (N, m)
        logits: torch.Tensor = self.head(last)  # (N, 4)
        return logits


def init_parameters(model: nn.Module, generator: torch.Generator) -> None:
    """Draw every parameter uniformly in +-1/sqrt(fan_in), PyTorch's default for RNN and Linear
    layers, from ``generator``: a seed then gives the same model whatever else runs in the
    process (the global random state is neither read nor changed).

    For recurrent weights and biases the fan-in is the hidden size, as ``nn.RNN`` does.
    """
    filled = 0
    with torch.no_grad():
        for module in model.modules():
            fan_in = _fan_in(module)
            if fan_in is None:
                continue
            for param in module.parameters(recurse=False):
                noise = torch.rand(param.shape, generator=generator, dtype=torch.float64)
                param.copy_((2 * noise - 1) / math.sqrt(fan_in))
                filled += 1
    if filled != len(list(model.parameters())):
        raise TypeError(f"{type(model).__name__} has parameters of a kind this cannot initialise")


def _fan_in(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, nn.LSTM | nn.RNN | GatedRNN):
        return module.hidden_size
    return None


def build_classifier(
    cell: CellName,
    hidden_size: int,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
) -> SequenceClassifier:
    """A freshly initialised classifier, the same for the same seed.

    Args:
        cell: ``lstm``, ``rnn`` (tanh) or ``gated`` (the seed's equations (1)-(2)).
        hidden_size: the state size m (>= 1).
        seed: seeds the initial weights.
        device: where the model computes.
        dtype: its precision.

    Returns:
        The model, on ``device`` in ``dtype``.
    """
    if hidden_size < 1:
        raise InvalidConfig(f"hidden_size must be at least 1, got {hidden_size}", "hidden_size")
    # Built on the meta device (no memory, no draw from the global generator), then given
    # storage on the device and filled from the seeded generator.
    with torch.device("meta"):
        model = SequenceClassifier(cell, hidden_size)
    model = model.to_empty(device=device).to(dtype)
    init_parameters(model, torch.Generator().manual_seed(seed))
    return model

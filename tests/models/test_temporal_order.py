"""The temporal-order task (Hochreiter and Schmidhuber 1997, exp. 6a) and its classifier."""

from __future__ import annotations

import math

import pytest
import torch

from models.errors import InvalidConfig
from models.temporal_order import (
    CLASSES,
    SYMBOLS,
    CellName,
    GatedRNN,
    TaskSpec,
    build_classifier,
    decode_sequence,
    generate,
)
from models.training import evaluate

QUICK = TaskSpec(length_range=(20, 24), t1_range=(3, 6), t2_range=(12, 16))
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


# The rule of the task, written out: the class of each (first, second) marker pair.
RULE = {("X", "X"): "Q", ("X", "Y"): "R", ("Y", "X"): "S", ("Y", "Y"): "U"}


def _check_rules(spec: TaskSpec, n: int, seed: int) -> list[str]:
    """Check every sequence of a batch against the task's rules; returns the classes seen."""
    batch = generate(spec, n, torch.Generator().manual_seed(seed))
    seen = []
    for i in range(n):
        length = int(batch.lengths[i])
        text = decode_sequence(batch.symbols[i])
        assert len(text) == length
        assert spec.length_range[0] <= length <= spec.length_range[1]
        assert text[0] == "E" and text[-1] == "B"
        markers = [p + 1 for p, s in enumerate(text) if s in "XY"]  # 1-based, as in the paper
        assert len(markers) == 2
        t1, t2 = markers
        assert spec.t1_range[0] <= t1 <= spec.t1_range[1]
        assert spec.t2_range[0] <= t2 <= spec.t2_range[1]
        assert set(text[1:-1]) - {"X", "Y"} <= set("abcd")
        expected = RULE[(text[t1 - 1], text[t2 - 1])]
        assert CLASSES[int(batch.y[i])] == expected
        seen.append(expected)
        # One-hot: the symbol's column within the sequence, all zeros in the padding after it.
        x = batch.x[i]
        assert torch.equal(x[:length].sum(dim=1), torch.ones(length))
        assert "".join(SYMBOLS[j] for j in x[:length].argmax(dim=1).tolist()) == text
        assert not x[length:].any()
    return seen


def test_quick_sequences_follow_the_class_rules() -> None:
    seen = _check_rules(QUICK, 400, seed=0)
    assert set(seen) == set(CLASSES)
    for name in CLASSES:  # classes are drawn uniformly: each near a quarter of 400
        assert 60 <= seen.count(name) <= 140


def test_paper_defaults_follow_the_class_rules() -> None:
    spec = TaskSpec()
    assert (spec.length_range, spec.t1_range, spec.t2_range) == ((100, 110), (10, 20), (50, 60))
    _check_rules(spec, 200, seed=1)
    batch = generate(spec, 2000, torch.Generator().manual_seed(2))
    # Every length and marker position of the inclusive ranges occurs, none outside.
    assert set(batch.lengths.tolist()) == set(range(100, 111))
    positions = (batch.symbols == SYMBOLS.index("X")) | (batch.symbols == SYMBOLS.index("Y"))
    first = positions.float().argmax(dim=1) + 1
    assert set(first.tolist()) == set(range(10, 21))


def test_generation_is_seeded() -> None:
    a = generate(QUICK, 16, torch.Generator().manual_seed(5))
    b = generate(QUICK, 16, torch.Generator().manual_seed(5))
    c = generate(QUICK, 16, torch.Generator().manual_seed(6))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.symbols, c.symbols)


@pytest.mark.parametrize(
    ("kwargs", "where"),
    [
        ({"length_range": (30, 20)}, "length_range"),
        ({"t1_range": (0, 4)}, "t1_range"),
        ({"t1_range": (1, 4)}, "t1_range"),
        ({"t1_range": (3, 13), "t2_range": (12, 16)}, "t2_range"),
        ({"length_range": (16, 20), "t2_range": (12, 16)}, "t2_range"),
        ({"length_range": (3, 20), "t1_range": (2, 2), "t2_range": (3, 3)}, "length_range"),
    ],
)
def test_impossible_task_specs_are_refused(kwargs: dict[str, tuple[int, int]], where: str) -> None:
    args = {"length_range": (20, 24), "t1_range": (3, 6), "t2_range": (12, 16)} | kwargs
    with pytest.raises(InvalidConfig) as error:
        TaskSpec(**args)
    assert error.value.where == where


def random_cell(seed: int, steps: int) -> tuple[GatedRNN, torch.Tensor]:
    """A float64 gated cell (3 inputs, 4 units) with normal weights, and a batch of 2
    sequences of ``steps`` steps, both from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    cell = GatedRNN(3, 4).double()
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return cell, torch.randn(2, steps, 3, generator=gen, dtype=torch.float64)


def test_gated_rnn_follows_equations_1_and_2() -> None:
    """Batched cell vs the equations evaluated one sequence and one step at a time."""
    cell, x = random_cell(0, 5)
    states = cell(x)
    for i in range(2):
        h = torch.zeros(4, dtype=torch.float64)
        for t in range(5):
            c = torch.sigmoid(cell.W_c @ x[i, t] + cell.W_h @ h)  # (1)
            h = c * h + (1 - c) * (cell.W_x @ x[i, t])  # (2)
            torch.testing.assert_close(states[i, t], h, rtol=1e-12, atol=1e-12)


def graph_nodes(output: torch.Tensor) -> list[str]:
    """The names of every node of ``output``'s autograd graph."""
    names, stack, visited = [], [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        names.append(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def test_gated_rnn_backward_is_linear_in_the_length() -> None:
    """The per-step inputs are split once: indexing them per step put one select in the graph
    for each step, whose backward fills a zero tensor of the whole sequence, T^2 work (a
    training step at the experiment's caps took 5 s, past its time limit). The gradient is
    the one a plain loop over the equations gives."""
    cell, x = random_cell(1, 6)
    states = cell(x)
    nodes = graph_nodes(states)
    assert "SelectBackward0" not in nodes and nodes.count("UnbindBackward0") == 2
    (grad,) = torch.autograd.grad(states.sum(), cell.W_h)
    w_c, w_h, w_x = (p.detach().clone().requires_grad_() for p in (cell.W_c, cell.W_h, cell.W_x))
    total = torch.zeros((), dtype=torch.float64)
    for i in range(2):
        h = torch.zeros(4, dtype=torch.float64)
        for t in range(6):
            c = torch.sigmoid(w_c @ x[i, t] + w_h @ h)
            h = c * h + (1 - c) * (w_x @ x[i, t])
            total = total + h.sum()
    (oracle,) = torch.autograd.grad(total, w_h)
    torch.testing.assert_close(grad, oracle, rtol=1e-12, atol=1e-12)


def test_gated_rnn_closed_form_with_half_gates() -> None:
    """W_c = W_h = 0 makes every gate 1/2, so h[T] = sum_t 2^-(T-t+1) W_x x[t]."""
    cell = GatedRNN(3, 2).double()
    with torch.no_grad():
        cell.W_c.zero_()
        cell.W_h.zero_()
        cell.W_x.copy_(torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]]))
    x = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    expected = 0.125 * torch.tensor([1.0, 0.0]) + 0.25 * torch.tensor([2.0, -1.0])
    expected = expected + 0.5 * torch.tensor([0.0, 3.0])
    torch.testing.assert_close(cell(x)[0, -1], expected.double(), rtol=0, atol=1e-15)


@pytest.mark.parametrize("cell", ["lstm", "rnn", "gated"])
def test_classifier_reads_each_sequence_at_its_last_symbol(cell: CellName) -> None:
    """Padding after a sequence changes nothing: batched logits equal one-by-one logits."""
    model = build_classifier(cell, 6, seed=1, device=CPU, dtype=torch.float64)
    batch = generate(QUICK, 5, torch.Generator().manual_seed(3)).to(CPU, torch.float64)
    padded = torch.cat([batch.x, torch.zeros(5, 7, 8, dtype=torch.float64)], dim=1)
    logits = model(padded, batch.lengths)
    for i in range(5):
        length = int(batch.lengths[i])
        alone = model(batch.x[i : i + 1, :length], batch.lengths[i : i + 1])
        torch.testing.assert_close(logits[i : i + 1], alone, rtol=1e-10, atol=1e-12)


def test_seeded_initialisation_leaves_the_global_generator_alone() -> None:
    before = torch.get_rng_state()
    a = build_classifier("lstm", 8, seed=3, device=CPU, dtype=torch.float64)
    b = build_classifier("lstm", 8, seed=3, device=CPU, dtype=torch.float64)
    c = build_classifier("lstm", 8, seed=4, device=CPU, dtype=torch.float64)
    assert torch.equal(torch.get_rng_state(), before)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb)
        assert not torch.equal(pa, pc)
        assert pa.abs().max() <= 1 / math.sqrt(8)  # PyTorch's default bound, fan-in 8


@pytest.mark.parametrize("cell", ["lstm", "rnn", "gated"])
@pytest.mark.parametrize("seed", [0, 1])
def test_untrained_model_is_at_chance(cell: CellName, seed: int) -> None:
    """Seed 1.3, problem 4: before training the loss is about log 4 and accuracy about 1/4."""
    model = build_classifier(cell, 32, seed=seed, device=CPU, dtype=torch.float64)
    gen = torch.Generator().manual_seed(100 + seed)
    batches = [generate(QUICK, 64, gen).to(CPU, torch.float64) for _ in range(8)]
    result = evaluate(model, batches)
    assert result is not None
    assert abs(result.mean_loss - math.log(4)) < 0.15
    assert abs(result.accuracy - 0.25) < 0.12
    # Second oracle: the cross-entropy written out, -log softmax of the true class.
    with torch.no_grad():
        logits = torch.cat([model(b.x, b.lengths) for b in batches])
        y = torch.cat([b.y for b in batches])
        by_hand = (torch.logsumexp(logits, dim=1) - logits[torch.arange(len(y)), y]).mean()
        hits = (logits.argmax(dim=1) == y).double().mean()
    assert math.isclose(result.mean_loss, float(by_hand), rel_tol=1e-12)
    assert math.isclose(result.accuracy, float(hits), rel_tol=1e-12)


def test_unknown_cell_and_bad_hidden_size_are_refused() -> None:
    with pytest.raises(InvalidConfig):
        build_classifier("gru", 4, 0, CPU, torch.float64)  # type: ignore[arg-type]
    with pytest.raises(InvalidConfig):
        build_classifier("lstm", 0, 0, CPU, torch.float64)

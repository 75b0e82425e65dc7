"""AttentionRNN(k) and AttentionRNN(inf) of the homework's part 1.2.2, equations (3)-(8).

AttentionRNN(k), the seed's part (c), attends over x[t] and the last k states::

    q_i[t] = Q_i s_i[t],  k_i[t] = K_i s_i[t],  v_i[t] = V_i s_i[t]     (3)-(5)
             with s_0[t] = x[t] and s_i[t] = h[t-i] for i = 1..k
    w_i[t] = q_i[t]^T k_i[t]                                              (6)
    a[t]   = softmax([w_0[t], ..., w_k[t]])                               (7)
    h[t]   = sum_i a_i[t] v_i[t]                                          (8)

with ``h[t] = 0`` for ``t < 1``: such a zero state still takes part in the softmax, with score
0 and value 0, exactly as the equations say. AttentionRNN(inf), the seed's part (d), attends
over x[t] and every past state h[t-1], ..., h[0] (= 0), with weight sharing: index 0 of
``Q``, ``K``, ``V`` projects x[t], and index 1 (the seed's Q_h, K_h, V_h) every past state.

The one-step state Jacobian is the seed's 1.2.2(e), which holds for every k and for inf
because h[t-1] enters only through index 1::

    dh[t]/dh[t-1] = a_1[t] (v_1[t] - h[t]) h[t-1]^T (Q_1^T K_1 + K_1^T Q_1) + a_1[t] V_1

Time is 1-based in the seed and 0-based here: row ``t-1`` of ``h``, ``a`` and ``w`` is step t.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from models import gradient_flow
from models.attention_totals import log_total_norms
from models.errors import InvalidConfig, LimitExceeded, ShapeMismatch
from models.limits import Limits
from models.overhead import STEP_SECONDS, Overhead
from models.state_offsets import offset_gradient

Shapes = Mapping[str, tuple[int, ...]]
Window = int | Literal["inf"]
# The softmax is saturated at a step when one weight takes (nearly) all of it.
SATURATED_SOFTMAX = 0.99


@dataclass(frozen=True)
class AttentionRNNConfig:
    """``k``: how many past states each step attends over, or ``"inf"`` for all of them."""

    k: Window = 2


def parse_config(config: Mapping[str, Any]) -> AttentionRNNConfig:
    """Validate ``{"k": int >= 1 | "inf"}``; ``k`` defaults to the seed's 2."""
    unknown = set(config) - {"k"}
    if unknown:
        raise InvalidConfig(
            f"unknown config key(s) {sorted(unknown)}; attention_rnn takes only k",
            f"config.{sorted(unknown)[0]}",
        )
    k = config.get("k", 2)
    if k == "inf":
        return AttentionRNNConfig("inf")
    if isinstance(k, float) and k.is_integer() and k >= 2.0**64:
        # An integer too long for 64 bits arrives as a float (the JSON parser's reading): far
        # over any window, which ``check_config_limits`` then says, not "must be an integer".
        k = int(k)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        # As the JSON it came as: null, true, 2.0 (not Python's None, True); a list or an
        # object by its kind (one nested 1000 levels deep cannot be written back).
        if isinstance(k, list | dict):
            shown = "a list" if isinstance(k, list) else "an object"
        else:
            shown = json.dumps(k, default=str)[:40]
        raise InvalidConfig(f'k must be an integer >= 1 or "inf", got {shown}', "config.k")
    return AttentionRNNConfig(k)


def check_config_limits(config: AttentionRNNConfig, limits: Limits) -> None:
    """Refuse a window k over the limit, before any tensor is decoded."""
    if config.k != "inf" and config.k > limits.max_k:
        shown = config.k if config.k < 2**64 else f"{config.k:.3g}"  # read as a float: inexact
        raise LimitExceeded(f"k = {shown} is over the limit max_k = {limits.max_k}", "config.k")


def projections(config: AttentionRNNConfig) -> int:
    """How many (Q_i, K_i, V_i) there are: k + 1, or 2 with weight sharing (inf)."""
    return 2 if config.k == "inf" else config.k + 1


def output_shapes(config: AttentionRNNConfig, shapes: Shapes) -> dict[str, tuple[int, ...]]:
    """Check that Q, K, V and x fit together and k; answer the shapes of h, a and w.

    Returns:
        ``h: (T, n)``, and ``a``, ``w``: ``(T, k + 1)``, or ``(T, T + 1)`` for inf.
    """
    x = shapes["x"]
    if len(x) != 2:
        raise ShapeMismatch(
            f"x must be [T, n] (one row per time step), got shape {list(x)}", "inputs.x"
        )
    seq_len, n = x
    count = projections(config)
    expected = (count, n, n)
    for name in ("Q", "K", "V"):
        shape = shapes[name]
        if shape != expected:
            which = (
                "[2, n, n] with k = inf (index 0 for x[t], index 1 shared by every past state)"
                if config.k == "inf"
                else f"[k+1, n, n] with k = {config.k}"
            )
            hint = ""
            if len(shape) == 3 and shape[1:] == (n, n) and config.k != "inf" and shape[0] >= 2:
                hint = f"; for this {name}, set config.k to {shape[0] - 1}"
            raise ShapeMismatch(
                f"{name} must be {which}, so {list(expected)} for x of shape {list(x)}; "
                f"got {list(shape)}{hint}",
                f"params.{name}",
            )
    width = seq_len + 1 if config.k == "inf" else config.k + 1
    return {"h": (seq_len, n), "a": (seq_len, width), "w": (seq_len, width)}


PAIR_SECONDS = 7.8e-6
"""AttentionRNN(inf): each step stacks the scores and values of every past state, and the
backward pass hands a gradient back to each of them: about this much per (step, past state)
pair, forward and backward, whatever n (measured: 4.4 s for 1,024 steps)."""

PAIR_ELEMENT_SECONDS = 4e-8
"""AttentionRNN(inf): the stacked past values, ``n`` per pair, copied and kept for the
backward pass (at n = 960 and 1,024 steps, 4 GB and 42 s)."""

PAIR_ELEMENT_FLOPS = 25
"""AttentionRNN(inf): operations counted per pair and element of n per row of a batched
pass, as ``jacrev`` runs one (rows of cotangents through every stacked value)."""


def flops(config: AttentionRNNConfig, shapes: Shapes) -> int:
    """Operations of one forward pass for the compute-time estimate: the projections of x and
    of the attended states, and with k = inf the reading of every past state at every step."""
    seq_len, n = shapes["x"]
    width = 2 if config.k == "inf" else config.k + 1
    projections = 2 * 3 * width * n * n * seq_len
    if config.k == "inf":
        return projections + PAIR_ELEMENT_FLOPS * _pairs(seq_len) * n
    return projections + 4 * seq_len * config.k * n


def overhead(config: AttentionRNNConfig, shapes: Shapes) -> Overhead:
    """The fixed costs of its passes: the loop over steps (with k = inf, over every pair of a
    step and a past state); see ``models.overhead``. A Jacobian's batched passes cost per chunk
    (each step and lag dispatched once, batched) and per row (the stacked past states, ``n``
    per lag, of every step)."""
    seq_len, n = shapes["x"]
    steps = seq_len * 1.4 * STEP_SECONDS
    if config.k == "inf":
        pairs = _pairs(seq_len)
        return Overhead(
            backward=steps + pairs * (PAIR_SECONDS + n * PAIR_ELEMENT_SECONDS),
            batched=1.5 * (steps + pairs * PAIR_SECONDS),
            batched_row=pairs * n * PAIR_ROW_SECONDS,
        )
    lags = seq_len * min(config.k, seq_len)
    return Overhead(
        backward=steps + seq_len * config.k * 3e-6,
        batched=seq_len * BATCHED_STEP_SECONDS + lags * BATCHED_LAG_SECONDS,
        batched_row=lags * row_lag_seconds(n),
    )


BATCHED_STEP_SECONDS = 1.2e-3
"""A step of AttentionRNN(k)'s backward pass batched over one chunk of ``jacrev``'s rows, on
top of its operations, however few rows the chunk holds: 0.6-0.8 ms measured per chunk and
step (k = 2 and 8, 1,024 steps, a chunk of 8 rows, repeated), 1.2 ms with the lags' share
in a first run (k = 32, 256 steps, 16 chunks against one); one thread, on a loaded
machine."""

BATCHED_LAG_SECONDS = 1.2e-5
"""And per lag of the window, its past state stacked and its gradient split off again at
every step: 2.6 s per chunk for k = 256 over 1,024 steps (n = 1, 8 rows), 1.0e-5 a step and
lag."""

ROW_LAG_SECONDS = 8e-8
"""Each row of a chunk, per step, lag and unit of n: the batched tensors of a step hold
``n`` per lag and row, read and written several times forward and backward."""

ROW_LAG_PRODUCT_SECONDS = 1e-8
"""And per step, lag and n**2: the batched n x n products of the projections, slow for
small matrices (the operation count, which the estimate also counts, is a fraction)."""

ROW_LAG_SCALAR_SECONDS = 3e-8
"""With n = 1 the products are scalar: a row costs 1-3e-8 s per step and lag (k = 16 and
32 over 256 steps, k = 256 over 1,024), a fifth of what the terms above give."""

PAIR_ROW_SECONDS = 1e-8
"""AttentionRNN(inf): each row of a chunk per pair of a step and a past state and unit of n,
beside the operations counted (``PAIR_ELEMENT_FLOPS``, 1e-8 s at the assumed rate): 0.8-3.2e-8
s measured in all at 256, 512 and 768 steps (n = 2 and 8, chunks of 136 to 256 rows).

A chunk of its batched pass costs 1.5 times the loop over the steps and the pairs
(``PAIR_SECONDS``), however few rows it holds: measured 0.3-0.55 s at 256 steps, 1.6-2.3 s
at 512, 3.5 s at 768 (chunks of 8 rows; once 2.7 times, for chunks of a thousand rows and
more, whose rows' costs are now counted apart)."""


def row_lag_seconds(n: int) -> float:
    """Seconds a row of a batched AttentionRNN(k) pass costs per step and lag, for state size
    ``n``: measured (one thread, 256 steps, k = 16 and 32, chunks of 8 and 200-256 rows, the
    difference per row) 1.1-2.9e-8 s at n = 1, 1.3-1.7e-7 at n = 2, 2.8-3.7e-7 at n = 4,
    7.6-9.6e-7 at n = 8, 3.0e-6 at n = 16 and 1.1e-5 at n = 32 (k = 2); at 1,024 steps
    (k = 8, n = 4, chunks of 1,024 rows) 5e-7."""
    if n == 1:
        return ROW_LAG_SCALAR_SECONDS
    return n * ROW_LAG_SECONDS + n * n * ROW_LAG_PRODUCT_SECONDS


def batched_row_elements(config: AttentionRNNConfig, shapes: Shapes) -> int:
    """Elements the batched backward pass of ``jacrev`` keeps alive per row of a chunk, for
    ``models.autodiff`` to size the chunks by.

    AttentionRNN(k): each step stacks up to k past states (``n`` each) and spreads its scores
    and weights over ``k + 1`` entries; their gradients, one slice per row, live until the
    states they belong to are reached. Counted as ``T * ((k + 1) * (n + 1/2) + 5 n)``;
    measured per row (peak memory, chunks of 32 and 256-1,024 rows): 0.9-1.0 times
    ``T (k + 1) n`` at k = 32 and 64 (n = 2 and 4, 256 to 1,024 steps, against Q and K),
    1.2 against x, 1.4 at k = 256 and n = 1, 1.8-3.1 at k = 1 and 2 (n = 2 to 8), each
    below the count.

    AttentionRNN(inf): the weights and scores of every step, ``t + 1`` each, dominate:
    measured 0.53-0.63 ``T**2`` per row (256 and 512 steps, n = 1 to 8), counted
    ``T * (T + 2 n)``.
    """
    seq_len, n = shapes["x"]
    if config.k == "inf":
        return seq_len * (seq_len + 2 * n)
    return seq_len * (((config.k + 1) * (2 * n + 1)) // 2 + 5 * n)


PRODUCT_SPEEDUP = 6
"""How much faster than the service's assumed rate (``TENSORGRADE_CPU_FLOPS_PER_SECOND``,
5e9 by default) the batched n x n matrix products of the totals run, measured on 2 cores:
k = 8, n = 125, T = 1,024 took 1.9 s for its 5.3e10 operations (28e9 a second; 10.6 s at the
assumed rate, which would have refused a request that runs in 6 s). They are counted at a
sixth, still a little above their time."""


def total_paths_flops(config: AttentionRNNConfig, shapes: Shapes) -> int:
    """Operations of dh[t]/dh[1] through every path (``attention_totals``), which the state
    Jacobians add with k >= 2 or inf, as the compute estimate counts them: per step and lag
    two n x n x n products (at ``PRODUCT_SPEEDUP``); with inf, a weighted sum of n x n
    matrices per pair of a step and a past state (a pass over memory, counted in full), and
    two products per step."""
    seq_len, n = shapes["x"]
    if config.k == "inf":
        return 4 * _pairs(seq_len) * n * n + 4 * seq_len * n**3 // PRODUCT_SPEEDUP
    if config.k == 1:
        return 0
    return 4 * seq_len * min(config.k, seq_len) * n**3 // PRODUCT_SPEEDUP


def _pairs(seq_len: int) -> int:
    return seq_len * (seq_len - 1) // 2


def check_shape_limits(config: AttentionRNNConfig, shapes: Shapes, limits: Limits) -> None:
    """Refuse a sequence or a state size over the configured limits."""
    x = shapes.get("x", ())
    if len(x) != 2:
        return  # output_shapes says what is wrong with x
    if x[0] > limits.max_sequence_length:
        raise LimitExceeded(
            f"x has {x[0]} time steps; the limit max_sequence_length is "
            f"{limits.max_sequence_length}",
            "inputs.x",
        )
    if x[1] > limits.max_hidden_size:
        raise LimitExceeded(
            f"x declares state size n = {x[1]}; the limit max_hidden_size is "
            f"{limits.max_hidden_size}",
            "inputs.x",
        )


def attention_rnn(
    Q: torch.Tensor,
    K: torch.Tensor,
    V: torch.Tensor,
    x: torch.Tensor,
    k: Window,
    state_offsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run equations (3)-(8) over the sequence.

    Args:
        Q, K, V: ``[k+1, n, n]`` (``[2, n, n]`` for ``k = "inf"``).
        x: ``[T, n]``, row ``t-1`` is x[t].
        k: the window, or ``"inf"``.
        state_offsets: ``[T, n]`` added to each h[t] as it is produced (``None``: none).
            Zero offsets leave the model unchanged; the gradient against them is the total
            dl/dh[t] through time, which is how ``state_grads`` is computed.

    Returns:
        ``(h [T, n], a, w)`` with ``a`` and ``w`` ``[T, k+1]``, or ``[T, T+1]`` for inf
        (row t-1 holds step t's t+1 entries, then zeros).

    Example:
        >>> one = torch.ones(3, 1, 1, dtype=torch.float64)
        >>> h, a, w = attention_rnn(one, one, one, torch.ones(2, 1, dtype=torch.float64), 2)
        >>> w.round(decimals=4).tolist()  # w_0 = x^T x; zero states h[0], h[-1] score 0
        [[1.0, 0.0, 0.0], [1.0, 0.3319, 0.0]]
    """
    if k == "inf":
        return _attention_rnn_inf(Q, K, V, x, state_offsets)
    return _attention_rnn_k(Q, K, V, x, k, state_offsets)


def _zeros(like: torch.Tensor, *shape: int) -> torch.Tensor:
    # A plain factory (not like.new_zeros) so that torch.func transforms see a constant.
    return torch.zeros(shape, dtype=like.dtype, device=like.device)


def _rows(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A ``[T, ...]`` tensor as its T rows, one per step.

    ``unbind`` rather than ``tensor[t]``: the gradient of an indexed row is a zero-filled
    tensor of the whole ``[T, ...]`` shape with one row set, so T of them cost O(T^2) (per row
    of a Jacobian, under vmap), where ``unbind``'s gradient stacks the T rows once.
    """
    return tensor.unbind(0)


def _attention_rnn_k(
    Q: torch.Tensor,
    K: torch.Tensor,
    V: torch.Tensor,
    x: torch.Tensor,
    k: int,
    state_offsets: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    seq_len, n = x.shape
    q0, k0, v0 = x @ Q[0].T, x @ K[0].T, x @ V[0].T  # (T, n) each  eq (3)-(5), i = 0
    w0 = (q0 * k0).sum(-1)  # (T,)  eq (6), i = 0
    w0_rows, v0_rows = _rows(w0[:, None]), _rows(v0)  # (1,) and (n,) per step
    offsets = _rows(state_offsets) if state_offsets is not None else None
    hs: list[torch.Tensor] = []
    a_rows, w_rows = [], []
    for t in range(1, seq_len + 1):
        lags = min(k, t - 1)  # h[t-i] for i > t-1 is a zero state: score 0, value 0
        past = torch.stack(hs[::-1][:lags]) if lags else _zeros(x, 0, n)  # (lags, n)
        q = torch.einsum("lij,lj->li", Q[1 : lags + 1], past)  # (lags, n)  eq (3)
        kk = torch.einsum("lij,lj->li", K[1 : lags + 1], past)  # (lags, n)  eq (4)
        v = torch.einsum("lij,lj->li", V[1 : lags + 1], past)  # (lags, n)  eq (5)
        w_t = torch.cat([w0_rows[t - 1], (q * kk).sum(-1), _zeros(x, k - lags)])  # (k+1,)  (6)
        a_t = torch.softmax(w_t, dim=0)  # (k+1,)  eq (7)
        h_t = a_t[0] * v0_rows[t - 1] + a_t[1 : lags + 1] @ v  # (n,)  eq (8)
        if offsets is not None:
            h_t = h_t + offsets[t - 1]
        hs.append(h_t)
        a_rows.append(a_t)
        w_rows.append(w_t)
    return torch.stack(hs), torch.stack(a_rows), torch.stack(w_rows)  # (T,n), (T,k+1) x2


def _attention_rnn_inf(
    Q: torch.Tensor,
    K: torch.Tensor,
    V: torch.Tensor,
    x: torch.Tensor,
    state_offsets: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    seq_len, n = x.shape
    q0, k0, v0 = x @ Q[0].T, x @ K[0].T, x @ V[0].T  # (T, n) each  eq (3'')-(5''), i = 0
    w0 = (q0 * k0).sum(-1)  # (T,)  eq (6''), i = 0
    w0_rows, v0_rows = _rows(w0[:, None]), _rows(v0)  # (1,) and (n,) per step
    offsets = _rows(state_offsets) if state_offsets is not None else None
    # With weight sharing a past state's score and value do not depend on t: computed once.
    scores: list[torch.Tensor] = []  # (Q_h h[s])^T (K_h h[s]) for s = 1, 2, ...
    values: list[torch.Tensor] = []  # V_h h[s]
    hs, a_rows, w_rows = [], [], []
    for t in range(1, seq_len + 1):
        past_w = torch.stack(scores[::-1]) if scores else _zeros(x, 0)  # (t-1,)  h[t-1]..h[1]
        past_v = torch.stack(values[::-1]) if values else _zeros(x, 0, n)  # (t-1, n)
        w_t = torch.cat([w0_rows[t - 1], past_w, _zeros(x, 1)])  # (t+1,)  h[0] = 0 scores 0
        a_t = torch.softmax(w_t, dim=0)  # (t+1,)  eq (7'')
        h_t = a_t[0] * v0_rows[t - 1] + a_t[1:t] @ past_v  # (n,)  eq (8''); h[0] has value 0
        if offsets is not None:
            h_t = h_t + offsets[t - 1]
        scores.append((Q[1] @ h_t) @ (K[1] @ h_t))  # ()  eq (6'') for h_t as a past state
        values.append(V[1] @ h_t)  # (n,)  eq (5'')
        hs.append(h_t)
        a_rows.append(torch.cat([a_t, _zeros(x, seq_len - t)]))  # (T+1,)
        w_rows.append(torch.cat([w_t, _zeros(x, seq_len - t)]))  # (T+1,)
    return torch.stack(hs), torch.stack(a_rows), torch.stack(w_rows)  # (T,n), (T,T+1) x2


def forward(
    config: AttentionRNNConfig, args: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Every output of the registry's ``attention_rnn``: ``h``, ``a`` and ``w``."""
    h, a, w = attention_rnn(args["Q"], args["K"], args["V"], args["x"], config.k)
    return {"h": h, "a": a, "w": w}


def state_grads(
    config: AttentionRNNConfig,
    args: Mapping[str, torch.Tensor],
    grad_outputs: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """``state_grads [T, n]``: the total dl/dh[t] through time (the seed's 1.2.2(f)).

    Row t-1 sums the direct part and every later step that attends to h[t]: t+1 .. t+k for
    AttentionRNN(k), the whole future for inf; and the paths through ``a`` and ``w`` when
    ``grad_outputs`` names them. A state no path reaches gets 0: the last one when only ``a``
    and ``w`` are named (every one at T = 1).
    """
    x = args["x"].detach()
    offsets = torch.zeros_like(x).requires_grad_(True)  # (T, n)
    with torch.enable_grad():
        h, a, w = attention_rnn(
            args["Q"].detach(), args["K"].detach(), args["V"].detach(), x, config.k, offsets
        )
        outputs = {"h": h, "a": a, "w": w}
        grad = offset_gradient(outputs, grad_outputs, offsets)
    return {"state_grads": grad}


def _previous_value_gap(
    V: torch.Tensor, x: torch.Tensor, h: torch.Tensor, a: torch.Tensor, k: Window
) -> torch.Tensor:
    """v_1[t] - h[t] for t = 1..T, as ``sum_{i != 1} a_i[t] (v_1[t] - v_i[t])``.

    The same number, since the weights sum to 1, but not formed by subtracting h[t]: where the
    attention saturates on h[t-1], h[t] is v_1[t] plus a remainder many orders of magnitude
    smaller, and ``v_1[t] - h[t]`` keeps of that remainder only what the rounding of the
    large h[t] left (a relative error of eps |v_1[t]| / |v_1[t] - h[t]|; 1e-5 at scores of
    2e10). Each ``v_1[t] - v_i[t]`` is a difference of the values themselves, and the small
    weights scale it without cancelling.

    Args:
        V: ``[k+1, n, n]`` (``[2, n, n]`` for ``k = "inf"``, index 1 for every past state).
        x: ``[T, n]``.
        h: ``[T, n]``, the states of the forward pass.
        a: ``[T, k+1]`` or ``[T, T+1]``: entry i of row t-1 weighs x[t] (i = 0) or h[t-i],
            with the zero states h[0], h[-1], ... (value 0) and inf's padding (weight 0).
        k: the window, or ``"inf"``.

    Returns:
        ``[T, n]``, row t-1 for step t.
    """
    seq_len, n = h.shape
    width = a.shape[1]
    h_prev = torch.cat([_zeros(x, 1, n), h[:-1]])  # (T, n)  h[t-1]
    v1 = h_prev @ V[1].T  # (T, n)  v_1[t] = V_1 h[t-1]
    gap = a[:, 0, None] * (v1 - x @ V[0].T)  # (T, n)  i = 0: v_0[t] = V_0 x[t]
    shared = h @ V[1].T if k == "inf" else None  # (T, n)  V_h h[s], the same at every lag
    for i in range(2, min(width, seq_len)):  # the lags that reach a state h[t-i], t-i >= 1
        projected = shared if shared is not None else h @ V[i].T  # (T, n)  V_i h[s]
        v_i = torch.cat([_zeros(x, i, n), projected[: seq_len - i]])  # (T, n)  0 for t-i < 1
        gap = gap + a[:, i, None] * (v1 - v_i)
    beyond = max(2, seq_len)  # lags i >= T read only zero states (value 0) at every step
    if width > beyond:
        gap = gap + a[:, beyond:].sum(dim=1, keepdim=True) * v1
    return gap


def step_jacobians(
    Q: torch.Tensor,
    K: torch.Tensor,
    V: torch.Tensor,
    x: torch.Tensor,
    k: Window,
    states: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """dh[t]/dh[t-1] for t = 1..T in closed form (seed 1.2.2(e)), and the terms behind it.

    h[t-1] is held as a free variable with every other argument fixed; at t = 1 it is the
    zero state h[0], whose score and value are then 0, leaving ``a_1[1] V_1``.

    Returns:
        ``(jacobians [T, n, n], terms)``: entry t-1 is dh[t]/dh[t-1]; ``terms`` holds the
        parts of the formula, averaged over the steps t = 2..T whose Jacobians are factors of
        dh[t]/dh[1] (the one step when T = 1), for the verdict's explanation.
    """
    with torch.no_grad():
        h, a = states if states is not None else attention_rnn(Q, K, V, x, k)[:2]  # (T, n), (T, w)
        h_prev = torch.cat([_zeros(x, 1, x.shape[1]), h[:-1]])  # (T, n)  h[t-1]
        a1 = a[:, 1]  # (T,)  the weight on h[t-1], index 1 in both layouts
        gap = _previous_value_gap(V, x, h, a, k)  # (T, n)  v_1[t] - h[t]
        m1 = Q[1].T @ K[1] + K[1].T @ Q[1]  # (n, n)  d(h^T Q_1^T K_1 h)/dh = h^T m1
        score_row = h_prev @ m1  # (T, n)  h[t-1]^T (Q_1^T K_1 + K_1^T Q_1)
        score_path = a1[:, None, None] * gap[:, :, None] * score_row[:, None, :]  # (T, n, n)
        value_path = a1[:, None, None] * V[1]  # (T, n, n)  a_1[t] V_1
        jacobians = score_path + value_path  # (T, n, n)
        gradient_flow.require_finite(jacobians)  # before the terms' norms, which need it
        row_max = a.max(dim=1).values  # (T,)  inf's zero padding never exceeds a weight
        steps = gradient_flow.judged(x.shape[0])  # the factors of dh[t]/dh[1] only
        terms = {
            "mean_attention_on_previous": a1[steps].mean().item(),
            "V_1_spectral_norm": torch.linalg.matrix_norm(V[1], ord=2).item(),
            "value_path_norm": torch.linalg.matrix_norm(value_path[steps], ord=2).mean().item(),
            "score_path_norm": torch.linalg.matrix_norm(score_path[steps], ord=2).mean().item(),
            "saturated_fraction": (row_max[steps] >= SATURATED_SOFTMAX).double().mean().item(),
        }
    return jacobians, terms


def explain(k: Window, verdict: str, growth: float, terms: Mapping[str, float], steps: int) -> str:
    """One sentence of why, in the seed's 1.2.2(e) terms: the attention a_1[t] on h[t-1],
    the value matrix V_1, the score path and the softmax's saturation; with k >= 2 or inf,
    what the paths to older states add to the chain of one-step Jacobians."""
    dominant = (
        "the value path dominates"
        if terms["value_path_norm"] >= terms["score_path_norm"]
        else "the score path dominates"
    )
    skip = ""
    # The lags that reach back to h[1] in this sequence: k's, or fewer when T is short.
    reach = steps - 1 if k == "inf" else min(k, steps - 1)
    if "chain_growth_factor" in terms and reach >= 2:
        older = "every older state" if k == "inf" else "h[t-2]"
        if k != "inf" and reach > 2:
            older = f"h[t-2], ..., h[t-{reach}]"
        skip = (
            f". The chain dh[t]/dh[t-1] ... dh[2]/dh[1] alone changes by a factor of about "
            f"{terms['chain_growth_factor']:.3g} per step; the direct attention to {older} "
            "adds paths that skip it, and dh[t]/dh[1] (the verdict's) sums them all"
        )
    return (
        f"{gradient_flow.lead(verdict, growth, steps)}: the value path a_1[t] V_1 has spectral "
        f"norm {terms['value_path_norm']:.3g} on average (a_1[t], the attention on h[t-1], "
        f"averages {terms['mean_attention_on_previous']:.3g}; ||V_1||_2 = "
        f"{terms['V_1_spectral_norm']:.3g}) and the score path a_1[t] (v_1[t] - h[t]) "
        f"h[t-1]^T (Q_1^T K_1 + K_1^T Q_1) has {terms['score_path_norm']:.3g} (the softmax is "
        f"saturated, one weight >= {SATURATED_SOFTMAX}, at {terms['saturated_fraction']:.0%} "
        f"of the steps, where this path is near 0), so {dominant}{skip}."
    )


def state_jacobians(config: AttentionRNNConfig, args: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The one-step Jacobians and what they say about vanishing or exploding gradients.

    With k >= 2 or inf the verdict is read from dh[t]/dh[1] through every path
    (``attention_totals``), and the chain of one-step Jacobians alone is one of the terms.
    """
    Q, K, V, x = args["Q"], args["K"], args["V"], args["x"]
    with torch.no_grad():
        h, a, _ = attention_rnn(Q, K, V, x, config.k)
    jacobians, terms = step_jacobians(Q, K, V, x, config.k, (h, a))
    totals = None
    if config.k == "inf" or config.k >= 2:
        with torch.no_grad():
            totals = log_total_norms(Q, K, V, x, h, a, config.k)
        chain = gradient_flow.log_product_norms(jacobians)
        terms["chain_growth_factor"] = gradient_flow.growth_factor(chain)
    flow = gradient_flow.analyse(jacobians, totals)
    reason = explain(config.k, flow.verdict, flow.growth_factor, terms, x.shape[0])
    return flow.answer(jacobians, reason, terms)

"""The total dh[t]/dh[1] of AttentionRNN(k) and AttentionRNN(inf), through every path.

With k >= 2 (and inf), h[t] reads h[t-1], ..., h[t-k] directly, so the gradient reaching
h[1] is not the product of the one-step partials dh[t]/dh[t-1] alone: it is the sum over
every path through the states, which the seed's 1.2.2(d)-(f) is about (attending to old
states gives the gradient short paths back). With ``P[t, i]`` the partial of h[t] against
h[t-i] with every other argument fixed, the seed's 1.2.2(e) for lag i::

    P[t, i] = a_i[t] (v_i[t] - h[t]) h[t-i]^T (Q_i^T K_i + K_i^T Q_i) + a_i[t] V_i

(index i of ``Q``, ``K``, ``V``; index 1 for every lag with inf), and the chain rule over the
states gives, with D[t] = dh[t]/dh[1]::

    D[1] = I,    D[t] = sum_{i = 1 .. min(k, t - 1)} P[t, i] D[t - i]

The lags reaching h[0] and before read zero states, which no h[1] moves. Each D[t] is kept
as a matrix whose largest entry is 1 and the log of its scale, so that a sum of terms of very
different sizes neither overflows nor underflows over a long sequence (the same reason
``gradient_flow.log_product_norms`` scales its products).

``v_i[t] - h[t]`` is not formed by subtracting h[t]: where the attention saturates, h[t] is
the favoured value plus a remainder many orders of magnitude smaller, which the difference
would keep only to the rounding of h[t] (``output_gaps``).
"""

from __future__ import annotations

import torch

from models.errors import ModelError

Window = int | str


def output_gaps(values: torch.Tensor, a_row: torch.Tensor) -> torch.Tensor:
    """``v_i - h`` for each value of one step, where ``h = sum_j a_j v_j`` and the a_j sum to 1.

    With p the index of the largest weight, ``v_i - h = (v_i - v_p) - sum_j a_j (v_j - v_p)``:
    the same number, with no difference of two nearly equal large vectors. Subtracting h
    directly would, when the attention saturates on p, leave of ``v_p - h`` (the small
    remainder the other weights make) only what the rounding of h kept: a relative error of
    eps |v_p| / |v_p - h| (1e-5 at scores of 2e10). Here ``v_p - h`` is
    ``sum_{j != p} a_j (v_p - v_j)``, small weights times differences of the values, and the
    other gaps add the value's own distance to v_p.

    Args:
        values: ``[width, n]``, every value the step weighs, zero states included.
        a_row: ``[width]``, their weights.

    Returns:
        ``[width, n]``.
    """
    pivot = values[a_row.argmax()]  # (n,)  the value of the largest weight
    apart = values - pivot  # (width, n)  v_j - v_p, exactly 0 at p
    remainder = (a_row[:, None] * apart).sum(dim=0)  # (n,)  h - v_p
    return apart - remainder


def log_total_norms(
    Q: torch.Tensor,
    K: torch.Tensor,
    V: torch.Tensor,
    x: torch.Tensor,
    h: torch.Tensor,
    a: torch.Tensor,
    k: Window,
) -> torch.Tensor:
    """log ||dh[t]/dh[1]||_2 for t = 1..T, every path included (0 at entry 0).

    Args:
        Q, K, V: ``[k+1, n, n]`` (``[2, n, n]`` for ``k = "inf"``).
        x: ``[T, n]``, the inputs, whose values v_0[t] are among those h[t] weighs.
        h: ``[T, n]``, the states of the forward pass.
        a: its attention weights, ``[T, width]``: entry i of row t-1 weighs h[t-i] (both
            layouts).
        k: the window, or ``"inf"``.

    Returns:
        ``[T]`` in ``h``'s dtype; ``-inf`` where dh[t]/dh[1] is exactly zero.
    """
    seq_len, n = h.shape
    lags = seq_len - 1 if k == "inf" else min(int(k), seq_len - 1)
    shared = k == "inf"
    # Per lag i (one shared matrix with inf): M_i = Q_i^T K_i + K_i^T Q_i and V_i.
    m_all = Q[1:].transpose(1, 2) @ K[1:] + K[1:].transpose(1, 2) @ Q[1:]  # (k or 1, n, n)
    v_all = V[1:]  # (k or 1, n, n)
    inputs = x @ V[0].T  # (T, n)  v_0[t] = V_0 x[t]
    scaled = torch.empty((seq_len, n, n), dtype=h.dtype, device=h.device)  # D[t] / scale
    logs = torch.empty(seq_len, dtype=torch.float64, device=h.device)  # log of each scale
    scaled[0] = torch.eye(n, dtype=h.dtype, device=h.device)
    logs[0] = 0.0
    if shared:
        # With one M and V for every lag, each state's share of the later sums is computed once.
        rows = torch.empty((seq_len, n), dtype=h.dtype, device=h.device)  # h[s]^T M D[s]
        through_v = torch.empty((seq_len, n, n), dtype=h.dtype, device=h.device)  # V D[s]
        values = h @ v_all[0].T  # (T, n)  v[s] = V h[s]
        rows[0], through_v[0] = h[0] @ m_all[0], v_all[0]
    for t in range(1, seq_len):  # row t is h[t+1]; its lags reach rows t-1 .. t-reach
        reach = t if shared else min(lags, t)
        past = slice(t - reach, t)  # rows of the states it reads, oldest first
        # Weights on those states, oldest first: entry i of a's row weighs the lag i.
        weights = a[t, 1 : reach + 1].flip(0)  # (reach,)
        top = logs[past].max()
        if top == float("-inf"):  # every state it reads has dh/dh[1] = 0
            scaled[t], logs[t] = 0.0, float("-inf")
        else:
            coef = weights * (logs[past] - top).exp().to(h.dtype)  # (reach,)
            if shared:
                gaps = _lag_gaps(inputs[t], values[past], a[t])  # (reach, n)
                total = torch.einsum("s,si,sk->ik", coef, gaps, rows[past]) + torch.einsum(
                    "s,sik->ik", coef, through_v[past]
                )  # (n, n)
            else:
                m_lags, v_lags = m_all[:reach].flip(0), v_all[:reach].flip(0)  # oldest first
                states, ds = h[past], scaled[past]  # (reach, n), (reach, n, n)
                r = torch.einsum("si,sij,sjk->sk", states, m_lags, ds)  # (reach, n)
                v = torch.einsum("sij,sj->si", v_lags, states)  # (reach, n)
                gaps = _lag_gaps(inputs[t], v, a[t])  # (reach, n)
                total = torch.einsum("s,si,sk->ik", coef, gaps, r) + torch.einsum(
                    "s,sij,sjk->ik", coef, v_lags, ds
                )  # (n, n)
            size = total.abs().max()
            if not bool(torch.isfinite(size)):
                raise ModelError(
                    f"dh[t]/dh[1] through the older states overflows {h.dtype} at step "
                    f"{t + 1}, so no norm or verdict can be computed; scale the weights or "
                    "inputs down" + ("" if h.dtype == torch.float64 else ", or use float64"),
                    "params",
                )
            if size == 0:
                scaled[t], logs[t] = 0.0, float("-inf")
            else:
                scaled[t] = total / size
                logs[t] = top + size.double().log()
        if shared:
            rows[t], through_v[t] = h[t] @ m_all[0] @ scaled[t], v_all[0] @ scaled[t]
    norms = torch.linalg.matrix_norm(scaled, ord=2).double()  # (T,)  in [1, n], or 0
    result: torch.Tensor = (logs + norms.log()).to(h.dtype)
    return result


def _lag_gaps(
    input_value: torch.Tensor, lag_values: torch.Tensor, a_row: torch.Tensor
) -> torch.Tensor:
    """``v_i[t] - h[t]`` for the lags that read a state, oldest first as ``lag_values``.

    ``input_value`` is v_0[t]; ``a_row`` the step's row of weights, whose lags past the
    states read zero states (value 0) or are inf's padding (weight 0).
    """
    reach, n = lag_values.shape
    rest = torch.zeros(
        (a_row.shape[0] - 1 - reach, n), dtype=lag_values.dtype, device=lag_values.device
    )
    values = torch.cat([input_value[None], lag_values.flip(0), rest])  # (width, n)  a's order
    return output_gaps(values, a_row)[1 : reach + 1].flip(0)  # (reach, n)

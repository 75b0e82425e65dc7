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
"""

from __future__ import annotations

import torch

from models.errors import ModelError

Window = int | str


def log_total_norms(
    Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, h: torch.Tensor, a: torch.Tensor, k: Window
) -> torch.Tensor:
    """log ||dh[t]/dh[1]||_2 for t = 1..T, every path included (0 at entry 0).

    Args:
        Q, K, V: ``[k+1, n, n]`` (``[2, n, n]`` for ``k = "inf"``).
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
                total = torch.einsum(
                    "s,si,sk->ik", coef, values[past] - h[t], rows[past]
                ) + torch.einsum("s,sik->ik", coef, through_v[past])  # (n, n)
            else:
                m_lags, v_lags = m_all[:reach].flip(0), v_all[:reach].flip(0)  # oldest first
                states, ds = h[past], scaled[past]  # (reach, n), (reach, n, n)
                r = torch.einsum("si,sij,sjk->sk", states, m_lags, ds)  # (reach, n)
                v = torch.einsum("sij,sj->si", v_lags, states)  # (reach, n)
                total = torch.einsum("s,si,sk->ik", coef, v - h[t], r) + torch.einsum(
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

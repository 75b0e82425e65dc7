"""The fixed costs of a model's passes, for the service's compute-time estimate.

A recurrent reference runs a Python loop over time steps, each step a handful of small torch
operations: its time is mostly that loop and autograd's bookkeeping per operation, not
arithmetic, so a count of floating-point operations alone underestimates it by orders of
magnitude. The figures below were measured on the reference CPU (2 cores, torch 2.13) for
sequences up to 1,024 steps, rounded up.
"""

from __future__ import annotations

from dataclasses import dataclass

STEP_SECONDS = 4e-4
"""A forward and backward pass through one time step of a recurrent model (the gated RNN,
AttentionRNN(k) with a small k): about a dozen operations and their gradients."""


@dataclass(frozen=True)
class Overhead:
    """Seconds a model's passes cost whatever the size of their tensors.

    Attributes:
        backward: a forward and a backward pass (a forward alone costs about a sixth).
        batched: a backward pass batched over many rows by ``torch.vmap``, as one chunk of
            ``jacrev``'s rows costs on top of its operations: the batched operations of every
            step are dearer to dispatch than plain ones, and AttentionRNN(inf)'s per-pair work
            repeats for every chunk. Measured per model (see each model's ``overhead``); a
            first figure, the whole backward pass per chunk, charged a Jacobian of the gated
            RNN of 1,024 steps against W_h (17 chunks, 5.4 s) 56 s.
        batched_row: see below.
    """

    backward: float
    batched: float
    batched_row: float = 0.0
    """Seconds each row of ``jacrev``'s batched backward passes adds, whatever the batch it
    is in: the batched tensors of every step hold a slice per row (AttentionRNN(k) stacks
    ``k`` past states of ``n`` per row at every step), so their traffic grows with the rows
    where ``batched`` does not."""

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

BATCHED_FACTOR = 8.0
"""How many times a plain pass's fixed costs one chunk of ``jacrev``'s rows costs: batched
by ``torch.vmap``, each operation goes through its batching rule (5-7 times measured)."""


@dataclass(frozen=True)
class Overhead:
    """Seconds a model's passes cost whatever the size of their tensors.

    Attributes:
        backward: a forward and a backward pass (a forward alone costs about a sixth).
        batched: a forward and a backward pass batched over many rows by ``torch.vmap``, as
            one chunk of ``jacrev``'s rows costs.
    """

    backward: float
    batched: float

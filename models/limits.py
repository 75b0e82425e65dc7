"""Sizes a request may ask of a model, set by the service's configuration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Upper bounds on the sizes a request may declare, checked before anything is computed.

    Attributes:
        max_sequence_length: most time steps T of a recurrent model's input.
        max_hidden_size: largest hidden state (m for the gated RNN, n for AttentionRNN).
        max_k: largest window k of AttentionRNN(k).
        max_tensor_elements: most elements of one tensor, the request's own or one a pass
            builds from them (a conv's padded input).
        max_conv_workspace_bytes: most bytes of the matrix torch's CPU convolution unfolds
            its input into (im2col), ``C * prod(K) * prod(out)`` elements counted at 8 bytes.
    """

    max_sequence_length: int
    max_hidden_size: int
    max_k: int
    max_tensor_elements: int
    max_conv_workspace_bytes: int

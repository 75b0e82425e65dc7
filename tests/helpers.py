"""Independent oracles shared by the tests: central finite differences."""

from __future__ import annotations

from collections.abc import Callable

import torch


def finite_difference_jacobian(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """d fn(x) / d x by central differences in float64, shaped ``fn(x).shape + x.shape``."""
    x = x.detach().to(torch.float64)
    out_shape = fn(x).shape
    columns = []
    flat = x.reshape(-1)
    for i in range(flat.numel()):
        step = torch.zeros_like(flat)
        step[i] = eps
        plus = fn((flat + step).reshape(x.shape))
        minus = fn((flat - step).reshape(x.shape))
        columns.append(((plus - minus) / (2 * eps)).reshape(-1))
    return torch.stack(columns, dim=-1).reshape(*out_shape, *x.shape)

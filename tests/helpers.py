"""Shared by the tests: central finite differences (an independent oracle), and a run of the
idle memory trimmer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import torch

from service import memory


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


def run_idle_trimmer(
    done: Callable[[], bool] | None = None, idle_seconds: float = 0.01, most_seconds: float = 2.0
) -> None:
    """Run the idle trimmer (``memory.trim_when_idle``) until ``done()`` (default: until it
    has trimmed what was pending), or for ``most_seconds``."""
    finished = done or (lambda: not memory.trim_pending())

    async def run_briefly() -> None:
        task = asyncio.create_task(memory.trim_when_idle(idle_seconds=idle_seconds))
        for _ in range(int(most_seconds / 0.01)):
            await asyncio.sleep(0.01)
            if finished():
                break
        task.cancel()

    asyncio.run(run_briefly())

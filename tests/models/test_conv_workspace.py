"""The workspace of torch's CPU convolution, as ``models.conv`` counts it for its budget."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from models import conv


@pytest.mark.parametrize(
    ("dims", "config", "weight", "x"),
    [
        (1, {}, (2, 3, 5), (3, 40)),
        (1, {"stride": 3, "dilation": 2, "padding": 2}, (4, 3, 5), (3, 40)),
        (2, {"padding": 1}, (2, 3, 5, 4), (3, 40, 30)),
        (2, {"stride": [2, 1], "dilation": [1, 2]}, (2, 3, 5, 4), (3, 40, 30)),
        (2, {"padding": "same"}, (1, 2, 3, 4), (2, 9, 11)),
    ],
)
def test_the_counted_workspace_is_the_largest_block_torch_allocates(
    dims: int, config: dict[str, Any], weight: tuple[int, ...], x: tuple[int, ...]
) -> None:
    """float64 on the CPU: the forward pass unfolds x into C * prod(K) * prod(out) elements
    (im2col), and the backward pass builds one such matrix per gradient, one after the other;
    nothing else it allocates is larger. (Per element of a batch: x is unbatched here.)"""
    parsed = conv.parse_conv_config(config, dims)
    shapes = {"weight": weight, "x": x}
    gen = torch.Generator().manual_seed(0)
    args = {
        name: torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_(True)
        for name, shape in shapes.items()
    }
    # acc_events: some torch releases warn without it (the tests turn warnings into errors).
    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, acc_events=True
    ) as profiled:
        y = conv.conv_forward(parsed, args)["y"]
        torch.autograd.grad(y, list(args.values()), torch.ones_like(y))
    largest = max(event.cpu_memory_usage for event in profiled.events())
    elements = conv.conv_workspace_elements(parsed, shapes)
    assert elements is not None
    assert largest == elements * conv.WORKSPACE_ITEMSIZE

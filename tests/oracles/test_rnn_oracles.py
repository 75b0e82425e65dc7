"""Every Jacobian of the RNNs (every output against every param and input) and every
backward gradient against central finite differences in float64."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from models import autodiff
from models.registry import get_model
from tests.helpers import finite_difference_jacobian

F64 = torch.float64


def gated_case() -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    m, n, seq_len = 2, 3, 3
    args = {
        "W_c": torch.randn(m, n, generator=gen, dtype=F64),
        "W_h": torch.randn(m, m, generator=gen, dtype=F64),
        "W_x": torch.randn(m, n, generator=gen, dtype=F64),
        "x": torch.randn(seq_len, n, generator=gen, dtype=F64),
        "h0": torch.randn(m, generator=gen, dtype=F64),
    }
    return "gated_rnn", {}, args


def attention_case(k: int | str) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    count = 2 if k == "inf" else int(k) + 1
    args = {
        name: 0.8 * torch.randn(count, 2, 2, generator=gen, dtype=F64) for name in ("Q", "K", "V")
    }
    args["x"] = torch.randn(3, 2, generator=gen, dtype=F64)
    return "attention_rnn", {"k": k}, args


CASES = [gated_case(), attention_case(1), attention_case(2), attention_case("inf")]
PAIRS = [
    pytest.param(
        case, of.name, wrt.name, id=f"{case[0]}{case[1].get('k', '')}-d{of.name}/d{wrt.name}"
    )
    for case in CASES
    for of in get_model(case[0]).outputs
    for wrt in get_model(case[0]).arguments
]


@pytest.mark.parametrize(("case", "of", "wrt"), PAIRS)
def test_jacobian_matches_central_differences(
    case: tuple[str, dict[str, Any], dict[str, torch.Tensor]], of: str, wrt: str
) -> None:
    name, raw_config, args = case
    model = get_model(name)
    config = model.parse_config(raw_config)
    result, _ = autodiff.jacobian(model, config, args, of, wrt)
    shapes = model.output_shapes(config, {k: tuple(v.shape) for k, v in args.items()})
    assert result.shape == (*shapes[of], *args[wrt].shape)

    def output(value: torch.Tensor) -> torch.Tensor:
        return model.forward(config, {**args, wrt: value})[of]

    torch.testing.assert_close(
        result, finite_difference_jacobian(output, args[wrt]), rtol=1e-6, atol=1e-8
    )


@pytest.mark.parametrize("case", CASES, ids=["gated", "attention1", "attention2", "attention_inf"])
def test_backward_of_every_output_matches_central_differences(
    case: tuple[str, dict[str, Any], dict[str, torch.Tensor]],
) -> None:
    name, raw_config, args = case
    model = get_model(name)
    config = model.parse_config(raw_config)
    shapes = model.output_shapes(config, {k: tuple(v.shape) for k, v in args.items()})
    gen = torch.Generator().manual_seed(2)
    upstream = {o: torch.randn(*shapes[o], generator=gen, dtype=F64) for o in shapes}
    _, grads, extras = autodiff.backward(model, config, args, upstream)
    assert extras["state_grads"].shape == shapes["h"]
    for wrt, value in args.items():

        def loss(v: torch.Tensor, wrt: str = wrt) -> torch.Tensor:
            outputs = model.forward(config, {**args, wrt: v})
            return torch.stack([(outputs[o] * g).sum() for o, g in upstream.items()]).sum()

        torch.testing.assert_close(
            grads[wrt], finite_difference_jacobian(loss, value), rtol=1e-6, atol=1e-8
        )

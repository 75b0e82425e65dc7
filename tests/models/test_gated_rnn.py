"""The gated RNN (seed 1.2.1) against a plain-loop float64 re-implementation and the seed's
closed forms 1.2.1(c) and 1.2.1(d), and the vanishing/exploding verdict on built cases."""

from __future__ import annotations

import math

import pytest
import torch

from models import autodiff, gated_rnn
from models.registry import get_model
from tests.helpers import finite_difference_jacobian

F64 = torch.float64


def loop_gated_rnn(
    W_c: torch.Tensor,
    W_h: torch.Tensor,
    W_x: torch.Tensor,
    x: torch.Tensor,
    h0: torch.Tensor,
    offsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Equations (1)-(2), one scalar at a time; ``offsets[t]`` is added to h[t] (for dl/dh)."""
    seq_len, n = x.shape
    m = W_h.shape[0]
    h_prev = [h0[i] for i in range(m)]
    hs, cs = [], []
    for t in range(seq_len):
        c_t, h_t = [], []
        for i in range(m):
            z = sum(W_c[i, j] * x[t, j] for j in range(n)) + sum(
                W_h[i, j] * h_prev[j] for j in range(m)
            )
            c = 1 / (1 + torch.exp(-z))
            u = sum(W_x[i, j] * x[t, j] for j in range(n))
            h = c * h_prev[i] + (1 - c) * u
            if offsets is not None:
                h = h + offsets[t, i]
            c_t.append(c)
            h_t.append(h)
        hs.append(torch.stack(h_t))
        cs.append(torch.stack(c_t))
        h_prev = h_t
    return torch.stack(hs), torch.stack(cs)


def random_case(seed: int, seq_len: int = 5, m: int = 3, n: int = 2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "W_c": torch.randn(m, n, generator=gen, dtype=F64),
        "W_h": torch.randn(m, m, generator=gen, dtype=F64),
        "W_x": torch.randn(m, n, generator=gen, dtype=F64),
        "x": torch.randn(seq_len, n, generator=gen, dtype=F64),
        "h0": torch.randn(m, generator=gen, dtype=F64),
    }


MODEL = get_model("gated_rnn")
CONFIG = gated_rnn.parse_config({})


@pytest.mark.parametrize("with_h0", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_forward_matches_the_plain_loop(seed: int, with_h0: bool) -> None:
    args = random_case(seed)
    if not with_h0:
        del args["h0"]
    out = MODEL.forward(CONFIG, args)
    h0 = args.get("h0", torch.zeros(3, dtype=F64))
    h, c = loop_gated_rnn(args["W_c"], args["W_h"], args["W_x"], args["x"], h0)
    torch.testing.assert_close(out["h"], h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out["c"], c, rtol=1e-12, atol=1e-12)


def test_gate_has_m_entries_per_step_and_lies_in_zero_one() -> None:
    args = random_case(2, seq_len=4, m=5, n=3)
    out = MODEL.forward(CONFIG, args)
    assert out["c"].shape == (4, 5)  # seed 1.2.1(b): c[t] in R^m
    assert bool(((out["c"] > 0) & (out["c"] < 1)).all())
    assert MODEL.output_shapes(CONFIG, {k: tuple(v.shape) for k, v in args.items()}) == {
        "h": (4, 5),
        "c": (4, 5),
    }


def test_float32_follows_the_inputs_dtype() -> None:
    args = {k: v.float() for k, v in random_case(3).items()}
    out = MODEL.forward(CONFIG, args)
    assert out["h"].dtype == torch.float32
    ref = MODEL.forward(CONFIG, {k: v.double() for k, v in args.items()})
    torch.testing.assert_close(out["h"].double(), ref["h"], rtol=1e-5, atol=1e-5)


def loss_grads(args: dict[str, torch.Tensor], direct: torch.Tensor) -> dict[str, torch.Tensor]:
    """Autograd through the plain loop: dl/d(every argument) and dl/dh[t] total (offsets)."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in args.items()}
    offsets = torch.zeros_like(direct, requires_grad=True)
    h, _ = loop_gated_rnn(
        leaves["W_c"], leaves["W_h"], leaves["W_x"], leaves["x"], leaves["h0"], offsets
    )
    loss = (h * direct).sum()
    names = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names] + [offsets])
    return {**dict(zip(names, grads[:-1], strict=True)), "state_grads": grads[-1]}


@pytest.mark.parametrize("seed", [4, 5])
def test_backward_and_state_grads_match_autograd_through_the_loop(seed: int) -> None:
    args = random_case(seed)
    direct = torch.randn(5, 3, generator=torch.Generator().manual_seed(seed + 100), dtype=F64)
    _, grads, extras = autodiff.backward(MODEL, CONFIG, args, {"h": direct})
    expected = loss_grads(args, direct)
    for name in args:
        torch.testing.assert_close(grads[name], expected[name], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        extras["state_grads"], expected["state_grads"], rtol=1e-10, atol=1e-12
    )


def test_state_grads_match_central_differences_on_state_offsets() -> None:
    args = random_case(6)
    direct = torch.randn(5, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    state_grads = gated_rnn.state_grads(CONFIG, args, {"h": direct})["state_grads"]

    def loss(offsets: torch.Tensor) -> torch.Tensor:
        h, _ = loop_gated_rnn(args["W_c"], args["W_h"], args["W_x"], args["x"], args["h0"], offsets)
        return (h * direct).sum()

    numeric = finite_difference_jacobian(loss, torch.zeros(5, 3, dtype=F64))
    torch.testing.assert_close(state_grads, numeric, rtol=1e-6, atol=1e-8)


def test_state_grads_include_the_paths_through_the_gates() -> None:
    args = random_case(8)
    gen = torch.Generator().manual_seed(9)
    grad_h, grad_c = (
        torch.randn(5, 3, generator=gen, dtype=F64),
        torch.randn(5, 3, generator=gen, dtype=F64),
    )
    state_grads = gated_rnn.state_grads(CONFIG, args, {"h": grad_h, "c": grad_c})["state_grads"]

    def loss(offsets: torch.Tensor) -> torch.Tensor:
        h, c = loop_gated_rnn(args["W_c"], args["W_h"], args["W_x"], args["x"], args["h0"], offsets)
        return (h * grad_h).sum() + (c * grad_c).sum()

    numeric = finite_difference_jacobian(loss, torch.zeros(5, 3, dtype=F64))
    torch.testing.assert_close(state_grads, numeric, rtol=1e-6, atol=1e-8)


def test_seed_1_2_1c_dl_dW_x_is_the_sum_of_total_state_grads_times_one_minus_c() -> None:
    args = random_case(10, seq_len=6, m=4, n=3)
    direct = torch.randn(6, 4, generator=torch.Generator().manual_seed(11), dtype=F64)
    outputs, grads, extras = autodiff.backward(MODEL, CONFIG, args, {"h": direct})
    total, c, x = extras["state_grads"], outputs["c"], args["x"]
    closed = sum(torch.outer(total[t] * (1 - c[t]), x[t]) for t in range(6))
    torch.testing.assert_close(grads["W_x"], closed, rtol=1e-10, atol=1e-12)


def seed_1_2_1d(args: dict[str, torch.Tensor], t: int) -> torch.Tensor:
    """diag(c[t]) + diag(h[t-1] - W_x x[t]) diag(sigma'(z)) W_h, written from the seed."""
    h, c = loop_gated_rnn(args["W_c"], args["W_h"], args["W_x"], args["x"], args["h0"])
    h_prev = args["h0"] if t == 1 else h[t - 2]
    z = args["W_c"] @ args["x"][t - 1] + args["W_h"] @ h_prev
    sig = torch.sigmoid(z)
    return (
        torch.diag(c[t - 1])
        + torch.diag(h_prev - args["W_x"] @ args["x"][t - 1])
        @ torch.diag(sig * (1 - sig))
        @ args["W_h"]
    )


def one_step(args: dict[str, torch.Tensor], t: int, h_prev: torch.Tensor) -> torch.Tensor:
    """h[t] as a function of h[t-1] alone, through the plain loop's step."""
    h, _ = loop_gated_rnn(args["W_c"], args["W_h"], args["W_x"], args["x"][t - 1 : t], h_prev)
    return h[0]


@pytest.mark.parametrize("seed", [12, 13])
def test_step_jacobians_are_seed_1_2_1d_and_agree_with_autograd_and_differences(seed: int) -> None:
    args = random_case(seed, seq_len=4)
    jacobians, _ = gated_rnn.step_jacobians(
        args["W_c"], args["W_h"], args["W_x"], args["x"], args["h0"]
    )
    h, _ = loop_gated_rnn(args["W_c"], args["W_h"], args["W_x"], args["x"], args["h0"])
    for t in range(1, 5):
        h_prev = args["h0"] if t == 1 else h[t - 2]
        auto = torch.autograd.functional.jacobian(lambda v, t=t: one_step(args, t, v), h_prev)
        numeric = finite_difference_jacobian(lambda v, t=t: one_step(args, t, v), h_prev)
        torch.testing.assert_close(jacobians[t - 1], seed_1_2_1d(args, t), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(jacobians[t - 1], auto, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(jacobians[t - 1], numeric, rtol=1e-6, atol=1e-8)


def test_seed_1_2_1d_sum_of_direct_grads_through_jacobian_products_is_state_grads() -> None:
    """dl/dh[t] = sum_{k >= t} dl/dh[k]|direct prod_{tau=t+1}^k dh[tau]/dh[tau-1]."""
    args = random_case(14, seq_len=6)
    direct = torch.randn(6, 3, generator=torch.Generator().manual_seed(15), dtype=F64)
    jac, _ = gated_rnn.step_jacobians(args["W_c"], args["W_h"], args["W_x"], args["x"], args["h0"])
    state_grads = gated_rnn.state_grads(CONFIG, args, {"h": direct})["state_grads"]
    for t in range(1, 7):
        total = torch.zeros(3, dtype=F64)
        for k in range(t, 7):
            product = torch.eye(3, dtype=F64)
            for tau in range(t + 1, k + 1):
                product = jac[tau - 1] @ product
            total = total + direct[k - 1] @ product
        torch.testing.assert_close(state_grads[t - 1], total, rtol=1e-10, atol=1e-12)


def test_jacobian_dh_dW_x_has_shape_T_m_m_n_and_matches_differences() -> None:
    args = random_case(16, seq_len=3, m=2, n=3)
    result, _ = autodiff.jacobian(MODEL, CONFIG, args, "h", "W_x")
    assert result.shape == (3, 2, 2, 3)

    def h_of(w_x: torch.Tensor) -> torch.Tensor:
        return loop_gated_rnn(args["W_c"], args["W_h"], w_x, args["x"], args["h0"])[0]

    torch.testing.assert_close(
        result, finite_difference_jacobian(h_of, args["W_x"]), rtol=1e-6, atol=1e-8
    )


def test_product_norms_are_the_norms_of_the_total_dh_t_dh_1() -> None:
    """For the gated RNN the product of one-step Jacobians is the whole dh[t]/dh[1]."""
    args = random_case(17, seq_len=5)
    answer = gated_rnn.state_jacobians(CONFIG, args)

    def states_from_h1(h1: torch.Tensor) -> torch.Tensor:
        rest = {**args, "x": args["x"][1:], "h0": h1}
        return loop_gated_rnn(rest["W_c"], rest["W_h"], rest["W_x"], rest["x"], rest["h0"])[0]

    h, _ = loop_gated_rnn(args["W_c"], args["W_h"], args["W_x"], args["x"], args["h0"])
    total = torch.autograd.functional.jacobian(states_from_h1, h[0])  # (T-1, m, m)
    expected = torch.cat([torch.ones(1, dtype=F64), torch.linalg.matrix_norm(total, ord=2)])
    torch.testing.assert_close(answer["product_norms"], expected, rtol=1e-10, atol=1e-12)
    singular = torch.linalg.svdvals(answer["jacobians"])
    torch.testing.assert_close(answer["spectral_norms"], singular[:, 0])
    torch.testing.assert_close(answer["min_singular_values"], singular[:, -1])
    growth = float(expected[-1]) ** (1 / 4)
    assert answer["growth_factor"] == pytest.approx(growth, rel=1e-10)


# --- the verdict on constructed cases --------------------------------------------------------


def held_gate_case(
    gate_bias: float, W_h: torch.Tensor, gap: float, seq_len: int = 12
) -> dict[str, torch.Tensor]:
    """n = 2m with W_c = [I 0], W_x = [0 I], and x[t] chosen step by step so that the gate's
    input W_c x[t] + W_h h[t-1] is ``gate_bias`` and h[t-1] - W_x x[t] is ``gap`` everywhere."""
    m = W_h.shape[0]
    eye, zero = torch.eye(m, dtype=F64), torch.zeros(m, m, dtype=F64)
    W_c, W_x = torch.cat([eye, zero], dim=1), torch.cat([zero, eye], dim=1)
    h_prev, rows = torch.zeros(m, dtype=F64), []
    for _ in range(seq_len):
        row = torch.cat([gate_bias - W_h @ h_prev, h_prev - gap])
        rows.append(row)
        h_prev = loop_gated_rnn(W_c, W_h, W_x, row[None], h_prev)[0][0]
    return {"W_c": W_c, "W_h": W_h, "W_x": W_x, "x": torch.stack(rows)}


def test_verdict_vanishing_with_small_W_h_and_saturated_closed_gates() -> None:
    W_h = 0.01 * torch.randn(3, 3, generator=torch.Generator().manual_seed(18), dtype=F64)
    answer = gated_rnn.state_jacobians(CONFIG, held_gate_case(-12.0, W_h, gap=1.0))
    assert answer["verdict"] == "vanishing"
    assert answer["growth_factor"] < 1e-4
    assert answer["terms"]["saturated_fraction"] == 1.0
    assert answer["terms"]["mean_gate"] < 1e-4
    assert "saturated" in answer["reason"] and "c[t]" in answer["reason"]
    assert "Vanishing" in answer["reason"] and "direct path dominates" in answer["reason"]


def test_verdict_exploding_with_large_W_h_and_the_indirect_path_dominant() -> None:
    """c = 1/2 (sigma' = 1/4), h[t-1] - W_x x[t] = 2: dh[t]/dh[t-1] = I/2 + W_h/2 = 2.5 I."""
    answer = gated_rnn.state_jacobians(
        CONFIG, held_gate_case(0.0, 4 * torch.eye(3, dtype=F64), 2.0)
    )
    torch.testing.assert_close(
        answer["jacobians"], 2.5 * torch.eye(3, dtype=F64).expand(12, 3, 3), rtol=1e-12, atol=1e-12
    )
    assert answer["verdict"] == "exploding"
    assert answer["growth_factor"] == pytest.approx(2.5, rel=1e-12)
    assert answer["terms"]["W_h_spectral_norm"] == pytest.approx(4.0)
    assert "indirect path through the gate dominates" in answer["reason"]
    torch.testing.assert_close(
        answer["log_product_norms"], torch.arange(12, dtype=F64) * math.log(2.5)
    )


def test_verdict_neither_when_open_gates_pass_h_through() -> None:
    W_h = torch.randn(3, 3, generator=torch.Generator().manual_seed(19), dtype=F64)
    answer = gated_rnn.state_jacobians(CONFIG, held_gate_case(12.0, W_h, gap=1.0))
    assert answer["verdict"] == "neither"
    assert answer["growth_factor"] == pytest.approx(1.0, abs=1e-3)
    assert answer["terms"]["mean_gate"] > 0.9999
    assert "Neither" in answer["reason"]


@pytest.mark.parametrize("seq_len", [1, 2, 4])
def test_state_grads_of_the_gates_alone_match_differences_through_the_loop(seq_len: int) -> None:
    """dl/dh[t] when the loss reads only c: c[t+1] reads h[t], so only the last state (and at
    T = 1 every state) gets no gradient, which is 0, not an error."""
    args = random_case(40 + seq_len, seq_len=seq_len)
    grad_c = torch.randn(seq_len, 3, generator=torch.Generator().manual_seed(41), dtype=F64)
    _, grads, extras = autodiff.backward(MODEL, CONFIG, args, {"c": grad_c})

    def loss(offsets: torch.Tensor) -> torch.Tensor:
        _, c = loop_gated_rnn(args["W_c"], args["W_h"], args["W_x"], args["x"], args["h0"], offsets)
        return (c * grad_c).sum()

    numeric = finite_difference_jacobian(loss, torch.zeros(seq_len, 3, dtype=F64))
    torch.testing.assert_close(extras["state_grads"], numeric, rtol=1e-6, atol=1e-8)
    assert not extras["state_grads"][-1].any()  # no later gate reads the last state
    if seq_len == 1:  # c[1] reads W_x only through a state, and there is none before it
        torch.testing.assert_close(grads["W_x"], torch.zeros_like(args["W_x"]))


def test_the_terms_leave_out_the_step_from_h0_which_no_product_holds() -> None:
    """dh[1]/dh[0] is no factor of any dh[t]/dh[1]: here its gate path is the large one (the
    gate is open at step 1 and shut at step 2), and it must not decide which path dominates."""
    args = {
        "W_c": torch.tensor([[-20.0]], dtype=F64),
        "W_h": torch.tensor([[1.0]], dtype=F64),
        "W_x": torch.tensor([[0.0]], dtype=F64),
        "x": torch.tensor([[1.0], [-1.0]], dtype=F64),
        "h0": torch.tensor([20.0], dtype=F64),
    }
    answer = gated_rnn.state_jacobians(gated_rnn.parse_config({}), args)
    jacobians, _ = gated_rnn.step_jacobians(
        args["W_c"], args["W_h"], args["W_x"], args["x"], args["h0"]
    )
    assert float(jacobians[0].abs()) > 1.0  # dh[1]/dh[0]: mostly the gate path
    _, c = gated_rnn.gated_rnn(args["W_c"], args["W_h"], args["W_x"], args["x"], args["h0"])
    assert answer["terms"]["mean_gate"] == pytest.approx(float(c[1, 0]))
    assert answer["terms"]["indirect_path_norm"] < 1e-6
    assert "so the direct path dominates" in answer["reason"]
    assert answer["growth_factor"] == pytest.approx(float(jacobians[1].abs()))


@pytest.mark.parametrize("z", [20.0, 30.0, 40.0])
def test_a_saturated_gate_keeps_the_small_numbers_it_lets_through(z: float) -> None:
    """W_c = z, W_h = 1/2, W_x = 1, x = [1, 1], h[0] = 0: h[1] = 1 - sigma(z) = sigma(-z),
    about 4e-18 at z = 40, where 1 - sigma(z) rounds to 0 in float64. The seed's equations
    written out in that form (sigma(-z) = 1 / (1 + e^z) loses nothing) are the oracle, for
    h and for dh[2]/dW_x, to a few units in the last place."""

    def sigmoid(v: float) -> float:
        return 1 / (1 + math.exp(-v))

    h1 = sigmoid(-z)
    z2 = z + 0.5 * h1
    c2 = sigmoid(z2)
    h2 = c2 * h1 + sigmoid(-z2)
    # d/dW_x of h[2] = c[2] h[1] + (1 - c[2]) W_x x[2], c[2] = sigma(z + h[1] / 2):
    dh1 = sigmoid(-z)
    dh2 = c2 * dh1 + sigmoid(-z2) + (h1 - 1) * c2 * sigmoid(-z2) * 0.5 * dh1

    f64 = torch.float64
    w_x = torch.ones(1, 1, dtype=f64, requires_grad=True)
    h, _ = gated_rnn.gated_rnn(
        torch.full((1, 1), z, dtype=f64),
        torch.full((1, 1), 0.5, dtype=f64),
        w_x,
        torch.ones(2, 1, dtype=f64),
    )
    assert h[:, 0].tolist() == pytest.approx([h1, h2], rel=1e-14, abs=0)
    (grad,) = torch.autograd.grad(h[1, 0], w_x)
    assert float(grad) == pytest.approx(dh2, rel=1e-14, abs=0)
    jacobians, _ = gated_rnn.step_jacobians(
        torch.full((1, 1), z, dtype=f64),
        torch.full((1, 1), 0.5, dtype=f64),
        torch.ones(1, 1, dtype=f64),
        torch.ones(2, 1, dtype=f64),
    )
    # dh[2]/dh[1] = c[2] + (h[1] - 1) sigma'(z[2]) / 2
    assert float(jacobians[1, 0, 0]) == pytest.approx(
        c2 + (h1 - 1) * c2 * sigmoid(-z2) * 0.5, rel=1e-15, abs=0
    )

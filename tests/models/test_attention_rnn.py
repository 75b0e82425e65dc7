"""AttentionRNN(k) and AttentionRNN(inf) (seed 1.2.2) against a plain-loop float64
re-implementation, and the seed's closed forms 1.2.2(e) and 1.2.2(f)."""

from __future__ import annotations

import mpmath
import pytest
import torch

from models import attention_rnn, autodiff
from models.attention_rnn import Window
from models.registry import get_model
from tests.helpers import finite_difference_jacobian

F64 = torch.float64
MODEL = get_model("attention_rnn")
WINDOWS: list[Window] = [1, 2, 3, 7, "inf"]  # k = 7 > T: more zero states than states


def loop_attention_rnn(
    Q: torch.Tensor,
    K: torch.Tensor,
    V: torch.Tensor,
    x: torch.Tensor,
    k: Window,
    offsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Equations (3)-(8) one index at a time, zero states h[t] = 0 (t < 1) projected like any
    other state; for inf, indices i >= 1 all use the shared Q[1], K[1], V[1]."""
    seq_len, n = x.shape
    width = seq_len + 1 if k == "inf" else k + 1
    states: dict[int, torch.Tensor] = {}
    hs, a_rows, w_rows = [], [], []
    for t in range(1, seq_len + 1):
        count = t + 1 if k == "inf" else k + 1
        scores, values = [], []
        for i in range(count):
            source = x[t - 1] if i == 0 else states.get(t - i, torch.zeros(n, dtype=x.dtype))
            p = i if k != "inf" else min(i, 1)
            q, key, v = Q[p] @ source, K[p] @ source, V[p] @ source
            scores.append(sum(q[j] * key[j] for j in range(n)))
            values.append(v)
        top = max(float(torch.as_tensor(s).detach()) for s in scores)
        exps = [torch.exp(s - top) for s in scores]
        total = sum(exps)
        weights = [e / total for e in exps]
        h = sum(a * v for a, v in zip(weights, values, strict=True))
        assert isinstance(h, torch.Tensor)
        if offsets is not None:
            h = h + offsets[t - 1]
        states[t] = h
        hs.append(h)
        pad = [torch.zeros((), dtype=x.dtype)] * (width - count)
        a_rows.append(torch.stack(weights + pad))
        w_rows.append(torch.stack([torch.as_tensor(s, dtype=x.dtype) for s in scores] + pad))
    return torch.stack(hs), torch.stack(a_rows), torch.stack(w_rows)


def random_case(seed: int, k: Window, seq_len: int = 5, n: int = 3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    count = 2 if k == "inf" else k + 1
    return {
        name: 0.7 * torch.randn(count, n, n, generator=gen, dtype=F64) for name in ("Q", "K", "V")
    } | {"x": torch.randn(seq_len, n, generator=gen, dtype=F64)}


def run_loop(
    args: dict[str, torch.Tensor], k: Window, **kw: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    merged = {**args, **kw}
    return loop_attention_rnn(merged["Q"], merged["K"], merged["V"], merged["x"], k)


@pytest.mark.parametrize("k", WINDOWS)
def test_forward_matches_the_plain_loop(k: Window) -> None:
    args = random_case(0, k)
    config = attention_rnn.parse_config({"k": k})
    out = MODEL.forward(config, args)
    h, a, w = run_loop(args, k)
    for name, expected in (("h", h), ("a", a), ("w", w)):
        torch.testing.assert_close(out[name], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_a_has_k_plus_1_entries_summing_to_one(k: int) -> None:
    args = random_case(1, k, seq_len=3)
    out = MODEL.forward(attention_rnn.parse_config({"k": k}), args)
    assert out["a"].shape == (3, k + 1)  # seed 1.2.2(b): a[t] in R^{k+1}
    torch.testing.assert_close(out["a"].sum(dim=1), torch.ones(3, dtype=F64))
    assert bool((out["a"] > 0).all())
    # zero states score 0: at t = 1 every past index points at a zero state
    assert out["w"][0, 1:].eq(0).all()


def test_inf_layout_holds_t_plus_1_entries_then_zeros() -> None:
    args = random_case(2, "inf", seq_len=4)
    out = MODEL.forward(attention_rnn.parse_config({"k": "inf"}), args)
    assert out["a"].shape == out["w"].shape == (4, 5)
    for t in range(1, 5):
        row = out["a"][t - 1]
        assert float(row[: t + 1].sum()) == pytest.approx(1.0)
        assert bool((row[: t + 1] > 0).all()) and row[t + 1 :].eq(0).all()
        assert float(out["w"][t - 1, t]) == 0.0  # h[0] = 0 takes part with score 0


def test_inf_shares_index_1_across_every_past_state() -> None:
    """Changing Q[1] changes the scores of every past state; with k = inf there is no Q[2]."""
    args = random_case(3, "inf", seq_len=4)
    config = attention_rnn.parse_config({"k": "inf"})
    base = MODEL.forward(config, args)["w"]
    bump = torch.tensor([0.0, 1.0], dtype=F64)[:, None, None]
    bumped = MODEL.forward(config, {**args, "Q": args["Q"] + bump})["w"]
    h = MODEL.forward(config, args)["h"]
    for t in range(3, 5):
        for i in range(1, t):
            assert not torch.isclose(bumped[t - 1, i], base[t - 1, i])
            expected = (args["Q"][1] @ h[t - i - 1]) @ (args["K"][1] @ h[t - i - 1])
            torch.testing.assert_close(base[t - 1, i], expected)


def loss_grads(
    args: dict[str, torch.Tensor], k: Window, grads_of: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    leaves = {name: v.clone().requires_grad_(True) for name, v in args.items()}
    offsets = torch.zeros_like(args["x"], requires_grad=True)
    h, a, w = loop_attention_rnn(leaves["Q"], leaves["K"], leaves["V"], leaves["x"], k, offsets)
    outputs = {"h": h, "a": a, "w": w}
    loss = sum((outputs[name] * g).sum() for name, g in grads_of.items())
    assert isinstance(loss, torch.Tensor)
    names = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[name] for name in names] + [offsets])
    return {**dict(zip(names, grads[:-1], strict=True)), "state_grads": grads[-1]}


@pytest.mark.parametrize("k", WINDOWS)
def test_backward_and_state_grads_match_autograd_through_the_loop(k: Window) -> None:
    args = random_case(4, k)
    config = attention_rnn.parse_config({"k": k})
    direct = torch.randn(5, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    _, grads, extras = autodiff.backward(MODEL, config, args, {"h": direct})
    expected = loss_grads(args, k, {"h": direct})
    for name in args:
        torch.testing.assert_close(grads[name], expected[name], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        extras["state_grads"], expected["state_grads"], rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("k", [2, "inf"])
def test_state_grads_match_central_differences_including_paths_through_a_and_w(k: Window) -> None:
    args = random_case(6, k, seq_len=4)
    config = attention_rnn.parse_config({"k": k})
    shapes = MODEL.output_shapes(config, {name: tuple(v.shape) for name, v in args.items()})
    gen = torch.Generator().manual_seed(7)
    grads_of = {name: torch.randn(*shapes[name], generator=gen, dtype=F64) for name in "haw"}
    state_grads = attention_rnn.state_grads(config, args, grads_of)["state_grads"]

    def loss(offsets: torch.Tensor) -> torch.Tensor:
        h, a, w = loop_attention_rnn(args["Q"], args["K"], args["V"], args["x"], k, offsets)
        outputs = {"h": h, "a": a, "w": w}
        return sum((outputs[name] * g).sum() for name, g in grads_of.items())  # type: ignore[return-value]

    numeric = finite_difference_jacobian(loss, torch.zeros_like(args["x"]))
    torch.testing.assert_close(state_grads, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("k", [2, "inf"])
def test_backward_grads_match_central_differences(k: Window) -> None:
    args = random_case(8, k, seq_len=3, n=2)
    config = attention_rnn.parse_config({"k": k})
    direct = torch.randn(3, 2, generator=torch.Generator().manual_seed(9), dtype=F64)
    _, grads, _ = autodiff.backward(MODEL, config, args, {"h": direct})
    for name in args:

        def loss(value: torch.Tensor, name: str = name) -> torch.Tensor:
            return (run_loop(args, k, **{name: value})[0] * direct).sum()

        numeric = finite_difference_jacobian(loss, args[name])
        torch.testing.assert_close(grads[name], numeric, rtol=1e-6, atol=1e-8)


def test_jacobian_da_dx_matches_central_differences() -> None:
    args = random_case(10, 2, seq_len=3, n=2)
    config = attention_rnn.parse_config({"k": 2})
    result, method = autodiff.jacobian(MODEL, config, args, "a", "x")
    assert result.shape == (3, 3, 3, 2) and method == "autograd"
    numeric = finite_difference_jacobian(lambda v: run_loop(args, 2, x=v)[1], args["x"])
    torch.testing.assert_close(result, numeric, rtol=1e-6, atol=1e-8)


def one_step(
    args: dict[str, torch.Tensor], k: Window, t: int, h_prev: torch.Tensor
) -> torch.Tensor:
    """h[t] as a function of h[t-1] alone (every other state and argument fixed)."""
    h, _, _ = run_loop(args, k)
    n = args["x"].shape[1]
    states = {s: h[s - 1] for s in range(1, t - 1)} | {t - 1: h_prev}
    count = t + 1 if k == "inf" else k + 1
    scores, values = [], []
    for i in range(count):
        source = args["x"][t - 1] if i == 0 else states.get(t - i, torch.zeros(n, dtype=F64))
        p = i if k != "inf" else min(i, 1)
        q, key = args["Q"][p] @ source, args["K"][p] @ source
        scores.append(q @ key)
        values.append(args["V"][p] @ source)
    weights = torch.softmax(torch.stack(scores), dim=0)
    return weights @ torch.stack(values)


def seed_1_2_2e(args: dict[str, torch.Tensor], k: Window, t: int, lag: int = 1) -> torch.Tensor:
    """a_i (v_i - h[t]) h[t-i]^T (Q_i^T K_i + K_i^T Q_i) + a_i V_i with i = lag, as the seed
    writes it for i = 1 (with the shared index 1 for inf)."""
    h, a, _ = run_loop(args, k)
    n = args["x"].shape[1]
    p = lag if k != "inf" else 1
    h_old = h[t - lag - 1] if t - lag >= 1 else torch.zeros(n, dtype=F64)
    Qi, Ki, Vi = args["Q"][p], args["K"][p], args["V"][p]
    a_i = a[t - 1, lag]
    return a_i * torch.outer(Vi @ h_old - h[t - 1], h_old @ (Qi.T @ Ki + Ki.T @ Qi)) + a_i * Vi


@pytest.mark.parametrize("k", WINDOWS)
def test_step_jacobians_are_seed_1_2_2e_and_agree_with_autograd_and_differences(k: Window) -> None:
    args = random_case(11, k, seq_len=4)
    jacobians, _ = attention_rnn.step_jacobians(args["Q"], args["K"], args["V"], args["x"], k)
    h, _, _ = run_loop(args, k)
    for t in range(1, 5):
        h_prev = h[t - 2] if t >= 2 else torch.zeros(3, dtype=F64)
        auto = torch.autograd.functional.jacobian(lambda v, t=t: one_step(args, k, t, v), h_prev)
        numeric = finite_difference_jacobian(lambda v, t=t: one_step(args, k, t, v), h_prev)
        torch.testing.assert_close(
            jacobians[t - 1], seed_1_2_2e(args, k, t), rtol=1e-12, atol=1e-12
        )
        torch.testing.assert_close(jacobians[t - 1], auto, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(jacobians[t - 1], numeric, rtol=1e-6, atol=1e-8)


def saturated_case(k: Window) -> dict[str, torch.Tensor]:
    """Three steps of integers whose scores float64 holds exactly (below 2**53), so that its
    softmax weights are as good as a 60-digit one's and only the Jacobian's own rounding is
    left to measure. Steps 1 and 2 are one-hot in float64 (the other scores >= 1e9 below),
    h[1] = (4e4, 4e4) and h[2] = V_1 h[1] = (1.2e5, 8e4). At step 3 the score of h[t-1] is
    |h[2]|^2 = 2.08e10 and x[3]'s, x_1 x_2 with these Q_0 and K_0, is 25 below it: a_1[3] is
    1 - 1.4e-11, and v_1[3] - h[3] is 1.4e-11 (v_1[3] - v_0[3]), a hundred-thousandth of
    v_1[3] = (3.2e5, 1.6e5), yet its score path is half the Jacobian."""
    n, count = 2, 2 if k == "inf" else int(k) + 1
    eye = torch.eye(n, dtype=F64)
    firsts = {
        "Q": torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=F64),
        "K": torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=F64),
        "V": torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=F64),
    }
    previous = {"Q": eye, "K": eye, "V": torch.tensor([[2.0, 1.0], [0.0, 2.0]], dtype=F64)}
    older = {"Q": eye, "K": eye, "V": eye}  # h[t-2] with k >= 2: a weight of exactly 0
    args = {
        name: torch.stack([firsts[name], previous[name]] + [older[name]] * (count - 2))
        for name in ("Q", "K", "V")
    }
    last_score = 120000.0**2 + 80000.0**2 - 25  # w_0[3] = w_1[3] - 25
    args["x"] = torch.tensor([[40000.0, 30000.0], [0.0, 0.0], [1.0, last_score]], dtype=F64)
    return args


def mp_step_jacobians(args: dict[str, torch.Tensor], k: Window) -> torch.Tensor:
    """dh[t]/dh[t-1] by the seed's 1.2.2(e) in 60-digit arithmetic, from equations (3)-(8)
    run again at that precision (the float64 inputs are exact there), each step's formula
    checked against a central difference of h[t] in h[t-1] at the same precision."""
    with mpmath.workdps(60):
        Q, K, V = ([mpmath.matrix(m.tolist()) for m in args[name]] for name in ("Q", "K", "V"))
        xs = [mpmath.matrix(row.tolist()) for row in args["x"]]
        seq_len, n = args["x"].shape
        zero = mpmath.matrix(n, 1)

        def step(t: int, states: dict[int, mpmath.matrix]) -> tuple[list, list, mpmath.matrix]:
            count = t + 1 if k == "inf" else int(k) + 1
            sources = [xs[t - 1]] + [states.get(t - i, zero) for i in range(1, count)]
            index = [i if k != "inf" else min(i, 1) for i in range(count)]
            scores = [(Q[p] * s).T * (K[p] * s) for p, s in zip(index, sources, strict=True)]
            top = max(score[0] for score in scores)
            exps = [mpmath.exp(score[0] - top) for score in scores]
            weights = [e / mpmath.fsum(exps) for e in exps]
            values = [V[p] * s for p, s in zip(index, sources, strict=True)]
            h = zero
            for weight, value in zip(weights, values, strict=True):
                h = h + weight * value
            return weights, values, h

        states: dict[int, mpmath.matrix] = {}
        jacobians = []
        for t in range(1, seq_len + 1):
            weights, values, h = step(t, states)
            h_prev = states.get(t - 1, zero)
            m1 = Q[1].T * K[1] + K[1].T * Q[1]
            jac = weights[1] * (values[1] - h) * (h_prev.T * m1) + weights[1] * V[1]
            for j in range(n):  # column j of the Jacobian by a central difference
                delta = zero.copy()
                delta[j] = mpmath.mpf("1e-25")
                plus = step(t, states | {t - 1: h_prev + delta})[2]
                minus = step(t, states | {t - 1: h_prev - delta})[2]
                for i in range(n):
                    numeric = (plus[i] - minus[i]) / (2 * delta[j])
                    assert abs(numeric - jac[i, j]) <= mpmath.mpf("1e-30") * (1 + abs(jac[i, j]))
            states[t] = h
            jacobians.append([[float(jac[i, j]) for j in range(n)] for i in range(n)])
    return torch.tensor(jacobians, dtype=F64)


@pytest.mark.parametrize("k", [1, 2, "inf"])
def test_step_jacobians_keep_their_accuracy_when_attention_saturates_on_large_states(
    k: Window,
) -> None:
    """v_1[t] - h[t] formed from the values, not by subtracting the rounded h[t] from v_1[t],
    which here left a relative error of 9e-6 in dh[3]/dh[2]'s entries and 2.4e-6 in the norm
    of dh[3]/dh[1], against 60-digit arithmetic."""
    args = saturated_case(k)
    _, a, _ = attention_rnn.attention_rnn(args["Q"], args["K"], args["V"], args["x"], k)
    assert float(a[2, 1]) > 1 - 1e-10 and float(a[2, 0]) > 1e-11  # saturated, not one-hot
    jacobians, _ = attention_rnn.step_jacobians(args["Q"], args["K"], args["V"], args["x"], k)
    expected = mp_step_jacobians(args, k)
    value_path = a[2, 1] * args["V"][1]
    score_path = expected[2] - value_path
    assert float(score_path.norm()) > 0.3 * float(value_path.norm())  # both paths count
    torch.testing.assert_close(jacobians, expected, rtol=1e-12, atol=0)
    # dh[t]/dh[1] through every path (one at these steps: a_2[3] is 0) inherits its accuracy.
    answer = attention_rnn.state_jacobians(attention_rnn.parse_config({"k": k}), args)
    total = torch.linalg.matrix_norm(expected[2] @ expected[1], ord=2)
    assert float(answer["product_norms"][2]) == pytest.approx(float(total), rel=1e-12)


@pytest.mark.parametrize("k", WINDOWS)
def test_seed_1_2_2f_recursion_reproduces_state_grads(k: Window) -> None:
    """dl/dh[T] = its direct part + sum_{t=T+1}^{min(T+k, T_end)} dl/dh[t] dh[t]/dh[T], the
    partials dh[t]/dh[T] (lag t - T) from 1.2.2(e)'s closed form and zero beyond T+k."""
    seq_len = 6
    args = random_case(12, k, seq_len=seq_len)
    config = attention_rnn.parse_config({"k": k})
    direct = torch.randn(seq_len, 3, generator=torch.Generator().manual_seed(13), dtype=F64)
    state_grads = attention_rnn.state_grads(config, args, {"h": direct})["state_grads"]
    reach = seq_len if k == "inf" else k
    total: dict[int, torch.Tensor] = {}
    for big_t in range(seq_len, 0, -1):
        grad = direct[big_t - 1].clone()
        for t in range(big_t + 1, min(big_t + reach, seq_len) + 1):
            grad = grad + total[t] @ seed_1_2_2e(args, k, t, lag=t - big_t)
        total[big_t] = grad
    expected = torch.stack([total[t] for t in range(1, seq_len + 1)])
    torch.testing.assert_close(state_grads, expected, rtol=1e-10, atol=1e-12)


def test_verdict_near_one_when_all_attention_goes_to_h_t_minus_1_through_a_rotation() -> None:
    """w_1 = h^T Q_1^T K_1 h large against w_0 = 0: a_1 ~ 1, h[t] ~ V_1 h[t-1], V_1 a rotation."""
    n, theta = 2, 0.3
    rotation = torch.tensor(
        [
            [torch.cos(torch.tensor(theta)), -torch.sin(torch.tensor(theta))],
            [torch.sin(torch.tensor(theta)), torch.cos(torch.tensor(theta))],
        ],
        dtype=F64,
    )
    zero, eye = torch.zeros(n, n, dtype=F64), torch.eye(n, dtype=F64)
    args = {
        "Q": torch.stack([zero, 20 * eye]),
        "K": torch.stack([zero, 20 * eye]),
        "V": torch.stack([eye, rotation]),
        "x": torch.cat([torch.tensor([[1.0, 0.0]], dtype=F64), torch.zeros(7, n, dtype=F64)]),
    }
    answer = attention_rnn.state_jacobians(attention_rnn.parse_config({"k": 1}), args)
    assert answer["verdict"] == "neither"
    assert answer["growth_factor"] == pytest.approx(1.0, abs=1e-2)
    assert answer["terms"]["saturated_fraction"] > 0.8
    assert "value path dominates" in answer["reason"]


def test_verdict_vanishing_with_small_values() -> None:
    args = random_case(14, 2, seq_len=6)
    args["V"] = 0.05 * args["V"]
    answer = attention_rnn.state_jacobians(attention_rnn.parse_config({"k": 2}), args)
    assert answer["verdict"] == "vanishing"
    assert answer["growth_factor"] < 0.1
    assert "direct attention to h[t-2] adds paths that skip it" in answer["reason"]
    assert answer["terms"]["chain_growth_factor"] < 0.1


def total_state_jacobians(args: dict[str, torch.Tensor], k: Window) -> torch.Tensor:
    """dh[t]/dh[1] for every t, [T, n, n], by autograd through the plain loop: h[1] moved by
    an offset, every later state following through every path."""
    seq_len, n = args["x"].shape

    def states(first: torch.Tensor) -> torch.Tensor:
        offsets = torch.cat([first[None], torch.zeros(seq_len - 1, n, dtype=F64)])
        return loop_attention_rnn(args["Q"], args["K"], args["V"], args["x"], k, offsets)[0]

    result: torch.Tensor = torch.autograd.functional.jacobian(states, torch.zeros(n, dtype=F64))
    return result


@pytest.mark.parametrize("k", WINDOWS)
@pytest.mark.parametrize("seq_len", [1, 2, 6])
def test_product_norms_are_the_norms_of_dh_t_dh_1_through_every_path(
    k: Window, seq_len: int
) -> None:
    """Against autograd through the plain loop, and for the last step against central
    differences: with k >= 2 the older states' direct paths are in the sum."""
    args = random_case(40 + seq_len, k, seq_len=seq_len, n=3)
    args["V"] = 2.0 * args["V"]  # a long way from the identity: the paths differ in size
    answer = attention_rnn.state_jacobians(attention_rnn.parse_config({"k": k}), args)
    totals = total_state_jacobians(args, k)
    expected = torch.linalg.matrix_norm(totals, ord=2)
    torch.testing.assert_close(answer["product_norms"], expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(answer["log_product_norms"], expected.log(), rtol=0, atol=1e-10)

    def last(first: torch.Tensor) -> torch.Tensor:
        offsets = torch.cat([first[None], torch.zeros(seq_len - 1, 3, dtype=F64)])
        return loop_attention_rnn(args["Q"], args["K"], args["V"], args["x"], k, offsets)[0][-1]

    numeric = finite_difference_jacobian(last, torch.zeros(3, dtype=F64))
    torch.testing.assert_close(totals[-1], numeric, rtol=1e-6, atol=1e-8)
    if seq_len > 1:
        growth = float(expected[-1]) ** (1 / (seq_len - 1))
        assert answer["growth_factor"] == pytest.approx(growth, rel=1e-10)


def test_attending_to_every_state_keeps_the_gradient_where_the_chain_vanishes() -> None:
    """AttentionRNN(inf) (seed 1.2.2(d)): small Q_h, K_h, so the step-to-step partial shrinks,
    but a strong V_h on every older state keeps dh[t]/dh[1] from vanishing."""
    n, seq_len = 2, 9
    eye = torch.eye(n, dtype=F64)
    zero = torch.zeros(n, n, dtype=F64)
    args = {
        "Q": torch.stack([0.3 * eye, zero]),
        "K": torch.stack([0.3 * eye, zero]),
        "V": torch.stack([eye, 1.5 * eye]),
        "x": torch.tensor([[0.5, -0.2]], dtype=F64).expand(seq_len, n).clone(),
    }
    answer = attention_rnn.state_jacobians(attention_rnn.parse_config({"k": "inf"}), args)
    totals = torch.linalg.matrix_norm(total_state_jacobians(args, "inf"), ord=2)
    torch.testing.assert_close(answer["product_norms"], totals, rtol=1e-10, atol=1e-12)
    assert answer["terms"]["chain_growth_factor"] < 0.5
    assert answer["verdict"] == "neither"
    assert 0.9 <= answer["growth_factor"] <= 1.1
    assert "every older state" in answer["reason"]


@pytest.mark.parametrize("k", [2, "inf"])
def test_long_sequences_keep_finite_logs(k: Window) -> None:
    """Scaled like the chain's products: dh[t]/dh[1] far below a float64's smallest number
    still has a finite log. With k = 2 it vanishes; with inf the direct path from h[1] to
    every h[t] keeps it from vanishing at an exponential rate, though the chain does."""
    args = random_case(50, k, seq_len=400, n=3)
    args["V"] = 0.05 * args["V"]
    answer = attention_rnn.state_jacobians(attention_rnn.parse_config({"k": k}), args)
    logs = answer["log_product_norms"]
    assert bool(torch.isfinite(logs).all())
    assert answer["terms"]["chain_growth_factor"] < 0.5
    if k == 2:
        assert float(logs[-1]) < -750  # e^-750: 0 in float64
        assert answer["verdict"] == "vanishing"
    else:
        assert answer["verdict"] == "neither"
    # The start, which float64 holds, agrees with autograd.
    head = {**args, "x": args["x"][:20]}
    expected = torch.linalg.matrix_norm(total_state_jacobians(head, k), ord=2).log()
    torch.testing.assert_close(logs[:20], expected, rtol=0, atol=1e-8)


def test_with_k_1_the_total_is_the_chain_of_one_step_jacobians() -> None:
    args = random_case(60, 1, seq_len=30, n=3)
    answer = attention_rnn.state_jacobians(attention_rnn.parse_config({"k": 1}), args)
    jacobians, _ = attention_rnn.step_jacobians(args["Q"], args["K"], args["V"], args["x"], 1)
    from models.gradient_flow import log_product_norms

    torch.testing.assert_close(answer["log_product_norms"], log_product_norms(jacobians))
    assert "chain_growth_factor" not in answer["terms"]


@pytest.mark.parametrize("names", ["a", "w", "aw"])
@pytest.mark.parametrize("seq_len", [1, 3])
@pytest.mark.parametrize("k", [1, 2, "inf"])
def test_state_grads_of_the_attention_alone_match_differences_through_the_loop(
    k: Window, seq_len: int, names: str
) -> None:
    """dl/dh[t] when the loss reads only a and w: they read the past states, never h[t] of
    their own step, so at T = 1 no state reaches the loss and the gradient is exactly 0."""
    args = random_case(30 + seq_len, k, seq_len=seq_len, n=2)
    config = attention_rnn.parse_config({"k": k})
    shapes = MODEL.output_shapes(config, {name: tuple(v.shape) for name, v in args.items()})
    gen = torch.Generator().manual_seed(31)
    grads_of = {name: torch.randn(*shapes[name], generator=gen, dtype=F64) for name in names}
    _, _, extras = autodiff.backward(MODEL, config, args, grads_of)

    def loss(offsets: torch.Tensor) -> torch.Tensor:
        h, a, w = loop_attention_rnn(args["Q"], args["K"], args["V"], args["x"], k, offsets)
        outputs = {"h": h, "a": a, "w": w}
        return sum((outputs[name] * g).sum() for name, g in grads_of.items())  # type: ignore[return-value]

    numeric = finite_difference_jacobian(loss, torch.zeros_like(args["x"]))
    torch.testing.assert_close(extras["state_grads"], numeric, rtol=1e-6, atol=1e-8)
    assert not extras["state_grads"][-1].any()  # no later step reads the last state


@pytest.mark.parametrize(
    ("k", "seq_len", "named"),
    [(5, 3, "h[t-2] directly"), (5, 6, "h[t-2], ..., h[t-5]"), (7, 4, "h[t-2], ..., h[t-3]")],
)
def test_the_reason_names_only_the_older_states_that_reach_h1(
    k: Window, seq_len: int, named: str
) -> None:
    args = random_case(70, k, seq_len=seq_len, n=2)
    answer = attention_rnn.state_jacobians(attention_rnn.parse_config({"k": k}), args)
    assert f"the direct attention to {named.removesuffix(' directly')} adds" in answer["reason"]


@pytest.mark.parametrize("k", [2, 5, "inf"])
def test_two_steps_have_no_path_that_skips_the_chain(k: Window) -> None:
    args = random_case(71, k, seq_len=2, n=2)
    answer = attention_rnn.state_jacobians(attention_rnn.parse_config({"k": k}), args)
    assert "skip" not in answer["reason"]

"""The batched trainer against autograd and a plain per-configuration loop (float64)."""

import pytest
import torch

from overparam.core import lp_loss, precondition
from overparam.training import emulate, end_to_end, factor_gradients, stack_configs, train
from overparam.training.trainer import _Problem


def _data(gen, b=40, d=5, m=2):
    X = torch.randn(b, d, dtype=torch.float64, generator=gen)
    Y = torch.randn(b, m, dtype=torch.float64, generator=gen)
    return X, Y


def _factors(gen, dims, K, scale=0.4):
    return [
        scale * torch.randn(K, dims[j + 1], dims[j], dtype=torch.float64, generator=gen)
        for j in range(len(dims) - 1)
    ]


def _plain_gd(X, Y, factors, lr, p, steps):
    """One configuration, autograd + manual GD: the independent reference."""
    params = [W.clone().requires_grad_() for W in factors]
    losses = []
    for step in range(steps + 1):
        loss = lp_loss(X @ end_to_end(params).mT, Y, p)
        losses.append(float(loss.detach()))
        if step == steps:
            break
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for W, g in zip(params, grads, strict=True):
                W -= lr * g
    return losses, [W.detach() for W in params]


@pytest.mark.parametrize("p", [2.0, 3.0, 4.0])
def test_factor_gradients_match_autograd(gen, p):
    X, Y = _data(gen)
    factors = _factors(gen, [5, 4, 3, 2], K=3)
    params = [W.clone().requires_grad_() for W in factors]
    total = sum(lp_loss(X @ end_to_end([W[k] for W in params]).mT, Y, p) for k in range(3))
    expected = torch.autograd.grad(total, params)
    G = _Problem(X, Y, [p] * 3, gram=False).gradient(end_to_end(factors))
    for got, want in zip(factor_gradients(factors, G), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)  # float64 rounding only


def test_train_matches_plain_loop_for_mixed_rates_and_exponents(gen):
    X, Y = _data(gen)
    factors = _factors(gen, [5, 3, 2], K=3)
    lrs, ps, steps = [0.05, 0.02, 0.1], [4.0, 2.0, 3.0], 25
    res = train(X, Y, factors, lr=lrs, p=ps, steps=steps, record=range(steps + 1))
    for k in range(3):
        losses, final = _plain_gd(X, Y, [W[k] for W in factors], lrs[k], ps[k], steps)
        # same arithmetic up to summation order: relative 1e-10 over 25 steps
        torch.testing.assert_close(
            res.loss[k], torch.tensor(losses, dtype=torch.float64), rtol=1e-10, atol=0
        )
        for W, Wk in zip(res.factors, final, strict=True):
            torch.testing.assert_close(W[k], Wk, rtol=1e-9, atol=1e-12)
    assert res.diverged == [False] * 3 and res.steps == list(range(steps + 1))


def test_gram_form_equals_data_form(gen):
    X, Y = _data(gen, b=60)
    factors = _factors(gen, [5, 4, 2], K=2)
    a = train(X, Y, factors, lr=0.05, p=2.0, steps=30, gram=True)
    b = train(X, Y, factors, lr=0.05, p=2.0, steps=30, gram=False)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-11, atol=0)


def test_identity_padding_is_a_shallower_network(gen):
    X, Y = _data(gen, m=1)
    shallow = [0.3 * torch.randn(1, 5, dtype=torch.float64, generator=gen)]
    deep = [
        0.3 * torch.randn(1, 5, dtype=torch.float64, generator=gen),
        torch.tensor([[0.7]], dtype=torch.float64),
        torch.tensor([[0.9]], dtype=torch.float64),
    ]
    factors, depths = stack_configs([shallow, deep])
    assert depths == [1, 3] and [W.shape for W in factors][1] == (2, 1, 1)
    res = train(X, Y, factors, lr=0.05, p=4.0, steps=20, depths=depths, record=[20])
    alone = train(X, Y, [shallow[0][None]], lr=0.05, p=4.0, steps=20, record=[20])
    deep_alone = train(X, Y, [W[None] for W in deep], lr=0.05, p=4.0, steps=20, record=[20])
    torch.testing.assert_close(res.loss[0], alone.loss[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(res.loss[1], deep_alone.loss[0], rtol=1e-12, atol=0)
    assert float(res.factors[1][0]) == 1.0 and float(res.factors[2][0]) == 1.0


def test_mixed_optimizer_settings_equal_separate_runs(gen):
    """One call with a different optimizer setting per configuration (the data products shared)
    gives each configuration the run it gets alone, also after a divergent one is dropped."""
    X, Y = _data(gen, m=1)
    factors = _factors(gen, [5, 1, 1], K=6, scale=0.3)
    names = ["adam", "gd", "adagrad", "adam", "adadelta", "gd"]
    hypers = [None, None, {"initial_accumulator": 0.1, "eps": 0.0}, {"epsilon_hat": 1.0},
              {"rho": 0.95, "eps": 1e-8}, None]  # fmt: skip
    lrs, ps = [1e-2, 5e-3, 3e-2, 1e-2, 0.5, 50.0], [4.0, 4.0, 2.0, 4.0, 4.0, 4.0]
    record = [0, 5, 10, 40]
    res = train(X, Y, factors, lr=lrs, p=ps, steps=40, optimizer=names, hyper=hypers,
                record=record)  # fmt: skip
    assert res.diverged == [False] * 5 + [True]  # gd at rate 50 blows up, dropped mid-run
    for k in range(5):
        alone = train(X, Y, [W[k : k + 1] for W in factors], lr=lrs[k], p=ps[k], steps=40,
                      optimizer=names[k], hyper=hypers[k], record=record)  # fmt: skip
        torch.testing.assert_close(res.loss[k], alone.loss[0], rtol=1e-12, atol=0)


def test_divergence_is_detected_reported_and_excluded(gen):
    X, Y = _data(gen, m=1)
    W = 0.1 * torch.randn(1, 1, 5, dtype=torch.float64, generator=gen).expand(3, 1, 5)
    lam = float(torch.linalg.eigvalsh(X.mT @ X / X.shape[0])[-1])  # l2 curvature
    lrs = [0.5 / lam, 1.5 / lam, 4.0 / lam]  # GD on l2 is stable iff lr < 2 / lam
    res = train(X, Y, [W], lr=lrs, p=2.0, steps=400)
    assert res.diverged == [False, False, True]
    assert res.diverged_step[2] is not None and res.diverged_step[2] <= 400
    assert torch.isnan(res.loss[2, -1]) and torch.isnan(res.factors[0][2]).all()
    assert bool(torch.isfinite(res.loss[:2]).all())


def test_emulation_matches_a_plain_preconditioned_loop(gen):
    X, Y = _data(gen)
    W0 = 0.3 * torch.randn(2, 2, 5, dtype=torch.float64, generator=gen)
    res = emulate(X, Y, W0, lr=[0.05, 0.02], depth=3, p=[2.0, 4.0], steps=15, record=[15])
    for k, (lr, p) in enumerate([(0.05, 2.0), (0.02, 4.0)]):
        W = W0[k].clone().requires_grad_()
        for _ in range(15):
            g = torch.autograd.grad(lp_loss(X @ W.mT, Y, p), W)[0]
            W = (W - lr * precondition(W.detach(), g, 3)).requires_grad_()
        torch.testing.assert_close(
            res.loss[k, -1], lp_loss(X @ W.detach().mT, Y, p), rtol=1e-10, atol=0
        )


def test_balanced_gd_follows_emulation_for_small_steps(gen):
    """Theorem 1: from balanced init the factor trajectory tracks the end-to-end rule; the gap
    is O(lr) per unit time, so halving lr roughly halves it (ratio in (1.5, 2.5))."""
    from overparam.core import balanced_factors

    X, Y = _data(gen, m=1)
    W0 = 0.2 * torch.randn(1, 5, dtype=torch.float64, generator=gen)
    factors = [W[None] for W in balanced_factors(W0, 3, widths=4)]
    gaps = []
    for lr, steps in ((0.02, 100), (0.01, 200)):
        net = train(X, Y, factors, lr=lr, p=2.0, steps=steps, record=[steps])
        emu = emulate(X, Y, W0[None], lr=lr, depth=3, p=2.0, steps=steps, record=[steps])
        gaps.append(float((net.loss[0, -1] - emu.loss[0, -1]).abs()))
    assert 1.5 < gaps[0] / gaps[1] < 2.5


def test_imbalance_and_watch_are_recorded(gen):
    X, Y = _data(gen, m=1)
    factors = _factors(gen, [5, 3, 1], K=2, scale=0.1)
    res = train(
        X,
        Y,
        factors,
        lr=0.01,
        steps=10,
        record=[0, 5, 10],
        track_imbalance=True,
        watch=lambda W: W[:, 0, :2],
    )
    assert res.imbalance is not None and res.imbalance.shape == (2, 3)
    assert float(res.imbalance[:, 0].abs().max()) == 0.0  # D(0) - D(0)
    assert res.watched is not None and res.watched.shape == (2, 3, 2)
    torch.testing.assert_close(res.watched[:, -1], end_to_end(res.factors)[:, 0, :2])


def test_validation_messages(gen):
    X, Y = _data(gen, m=1)
    W = [torch.zeros(2, 1, 5, dtype=torch.float64)]
    with pytest.raises(ValueError, match="`lr` must be a number or have K = 2 entries"):
        train(X, Y, W, lr=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="`factors\\[0\\]` must have shape"):
        train(X, Y, [torch.zeros(2, 1, 4, dtype=torch.float64)], lr=0.1)
    with pytest.raises(ValueError, match="`steps` must be an integer >= 0"):
        train(X, Y, W, lr=0.1, steps=-1)
    with pytest.raises(ValueError, match="`p` must be >= 1"):
        train(X, Y, W, lr=0.1, p=0.5)
    with pytest.raises(ValueError, match="must be the identity"):
        train(X, Y, W + [torch.zeros(2, 1, 1, dtype=torch.float64)], lr=0.1, depths=[1, 2])
    with pytest.raises(ValueError, match="`optimizer` must be one of"):
        train(X, Y, W, lr=0.1, optimizer="sgd")


def test_threads_are_validated_and_restored(gen):
    X, Y = _data(gen, m=1)
    W = [torch.zeros(2, 1, 5, dtype=torch.float64)]
    before = torch.get_num_threads()
    with pytest.raises(ValueError, match="`threads` must be None or an integer >= 0"):
        train(X, Y, W, lr=0.1, steps=2, threads=-1)
    a = train(X, Y, W, lr=0.1, steps=5, threads=None)
    b = train(X, Y, W, lr=0.1, steps=5, threads=0)
    assert torch.get_num_threads() == before
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-13, atol=0)  # same math, any thread count

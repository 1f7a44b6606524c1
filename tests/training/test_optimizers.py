"""Batched optimizers against torch.optim, one configuration at a time (independent code)."""

import pytest
import torch

from overparam.training import apply_update, init_state
from overparam.training.optimizers import (
    DEFAULTS,
    TF1_DEFAULTS,
    blocks,
    check_optimizer,
    check_settings,
)

TORCH = {
    "gd": lambda p, lr: torch.optim.SGD([p], lr=lr),
    "adagrad": lambda p, lr: torch.optim.Adagrad([p], lr=lr, eps=1e-10),
    "adadelta": lambda p, lr: torch.optim.Adadelta([p], lr=lr, rho=0.9, eps=1e-6),
    "adam": lambda p, lr: torch.optim.Adam([p], lr=lr, betas=(0.9, 0.999), eps=1e-8),
}


@pytest.mark.parametrize("name", sorted(TORCH))
def test_matches_torch_optim_per_configuration(name, gen):
    K, steps = 3, 7
    lrs = torch.tensor([0.01, 0.1, 0.5], dtype=torch.float64)
    W0 = torch.randn(K, 2, 3, dtype=torch.float64, generator=gen)
    grads = [torch.randn(K, 2, 3, dtype=torch.float64, generator=gen) for _ in range(steps)]
    params = [W0.clone()]
    state = init_state(name, params)
    hyper = check_optimizer(name)
    for g in grads:
        apply_update(name, params, [g], state, [lrs.view(K, 1, 1)], hyper)
    for k in range(K):
        p = torch.nn.Parameter(W0[k].clone())
        opt = TORCH[name](p, float(lrs[k]))
        for g in grads:
            p.grad = g[k].clone()
            opt.step()
        # same formulas in float64: agreement to a few ulps of the O(1) entries
        torch.testing.assert_close(params[0][k], p.detach(), rtol=1e-12, atol=1e-12)


def test_zero_rate_freezes_a_layer(gen):
    W = torch.randn(2, 3, 3, dtype=torch.float64, generator=gen)
    params = [W.clone()]
    state = init_state("adam", params)
    lr = torch.tensor([0.0, 0.1], dtype=torch.float64).view(2, 1, 1)
    apply_update("adam", params, [torch.ones_like(W)], state, [lr], check_optimizer("adam"))
    assert torch.equal(params[0][0], W[0])
    assert not torch.equal(params[0][1], W[1])


def test_check_optimizer_messages():
    with pytest.raises(ValueError, match="`optimizer` must be one of"):
        check_optimizer("sgd-momentum")
    with pytest.raises(ValueError, match="`hyper` keys for 'adam'"):
        check_optimizer("adam", {"rho": 0.5})
    assert check_optimizer("adadelta", {"rho": 0.95})["rho"] == 0.95


def _tf1_adam(W0, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    """tf.train.AdamOptimizer's update, written out: lr_t = lr sqrt(1-b2^t)/(1-b1^t),
    W -= lr_t m / (sqrt(v) + eps) (epsilon added before the bias correction)."""
    W, m, v = W0.clone(), torch.zeros_like(W0), torch.zeros_like(W0)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        W = W - lr * (1 - b2**t) ** 0.5 / (1 - b1**t) * m / (v.sqrt() + eps)
    return W


@pytest.mark.parametrize("name", ["adagrad", "adadelta", "adam"])
def test_tf1_defaults_match_tensorflow_formulas(name, gen):
    """TF1's AdaGrad (accumulator from 0.1, no epsilon) and AdaDelta (rho 0.95, eps 1e-8) are
    torch.optim's with those arguments; TF1's Adam is the epsilon-hat form, checked against the
    formula written out.  Tiny gradients make the epsilon placement matter."""
    K, steps, lr = 2, 6, 0.05
    W0 = torch.randn(K, 2, 3, dtype=torch.float64, generator=gen)
    grads = [1e-6 * torch.randn(K, 2, 3, dtype=torch.float64, generator=gen) for _ in range(steps)]
    hyper = check_optimizer(name, TF1_DEFAULTS[name])
    params = [W0.clone()]
    state = init_state(name, params, hyper)
    for g in grads:
        apply_update(
            name, params, [g], state, [torch.full((K, 1, 1), lr, dtype=torch.float64)], hyper
        )
    for k in range(K):
        if name == "adam":
            want = _tf1_adam(W0[k], [g[k] for g in grads], lr)
        else:
            p = torch.nn.Parameter(W0[k].clone())
            opt = (
                torch.optim.Adagrad([p], lr=lr, initial_accumulator_value=0.1, eps=0.0)
                if name == "adagrad"
                else torch.optim.Adadelta([p], lr=lr, rho=0.95, eps=1e-8)
            )
            for g in grads:
                p.grad = g[k].clone()
                opt.step()
            want = p.detach()
        torch.testing.assert_close(params[0][k], want, rtol=1e-12, atol=1e-15)
    torch_form = [W0.clone()]
    torch_state = init_state("adam", torch_form)
    for g in grads:
        apply_update(
            "adam",
            torch_form,
            [g],
            torch_state,
            [torch.full((K, 1, 1), lr, dtype=torch.float64)],
            check_optimizer("adam"),
        )
    if name == "adam":  # the two forms differ measurably on tiny gradients
        assert not torch.allclose(torch_form[0], params[0], rtol=0, atol=1e-6)


def test_hyper_values_are_checked():
    with pytest.raises(ValueError, match="must be finite and >= 0"):
        check_optimizer("adadelta", {"rho": -0.5})
    with pytest.raises(ValueError, match="needs eps > 0 or initial_accumulator > 0"):
        check_optimizer("adagrad", {"eps": 0.0})
    with pytest.raises(ValueError, match="epsilon_hat for 'adam' must be 0 or 1, got 0.5"):
        check_optimizer("adam", {"epsilon_hat": 0.5})
    assert DEFAULTS["adagrad"]["initial_accumulator"] == 0.0


def test_check_settings_and_blocks():
    settings, tags = check_settings(
        ["gd", "adam", "gd", "adam"], [None, None, None, TF1_DEFAULTS["adam"]], 4
    )
    assert [s[0] for s in settings] == ["gd", "adam", "adam"] and tags == [0, 1, 0, 2]
    assert settings[2][1]["epsilon_hat"] == 1.0 and settings[1][1]["epsilon_hat"] == 0.0
    assert blocks([0, 0, 1, 1, 0]) == [(0, 2, 0), (2, 4, 1), (4, 5, 0)]
    with pytest.raises(ValueError, match="must be one value or K = 3 values, got 2 and 3"):
        check_settings(["gd", "adam"], None, 3)

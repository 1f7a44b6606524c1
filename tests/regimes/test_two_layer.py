"""Two-layer ReLU net: closed-form gradients, NTK and linearization against autograd / FD."""

import math

import pytest
import torch
from torch.func import jacrev

from overparam.regimes import (
    linearization_gap,
    ntk_gram,
    paired_init,
    two_layer,
    two_layer_gd,
    two_layer_loss_and_grads,
)

F64 = torch.float64


def _net(gen, m=6, d=4, n=9, batch=()):
    W = torch.randn(*batch, m, d, generator=gen, dtype=F64)
    a = torch.randn(*batch, m, generator=gen, dtype=F64)
    X = torch.randn(n, d, generator=gen, dtype=F64)
    y = torch.randn(n, generator=gen, dtype=F64)
    return W, a, X, y


def test_gradients_match_autograd(gen):
    W, a, X, y = _net(gen, batch=(2,))
    loss, gW, ga = two_layer_loss_and_grads(W, a, X, y, scale=1.7)
    Wr, ar = W.clone().requires_grad_(), a.clone().requires_grad_()
    naive = 0.5 * ((torch.relu(X @ Wr.mT) @ ar.unsqueeze(-1)).squeeze(-1) / 1.7 - y).pow(2).mean(-1)
    naive.sum().backward()
    # same float64 operations in a different order: round-off only
    assert torch.allclose(loss, naive.detach(), rtol=1e-13)
    assert torch.allclose(gW, Wr.grad, atol=1e-13)
    assert torch.allclose(ga, ar.grad, atol=1e-13)


def test_linearization_jvp_matches_autograd_and_finite_differences(gen):
    W0, a0, X, _ = _net(gen)
    dW = torch.randn(W0.shape, generator=gen, dtype=F64)
    da = torch.randn(a0.shape, generator=gen, dtype=F64)
    gap = linearization_gap(W0, a0, W0 + dW, a0 + da, X, scale=2.0)
    jv = two_layer(W0 + dW, a0 + da, X, 2.0) - two_layer(W0, a0, X, 2.0) - gap
    # reverse-mode Jacobian, contracted with the tangent
    JW, Ja = jacrev(lambda w, v: two_layer(w, v, X, 2.0), argnums=(0, 1))(W0, a0)
    ref = (JW * dW).sum((-2, -1)) + Ja @ da
    assert torch.allclose(jv, ref, atol=1e-12)
    # central differences, error O(h^2) ~ 1e-10 away from ReLU kinks (|w.x| >> h here)
    h = 1e-5
    fd = (
        two_layer(W0 + h * dW, a0 + h * da, X, 2.0) - two_layer(W0 - h * dW, a0 - h * da, X, 2.0)
    ) / (2 * h)
    assert torch.allclose(jv, fd, atol=1e-8)


def test_linearization_gap_is_the_exact_bilinear_term_without_kink_flips(gen):
    W0, a0, X, _ = _net(gen)
    dW = 1e-6 * torch.randn(W0.shape, generator=gen, dtype=F64)
    da = torch.randn(a0.shape, generator=gen, dtype=F64)
    gates = (X @ W0.mT > 0).to(F64)
    assert torch.equal(gates, (X @ (W0 + dW).mT > 0).to(F64))  # no activation flips
    gap = linearization_gap(W0, a0, W0 + dW, a0 + da, X)
    # with fixed gates f is bilinear in (W, a): the remainder is da^T (gates * (X dW^T))
    exact = (gates * (X @ dW.mT)) @ da
    assert torch.allclose(gap, exact, rtol=1e-6, atol=1e-18)


def test_linearization_gap_broadcasts_a_trajectory(gen):
    W0, a0, X, _ = _net(gen)
    Ws = W0 + 0.1 * torch.randn(3, *W0.shape, generator=gen, dtype=F64)
    As = a0 + 0.1 * torch.randn(3, *a0.shape, generator=gen, dtype=F64)
    many = linearization_gap(W0, a0, Ws, As, X)
    one = torch.stack([linearization_gap(W0, a0, Ws[i], As[i], X) for i in range(3)])
    assert torch.allclose(many, one, atol=1e-14)


def test_ntk_gram_matches_jacobian(gen):
    W, a, X, _ = _net(gen)
    JW, Ja = jacrev(lambda w, v: two_layer(w, v, X, 3.0), argnums=(0, 1))(W, a)
    J = torch.cat([JW.flatten(1), Ja], 1)
    assert torch.allclose(ntk_gram(W, a, X, 3.0), J @ J.mT, atol=1e-12)


def test_paired_init_output_is_zero_and_ntk_scales_as_alpha_squared(gen):
    W, a = paired_init(8, 5, gen)
    X = torch.randn(7, 5, generator=gen, dtype=F64)
    # zero in exact arithmetic; in floating point each output is a sum of +-pairs whose rounding
    # is bounded by a few eps times the sum of the magnitudes of its terms
    out = two_layer(3.0 * W, 3.0 * a, X)
    terms = two_layer(3.0 * W, 3.0 * a.abs(), X)  # the same sum with every term made positive
    assert torch.all(out.abs() <= 8 * torch.finfo(F64).eps * terms)
    # 2-homogeneity: K(alpha theta) = alpha^2 K(theta)
    assert torch.allclose(ntk_gram(3.0 * W, 3.0 * a, X), 9.0 * ntk_gram(W, a, X), rtol=1e-12)
    with pytest.raises(ValueError, match="`m` must be an even integer >= 2, got 7"):
        paired_init(7, 5, gen)


def test_gd_one_step_and_batched_lr(gen):
    W, a, X, y = _net(gen, batch=(2,))
    lr = torch.tensor([0.05, 0.2], dtype=F64)
    out = two_layer_gd(W, a, X, y, lr, steps=1, record=[0, 1])
    _, gW, ga = two_layer_loss_and_grads(W, a, X, y)
    assert torch.allclose(out["W"][1], W - lr[:, None, None] * gW, atol=1e-15)
    assert torch.allclose(out["a"][1], a - lr[:, None] * ga, atol=1e-15)
    single = two_layer_gd(W[1], a[1], X, y, 0.2, steps=30)
    batched = two_layer_gd(W, a, X, y, lr, steps=30)
    assert torch.allclose(batched["W"][-1, 1], single["W"][-1], atol=1e-13)
    assert float(batched["loss"][-1, 1]) < float(batched["loss"][0, 1])


def test_bad_arguments(gen):
    W, a, X, y = _net(gen)
    with pytest.raises(ValueError, match="`a` must have 6 entries"):
        two_layer(W, a[:-1], X)
    with pytest.raises(ValueError, match="`X` must have 4 columns"):
        two_layer(W, a, X[:, :-1])
    with pytest.raises(ValueError, match="`scale` must be > 0, got 0"):
        two_layer(W, a, X, scale=0.0)
    with pytest.raises(ValueError, match="`lr` must be finite and > 0"):
        two_layer_gd(W, a, X, y, -1.0, steps=3)
    with pytest.raises(ValueError, match="`lr` must be a number or broadcast"):
        two_layer_gd(W, a, X, y, torch.ones(3, dtype=F64), steps=3)
    with pytest.raises(ValueError, match="must broadcast with `W0`, `a0`"):
        linearization_gap(W, a, torch.zeros(2, 5, 4, dtype=F64), torch.zeros(2, 5, dtype=F64), X)
    assert math.isfinite(float(two_layer_loss_and_grads(W, a, X, y)[0]))

"""Batched two-layer GD and its checkers: X4 to rounding, drift orders, bounds below eta_max."""

import math

import pytest
import torch

from overparam.theory import (
    SCHEMES,
    InitConstants,
    LeastSquares,
    check_bounds,
    eta_max,
    fit_slope,
    imbalance_slopes,
    init_layer,
    plain_gd,
    two_layer_gd,
)

F = torch.float64


def _setup(gen, S=6, n=20, d=4, h=6, m=3, noise=0.05):
    X = torch.randn(S, n, d, generator=gen, dtype=F) / n**0.5
    W1 = 0.7 * torch.randn(S, d, h, generator=gen, dtype=F)
    W2 = 0.7 * torch.randn(S, h, m, generator=gen, dtype=F)
    Y = X @ (W1 @ W2) + noise * torch.randn(S, n, m, generator=gen, dtype=F)
    return LeastSquares.from_data(X, Y), W1, W2


def test_gd_matches_an_autograd_loop_and_the_imbalance_step_closed_form(gen):
    prob, W1, W2 = _setup(gen, S=2)
    eta = 0.05
    tr = two_layer_gd(prob, W1, W2, 10, eta)
    A, B = W1.clone().requires_grad_(), W2.clone().requires_grad_()
    for _ in range(10):
        gA, gB = torch.autograd.grad(prob.loss(A @ B).sum(), (A, B))
        with torch.no_grad():
            A, B = (A - eta * gA).requires_grad_(), (B - eta * gB).requires_grad_()
    assert torch.allclose(tr["loss"][-1], prob.loss(A @ B).detach(), rtol=1e-12)
    # D(t+1) - D(t) = eta^2 (W2 g^T g W2^T - W1^T g g^T W1), exactly (eq. 12 made explicit)
    g = prob.grad(W1 @ W2)
    dD = eta**2 * (W2 @ g.mT @ g @ W2.mT - W1.mT @ g @ g.mT @ W1)
    assert torch.allclose(tr["D_step"][0], torch.linalg.matrix_norm(dD), rtol=1e-9)
    assert float(tr["product_residual"].max()) < 1e-13  # X4 to rounding


def test_bounds_hold_below_eta_max(gen):
    prob, W1, W2 = _setup(gen)
    tr0 = two_layer_gd(prob, W1, W2, 0, 1.0)
    const = InitConstants(
        tr0["const_alpha0"],
        tr0["const_beta0"],
        tr0["const_p1"],
        tr0["const_p2"],
        tr0["const_L0"],
        prob.K,
        prob.mu,
    )
    e = eta_max(const, 0.5, 2.0)[0]
    tr = two_layer_gd(prob, W1, W2, 300, e)
    chk = check_bounds(tr, prob, e, 0.5, 2.0)
    for key in ("descent", "spectral", "linear"):
        assert bool(chk[key].all()), key
    assert bool(chk["cond18"].all())  # below eta_max condition (18) holds: the lemma applies
    assert bool((tr["loss"][-1] < tr["loss"][0]).all())


def test_descent_checker_detects_violations_with_a_large_step(gen):
    prob, W1, W2 = _setup(gen, S=1)
    big = 4.0 / (prob.K * two_layer_gd(prob, W1, W2, 0, 1.0)["lam_max"][0])  # diverges
    tr = two_layer_gd(prob, W1, W2, 6, big)
    chk = check_bounds(tr, prob, big, 0.5, 2.0)
    assert float(tr["loss"][-1, 0]) > float(tr["loss"][0, 0])  # it does diverge
    assert not bool(chk["cond18"].all())  # ... and condition (18) flags the steps
    assert float(chk["f0"][0]) >= 1  # the theorem's rate gives no contraction at this step


def test_plain_gd_closed_form_for_identity_data(gen):
    S, d = 3, 5
    X = torch.eye(d, dtype=F).expand(S, d, d)
    prob = LeastSquares.from_data(X, torch.randn(S, d, 1, generator=gen, dtype=F))
    W = torch.zeros(S, d, 1, dtype=F)
    eta = 0.3
    L = plain_gd(prob, W, 8, eta)
    t = torch.arange(9, dtype=F)[:, None]
    assert torch.allclose(L, (1 - eta) ** (2 * t) * L[0], rtol=1e-12)  # exact contraction


def test_imbalance_drift_orders(gen):
    prob, W1, W2 = _setup(gen, S=2, noise=0.5)
    out = imbalance_slopes(prob, W1, W2, [0.01, 0.02, 0.04], horizon=30.0)
    assert abs(out["slope_first_step"] - 2) < 1e-6  # exact eta^2 (closed form above)
    assert abs(out["slope_total"] - 1) < 0.15  # O(eta): fitted over a factor of 4 in eta
    # mean per-step change over a fixed time horizon: eta^2 times a trajectory average that
    # itself moves by O(eta); 0.15 allows that first-order correction over a factor 4 in eta
    assert abs(out["slope_per_step"] - 2) < 0.15


def test_fit_slope_recovers_a_power_law():
    x = [1.0, 2.0, 4.0, 8.0]
    assert math.isclose(fit_slope(x, [3 * v**1.5 for v in x]), 1.5, rel_tol=1e-12)


def test_init_schemes_have_the_documented_variances(gen):
    expected = {"normal": 1.0, "ntk": 1 / 50, "xavier": 2 / 90, "he": 2 / 50, "uniform": 1 / 150}
    for scheme in SCHEMES:
        W = init_layer(scheme, 40, 50, 40, gen)
        # 80000 samples: relative standard error of the variance ~ sqrt(2/80000) = 0.5%; 3% bound
        assert abs(float(W.var()) / expected[scheme] - 1) < 0.03, scheme


def test_validation(gen):
    prob, W1, W2 = _setup(gen, S=1)
    with pytest.raises(ValueError, match="`eta` must be a positive number or one of"):
        two_layer_gd(prob, W1, W2, 3, "adam")
    with pytest.raises(ValueError, match="`eta` must be > 0"):
        two_layer_gd(prob, W1, W2, 3, -0.1)
    with pytest.raises(ValueError, match="`steps` must contain integers >= 0"):
        two_layer_gd(prob, W1, W2, -1, 0.1)
    with pytest.raises(ValueError, match="`etas` must hold at least 2"):
        imbalance_slopes(prob, W1, W2, [0.1], 1.0)
    with pytest.raises(ValueError, match="`horizon` must be > 0"):
        imbalance_slopes(prob, W1, W2, [0.1, 0.2], 0.0)
    with pytest.raises(ValueError, match="`scheme` must be one of"):
        init_layer("lecun", 1, 2, 2, gen)

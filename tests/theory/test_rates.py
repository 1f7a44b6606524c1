"""rho (eq. 20), condition (18), the plain rate (eq. 15), f and its coefficients (eq. 26), eta_max (24)."""

import numpy as np
import pytest
import torch

from overparam.theory import (
    InitConstants,
    LeastSquares,
    condition_18,
    eta_max,
    f_coefficients,
    f_rate,
    measured_quantities,
    minimize_quartic,
    plain_rate,
    positive_root,
    quartic,
    rho,
    rho_coefficients,
    scalar_rate_lower_bound,
)

F = torch.float64


def _problem(gen, batch=64, n=12, d=3, h=5, m=2, scale=0.3):
    X = torch.randn(batch, n, d, generator=gen, dtype=F)
    W1 = scale * torch.randn(batch, d, h, generator=gen, dtype=F)
    W2 = scale * torch.randn(batch, h, m, generator=gen, dtype=F)
    Y = X @ (W1 @ W2) + 0.3 * torch.randn(batch, n, m, generator=gen, dtype=F)
    return LeastSquares.from_data(X, Y), W1, W2


def test_descent_lemma_on_random_states_and_steps(gen):
    # Independent check: the next loss computed by an explicit GD step on the factors.
    prob, W1, W2 = _problem(gen)
    q = measured_quantities(prob, W1, W2)
    held = 0
    for eta in np.geomspace(1e-4, 1e-1, 12):
        g = q["grad"]
        L1 = prob.loss((W1 - eta * g @ W2.mT) @ (W2 - eta * W1.mT @ g))
        cond = condition_18(eta, q["lam_min"], q["lam_max"], q["s_max"], q["grad_norm"], prob.K)
        r = rho(eta, q["lam_min"], q["lam_max"], q["s_max"], q["grad_norm"], prob.K, prob.mu)
        # rounding of L1 is ~1e-15 relative; 1e-12 relative slack cannot hide a real violation
        assert bool((L1[cond] <= r[cond] * q["loss"][cond] * (1 + 1e-12)).all())
        held += int(cond.sum())
    assert held > 50  # the check is not vacuous


def test_frobenius_condition_implies_spectral_condition(gen):
    prob, W1, W2 = _problem(gen)
    q = measured_quantities(prob, W1, W2)
    for eta in (1e-3, 1e-2, 5e-2):
        fro = condition_18(eta, q["lam_min"], q["lam_max"], q["w_fro"], q["grad_norm"], prob.K)
        spec = condition_18(eta, q["lam_min"], q["lam_max"], q["s_max"], q["grad_norm"], prob.K)
        assert bool((spec | ~fro).all())


def test_plain_rate_bounds_one_step_and_is_tight_for_identity(gen):
    X = torch.randn(20, 4, generator=gen, dtype=F)
    prob = LeastSquares.from_data(X, torch.randn(20, 2, generator=gen, dtype=F))
    W = torch.randn(4, 2, generator=gen, dtype=F)
    for eta in (0.2 / prob.K, 1 / prob.K, 1.9 / prob.K):
        L1 = prob.loss(W - eta * prob.grad(W))
        assert L1 <= plain_rate(eta, prob.K, prob.mu) * prob.loss(W) * (1 + 1e-12)
    # X = I: every direction contracts by exactly (1 - eta)^2 = 1 - 2 eta + eta^2
    eta = 0.3
    assert torch.allclose(plain_rate(eta, 1.0, 1.0), torch.tensor((1 - eta) ** 2, dtype=F))
    assert torch.allclose(plain_rate(1.0, 3.0, 2.0), torch.tensor(1 - 4 + 6.0, dtype=F))


def test_positive_root_and_quartic_minimiser_against_numpy(gen):
    c = torch.rand(4, 10, generator=gen, dtype=F) + 0.01
    root = positive_root(c[0], c[1], c[2], c[3])
    for i in range(10):
        r = np.roots([c[2, i], c[1, i], c[0, i], -c[3, i]])
        real = r[(abs(r.imag) < 1e-9) & (r.real > 0)].real
        assert len(real) == 1 and abs(real[0] - float(root[i])) < 1e-12
    b = tuple(c[i] for i in range(4))
    eta = minimize_quartic(b)
    grid = torch.linspace(0, 3, 300001, dtype=F)[:, None]
    best = grid[quartic(grid, b).argmin(0), 0]
    assert torch.allclose(eta, best, atol=2e-5)  # grid spacing 1e-5


def test_positive_root_when_the_cubic_term_dominates():
    # rhs / c1 = 1e8 but the root is ~1e-2: the start of the iteration must not matter
    one = torch.ones(3, dtype=F)
    c3 = torch.tensor([1e6, 1.0, 0.0], dtype=F)
    c2 = torch.tensor([0.0, 1e4, 0.0], dtype=F)
    root = positive_root(1e-8 * one, c2, c3, one)
    for i in range(3):
        r = np.roots([float(c3[i]), float(c2[i]), 1e-8, -1.0])
        real = r[(abs(r.imag) < 1e-9 * abs(r)) & (r.real > 0)].real
        assert len(real) == 1 and abs(real[0] - float(root[i])) <= 1e-12 * real[0]
    assert float(positive_root(one[0], 0 * one[0], 0 * one[0], 0 * one[0])) == 0.0


def test_descent_lemma_along_a_trajectory_with_independent_quantities(gen):
    # A fixed step 0.15 / (K lmax(tau_0)) (above eta_max); at each step the lemma is checked where condition (18)
    # (literal Frobenius form) holds, with lambda(tau) from the dense Kronecker matrix,
    # sigma_max from numpy's SVD and rho written out from eq. (20).
    X = torch.randn(30, 3, generator=gen, dtype=F) / 30**0.5
    W1, W2 = (
        0.6 * torch.randn(3, 5, generator=gen, dtype=F),
        0.6 * torch.randn(5, 2, generator=gen, dtype=F),
    )
    Y = X @ torch.randn(3, 2, generator=gen, dtype=F)
    prob = LeastSquares.from_data(X, Y)
    K, mu = float(prob.K), float(prob.mu)
    lam0 = float(torch.linalg.eigvalsh(W1 @ W1.T)[-1] + torch.linalg.eigvalsh(W2.T @ W2)[-1])
    eta = 0.15 / (K * lam0)
    checked = 0
    for _ in range(60):
        W = W1 @ W2
        g = prob.grad(W)
        M = np.kron((W2.T @ W2).numpy(), np.eye(3)) + np.kron(np.eye(2), (W1 @ W1.T).numpy())
        ev = np.linalg.eigvalsh(M)
        lmin, lmax = ev[0], ev[-1]
        s, gn, wf = np.linalg.norm(W.numpy(), 2), float(g.norm()), float(W.norm())
        L0 = float(prob.loss(W))
        W1, W2 = W1 - eta * g @ W2.T, W2 - eta * W1.T @ g
        L1 = float(prob.loss(W1 @ W2))
        cond = lmin - eta * gn * wf - K * eta / 2 * (lmax + eta * gn * wf) ** 2 >= 0
        r = (
            1
            - 2 * eta * mu * lmin
            + K * mu * eta**2 * lmax**2
            + 2 * eta**2 * mu * s * gn
            + 2 * eta**3 * mu * K * lmax * s * gn
            + eta**4 * mu * K * s**2 * gn**2
        )
        if cond:
            assert L1 <= r * L0 * (1 + 1e-12)  # 1e-12: rounding of the losses only
            checked += 1
    assert checked >= 30  # the lemma was actually exercised along the trajectory


def test_f_coefficients_are_rho_with_the_bounds_substituted(gen):
    prob, W1, W2 = _problem(gen, batch=4)
    q = measured_quantities(prob, W1, W2)
    const = InitConstants.from_init(
        q["lam_min"], q["lam_max"], prob.W_ls, q["loss"], prob.K, prob.mu
    )
    c1, c2 = 0.4, 3.0
    a = f_coefficients(const, q["loss"], c1, c2)
    r = rho_coefficients(
        c1 * const.alpha0,
        c2 * const.beta0,
        const.p2,
        torch.sqrt(2 * prob.K * q["loss"]),
        prob.K,
        prob.mu,
    )
    for x, y in zip(a, r, strict=True):
        assert torch.allclose(x, y, rtol=1e-12)
    # ||g||_F <= sqrt(2 K L) and p1 <= sigma(W(0)) <= p2 (the bounds f uses)
    assert bool((q["grad_norm"] <= torch.sqrt(2 * prob.K * q["loss"]) * (1 + 1e-12)).all())
    assert bool((const.p1 <= q["s_min"]).all() and (q["s_max"] <= const.p2).all())


def test_eta_max_solves_polynomials_24_and_gives_contraction(gen):
    prob, W1, W2 = _problem(gen, batch=5)
    q = measured_quantities(prob, W1, W2)
    const = InitConstants.from_init(
        q["lam_min"], q["lam_max"], prob.W_ls, q["loss"], prob.K, prob.mu
    )
    c1, c2 = 0.5, 2.0
    e, e1, e2 = eta_max(const, c1, c2)
    a1, a2, a3, a4 = f_coefficients(const, const.L0, c1, c2)
    lin1 = a2 + 4 * c2 * const.L0 * prob.K / (c2 - 1)
    lin2 = a2 + 8 * c2 * const.beta0 * const.L0 * prob.K / ((1 - c1) * const.alpha0)
    assert torch.allclose(a4 * e1**3 + a3 * e1**2 + lin1 * e1, a1, rtol=1e-10)
    assert torch.allclose(a4 * e2**3 + a3 * e2**2 + lin2 * e2, a1, rtol=1e-10)
    assert torch.equal(e, torch.minimum(e1, e2))
    f0 = f_rate(e, const, const.L0, c1, c2)
    assert bool(((f0 > 0) & (f0 < 1)).all())  # eq. (27)


def test_scalar_bound_is_exact_at_t0_when_y_minus_residual_equals_product():
    w1, w2, y = (torch.tensor(v, dtype=F) for v in (2.0, 0.25, 1.0))
    # w1 w2 = 0.5, |y| - |y - w1 w2| = 0.5: bound = sqrt((4 - 1/16)^2 + 1) = w1^2 + w2^2
    assert torch.allclose(scalar_rate_lower_bound(w1, w2, y), w1**2 + w2**2)


def test_validation():
    one = torch.ones(1, dtype=F)
    const = InitConstants(one, one, one, one, one, one, one)
    with pytest.raises(ValueError, match="0 < c1 < 1 < c2"):
        f_coefficients(const, one, 1.5, 2.0)
    with pytest.raises(ValueError, match="`c2` must be > 0"):
        f_coefficients(const, one, 0.5, -1.0)
    with pytest.raises(ValueError, match="alpha0` must be > 0"):
        eta_max(InitConstants(0 * one, one, one, one, one, one, one), 0.5, 2.0)
    with pytest.raises(ValueError, match="`c1` must be > 0"):
        positive_root(0 * one, one, one, one)

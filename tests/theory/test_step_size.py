"""The adaptive step eta_t = argmin f(eta, t) and its torch scheduler form."""

import pytest
import torch

from overparam.theory import (
    AdaptiveStepLR,
    InitConstants,
    LeastSquares,
    adaptive_step,
    adaptive_step_rho,
    f_rate,
    measured_quantities,
    rho,
    two_layer_gd,
)

F = torch.float64


def _setup(gen, n=15, d=3, h=4, m=2):
    X = torch.randn(n, d, generator=gen, dtype=F)
    W1 = 0.5 * torch.randn(d, h, generator=gen, dtype=F)
    W2 = 0.5 * torch.randn(h, m, generator=gen, dtype=F)
    Y = X @ (W1 @ W2) + 0.1 * torch.randn(n, m, generator=gen, dtype=F)
    return LeastSquares.from_data(X, Y), W1, W2


def test_adaptive_steps_minimise_their_bounds_on_a_grid(gen):
    prob, W1, W2 = _setup(gen)
    q = measured_quantities(prob, W1, W2)
    const = InitConstants.from_init(
        q["lam_min"], q["lam_max"], prob.W_ls, q["loss"], prob.K, prob.mu
    )
    eta = adaptive_step(const, q["loss"], 0.5, 2.0)
    grid = torch.linspace(1e-6, 4 * float(eta), 40001, dtype=F)
    best = grid[f_rate(grid, const, q["loss"], 0.5, 2.0).argmin()]
    assert abs(float(eta - best)) <= 2 * float(grid[1] - grid[0])  # within the grid spacing
    assert float(adaptive_step(const, q["loss"], 0.5, 2.0, cap=0.5 * eta)) == 0.5 * float(eta)
    eta_r = adaptive_step_rho(
        q["lam_min"], q["lam_max"], q["s_max"], q["grad_norm"], prob.K, prob.mu
    )
    grid = torch.linspace(1e-6, 4 * float(eta_r), 40001, dtype=F)
    r = rho(grid, q["lam_min"], q["lam_max"], q["s_max"], q["grad_norm"], prob.K, prob.mu)
    assert abs(float(eta_r - grid[r.argmin()])) <= 2 * float(grid[1] - grid[0])


def test_adaptive_step_tends_to_the_quadratic_limit_as_loss_vanishes(gen):
    prob, W1, W2 = _setup(gen)
    q = measured_quantities(prob, W1, W2)
    const = InitConstants.from_init(
        q["lam_min"], q["lam_max"], prob.W_ls, q["loss"], prob.K, prob.mu
    )
    c1, c2 = 0.5, 2.0
    limit = c1 * const.alpha0 / (prob.K * (c2 * const.beta0) ** 2)  # a1 / (2 a2(inf)), eq. (32)
    small = adaptive_step(const, torch.tensor(1e-30, dtype=F), c1, c2)
    assert torch.allclose(small, limit, rtol=1e-10)
    assert float(adaptive_step(const, q["loss"], c1, c2)) < float(limit)  # grows as L -> 0


@pytest.mark.parametrize("rule", ["f", "rho"])
def test_batched_adaptive_trajectory_equals_per_seed_runs(gen, rule):
    # The functional step inside the batched engine (leading seed dim) against one run per seed.
    S, n, d, h, m = 3, 15, 3, 4, 2
    X = torch.randn(S, n, d, generator=gen, dtype=F)
    W1 = 0.5 * torch.randn(S, d, h, generator=gen, dtype=F)
    W2 = 0.5 * torch.randn(S, h, m, generator=gen, dtype=F)
    prob = LeastSquares.from_data(
        X, X @ (W1 @ W2) + 0.1 * torch.randn(S, n, m, generator=gen, dtype=F)
    )
    batched = two_layer_gd(prob, W1, W2, 12, rule, 0.5, 2.0, diagnostics=False)
    assert batched["eta"].shape == (12, S)
    for i in range(S):
        one = LeastSquares(prob.H[i], prob.W_ls[i], prob.K[i], prob.mu[i], prob.L_star[i])
        ref = two_layer_gd(one, W1[i], W2[i], 12, rule, 0.5, 2.0, diagnostics=False)
        # same float64 operations on a slice: agreement to rounding
        assert torch.allclose(batched["eta"][:, i], ref["eta"], rtol=1e-10)
        assert torch.allclose(batched["loss"][:, i], ref["loss"], rtol=1e-9)


@pytest.mark.parametrize("rule", ["f", "rho"])
def test_scheduler_with_sgd_reproduces_the_batched_trajectory(gen, rule):
    prob, W1, W2 = _setup(gen)
    ref = two_layer_gd(prob, W1, W2, 15, rule, 0.5, 2.0, diagnostics=False)
    P1, P2 = W1.clone().requires_grad_(), W2.clone().requires_grad_()
    opt = torch.optim.SGD([P1, P2], lr=0.0)
    sched = AdaptiveStepLR(opt, prob, c1=0.5, c2=2.0, rule=rule)
    for t in range(15):
        assert abs(opt.param_groups[0]["lr"] - float(ref["eta"][t])) <= 1e-12 * float(ref["eta"][t])
        opt.zero_grad()
        W = P1 @ P2
        (prob.loss(W)).backward()  # gradient of the excess loss = gradient of L
        opt.step()
        sched.step()
    with torch.no_grad():
        # 15 steps of the same float64 arithmetic in a different order: 1e-10 relative
        assert torch.allclose(prob.loss(P1 @ P2), ref["loss"][-1], rtol=1e-10)


def test_scheduler_validation(gen):
    prob, W1, W2 = _setup(gen)
    opt = torch.optim.SGD([W1.clone().requires_grad_(), W2.clone().requires_grad_()], lr=0.0)
    with pytest.raises(ValueError, match="`rule` must be 'f' or 'rho'"):
        AdaptiveStepLR(opt, prob, rule="x")
    with pytest.raises(ValueError, match="0 < c1 < 1 < c2"):
        AdaptiveStepLR(opt, prob, c1=2.0, c2=3.0)
    bad = torch.optim.SGD([W1.clone().requires_grad_()], lr=0.0)
    with pytest.raises(ValueError, match=r"`optimizer` must hold \[W1"):
        AdaptiveStepLR(bad, prob)

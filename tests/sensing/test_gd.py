"""Factorized sensing GD: gradients vs autograd, recovery of a planted instance, S5 lemma."""

import pytest
import torch

from overparam.sensing import (
    GaussianSensing,
    balancing_bound,
    planted_low_rank,
    sensing_gd,
    sensing_loss_and_grads,
)

F64 = torch.float64


def _autograd(op, y, U, V, w):
    U = U.clone().requires_grad_(True)
    V = None if V is None else V.clone().requires_grad_(True)
    M = U @ (U if V is None else V).mT
    r = op.apply(M) - y
    loss = (w * r * r).sum() * (0.25 if V is None else 0.5)
    grads = torch.autograd.grad(loss, [U] if V is None else [U, V])
    return loss.detach(), grads


@pytest.mark.parametrize("symmetric", [False, True])
def test_gradients_match_autograd(gen, symmetric):
    d2 = 6 if symmetric else 5
    op = GaussianSensing(80, 6, d2, seed=2)
    y = torch.randn(80, generator=gen, dtype=F64)
    w = torch.rand(80, generator=gen, dtype=F64)
    U = torch.randn(6, 3, generator=gen, dtype=F64)
    V = None if symmetric else torch.randn(d2, 3, generator=gen, dtype=F64)
    loss, gU, gV = sensing_loss_and_grads(op, y, U, V, weights=w)
    ref_loss, ref = _autograd(op, y, U, V, w)
    # same float64 arithmetic in a different order: 1e-12 relative
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gU, ref[0], rtol=1e-11, atol=1e-12)
    if not symmetric:
        torch.testing.assert_close(gV, ref[1], rtol=1e-11, atol=1e-12)


def test_gd_step_and_batch_consistency(gen):
    op = GaussianSensing(60, 5, 4, seed=0)
    y = torch.randn(60, generator=gen, dtype=F64)
    U0 = 0.1 * torch.randn(3, 5, 2, generator=gen, dtype=F64)
    V0 = 0.1 * torch.randn(3, 4, 2, generator=gen, dtype=F64)
    out = sensing_gd(op, y, U0, V0, mu=0.05, steps=2, record=[1])
    _, gU, gV = sensing_loss_and_grads(op, y, U0, V0)
    torch.testing.assert_close(out["U_rec"][0], U0 - 0.05 * gU, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(out["V_rec"][0], V0 - 0.05 * gV, rtol=1e-13, atol=1e-14)
    single = sensing_gd(op, y, U0[1], V0[1], mu=0.05, steps=2)
    torch.testing.assert_close(single["U"], out["U"][1], rtol=1e-12, atol=1e-14)


def test_recovers_planted_instance():
    """Held-out style check: small-init GD with r = r* solves a fresh instance to 1e-8."""
    g = torch.Generator().manual_seed(11)
    op = GaussianSensing(400, 12, 10, seed=11)
    X, Y = planted_low_rank(12, 10, 2, g)
    truth = X @ Y.T
    U0 = 1e-4 * torch.randn(12, 2, generator=g, dtype=F64)
    V0 = 1e-4 * torch.randn(10, 2, generator=g, dtype=F64)
    out = sensing_gd(op, op.apply(truth), U0, V0, mu=0.5, steps=600, truth=truth)
    # n = 400 >> dof = 40: local linear convergence; 1e-8 is reached well before 600 steps
    assert out["rel_error"][-1] < 1e-8
    assert out["rel_error"][0] > 0.99  # started from ~0, the error really went down


def test_symmetric_recovery():
    g = torch.Generator().manual_seed(5)
    op = GaussianSensing(500, 10, 10, seed=5)
    X, _ = planted_low_rank(10, 10, 2, g, symmetric=True)
    U0 = 1e-5 * torch.randn(10, 4, generator=g, dtype=F64)  # r = 4 > r* = 2
    out = sensing_gd(op, op.apply(X @ X.T), U0, None, mu=0.5, steps=800, truth=X @ X.T)
    # overparameterized: error limited by the small-init residual, ~1e-5 here; 1e-3 is loose
    assert out["rel_error"][-1] < 1e-3
    assert torch.all(out["imbalance"] == 0)


def test_balancing_lemma_along_trajectory(gen):
    """S5 recomputed independently: ||B_t||_F from the recorded factors, bound from the losses."""
    op = GaussianSensing(120, 8, 6, seed=4)
    X, Y = planted_low_rank(8, 6, 2, gen)
    y = op.apply(X @ Y.T)
    U0 = 0.3 * torch.randn(8, 4, generator=gen, dtype=F64)  # large imbalance at init
    V0 = 0.01 * torch.randn(6, 4, generator=gen, dtype=F64)
    mu, steps = 0.3, 300
    out = sensing_gd(op, y, U0, V0, mu, steps, record=range(steps + 1))
    B = out["U_rec"].mT @ out["U_rec"] - out["V_rec"].mT @ out["V_rec"]
    norms = torch.linalg.matrix_norm(B)
    torch.testing.assert_close(norms, out["imbalance"], rtol=1e-12, atol=1e-15)
    bound = norms[0] + 2 * mu * (out["loss"][0] - out["loss"])
    assert torch.all(norms <= bound * (1 + 1e-12))
    # per-step form: ||B_{t+1} - B_t||_F <= mu^2 ||grad||^2 (the slide's 'final step')
    step = torch.linalg.matrix_norm(B[1:] - B[:-1])
    # B_t is recomputed from the recorded factors: each Gram matrix is rounded at eps times its
    # norm, so the difference of two consecutive B's carries that much rounding on top of the bound
    grams = torch.linalg.matrix_norm(out["U_rec"].mT @ out["U_rec"]) + torch.linalg.matrix_norm(
        out["V_rec"].mT @ out["V_rec"]
    )
    rounding = 16 * torch.finfo(F64).eps * grams[1:].max()
    assert torch.all(step <= mu**2 * out["grad_sq"] * (1 + 1e-9) + rounding)
    res = balancing_bound(out["imbalance"], out["loss"], mu)
    assert bool(res["holds"].all()) and float(res["max_ratio"]) <= 1.0


def test_balancing_bound_detects_violation():
    imb = torch.tensor([1.0, 1.0, 2.0], dtype=F64)
    loss = torch.tensor([1.0, 0.9, 0.8], dtype=F64)
    res = balancing_bound(imb, loss, mu=0.5)
    torch.testing.assert_close(res["bound"], torch.tensor([1.0, 1.1, 1.2], dtype=F64))
    assert res["holds"].tolist() == [True, True, False]
    assert float(res["max_ratio"]) == pytest.approx(2.0 / 1.2)


def test_gd_validation(gen):
    op = GaussianSensing(10, 4, 3)
    y = torch.zeros(10, dtype=F64)
    U0, V0 = torch.zeros(4, 2, dtype=F64), torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="`mu` must be > 0, got -1"):
        sensing_gd(op, y, U0, V0, -1.0, 3)
    with pytest.raises(ValueError, match="`steps` must be an integer >= 0, got 1.5"):
        sensing_gd(op, y, U0, V0, 0.1, 1.5)
    with pytest.raises(ValueError, match=r"`U0` must have 4 rows \(d1\)"):
        sensing_gd(op, y, V0, V0, 0.1, 3)
    with pytest.raises(ValueError, match="the symmetric model needs d1 == d2"):
        sensing_gd(op, y, U0, None, 0.1, 3)
    with pytest.raises(ValueError, match=r"`V0` must have shape \(..., 3, 2\)"):
        sensing_gd(op, y, U0, U0, 0.1, 3)
    with pytest.raises(ValueError, match=r"`record` must lie in \[0, 3\]"):
        sensing_gd(op, y, U0, V0, 0.1, 3, record=[5])
    with pytest.raises(ValueError, match="`loss` must have the shape of `imbalance`"):
        balancing_bound(torch.zeros(3, dtype=F64), torch.zeros(2, dtype=F64), 0.1)

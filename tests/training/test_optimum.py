"""L* of l_p regression: Newton with line search against closed forms and scipy (float64)."""

import numpy as np
import pytest
import scipy.optimize
import torch

from overparam.core import lp_loss
from overparam.training import lp_optimum


def test_p2_is_the_normal_equations_solution(gen):
    X = torch.randn(30, 4, dtype=torch.float64, generator=gen)
    Y = torch.randn(30, 2, dtype=torch.float64, generator=gen)
    W, L = lp_optimum(X, Y, 2.0)
    want = torch.linalg.solve(X.mT @ X, X.mT @ Y).mT  # independent: normal equations
    torch.testing.assert_close(W, want, rtol=1e-10, atol=1e-12)
    assert L == pytest.approx(float(lp_loss(X @ want.mT, Y, 2.0)), rel=1e-12)


def test_p4_one_feature_is_the_real_root_of_the_cubic(gen):
    """d = 1: dL/dw = sum_i x_i (x_i w - y_i)^3 = 0 is a cubic in w with one real root
    (L is strictly convex); its coefficients are expanded by hand and solved by numpy."""
    x = torch.randn(25, dtype=torch.float64, generator=gen)
    y = 2.0 * x + torch.randn(25, dtype=torch.float64, generator=gen)
    xs, ys = x.numpy(), y.numpy()
    coeffs = [
        np.sum(xs**4),
        -3 * np.sum(xs**3 * ys),
        3 * np.sum(xs**2 * ys**2),
        -np.sum(xs * ys**3),
    ]
    roots = np.roots(coeffs)
    real = roots[np.abs(roots.imag) < 1e-9].real
    assert real.size == 1
    W, L = lp_optimum(x[:, None], y, 4.0)
    assert float(W[0, 0]) == pytest.approx(float(real[0]), rel=1e-10)
    assert L == pytest.approx(float(np.mean((xs * real[0] - ys) ** 4) / 4), rel=1e-12)


@pytest.mark.parametrize("p", [3.0, 4.0, 6.0])
def test_newton_beats_or_matches_scipy_and_has_zero_gradient(gen, p):
    X = torch.randn(60, 5, dtype=torch.float64, generator=gen)
    Y = X @ torch.randn(5, 1, dtype=torch.float64, generator=gen)
    Y = Y + 0.5 * torch.randn(60, 1, dtype=torch.float64, generator=gen)
    W, L = lp_optimum(X, Y, p)
    Xn, yn = X.numpy(), Y[:, 0].numpy()

    def f(w):
        r = Xn @ w - yn
        return np.mean(np.abs(r) ** p) / p, Xn.T @ (np.sign(r) * np.abs(r) ** (p - 1)) / len(r)

    ref = scipy.optimize.minimize(f, np.zeros(5), jac=True, method="BFGS", options={"gtol": 1e-12})
    # Newton stops on a decrement of 1e-20 L: its L* can only be below BFGS's (up to rounding)
    assert L <= ref.fun * (1 + 1e-12)
    assert L == pytest.approx(ref.fun, rel=1e-8)
    grad = X.mT @ (torch.sign(X @ W.mT - Y) * (X @ W.mT - Y).abs() ** (p - 1)) / 60
    assert float(grad.abs().max()) < 1e-12  # stationary to rounding of O(1) sums


def test_validation_messages(gen):
    X = torch.randn(10, 3, dtype=torch.float64, generator=gen)
    with pytest.raises(ValueError, match="`p` must be a finite real number > 1, got 1.0"):
        lp_optimum(X, X[:, 0], 1.0)
    with pytest.raises(ValueError, match="`p` must be a finite real number > 1, got inf"):
        lp_optimum(X, X[:, 0], float("inf"))
    with pytest.raises(ValueError, match="with the same b"):
        lp_optimum(X, torch.zeros(9, dtype=torch.float64), 4.0)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("p", [3.0, 4.0])
def test_exact_fit_gives_zero_and_the_generating_matrix(seed, p):
    """Noise-free targets Y = X W_true^T (the README's problem): L* = 0 exactly, W* = W_true."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(200, 10, generator=g, dtype=torch.float64)
    W_true = torch.randn(2, 10, generator=g, dtype=torch.float64)
    W, L = lp_optimum(X, X @ W_true.mT, p)
    assert L == 0.0
    # least squares on a well-conditioned 200 x 10 problem: W_true to a few ulps of its entries
    torch.testing.assert_close(W, W_true, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("p", [3.0, 4.0])
def test_tiny_noise_is_scale_covariant(gen, p):
    """L*(X, c y) = c^p L*(X, y): noise of size 1e-9 is solved as accurately as noise of size 1,
    with no underflow of |r|^(p-2) in the Hessian."""
    X = torch.randn(60, 4, generator=gen, dtype=torch.float64)
    y = X @ torch.randn(4, generator=gen, dtype=torch.float64)
    y = y + torch.randn(60, generator=gen, dtype=torch.float64)
    W1, L1 = lp_optimum(X, y, p)
    W2, L2 = lp_optimum(X, 1e-9 * y, p)
    assert L1 > 0
    assert L2 == pytest.approx(1e-9**p * L1, rel=1e-10)
    torch.testing.assert_close(W2, 1e-9 * W1, rtol=1e-10, atol=0)


def test_finite_for_every_input_dtype_and_rejects_empty(gen):
    X = torch.randn(30, 3, generator=gen)
    y = X @ torch.ones(3)
    _, L = lp_optimum(X, y, 4.0)  # float32 data: an exact fit to float32 rounding
    assert L == 0.0
    with pytest.raises(
        ValueError, match=r"`X` must have at least one row and one column, got shape \(0, 3\)"
    ):
        lp_optimum(torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, dtype=torch.float64), 4)
    with pytest.raises(
        ValueError, match=r"`Y` \(b,\) or \(b, m\) with the same b, got \(30, 3\) and \(30, 1, 1\)"
    ):
        lp_optimum(X, torch.zeros(30, 1, 1), 4.0)
    with pytest.raises(ValueError, match="`max_iter` must be an integer >= 1, got 0"):
        lp_optimum(X, y, 4.0, max_iter=0)

"""tau, its spectrum, the imbalance, the least-squares problem and the product update (eq. 3-16)."""

import numpy as np
import pytest
import torch

from overparam.theory import (
    LeastSquares,
    compress_factors,
    product_update,
    tau,
    tau_extremes,
    two_layer_gd,
    two_layer_imbalance,
)


def _rn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _factors(gen, batch=(3,), d=4, h=6, m=3):
    return (
        torch.randn(*batch, d, h, generator=gen, dtype=torch.float64),
        torch.randn(*batch, h, m, generator=gen, dtype=torch.float64),
    )


def _tau_matrix(W1, W2):
    """Brute force: the matrix of G -> tau(G) on the standard basis of (d, m) matrices."""
    d, m = W1.shape[-2], W2.shape[-1]
    cols = []
    for k in range(d * m):
        E = torch.zeros(d * m, dtype=W1.dtype)
        E[k] = 1.0
        cols.append(tau(E.reshape(d, m), W1, W2).reshape(-1))
    return torch.stack(cols, 1)


@pytest.mark.parametrize("h", [2, 4, 7])  # h < d (lambda_min = 0 from W1 W1^T), h = d, h > d
def test_tau_extremes_match_brute_force_eigendecomposition(gen, h):
    W1, W2 = _factors(gen, batch=(), d=4, h=h, m=3)
    M = _tau_matrix(W1, W2)
    assert torch.allclose(M, M.T, atol=1e-12)  # Hermitian (eq. 5)
    ev = torch.linalg.eigvalsh(M)
    lo, hi = tau_extremes(W1, W2)
    # eigvalsh of a 12x12 matrix with entries O(10): errors ~1e-13; 1e-9 leaves ample margin
    assert torch.allclose(lo, ev[0].clamp_min(0.0), atol=1e-9)
    assert torch.allclose(hi, ev[-1], atol=1e-9)


@pytest.mark.parametrize(("d", "h", "m"), [(5, 3, 2), (2, 4, 6), (6, 9, 1), (3, 2, 7)])
def test_tau_extremes_against_the_kronecker_matrix_for_rectangular_batches(gen, d, h, m):
    # Explicit Kronecker form on column-major vec(G):  (W2^T W2) (x) I_d + I_m (x) (W1 W1^T).
    W1, W2 = _factors(gen, batch=(4,), d=d, h=h, m=m)
    eye_d = torch.eye(d, dtype=torch.float64)
    eye_m = torch.eye(m, dtype=torch.float64)
    lo, hi = tau_extremes(W1, W2)
    for b in range(4):
        M = torch.kron(W2[b].T @ W2[b], eye_d) + torch.kron(eye_m, W1[b] @ W1[b].T)
        G = _rn(gen, d, m)
        vec = G.T.reshape(-1)  # column-major vec
        assert torch.allclose(M @ vec, tau(G, W1[b], W2[b]).T.reshape(-1), atol=1e-10)
        ev = np.linalg.eigvalsh(M.numpy())  # independent (LAPACK via numpy) dense eigensolver
        # entries O(10), dimension <= 42: eigenvalue errors ~1e-13, margin 1e-9
        assert abs(float(lo[b]) - max(ev[0], 0.0)) < 1e-9
        assert abs(float(hi[b]) - ev[-1]) < 1e-9


def test_tau_spectrum_is_all_pairwise_sums(gen):
    W1, W2 = _factors(gen, batch=(), d=3, h=5, m=2)
    ev = torch.linalg.eigvalsh(_tau_matrix(W1, W2))
    a, b = torch.linalg.eigvalsh(W1 @ W1.T), torch.linalg.eigvalsh(W2.T @ W2)
    sums = torch.sort((a[:, None] + b[None, :]).reshape(-1)).values
    assert torch.allclose(ev, sums, atol=1e-9)


def test_tau_is_gamma_adjoint_gamma(gen):
    # <gamma(G), gamma(H)> = <G, tau(H)> with gamma(G) = (G W2^T, W1^T G)  (eq. 3-5)
    W1, W2 = _factors(gen, batch=())
    G, H = _rn(gen, 4, 3), _rn(gen, 4, 3)
    lhs = (G @ W2.T * (H @ W2.T)).sum() + (W1.T @ G * (W1.T @ H)).sum()
    assert torch.allclose(lhs, (G * tau(H, W1, W2)).sum(), rtol=1e-12)


def test_imbalance_formula_and_batching(gen):
    W1, W2 = _factors(gen)
    D = two_layer_imbalance(W1, W2)
    assert torch.allclose(D, W1.mT @ W1 - W2 @ W2.mT, atol=1e-12)
    assert D.shape == (3, 6, 6)


def test_least_squares_loss_and_gradient_against_naive_and_autograd(gen):
    X, Y = _rn(gen, 30, 4), _rn(gen, 30, 3)
    prob = LeastSquares.from_data(X, Y)
    W = _rn(gen, 4, 3).requires_grad_()
    full = 0.5 * (X @ W - Y).square().sum()
    s = torch.linalg.svdvals(X)
    assert torch.allclose(prob.K, s[0] ** 2) and torch.allclose(prob.mu, s[-1] ** 2)
    assert torch.allclose(prob.loss(W) + prob.L_star, full, rtol=1e-10)
    (g,) = torch.autograd.grad(full, W)
    assert torch.allclose(prob.grad(W.detach()), g, atol=1e-10)


def test_product_update_is_exact_for_one_gd_step(gen):
    W1, W2 = _factors(gen)
    G = _rn(gen, 3, 4, 3)
    eta = torch.tensor([0.1, 0.01, 0.3], dtype=torch.float64)
    e = eta.reshape(3, 1, 1)
    after = (W1 - e * G @ W2.mT) @ (W2 - e * W1.mT @ G)
    assert torch.allclose(product_update(W1, W2, G, eta), after, atol=1e-12)


def test_validation_messages(gen):
    W1, W2 = _factors(gen, batch=())
    with pytest.raises(ValueError, match="`W2` must have W1.shape"):
        tau(torch.zeros(4, 3, dtype=torch.float64), W1, W2[:-1])
    with pytest.raises(ValueError, match=r"`G` must have shape"):
        tau(torch.zeros(3, 3, dtype=torch.float64), W1, W2)
    with pytest.raises(ValueError, match="`X` must have full column rank"):
        LeastSquares.from_data(
            torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64)
        )
    with pytest.raises(ValueError, match="`Y` must have 5 rows"):
        LeastSquares.from_data(_rn(gen, 5, 2), torch.zeros(4, 1, dtype=torch.float64))


def test_compress_factors_gives_the_same_gd_trajectory(gen):
    # h = 60 > d + m = 7: the compressed width-7 problem must follow the same trajectory.
    S, n, d, h, m = 2, 25, 4, 60, 3
    X = torch.randn(S, n, d, generator=gen, dtype=torch.float64) / n**0.5
    W1, W2 = _factors(gen, batch=(S,), d=d, h=h, m=m)
    W1, W2 = 0.2 * W1, 0.2 * W2  # K lmax(tau_0) ~ 10: eta = 0.01 is stable
    prob = LeastSquares.from_data(X, _rn(gen, S, n, m))
    A, B = compress_factors(W1, W2)
    assert A.shape == (S, d, d + m) and B.shape == (S, d + m, m)
    full, small = (two_layer_gd(prob, P, Q, 40, 0.01) for P, Q in ((W1, W2), (A, B)))
    for key in ("loss", "lam_min", "lam_max", "s_max", "D_drift", "D_step"):
        # identical arithmetic up to the rotation Q: agreement to ~1e-12 relative over 40 steps
        assert torch.allclose(full[key], small[key], rtol=1e-9, atol=1e-12), key
    assert compress_factors(A, B)[0] is A  # h <= d + m: unchanged

"""Feature learning helpers: Hermite targets, principal angles, ridge readout."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from numpy.polynomial.hermite_e import hermegauss, hermeval

from overparam.regimes import (
    feature_angles,
    hermite,
    hermite_moments,
    hermite_polynomial,
    planted_subspace,
    readout_error,
    ridge_readout,
)

F64 = torch.float64


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5])
def test_hermite_matches_numpy(k):
    z = torch.linspace(-3, 3, 13, dtype=F64)
    coef = np.zeros(k + 1)
    coef[k] = 1.0
    # same recurrence, different code: round-off only
    np.testing.assert_allclose(hermite(z, k).numpy(), hermeval(z.numpy(), coef), atol=1e-10)


def test_hermite_moments_against_gauss_quadrature():
    terms = [(0.3, (0, 0)), (1.0, (1, 1)), (0.5, (2, 0)), (-0.7, (0, 3))]
    nodes, weights = hermegauss(10)  # exact for degree <= 19 under N(0, 1) (weights / sqrt(2 pi))
    weights = weights / math.sqrt(2 * math.pi)
    Z = torch.tensor([[u, v] for u in nodes for v in nodes], dtype=F64)
    w = torch.tensor([a * b for a in weights for b in weights], dtype=F64)
    g = hermite_polynomial(Z, terms)
    mean, var = hermite_moments(terms)
    assert math.isclose(float(w @ g), mean, abs_tol=1e-12)
    assert math.isclose(float(w @ (g - mean) ** 2), var, rel_tol=1e-12)
    assert var == pytest.approx(1.0 + 0.25 * 2 + 0.49 * 6)


def test_planted_subspace_has_orthonormal_rows(gen):
    U = planted_subspace(12, 3, gen)
    assert U.shape == (3, 12)
    assert torch.allclose(U @ U.mT, torch.eye(3, dtype=F64), atol=1e-14)


def test_feature_angles_match_scipy(gen):
    U = planted_subspace(10, 3, gen)
    W = (
        torch.randn(2, 20, 10, generator=gen, dtype=F64)
        + 2 * torch.randn(2, 20, 3, generator=gen, dtype=F64) @ U
    )
    got = feature_angles(W, U)
    for b in range(2):
        # independent: numpy SVD for the top-3 right singular subspace, scipy for the angles
        top = np.linalg.svd(W[b].numpy())[2][:3].T
        ref = np.sort(scipy.linalg.subspace_angles(top, U.numpy().T))
        # arccos of cosines: accurate to ~1e-8 rad even for small angles
        np.testing.assert_allclose(got[b].numpy(), ref, atol=1e-8)


def test_feature_angles_zero_for_weights_in_row_space(gen):
    U = planted_subspace(8, 2, gen)
    W = torch.randn(5, 2, generator=gen, dtype=F64) @ U
    # arccos near 1 loses half the digits: 1e-16 in cos -> ~1e-8 in angle
    assert float(feature_angles(W, U).max()) < 1e-7


def test_ridge_readout_dual_primal_and_normal_equations(gen):
    for N, m in [(7, 12), (15, 6)]:
        Phi = torch.randn(N, m, generator=gen, dtype=F64)
        y = torch.randn(N, generator=gen, dtype=F64)
        v = ridge_readout(Phi, y, 0.1)
        lam = 0.1 * float((Phi**2).sum()) / m
        P = Phi.numpy()
        ref = np.linalg.solve(P.T @ P + lam * np.eye(m), P.T @ y.numpy())
        np.testing.assert_allclose(v.numpy(), ref, atol=1e-12)
        v0 = ridge_readout(Phi, y, 0.0)
        np.testing.assert_allclose(
            v0.numpy(), np.linalg.lstsq(P, y.numpy(), rcond=None)[0], atol=1e-11
        )


def test_readout_error_zero_when_target_is_in_the_feature_span(gen):
    W = torch.randn(30, 5, generator=gen, dtype=F64)
    v = torch.randn(30, generator=gen, dtype=F64)
    Xtr, Xte = (torch.randn(N, 5, generator=gen, dtype=F64) for N in (60, 40))
    ytr, yte = (torch.relu(X @ W.T) @ v for X in (Xtr, Xte))
    # exact interpolation with 60 > 30 samples: error at round-off level
    assert float(readout_error(W, Xtr, ytr, Xte, yte, 0.0)) < 1e-20


def test_bad_arguments(gen):
    with pytest.raises(ValueError, match="`k` must be an integer >= 0"):
        hermite(torch.zeros(2, dtype=F64), -1)
    with pytest.raises(ValueError, match="`terms` must have 2 exponents"):
        hermite_polynomial(torch.zeros(3, 2, dtype=F64), [(1.0, (2,))])
    with pytest.raises(ValueError, match="`terms` must not repeat"):
        hermite_moments([(1.0, (2, 0)), (2.0, (2, 0))])
    with pytest.raises(ValueError, match=r"`r` must be an integer in \[1, 4\], got 5"):
        planted_subspace(4, 5, gen)
    with pytest.raises(ValueError, match="`U` must have 6 columns"):
        feature_angles(torch.zeros(4, 6, dtype=F64), torch.zeros(2, 5, dtype=F64))
    with pytest.raises(ValueError, match="`ridge` must be >= 0"):
        ridge_readout(torch.zeros(4, 3, dtype=F64), torch.zeros(4, dtype=F64), -1.0)
    with pytest.raises(ValueError, match="`y` must have 4 entries"):
        ridge_readout(torch.zeros(4, 3, dtype=F64), torch.zeros(5, dtype=F64), 0.1)

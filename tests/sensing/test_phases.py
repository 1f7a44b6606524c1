"""Phase analysis: principal angles vs scipy, power iterates vs matrix powers, phase detection."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from overparam.sensing import (
    GaussianSensing,
    detect_phases,
    first_reached,
    lift,
    noise_exponent,
    power_iterates,
    principal_angles,
    spectral_matrix,
    subspace_sin,
    top_subspace,
)

F64 = torch.float64


def test_principal_angles_match_scipy(gen):
    A = torch.randn(4, 12, 3, generator=gen, dtype=F64)
    B = torch.randn(4, 12, 5, generator=gen, dtype=F64)
    ours = principal_angles(A, B)
    for k in range(4):
        ref = np.sort(scipy.linalg.subspace_angles(A[k].numpy(), B[k].numpy()))
        # arccos near 0 loses precision (sqrt(eps) ~ 1e-8); these angles are O(1): 1e-10 suffices
        np.testing.assert_allclose(ours[k].numpy(), ref, rtol=1e-10, atol=1e-10)


def test_subspace_sin_is_sine_of_largest_angle(gen):
    U = torch.randn(10, 6, generator=gen, dtype=F64)
    Q = torch.linalg.qr(torch.randn(10, 2, generator=gen, dtype=F64))[0]
    top = top_subspace(U, 2)
    ref = math.sin(scipy.linalg.subspace_angles(top.numpy(), Q.numpy()).max())
    assert float(subspace_sin(U, Q)) == pytest.approx(ref, rel=1e-10)


def test_power_iterates_match_explicit_powers(gen):
    S = torch.randn(7, 7, generator=gen, dtype=F64)
    Z = (S + S.T) / 4
    W0 = torch.randn(3, 7, 2, generator=gen, dtype=F64)  # a batch of initial points
    steps = [0, 1, 5, 17]
    P = power_iterates(Z, W0, mu=0.3, steps=steps)
    assert P.shape == (4, 3, 7, 2)
    step = torch.eye(7, dtype=F64) + 0.3 * Z
    for i, t in enumerate(steps):
        ref = torch.linalg.matrix_power(step, t) @ W0
        # eigendecomposition vs repeated products in float64: 1e-10 relative at t = 17
        torch.testing.assert_close(P[i], ref, rtol=1e-10, atol=1e-12)


def test_spectral_matrix_and_lift(gen):
    op = GaussianSensing(50, 4, 3, seed=1)
    y = torch.randn(50, generator=gen, dtype=F64)
    Z = spectral_matrix(op, y, symmetric=False)
    torch.testing.assert_close(Z, op.adjoint(y))
    L = lift(Z)
    assert L.shape == (7, 7) and torch.equal(L, L.T)
    # eigenvalues of Sym(Z) are +- the singular values of Z, plus zeros
    s = torch.linalg.svdvals(Z)
    ev = torch.linalg.eigvalsh(L)
    torch.testing.assert_close(ev[-3:].flip(0), s, rtol=1e-12, atol=1e-12)
    sq = GaussianSensing(50, 4, 4, seed=1)
    Zs = spectral_matrix(sq, y, symmetric=True)
    torch.testing.assert_close(Zs, Zs.T)


def test_first_reached():
    series = torch.tensor([[1.0, 5.0], [0.5, 4.0], [0.2, 3.0], [0.6, 2.0]], dtype=F64)
    times = [0, 10, 20, 30]
    hit = first_reached(series, times, 0.55)
    assert hit[0] == 10 and math.isnan(float(hit[1]))
    up = first_reached(series, times, 3.0, below=False, start=torch.tensor([25.0, 15.0]))
    assert math.isnan(float(up[0]))  # column 0 never reaches 3
    assert float(up[1]) == 20.0  # column 1 is >= 3 at t = 0, 10, 20; from t = 15 on: t = 20


def test_detect_phases_on_constructed_curves():
    """Curves with known crossings: sin falls below 0.1 at t = 30, signal passes 0.5 at t = 60,
    error reaches 1e-3 at t = 90 (and its floor, 1e-4, at t = 120)."""
    t = np.arange(0, 121, 10)
    sin = torch.tensor(np.where(t < 30, 1.0, 0.05), dtype=F64).unsqueeze(1)
    signal = torch.tensor(np.clip((t - 30) / 60, 0.0, 1.0), dtype=F64).unsqueeze(1)
    err = torch.tensor(np.maximum(10.0 ** (-t / 30), 1e-4), dtype=F64).unsqueeze(1)
    ph = detect_phases(t.tolist(), sin, signal, err, sigma_star=1.0, error_tol=1e-3)
    assert (float(ph["t_spectral"]), float(ph["t_saddle"]), float(ph["t_refine"])) == (30, 60, 90)
    floor = detect_phases(t.tolist(), sin, signal, err, sigma_star=1.0, floor_factor=1.0)
    assert float(floor["t_refine"]) == 120.0  # the floor 1e-4 is first reached at t = 120
    never = detect_phases(t.tolist(), sin * 10, signal, err, sigma_star=1.0)
    assert all(math.isnan(float(v)) for v in never.values())


def test_noise_exponent_closed_form():
    s = torch.tensor([1.0, 0.5, 0.2, 0.1], dtype=F64)
    rho = math.log1p(0.5 * 0.2) / math.log1p(0.5 * 1.0)
    assert noise_exponent(s, 2, 0.5) == pytest.approx(2 * (1 - rho), rel=1e-14)
    rho2 = math.log1p(0.5 * 0.2) / math.log1p(0.5 * 0.5)
    assert noise_exponent(s, 2, 0.5, lead=2) == pytest.approx(2 * (1 - rho2), rel=1e-14)
    # no noise (s_{r*+1} = 0): the exponent is 2 (error ~ alpha^2)
    assert noise_exponent(torch.tensor([1.0, 0.0], dtype=F64), 1, 0.1) == 2.0


def test_phase_validation():
    z = torch.zeros(3, 1, dtype=F64)
    with pytest.raises(ValueError, match="`angle_tol` must be > 0, got 0"):
        detect_phases([0, 1, 2], z, z, z, 1.0, angle_tol=0.0)
    with pytest.raises(ValueError, match="`signal` must have 3 rows"):
        detect_phases([0, 1, 2], z, z[:2], z, 1.0)
    with pytest.raises(ValueError, match="`floor_factor` must be >= 1"):
        detect_phases([0, 1, 2], z, z, z, 1.0, floor_factor=0.5)
    with pytest.raises(ValueError, match="`k` must be an integer in"):
        top_subspace(torch.zeros(4, 2, dtype=F64), 3)
    with pytest.raises(ValueError, match="`Z` must be square"):
        power_iterates(torch.zeros(3, 2, dtype=F64), torch.zeros(3, 1, dtype=F64), 0.1, [1])
    with pytest.raises(ValueError, match="`B` must have 4 rows"):
        principal_angles(torch.ones(4, 1, dtype=F64), torch.ones(3, 1, dtype=F64))
    with pytest.raises(ValueError, match=r"`r_star` must be an integer in \[1, 1\]"):
        noise_exponent(torch.ones(2, dtype=F64), 2, 0.1)
    with pytest.raises(ValueError, match=r"`lead` must be an integer in \[1, 1\]"):
        noise_exponent(torch.ones(3, dtype=F64), 1, 0.1, lead=2)

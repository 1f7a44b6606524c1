"""Closed forms (one layer, symmetric Riccati, spectral) against the integrated gradient flow."""

import pytest
import torch

from overparam.dynamics import (
    asymmetric_loss,
    fit_exponential_rate,
    gradient_flow,
    one_layer_flow,
    spectral_flow,
    spectral_init,
    spectral_rate,
    symmetric_flow,
    symmetric_loss,
    symmetric_rate,
)

F64 = torch.float64
FLOW = {"rtol": 1e-12, "atol": 1e-14}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((torch.linalg.matrix_norm(a - b) / torch.linalg.matrix_norm(b)).max())


def _spd(m: int, gen: torch.Generator, shift: float = 0.3) -> torch.Tensor:
    A = torch.randn(m, m, generator=gen, dtype=F64)
    return A @ A.T / m + shift * torch.eye(m, dtype=F64)


@pytest.mark.parametrize("k", [2, 5, 8])
def test_symmetric_riccati_matches_flow(gen, k):
    """Random (not small, not spectral) U_0, full-rank and rank-deficient: 1e-8 relative."""
    m = 5
    Y = _spd(m, gen)
    Y[0, 0] -= 0.8  # allow an indefinite target too
    Y = 0.5 * (Y + Y.T)
    U0 = torch.randn(m, k, generator=gen, dtype=F64)
    times = torch.linspace(0, 12, 13, dtype=F64)
    traj = gradient_flow([U0], lambda p: symmetric_loss(p[0], Y), times, **FLOW)
    Xf = torch.stack([p[0] @ p[0].T for p in traj])
    assert _rel(symmetric_flow(U0, Y, times), Xf) < 1e-8  # measured ~1e-11


def test_symmetric_riccati_random_full_rank_default_tolerances(gen):
    """Held-out setting: Y = (A + A^T)/2 (indefinite, |lambda| up to ~3.5), U_0 with N(0, 1)
    entries (full rank, neither small nor spectral), t up to 20 (|lambda| t ~ 70: the one-shot
    e^{Yt} formula loses all digits there); integrator at its default tolerances."""
    m = 10
    A = torch.randn(m, m, generator=gen, dtype=F64)
    Y, U0 = 0.5 * (A + A.T), torch.randn(m, m, generator=gen, dtype=F64)
    times = torch.linspace(0, 20, 21, dtype=F64)
    traj = gradient_flow([U0], lambda p: symmetric_loss(p[0], Y), times)
    Xf = torch.stack([p[0] @ p[0].T for p in traj])
    assert _rel(symmetric_flow(U0, Y, times), Xf) < 1e-8  # measured 4e-13


def test_symmetric_limit_is_positive_part_without_overflow(gen):
    """t = 300, |lambda| up to 2.5 (e^{|lambda| t} ~ e^{760} overflows float64): the limit of a
    full-rank flow is the positive part Y_+ = Q diag(max(lambda, 0)) Q^T, computed by eigh."""
    A = torch.randn(6, 6, generator=gen, dtype=F64)
    Y, U0 = 0.5 * (A + A.T), torch.randn(6, 6, generator=gen, dtype=F64)
    lam, Q = torch.linalg.eigh(Y)
    assert float(lam.abs().max()) * 300 > 710 and bool((lam < 0).any())
    X = symmetric_flow(U0, Y, [300.0])[0]
    positive = (Q * lam.clamp_min(0)) @ Q.T
    # residual e^{-2 lambda_+min t} (lambda_+min = 0.7 here) and rounding over ~760 exact steps
    assert _rel(X, positive) < 1e-10


def test_symmetric_flow_batches_and_time_order(gen):
    """Batched U_0 against one Y, unsorted times: each entry equals its own unbatched call."""
    Y, U0 = _spd(3, gen), torch.randn(2, 3, 4, generator=gen, dtype=F64)
    times = [2.5, 0.0, 7.0]
    both = symmetric_flow(U0, Y, times)
    assert both.shape == (3, 2, 3, 3)
    for b in range(2):
        for i, t in enumerate(times):
            one = symmetric_flow(U0[b], Y, [t])[0]
            # identical except the split of [0, t] into exact steps: rounding only
            assert torch.allclose(both[i, b], one, rtol=1e-12, atol=1e-13)


def test_symmetric_flow_solves_riccati_equation(gen):
    """Independent of the integrator: central differences of X(t) vs YX + XY - 2X^2."""
    Y, U0 = _spd(4, gen), torch.randn(4, 6, generator=gen, dtype=F64)
    t, h = 0.7, 1e-4
    X = symmetric_flow(U0, Y, [t - h, t, t + h])
    dX = (X[2] - X[0]) / (2 * h)
    rhs = Y @ X[1] + X[1] @ Y - 2 * X[1] @ X[1]
    # central difference error ~ h^2 |X'''| ~ 1e-8, rounding ~ eps/h ~ 1e-12
    assert torch.allclose(dX, rhs, rtol=1e-6, atol=1e-6)
    assert torch.allclose(X[0] * 0 + symmetric_flow(U0, Y, [0.0])[0], U0 @ U0.T, atol=1e-12)


def test_symmetric_rate_is_twice_lambda_min(gen):
    lam = torch.tensor([0.4, 1.5, 2.0], dtype=F64)
    Q = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=F64))[0]
    Y = (Q * lam) @ Q.T
    Y = 0.5 * (Y + Y.T)
    U0 = torch.randn(3, 3, generator=gen, dtype=F64)
    times = torch.linspace(10, 25, 16, dtype=F64)
    err = torch.linalg.matrix_norm(symmetric_flow(U0, Y, times) - Y)
    # the next error mode decays at lambda_1 + lambda_2 = 1.9 vs 0.8: after t = 10 its weight is
    # e^{-11} ~ 2e-5 relative, and err stays above the rounding floor (~e^{-20} >> 1e-14)
    assert fit_exponential_rate(times, err) == pytest.approx(float(symmetric_rate(Y)), rel=1e-4)
    assert float(symmetric_rate(Y)) == pytest.approx(0.8, rel=1e-12)


def test_symmetric_closed_form_large_time_is_accurate(gen):
    """Strongly graded e^{Yt} (lambda spread 3, t = 60): the limit Y (best rank-k for k < m)."""
    lam = torch.tensor([3.0, 1.0, 0.2], dtype=F64)
    Q = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=F64))[0]
    Y = 0.5 * ((Q * lam) @ Q.T + ((Q * lam) @ Q.T).T)
    U0 = torch.randn(3, 3, generator=gen, dtype=F64)
    assert _rel(symmetric_flow(U0, Y, [60.0])[0], Y) < 1e-10  # e^{-24} residual + rounding
    X2 = symmetric_flow(U0[:, :2], Y, [60.0])[0]
    best = (Q[:, :2] * lam[:2]) @ Q[:, :2].T
    assert _rel(X2, best) < 1e-10


def test_one_layer_flow_matches_integrator(gen):
    Y = torch.randn(3, 4, generator=gen, dtype=F64)
    X0 = torch.randn(3, 4, generator=gen, dtype=F64)
    times = torch.linspace(0, 5, 6, dtype=F64)
    traj = gradient_flow([X0], lambda p: 0.5 * (Y - p[0]).pow(2).sum(), times, **FLOW)
    assert _rel(one_layer_flow(X0, Y, times), torch.stack([p[0] for p in traj])) < 1e-8


def test_spectral_closed_form_matches_full_matrix_flow(gen):
    """Spectral init of a 4x3 target, k = 5: per-mode (u, v) and U V^T to 1e-8 relative."""
    Y = torch.randn(4, 3, generator=gen, dtype=F64)
    u0 = torch.tensor([0.1, 1.3, -0.2], dtype=F64)
    v0 = torch.tensor([0.05, -0.7, 0.9], dtype=F64)
    U0, V0, s = spectral_init(Y, u0, v0, k=5)
    times = torch.linspace(0, 10, 11, dtype=F64)
    traj = gradient_flow([U0, V0], lambda p: asymmetric_loss(p[0], p[1], Y), times, **FLOW)
    u, v = spectral_flow(u0, v0, s, times)
    Phi, _, Psih = torch.linalg.svd(Y, full_matrices=False)
    closed = torch.stack([(Phi * (a * b)) @ Psih for a, b in zip(u, v, strict=True)])
    assert _rel(closed, torch.stack([U @ V.T for U, V in traj])) < 1e-8
    got_u = torch.stack([torch.diagonal(Phi.T @ U[:, :3]) for U, _ in traj])
    assert float((got_u - u).abs().max() / u.abs().max()) < 1e-8
    delta = u**2 - v**2  # conserved exactly by the closed form
    assert torch.allclose(delta, (u0**2 - v0**2).expand_as(delta), atol=1e-12)


def test_spectral_closed_form_default_tolerances(gen):
    """Held-out setting: random (u0, v0) of both signs (u0 + v0 != 0), 6 x 9 target, k = 8,
    t in [0, 20], integrator at its default tolerances: U V^T to 1e-8 relative."""
    Y = torch.randn(6, 9, generator=gen, dtype=F64)
    u0 = torch.randn(6, generator=gen, dtype=F64)
    v0 = torch.randn(6, generator=gen, dtype=F64)
    U0, V0, s = spectral_init(Y, u0, v0, k=8)
    times = torch.linspace(0, 20, 21, dtype=F64)
    traj = gradient_flow([U0, V0], lambda p: asymmetric_loss(p[0], p[1], Y), times)
    u, v = spectral_flow(u0, v0, s, times)
    Phi, _, Psih = torch.linalg.svd(Y, full_matrices=False)
    closed = torch.stack([(Phi * (a * b)) @ Psih for a, b in zip(u, v, strict=True)])
    assert _rel(closed, torch.stack([U @ V.T for U, V in traj])) < 1e-8  # measured 4e-11
    delta = torch.stack(
        [torch.diagonal(Phi.T @ U @ U.T @ Phi - Psih @ V @ V.T @ Psih.T) for U, V in traj]
    )
    assert float((delta - (u0**2 - v0**2)).abs().max()) < 1e-9  # u_i^2 - v_i^2 conserved


def test_spectral_rate_fitted_and_logistic_balanced_case():
    s = torch.tensor([0.3, 0.3, 2.0], dtype=F64)
    delta = torch.tensor([0.0, 2.0, 1.0], dtype=F64)
    p0 = torch.full_like(s, 0.01)
    u0 = torch.sqrt((delta + torch.sqrt(delta**2 + 4 * p0**2)) / 2)
    v0 = p0 / u0
    times = torch.linspace(0, 80, 801, dtype=F64)
    u, v = spectral_flow(u0, v0, s, times)
    pred = spectral_rate(s, delta)
    for i in range(3):
        err = (s[i] - u[:, i] * v[:, i]).abs() / s[i]
        window = (err < 1e-5) & (err > 1e-12)  # pure exponential tail, above rounding (1e-16)
        rate = fit_exponential_rate(times[window], err[window])
        assert rate == pytest.approx(float(pred[i]), rel=1e-4)  # next term is O(err^2)
    t = torch.tensor([0.0, 1.0, 3.0], dtype=F64)
    u, v = spectral_flow(u0[:1], v0[:1], s[:1], t)
    logistic = s[0] * p0[0] / (p0[0] + (s[0] - p0[0]) * torch.exp(-2 * s[0] * t))
    assert torch.allclose((u * v)[:, 0], logistic, rtol=1e-12)  # delta = 0: the Saxe logistic


def test_validation_messages(gen):
    Y = torch.randn(3, 3, generator=gen, dtype=F64)
    U0 = torch.randn(3, 2, generator=gen, dtype=F64)
    with pytest.raises(ValueError, match="`Y` must be symmetric"):
        symmetric_flow(U0, Y, [0.0, 1.0])
    with pytest.raises(ValueError, match="`U0` must have 3 rows"):
        symmetric_flow(torch.ones(2, 2, dtype=F64), Y + Y.T, [1.0])
    with pytest.raises(ValueError, match="`times` must be a non-empty 1-D sequence"):
        symmetric_flow(U0, Y + Y.T, [-1.0])
    one = torch.ones(1, dtype=F64)
    with pytest.raises(ValueError, match="`u0` \\+ `v0` must be nonzero"):
        spectral_flow(one, -one, one, [1.0])
    with pytest.raises(ValueError, match="`k` must be an integer >= min\\(m, n\\) = 3"):
        spectral_init(Y, torch.ones(3, dtype=F64), torch.ones(3, dtype=F64), k=2)
    with pytest.raises(ValueError, match="`v0` must have shape \\(3,\\)"):
        spectral_init(Y, torch.ones(3, dtype=F64), torch.ones(2, dtype=F64))


def test_spectral_rate_refuses_non_numbers():
    with pytest.raises(ValueError, match="`s` must be finite, got nan"):
        spectral_rate(float("nan"), 1.0)
    with pytest.raises(ValueError, match="`delta` must be a real number or tensor, got str"):
        spectral_rate(1.0, "a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`s` must be a real tensor, got torch.complex64"):
        spectral_rate(torch.tensor(1j), 0.0)

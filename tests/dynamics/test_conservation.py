"""Conservation of the imbalance under the flow, its exact O(eta^2) drift under GD, rate fits."""

import math

import pytest
import torch

from overparam.core import imbalance, lp_loss, product
from overparam.dynamics import (
    conservation_drift,
    fit_exponential_rate,
    fit_log_slope,
    gd_imbalance_step,
    gradient_descent,
    gradient_flow,
    imbalance_trajectory,
)

F64 = torch.float64


def _problem(gen, depth):
    X = torch.randn(12, 4, generator=gen, dtype=F64)
    Y = torch.randn(12, 3, generator=gen, dtype=F64)
    dims = [4] + [5] * (depth - 1) + [3]
    W0 = [0.8 * torch.randn(dims[j + 1], dims[j], generator=gen, dtype=F64) for j in range(depth)]
    return W0, lambda p: lp_loss(X @ product(p).mT, Y, 2)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_flow_conserves_imbalance(gen, depth):
    """Default tolerances (rtol 1e-12), t in [0, 8]: 1e-9 relative, both to the Gramians
    (``conservation_drift``) and to ``||D_j(0)||`` itself (O(1) here: random init)."""
    W0, loss = _problem(gen, depth)
    traj = gradient_flow(W0, loss, torch.linspace(0, 8, 11, dtype=F64))
    assert float(loss(traj[-1])) < 0.8 * float(loss(W0))  # the flow did move
    drift = conservation_drift(traj)
    assert drift.shape == (11, depth - 1)
    assert float(drift.max()) < 1e-9  # measured ~1e-12: 1000x margin over the tolerance
    for d0, d in zip(imbalance(traj[0]), imbalance(traj[-1]), strict=True):
        assert float(torch.linalg.matrix_norm(d - d0) / torch.linalg.matrix_norm(d0)) < 1e-9


def test_flow_conserves_two_layer_gramian_difference(gen):
    """``U^T U - V^T V`` for ``1/2 ||Y - U V^T||^2`` (claim T1), default tolerances."""
    Y = torch.randn(5, 10, generator=gen, dtype=F64)
    U0 = torch.randn(5, 8, generator=gen, dtype=F64)
    V0 = 0.3 * torch.randn(10, 8, generator=gen, dtype=F64)
    traj = gradient_flow(
        [U0, V0], lambda p: 0.5 * (Y - p[0] @ p[1].T).pow(2).sum(), torch.linspace(0, 30, 7)
    )
    D = [U.T @ U - V.T @ V for U, V in traj]
    rel = max(float(torch.linalg.matrix_norm(d - D[0]) / torch.linalg.matrix_norm(D[0])) for d in D)
    assert rel < 1e-9  # measured ~1e-12
    assert float(torch.linalg.matrix_norm(Y - traj[-1][0] @ traj[-1][1].T)) < 1e-6  # converged


def test_gd_drift_is_exactly_eta_squared_term(gen):
    W0, loss = _problem(gen, 3)
    eta = 0.05
    leaves = [W.clone().requires_grad_(True) for W in W0]
    grads = torch.autograd.grad(loss(leaves), leaves)
    predicted = gd_imbalance_step(W0, grads, eta)
    after = gradient_descent(W0, loss, eta, 1)[1]
    for d1, d0, p in zip(imbalance(after), imbalance(W0), predicted, strict=True):
        # the identity is exact; only float64 rounding of O(1) Gramians remains
        assert torch.allclose(d1 - d0, p, atol=1e-13)


def test_gd_one_step_drift_slope_two(gen):
    W0, loss = _problem(gen, 2)
    etas = [0.08, 0.04, 0.02, 0.01]
    drift = [float(conservation_drift(gradient_descent(W0, loss, e, 1)).max()) for e in etas]
    assert fit_log_slope(etas, drift) == pytest.approx(2.0, abs=1e-3)  # exactly eta^2 * const


def test_imbalance_trajectory_shape(gen):
    W0, _ = _problem(gen, 3)
    D = imbalance_trajectory([W0, W0])
    assert D.shape == (2, 2, 5, 5)
    assert torch.equal(D[0, 0], W0[1].T @ W0[1] - W0[0] @ W0[0].T)


def test_balanced_start_has_zero_drift_denominator_safe():
    W = [torch.eye(2, dtype=F64), torch.eye(2, dtype=F64)]
    assert float(conservation_drift([W, W]).max()) == 0.0


def test_fits_recover_known_values():
    t = torch.linspace(0, 3, 7, dtype=F64)
    assert fit_exponential_rate(t, 5 * torch.exp(-1.7 * t)) == pytest.approx(1.7, rel=1e-12)
    x = [1.0, 2.0, 4.0]
    assert fit_log_slope(x, [3 * v**2.5 for v in x]) == pytest.approx(2.5, rel=1e-12)
    assert math.isfinite(fit_log_slope([1.0, 2.0], [1.0, 1.0]))


def test_validation_messages():
    with pytest.raises(ValueError, match="`trajectory` must contain at least one point"):
        conservation_drift([])
    with pytest.raises(ValueError, match="at least 2 factors"):
        conservation_drift([[torch.eye(2, dtype=F64)]])
    with pytest.raises(ValueError, match="`errors` must be positive"):
        fit_exponential_rate([0.0, 1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="`x` and `y` must be 1-D of equal length >= 2"):
        fit_log_slope([1.0], [1.0])
    with pytest.raises(ValueError, match="`eta` must be > 0"):
        gd_imbalance_step([torch.eye(2)] * 2, [torch.eye(2)] * 2, 0.0)

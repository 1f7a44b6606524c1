"""Overparameterized least squares: GD limit = projection of theta_0, path length bounds."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from overparam.regimes import closest_solution, gram_extremes, least_squares_gd, path_length_bounds

F64 = torch.float64


def _problem(gen, n=15, p=40, batch=()):
    X = torch.randn(*batch, n, p, generator=gen, dtype=F64) / math.sqrt(p)
    y = torch.randn(*batch, n, generator=gen, dtype=F64)
    return X, y, torch.randn(*batch, p, generator=gen, dtype=F64)


def _projection_numpy(X, y, theta0):
    """Independent: theta_0 - X^T (X X^T)^{-1} (X theta_0 - y) (full row rank), numpy float64."""
    Xn, yn, tn = X.numpy(), y.numpy(), theta0.numpy()
    return tn - Xn.T @ np.linalg.solve(Xn @ Xn.T, Xn @ tn - yn)


def test_closest_solution_is_the_projection(gen):
    X, y, theta0 = _problem(gen)
    got = closest_solution(X, y, theta0).numpy()
    # pinv vs a normal-equation solve of a condition-~10 system: agreement far below 1e-10
    np.testing.assert_allclose(got, _projection_numpy(X, y, theta0), atol=1e-12)
    # a solution, and theta_* - theta_0 is orthogonal to the null space of X
    null = scipy.linalg.null_space(X.numpy())
    assert np.abs(X.numpy() @ got - y.numpy()).max() < 1e-12
    assert np.abs(null.T @ (got - theta0.numpy())).max() < 1e-12


def test_gd_limit_matches_independent_projection_to_1e8(gen):
    X, y, theta0 = _problem(gen, batch=(3,))
    out = least_squares_gd(X, y, theta0, steps=1500)
    for b in range(3):
        expected = _projection_numpy(X[b], y[b], theta0[b])
        # the requirement: distance of GD's limit to the exact projection below 1e-8
        assert np.linalg.norm(out["theta"][b].numpy() - expected) < 1e-8
    assert float(out["loss"][-1].max()) < 1e-20


def test_gd_component_outside_row_space_never_moves(gen):
    X, y, theta0 = _problem(gen)
    out = least_squares_gd(X, y, theta0, steps=7, lr=0.3)
    null = torch.as_tensor(scipy.linalg.null_space(X.numpy()))
    # exact invariant of GD: updates are X^T(...), orthogonal to null(X); round-off only
    assert torch.allclose(null.T @ out["theta"], null.T @ theta0, atol=1e-13)


def test_path_length_recorded_and_within_bounds(gen):
    X, y, theta0 = _problem(gen, batch=(4,))
    out = least_squares_gd(X, y, theta0, steps=800, record=[0, 1, 10, 800])
    straight = torch.linalg.vector_norm(out["limit"] - theta0, dim=-1)
    ratio = out["path_length"][-1] / straight
    bounds = path_length_bounds(X, y, theta0)
    assert torch.all(out["path_length"][0] == 0)
    # the triangle inequality: path >= displacement; GD path within both proven bounds
    assert torch.all(out["path_length"] >= out["displacement"] * (1 - 1e-12))
    assert torch.all(ratio >= 1 - 1e-9)
    assert torch.all(ratio <= bounds["kappa"]) and torch.all(ratio <= bounds["l1"])
    assert torch.all(bounds["l1"] <= math.sqrt(X.shape[-2]) + 1e-12)
    # first step: exactly lr ||X^T (X theta_0 - y)||
    g0 = X.mT @ (X @ theta0.unsqueeze(-1) - y.unsqueeze(-1))
    first = out["lr"] * torch.linalg.vector_norm(g0.squeeze(-1), dim=-1)
    assert torch.allclose(out["path_length"][1], first, rtol=1e-12)


def test_gram_extremes_against_numpy(gen):
    X, _, _ = _problem(gen, n=6, p=9)
    ev = np.linalg.eigvalsh(X.numpy() @ X.numpy().T)
    top, bottom = gram_extremes(X)
    assert math.isclose(float(top), ev[-1], rel_tol=1e-12)
    assert math.isclose(float(bottom), ev[0], rel_tol=1e-10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": -1}, "`steps` must be an integer >= 0"),
        ({"steps": 5, "lr": 0.0}, "`lr` must be finite and > 0"),
        ({"steps": 5, "record": [0, 9]}, r"`record` must lie in \[0, 5\]"),
    ],
)
def test_gd_bad_arguments(gen, kwargs, match):
    X, y, theta0 = _problem(gen)
    with pytest.raises(ValueError, match=match):
        least_squares_gd(X, y, theta0, **kwargs)


def test_shape_mismatch_raises(gen):
    X, y, theta0 = _problem(gen)
    with pytest.raises(ValueError, match="`y` must have 15 entries"):
        closest_solution(X, y[:-1], theta0)
    with pytest.raises(ValueError, match="`theta0` must have 40 entries"):
        closest_solution(X, y, theta0[:-1])
    with pytest.raises(ValueError, match="`X` must have a floating dtype"):
        closest_solution(X.int(), y, theta0)


def test_degenerate_problems_are_refused_not_nan(gen):
    X = torch.randn(3, 5, dtype=torch.float64, generator=gen)
    y = torch.randn(3, dtype=torch.float64, generator=gen)
    theta0 = torch.zeros(5, dtype=torch.float64)
    zero = torch.zeros(3, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"`X` must be nonzero .* default `lr`.*pass `lr`"):
        least_squares_gd(zero, y, theta0, 3)
    with pytest.raises(ValueError, match="`X` must be nonzero .* for the path-length bounds"):
        path_length_bounds(zero, y, theta0)
    with pytest.raises(ValueError, match=r"`y` must have the dtype of `X` \(torch.float32\)"):
        least_squares_gd(X.float(), y, theta0, 3)
    with pytest.raises(
        ValueError, match=r"`X` must have at least one row and one column, got \(0, 5\)"
    ):
        least_squares_gd(X[:0], y[:0], theta0, 3)
    moved = least_squares_gd(zero, y, theta0, 3, lr=0.1)["theta"]  # an explicit lr is fine
    assert torch.equal(moved, theta0)

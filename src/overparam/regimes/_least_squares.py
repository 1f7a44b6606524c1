"""Overparameterized least squares (n <= p): where GD from ``theta_0`` goes, and how far it walks.

Source: seed 004, slide "Prelude: Overparameterized Least Squares" (Soltanolkotabi 2022; Oymak &
Soltanolkotabi, "Overparameterized nonlinear learning: gradient descent takes the shortest path?",
ICML 2019).  Objective ``L(theta) = 1/2 ||X theta - y||^2`` with ``X`` of shape ``(n, p)``, ``n <= p``;
GD ``theta_{t+1} = theta_t - lr X^T (X theta_t - y)``.  Every iterate stays in
``theta_0 + row(X)``, so the limit is the solution closest to ``theta_0``:
``theta_* = theta_0 + X^+ (y - X theta_0)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from overparam import _validate


def _check_problem(X: Tensor, y: Tensor, theta0: Tensor) -> None:
    _validate.floating(X, "X", min_dim=2)
    _validate.floating(y, "y", min_dim=1)
    _validate.floating(theta0, "theta0", min_dim=1)
    _validate.same_dtype(X, y, "X", "y")
    _validate.same_dtype(X, theta0, "X", "theta0")
    if X.shape[-2] == 0 or X.shape[-1] == 0:
        raise ValueError(f"`X` must have at least one row and one column, got {tuple(X.shape)}")
    if y.shape[-1] != X.shape[-2]:
        raise ValueError(f"`y` must have {X.shape[-2]} entries (rows of `X`), got {tuple(y.shape)}")
    if theta0.shape[-1] != X.shape[-1]:
        raise ValueError(
            f"`theta0` must have {X.shape[-1]} entries (columns of `X`), got {tuple(theta0.shape)}"
        )


def _check_nonzero(top: Tensor, what: str) -> None:
    if not bool((top > 0).all()):
        raise ValueError(f"`X` must be nonzero (every problem of the batch) {what}, got X = 0")


def closest_solution(X: Tensor, y: Tensor, theta0: Tensor) -> Tensor:
    """The least-squares solution closest to ``theta0``: ``theta0 + X^+ (y - X theta0)``.

    For ``n <= p`` and full row rank this is the orthogonal projection of ``theta0`` onto the
    affine set ``{theta : X theta = y}``; in general it is the projection onto the set of
    minimizers of ``||X theta - y||``.  Computed with the SVD pseudo-inverse (batched).

    Args:
        X: ``(..., n, p)``.
        y: ``(..., n)``.
        theta0: ``(..., p)``.

    Returns:
        ``(..., p)``.
    """
    _check_problem(X, y, theta0)
    residual = y - (X @ theta0.unsqueeze(-1)).squeeze(-1)
    return theta0 + (torch.linalg.pinv(X) @ residual.unsqueeze(-1)).squeeze(-1)


def gram_extremes(X: Tensor) -> tuple[Tensor, Tensor]:
    """``(lambda_max, lambda_min^+)``: largest and smallest nonzero eigenvalue of ``X X^T``.

    Nonzero means above ``max(n, p) * eps * lambda_max`` (the ``pinv`` cutoff).
    """
    _validate.floating(X, "X", min_dim=2)
    s2 = torch.linalg.svdvals(X) ** 2
    top = s2[..., 0]
    cutoff = max(X.shape[-2:]) * torch.finfo(X.dtype).eps * top
    masked = torch.where(s2 > cutoff.unsqueeze(-1), s2, torch.full_like(s2, float("inf")))
    return top, masked.amin(-1)


def least_squares_gd(
    X: Tensor,
    y: Tensor,
    theta0: Tensor,
    steps: int,
    lr: float | Tensor | None = None,
    record: Sequence[int] | None = None,
) -> dict[str, Tensor]:
    """Batched GD on ``1/2 ||X theta - y||^2`` with the path it walks.

    ``theta_{t+1} = theta_t - lr X^T (X theta_t - y)``; the path length is
    ``sum_t ||theta_{t+1} - theta_t||`` and the straight line from ``theta_0`` to the limit has length
    ``||theta_* - theta_0||`` (:func:`closest_solution`).

    Args:
        X, y, theta0: as in :func:`closest_solution`.
        steps: number of GD steps (>= 0).
        lr: step size, a number or a tensor of the batch shape; default ``1 / lambda_max(X X^T)``
            per problem (GD converges for ``lr < 2 / lambda_max``).
        record: steps (within ``[0, steps]``) at which to record; default ``[0, steps]``.

    Returns:
        ``steps`` (R,), ``theta`` (final, ``(..., p)``), ``limit`` (``theta_*``), ``lr`` (batch
        shape), and at the recorded steps, each ``(R, ...)``: ``loss``, ``distance``
        ``||theta_t - theta_*||``, ``displacement`` ``||theta_t - theta_0||`` and ``path_length``.
    """
    _check_problem(X, y, theta0)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`steps` must be an integer >= 0, got {steps!r}")
    rec = sorted(set(record if record is not None else [0, steps]))
    if rec and (rec[0] < 0 or rec[-1] > steps):
        raise ValueError(f"`record` must lie in [0, {steps}], got {rec[0]}..{rec[-1]}")
    batch = torch.broadcast_shapes(X.shape[:-2], y.shape[:-1], theta0.shape[:-1])
    if lr is None:
        top = gram_extremes(X)[0]
        _check_nonzero(top, "for the default `lr` = 1 / lambda_max(X X^T); pass `lr`")
        rate = 1.0 / top
    else:
        rate = torch.as_tensor(lr, dtype=X.dtype)
        if not bool(torch.isfinite(rate).all()) or not bool((rate > 0).all()):
            raise ValueError(f"`lr` must be finite and > 0, got {lr!r}")
    rate = rate.expand(batch)
    limit = closest_solution(X, y, theta0)
    theta = theta0.expand(*batch, X.shape[-1]).clone()
    path = torch.zeros(batch, dtype=X.dtype)
    rows: dict[str, list[Tensor]] = {k: [] for k in ("loss", "distance", "displacement", "path")}
    wanted = set(rec)
    for t in range(steps + 1):
        residual = (X @ theta.unsqueeze(-1)).squeeze(-1) - y
        if t in wanted:
            rows["loss"].append(0.5 * residual.pow(2).sum(-1))
            rows["distance"].append(torch.linalg.vector_norm(theta - limit, dim=-1))
            rows["displacement"].append(torch.linalg.vector_norm(theta - theta0, dim=-1))
            rows["path"].append(path.clone())
        if t == steps:
            break
        step = rate.unsqueeze(-1) * (X.mT @ residual.unsqueeze(-1)).squeeze(-1)
        theta = theta - step
        path = path + torch.linalg.vector_norm(step, dim=-1)
    return {
        "steps": torch.tensor(rec),
        "theta": theta,
        "limit": limit,
        "lr": rate,
        "loss": torch.stack(rows["loss"]),
        "distance": torch.stack(rows["distance"]),
        "displacement": torch.stack(rows["displacement"]),
        "path_length": torch.stack(rows["path"]),
    }


def path_length_bounds(X: Tensor, y: Tensor, theta0: Tensor) -> dict[str, Tensor]:
    """Two upper bounds on ``path length / ||theta_* - theta_0||`` for GD with ``lr <= 1/lambda_max``.

    * ``kappa = lambda_max / lambda_min^+`` of ``X X^T``: each step has norm
      ``<= lr sigma_max ||r_t||`` and ``||r_t|| <= (1 - lr lambda_min)^t ||r_0||``, while
      ``||theta_* - theta_0|| >= ||r_0|| / sigma_max`` (Oymak & Soltanolkotabi 2019, Thm 2.1 for
      the linear case).
    * ``l1 = ||c||_1 / ||c||_2`` with ``c`` the coordinates of ``theta_* - theta_0`` in the right
      singular basis of ``X``: each coordinate shrinks monotonically to 0, so the path is at most
      the sum of their lengths (triangle inequality); ``l1 <= sqrt(rank X)``.
    """
    _check_problem(X, y, theta0)
    top, bottom = gram_extremes(X)
    _check_nonzero(top, "for the path-length bounds")
    delta = closest_solution(X, y, theta0) - theta0
    _, s, Vh = torch.linalg.svd(X, full_matrices=False)
    keep = s > max(X.shape[-2:]) * torch.finfo(X.dtype).eps * s[..., :1]
    c = (Vh @ delta.unsqueeze(-1)).squeeze(-1) * keep
    l1 = c.abs().sum(-1) / torch.linalg.vector_norm(c, dim=-1)
    return {"kappa": top / bottom, "l1": l1}

"""Batched GD on ``W = W1 W2`` and the checkers that test each bound of Xu et al. 2023 on it.

GD (eq. 1): ``W1 <- W1 - eta grad l(W) W2^T``, ``W2 <- W2 - eta W1^T grad l(W)``, batched over a
leading seed dimension (any leading shape).  :func:`two_layer_gd` records every quantity the bounds
use, step by step; :func:`check_bounds` says where each bound holds; :func:`imbalance_slopes` fits
the orders of ``||D(t) - D(0)||`` in ``eta``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from overparam import _validate
from overparam.theory._operators import LeastSquares, product_update, two_layer_imbalance
from overparam.theory._rates import InitConstants, eta_max, f_rate, rho
from overparam.theory.step_size import adaptive_step, adaptive_step_rho, measured_quantities

RULES = ("f", "rho", "curvature")
_KEYS = ("loss", "lam_min", "lam_max", "s_min", "s_max", "w_fro", "grad_norm")


def _step_size(
    rule: float | Tensor | str,
    q: dict[str, Tensor],
    problem: LeastSquares,
    const: InitConstants,
    c1: float,
    c2: float,
) -> Tensor:
    if isinstance(rule, str):
        if rule == "f":
            return adaptive_step(const, q["loss"], c1, c2)
        if rule == "curvature":
            return 2 / (problem.K * q["lam_max"] + problem.mu * q["lam_min"])
        return adaptive_step_rho(
            q["lam_min"], q["lam_max"], q["s_max"], q["grad_norm"], problem.K, problem.mu
        )
    return torch.as_tensor(rule, dtype=q["loss"].dtype).expand_as(q["loss"])


def two_layer_gd(
    problem: LeastSquares,
    W1: Tensor,
    W2: Tensor,
    steps: int,
    eta: float | Tensor | str,
    c1: float = 0.5,
    c2: float = 2.0,
    diagnostics: bool = True,
) -> dict[str, Tensor]:
    """Run ``steps`` GD steps on the factors and record the trajectory.

    Args:
        problem: :class:`LeastSquares` (batch shape broadcastable with the factors').
        W1: ``(..., d, h)``; W2: ``(..., h, m)``: initial factors.
        steps: number of GD steps ``T >= 0``.
        eta: fixed step (float, or tensor of the batch shape), or ``"f"`` (adaptive
            ``argmin f(eta, t)``, eq. 29), ``"rho"`` (``argmin rho(eta, t)``, eq. 20) or
            ``"curvature"`` (ours, not the source's: ``2 / (K lmax(tau_t) + mu lmin(tau_t))``, the
            optimal step for the first-order product update ``W - eta tau_t(grad)`` of eq. 16,
            whose curvature lies in ``[mu lmin(tau_t), K lmax(tau_t)]``).
        c1, c2: constants of eq. (23), used by the ``"f"`` rule and ``f``.
        diagnostics: also record spectra, ``rho``, condition-(18) terms, the imbalance drift and
            the product-update residual (else only ``loss`` and ``eta``: faster).

    Returns:
        ``loss`` and the spectral quantities, shape ``(T + 1, *batch)``; ``eta``, ``rho``,
        ``D_step`` (``||D(t+1) - D(t)||_F``), ``product_residual``
        (``||W(t+1) - eq. 16||_F / ||W(t+1)||_F``), shape ``(T, *batch)``; ``D_drift``
        (``||D(t) - D(0)||_F``), ``(T + 1, *batch)``; and the :class:`InitConstants` fields.
    """
    _validate.int_sequence([steps], "steps", minimum=0)
    if isinstance(eta, str) and eta not in RULES:
        raise ValueError(f"`eta` must be a positive number or one of {RULES}, got {eta!r}")
    if not isinstance(eta, (str, Tensor)):
        _validate.positive(eta, "eta")
    q = measured_quantities(problem, W1, W2)
    const = InitConstants.from_init(
        q["lam_min"], q["lam_max"], problem.W_ls, q["loss"], problem.K, problem.mu
    )
    D0 = D = two_layer_imbalance(W1, W2)
    rec: dict[str, list[Tensor]] = {k: [q[k]] for k in (_KEYS if diagnostics else ("loss",))}
    extra: dict[str, list[Tensor]] = {
        "eta": [],
        "rho": [],
        "D_step": [],
        "D_drift": [torch.zeros_like(q["loss"])],
        "product_residual": [],
    }
    for _ in range(steps):
        e = _step_size(eta, q, problem, const, c1, c2)
        g, eb = q["grad"], e.reshape(*e.shape, 1, 1)
        if diagnostics:
            predicted = product_update(W1, W2, g, e)
        W1, W2 = W1 - eb * (g @ W2.mT), W2 - eb * (W1.mT @ g)
        extra["eta"].append(e)
        if diagnostics:
            extra["rho"].append(
                rho(
                    e, q["lam_min"], q["lam_max"], q["s_max"], q["grad_norm"], problem.K, problem.mu
                )
            )
        q = (
            measured_quantities(problem, W1, W2)
            if diagnostics or eta in ("rho", "curvature")
            else {"W": (W := W1 @ W2), "grad": problem.grad(W), "loss": problem.loss(W)}
        )
        for k in rec:
            rec[k].append(q[k])
        if diagnostics:
            extra["product_residual"].append(
                torch.linalg.matrix_norm(q["W"] - predicted) / torch.linalg.matrix_norm(q["W"])
            )
            D_new = two_layer_imbalance(W1, W2)
            extra["D_step"].append(torch.linalg.matrix_norm(D_new - D))
            extra["D_drift"].append(torch.linalg.matrix_norm(D_new - D0))
            D = D_new
    out = {k: torch.stack(v) for k, v in rec.items()}
    out.update({k: torch.stack(v) for k, v in extra.items() if v})
    out.update({f"const_{k}": getattr(const, k) for k in ("alpha0", "beta0", "p1", "p2", "L0")})
    return out


def plain_gd(problem: LeastSquares, W: Tensor, steps: int, eta: float | Tensor) -> Tensor:
    """Excess losses ``(T + 1, *batch)`` of GD ``W <- W - eta grad l(W)`` (eq. 14), not overparam."""
    _validate.int_sequence([steps], "steps", minimum=0)
    e = torch.as_tensor(eta, dtype=W.dtype)
    e = e.reshape(*e.shape, 1, 1)
    losses = [problem.loss(W)]
    for _ in range(steps):
        W = W - e * problem.grad(W)
        losses.append(problem.loss(W))
    return torch.stack(losses)


def check_bounds(
    traj: dict[str, Tensor],
    problem: LeastSquares,
    eta: Tensor | float,
    c1: float,
    c2: float,
    rtol: float = 1e-9,
) -> dict[str, Tensor]:
    """Step-by-step verdicts on a trajectory of :func:`two_layer_gd` with a fixed step ``eta``.

    Returns boolean tensors: ``cond18`` (``(T, *B)``, spectral-norm form), ``descent``
    (``L(t+1) <= rho(eta, t) L(t)``, where condition (18) holds; True elsewhere), ``spectral``
    (``c1 alpha0 <= lmin``, ``lmax <= c2 beta0``, ``p1 <= s_min``, ``s_max <= p2``, ``(T+1, *B)``),
    ``linear`` (``L(t) <= f(eta, 0)^t L(0)``) and the scalars ``eta_max`` and ``f0``.
    ``rtol`` absorbs rounding (relative to ``L(0)``).
    """
    L, T = traj["loss"], traj["eta"].shape[0]
    e = torch.as_tensor(eta, dtype=L.dtype)
    c = e * traj["grad_norm"][:-1] * traj["s_max"][:-1]
    cond = traj["lam_min"][:-1] - c - 0.5 * problem.K * e * (traj["lam_max"][:-1] + c) ** 2 >= 0
    slack = rtol * L[0]
    descent = (L[1:] <= traj["rho"] * L[:-1] + slack) | ~cond
    const = InitConstants(
        traj["const_alpha0"],
        traj["const_beta0"],
        traj["const_p1"],
        traj["const_p2"],
        traj["const_L0"],
        problem.K,
        problem.mu,
    )
    tol = 1e-9
    spectral = (
        (traj["lam_min"] >= c1 * const.alpha0 * (1 - tol))
        & (traj["lam_max"] <= c2 * const.beta0 * (1 + tol))
        & (traj["s_min"] >= const.p1 * (1 - tol))
        & (traj["s_max"] <= const.p2 * (1 + tol))
    )
    f0 = f_rate(e, const, const.L0, c1, c2)
    t = torch.arange(T + 1, dtype=L.dtype).reshape(-1, *([1] * (L.dim() - 1)))
    linear = L <= f0.clamp_min(0.0) ** t * L[0] + slack
    return {
        "cond18": cond,
        "descent": descent,
        "spectral": spectral,
        "linear": linear,
        "eta_max": eta_max(const, c1, c2)[0],
        "f0": f0,
    }


def fit_slope(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (a convergence order)."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    return float(np.polyfit(lx, ly, 1)[0])


def imbalance_slopes(
    problem: LeastSquares,
    W1: Tensor,
    W2: Tensor,
    etas: list[float],
    horizon: float,
    tol: float = 1e-12,
) -> dict[str, object]:
    """Fit the orders in ``eta`` of the imbalance drift (claim X1, eq. 12).

    For each ``eta``, over ``T = ceil(horizon / eta)`` steps (a fixed time horizon):

    - ``first_step``: ``||D(1) - D(0)||_F``, exactly
      ``eta^2 ||W2 g^T g W2^T - W1^T g g^T W1||_F`` (order 2);
    - ``per_step``: the mean over the ``T`` steps of ``||D(t+1) - D(t)||_F`` (order 2: every
      step moves ``D`` by ``eta^2`` times a bounded quantity of the trajectory);
    - ``total``: ``max_t ||D(t) - D(0)||_F`` (order 1 when the loss decays linearly: the per-step
      changes, ``O(eta^2 ||g_t||^2)``, sum to ``O(eta^2 / (eta mu)) = O(eta)``).

    Returns the per-eta values (mean over the batch) and the three fitted log-log slopes.
    """
    if len(etas) < 2:
        raise ValueError(f"`etas` must hold at least 2 step sizes, got {etas}")
    _validate.positive(horizon, "horizon")
    first, per_step, total = [], [], []
    for eta in etas:
        _validate.positive(eta, "etas")
        traj = two_layer_gd(problem, W1, W2, int(math.ceil(horizon / eta)), float(eta))
        first.append(float(traj["D_step"][0].mean()))
        per_step.append(float(traj["D_step"].mean()))
        total.append(float(traj["D_drift"].amax(0).mean()))
    return {
        "etas": list(etas),
        "first_step": first,
        "per_step": per_step,
        "total": total,
        "slope_first_step": fit_slope(etas, first),
        "slope_per_step": fit_slope(etas, per_step),
        "slope_total": fit_slope(etas, total),
    }

"""Batched gradient descent for factorized matrix sensing from small random initialization.

Source: seed 004, slides "Low-rank reconstruction" and "Symmetric case U = V" (Xie, Stöger &
Soltanolkotabi 2022; Stöger & Soltanolkotabi 2021).  With residual ``r = A(M) - y`` and optional
per-measurement weights ``w`` (a mask selecting a subset of measurements, rescaled):

    asymmetric, M = U V^T:   L = 1/2 sum_i w_i r_i^2,   grad_U = G V,   grad_V = G^T U,
    symmetric,  M = U U^T:   L = 1/4 sum_i w_i r_i^2,   grad_U = (G + G^T)/2 U,

with ``G = A*(w r)``, so that the first step from small ``U_0`` is ``U_1 ~ (I + mu Z) U_0`` with
``Z = A*(y)`` (the spectral matrix ``A*A(X X^T)`` when ``y = A(X X^T)``).  The update is
``U_{t+1} = U_t - mu grad_U``, ``V_{t+1} = V_t - mu grad_V`` simultaneously.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from overparam import _validate
from overparam.sensing._operator import GaussianSensing


def sensing_loss_and_grads(
    op: GaussianSensing,
    y: Tensor,
    U: Tensor,
    V: Tensor | None = None,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Loss and gradients of the factorized sensing objective (formulas in the module docstring).

    Args:
        op: the measurement operator.
        y: measurements, shape ``(n,)`` or ``(..., n)`` broadcasting against the batch of ``U``.
        U: ``(..., d1, r)``.
        V: ``(..., d2, r)``, or None for the symmetric model ``U U^T``.
        weights: ``(n,)`` or ``(..., n)`` nonnegative weights, or None (all ones).

    Returns:
        ``(loss (...), grad_U, grad_V or None)``.
    """
    M = U @ (U if V is None else V).transpose(-1, -2)
    r = op.apply(M) - y
    wr = r if weights is None else weights * r
    loss = (wr * r).sum(-1) * (0.25 if V is None else 0.5)
    G = op.adjoint(wr)
    if V is None:
        return loss, 0.5 * (G + G.transpose(-1, -2)) @ U, None
    return loss, G @ V, G.transpose(-1, -2) @ U


def _check_gd(
    op: GaussianSensing, y: Tensor, U0: Tensor, V0: Tensor | None, mu: float, steps: int
) -> None:
    if not isinstance(op, GaussianSensing):
        raise ValueError(f"`op` must be a GaussianSensing, got {type(op).__name__}")
    _validate.floating(y, "y", min_dim=1)
    _validate.floating(U0, "U0", min_dim=2)
    _validate.positive(mu, "mu")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`steps` must be an integer >= 0, got {steps!r}")
    if U0.shape[-2] != op.d1:
        raise ValueError(f"`U0` must have {op.d1} rows (d1), got shape {tuple(U0.shape)}")
    if V0 is None:
        if op.d1 != op.d2:
            raise ValueError(f"the symmetric model needs d1 == d2, got {op.d1}, {op.d2}")
        return
    _validate.floating(V0, "V0", min_dim=2)
    if V0.shape[-2] != op.d2 or V0.shape[-1] != U0.shape[-1] or V0.shape[:-2] != U0.shape[:-2]:
        raise ValueError(
            f"`V0` must have shape (..., {op.d2}, {U0.shape[-1]}) matching `U0` {tuple(U0.shape)}, "
            f"got {tuple(V0.shape)}"
        )


def sensing_gd(
    op: GaussianSensing,
    y: Tensor,
    U0: Tensor,
    V0: Tensor | None,
    mu: float,
    steps: int,
    truth: Tensor | None = None,
    weights: Tensor | None = None,
    record: Sequence[int] = (),
) -> dict[str, Tensor]:
    """Run ``steps`` GD steps on the factorized objective, batched over leading dims of ``U0``.

    Args:
        op, y, weights: as in :func:`sensing_loss_and_grads`.
        U0, V0: initial factors, typically ``alpha * N(0, 1)``; ``V0=None`` for ``U U^T``.
        mu: step size.
        steps: number of GD steps.
        truth: ground truth ``X Y^T`` (``(d1, d2)`` or batched) for the relative error.
        record: steps at which the factors are stored.

    Returns:
        ``loss (steps+1, ...)``, ``grad_sq (steps, ...)`` (``||grad_U||^2 + ||grad_V||^2``),
        ``imbalance (steps+1, ...)`` (``||U^T U - V^T V||_F``, zeros when symmetric),
        ``rel_error (steps+1, ...)`` when ``truth`` is given (``||M_t - truth||_F / ||truth||_F``),
        ``U_rec (len(record), ..., d1, r)`` (and ``V_rec``), and the final ``U``, ``V``.
    """
    _check_gd(op, y, U0, V0, mu, steps)
    rec = sorted({int(s) for s in record})
    if rec and (rec[0] < 0 or rec[-1] > steps):
        raise ValueError(f"`record` must lie in [0, {steps}], got {rec[0]}..{rec[-1]}")
    batch = U0.shape[:-2]
    out = {
        "loss": torch.empty(steps + 1, *batch, dtype=U0.dtype),
        "grad_sq": torch.empty(steps, *batch, dtype=U0.dtype),
        "imbalance": torch.zeros(steps + 1, *batch, dtype=U0.dtype),
    }
    if truth is not None:
        out["rel_error"] = torch.empty(steps + 1, *batch, dtype=U0.dtype)
        t_norm = torch.linalg.matrix_norm(truth)
    U, V = U0.clone(), None if V0 is None else V0.clone()
    U_rec, V_rec = [], []
    for t in range(steps + 1):
        if t in rec:
            U_rec.append(U.clone())
            if V is not None:
                V_rec.append(V.clone())
        if V is not None:
            out["imbalance"][t] = torch.linalg.matrix_norm(U.mT @ U - V.mT @ V)
        if truth is not None:
            M = U @ (U if V is None else V).mT
            out["rel_error"][t] = torch.linalg.matrix_norm(M - truth) / t_norm
        loss, gU, gV = sensing_loss_and_grads(op, y, U, V, weights)
        out["loss"][t] = loss
        if t == steps:
            break
        sq = gU.square().sum((-1, -2))
        U = U - mu * gU
        if V is not None and gV is not None:
            sq = sq + gV.square().sum((-1, -2))
            V = V - mu * gV
        out["grad_sq"][t] = sq
    out["U"] = U
    if U_rec:
        out["U_rec"] = torch.stack(U_rec)
    if V is not None:
        out["V"] = V
        if V_rec:
            out["V_rec"] = torch.stack(V_rec)
    return out

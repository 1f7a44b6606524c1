"""The optimum ``L*`` of l_p regression to high precision, so curves can show ``L - L*``.

    L(W) = mean_{i, c} |x_i . w_c - y_ic|^p / p       (W of shape (m, d), rows w_c)

is convex for ``p >= 1`` and separable over the output columns ``c``.  For ``p = 2`` the minimizer
is the least-squares solution; otherwise Newton's method with a backtracking (Armijo) line search
on each column, in float64 (stopping on a tiny Newton decrement or when the line search finds no
decrease left in float64), with gradient ``X^T psi(r) / b`` and Hessian
``(p - 1) X^T diag(|r|^(p-2)) X / b``, started from least squares (Boyd & Vandenberghe 2004, 9.5).
"""

from __future__ import annotations

import torch
from torch import Tensor

from overparam import _validate
from overparam.core.losses import lp_residual_gradient


def _column_objective(X: Tensor, y: Tensor, w: Tensor, p: float) -> Tensor:
    return (X @ w - y).abs().pow(p).mean() / p


def _newton_column(X: Tensor, y: Tensor, p: float, max_iter: int, tol: float) -> tuple[Tensor, int]:
    b, d = X.shape
    w = torch.linalg.lstsq(X, y.unsqueeze(-1)).solution.squeeze(-1)
    eye = torch.eye(d, dtype=X.dtype)
    for it in range(max_iter):
        r = X @ w - y
        g = X.mT @ lp_residual_gradient(r, p) / b
        curv = (p - 1.0) * r.abs().pow(p - 2.0)
        H = (X.mT * curv) @ X / b
        ridge = 1e-14 * float(H.diagonal().abs().max().clamp_min(1e-300))
        step = -torch.linalg.solve(H + ridge * eye, g)
        decrement = float(-(g @ step))  # Newton decrement squared: the predicted decrease x 2
        f = _column_objective(X, y, w, p)
        if decrement <= tol * max(float(f), 1e-300):
            return w, it
        t = 1.0
        while _column_objective(X, y, w + t * step, p) > f - 0.25 * t * decrement:
            t *= 0.5
            if t < 1e-12:  # no decrease left in float64: w is optimal to rounding
                return w, it
        w = w + t * step
    return w, max_iter


def lp_optimum(
    X: Tensor, Y: Tensor, p: float, max_iter: int = 200, tol: float = 1e-20
) -> tuple[Tensor, float]:
    """Minimizer ``W*`` (shape ``(m, d)``) and minimum ``L*`` of ``lp_loss(X W^T, Y, p)``.

    Args:
        X: inputs ``(b, d)``.
        Y: targets ``(b,)`` or ``(b, m)``.
        p: exponent ``>= 1``; ``p = 2`` uses least squares, ``p > 1`` Newton with line search
            (``p = 1`` is not smooth: rejected).
        max_iter: Newton iterations per output column.
        tol: stop when the squared Newton decrement is below ``tol * L`` (relative).

    Returns:
        ``(W*, L*)`` in float64.

    Example:
        >>> X = torch.randn(50, 3, dtype=torch.float64); y = X @ torch.ones(3)
        >>> round(lp_optimum(X, y, 4.0)[1], 12)
        0.0
    """
    _validate.floating(X, "X", min_dim=2)
    _validate.floating(Y, "Y", min_dim=1)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p > 1:
        raise ValueError(f"`p` must be a real number > 1, got {p!r}")
    Xd = X.double()
    Yd = (Y.unsqueeze(-1) if Y.dim() == 1 else Y).double()
    if Xd.dim() != 2 or Yd.shape[0] != Xd.shape[0]:
        raise ValueError(
            f"`X` must be (b, d) and `Y` (b,) or (b, m) with the same b, got {tuple(X.shape)} "
            f"and {tuple(Y.shape)}"
        )
    if p == 2.0:
        W = torch.linalg.lstsq(Xd, Yd).solution.mT
    else:
        W = torch.stack(
            [_newton_column(Xd, Yd[:, c], float(p), max_iter, tol)[0] for c in range(Yd.shape[1])]
        )
    loss = (Xd @ W.mT - Yd).abs().pow(p).mean() / p
    return W, float(loss)

"""The optimum ``L*`` of l_p regression to high precision, so curves can show ``L - L*``.

    L(W) = mean_{i, c} |x_i . w_c - y_ic|^p / p       (W of shape (m, d), rows w_c)

is convex for ``p >= 1`` and separable over the output columns ``c``.  For ``p = 2`` the minimizer
is the least-squares solution; otherwise Newton's method with a backtracking (Armijo) line search
on each column, in float64 (stopping on a tiny Newton decrement or when the line search finds no
decrease left in float64), with gradient ``X^T psi(r) / b`` and Hessian
``(p - 1) X^T diag(|r|^(p-2)) X / b``, started from least squares (Boyd & Vandenberghe 2004, 9.5).

Each iteration works with the residual scaled to ``max |r| = 1``: gradient and Hessian are
homogeneous of degrees ``p - 1`` and ``p - 2`` in ``r``, so the Newton step is unchanged and
neither underflows when the fit is nearly exact.  An exact fit (every least-squares residual at
the rounding level of ``X w`` and ``y`` in the inputs' precision) has ``L* = 0``; Newton is not run there, since its
Hessian vanishes at the minimizer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from overparam import _validate
from overparam.core.losses import lp_residual_gradient


def _scaled_objective(r: Tensor, scale: float, p: float) -> Tensor:
    """``mean(|r / scale|^p) / p``: the objective divided by ``scale^p``."""
    return (r / scale).abs().pow(p).mean() / p


def _exact_fit(X: Tensor, Y: Tensor, W: Tensor, eps: float) -> Tensor:
    """Columns whose residuals all lie within ``d * eps * (|X| |w| + |y|)``, the rounding of
    ``X w - y`` in the data's precision ``eps``: shape ``(m,)``."""
    bound = X.shape[1] * eps * (X.abs() @ W.abs().mT + Y.abs())
    return ((X @ W.mT - Y).abs() <= bound).all(dim=0)


def _newton_column(
    X: Tensor, y: Tensor, w: Tensor, p: float, max_iter: int, tol: float
) -> tuple[Tensor, int]:
    """Newton with an Armijo line search from ``w`` on one output column."""
    b, d = X.shape
    eye = torch.eye(d, dtype=X.dtype)
    for it in range(max_iter):
        r = X @ w - y
        scale = float(r.abs().max())
        if scale == 0.0:
            return w, it
        rs = r / scale  # g and H below are those of L / scale^p, and the Newton step is exact
        g = X.mT @ lp_residual_gradient(rs, p) / b
        H = (X.mT * ((p - 1.0) * rs.abs().pow(p - 2.0))) @ X / b
        ridge = 1e-14 * float(H.diagonal().abs().max().clamp_min(1e-300))
        step = -scale * torch.linalg.solve(H + ridge * eye, g)
        decrement = float(-(g @ step)) / scale  # squared Newton decrement / scale^p
        f = float(_scaled_objective(r, scale, p))
        if not torch.isfinite(step).all() or decrement <= tol * max(f, 1e-300):
            return w, it
        t, Xs = 1.0, X @ step
        while not float(_scaled_objective(r + t * Xs, scale, p)) <= f - 0.25 * t * decrement:
            t *= 0.5
            if t < 1e-12:  # no decrease left in float64: w is optimal to rounding
                return w, it
        w = w + t * step
    return w, max_iter


def _check_arguments(X: Tensor, Y: Tensor, p: float, max_iter: int, tol: float) -> None:
    _validate.floating(X, "X", min_dim=2)
    _validate.floating(Y, "Y", min_dim=1)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 1 < p < math.inf:
        raise ValueError(f"`p` must be a finite real number > 1, got {p!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"`max_iter` must be an integer >= 1, got {max_iter!r}")
    _validate.positive(tol, "tol")
    if X.dim() != 2 or Y.dim() > 2 or Y.shape[0] != X.shape[0]:
        raise ValueError(
            f"`X` must be (b, d) and `Y` (b,) or (b, m) with the same b, got {tuple(X.shape)} "
            f"and {tuple(Y.shape)}"
        )
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(
            f"`X` must have at least one row and one column, got shape {tuple(X.shape)}"
        )


def lp_optimum(
    X: Tensor, Y: Tensor, p: float, max_iter: int = 200, tol: float = 1e-20
) -> tuple[Tensor, float]:
    """Minimizer ``W*`` (shape ``(m, d)``) and minimum ``L*`` of ``lp_loss(X W^T, Y, p)``.

    Args:
        X: inputs ``(b, d)``.
        Y: targets ``(b,)`` or ``(b, m)``.
        p: exponent ``> 1``; ``p = 2`` uses least squares, otherwise Newton with line search
            (``p = 1`` is not smooth: rejected).
        max_iter: Newton iterations per output column.
        tol: stop when the squared Newton decrement is below ``tol * L`` (relative).

    Returns:
        ``(W*, L*)`` in float64.  A column fit exactly by least squares (every residual within
        the rounding ``d * eps * (|X| |w| + |y|)`` of the inputs' dtype) contributes 0 to
        ``L*``, so noise-free data give ``L* = 0.0``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(50, 3, generator=g, dtype=torch.float64)
        >>> W, L = lp_optimum(X, X @ torch.ones(3, dtype=torch.float64), 4.0)
        >>> L, W.round(decimals=12).tolist()
        (0.0, [[1.0, 1.0, 1.0]])
    """
    _check_arguments(X, Y, p, max_iter, tol)
    Xd = X.double()
    Yd = (Y.unsqueeze(-1) if Y.dim() == 1 else Y).double()
    W = torch.linalg.lstsq(Xd, Yd).solution.mT
    eps = max(torch.finfo(X.dtype).eps, torch.finfo(Y.dtype).eps)
    exact = _exact_fit(Xd, Yd, W, eps)
    if p != 2.0:
        columns = [
            w if bool(done) else _newton_column(Xd, Yd[:, c], w, float(p), max_iter, tol)[0]
            for c, (w, done) in enumerate(zip(W, exact, strict=True))
        ]
        W = torch.stack(columns)
    residual = torch.where(exact, torch.zeros_like(Yd), Xd @ W.mT - Yd)
    return W, float(residual.abs().pow(p).mean() / p)

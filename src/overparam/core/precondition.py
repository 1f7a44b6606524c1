"""The end-to-end preconditioner of deep linear networks (Arora, Cohen & Hazan 2018, Theorem 1).

For ``W`` of shape ``(m, n)`` and depth ``N``

    A_{N,W}(G) = sum_{j=1..N} (W W^T)^((N-j)/N) G (W^T W)^((j-1)/N).

In the singular coordinates of ``W = U diag(s) V^T`` the operator is diagonal: the entry ``(i, k)``
of ``U^T G V`` is multiplied by

    a(s_i, s_k) = sum_{j=1..N} s_i^(2(N-j)/N) s_k^(2(j-1)/N) = (s_i^2 - s_k^2) / (s_i^(2/N) - s_k^(2/N)),

a geometric series.  Directions outside the row or column space of ``W`` are singular directions
with singular value 0 and the convention ``0^0 = 1``.  One SVD per call; no fractional matrix
power is ever formed.  The closed form also defines the operator for real-valued depth ``N >= 1``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from overparam import _validate


def precondition_coefficients(s_row: Tensor, s_col: Tensor, depth: float) -> Tensor:
    """Return ``a(s_row, s_col) = sum_{j=1..N} s_row^(2(N-j)/N) s_col^(2(j-1)/N)`` elementwise.

    Integer depth: the sum itself (positive terms, so no cancellation).  Real depth (or N > 64):
    :func:`geometric_closed_form`, accurate for equal and nearly equal values.
    ``0^0 = 1``: for ``N = 1`` every coefficient is 1; for ``N > 1`` two zeros give 0.

    Args:
        s_row: non-negative singular values (broadcastable with ``s_col``).
        s_col: non-negative singular values.
        depth: the depth ``N >= 1`` (real values allowed).

    Returns:
        The broadcast tensor of coefficients.
    """
    n = float(depth)
    if n == int(n) and n <= 64:
        x, y = s_row.pow(2.0 / n), s_col.pow(2.0 / n)
        return sum((x.pow(n - j) * y.pow(j - 1.0) for j in range(1, int(n) + 1)), torch.zeros(()))
    return geometric_closed_form(s_row, s_col, n)


def geometric_closed_form(s_row: Tensor, s_col: Tensor, depth: float) -> Tensor:
    """``(s_row^2 - s_col^2) / (s_row^(2/N) - s_col^(2/N))`` without cancellation, any real N >= 1.

    Evaluated as ``hi^(2(N-1)/N) * expm1(N u) / expm1(u)`` with ``hi = max``, ``lo = min`` and
    ``u = (2/N) log1p((lo - hi) / hi) <= 0``; the limit ``N hi^(2(N-1)/N)`` at equality.
    """
    n = float(depth)
    hi = torch.maximum(s_row, s_col)
    lo = torch.minimum(s_row, s_col)
    lead = hi.pow(2.0 * (n - 1.0) / n)
    positive = hi > 0
    hi_safe = torch.where(positive, hi, torch.ones_like(hi))
    u = (2.0 / n) * torch.log1p((lo - hi) / hi_safe)
    equal = u == 0
    u_safe = torch.where(equal, -torch.ones_like(u), u)
    ratio = torch.expm1(n * u_safe) / torch.expm1(u_safe)
    ratio = torch.where(equal, torch.full_like(ratio, n), ratio)
    ratio = torch.where(positive, ratio, torch.ones_like(ratio))
    return lead * ratio


def _singular_coefficients(s: Tensor, depth: float) -> Tensor:
    """The ``(r, r)`` coefficient matrix for singular values ``s`` (shape ``(..., r)``).

    For integer depth it is ``P Q^T`` with ``P[:, j] = x^(N-j)``, ``Q[:, j] = x^(j-1)`` and
    ``x = s^(2/N)``: a matrix product of inner size ``N``, with no transcendental per entry.
    """
    n = float(depth)
    if n != int(n) or n > 64:
        return geometric_closed_form(s.unsqueeze(-1), s.unsqueeze(-2), n)
    x = s.pow(2.0 / n).unsqueeze(-1)
    j = torch.arange(1, int(n) + 1, dtype=s.dtype, device=s.device)
    return x.pow(n - j) @ x.pow(j - 1.0).mT


def _check_pair(W: Tensor, G: Tensor, name_w: str, name_g: str, depth: float) -> float:
    _validate.floating(W, name_w, min_dim=2)
    _validate.floating(G, name_g, min_dim=2)
    _validate.same_shape(W, G, name_w, name_g)
    return _validate.depth(depth)


def _apply(W: Tensor, G: Tensor, depth: float, inverse: bool) -> Tensor:
    """Multiply (or divide) ``G`` in the singular coordinates of ``W`` by the coefficients."""
    m, n = W.shape[-2], W.shape[-1]
    U, s, Vh = torch.linalg.svd(W, full_matrices=False)
    if inverse:
        _check_full_rank(s, m, n, W.dtype)
    else:
        s = _drop_rounding(s, m, n, W.dtype)
    a = _singular_coefficients(s, depth)
    c = s.pow(2.0 * (depth - 1.0) / depth)  # coefficient between a zero and a nonzero direction
    if inverse:
        a, c = a.reciprocal(), c.reciprocal()
    V = Vh.mT
    if m >= n:
        GV = G @ V
        core = U.mT @ GV
        out = U @ (a * core)
        if m > n:  # the left null space of W: (G V - U core) diag(c)
            out = out + (GV - U @ core) * c.unsqueeze(-2)
        return out @ Vh
    UG = U.mT @ G
    core = UG @ V
    out = (a * core) @ Vh + c.unsqueeze(-1) * (UG - core @ Vh)  # right null space of W
    return U @ out


def _apply_lopsided(W: Tensor, G: Tensor, depth: float) -> Tensor:
    """``A_{N,W}(G)`` of a wide ``W`` (``m < n``) from a QR of ``W^T`` and an ``m x m`` SVD.

    With ``W^T = Q R`` (reduced QR) and ``R^T = U diag(s) V_R^T``, ``W = U diag(s) (Q V_R)^T``.
    The operator is orthogonally equivariant, ``A_{N,WO}(GO) = A_{N,W}(G) O`` with
    ``O = [Q, Q_perp]``, and on ``W O = [R^T, 0]`` it acts blockwise, so exactly for any rank

        A_{N,W}(G) = U ((a_ik - c_i) * (U^T G Q V_R)_ik) V_R^T Q^T + M G,

    ``c_i = s_i^(2(N-1)/N)`` (the coefficient towards the null space), ``M = U diag(c) U^T``.
    Three ``m x m x n`` products instead of the five of the plain path, and an ``m x m`` SVD.
    """
    m, n = W.shape[-2], W.shape[-1]
    Q, R = torch.linalg.qr(W.mT)
    U, s, VRh = torch.linalg.svd(R.mT)
    s = _drop_rounding(s, m, n, W.dtype)
    a = _singular_coefficients(s, depth)
    c = s.pow(2.0 * (depth - 1.0) / depth)
    core = U.mT @ (G @ Q) @ VRh.mT
    inner = U @ ((a - c.unsqueeze(-1)) * core) @ VRh
    return inner @ Q.mT + (U * c.unsqueeze(-2)) @ (U.mT @ G)


def _drop_rounding(s: Tensor, m: int, n: int, dtype: torch.dtype) -> Tensor:
    """Zero the singular values below ``max(m, n) * eps * s_max``: they are rounding noise of an
    exact zero, and ``s^(2/N)`` would turn that noise into an O(eps^(1/N)) error."""
    tol = max(m, n) * torch.finfo(dtype).eps * s[..., :1]
    return torch.where(s > tol, s, torch.zeros_like(s))


def _check_full_rank(s: Tensor, m: int, n: int, dtype: torch.dtype) -> None:
    tol = max(m, n) * torch.finfo(dtype).eps
    top = s[..., :1].clamp_min(torch.finfo(dtype).tiny)
    relative = (s[..., -1:] / top).min()
    if bool(relative <= tol):
        raise ValueError(
            f"`W` must have full rank min(m, n) = {min(m, n)} to invert the preconditioner "
            f"(depth > 1); got smallest/largest singular value ratio {float(relative):.3e} "
            f"<= {tol:.3e}"
        )


def precondition(W: Tensor, G: Tensor, depth: float) -> Tensor:
    """End-to-end preconditioner ``A_{N,W}(G) = sum_j (W W^T)^((N-j)/N) G (W^T W)^((j-1)/N)``.

    Exact for any shape and rank (``0^0 = 1`` on null spaces), batched over leading dimensions.
    One SVD of ``W``; when one side exceeds 1.25x the other, a QR of the long side first and an
    SVD of the short square (a 512 x 3136 layer: ~3x faster on CPU).
    Singular values below ``max(m, n) * eps * s_max`` are taken as exact zeros (rounding noise).
    Gradient descent on the factors of a balanced depth-``N`` linear network moves the end-to-end
    matrix by ``-eta * precondition(W, grad, N)`` to first order in ``eta``.

    Args:
        W: end-to-end matrix, shape ``(..., m, n)``, float32 or float64.
        G: direction (usually the gradient ``dL/dW``), same shape and dtype as ``W``.
        depth: the depth ``N >= 1``; real values use the closed form of the geometric series.

    Returns:
        ``A_{N,W}(G)``, shape ``(..., m, n)``.

    Example:
        >>> W = torch.randn(3, 5, dtype=torch.float64)
        >>> precondition(W, torch.ones_like(W), depth=2).shape
        torch.Size([3, 5])

    Reference: Arora, Cohen & Hazan, "On the optimization of deep networks: implicit acceleration
    by overparameterization", ICML 2018, Theorem 1.
    """
    n = _check_pair(W, G, "W", "G", depth)
    if n == 1.0:
        return G.clone()
    rows, cols = W.shape[-2], W.shape[-1]
    if 4 * cols > 5 * rows:  # lopsided: QR first (the costs cross at an aspect ratio ~1.25)
        return _apply_lopsided(W, G, n)
    if 4 * rows > 5 * cols:
        return _apply_lopsided(W.mT, G.mT, n).mT
    return _apply(W, G, n, inverse=False)


def precondition_inverse(W: Tensor, Z: Tensor, depth: float) -> Tensor:
    """Inverse operator ``A_{N,W}^{-1}(Z)``; requires ``W`` of full rank ``min(m, n)`` when N > 1.

    Args:
        W: end-to-end matrix, shape ``(..., m, n)``.
        Z: matrix to map, same shape and dtype as ``W``.
        depth: the depth ``N >= 1``.

    Returns:
        ``G`` with ``precondition(W, G, depth) == Z``.

    Raises:
        ValueError: if ``W`` is numerically rank deficient (smallest/largest singular value
            ratio below ``max(m, n) * eps``) and ``depth > 1``.
    """
    n = _check_pair(W, Z, "W", "Z", depth)
    if n == 1.0:
        return Z.clone()
    return _apply(W, Z, n, inverse=True)


def metric(W: Tensor, Z1: Tensor, Z2: Tensor, depth: float) -> Tensor:
    """Riemannian metric ``g^N_W(Z1, Z2) = Tr(Z1^T A_{N,W}^{-1}(Z2))`` (lecture notes, seed 000).

    Under this metric the end-to-end dynamics of Theorem 1 are the Riemannian gradient flow of
    the loss.  Requires ``W`` of full rank when ``depth > 1``.

    Returns:
        A tensor of shape ``W.shape[:-2]``.
    """
    inverse = precondition_inverse(W, Z2, depth)
    _validate.floating(Z1, "Z1", min_dim=2)
    _validate.same_shape(W, Z1, "W", "Z1")
    return (Z1 * inverse).sum(dim=(-2, -1))


def single_output_precondition(w: Tensor, g: Tensor, depth: float) -> Tensor:
    """Single-output closed form ``||w||^(2-2/N) (g + (N-1) (w.g / ||w||^2) w)`` (Claim 2).

    Equal to ``precondition(w[None, :], g[None, :], N)[0]``: an adaptive learning rate
    ``||w||^(2-2/N)`` plus an amplified step ``(N-1)`` along the current direction of ``w``.
    At ``w = 0`` the value is its limit: ``g`` for ``N = 1`` and ``0`` for ``N > 1``.

    Args:
        w: end-to-end vector, shape ``(..., d)``.
        g: gradient, same shape and dtype.
        depth: the depth ``N >= 1``.
    """
    _validate.floating(w, "w", min_dim=1)
    _validate.floating(g, "g", min_dim=1)
    _validate.same_shape(w, g, "w", "g")
    n = _validate.depth(depth)
    if n == 1.0:
        return g.clone()
    sq = (w * w).sum(dim=-1, keepdim=True)
    nonzero = sq > 0
    sq_safe = torch.where(nonzero, sq, torch.ones_like(sq))
    along = (w * g).sum(dim=-1, keepdim=True) / sq_safe
    out = sq.pow(1.0 - 1.0 / n) * (g + (n - 1.0) * along * w)
    return torch.where(nonzero, out, torch.zeros_like(out))

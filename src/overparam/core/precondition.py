"""The end-to-end preconditioner of deep linear networks (Arora, Cohen & Hazan 2018, Theorem 1).

For ``W`` of shape ``(m, n)`` and depth ``N``

    A_{N,W}(G) = sum_{j=1..N} (W W^T)^((N-j)/N) G (W^T W)^((j-1)/N).

In the singular coordinates of ``W = U diag(s) V^T`` the operator is diagonal: the entry ``(i, k)``
of ``U^T G V`` is multiplied by

    a(s_i, s_k) = sum_{j=1..N} s_i^(2(N-j)/N) s_k^(2(j-1)/N) = (s_i^2 - s_k^2) / (s_i^(2/N) - s_k^(2/N)),

a geometric series.  Directions outside the row or column space of ``W`` are singular directions
with singular value 0 and the convention ``0^0 = 1``.  One SVD per call; no fractional matrix
power is ever formed.  The closed form also defines the operator for real-valued depth ``N >= 1``.

Inputs: float16, bfloat16 (computed in float32, returned in the input dtype), float32 or
float64; NaN or infinite entries are a ``ValueError`` naming the argument; empty matrices give
empty results.  The operator is homogeneous, ``A_{N,cW}(G) = c^(2(N-1)/N) A_{N,W}(G)``: inputs
whose largest entry lies outside ``[2^-L, 2^L]`` (``L`` an eighth of the dtype's exponent range)
are divided by powers of two first and the result scaled back, so huge or tiny matrices give
the finite (or, past the dtype's range, infinite) result instead of ``inf - inf = nan``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from overparam import _validate
from overparam.core._precondition_grad import precondition_with_grad


def _check_singular_values(s_row: Tensor, s_col: Tensor, depth: float) -> float:
    for name, x in (("s_row", s_row), ("s_col", s_col)):
        _validate.floating(x, name)
        if bool((x < 0).any()):
            raise ValueError(f"`{name}` must be non-negative singular values, got a negative entry")
    _validate.same_dtype(s_row, s_col, "s_row", "s_col")
    return _validate.depth(depth)


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
        The broadcast tensor of coefficients, in the input dtype (half precision computed in
        float32).
    """
    n = _check_singular_values(s_row, s_col, depth)
    work = _validate.compute_dtype(s_row.dtype)
    return _coefficients(s_row.to(work), s_col.to(work), n).to(s_row.dtype)


def _coefficients(s_row: Tensor, s_col: Tensor, n: float) -> Tensor:
    if n == int(n) and n <= 64:
        x, y = s_row.pow(2.0 / n), s_col.pow(2.0 / n)
        return sum((x.pow(n - j) * y.pow(j - 1.0) for j in range(1, int(n) + 1)), torch.zeros(()))
    return _geometric(s_row, s_col, n)


def geometric_closed_form(s_row: Tensor, s_col: Tensor, depth: float) -> Tensor:
    """``(s_row^2 - s_col^2) / (s_row^(2/N) - s_col^(2/N))`` without cancellation, any real N >= 1.

    Evaluated as ``hi^(2(N-1)/N) * expm1(N u) / expm1(u)`` with ``hi = max``, ``lo = min`` and
    ``u = (2/N) log1p((lo - hi) / hi) <= 0``; the limit ``N hi^(2(N-1)/N)`` at equality.
    Non-negative finite inputs of one dtype; half precision is computed in float32.
    """
    n = _check_singular_values(s_row, s_col, depth)
    work = _validate.compute_dtype(s_row.dtype)
    return _geometric(s_row.to(work), s_col.to(work), n).to(s_row.dtype)


def _geometric(s_row: Tensor, s_col: Tensor, n: float) -> Tensor:
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
        return _geometric(s.unsqueeze(-1), s.unsqueeze(-2), n)
    x = s.pow(2.0 / n).unsqueeze(-1)
    j = torch.arange(1, int(n) + 1, dtype=s.dtype, device=s.device)
    return x.pow(n - j) @ x.pow(j - 1.0).mT


def _check_pair(W: Tensor, G: Tensor, name_w: str, name_g: str, depth: float) -> float:
    _validate.floating(W, name_w, min_dim=2)
    _validate.floating(G, name_g, min_dim=2)
    _validate.same_shape(W, G, name_w, name_g)
    return _validate.depth(depth)


def _apply(W: Tensor, G: Tensor, depth: float, rtol: float | None = None) -> Tensor:
    """Multiply ``G`` in the singular coordinates of ``W`` by the coefficients, or divide by them
    when ``rtol`` is given (the inverse, after :func:`_check_conditioning`)."""
    inverse = rtol is not None
    m, n = W.shape[-2], W.shape[-1]
    U, s, Vh = torch.linalg.svd(W, full_matrices=False)
    if not inverse:
        s = _drop_rounding(s, m, n, W.dtype)
    a = _singular_coefficients(s, depth)
    c = s.pow(2.0 * (depth - 1.0) / depth)  # coefficient between a zero and a nonzero direction
    if rtol is not None:
        _check_conditioning(s, a, c, m, n, rtol)
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


def _check_conditioning(s: Tensor, a: Tensor, c: Tensor, m: int, n: int, rtol: float) -> None:
    """Raise unless the inverse is attainable to ``rtol``: ``eps * kappa <= rtol``.

    ``A_{N,W}`` is self-adjoint and positive definite with eigenvalues ``a_ik`` (and ``c_i``
    towards the null space of a non-square ``W``), so its condition number is
    ``kappa = max / min`` of them: ``(s_max / s_min)^(2(N-1)/N)``, times ``N`` when ``m != n``.
    A relative perturbation ``eps`` of the input (the rounding of ``U^T Z V`` included) moves
    ``A^{-1}(Z)`` by up to ``eps * kappa`` relative, and the divisions in singular coordinates
    attain that bound (``benchmarks/accuracy_inverse.py``: round-trip error between 0.04 and
    0.31 times ``eps * kappa`` for condition numbers 1e2 to 1e14, float32 and float64).
    """
    eps = torch.finfo(s.dtype).eps
    top = s[..., :1].clamp_min(torch.finfo(s.dtype).tiny)
    relative = float((s[..., -1:] / top).min())
    if relative <= max(m, n) * eps:
        raise ValueError(
            f"`W` must have full rank min(m, n) = {min(m, n)} to invert the preconditioner "
            f"(depth > 1); got smallest/largest singular value ratio {relative:.3e} "
            f"<= {max(m, n) * eps:.3e}"
        )
    coeffs = [a.flatten(-2)] + ([c] if m != n else [])
    both = torch.cat(coeffs, dim=-1)
    kappa = float((both.amax(dim=-1) / both.amin(dim=-1)).max())
    if eps * kappa > rtol:
        raise ValueError(
            f"`W` is too ill-conditioned to invert the preconditioner to `rtol` = {rtol:g}: "
            f"condition number {1.0 / relative:.2e} gives an operator condition number "
            f"{kappa:.2e}, attainable relative accuracy eps * kappa = {eps * kappa:.1e} in "
            f"{s.dtype} (eps {eps:.1e})"
        )


def _exponent(x: Tensor) -> Tensor:
    """Per matrix, ``e`` with ``2^(e-1) <= max |x| < 2^e`` (0 for a zero matrix), as a float."""
    top = x.detach().abs().amax(dim=(-2, -1), keepdim=True)
    e = torch.frexp(top)[1].to(x.dtype)
    return torch.where(top > 0, e, torch.zeros_like(e))


def _times_pow2(x: Tensor, e: Tensor) -> Tensor:
    """``x * 2^e`` in four factors, so that no factor overflows before the product does
    (exact when ``e`` is an integer: the factors are then integer powers of two)."""
    quarter = torch.floor(e / 4)
    rest = e - 3 * quarter
    f = torch.exp2(quarter)
    return x * f * f * f * torch.exp2(rest)


def _homogeneous(
    W: Tensor, G: Tensor, depth: float, sign: float, fn: Callable[[Tensor, Tensor], Tensor]
) -> Tensor:
    """``fn(W, G)`` for an operator ``F_W`` with ``F_{cW}(dG) = c^(sign 2(N-1)/N) d F_W(G)``.

    Inputs in a safe range go straight to ``fn``; others are divided by powers of two (exact)
    and the result scaled back."""
    limit = 2.0 ** (int(math.log2(torch.finfo(W.dtype).max)) // 8)
    tops = (_validate.extent(W, "W"), _validate.extent(G, "G"))
    if all(1.0 / limit <= t <= limit for t in tops):
        return fn(W, G)
    ew, eg = _exponent(W), _exponent(G)
    out = fn(_times_pow2(W, -ew), _times_pow2(G, -eg))
    return _times_pow2(out, eg + sign * 2.0 * (depth - 1.0) / depth * ew)


def _plain(W: Tensor, G: Tensor, n: float) -> Tensor:
    """The SVD path (QR first when lopsided), differentiable through ``torch.linalg``."""
    rows, cols = W.shape[-2], W.shape[-1]
    if 4 * cols > 5 * rows:  # lopsided: QR first (the costs cross at an aspect ratio ~1.25)
        return _apply_lopsided(W, G, n)
    if 4 * rows > 5 * cols:
        return _apply_lopsided(W.mT, G.mT, n).mT
    return _apply(W, G, n)


def _forward(W: Tensor, G: Tensor, n: float) -> Tensor:
    """``A_{N,W}(G)`` for finite, non-empty ``W``, ``G`` of a float32/float64 dtype."""
    if torch.is_grad_enabled() and (W.requires_grad or G.requires_grad):
        return precondition_with_grad(W, G, int(n) if n == int(n) and n <= 64 else n)
    return _plain(W, G, n)


def precondition(W: Tensor, G: Tensor, depth: float) -> Tensor:
    """End-to-end preconditioner ``A_{N,W}(G) = sum_j (W W^T)^((N-j)/N) G (W^T W)^((j-1)/N)``.

    Exact for any shape and rank (``0^0 = 1`` on null spaces), batched over leading dimensions.
    One SVD of ``W``; when one side exceeds 1.25x the other, a QR of the long side first and an
    SVD of the short square (a 512 x 3136 layer: ~3x faster on CPU).
    Singular values below ``max(m, n) * eps * s_max`` are taken as exact zeros (rounding noise).
    Gradient descent on the factors of a balanced depth-``N`` linear network moves the end-to-end
    matrix by ``-eta * precondition(W, grad, N)`` to first order in ``eta``.

    Differentiable in ``W`` and ``G`` with an analytic backward (Daleckii-Krein divided
    differences, see :mod:`overparam.core._precondition_grad`): finite and exact also at
    repeated singular values such as ``W = I``.  Integer depth costs a few matrix products;
    real depth a contraction with an ``r x r x r`` tensor of second divided differences.

    Args:
        W: end-to-end matrix, shape ``(..., m, n)``, float16, bfloat16, float32 or float64.
        G: direction (usually the gradient ``dL/dW``), same shape and dtype as ``W``.
        depth: the depth ``N >= 1``; real values use the closed form of the geometric series.

    Returns:
        ``A_{N,W}(G)``, shape ``(..., m, n)``, dtype of ``W`` (half precision computed in float32).

    Example:
        >>> W = torch.randn(3, 5, dtype=torch.float64)
        >>> precondition(W, torch.ones_like(W), depth=2).shape
        torch.Size([3, 5])

    Reference: Arora, Cohen & Hazan, "On the optimization of deep networks: implicit acceleration
    by overparameterization", ICML 2018, Theorem 1.
    """
    n = _check_pair(W, G, "W", "G", depth)
    if n == 1.0 or W.numel() == 0:
        return G.clone()
    work = _validate.compute_dtype(W.dtype)
    out = _homogeneous(W.to(work), G.to(work), n, 1.0, lambda w, g: _forward(w, g, n))
    return out.to(W.dtype)


def precondition_inverse(W: Tensor, Z: Tensor, depth: float, *, rtol: float = 1e-2) -> Tensor:
    """Inverse operator ``A_{N,W}^{-1}(Z)``: ``Z`` divided by the coefficients in the singular
    coordinates of ``W`` (no Gram matrix is formed, so the conditioning is not squared).

    Its accuracy is limited by the operator's condition number
    ``kappa = (s_max / s_min)^(2(N-1)/N)`` (times ``N`` for non-square ``W``): relative error up to
    ``eps * kappa`` (``eps`` of float32 for half precision, float64 for float64); past ``rtol``
    the result would carry no reliable digits and a ``ValueError`` says so.

    Args:
        W: end-to-end matrix, shape ``(..., m, n)``, of full rank ``min(m, n)`` when ``N > 1``.
        Z: matrix to map, same shape and dtype as ``W``.
        depth: the depth ``N >= 1``.
        rtol: the largest attainable relative error ``eps * kappa`` accepted (default 1e-2).

    Returns:
        ``G`` with ``precondition(W, G, depth) == Z``, dtype of ``W``.

    Raises:
        ValueError: if ``W`` is numerically rank deficient (smallest/largest singular value
            ratio below ``max(m, n) * eps``) or ``eps * kappa > rtol``, with both numbers.

    Example:
        >>> W = torch.tensor([[2.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
        >>> precondition_inverse(W, precondition(W, torch.eye(2, dtype=W.dtype), 2), 2)
        tensor([[1., 0.],
                [0., 1.]], dtype=torch.float64)
    """
    n = _check_pair(W, Z, "W", "Z", depth)
    rtol = _validate.positive(rtol, "rtol")
    if n == 1.0 or W.numel() == 0:
        return Z.clone()
    work = _validate.compute_dtype(W.dtype)
    out = _homogeneous(W.to(work), Z.to(work), n, -1.0, lambda w, z: _apply(w, z, n, rtol))
    return out.to(W.dtype)


def metric(W: Tensor, Z1: Tensor, Z2: Tensor, depth: float, *, rtol: float = 1e-2) -> Tensor:
    """Riemannian metric ``g^N_W(Z1, Z2) = Tr(Z1^T A_{N,W}^{-1}(Z2))`` (lecture notes, seed 000).

    Under this metric the end-to-end dynamics of Theorem 1 are the Riemannian gradient flow of
    the loss.  Requires ``W`` of full rank when ``depth > 1``, and ``eps * kappa <= rtol`` as
    :func:`precondition_inverse`.

    Returns:
        A tensor of shape ``W.shape[:-2]`` (dtype of ``W``; zeros for empty matrices).
    """
    _validate.floating(W, "W", min_dim=2)
    for name, Z in (("Z1", Z1), ("Z2", Z2)):
        _validate.floating(Z, name, min_dim=2)
        _validate.same_shape(W, Z, "W", name)
    inverse = precondition_inverse(W, Z2, depth, rtol=rtol)
    work = _validate.compute_dtype(W.dtype)
    return (Z1.to(work) * inverse.to(work)).sum(dim=(-2, -1)).to(W.dtype)


def single_output_precondition(w: Tensor, g: Tensor, depth: float) -> Tensor:
    """Single-output closed form ``||w||^(2-2/N) (g + (N-1) (w.g / ||w||^2) w)`` (Claim 2).

    Equal to ``precondition(w[None, :], g[None, :], N)[0]``: an adaptive learning rate
    ``||w||^(2-2/N)`` plus an amplified step ``(N-1)`` along the current direction of ``w``.
    At ``w = 0`` the value is its limit: ``g`` for ``N = 1`` and ``0`` for ``N > 1``.
    Evaluated with ``w`` divided by its largest entry, so huge or tiny ``w`` do not overflow;
    half precision is computed in float32 and returned in the input dtype.

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
    work = _validate.compute_dtype(w.dtype)
    wd, gd = w.to(work), g.to(work)
    top = wd.abs().amax(dim=-1, keepdim=True)  # w = top * u with max |u| = 1: no overflow
    nonzero = top > 0
    u = wd / torch.where(nonzero, top, torch.ones_like(top))
    sq = (u * u).sum(dim=-1, keepdim=True)
    sq_safe = torch.where(nonzero, sq, torch.ones_like(sq))
    along = (u * gd).sum(dim=-1, keepdim=True) / sq_safe
    rate = top.pow(2.0 - 2.0 / n) * sq_safe.pow(1.0 - 1.0 / n)
    out = rate * (gd + (n - 1.0) * along * u)
    return torch.where(nonzero, out, torch.zeros_like(out)).to(w.dtype)

"""The end-to-end preconditioner applied from a cached thin SVD of ``W``.

:func:`overparam.core.precondition` factorizes ``W`` at every call.  An optimizer that refreshes
the factorization only every ``k`` steps (as Shampoo and SOAP refresh their preconditioners)
needs the two halves apart: :func:`cached_factorization` returns ``W = U diag(s) V^T`` and
:func:`precondition_cached` applies

    A_{N,W}(G) = U [ ((a - c 1^T) o (U^T G V)) V^T + c o (U^T G) ]        (m <= n)

with ``a_ik = a(s_i, s_k)`` the coefficients of :func:`overparam.core.precondition_coefficients`
and ``c_i = a(s_i, 0)``, the coefficient between a singular direction and the null space
(a tall ``W`` is handled through ``A_{N,W}(G) = A_{N,W^T}(G^T)^T``).  Singular values are
floored at ``eps`` (null directions included, so ``c_i = a(s_i, eps)``): with ``eps > 0`` a zero
``W`` moves, ``A_{N,0}(G) = N eps^(2(N-1)/N) G``, as Adam's ``eps`` bounds its step.

Products are associated by cost: ``U^T G``, ``(U^T G) V``, ``(.) V^T``, ``U (.)`` (``4 m^2 n``
multiply-adds) when ``n <= 3 m``; else ``L G + U (B o (U^T (G V))) V^T`` with
``L = U diag(c) U^T`` (``3 m^2 n + 3 m^3``).  At depth 2, ``a_ik - c_i = s_k - eps`` and the
operator is ``L G + (G V) diag(s - eps) V^T`` (``3 m^2 n + m^3``) for every shape.

Factorizations (``method``), measured by ``benchmarks/bench_end_to_end.py``: ``"svd"`` (one
thin SVD), ``"qr"`` (QR of the long side, then an SVD of the ``r x r`` factor), ``"gram"``
(``eigh`` of the small Gram matrix ``W W^T`` or ``W^T W``: cheapest, but it squares the
condition number, so singular values below ``sqrt(max(m, n) eps_dtype) s_max`` are lost and
taken as zero) and ``"auto"``: ``"svd"`` when the aspect ratio is at most 1.25, else ``"gram"``
for every matrix whose condition number is at most ``GRAM_CONDITION = 30`` and ``"qr"`` for the
others.  Measured on a float32 512 x 3136 matrix, one thread (``benchmarks/bench_end_to_end.py``):
svd 237 ms, qr 96 ms, gram 44 ms; relative error of the depth-2 direction against float64
1.4e-6 to 2.4e-6 for all three up to condition number 30 and for svd/qr up to 1e3 (3.7e-4 at
1e5), but 1.6e-2 for gram from 100 on, where singular values fall below its resolution: hence
the threshold.  A refresh every ``k`` steps divides the cost by ``k``.

Between refreshes, :func:`refresh_factorization` keeps only the short side when the Gram route
is taken (it forms the long side from ``W`` anyway, ``V = W^T U diag(1/s)``), and
:func:`precondition_tracked` forms it from the current ``W`` at the time of use (never
explicitly when ``n > 2 m``: ``3 m^2 n + 3 m^3`` multiply-adds at depth 2, ``3 m^2 n + 5 m^3``
otherwise; below that ``V`` is formed, ``m^2 n`` more than :func:`precondition_cached`).  At the
refresh the two agree with the exact rule; later, the short side's basis and singular values are
frozen while the long side follows ``W``.  :func:`precondition_refreshed` applies either cache.

Reference: Arora, Cohen & Hazan, "On the optimization of deep networks: implicit acceleration
by overparameterization", ICML 2018, Theorem 1; Vyas et al., "SOAP: Improving and Stabilizing
Shampoo using Adam", 2024 (amortized refreshes of a preconditioner's basis).
"""

from __future__ import annotations

import torch
from torch import Tensor

from overparam.core.precondition import precondition_coefficients

Factorization = tuple[Tensor, Tensor, Tensor]
Refresh = tuple[Tensor | None, Tensor, Tensor | None]  # (U, s, V), the long side possibly None
METHODS = ("auto", "svd", "qr", "gram")
GRAM_CONDITION = 30.0  # "auto" keeps "gram" up to this condition number (see the module docstring)


def cached_factorization(W: Tensor, method: str = "auto") -> Factorization:
    """Thin SVD ``W = U diag(s) V^T`` of ``W`` (shape ``(..., m, n)``, ``r = min(m, n)``).

    Singular values that are rounding noise of an exact zero are set to 0 (below
    ``max(m, n) eps_dtype s_max``; for ``"gram"`` below ``sqrt(max(m, n) eps_dtype) s_max``,
    the resolution of a Gram matrix), and so are the matching columns of the long side's factor
    under ``"gram"`` (never used: a zero singular value is a null direction).

    Args:
        W: matrix, shape ``(..., m, n)``, float32 or float64.
        method: ``"auto"``, ``"svd"``, ``"qr"`` or ``"gram"`` (see the module docstring).

    Returns:
        ``(U, s, V)`` of shapes ``(..., m, r)``, ``(..., r)``, ``(..., n, r)``; ``s`` descending.
    """
    U, s, V = _oriented(W, method, track=False)
    assert U is not None and V is not None
    return U, s, V


def refresh_factorization(W: Tensor, method: str = "auto") -> Refresh:
    """:func:`cached_factorization`, with the long side left out (``None``) where the Gram
    route is taken: :func:`precondition_refreshed` then takes it from the current ``W``.

    The Gram route forms the long side from ``W`` anyway (``V = W^T U diag(1/s)``); leaving it
    to the time of use saves one ``m n r`` product per refresh and lets it follow ``W``.  The
    other routes (and ``"auto"`` on a matrix of condition number above ``GRAM_CONDITION``)
    return both sides, applied frozen.

    Returns:
        ``(U, s, V)`` as :func:`cached_factorization`'s, with ``V`` (``m <= n``) or ``U``
        (``m > n``) ``None`` under the Gram route.
    """
    return _oriented(W, method, track=True)


def _oriented(W: Tensor, method: str, track: bool) -> Refresh:
    """:func:`_factorize` of ``W`` or, for a tall ``W``, of ``W^T`` with the sides swapped."""
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    if W.shape[-2] > W.shape[-1]:
        short, s, long = _factorize(W.mT, method, track)
        return long, s, short
    short, s, long = _factorize(W, method, track)
    return short, s, long


def _factorize(W: Tensor, method: str, track: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(U, s, V)`` of a wide ``W`` (``m <= n``); ``V`` is ``None`` under the Gram route when
    ``track``."""
    m, n = W.shape[-2], W.shape[-1]
    if method == "auto":
        if 4 * n > 5 * m:
            return _checked_gram(W, track)
        method = "svd"
    eps = torch.finfo(W.dtype).eps
    if method == "svd":
        U, s, Vh = torch.linalg.svd(W, full_matrices=False)
        V = Vh.mT
    elif method == "qr":
        Q, R = torch.linalg.qr(W.mT)
        U, s, VRh = torch.linalg.svd(R.mT)
        V = Q @ VRh.mT
    else:
        e, U = torch.linalg.eigh(W @ W.mT)
        e, U = e.flip(-1), U.flip(-1)
        tol = n * eps * e[..., :1]
        s = torch.where(e > tol, e, torch.zeros_like(e)).sqrt()
        return U, s, None if track else _long_side(W, U, s)
    tol = n * eps * s[..., :1]
    return U, torch.where(s > tol, s, torch.zeros_like(s)), V


def _long_side(W: Tensor, U: Tensor, s: Tensor) -> Tensor:
    """``V = W^T U diag(1/s)`` (zero columns for ``s = 0``), from a wide ``W``'s ``U`` and ``s``."""
    return (W.mT @ U) * _inverse(s, 0.0).unsqueeze(-2)


def _inverse(s: Tensor, eps: float) -> Tensor:
    """``1 / s`` where ``s > eps``, 0 elsewhere (no inf, so no ``0 * inf``)."""
    return torch.where(s > eps, s.reciprocal(), torch.zeros_like(s))


def _checked_gram(W: Tensor, track: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """``"gram"`` for every matrix whose singular values all lie within ``GRAM_CONDITION`` of the
    largest (full rank), ``"qr"`` for the others (``m <= n``; a stack with both gets both
    sides for all)."""
    U, s, V = _factorize(W, "gram", track)
    good = (s[..., -1] > 0) & (GRAM_CONDITION * s[..., -1] >= s[..., 0])
    if bool(good.all()):
        return U, s, V
    if W.dim() == 2:
        return _factorize(W, "qr", track)
    redo = ~good
    V = _long_side(W, U, s) if V is None else V.clone()
    U, s = U.clone(), s.clone()
    U[redo], s[redo], V[redo] = _factorize(W[redo], "qr", False)  # type: ignore[assignment]
    return U, s, V


def precondition_cached(
    U: Tensor, s: Tensor, V: Tensor, G: Tensor, depth: float, eps: float = 0.0
) -> Tensor:
    """``A_{N,W}(G)`` for ``W = U diag(s) V^T`` (a :func:`cached_factorization`), ``s`` floored.

    With the factorization of the current ``W`` and ``eps = 0`` this is
    :func:`overparam.core.precondition` (the exact rule of Arora, Cohen & Hazan 2018, Theorem 1);
    with an older one it is the amortized rule: basis, singular values and coefficients all
    frozen at the refresh.

    Args:
        U: left singular vectors, ``(..., m, r)``.
        s: singular values, ``(..., r)`` (non-negative).
        V: right singular vectors, ``(..., n, r)``.
        G: the direction, ``(..., m, n)``, dtype of ``U``.
        depth: ``N >= 1``.
        eps: floor on every singular value, null directions included (``>= 0``).

    Returns:
        The preconditioned direction, shape of ``G``.
    """
    m, n = G.shape[-2], G.shape[-1]
    if m > n:
        return precondition_cached(V, s, U, G.mT, depth, eps).mT
    s = s.clamp_min(eps)
    c = precondition_coefficients(s, torch.full_like(s, eps), depth)
    if float(depth) == 2.0:  # a_ik - c_i = s_k - eps: B o X = X diag(s - eps), and U U^T = I
        K = (G @ V) * (s - eps).unsqueeze(-2)
        return _add_product(((U * c.unsqueeze(-2)) @ U.mT) @ G, K, V.mT)
    a = precondition_coefficients(s.unsqueeze(-1), s.unsqueeze(-2), depth)
    B = a - c.unsqueeze(-1)
    if n <= 3 * m:
        P = U.mT @ G
        return U @ _add_product(c.unsqueeze(-1) * P, B * (P @ V), V.mT)
    left = (U * c.unsqueeze(-2)) @ U.mT
    return _add_product(left @ G, U @ (B * (U.mT @ (G @ V))), V.mT)


def _add_product(C: Tensor, A: Tensor, B: Tensor) -> Tensor:
    """``C + A @ B``, fused into the product (``baddbmm``) for stacked 3-D operands."""
    if C.dim() == A.dim() == B.dim() == 3:
        return torch.baddbmm(C, A, B)
    return C + A @ B


def precondition_tracked(
    basis: Tensor, s: Tensor, W: Tensor, G: Tensor, depth: float, eps: float = 0.0
) -> Tensor:
    """``A_{N,W}(G)`` from the short side's ``(basis, s)`` of a refresh and the current ``W``.

    For ``m <= n`` the cache holds ``U`` and ``s``; the long side's singular vectors are taken
    from the current weight, ``V = W^T U diag(s)^-1`` (columns with ``s <= eps`` are null
    directions and get the floor's coefficient), and the operator is
    :func:`precondition_cached` ``(U, s, V, G)``.  With the factorization of the current ``W``
    this is the exact rule; with an older one the short side's basis and singular values are
    frozen while ``V`` follows ``W`` (a weight that only rotated on its long side gets the
    exact operator).  ``m > n``: the same for ``W^T``, with ``basis = V``.

    ``V`` is never formed when ``n > 2 m``: ``G V = (G W^T) U diag(1/s)`` and
    ``K V^T = (K diag(1/s) U^T) W`` (see :func:`application_multiply_adds`).

    Args:
        basis: ``U`` (``(..., m, r)``) for ``m <= n``, else ``V`` (``(..., n, r)``)
            (:func:`small_side_factorization`).
        s: singular values, ``(..., r)``.
        W: the current matrix, ``(..., m, n)``.
        G: the direction, ``(..., m, n)``.
        depth: ``N >= 1``.
        eps: floor on every singular value, null directions included (``>= 0``).

    Returns:
        The preconditioned direction, shape of ``G``.
    """
    m, n = G.shape[-2], G.shape[-1]
    if m > n:
        return precondition_tracked(basis, s, W.mT, G.mT, depth, eps).mT
    U, inv = basis, _inverse(s, eps).unsqueeze(-2)
    if n <= 2 * m:
        return precondition_cached(U, s, (W.mT @ U) * inv, G, depth, eps)
    floored = s.clamp_min(eps)
    c = precondition_coefficients(floored, torch.full_like(floored, eps), depth)
    GV = ((G @ W.mT) @ U) * inv
    if float(depth) == 2.0:  # as in precondition_cached: B o X = X diag(s - eps)
        K = GV * (floored - eps).unsqueeze(-2)
    else:
        a = precondition_coefficients(floored.unsqueeze(-1), floored.unsqueeze(-2), depth)
        K = U @ ((a - c.unsqueeze(-1)) * (U.mT @ GV))
    left = (U * c.unsqueeze(-2)) @ U.mT
    return _add_product(left @ G, (K * inv) @ U.mT, W)


def application_multiply_adds(m: int, n: int, depth: float, tracked: bool = False) -> int:
    """Multiply-adds of one :func:`precondition_cached` call on an ``m x n`` matrix, or of
    :func:`precondition_tracked` (``tracked``)."""
    r, k = min(m, n), max(m, n)
    if tracked and k > 2 * r:
        return 3 * r * r * k + (3 if float(depth) == 2.0 else 5) * r**3
    if float(depth) == 2.0:
        cached = 3 * r * r * k + r**3
    else:
        cached = 4 * r * r * k if k <= 3 * r else 3 * r * r * k + 3 * r**3
    return cached + (r * r * k if tracked else 0)


def precondition_refreshed(
    factors: Refresh, W: Tensor, G: Tensor, depth: float, eps: float = 0.0
) -> Tensor:
    """``A_{N,W}(G)`` from a :func:`refresh_factorization`: :func:`precondition_cached` when
    both sides were stored, :func:`precondition_tracked` with the current ``W`` when the long
    side was left out."""
    U, s, V = factors
    if U is not None and V is not None:
        return precondition_cached(U, s, V, G, depth, eps)
    basis = U if W.shape[-2] <= W.shape[-1] else V
    assert basis is not None
    return precondition_tracked(basis, s, W, G, depth, eps)

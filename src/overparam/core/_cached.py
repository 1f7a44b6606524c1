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

Reference: Arora, Cohen & Hazan, "On the optimization of deep networks: implicit acceleration
by overparameterization", ICML 2018, Theorem 1; Vyas et al., "SOAP: Improving and Stabilizing
Shampoo using Adam", 2024 (amortized refreshes of a preconditioner's basis).
"""

from __future__ import annotations

import torch
from torch import Tensor

from overparam.core.precondition import precondition_coefficients

Factorization = tuple[Tensor, Tensor, Tensor]
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
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    m, n = W.shape[-2], W.shape[-1]
    if m > n:
        V, s, U = cached_factorization(W.mT, method)
        return U, s, V
    if method == "auto":
        if 4 * n > 5 * m:
            return _checked_gram(W)
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
        inv = torch.where(s > 0, s.reciprocal(), torch.zeros_like(s))
        return U, s, (W.mT @ U) * inv.unsqueeze(-2)
    tol = n * eps * s[..., :1]
    return U, torch.where(s > tol, s, torch.zeros_like(s)), V


def _checked_gram(W: Tensor) -> Factorization:
    """``"gram"`` for every matrix whose singular values all lie within ``GRAM_CONDITION`` of the
    largest (full rank), ``"qr"`` for the others (``m <= n``)."""
    U, s, V = cached_factorization(W, "gram")
    good = (s[..., -1] > 0) & (GRAM_CONDITION * s[..., -1] >= s[..., 0])
    if bool(good.all()):
        return U, s, V
    if W.dim() == 2:
        return cached_factorization(W, "qr")
    redo = ~good
    U, s, V = U.clone(), s.clone(), V.clone()
    U[redo], s[redo], V[redo] = cached_factorization(W[redo], "qr")
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


def application_multiply_adds(m: int, n: int, depth: float) -> int:
    """Multiply-adds of one :func:`precondition_cached` call on an ``m x n`` matrix."""
    r, k = min(m, n), max(m, n)
    if float(depth) == 2.0:
        return 3 * r * r * k + r**3
    return 4 * r * r * k if k <= 3 * r else 3 * r * r * k + 3 * r**3


def precondition_low_rank(
    U: Tensor, s: Tensor, V: Tensor, left: Tensor, right: Tensor, depth: int, eps: float = 0.0
) -> Tensor:
    """``A_{N,W}(G)`` for a gradient given as the product ``G = left^T right`` (integer ``N``).

    A layer's weight gradient over ``B`` input rows is ``G = Delta^T X`` (``Delta`` the output
    gradients, ``X`` the inputs: rank at most ``B``).  Term by term,

        A_{N,W}(G) = sum_j P_j Delta^T X Q_j = L^T R,
        L = [Delta P_1; ...; Delta P_N],   R = [X Q_1; ...; X Q_N],

    with ``P_j = (W W^T)^((N-j)/N)`` and ``Q_j = (W^T W)^((j-1)/N)`` for the floored ``W`` of
    :func:`precondition_cached` (singular values ``max(s, eps)``, null directions ``eps``):
    ``X Q = (X V) diag(max(s, eps)^q - eps^q) V^T + eps^q X``.  Cost ``N B (r (m + n) + m n)``
    multiply-adds (:func:`low_rank_multiply_adds`) instead of :func:`application_multiply_adds`
    on the dense ``G``: far less when ``B`` is small against ``m`` and ``n``.

    Args:
        U, s, V: the factorization (:func:`cached_factorization`), ``(..., m, r)``, ``(..., r)``,
            ``(..., n, r)``.
        left: ``Delta``, ``(..., B, m)``.
        right: ``X``, ``(..., B, n)``.
        depth: integer ``N >= 1``.
        eps: the floor on the singular values (``>= 0``).

    Returns:
        The direction, ``(..., m, n)``: :func:`precondition_cached` of ``left^T right``.
    """
    L, R = low_rank_factors(U, s, V, left, right, depth, eps)
    return L.mT @ R


def low_rank_factors(
    U: Tensor, s: Tensor, V: Tensor, left: Tensor, right: Tensor, depth: int, eps: float = 0.0
) -> tuple[Tensor, Tensor]:
    """``(L, R)`` of :func:`precondition_low_rank`, ``(..., N B, m)`` and ``(..., N B, n)``:
    the direction is ``L^T R``, left unformed (an optimizer adds it into its buffer)."""
    n = int(depth)
    s = s.clamp_min(eps)
    left_basis, right_basis = left @ U, right @ V
    lefts = [_power_rows(left, left_basis, U, s, eps, 2.0 * (n - j) / n) for j in range(1, n + 1)]
    rights = [
        _power_rows(right, right_basis, V, s, eps, 2.0 * (j - 1) / n) for j in range(1, n + 1)
    ]
    return torch.cat(lefts, dim=-2), torch.cat(rights, dim=-2)


def _power_rows(X: Tensor, XV: Tensor, V: Tensor, s: Tensor, eps: float, power: float) -> Tensor:
    """``X (V diag(s^p) V^T + eps^p (I - V V^T))`` from ``XV = X V`` (``p = 0``: ``X``)."""
    if power == 0.0:
        return X
    floor = eps**power
    out = (XV * (s.pow(power) - floor).unsqueeze(-2)) @ V.mT
    return out + floor * X if floor != 0.0 else out


def low_rank_multiply_adds(m: int, n: int, rows: int, depth: int) -> int:
    """Multiply-adds of one :func:`precondition_low_rank` call (``rows`` = ``B``)."""
    return int(depth) * rows * (min(m, n) * (m + n) + m * n)

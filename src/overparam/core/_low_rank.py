"""The end-to-end preconditioner of a gradient given as a low-rank product ``G = Delta^T X``.

A layer's weight gradient over ``B`` input rows is ``G = Delta^T X`` (``Delta`` the ``B x m``
output gradients, ``X`` the ``B x n`` inputs: rank at most ``B``).  Term by term,

    A_{N,W}(G) = sum_j P_j Delta^T X Q_j = L^T R,
    L = [Delta P_1; ...; Delta P_N],   R = [X Q_1; ...; X Q_N],

with ``P_j = (W W^T)^((N-j)/N)`` and ``Q_j = (W^T W)^((j-1)/N)`` for the floored ``W`` of
:func:`overparam.core.precondition_cached` (singular values ``max(s, eps)``, null directions
``eps``): ``X Q = eps^q X + (X V) diag(max(s, eps)^q - eps^q) V^T``, and the same for
``Delta P`` with ``U``.  The direction ``L^T R`` is the dense operator's to rounding, for
``N B`` rows of products instead of products of ``m x n`` matrices.

When a refresh left the long side out (:func:`overparam.core._cached.refresh_factorization`,
``m <= n``), ``X V = (X W^T) U diag(1/s)`` and ``Z V^T = (Z diag(1/s) U^T) W`` with the current
``W``, as :func:`overparam.core._cached.precondition_tracked` does; ``X W^T`` is the layer's
output without its bias, which a caller that records it passes as ``outputs``.  A tall ``W``
is handled through ``A_{N,W}(G) = A_{N,W^T}(G^T)^T`` and ``G^T = X^T Delta``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from overparam.core._cached import Refresh, _inverse


def precondition_low_rank(
    factors: Refresh,
    W: Tensor,
    left: Tensor,
    right: Tensor,
    depth: int,
    eps: float = 0.0,
    outputs: Tensor | None = None,
) -> Tensor:
    """:func:`overparam.core._cached.precondition_refreshed` of ``G = left^T right``.

    Args:
        factors: ``(U, s, V)`` of a refresh, the long side possibly ``None``
            (:func:`overparam.core._cached.refresh_factorization`).
        W: the current matrix, ``(..., m, n)``.
        left: ``Delta``, ``(..., B, m)``.
        right: ``X``, ``(..., B, n)``.
        depth: integer ``N >= 1``.
        eps: the floor on the singular values (``>= 0``).
        outputs: optional ``right @ W^T`` (``(..., B, m)``); used when ``m <= n`` and the long
            side is left out.

    Returns:
        The direction, ``(..., m, n)``.
    """
    L, R = low_rank_factors(factors, W, left, right, depth, eps, outputs)
    return L.mT @ R


def low_rank_factors(
    factors: Refresh,
    W: Tensor,
    left: Tensor,
    right: Tensor,
    depth: int,
    eps: float = 0.0,
    outputs: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``(L, R)`` of :func:`precondition_low_rank`, ``(..., N B, m)`` and ``(..., N B, n)``:
    the direction is ``L^T R``, left unformed (an optimizer adds it into its buffer)."""
    U, s, V = factors
    if W.shape[-2] > W.shape[-1]:  # the roles swap: G^T = X^T Delta for W^T
        R, L = low_rank_factors((V, s, U), W.mT, right, left, depth, eps)
        return L, R
    assert U is not None
    N, rows = int(depth), left.shape[-2]
    floored = s.clamp_min(eps)
    left_basis = left @ U
    lefts = [_power_rows(left, left_basis, U, floored, eps, 2.0 * (N - j) / N) for j in range(1, N)]
    right_basis, expand = _long_side(U, s, V, W, right, eps, outputs)
    powers = [2.0 * (j - 1) / N for j in range(2, N + 1)]
    rights = [right]
    if powers:
        scaled = [right_basis * (floored.pow(q) - eps**q).unsqueeze(-2) for q in powers]
        expanded = expand(torch.cat(scaled, dim=-2))
        for i, q in enumerate(powers):
            rows_q = expanded[..., i * rows : (i + 1) * rows, :]
            rights.append(rows_q + eps**q * right if eps**q != 0.0 else rows_q)
    return torch.cat([*lefts, left], dim=-2), torch.cat(rights, dim=-2)


def _long_side(
    U: Tensor, s: Tensor, V: Tensor | None, W: Tensor, X: Tensor, eps: float, outputs: Tensor | None
) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """``X V`` and ``Z -> Z V^T``, from the stored ``V`` or through the current ``W``."""
    if V is not None:
        return X @ V, lambda Z: Z @ V.mT
    inv = _inverse(s, eps).unsqueeze(-2)
    image = X @ W.mT if outputs is None else outputs
    return (image @ U) * inv, lambda Z: ((Z * inv) @ U.mT) @ W


def _power_rows(X: Tensor, XV: Tensor, V: Tensor, s: Tensor, eps: float, power: float) -> Tensor:
    """``X (V diag(s^p) V^T + eps^p (I - V V^T))`` from ``XV = X V`` (``p = 0``: ``X``)."""
    if power == 0.0:
        return X
    floor = eps**power
    out = (XV * (s.pow(power) - floor).unsqueeze(-2)) @ V.mT
    return out + floor * X if floor != 0.0 else out


def low_rank_multiply_adds(
    m: int, n: int, rows: int, depth: int, tracked: bool = False, outputs: bool = True
) -> int:
    """Multiply-adds of one :func:`precondition_low_rank` call (``rows`` = ``B``).

    Stored long side: ``N B (r (m + n) + m n)``.  Long side through ``W`` (``tracked``):
    ``2 N B r^2`` on the short side, ``(2 N - 1) B m n`` on the long one, plus ``B m n`` for
    ``X W^T`` (``Delta W`` when ``m > n``) unless ``outputs`` gives it (``m <= n`` only).
    """
    r, N = min(m, n), int(depth)
    if not tracked:
        return N * rows * (r * (m + n) + m * n)
    image = 0 if outputs and m <= n else rows * m * n
    return rows * (2 * N * r * r + (2 * N - 1) * m * n) + image

"""Balanced factorizations of a matrix, the product of factors and their imbalance.

A list of factors ``[W_1, ..., W_N]`` (``W_j`` of shape ``(d_j, d_{j-1})``) is *balanced* when
``W_{j+1}^T W_{j+1} = W_j W_j^T`` for ``j = 1..N-1`` (Arora, Cohen & Hazan 2018, Definition 1).
Gradient flow preserves these differences (claim A2); balanced factors of ``W`` share the singular
values ``s^(1/N)`` of ``W`` (claim A14).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from overparam import _validate


def _check_chain(factors: Sequence[Tensor]) -> None:
    for j in range(len(factors) - 1):
        a, b = factors[j], factors[j + 1]
        if b.shape[-1] != a.shape[-2]:
            raise ValueError(
                f"`factors` must chain: W_{j + 2} has {b.shape[-1]} columns but W_{j + 1} has "
                f"{a.shape[-2]} rows"
            )


def product(factors: Iterable[Tensor]) -> Tensor:
    """End-to-end matrix ``W_N ... W_1`` of factors listed ``W_1`` first (batched over leading dims).

    ``factors`` is any iterable of matrices of one dtype whose leading (batch) dimensions
    broadcast.  The forward pass of a factorized model: plain matrix products, so NaN and inf
    propagate as in ``torch.matmul`` (the one core function that does not reject them).
    """
    if isinstance(factors, Tensor):
        raise ValueError("`factors` must be a sequence of tensors, got a Tensor")
    if isinstance(factors, (str, bytes)) or not isinstance(factors, Iterable):
        raise ValueError(f"`factors` must be a sequence of tensors, got {type(factors).__name__}")
    factors = list(factors)
    if len(factors) == 0:
        raise ValueError("`factors` must contain at least one matrix, got an empty sequence")
    for j, f in enumerate(factors):
        if not isinstance(f, Tensor) or f.dim() < 2:
            got = f"shape {tuple(f.shape)}" if isinstance(f, Tensor) else type(f).__name__
            raise ValueError(f"`factors[{j}]` must be a matrix (>= 2 dimensions), got {got}")
        _validate.same_dtype(factors[0], f, "factors[0]", f"factors[{j}]")
    _check_chain(factors)
    if any(f.dim() > 2 for f in factors):
        _validate.batch_shapes({f"factors[{j}]": f.shape[:-2] for j, f in enumerate(factors)})
    out = factors[0]
    for W in factors[1:]:
        out = W @ out
    return out


def numerical_rank(W: Tensor) -> int:
    """Largest rank over the batch, counting singular values above ``max(m, n) * eps * s_max``.

    ``eps`` is that of the dtype the SVD runs in (float32 for half-precision input).
    """
    _validate.floating(W, "W", min_dim=2)
    work = _validate.compute_dtype(W.dtype)
    s = torch.linalg.svdvals(W.to(work))
    tol = max(W.shape[-2], W.shape[-1]) * torch.finfo(work).eps * s[..., :1]
    return int((s > tol).sum(dim=-1).max()) if s.numel() else 0


def _hidden_widths(widths: int | Sequence[int] | None, depth: int, m: int, n: int) -> list[int]:
    if widths is None:
        return [min(m, n)] * (depth - 1)  # 0 for an empty W: empty factors
    if isinstance(widths, int) and not isinstance(widths, bool):
        return _validate.int_sequence([widths] * (depth - 1), "widths")
    out = _validate.int_sequence(widths, "widths")  # type: ignore[arg-type]
    if len(out) != depth - 1:
        raise ValueError(f"`widths` must have depth - 1 = {depth - 1} entries, got {len(out)}")
    return out


def balanced_factors(
    W: Tensor, depth: int, widths: int | Sequence[int] | None = None
) -> list[Tensor]:
    """Exactly balanced factors ``[W_1, ..., W_N]`` with ``W_N ... W_1 = W``.

    With ``W = U diag(s) V^T`` (keeping ``k = min(m, n, widths)`` singular directions) the factors
    are ``W_1 = E_1 S V^T``, ``W_j = E_j S E_{j-1}^T`` and ``W_N = U S E_{N-1}^T`` with
    ``S = diag(s^(1/N))`` and ``E_j`` the first ``k`` columns of the identity of size ``d_j``, so
    ``W_{j+1}^T W_{j+1} = W_j W_j^T = E_j S^2 E_j^T`` exactly.

    Args:
        W: matrix of shape ``(..., m, n)`` (``d_0 = n`` inputs, ``d_N = m`` outputs).
        depth: integer ``N >= 1``.
        widths: hidden widths ``d_1..d_{N-1}``: one int for all, a sequence, or ``None`` for
            ``min(m, n)``.  Each must be at least the numerical rank of ``W``.

    Returns:
        The list of ``N`` factors, ``W_1`` first; ``W_j`` has shape ``(..., d_j, d_{j-1})`` and
        the dtype of ``W`` (half precision is factored in float32, each factor rounded once).
    """
    _validate.floating(W, "W", min_dim=2)
    N = int(_validate.depth(depth, integer=True))
    m, n = W.shape[-2], W.shape[-1]
    hidden = _hidden_widths(widths, N, m, n)
    if N == 1:
        return [W.clone()]
    work = _validate.compute_dtype(W.dtype)
    if work != W.dtype:
        return [f.to(W.dtype) for f in balanced_factors(W.to(work), N, widths)]
    k = min([m, n, *hidden])
    rank = numerical_rank(W)
    if k < rank:
        raise ValueError(
            f"`widths` must each be >= rank(W) = {rank}, got {hidden} for W of shape {(m, n)}"
        )
    U, s, Vh = torch.linalg.svd(W, full_matrices=False)
    U, root, Vh = U[..., :k], s[..., :k].pow(1.0 / N), Vh[..., :k, :]
    batch = W.shape[:-2]

    def embed(d: int) -> Tensor:  # E_j scaled by S: shape (..., d, k)
        E = torch.zeros(*batch, d, k, dtype=W.dtype, device=W.device)
        E[..., range(k), range(k)] = root
        return E

    factors = [embed(hidden[0]) @ Vh]
    for j in range(1, N - 1):
        eye = torch.eye(k, hidden[j - 1], dtype=W.dtype, device=W.device)
        factors.append(embed(hidden[j]) @ eye)
    factors.append(
        (U * root.unsqueeze(-2)) @ torch.eye(k, hidden[-1], dtype=W.dtype, device=W.device)
    )
    return factors


def imbalance(factors: Sequence[Tensor]) -> list[Tensor]:
    """Differences ``W_{j+1}^T W_{j+1} - W_j W_j^T`` for ``j = 1..N-1`` (zero when balanced).

    Constant under gradient flow on any differentiable loss of the product (claims A2, T1, X1).
    Each difference is formed in float32 for half-precision factors and returned in their dtype.

    Args:
        factors: a list or tuple ``[W_1, ..., W_N]`` of finite matrices of one dtype.
    """
    factors = _validate.matrices(factors, "factors")
    _check_chain(factors)
    work = _validate.compute_dtype(factors[0].dtype)
    wide = [f.to(work) for f in factors]
    return [
        (b.mT @ b - a @ a.mT).to(factors[0].dtype) for a, b in zip(wide[:-1], wide[1:], strict=True)
    ]

"""Gaussian measurement operator for low-rank matrix sensing, with its adjoint.

Source: Stöger & Soltanolkotabi; Xie, Stöger & Soltanolkotabi 2022 (seed 004, slide "Low-rank
reconstruction"): ``y_i = <A_i, X Y^T>``, ``i = 1..n``, with Gaussian ``A_i``.  We normalize so that
``A*A`` is the identity in expectation (the slide's ``Z = A*A(XX^T) = 1/n sum_i <A_i, XX^T> A_i``):

    A(M)_i = <A_i, M> / sqrt(n),      A*(y) = sum_i y_i A_i / sqrt(n),      (A_i)_{jk} ~ N(0, 1).

Memory: the ``n`` matrices are generated in blocks of ``block`` measurements, each block from its own
seed (``SeedSequence([seed, k])``).  When ``n d1 d2`` entries fit in ``max_bytes`` the blocks are
concatenated once (one matmul per application); otherwise every application regenerates the blocks
on the fly, which is the same operator exactly, in ``O(block d1 d2)`` memory.  A batch of iterates
shares the one operator (``apply``/``adjoint`` take any leading dimensions).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from overparam import _validate


def _count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")
    return value


class GaussianSensing:
    """The operator ``A(M)_i = <A_i, M> / sqrt(n)`` with i.i.d. ``N(0, 1)`` matrices ``A_i``.

    Args:
        n: number of measurements.
        d1, d2: shape of the measured matrices.
        seed: seed of the ensemble (the same seed gives the same ``A_i`` in either storage mode).
        dtype: float32 or float64.
        block: measurements generated per block.
        max_bytes: materialize the ``n x d1 d2`` matrix when it needs at most this many bytes,
            else stream the blocks at every application (exact, ``O(block d1 d2)`` memory).

    Example:
        >>> op = GaussianSensing(200, 10, 8, seed=0)
        >>> op.apply(torch.zeros(10, 8, dtype=torch.float64)).shape
        torch.Size([200])
    """

    def __init__(
        self,
        n: int,
        d1: int,
        d2: int,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        block: int = 512,
        max_bytes: int = 2**29,
    ) -> None:
        self.n, self.d1, self.d2 = _count(n, "n"), _count(d1, "d1"), _count(d2, "d2")
        self.block = _count(block, "block")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"`dtype` must be torch.float32 or torch.float64, got {dtype}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"`seed` must be an integer >= 0, got {seed!r}")
        self.seed, self.dtype = seed, dtype
        item = torch.finfo(dtype).bits // 8
        self.dense_bytes = n * d1 * d2 * item
        self.materialized = self.dense_bytes <= max_bytes
        self._flat: Tensor | None = None
        if self.materialized:
            self._flat = torch.cat([self._block(k) for k in range(self._blocks())], dim=0)

    def _blocks(self) -> int:
        return math.ceil(self.n / self.block)

    def _block(self, k: int) -> Tensor:
        """Block ``k``: rows ``k*block .. `` of the ``n x (d1 d2)`` matrix of flattened ``A_i``."""
        state = np.random.SeedSequence([self.seed, k]).generate_state(1, dtype=np.uint64)[0]
        gen = torch.Generator().manual_seed(int(state) & (2**63 - 1))
        rows = min(self.block, self.n - k * self.block)
        return torch.randn(rows, self.d1 * self.d2, generator=gen, dtype=self.dtype)

    def _check_matrix(self, M: Tensor) -> None:
        _validate.floating(M, "M", min_dim=2)
        if M.shape[-2:] != (self.d1, self.d2):
            raise ValueError(
                f"`M` must end with shape ({self.d1}, {self.d2}), got {tuple(M.shape)}"
            )

    def apply(self, M: Tensor) -> Tensor:
        """``A(M)``: shape ``(..., d1, d2) -> (..., n)``."""
        self._check_matrix(M)
        flat = M.to(self.dtype).flatten(-2)
        scale = 1.0 / math.sqrt(self.n)
        if self._flat is not None:
            return (flat @ self._flat.T) * scale
        parts = [flat @ self._block(k).T for k in range(self._blocks())]
        return torch.cat(parts, dim=-1) * scale

    def adjoint(self, y: Tensor) -> Tensor:
        """``A*(y) = sum_i y_i A_i / sqrt(n)``: shape ``(..., n) -> (..., d1, d2)``."""
        _validate.floating(y, "y", min_dim=1)
        if y.shape[-1] != self.n:
            raise ValueError(f"`y` must end with {self.n} measurements, got {tuple(y.shape)}")
        y = y.to(self.dtype)
        scale = 1.0 / math.sqrt(self.n)
        if self._flat is not None:
            out = y @ self._flat
        else:
            out = torch.zeros(*y.shape[:-1], self.d1 * self.d2, dtype=self.dtype)
            for k in range(self._blocks()):
                start = k * self.block
                out = out + y[..., start : start + self.block] @ self._block(k)
        return (out * scale).unflatten(-1, (self.d1, self.d2))

    def normal(self, M: Tensor) -> Tensor:
        """``A*A(M)`` (equal to ``M`` in expectation)."""
        return self.adjoint(self.apply(M))

    def matrices(self) -> Tensor:
        """The ``n`` measurement matrices ``A_i`` (unnormalized), shape ``(n, d1, d2)``; O(n d1 d2)."""
        flat = (
            self._flat
            if self._flat is not None
            else torch.cat([self._block(k) for k in range(self._blocks())], dim=0)
        )
        return flat.unflatten(-1, (self.d1, self.d2))

    def __repr__(self) -> str:
        mode = "dense" if self.materialized else f"streamed, block={self.block}"
        return f"GaussianSensing(n={self.n}, d1={self.d1}, d2={self.d2}, seed={self.seed}, {mode})"


def planted_low_rank(
    d1: int,
    d2: int,
    rank: int,
    generator: torch.Generator,
    symmetric: bool = False,
    dtype: torch.dtype = torch.float64,
    kappa: float = 2.0,
) -> tuple[Tensor, Tensor]:
    """Ground truth factors ``X (d1, r*)``, ``Y (d2, r*)`` with ``X Y^T`` of unit spectral norm.

    ``X = Q_1 S^(1/2)``, ``Y = Q_2 S^(1/2)`` with orthonormal ``Q_1, Q_2`` (QR of Gaussian matrices)
    and ``S = diag(linspace(1, 1/kappa, r*))``: condition number ``kappa`` (default 2; the slides
    assume ``kappa ~ 1``).  With ``symmetric=True``, ``Y = X`` (``d1 == d2`` required).
    """
    _count(d1, "d1"), _count(d2, "d2"), _count(rank, "rank")
    if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not kappa >= 1:
        raise ValueError(f"`kappa` must be a number >= 1, got {kappa!r}")
    if rank > min(d1, d2):
        raise ValueError(f"`rank` must be <= min(d1, d2) = {min(d1, d2)}, got {rank}")
    if symmetric and d1 != d2:
        raise ValueError(f"`d2` must equal `d1` when symmetric, got d1={d1}, d2={d2}")
    s = torch.linspace(1.0, 1.0 / kappa, rank, dtype=dtype).sqrt()
    Q1 = torch.linalg.qr(torch.randn(d1, rank, generator=generator, dtype=dtype))[0]
    X = Q1 * s
    if symmetric:
        return X, X.clone()
    Q2 = torch.linalg.qr(torch.randn(d2, rank, generator=generator, dtype=dtype))[0]
    return X, Q2 * s

"""Shared pieces of the seed-004 sensing experiments: source string, small init, a planted problem."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from overparam.sensing import GaussianSensing, planted_low_rank

SRC = "Soltanolkotabi, Erice 2022 slides (seed 004); Xie, Stöger & Soltanolkotabi 2022"
F64 = torch.float64


def small_init(g: torch.Generator, alphas: Tensor, d: int, r: int) -> Tensor:
    """``alpha_b * N(0, 1)`` factors of shape ``(len(alphas), d, r)`` (slide: ``U_0 = alpha U``)."""
    return alphas.reshape(-1, 1, 1) * torch.randn(len(alphas), d, r, generator=g, dtype=F64)


def planted(
    n: int,
    d1: int,
    d2: int,
    r_star: int,
    seed: int,
    symmetric: bool = False,
    kappa: float = 2.0,
    max_bytes: int = 2**29,
) -> tuple[GaussianSensing, Tensor, Tensor, Tensor, torch.Generator]:
    """Operator, factors ``X``, ``Y``, noiseless ``y = A(X Y^T)`` and the generator (for the init)."""
    g = torch.Generator().manual_seed(seed)
    op = GaussianSensing(n, d1, d2, seed=seed, max_bytes=max_bytes)
    X, Y = planted_low_rank(d1, d2, r_star, g, symmetric=symmetric, kappa=kappa)
    return op, X, Y, op.apply(X @ Y.T), g


def grid(total: int, points: int) -> list[int]:
    """``points`` evenly spaced integer steps in ``[0, total]`` (unique, sorted)."""
    return np.unique(np.linspace(0, total, points).astype(int)).tolist()

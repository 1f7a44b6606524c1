"""Helpers shared by the Xu et al. 2023 experiments (``xu.py``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

SRC = "Xu et al. 2023 (seed 002)"


def median(v: Any) -> float:
    """Median of the finite entries (``nan`` when there are none)."""
    a = np.asarray(v, dtype=float)
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else math.nan


def first_hit(loss: Tensor, tol: float) -> Tensor:
    """First step ``t`` with ``loss[t] <= tol`` per batch entry (``nan`` when never), float."""
    hit = loss <= tol
    idx = hit.to(torch.int64).argmax(0).to(loss.dtype)
    return torch.where(hit.any(0), idx, torch.full_like(idx, math.nan))


def curve(x: Tensor, steps: list[int]) -> list[float]:
    return [float(v) for v in x[steps]]

"""Helpers shared by the Xu et al. 2023 experiments (``xu.py``)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

SRC = "Xu et al. 2023 (seed 002)"
F = TypeVar("F", bound=Callable[..., Any])


def single_thread(fn: F) -> F:
    """Run ``fn`` with one intra-op thread (restored after): the tensors here are tiny, and on a
    loaded 2-core machine a second thread made these runs about 10 times slower."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper  # type: ignore[return-value]


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

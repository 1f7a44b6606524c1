"""Log-spaced recording steps, so that 1e6-iteration runs store a few hundred points."""

from __future__ import annotations

import numpy as np


def log_steps(total: int, points: int = 200) -> list[int]:
    """Sorted unique steps in ``[0, total]``: 0, ``total`` and about ``points`` log-spaced ones."""
    if total < 0:
        raise ValueError(f"the number of steps must be >= 0, got {total}")
    if points < 2:
        raise ValueError(f"`points` must be >= 2, got {points}")
    if total == 0:
        return [0]
    grid = np.unique(np.round(np.logspace(0, np.log10(total), points)).astype(np.int64))
    return sorted({0, total, *(int(s) for s in grid if s <= total)})

"""Conservation diagnostics along trajectories, and fitted exponential rates.

For a deep linear network ``W_N ... W_1`` trained on any loss of the product, gradient flow keeps
``D_j = W_{j+1}^T W_{j+1} - W_j W_j^T`` constant (Arora, Cohen & Hazan 2018, Theorem 1 proof; for
two layers ``U V^T`` with ``W_1 = V^T``, ``W_2 = U``: ``D = U^T U - V^T V``, Tarmoun et al. 2021,
Sec. 3).  Gradient descent moves ``D`` by exactly ``eta^2 (G_2^T G_2 - G_1 G_1^T)`` per step
(``G_j`` the layer gradients): the first-order terms cancel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from overparam import _validate
from overparam.core import imbalance


def _check_trajectory(trajectory: Sequence[Sequence[Tensor]]) -> None:
    if len(trajectory) == 0:
        raise ValueError("`trajectory` must contain at least one point, got an empty sequence")
    depth = len(trajectory[0])
    if depth < 2:
        raise ValueError(f"`trajectory` points must hold at least 2 factors, got {depth}")
    if any(len(point) != depth for point in trajectory):
        raise ValueError(f"`trajectory` points must all hold {depth} factors")


def imbalance_trajectory(trajectory: Sequence[Sequence[Tensor]]) -> Tensor:
    """``D_j(t) = W_{j+1}^T W_{j+1} - W_j W_j^T`` along a trajectory (requires equal hidden widths
    to stack; otherwise use :func:`overparam.imbalance` pointwise).

    Returns:
        Tensor of shape ``(T, N-1, ..., d_j, d_j)``.
    """
    _check_trajectory(trajectory)
    return torch.stack([torch.stack(imbalance(list(point))) for point in trajectory])


def conservation_drift(trajectory: Sequence[Sequence[Tensor]]) -> Tensor:
    """Relative drift of each imbalance along a trajectory of factor lists ``[W_1, ..., W_N]``.

    ``drift[t, j] = ||D_j(t) - D_j(0)||_F / max_s (||W_{j+1}(s)^T W_{j+1}(s)||_F
    + ||W_j(s) W_j(s)^T||_F)``: the change of the conserved quantity measured against the size of
    the two Gramians it is the difference of (so a balanced start, ``D = 0``, is measured too).

    Args:
        trajectory: ``trajectory[t]`` = factors ``W_1 .. W_N`` (``N >= 2``), batched or not.

    Returns:
        Tensor of shape ``(T, N-1, *batch)``; 0 under exact gradient flow (claims T1, A2).
    """
    _check_trajectory(trajectory)
    rows, scales = [], []
    start = imbalance(list(trajectory[0]))
    for point in trajectory:
        D = imbalance(list(point))
        rows.append(
            torch.stack([torch.linalg.matrix_norm(d - d0) for d, d0 in zip(D, start, strict=True)])
        )
        gram = [
            torch.linalg.matrix_norm(b.mT @ b) + torch.linalg.matrix_norm(a @ a.mT)
            for a, b in zip(point[:-1], point[1:], strict=True)
        ]
        scales.append(torch.stack(gram))
    scale = torch.stack(scales).amax(dim=0)
    return torch.stack(rows) / scale.clamp_min(torch.finfo(scale.dtype).tiny)


def fit_log_slope(x: Sequence[float] | Tensor, y: Sequence[float] | Tensor) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (a convergence order).

    Args:
        x, y: positive samples of equal length >= 2.
    """
    xs = np.asarray(torch.as_tensor(x, dtype=torch.float64), dtype=np.float64)
    ys = np.asarray(torch.as_tensor(y, dtype=torch.float64), dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1 or xs.size < 2:
        raise ValueError(
            f"`x` and `y` must be 1-D of equal length >= 2, got {xs.shape}, {ys.shape}"
        )
    if not (np.all(xs > 0) and np.all(ys > 0)):
        raise ValueError("`x` and `y` must be positive to fit a log-log slope")
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def fit_exponential_rate(
    times: Sequence[float] | Tensor, errors: Sequence[float] | Tensor
) -> float:
    """Rate ``c`` of the least-squares fit ``log e(t) = a - c t`` (so ``e(t) ~ e^{-c t}``).

    Args:
        times: sample times, 1-D, length >= 2.
        errors: positive errors at those times.
    """
    ts = np.asarray(torch.as_tensor(times, dtype=torch.float64), dtype=np.float64)
    es = np.asarray(torch.as_tensor(errors, dtype=torch.float64), dtype=np.float64)
    if ts.shape != es.shape or ts.ndim != 1 or ts.size < 2:
        raise ValueError(
            f"`times` and `errors` must be 1-D of equal length >= 2, got {ts.shape}, {es.shape}"
        )
    if not np.all(es > 0):
        raise ValueError("`errors` must be positive to fit an exponential rate")
    return float(-np.polyfit(ts, np.log(es), 1)[0])


def gd_imbalance_step(
    factors: Sequence[Tensor], grads: Sequence[Tensor], eta: float
) -> list[Tensor]:
    """Exact change of each ``D_j`` in one GD step: ``eta^2 (G_{j+1}^T G_{j+1} - G_j G_j^T)``.

    Valid when the loss depends on the factors only through their product (then
    ``W_{j+1}^T G_{j+1} = G_j W_j^T``, so the first-order terms cancel).
    """
    eta = _validate.positive(eta, "eta")
    if len(factors) != len(grads) or len(factors) < 2:
        raise ValueError(
            f"`factors` and `grads` must have equal length >= 2, got {len(factors)}, {len(grads)}"
        )
    return [eta**2 * (b.mT @ b - a @ a.mT) for a, b in zip(grads[:-1], grads[1:], strict=True)]

"""Gradient flow by adaptive high-order ODE integration, and gradient descent sampled on its clock.

Gradient flow ``d theta / dt = -grad L(theta)`` is the object of Tarmoun, França, Haeffele & Vidal
(2021), Eq. (1); gradient descent with step ``eta`` is its explicit Euler discretization, so its
iterate ``k`` is compared with the flow at time ``t = k * eta``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from overparam import _validate

Loss = Callable[[list[Tensor]], Tensor]
METHODS = ("DOP853", "RK45", "RK23", "Radau", "BDF", "LSODA")


class FlowDescentComparison(NamedTuple):
    """Gradient flow and gradient descent on one time grid ``t_k = k * eta``."""

    steps: list[int]
    times: list[float]
    flow: list[list[Tensor]]
    descent: list[list[Tensor]]


def _check_params(params: Sequence[Tensor]) -> list[Tensor]:
    if isinstance(params, Tensor) or not isinstance(params, Sequence) or len(params) == 0:
        raise ValueError(
            f"`params` must be a non-empty list of tensors, got {type(params).__name__}"
        )
    return [_validate.floating(p, f"params[{i}]").detach() for i, p in enumerate(params)]


def _check_times(times: Sequence[float] | Tensor | np.ndarray) -> np.ndarray:
    grid = np.asarray(
        times.detach().cpu().numpy() if isinstance(times, Tensor) else times, dtype=np.float64
    )
    if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)):
        raise ValueError(
            f"`times` must be a non-empty 1-D sequence of finite numbers, got {times!r}"
        )
    if grid[0] != 0.0 or np.any(np.diff(grid) <= 0):
        raise ValueError(
            f"`times` must start at 0 and increase strictly, got {grid[:5].tolist()}..."
        )
    return grid


def _unflatten(flat: Tensor, shapes: list[torch.Size]) -> list[Tensor]:
    sizes = [math.prod(s) for s in shapes]
    return [part.reshape(s) for part, s in zip(flat.split(sizes), shapes, strict=True)]


def _scalar(value: Tensor) -> Tensor:
    if not isinstance(value, Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"`loss` must return a scalar tensor, got {shape}")
    return value.reshape(())


def gradient_flow(
    params: Sequence[Tensor],
    loss: Loss,
    times: Sequence[float] | Tensor | np.ndarray,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    method: str = "DOP853",
) -> list[list[Tensor]]:
    """Integrate gradient flow ``d theta/dt = -grad L(theta)`` and sample it at ``times``.

    The parameters are flattened into one float64 vector ``theta``; the right-hand side
    ``-grad L(theta)`` comes from autograd; ``scipy.integrate.solve_ivp`` integrates it with an
    adaptive embedded Runge-Kutta pair (default Dormand-Prince 8(5,3), ``"DOP853"``) to the local
    tolerance ``|err_i| <= atol + rtol |theta_i|`` and evaluates its dense output at ``times``.
    A batch of independent problems is integrated at once by summing their losses (the gradient
    of a sum of losses of disjoint parameters is the stack of their gradients).

    Source: gradient flow, Eq. (1) of Tarmoun et al. (2021); Arora, Cohen & Hazan (2018), Sec. 5.

    Args:
        params: initial parameters (any shapes, floating dtype).
        loss: function of the list of parameters returning a scalar tensor (autograd-differentiable).
        times: strictly increasing 1-D grid starting at 0.
        rtol: relative tolerance (> 0).
        atol: absolute tolerance (> 0).
        method: one of ``METHODS`` (``"DOP853"``, ``"RK45"``, ``"RK23"``, ``"Radau"``, ``"BDF"``,
            ``"LSODA"``).

    Returns:
        ``trajectory[i]`` = the list of parameters (float64, shapes of ``params``) at ``times[i]``.

    Example:
        >>> U = torch.ones(2, 1, dtype=torch.float64)
        >>> traj = gradient_flow([U], lambda p: (p[0] ** 2).sum() / 2, [0.0, 1.0])
        >>> float(traj[1][0][0, 0])  # exp(-1)
        0.36787944...
    """
    start = _check_params(params)
    grid = _check_times(times)
    rtol = _validate.positive(rtol, "rtol")
    atol = _validate.positive(atol, "atol")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    shapes = [p.shape for p in start]
    y0 = torch.cat([p.reshape(-1).to(torch.float64) for p in start]).numpy()
    if grid.size == 1:
        return [[p.to(torch.float64).clone() for p in start]]

    def rhs(_t: float, y: np.ndarray) -> np.ndarray:
        flat = torch.tensor(y, dtype=torch.float64, requires_grad=True)
        value = _scalar(loss(_unflatten(flat, shapes)))
        (grad,) = torch.autograd.grad(value, flat, allow_unused=True)
        if grad is None:
            return np.zeros_like(y)
        return -grad.numpy()

    solution = solve_ivp(
        rhs, (0.0, float(grid[-1])), y0, method=method, t_eval=grid, rtol=rtol, atol=atol
    )
    if not solution.success:
        raise RuntimeError(f"gradient_flow: solve_ivp failed: {solution.message}")
    columns = torch.from_numpy(np.ascontiguousarray(solution.y.T))
    return [_unflatten(row.clone(), shapes) for row in columns]


def _check_record(record: Sequence[int] | None, steps: int) -> list[int]:
    if record is None:
        return list(range(steps + 1))
    out = _validate.int_sequence(record, "record", minimum=0)
    if not out or out != sorted(set(out)) or out[-1] > steps:
        raise ValueError(
            f"`record` must be strictly increasing step indices in [0, {steps}], got {out[:5]}..."
        )
    return out


def gradient_descent(
    params: Sequence[Tensor],
    loss: Loss,
    eta: float,
    steps: int,
    record: Sequence[int] | None = None,
) -> list[list[Tensor]]:
    """Gradient descent ``theta_{k+1} = theta_k - eta grad L(theta_k)``, kept at steps ``record``.

    This is the explicit Euler discretization of :func:`gradient_flow` with step ``eta``: iterate
    ``k`` approximates the flow at time ``t = k * eta`` (Tarmoun et al. 2021, Sec. 2).

    Args:
        params: initial parameters (floating tensors; computed in float64).
        loss: function of the list of parameters returning a scalar tensor.
        eta: step size (> 0).
        steps: number of steps (>= 0).
        record: strictly increasing step indices in ``[0, steps]`` to keep (default: all).

    Returns:
        ``trajectory[i]`` = the list of parameters after ``record[i]`` steps.
    """
    current = [p.to(torch.float64).clone() for p in _check_params(params)]
    eta = _validate.positive(eta, "eta")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`steps` must be an integer >= 0, got {steps!r}")
    keep = _check_record(record, steps)
    wanted = set(keep)
    out = [[p.clone() for p in current]] if 0 in wanted else []
    for k in range(1, keep[-1] + 1):
        leaves = [p.requires_grad_(True) for p in current]
        value = _scalar(loss(leaves))
        grads = torch.autograd.grad(value, leaves, allow_unused=True)
        with torch.no_grad():
            current = [
                p.detach() if g is None else (p - eta * g).detach()
                for p, g in zip(leaves, grads, strict=True)
            ]
        if k in wanted:
            out.append([p.clone() for p in current])
    return out


def flow_versus_descent(
    params: Sequence[Tensor],
    loss: Loss,
    eta: float,
    steps: int,
    record: Sequence[int] | None = None,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    method: str = "DOP853",
) -> FlowDescentComparison:
    """Gradient descent with step ``eta`` and gradient flow, both sampled at ``t_k = k * eta``.

    Args:
        params, loss: as in :func:`gradient_flow`.
        eta: GD step (> 0).
        steps: number of GD steps (>= 0).
        record: step indices to keep (default: all ``0..steps``).
        rtol, atol, method: integrator settings of :func:`gradient_flow`.

    Returns:
        ``FlowDescentComparison(steps, times, flow, descent)`` with ``times[i] = steps[i] * eta``.
    """
    descent = gradient_descent(params, loss, eta, steps, record)
    keep = _check_record(record, steps)
    times = [k * float(eta) for k in keep]
    if keep[0] != 0:
        flow = gradient_flow(params, loss, [0.0, *times], rtol, atol, method)[1:]
    else:
        flow = gradient_flow(params, loss, times, rtol, atol, method)
    return FlowDescentComparison(keep, times, flow, descent)

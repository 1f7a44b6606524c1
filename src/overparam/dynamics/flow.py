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
DEFAULT_RTOL = 1e-12
"""Default relative tolerance of :func:`gradient_flow` (see its docstring for the accuracy)."""
DEFAULT_ATOL = 1e-14
"""Default absolute tolerance of :func:`gradient_flow`."""


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
    if not value.requires_grad:
        raise ValueError(
            "`loss` must return a tensor differentiable in `params`, got one without an autograd "
            "graph (computed from detached tensors, or under torch.no_grad())"
        )
    return value.reshape(())


def _check_loss(loss: Loss) -> None:
    if not callable(loss):
        raise ValueError(
            f"`loss` must be a function of the list of parameters, got {type(loss).__name__}"
        )


class FlowBlowUpError(RuntimeError):
    """The integrated flow left every bounded set before the last requested time.

    Raised by :func:`gradient_flow` when ``||theta(t)||`` exceeds ``max_norm``, when the gradient
    becomes non-finite, or when the solver's step size collapses while ``||theta||`` grows (a
    finite-time blow-up such as ``L(u) = -||u||^4``, whose flow ``du/dt = 4 ||u||^2 u`` reaches
    infinity at ``t* = 1 / (8 ||u_0||^2)``).  The message gives the time reached and the norm,
    also kept as the attributes ``time`` and ``norm``.
    """

    def __init__(self, message: str, time: float, norm: float) -> None:
        super().__init__(message)
        self.time, self.norm = time, norm


class _Tracker:
    """Right-hand side ``-grad L`` of the flat parameter vector, remembering the furthest time
    evaluated and the largest norm met (for the blow-up report)."""

    def __init__(self, loss: Loss, shapes: list[torch.Size], limit: float) -> None:
        self.loss, self.shapes, self.limit = loss, shapes, limit
        self.t, self.norm = 0.0, 0.0

    def __call__(self, t: float, y: np.ndarray) -> np.ndarray:
        norm = float(np.linalg.norm(y))
        self.t, self.norm = max(self.t, float(t)), max(self.norm, norm)
        if not norm <= self.limit:  # also catches NaN
            raise FlowBlowUpError(
                f"gradient flow blew up (finite-time blow-up / divergence): ||theta|| = "
                f"{norm:.3e} > max_norm = {self.limit:.1e} at t = {t:.6g}; integrate to an "
                "earlier time, or use a loss bounded below along the flow",
                t,
                norm,
            )
        flat = torch.tensor(y, dtype=torch.float64, requires_grad=True)
        value = _scalar(self.loss(_unflatten(flat, self.shapes)))
        (grad,) = torch.autograd.grad(value, flat, allow_unused=True)
        if grad is None:
            return np.zeros_like(y)
        out = -grad.numpy()
        if not np.all(np.isfinite(out)):
            raise FlowBlowUpError(
                f"gradient flow blew up (finite-time blow-up / divergence): non-finite gradient "
                f"at t = {t:.6g} (||theta|| = {norm:.3e})",
                t,
                norm,
            )
        return out


def _blow_up(tracker: _Tracker, start: float, end: float, why: str) -> FlowBlowUpError:
    return FlowBlowUpError(
        f"gradient flow blew up (finite-time blow-up / divergence) before t = {end:.6g}: "
        f"||theta|| grew from {start:.3e} to {tracker.norm:.3e} by t = {tracker.t:.6g} ({why}); "
        "integrate to an earlier time, or use a loss bounded below along the flow",
        tracker.t,
        tracker.norm,
    )


def gradient_flow(
    params: Sequence[Tensor],
    loss: Loss,
    times: Sequence[float] | Tensor | np.ndarray,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    method: str = "DOP853",
    max_norm: float | None = None,
    max_step: float = math.inf,
) -> list[list[Tensor]]:
    """Integrate gradient flow ``d theta/dt = -grad L(theta)`` and sample it at ``times``.

    The parameters are flattened into one float64 vector ``theta``; the right-hand side
    ``-grad L(theta)`` comes from autograd; ``scipy.integrate.solve_ivp`` integrates it with an
    adaptive embedded Runge-Kutta pair (default Dormand-Prince 8(5,3), ``"DOP853"``) to the local
    tolerance ``|err_i| <= atol + rtol |theta_i|`` and evaluates its dense output at ``times``.
    A batch of independent problems is integrated at once by summing their losses (the gradient
    of a sum of losses of disjoint parameters is the stack of their gradients).

    Accuracy of the defaults (``rtol = 1e-12``, ``atol = 1e-14``; measured in the tests): the
    conserved imbalances ``W_{j+1}^T W_{j+1} - W_j W_j^T`` of deep linear networks (depths 2-4) and
    ``U^T U - V^T V`` stay constant to ~1e-12 relative to the Gramians, and the trajectories agree
    with the closed forms of :mod:`overparam.dynamics.closed_forms` to ~1e-10 relative over tens
    of time units.  The global error shrinks roughly in proportion to ``rtol`` (fitted log-log
    slopes 0.72 and 0.84 on two closed forms, asserted in the tests); below ``rtol ~ 1e-13``
    rounding takes over.  The drift of an imbalance is at the scale of the Gramians, not of
    the imbalance itself: from a small init (entries ~1e-3 growing to O(1), ``||D(0)|| ~ 1e-5``)
    ``||D(t) - D(0)|| / ||D(0)||`` measured 1e-9 at t = 100 with the defaults (2e-7 with
    ``rtol = 1e-10``), so tighten ``rtol`` when a tiny imbalance must be resolved over long times.

    Source: gradient flow, Eq. (1) of Tarmoun et al. (2021); Arora, Cohen & Hazan (2018), Sec. 5.

    Args:
        params: initial parameters (any shapes, floating dtype).
        loss: function of the list of parameters returning a scalar tensor (autograd-differentiable).
        times: strictly increasing 1-D grid starting at 0.
        rtol: relative tolerance (> 0).
        atol: absolute tolerance (> 0).
        method: one of ``METHODS`` (``"DOP853"``, ``"RK45"``, ``"RK23"``, ``"Radau"``, ``"BDF"``,
            ``"LSODA"``).
        max_norm: ``||theta||`` beyond which the flow is declared blown up (default
            ``1e12 * max(1, ||theta_0||)``).
        max_step: largest step the solver may take (> 0, default unbounded).  On a long,
            converged, stiff tail an explicit method runs at its stability limit, where its
            (uncontrolled) dense output degrades; capping the step keeps it accurate there.

    Returns:
        ``trajectory[i]`` = the list of parameters (float64, shapes of ``params``) at ``times[i]``.

    Raises:
        ValueError: invalid arguments, a non-scalar loss, a non-finite gradient at ``theta_0``.
        FlowBlowUpError: the flow diverges before ``times[-1]`` (finite-time blow-up).

    Example:
        >>> U = torch.ones(2, 1, dtype=torch.float64)
        >>> traj = gradient_flow([U], lambda p: (p[0] ** 2).sum() / 2, [0.0, 1.0])
        >>> float(traj[1][0][0, 0])  # exp(-1)
        0.36787944...
    """
    start = _check_params(params)
    _check_loss(loss)
    grid = _check_times(times)
    rtol = _validate.positive(rtol, "rtol")
    atol = _validate.positive(atol, "atol")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    if isinstance(max_step, bool) or not (isinstance(max_step, (int, float)) and max_step > 0):
        raise ValueError(f"`max_step` must be a number > 0, got {max_step!r}")
    shapes = [p.shape for p in start]
    y0 = torch.cat([p.reshape(-1).to(torch.float64) for p in start]).numpy()
    norm0 = float(np.linalg.norm(y0))
    limit = 1e12 * max(1.0, norm0) if max_norm is None else _validate.positive(max_norm, "max_norm")
    if limit <= norm0:
        raise ValueError(f"`max_norm` must exceed ||params|| = {norm0:.3e}, got {limit}")
    rhs = _Tracker(loss, shapes, limit)
    try:
        rhs(0.0, y0)
    except FlowBlowUpError:
        raise ValueError(
            "`loss` must have a finite gradient at the initial `params`, got NaN/inf entries"
        ) from None
    if grid.size == 1:
        return [[p.to(torch.float64).clone() for p in start]]
    try:
        solution = solve_ivp(
            rhs,
            (0.0, float(grid[-1])),
            y0,
            method=method,
            t_eval=grid,
            rtol=rtol,
            atol=atol,
            max_step=float(max_step),
        )
    except FlowBlowUpError as err:
        raise FlowBlowUpError(str(err), err.time, err.norm) from None  # without solver frames
    if not solution.success:
        if rhs.norm > 1e2 * max(1.0, norm0):  # the step size collapsed while theta grew
            raise _blow_up(rhs, norm0, grid[-1], f"solver: {solution.message}")
        raise RuntimeError(
            f"gradient_flow: solve_ivp failed at t = {rhs.t:.6g}: {solution.message}"
        )
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
    _check_loss(loss)
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
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
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

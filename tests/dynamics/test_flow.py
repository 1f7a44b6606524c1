"""gradient_flow / gradient_descent / flow_versus_descent against closed forms and fitted orders."""

import math

import numpy as np
import pytest
import torch

from overparam.dynamics import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    FlowBlowUpError,
    fit_log_slope,
    flow_versus_descent,
    gradient_descent,
    gradient_flow,
    spectral_flow,
    symmetric_flow,
    symmetric_loss,
)

F64 = torch.float64


def _quadratic(a: torch.Tensor):
    return lambda p: 0.5 * (a * p[0] ** 2).sum()


def test_linear_flow_matches_exponential(gen):
    a = torch.rand(4, generator=gen, dtype=F64) + 0.5
    x0 = torch.randn(4, generator=gen, dtype=F64)
    times = [0.0, 0.3, 1.0, 2.5]
    traj = gradient_flow([x0], _quadratic(a), times, rtol=1e-12, atol=1e-14)
    for t, point in zip(times, traj, strict=True):
        exact = x0 * torch.exp(-a * t)
        # DOP853 at rtol 1e-12 on a smooth linear ODE: global error a few 1e-12 relative
        assert torch.allclose(point[0], exact, rtol=1e-10, atol=1e-13)


def test_shapes_dtype_and_start_point(gen):
    U = torch.randn(3, 2, generator=gen, dtype=torch.float32)
    V = torch.randn(4, 2, generator=gen, dtype=torch.float32)
    traj = gradient_flow([U, V], lambda p: (p[0] @ p[1].T).pow(2).sum(), [0.0, 0.1])
    assert len(traj) == 2 and [t.shape for t in traj[1]] == [U.shape, V.shape]
    assert traj[1][0].dtype == F64
    assert torch.equal(traj[0][0], U.to(F64))  # t = 0 is the initial point exactly


def _spectral_problem():
    s = torch.tensor([1.5, 0.6], dtype=F64)
    u0 = torch.tensor([0.3, 1.2], dtype=F64)
    v0 = torch.tensor([0.1, -0.4], dtype=F64)
    return s, u0, v0, lambda p: 0.5 * ((s - p[0] * p[1]) ** 2).sum()


def test_error_shrinks_with_tolerance_measured_slope():
    """Integrator error against the spectral closed form vs rtol: a fitted log-log slope."""
    s, u0, v0, loss = _spectral_problem()
    times = torch.linspace(0, 4, 9, dtype=F64)
    u, v = spectral_flow(u0, v0, s, times)
    tols = [1e-5, 1e-6, 1e-7, 1e-8, 1e-9]
    errors = []
    for tol in tols:
        traj = gradient_flow([u0, v0], loss, times, rtol=tol, atol=tol * 1e-2)
        got = torch.stack([p[0] for p in traj])
        errors.append(float((got - u).abs().max()))
    slope = fit_log_slope(tols, errors)
    # an adaptive error-per-step controller gives global error ~ C tol^q with q close to 1
    # (measured 0.72 here); the slope must be clearly positive and not above ~1.3
    assert 0.6 < slope < 1.3, (slope, errors)
    assert errors[-1] < 1e-7


def test_error_vs_tolerance_slope_symmetric_riccati(gen):
    """Same measurement against the Riccati closed form, random full-rank U_0, indefinite Y."""
    A = torch.randn(4, 4, generator=gen, dtype=F64)
    Y, U0 = 0.5 * (A + A.T), torch.randn(4, 4, generator=gen, dtype=F64)
    times = torch.linspace(0, 6, 7, dtype=F64)
    exact = symmetric_flow(U0, Y, times)  # exact to rounding (checked in test_closed_forms)
    tols, errors = [1e-6, 1e-7, 1e-8, 1e-9, 1e-10], []
    for tol in tols:
        traj = gradient_flow([U0], lambda p: symmetric_loss(p[0], Y), times, tol, tol * 1e-2)
        X = torch.stack([p[0] @ p[0].T for p in traj])
        errors.append(float(torch.linalg.matrix_norm(X - exact).max()))
    slope = fit_log_slope(tols, errors)
    # 4 decades of rtol; error-per-step control: global error ~ tol^q, q ~ 0.7-1.1 (here 0.84)
    assert 0.6 < slope < 1.3, (slope, errors)
    assert errors == sorted(errors, reverse=True)  # monotone: each tightening helps


def test_blow_up_is_detected_and_reported():
    """L(u) = -||u||^4: du/dt = 4 ||u||^2 u, ||u||^2 = r0 / (1 - 8 r0 t), blow-up at 1/(8 r0)."""
    u0 = torch.tensor([1.0, 0.5], dtype=F64)
    r0 = float(u0 @ u0)
    t_star = 1 / (8 * r0)

    def loss(p):
        return -((p[0] @ p[0]) ** 2)

    before = gradient_flow([u0], loss, [0.0, 0.5 * t_star])[-1][0]
    # closed form at t*/2: u0 / sqrt(1 - 1/2); DOP853 at the default tolerances, smooth region
    assert torch.allclose(before, u0 * 2**0.5, rtol=1e-10)
    for method in ("DOP853", "LSODA", "BDF"):  # (Radau works too but takes ~15 s here)
        with pytest.raises(FlowBlowUpError, match="blew up .*finite-time blow-up") as info:
            gradient_flow([u0], loss, [0.0, 2 * t_star], method=method)
        # the solver stalls at the singularity: within 1e-3 of t*, with the norm >= 100 ||u0||
        # (i.e. 1 - 8 r0 t <= 1e-4 on the exact solution)
        assert info.value.time == pytest.approx(t_star, rel=1e-3), method
        assert info.value.norm > 1e2 * math.sqrt(r0)


def test_unbounded_growth_hits_max_norm():
    """L(u) = -||u||^2/2: u(t) = e^t u0 crosses max_norm = 1e6 at t = log(1e6)."""
    u0 = torch.ones(1, dtype=F64)
    with pytest.raises(FlowBlowUpError, match=r"max_norm = 1\.0e\+06") as info:
        gradient_flow([u0], lambda p: -0.5 * (p[0] ** 2).sum(), [0.0, 20.0], max_norm=1e6)
    # detected at the first right-hand side evaluation past the threshold: within one step
    assert math.log(1e6) <= info.value.time < math.log(1e6) + 1.0


def test_methods_agree():
    s, u0, v0, loss = _spectral_problem()
    times = [0.0, 1.0, 2.0]
    u, _ = spectral_flow(u0, v0, s, times)
    for method in ("DOP853", "LSODA", "BDF"):  # (Radau works too but takes ~15 s here)
        traj = gradient_flow([u0, v0], loss, times, rtol=1e-10, atol=1e-12, method=method)
        # implicit/multistep methods at rtol 1e-10 reach ~1e-8 global error on this problem
        assert float((traj[-1][0] - u[-1]).abs().max()) < 1e-7, method


def test_batched_problems_are_independent(gen):
    A = torch.randn(2, 3, 3, generator=gen, dtype=F64)
    U0 = torch.randn(2, 3, 2, generator=gen, dtype=F64)
    times = [0.0, 0.5]

    def loss(p):
        return 0.25 * (A @ A.mT - p[0] @ p[0].mT).pow(2).sum()

    both = gradient_flow([U0], loss, times, rtol=1e-12, atol=1e-14)[-1][0]
    for b in range(2):
        one = gradient_flow(
            [U0[b]],
            lambda p, b=b: 0.25 * (A[b] @ A[b].mT - p[0] @ p[0].mT).pow(2).sum(),
            times,
            rtol=1e-12,
            atol=1e-14,
        )[-1][0]
        assert torch.allclose(both[b], one, rtol=1e-9, atol=1e-11)  # two tolerance-level runs


def test_gradient_descent_closed_form(gen):
    a = torch.tensor([1.0, 3.0], dtype=F64)
    x0 = torch.randn(2, generator=gen, dtype=F64)
    eta, steps = 0.1, 7
    traj = gradient_descent([x0], _quadratic(a), eta, steps, record=[0, 3, 7])
    for k, point in zip([0, 3, 7], traj, strict=True):
        # exact in exact arithmetic: (1 - eta a)^k x0; a few roundings per step
        assert torch.allclose(point[0], (1 - eta * a) ** k * x0, rtol=1e-14, atol=1e-15)


def test_gd_global_error_is_first_order():
    """GD vs flow at a fixed time T: error ~ C eta (explicit Euler), fitted slope ~ 1."""
    s, u0, v0, loss = _spectral_problem()
    T, etas, errs = 1.0, [0.04, 0.02, 0.01, 0.005], []
    for eta in etas:
        steps = round(T / eta)
        cmp = flow_versus_descent(
            [u0, v0], loss, eta, steps, record=[steps], rtol=1e-12, atol=1e-14
        )
        assert cmp.times == [pytest.approx(T)] and cmp.steps == [steps]
        errs.append(float((cmp.flow[0][0] - cmp.descent[0][0]).abs().max()))
    slope = fit_log_slope(etas, errs)
    assert abs(slope - 1) < 0.1, (slope, errs)  # Euler is order 1; O(eta^2) terms bend it <10%


def test_validation_messages(gen):
    x = torch.ones(2, dtype=F64)
    loss = _quadratic(torch.ones(2, dtype=F64))
    with pytest.raises(ValueError, match="`params` must be a non-empty list"):
        gradient_flow([], loss, [0.0, 1.0])
    with pytest.raises(ValueError, match="`params\\[0\\]` must have a floating dtype"):
        gradient_flow([torch.ones(2, dtype=torch.int64)], loss, [0.0, 1.0])
    with pytest.raises(ValueError, match="`times` must start at 0"):
        gradient_flow([x], loss, [0.5, 1.0])
    with pytest.raises(ValueError, match="`times` must start at 0 and increase strictly"):
        gradient_flow([x], loss, [0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="`rtol` must be > 0"):
        gradient_flow([x], loss, [0.0, 1.0], rtol=0.0)
    with pytest.raises(ValueError, match="`method` must be one of"):
        gradient_flow([x], loss, [0.0, 1.0], method="Euler")
    with pytest.raises(ValueError, match="`loss` must return a scalar tensor"):
        gradient_flow([x], lambda p: p[0] * 2, [0.0, 1.0])
    with pytest.raises(ValueError, match="`times` must start at 0 and increase strictly"):
        gradient_flow([x], loss, [0.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="`times` must be a non-empty 1-D sequence"):
        gradient_flow([x], loss, [[0.0, 1.0]])
    with pytest.raises(ValueError, match="`params` must be a non-empty list of tensors"):
        gradient_flow(x, loss, [0.0, 1.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`loss` must return a scalar tensor, got \\(2,\\)"):
        gradient_flow([x], lambda p: p[0] * 2, [0.0])  # checked even without a time step
    with pytest.raises(ValueError, match="`loss` must have a finite gradient"):
        gradient_flow([x], lambda p: torch.sqrt(p[0] - 1).sum(), [0.0, 1.0])
    with pytest.raises(ValueError, match="`max_norm` must exceed"):
        gradient_flow([x], loss, [0.0, 1.0], max_norm=1.0)
    with pytest.raises(ValueError, match="`eta` must be > 0"):
        gradient_descent([x], loss, -0.1, 3)
    with pytest.raises(ValueError, match="`steps` must be an integer >= 0"):
        gradient_descent([x], loss, 0.1, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`record` must be strictly increasing"):
        gradient_descent([x], loss, 0.1, 3, record=[0, 5])


def test_single_time_and_np_grid():
    x = torch.tensor([2.0], dtype=F64)
    assert torch.equal(gradient_flow([x], _quadratic(x), [0.0])[0][0], x)
    traj = gradient_flow([x], lambda p: 0.5 * (p[0] ** 2).sum(), np.array([0.0, 1.0]))
    assert math.isclose(float(traj[1][0]), 2 * math.exp(-1), rel_tol=1e-10)  # rtol 1e-12 default
    assert (DEFAULT_RTOL, DEFAULT_ATOL) == (1e-12, 1e-14)  # documented in gradient_flow


def test_loss_that_is_not_a_differentiable_function_is_refused():
    x = torch.ones(2, dtype=F64)
    detached = lambda p: (p[0].detach() ** 2).sum()  # noqa: E731
    for integrate in (
        lambda loss: gradient_flow([x], loss, [0.0, 1.0]),
        lambda loss: gradient_descent([x], loss, 0.1, 2),
    ):
        with pytest.raises(
            ValueError, match="`loss` must be a function of the list of parameters, got int"
        ):
            integrate(3)
        with pytest.raises(
            ValueError, match="`loss` must return a tensor differentiable in `params`"
        ):
            integrate(detached)
    with pytest.raises(ValueError, match="`max_step` must be a number > 0, got True"):
        gradient_flow([x], _quadratic(x), [0.0, 1.0], max_step=True)  # type: ignore[arg-type]

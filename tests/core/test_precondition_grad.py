"""Gradients of ``precondition``: the analytic backward against finite differences (float64)."""

import math

import pytest
import torch
from torch.autograd import gradcheck

from overparam import precondition

F64 = torch.float64


def _check(W, G, depth):
    W = W.clone().requires_grad_()
    G = G.clone().requires_grad_()
    # central differences with eps 1e-6 on O(1) entries: truncation ~1e-12 * third derivative,
    # rounding ~1e-16 / 1e-6 = 1e-10; the tolerances leave a factor 100 above both
    return gradcheck(lambda a, b: precondition(a, b, depth), (W, G), eps=1e-6, atol=1e-7, rtol=1e-6)


def _rotations(gen, n):
    Q1, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
    Q2, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
    return Q1, Q2


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (5, 3), (2, 7), (1, 4)])
@pytest.mark.parametrize("depth", [2, 3, 4])
def test_gradcheck_generic(gen, shape, depth):
    W = torch.randn(*shape, generator=gen, dtype=F64)
    assert _check(W, torch.randn(*shape, generator=gen, dtype=F64), depth)


@pytest.mark.parametrize("depth", [2, 3, 5])
def test_gradcheck_at_repeated_singular_values(gen, depth):
    """W = I (all singular values equal), a wide identity, and values 1e-9 apart: torch's SVD
    backward divides by s_i^2 - s_k^2 there and returns NaN."""
    G = torch.randn(4, 4, generator=gen, dtype=F64)
    assert _check(torch.eye(4, dtype=F64), G, depth)
    assert _check(torch.eye(3, 5, dtype=F64), torch.randn(3, 5, generator=gen, dtype=F64), depth)
    Q1, Q2 = _rotations(gen, 4)
    s = torch.tensor([2.0, 1.0 + 1e-9, 1.0, 0.5], dtype=F64)
    assert _check(Q1 @ torch.diag(s) @ Q2.T, G, depth)


@pytest.mark.parametrize("depth", [2, 3, 4, 2.5])
def test_rank_one_is_the_limit_of_central_differences(gen, depth):
    """The coefficients hold s^(2/N), not differentiable where a zero singular value grows (a
    kink |t| at depth 2): central differences converge to the returned gradient (the derivative
    at fixed rank) at the rate eps^(2/N), the order of that term; the log-log slope must be 2/N."""
    u = torch.randn(4, 1, generator=gen, dtype=F64)
    v = torch.randn(1, 5, generator=gen, dtype=F64)
    W, G = u @ v, torch.randn(4, 5, generator=gen, dtype=F64)
    Gbar = torch.randn(4, 5, generator=gen, dtype=F64)
    Wr = W.clone().requires_grad_()
    (grad,) = torch.autograd.grad((precondition(Wr, G, depth) * Gbar).sum(), Wr)
    assert torch.isfinite(grad).all()

    def loss(M):
        return float((precondition(M, G, depth) * Gbar).sum())

    steps = [1e-3, 1e-4, 1e-5, 1e-6]
    errors = []
    for h in steps:
        numeric = torch.zeros_like(W)
        for i in range(4):
            for j in range(5):
                E = torch.zeros_like(W)
                E[i, j] = h
                numeric[i, j] = (loss(W + E) - loss(W - E)) / (2 * h)
        errors.append(float((numeric - grad).abs().max()))
    slope = (math.log(errors[0]) - math.log(errors[-1])) / (
        math.log(steps[0]) - math.log(steps[-1])
    )
    assert slope == pytest.approx(2 / depth, abs=0.05)


def test_real_depth_gradient_at_distinct_singular_values(gen):
    W = torch.randn(3, 4, generator=gen, dtype=F64)
    assert _check(W, torch.randn(3, 4, generator=gen, dtype=F64), 2.5)


@pytest.mark.parametrize("depth", [3, 2.5, 70])
def test_forward_with_grad_equals_forward_without(gen, depth):
    for shape in [(4, 4), (3, 8), (8, 3)]:
        W = torch.randn(2, *shape, generator=gen, dtype=F64)
        G = torch.randn(2, *shape, generator=gen, dtype=F64)
        plain = precondition(W, G, depth)
        tracked = precondition(W.clone().requires_grad_(), G, depth)
        torch.testing.assert_close(tracked.detach(), plain, rtol=1e-12, atol=1e-12)


def test_batched_gradient_is_per_matrix(gen):
    W = torch.randn(3, 4, 6, generator=gen, dtype=F64, requires_grad=True)
    G = torch.randn(3, 4, 6, generator=gen, dtype=F64)
    (batched,) = torch.autograd.grad(precondition(W, G, 3).pow(2).sum(), W)
    W1 = W[1].detach().clone().requires_grad_()
    (single,) = torch.autograd.grad(precondition(W1, G[1], 3).pow(2).sum(), W1)
    torch.testing.assert_close(batched[1], single, rtol=1e-12, atol=1e-12)


def test_gradient_of_huge_inputs_is_finite(gen):
    """Scaling out powers of two keeps the graph: W at 1e200 with G at 1e-200 (depth 2)."""
    W0 = torch.randn(3, 3, generator=gen, dtype=F64)
    W = (1e200 * W0).requires_grad_()
    G = 1e-200 * torch.randn(3, 3, generator=gen, dtype=F64)
    (grad,) = torch.autograd.grad(precondition(W, G, 2).sum(), W)
    W0r = W0.clone().requires_grad_()
    # A_{N,W} is homogeneous of degree 1 in W at depth 2: its W-gradient of degree 0
    (ref,) = torch.autograd.grad(precondition(W0r, 1e200 * G, 2).sum() * 1e-200, W0r)
    assert grad.abs().max() > 0
    torch.testing.assert_close(grad, ref, rtol=1e-10, atol=0)


def test_torch_func_grad_and_vmap_use_the_same_backward(gen):
    G = torch.randn(3, 3, generator=gen, dtype=F64)

    def loss(M):
        return precondition(M, G, 3).pow(2).sum()

    W = torch.eye(3, dtype=F64)
    Wr = W.clone().requires_grad_()
    (expected,) = torch.autograd.grad(loss(Wr), Wr)
    torch.testing.assert_close(torch.func.grad(loss)(W), expected, rtol=1e-13, atol=1e-13)


def test_half_precision_gradient_is_the_float32_one(gen):
    W = torch.eye(4, dtype=torch.float32) + 0.1 * torch.randn(4, 4, generator=gen)
    G = torch.randn(4, 4, generator=gen)
    Wb = W.to(torch.bfloat16).requires_grad_()
    precondition(Wb, G.to(torch.bfloat16), 2).sum().backward()
    W32 = Wb.detach().float().requires_grad_()
    precondition(W32, G.to(torch.bfloat16).float(), 2).sum().backward()
    assert Wb.grad.dtype == torch.bfloat16
    assert torch.equal(Wb.grad, W32.grad.to(torch.bfloat16))


@pytest.mark.parametrize("depth", [1.5, 2.5, 3.7])
def test_real_depth_gradcheck_at_repeated_and_near_repeated_values(gen, depth):
    """Real depth: the second divided differences of t^N (direct, or the Taylor series when
    the nodes are within eps^(1/3) of each other) are exact at W = I and at gaps of 1e-12."""
    Q1, Q2 = _rotations(gen, 4)
    G = torch.randn(4, 4, generator=gen, dtype=F64)
    assert _check(torch.eye(4, dtype=F64), G, depth)
    assert _check(torch.eye(3, 5, dtype=F64), torch.randn(3, 5, generator=gen, dtype=F64), depth)
    for gap in (1e-3, 1e-6, 1e-12):
        s = torch.tensor([2.0, 1.0 + gap, 1.0, 0.5], dtype=F64)
        assert _check(Q1 @ torch.diag(s) @ Q2.T, G, depth)
    for shape in [(5, 3), (2, 7)]:
        W = torch.randn(*shape, generator=gen, dtype=F64)
        assert _check(W, torch.randn(*shape, generator=gen, dtype=F64), depth)


def test_real_depth_gradient_is_continuous_in_depth(gen):
    """The real-depth backward at N = 3 + d approaches the integer one linearly in d."""
    W = torch.randn(4, 6, generator=gen, dtype=F64, requires_grad=True)
    G = torch.randn(4, 6, generator=gen, dtype=F64)
    (base,) = torch.autograd.grad(precondition(W, G, 3).pow(2).sum(), W)
    slopes = []
    for d in (1e-5, 1e-7):
        (near,) = torch.autograd.grad(precondition(W, G, 3 + d).pow(2).sum(), W)
        slopes.append(float((near - base).abs().max()) / d)
    assert slopes[1] == pytest.approx(slopes[0], rel=1e-3)

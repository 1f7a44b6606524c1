"""EndToEndSGD: the update formula, SGD at depth 1, O(lr) agreement with real factor training."""

import copy
import io

import numpy as np
import pytest
import torch
from torch import nn

from overparam import balanced_factors, precondition, product
from overparam.optim import (
    EndToEndSGD,
    end_to_end_direction,
    end_to_end_sgd,
)

EXACT = {"precondition_every": 1, "eps": 0.0}  # the exact rule of Theorem 1


def power(S: torch.Tensor, p: float) -> torch.Tensor:
    e, Q = torch.linalg.eigh(S)
    e = torch.where(e > 1e-10 * e.max(), e, torch.zeros_like(e))  # null space: exact 0, 0^0 = 1
    return (Q * e.clamp_min(0).pow(p)) @ Q.mT


def naive(W: torch.Tensor, G: torch.Tensor, N: int) -> torch.Tensor:
    """sum_j (W W^T)^((N-j)/N) G (W^T W)^((j-1)/N) with eigendecomposition powers (Theorem 1)."""
    return sum(
        power(W @ W.mT, (N - j) / N) @ G @ power(W.mT @ W, (j - 1) / N) for j in range(1, N + 1)
    )


def test_direction_matches_naive_formula_with_conv_reshape(gen):
    W = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    K = torch.randn(3, 2, 2, 2, generator=gen, dtype=torch.float64)  # a conv kernel: 3 x 8
    b = torch.randn(4, generator=gen, dtype=torch.float64)
    grads = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in (W, K, b)]
    W2 = torch.randn(4, 6, generator=gen, dtype=torch.float64)  # same shape as W: batched
    g2 = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    dW, dK, db, dW2 = end_to_end_direction([W, K, b, W2], [*grads, g2], depth=3)
    # eigh of Gram matrices squares the condition number: ~1e-10 agreement on these well-conditioned draws
    assert torch.allclose(dW, naive(W, grads[0], 3), atol=1e-10)
    assert torch.allclose(
        dK, naive(K.reshape(3, 8), grads[1].reshape(3, 8), 3).reshape(K.shape), atol=1e-10
    )
    assert torch.equal(db, grads[2])  # 1-D: plain gradient
    assert torch.allclose(dW2, naive(W2, g2, 3), atol=1e-10)


@pytest.mark.parametrize("shape", [(5, 6), (6, 5), (4, 7), (7, 4), (6, 6)])
@pytest.mark.parametrize("depth", [1, 2, 3, 2.5])
def test_direction_unchanged_by_routing(gen, shape, depth):
    """Both sides of the 1.25 aspect-ratio switch (and square) give core ``precondition``'s
    result: full rank, rank 2, and W = 0 (A = G at depth 1, A = 0 beyond: 0^(positive) = 0)."""
    m, n = shape
    full = torch.randn(shape, generator=gen, dtype=torch.float64)
    low = torch.randn(m, 2, generator=gen, dtype=torch.float64) @ torch.randn(
        2, n, generator=gen, dtype=torch.float64
    )
    for W in (full, low, torch.zeros(shape, dtype=torch.float64)):
        G = torch.randn(shape, generator=gen, dtype=torch.float64)
        (ours,) = end_to_end_direction([W], [G], depth)
        # same operator, different factorizations (QR + square SVD vs one SVD): rounding only,
        # ~1e-15 relative; 1e-12 absolute on O(1) entries
        assert torch.allclose(ours, precondition(W, G, depth), atol=1e-12, rtol=0)


def test_float32_step_at_convnet_aspect(gen):
    """A float32 EndToEndSGD step on a 32 x 196 weight (the 512 x 3136 dense layer's aspect ratio)
    equals the float64 step, to float32 rounding."""
    W = nn.Parameter(0.1 * torch.randn(32, 196, generator=gen))
    G = torch.randn(32, 196, generator=gen)
    start = W.detach().double().clone()
    W.grad = G.clone()
    EndToEndSGD([W], lr=0.01, depth=2, momentum=0.9, **EXACT).step()
    ref = start - 0.01 * precondition(start, G.double(), 2)
    # float32 QR/SVD of a 32 x 196 matrix: relative error ~1e-6 of the O(1) direction, times lr
    assert torch.allclose(W.detach().double(), ref, atol=1e-7, rtol=0)


def test_depth_one_is_torch_sgd(gen):
    """depth=1: the same trajectory as torch.optim.SGD with momentum and weight decay."""
    a = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    b = copy.deepcopy(a)
    ours = EndToEndSGD(a.parameters(), lr=0.1, depth=1, momentum=0.9, weight_decay=0.01, **EXACT)
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    x = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    for _ in range(5):
        for net, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-14, rtol=0)


def test_functional_step_with_momentum_and_decay(gen):
    W = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    G = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    start, buffers = W.clone(), [None]
    end_to_end_sgd([W], [G], buffers, lr=0.1, depth=2, momentum=0.5, weight_decay=0.2)
    d1 = naive(start, G + 0.2 * start, 2)
    assert torch.allclose(W, start - 0.1 * d1, atol=1e-12) and torch.allclose(
        buffers[0], d1, atol=1e-12
    )
    second = W.clone()
    end_to_end_sgd([W], [G], buffers, lr=0.1, depth=2, momentum=0.5, weight_decay=0.2)
    d2 = naive(second, G + 0.2 * second, 2)
    assert torch.allclose(W, second - 0.1 * (0.5 * d1 + d2), atol=1e-12)


def _trajectories(lr: float, t: float, gen_seed: int) -> float:
    """Max distance between EndToEndSGD and GD on balanced factors, same time horizon ``t``."""
    g = torch.Generator().manual_seed(gen_seed)
    X = torch.randn(20, 3, generator=g, dtype=torch.float64)
    Y = torch.randn(20, 4, generator=g, dtype=torch.float64)
    W0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    N = 3
    factors = [f.clone().requires_grad_() for f in balanced_factors(W0, N)]
    W = nn.Parameter(W0.clone())
    opt = EndToEndSGD([W], lr=lr, depth=N, **EXACT)
    gd = torch.optim.SGD(factors, lr=lr)
    worst = 0.0
    for _ in range(round(t / lr)):
        for loss_of, o in ((lambda: 0.5 * (X @ W.mT - Y).square().mean(), opt),
                           (lambda: 0.5 * (X @ product(factors).mT - Y).square().mean(), gd)):  # fmt: skip
            o.zero_grad()
            loss_of().backward()
            o.step()
        worst = max(worst, float((W - product(factors)).detach().abs().max()))
    return worst


def test_matches_real_factor_training_to_order_lr():
    """Both discretize the same end-to-end flow (Theorem 1): their gap is O(lr), slope 1 in log-log."""
    lrs = [0.02, 0.01, 0.005]
    gaps = [_trajectories(lr, t=2.0, gen_seed=7) for lr in lrs]
    slope = np.polyfit(np.log(lrs), np.log(gaps), 1)[0]
    # first order (O(lr^2) would give 2, no convergence 0); the band allows O(lr^2) corrections
    assert 0.85 < slope < 1.15, (gaps, slope)
    assert gaps[-1] < 0.01  # and small in absolute terms at the finest step


def test_state_dict_round_trip_and_closure(gen):
    net = nn.Linear(4, 3).double()
    x = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    opt = EndToEndSGD(net.parameters(), lr=0.05, depth=2, momentum=0.9)

    def closure(net=net, opt=opt):
        opt.zero_grad()
        loss = net(x).square().mean()
        loss.backward()
        return loss

    first = opt.step(closure)
    assert torch.is_tensor(first) and first > 0
    opt.step(closure)
    twin = copy.deepcopy(net)
    opt2 = EndToEndSGD(twin.parameters(), lr=1.0, depth=5)
    saved = io.BytesIO()
    torch.save(opt.state_dict(), saved)  # as from a checkpoint file (a live dict shares buffers)
    saved.seek(0)
    opt2.load_state_dict(torch.load(saved))
    assert opt2.param_groups[0]["depth"] == 2 and opt2.param_groups[0]["lr"] == 0.05
    for _ in range(3):
        opt.step(closure)
        opt2.step(lambda: closure(twin, opt2))
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_per_group_depth(gen):
    a, b = nn.Linear(3, 3).double(), nn.Linear(3, 3).double()
    ref = copy.deepcopy(b)
    opt = EndToEndSGD(
        [{"params": a.parameters()}, {"params": b.parameters(), "depth": 1}],
        lr=0.1,
        depth=4,
        **EXACT,
    )
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    W = a.weight.detach().clone()
    (a(x).sum() + b(x).sum()).backward()
    ref(x).sum().backward()
    G = a.weight.grad.clone()
    opt.step()
    sgd.step()
    assert torch.allclose(a.weight, W - 0.1 * naive(W, G, 4), atol=1e-10)
    assert torch.equal(b.weight, ref.weight)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(gen):
    """The same steps on CUDA and CPU (float64; the wide 3 x 9 weight takes the QR path)."""
    net = nn.Sequential(nn.Linear(9, 3), nn.Tanh(), nn.Linear(3, 3)).double()
    gpu = copy.deepcopy(net).cuda()
    x = torch.randn(7, 9, generator=gen, dtype=torch.float64)
    opts = [
        EndToEndSGD(m.parameters(), lr=0.05, depth=3, momentum=0.9, weight_decay=1e-3, **EXACT)
        for m in (net, gpu)
    ]
    for _ in range(4):
        for model, opt, inp in ((net, opts[0], x), (gpu, opts[1], x.cuda())):
            opt.zero_grad()
            model(inp).square().mean().backward()
            opt.step()
    state = opts[1].state[gpu[0].weight]["momentum_buffer"]
    assert state.is_cuda
    for p, q in zip(net.parameters(), gpu.parameters(), strict=True):
        assert q.is_cuda
        # cuSOLVER and LAPACK round differently: 1e-10 after 4 float64 steps
        assert torch.allclose(p, q.cpu(), atol=1e-10)


def test_a_bare_tensor_or_a_malformed_group_is_refused_by_name():
    w = nn.Linear(4, 3).weight
    with pytest.raises(
        ValueError,
        match=r"`params` must be an iterable of tensors or param-group dicts, got a Tensor",
    ):
        EndToEndSGD(w, lr=0.1, depth=2)
    with pytest.raises(
        ValueError, match=r"param group 0 must have a 'params' entry, got keys \['lr'\]"
    ):
        EndToEndSGD([{"lr": 0.1}], lr=0.1, depth=2)
    with pytest.raises(
        ValueError, match=r"param group 0 has unknown key 'lrr'; known keys: \[.*'depth', .*'lr'"
    ):
        EndToEndSGD([{"params": [w], "lrr": 0.1}], lr=0.1, depth=2)
    opt = EndToEndSGD([w], lr=0.1, depth=2)
    with pytest.raises(ValueError, match=r"param group 1 has unknown key 'dept'"):
        opt.add_param_group({"params": [nn.Linear(2, 2).weight], "dept": 3})
    with pytest.raises(ValueError, match=r"param group 1: `depth` must be >= 1, got 0"):
        opt.add_param_group({"params": [nn.Linear(2, 2).weight], "depth": 0})
    assert len(opt.param_groups) == 1


def test_integer_parameters_are_refused_at_construction():
    w = torch.zeros(3, 4, dtype=torch.long)
    w.grad = torch.ones_like(w)
    with pytest.raises(
        ValueError,
        match=r"param group 0, parameter 1 \(shape \(3, 4\)\) must have a floating dtype .*got torch.int64",
    ):
        EndToEndSGD([torch.zeros(2, dtype=torch.float64), w], lr=0.1, depth=2)


def test_empty_parameters_take_a_no_op_step(gen):
    empty = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    empty.grad = torch.zeros(0, 4, dtype=torch.float64)
    w.grad = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    reference = w.detach().clone().requires_grad_()
    reference.grad = w.grad.clone()
    opt = EndToEndSGD([empty, w], lr=0.1, depth=2, momentum=0.9, **EXACT)
    opt.step()
    EndToEndSGD([reference], lr=0.1, depth=2, momentum=0.9, **EXACT).step()
    assert empty.shape == (0, 4)
    torch.testing.assert_close(w, reference, rtol=0, atol=0)


def test_load_state_dict_validates_the_groups(gen):
    w = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    opt = EndToEndSGD([w], lr=0.1, depth=2)
    state = copy.deepcopy(opt.state_dict())
    state["param_groups"][0]["depth"] = 0
    with pytest.raises(ValueError, match=r"param group 0: `depth` must be >= 1, got 0"):
        opt.load_state_dict(state)
    assert opt.param_groups[0]["depth"] == 2

"""DeepLinear: inits, forward, and Theorem 1 against autograd on the factors."""

import pytest
import torch

from overparam import DeepLinear, imbalance, lp_gradient, lp_loss, precondition, product

F64 = torch.float64


def test_forward_and_inits(gen):
    net = DeepLinear([4, 6, 3], init="balanced", scale=0.5, generator=gen)
    x = torch.randn(7, 4, generator=gen, dtype=F64)
    torch.testing.assert_close(net(x), x @ net.end_to_end().T)
    assert all(D.abs().max() < 1e-13 for D in imbalance(list(net.factors)))
    near = DeepLinear([4, 6, 3], init="near_zero", scale=1e-3, generator=gen)
    assert 1e-4 < float(near.factors[0].detach().std()) < 1e-2
    ident = DeepLinear([3, 3, 3, 3], init="identity")
    torch.testing.assert_close(ident.end_to_end(), torch.eye(3, dtype=F64))
    explicit = DeepLinear([2, 1], init=[torch.ones(1, 2, dtype=F64)])
    assert explicit.depth == 1


def _run(net: DeepLinear, X, Y, p, lr, steps):
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        lp_loss(net(X), Y, p).backward()
        opt.step()
    return net.end_to_end().detach()


def _emulate(W, X, Y, p, lr, steps, depth):
    for _ in range(steps):
        W = W - lr * precondition(W, lp_gradient(W, X, Y, p), depth)
    return W


@pytest.mark.parametrize("p", [2, 4])
@pytest.mark.parametrize("dims", [[5, 1, 1], [5, 100, 1], [5, 1, 1, 1], [5, 8, 8, 3], [5, 100, 3]])
def test_factor_gd_tracks_end_to_end_rule(gen, dims, p):
    """Theorem 1: GD on balanced factors = the end-to-end rule up to O(lr) over a fixed horizon."""
    X = torch.randn(40, 5, generator=gen, dtype=F64)
    Y = torch.randn(40, dims[-1], generator=gen, dtype=F64)
    start = DeepLinear(dims, init="balanced", scale=0.5, generator=gen)
    W0, depth, horizon = start.end_to_end().detach(), len(dims) - 1, 0.4
    gaps = []
    for lr in (0.005, 0.0025):
        steps = round(horizon / lr)
        net = DeepLinear(dims, init=[f.detach() for f in start.factors])
        gap = _run(net, X, Y, p, lr, steps) - _emulate(W0, X, Y, p, lr, steps, depth)
        gaps.append(float(gap.norm() / W0.norm()))
    # Second-order terms make the gap proportional to lr: halving lr halves it (ratio 2, with
    # O(lr) corrections); a rule wrong at first order would give a gap that does not shrink.
    assert gaps[0] < 0.01
    assert 1.8 < gaps[0] / gaps[1] < 2.5


def test_imbalance_moves_by_exact_second_order_term(gen):
    """One GD step changes W_{j+1}^T W_{j+1} - W_j W_j^T by exactly lr^2 (G_{j+1}^T G_{j+1} - G_j G_j^T)."""
    net = DeepLinear([4, 5, 3, 2], init="near_zero", scale=0.7, generator=gen)
    X = torch.randn(20, 4, generator=gen, dtype=F64)
    Y = torch.randn(20, 2, generator=gen, dtype=F64)
    before = [D.detach() for D in imbalance(list(net.factors))]
    lp_loss(net(X), Y, 4).backward()
    grads = [f.grad.clone() for f in net.factors]
    lr = 0.05
    with torch.no_grad():
        for f, g in zip(net.factors, grads, strict=True):
            f -= lr * g
    after = imbalance(list(net.factors))
    for j, (b, a) in enumerate(zip(before, after, strict=True)):
        expected = lr**2 * (grads[j + 1].T @ grads[j + 1] - grads[j] @ grads[j].T)
        torch.testing.assert_close(a.detach() - b, expected, rtol=1e-9, atol=1e-13)
    assert product([f.detach() for f in net.factors]).shape == (2, 4)


def test_errors():
    with pytest.raises(ValueError, match="`init` must be one of"):
        DeepLinear([2, 2], init="orthogonal")
    with pytest.raises(ValueError, match="needs equal layer sizes"):
        DeepLinear([2, 3], init="identity")
    with pytest.raises(ValueError, match="`dims` must list at least 2 sizes"):
        DeepLinear([2])
    with pytest.raises(ValueError, match=r"`init` matrices must have shapes \[\(1, 2\)\]"):
        DeepLinear([2, 1], init=[torch.ones(2, 2)])
    with pytest.raises(ValueError, match="`scale` must be > 0"):
        DeepLinear([2, 1], init="balanced", scale=0.0)
    with pytest.raises(ValueError, match="`x` must have 2 features"):
        DeepLinear([2, 1])(torch.ones(3, 4, dtype=F64))


def test_imbalance_change_per_step_has_slope_two(gen):
    """||D(t+1) - D(t)|| = O(lr^2): the fitted log-log slope over three decades of lr is 2."""
    net = DeepLinear([3, 4, 2], init="balanced", scale=0.8, generator=gen)
    X = torch.randn(15, 3, generator=gen, dtype=F64)
    Y = torch.randn(15, 2, generator=gen, dtype=F64)
    lp_loss(net(X), Y, 2).backward()
    W1, W2 = (f.detach() for f in net.factors)
    G1, G2 = (f.grad for f in net.factors)
    (D0,) = imbalance([W1, W2])
    lrs = torch.logspace(-4, -1, 7, dtype=F64)
    changes = torch.stack([(imbalance([W1 - lr * G1, W2 - lr * G2])[0] - D0).norm() for lr in lrs])
    x, y = lrs.log(), changes.log()
    fitted = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    assert abs(float(fitted) - 2.0) < 0.01


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: DeepLinear([4, 2, 1], dtype=torch.int64), r"`dtype` must be a floating torch.dtype .*got torch.int64"),
        (lambda: DeepLinear([4, 2, 1], dtype="float64"), r"`dtype` must be a floating torch.dtype .*got 'float64'"),
        (lambda: DeepLinear([4, 2, 1], generator=0), "`generator` must be a torch.Generator or None, got int"),
        (lambda: DeepLinear([2, 1], init=[torch.ones(1, 2, dtype=torch.int64)]), r"`init\[0\]` must have a floating dtype"),
        (lambda: DeepLinear([2, 1], init=[torch.full((1, 2), float("nan"))]), r"`init\[0\]` contains NaN or infinite"),
        (
            lambda: DeepLinear([2, 2, 1], init=[torch.ones(2, 2), torch.ones(1, 2, dtype=F64)]),
            r"`init\[1\]` must have the dtype of `init\[0\]` \(torch.float32\), got torch.float64",
        ),
        (lambda: DeepLinear([2, 2], init=torch.eye(2)), "`init` must be a list of 1 matrices, got a Tensor"),
    ],
)  # fmt: skip
def test_bad_constructor_arguments_name_the_argument(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_forward_checks_the_input_tensor():
    net = DeepLinear([2, 1])
    with pytest.raises(
        ValueError,
        match=r"`x` must be a torch.float64 tensor .*got torch.float32 of shape \(3, 2\)",
    ):
        net(torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"`x` must be a torch.float64 tensor .*got torch.int64"):
        net(torch.ones(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"of >= 1 dimensions, got torch.float64 of shape \(\)"):
        net(torch.tensor(1.0, dtype=F64))
    x = torch.arange(6, dtype=F64).reshape(2, 3).mT  # a non-contiguous view
    assert torch.equal(net(x), x @ net.end_to_end().mT)

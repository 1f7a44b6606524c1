"""EndToEndSGD.capture: gradients kept as ``Delta^T X`` give the dense route's trajectory, and the
low-rank route is taken exactly when the captured pairs are the gradient."""

import copy

import pytest
import torch
from torch import nn

import overparam.optim._end_to_end_sgd as e2e
from overparam.optim import EndToEndSGD


@pytest.fixture
def spy(monkeypatch):
    """Counts the rows of every low-rank application (one entry per call)."""
    calls: list[int] = []
    real = e2e.low_rank_factors

    def counted(factors, W, left, right, depth, eps=0.0, outputs=None):
        calls.append(int(left.shape[-2]))
        return real(factors, W, left, right, depth, eps, outputs)

    monkeypatch.setattr(e2e, "low_rank_factors", counted)
    return calls


def _net(gen, width=12):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    return nn.Sequential(
        nn.Linear(10, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 3)
    ).double()


def _train(net, capture, steps=8, batch=4, accumulate=1, touch=None, seed=0, **kw):
    """Parameters after ``steps`` steps of depth-``kw['depth']`` EndToEndSGD on fixed data."""
    net = copy.deepcopy(net)
    settings = {"lr": 0.05, "depth": 2, "momentum": 0.9, "precondition_every": 3, **kw}
    opt = EndToEndSGD(net.parameters(), **settings)
    if capture:
        opt.capture(net)
    data = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        opt.zero_grad()
        for _ in range(accumulate):
            x = torch.randn(batch, 10, generator=data, dtype=torch.float64)
            net(x).sin().sum().backward()
        if touch is not None:
            touch(net)
        opt.step()
    return torch.cat([p.detach().flatten() for p in net.parameters()])


@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("every", [1, 3])
def test_captured_trajectory_equals_the_dense_one(gen, spy, depth, every):
    net = _net(gen)
    dense = _train(net, False, depth=depth, precondition_every=every)
    assert spy == []
    low = _train(net, True, depth=depth, precondition_every=every)
    assert torch.allclose(low, dense, atol=1e-11, rtol=0)
    # the two 12-wide hidden layers and the first (10 -> 12) take it; the 3 x 12 head does not pay
    assert len(spy) == 8 * 2 and set(spy) == {4}


def test_gradient_accumulation_concatenates_the_rows(gen, spy):
    net = _net(gen)
    dense = _train(net, False, accumulate=2, batch=2)
    low = _train(net, True, accumulate=2, batch=2)
    assert torch.allclose(low, dense, atol=1e-11, rtol=0)
    assert set(spy) == {4}


def test_rescaled_gradients_keep_the_low_rank_route(gen, spy):
    """A uniform rescaling of ``.grad`` (clipping, GradScaler.unscale_) is absorbed."""

    def clip(net):
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.01)

    net = _net(gen)
    low = _train(net, True, touch=clip)
    assert len(spy) == 16
    assert torch.allclose(low, _train(net, False, touch=clip), atol=1e-11, rtol=0)


def test_a_changed_gradient_falls_back_to_it(gen, spy):
    """An extra term in ``.grad`` (a shared weight, a penalty) fails the check: dense route."""

    def extra(net):
        net[2].weight.grad.add_(torch.ones_like(net[2].weight) * 1e-3)

    net = _net(gen)
    low = _train(net, True, touch=extra)
    assert len(spy) == 8  # only the first layer still takes it
    assert torch.allclose(low, _train(net, False, touch=extra), atol=1e-11, rtol=0)


def test_stale_pairs_after_model_zero_grad_are_not_used(gen, spy):
    """``model.zero_grad()`` between backward passes: the first pass's pairs are stale."""
    net = _net(gen)
    opt = EndToEndSGD(net.parameters(), lr=0.05, depth=2)
    opt.capture(net)
    x = torch.randn(4, 10, generator=gen, dtype=torch.float64)
    net(x).sum().backward()
    net.zero_grad()
    net(2 * x).sum().backward()
    reference = copy.deepcopy(net)
    ref_opt = EndToEndSGD(reference.parameters(), lr=0.05, depth=2)
    for p, q in zip(net.parameters(), reference.parameters(), strict=True):
        q.grad = p.grad.clone()
    opt.step()
    ref_opt.step()
    assert spy == []
    for p, q in zip(net.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "settings", [{"weight_decay": 0.01}, {"depth": 2.5}], ids=["weight decay", "real depth"]
)
def test_dense_route_where_the_low_rank_form_does_not_apply(gen, spy, settings):
    net = _net(gen)
    low = _train(net, True, **settings)
    assert spy == []
    assert torch.allclose(low, _train(net, False, **settings), atol=1e-11, rtol=0)


def test_large_batches_are_not_recorded(gen, spy):
    """Past the rows where the low-rank route pays, nothing is kept (memory) and G is used."""
    net = _net(gen)
    low = _train(net, True, batch=64)
    assert spy == []
    assert torch.allclose(low, _train(net, False, batch=64), atol=1e-11, rtol=0)


def test_no_capture_without_backward_and_after_remove(gen, spy):
    net = _net(gen)
    opt = EndToEndSGD(net.parameters(), lr=0.05, depth=2)
    handle = opt.capture(net)
    x = torch.randn(4, 10, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        net(x)
    net(x)  # a graph but no backward
    assert all(not entry.inputs for entry in opt._low_rank.pairs.values())
    handle.remove()
    net(x).sum().backward()
    opt.step()
    assert spy == []


def test_bad_arguments(gen):
    net = _net(gen)
    opt = EndToEndSGD(net.parameters(), lr=0.05, depth=2)
    with pytest.raises(ValueError, match=r"`model` must be a torch.nn.Module, got list"):
        opt.capture([net])
    with pytest.raises(ValueError, match="no nn.Linear layer whose weight this optimizer"):
        opt.capture(nn.Sequential(nn.Linear(2, 2)))


def test_float32_and_bf16_autocast_take_the_low_rank_route(gen, spy):
    """float32: the check passes at its rounding (1000 eps); the trajectories agree to float32
    rounding of 8 steps.  bf16 autocast: the captured factors are bf16, the check's 4 eps
    (3.1e-2) covers their rounding, and the update matches the dense route to bf16 precision
    (measured: 2.7e-3 of the distance travelled apart, where the bf16 and float32 dense routes
    are 3.2e-3 apart; bound 1e-2)."""
    net = _net(gen).float()

    def run(capture, autocast):
        model = copy.deepcopy(net)
        opt = EndToEndSGD(model.parameters(), lr=0.05, depth=2, momentum=0.9)
        if capture:
            opt.capture(model)
        data = torch.Generator().manual_seed(0)
        for _ in range(8):
            opt.zero_grad()
            x = torch.randn(4, 10, generator=data)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = model(x)
            out.float().sin().sum().backward()
            opt.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    dense = run(False, False)
    assert torch.allclose(run(True, False), dense, atol=1e-5, rtol=0)
    assert len(spy) == 16
    spy.clear()
    low, ref = run(True, True), run(False, True)
    assert len(spy) > 0
    start = torch.cat([p.detach().flatten() for p in net.parameters()])
    assert float((low - ref).norm() / (ref - start).norm()) < 1e-2


def test_a_copied_optimizer_has_no_hooks_and_still_steps(gen, spy):
    net = _net(gen)
    opt = EndToEndSGD(net.parameters(), lr=0.05, depth=2)
    opt.capture(net)
    twin = copy.deepcopy(opt)
    assert twin._low_rank is None
    x = torch.randn(4, 10, generator=gen, dtype=torch.float64)
    net(x).sum().backward()
    twin.step()
    assert spy == []


def test_direction_refuses_mismatched_pairs(gen):
    from overparam.optim import end_to_end_direction

    W = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    G = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    good = (torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64))
    out = end_to_end_direction([W], [good[0].T @ good[1]], 2, low_rank=[good])[0]
    assert torch.allclose(out, end_to_end_direction([W], [good[0].T @ good[1]], 2)[0], atol=1e-12)
    Y = good[1] @ W.mT
    with_outputs = end_to_end_direction([W], [good[0].T @ good[1]], 2, low_rank=[(*good, Y)])[0]
    assert torch.allclose(with_outputs, out, atol=1e-12)
    bad = (torch.randn(3, 4, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64))
    shapes = r"shapes \(B, 4\), \(B, 6\) and \(B, 4\) for a parameter of shape \(4, 6\)"
    with pytest.raises(ValueError, match=rf"`low_rank\[0\]` must be \(Delta, X\) or \(Delta, X, Y = X W\^T\) of {shapes}, got \(3, 4\) and \(2, 6\)"):  # fmt: skip
        end_to_end_direction([W], [G], 2, low_rank=[bad])
    with pytest.raises(ValueError, match=rf"{shapes}, got \(3, 4\) and \(3, 6\) and \(3, 6\)"):
        end_to_end_direction([W], [G], 2, low_rank=[(*good, good[1])])
    with pytest.raises(ValueError, match=r"`low_rank\[0\]` must be a tuple \(Delta, X\) or \(Delta, X, Y\)"):  # fmt: skip
        end_to_end_direction([W], [G], 2, low_rank=[good[0]])
    with pytest.raises(ValueError, match=r"`low_rank\[0\]` must hold tensors, got \['Tensor', 'list'\]"):  # fmt: skip
        end_to_end_direction([W], [G], 2, low_rank=[(good[0], [1.0])])
    with pytest.raises(ValueError, match=r"`low_rank` must have one entry per param \(1\), got 2"):
        end_to_end_direction([W], [G], 2, low_rank=[good, good])


def test_decoupled_weight_decay_keeps_the_low_rank_route(gen, spy):
    """``W <- (1 - lr wd) W - lr b`` with ``b`` the momentum of ``A(g)``: a naive loop agrees, and
    the captured route is taken (coupled decay would need the dense ``g + wd W``)."""
    net = _net(gen)
    settings = {"weight_decay": 0.1, "decoupled_weight_decay": True, "precondition_every": 1}
    low = _train(net, True, eps=0.0, **settings)
    assert len(spy) == 16
    ref = copy.deepcopy(net)
    opt = EndToEndSGD(ref.parameters(), lr=0.05, depth=2, momentum=0.9, precondition_every=1, eps=0.0)  # fmt: skip
    data = torch.Generator().manual_seed(0)
    for _ in range(8):  # naive: the undecayed update, then the decay of the pre-step weights
        opt.zero_grad()
        ref(torch.randn(4, 10, generator=data, dtype=torch.float64)).sin().sum().backward()
        before = [p.detach().clone() for p in ref.parameters()]
        opt.step()
        with torch.no_grad():
            for p, w in zip(ref.parameters(), before, strict=True):
                p.sub_(0.05 * 0.1 * w)
    naive = torch.cat([p.detach().flatten() for p in ref.parameters()])
    assert torch.allclose(low, naive, atol=1e-12, rtol=0)


def test_old_checkpoints_load_without_the_decoupled_key(gen):
    net = _net(gen)
    opt = EndToEndSGD(net.parameters(), lr=0.05, depth=2, weight_decay=0.01)
    state = opt.state_dict()
    for group in state["param_groups"]:
        del group["decoupled_weight_decay"]
    fresh = EndToEndSGD(net.parameters(), lr=0.05, depth=2)
    fresh.load_state_dict(state)
    assert all(g["decoupled_weight_decay"] is False for g in fresh.param_groups)
    with pytest.raises(ValueError, match=r"`decoupled_weight_decay` must be a bool, got 1"):
        EndToEndSGD(net.parameters(), lr=0.05, depth=2, decoupled_weight_decay=1)


def test_without_momentum_the_direction_is_added_to_the_weights_in_the_product(gen, spy):
    net = _net(gen)
    low = _train(net, True, momentum=0.0)
    assert len(spy) == 16
    assert torch.allclose(low, _train(net, False, momentum=0.0), atol=1e-11, rtol=0)


def _wide_run(capture, touch=None, calls=None, steps=6, tall=False):
    """A 6 x 40 layer (lopsided, well conditioned: the Gram route, its long side through W), or
    a 40 x 6 one (``tall``: ``U`` follows ``W``)."""
    torch.manual_seed(5)
    layers = (nn.Linear(6, 40), nn.Tanh(), nn.Linear(40, 3)) if tall else (nn.Linear(40, 6), nn.Tanh(), nn.Linear(6, 3))  # fmt: skip
    net = nn.Sequential(*layers).double()
    opt = EndToEndSGD(net.parameters(), lr=0.05, depth=2, momentum=0.9, precondition_every=3)
    if capture:
        opt.capture(net)
    data = torch.Generator().manual_seed(0)
    for _ in range(steps):
        opt.zero_grad()
        width = 6 if tall else 40
        net(torch.randn(4, width, generator=data, dtype=torch.float64)).sin().sum().backward()
        if touch is not None:
            touch(net)
        opt.step()
    assert ("basis_u" if tall else "basis_v") not in opt.state[net[0].weight]  # follows W
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def test_a_tall_layer_with_its_long_side_through_the_weight(gen, spy):
    """40 x 6: the low-rank route forms ``Delta W`` itself (no outputs are recorded for it) and
    gives the dense route's trajectory (1e-11)."""
    low = _wide_run(True, tall=True)
    assert spy.count(4) >= 6  # the 40 x 6 layer took it at every step
    assert torch.allclose(low, _wide_run(False, tall=True), atol=1e-11, rtol=0)


def test_recorded_outputs_stand_in_for_the_product_with_the_weight(monkeypatch):
    """Capture records ``X W^T`` (the output less its bias) and the step uses it; for a weight
    changed in place after the forward pass (its version counter moved) ``X W^T`` is formed
    again.  Both trajectories equal the dense route's (1e-11, float64)."""
    outputs: list[bool] = []
    real = e2e.low_rank_factors

    def spied(factors, W, left, right, depth, eps=0.0, outputs_=None):
        if W.shape[-2:] == (6, 40):
            outputs.append(outputs_ is not None)
        return real(factors, W, left, right, depth, eps, outputs_)

    monkeypatch.setattr(e2e, "low_rank_factors", spied)

    def nudge(net):
        with torch.no_grad():
            net[0].weight.mul_(1.001)

    for touch, used in ((None, True), (nudge, False)):
        outputs.clear()
        low = _wide_run(True, touch)
        assert outputs == [used] * 6
        assert torch.allclose(low, _wide_run(False, touch), atol=1e-11, rtol=0)


class _Shifted(nn.Linear):
    """A subclass whose output is not ``x W^T + b`` (as a LoRA-style layer's is not)."""

    def forward(self, x):
        return super().forward(x) + 0.5 * x[..., : self.out_features]


@pytest.mark.parametrize("case", ["subclass", "earlier hook"])
def test_outputs_that_are_not_x_w_t_are_not_recorded(case, monkeypatch):
    """A subclass's forward, or a forward hook registered before ``capture`` that replaces the
    output: ``X W^T`` is formed instead of read from the output, and the trajectory is the dense
    route's (the gradient check absorbs the hook's rescaling)."""
    outputs: list[bool] = []
    real = e2e.low_rank_factors

    def spied(factors, W, left, right, depth, eps=0.0, outputs_=None):
        if W.shape[-2:] == (6, 40):
            outputs.append(outputs_ is not None)
        return real(factors, W, left, right, depth, eps, outputs_)

    monkeypatch.setattr(e2e, "low_rank_factors", spied)

    def run(capture):
        torch.manual_seed(5)
        first = _Shifted(40, 6) if case == "subclass" else nn.Linear(40, 6)
        net = nn.Sequential(first, nn.Tanh(), nn.Linear(6, 3)).double()
        if case == "earlier hook":
            net[0].register_forward_hook(lambda module, args, out: 2.0 * out)
        opt = EndToEndSGD(net.parameters(), lr=0.05, depth=2, momentum=0.9, precondition_every=3)
        if capture:
            opt.capture(net)
        data = torch.Generator().manual_seed(0)
        for _ in range(6):
            opt.zero_grad()
            net(torch.randn(4, 40, generator=data, dtype=torch.float64)).sin().sum().backward()
            opt.step()
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    low = run(True)
    assert outputs == [False] * 6  # the low-rank route, with X W^T formed
    assert torch.allclose(low, run(False), atol=1e-11, rtol=0)

"""Batched optimizers against torch.optim, one configuration at a time (independent code)."""

import pytest
import torch

from overparam.training import apply_update, init_state
from overparam.training.optimizers import check_optimizer

TORCH = {
    "gd": lambda p, lr: torch.optim.SGD([p], lr=lr),
    "adagrad": lambda p, lr: torch.optim.Adagrad([p], lr=lr, eps=1e-10),
    "adadelta": lambda p, lr: torch.optim.Adadelta([p], lr=lr, rho=0.9, eps=1e-6),
    "adam": lambda p, lr: torch.optim.Adam([p], lr=lr, betas=(0.9, 0.999), eps=1e-8),
}


@pytest.mark.parametrize("name", sorted(TORCH))
def test_matches_torch_optim_per_configuration(name, gen):
    K, steps = 3, 7
    lrs = torch.tensor([0.01, 0.1, 0.5], dtype=torch.float64)
    W0 = torch.randn(K, 2, 3, dtype=torch.float64, generator=gen)
    grads = [torch.randn(K, 2, 3, dtype=torch.float64, generator=gen) for _ in range(steps)]
    params = [W0.clone()]
    state = init_state(name, params)
    hyper = check_optimizer(name)
    for g in grads:
        apply_update(name, params, [g], state, [lrs.view(K, 1, 1)], hyper)
    for k in range(K):
        p = torch.nn.Parameter(W0[k].clone())
        opt = TORCH[name](p, float(lrs[k]))
        for g in grads:
            p.grad = g[k].clone()
            opt.step()
        # same formulas in float64: agreement to a few ulps of the O(1) entries
        torch.testing.assert_close(params[0][k], p.detach(), rtol=1e-12, atol=1e-12)


def test_zero_rate_freezes_a_layer(gen):
    W = torch.randn(2, 3, 3, dtype=torch.float64, generator=gen)
    params = [W.clone()]
    state = init_state("adam", params)
    lr = torch.tensor([0.0, 0.1], dtype=torch.float64).view(2, 1, 1)
    apply_update("adam", params, [torch.ones_like(W)], state, [lr], check_optimizer("adam"))
    assert torch.equal(params[0][0], W[0])
    assert not torch.equal(params[0][1], W[1])


def test_check_optimizer_messages():
    with pytest.raises(ValueError, match="`optimizer` must be one of"):
        check_optimizer("sgd-momentum")
    with pytest.raises(ValueError, match="`hyper` keys for 'adam'"):
        check_optimizer("adam", {"rho": 0.5})
    assert check_optimizer("adadelta", {"rho": 0.95})["rho"] == 0.95

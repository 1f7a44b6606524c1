"""The contraction order: the cheaper of forming the product or chaining the input, same gradients."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from overparam.nn import factors_of, overparameterize
from overparam.nn._hosts import _out_positions

# float64, a handful of products of size <= 12: the two orders agree to ~1e-15 relative
TOL = 1e-12


class Conv1D(nn.Module):
    """Hugging Face's Conv1D (weight (in, out), y = x W + b), re-declared: no transformers import."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.3)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        out = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return out.view(x.size()[:-1] + (self.nf,))


def _grads(module: nn.Module, x: torch.Tensor, order: str, name: str = "weight"):
    """Output, input gradient and factor gradients with every Factorized set to ``order``."""
    for sub in module.modules():
        if hasattr(sub, "prefers_chain"):
            sub.order = order
    x = x.detach().clone().requires_grad_(x.is_floating_point())
    out = module(x)
    out.pow(2).sum().backward()
    grads = [f.grad.clone() for f in factors_of(module, name)]
    return out.detach(), (x.grad if x.is_floating_point() else None), grads


def _assert_orders_agree(module: nn.Module, x: torch.Tensor) -> None:
    chain = _grads(copy.deepcopy(module), x, "chain")
    prod = _grads(copy.deepcopy(module), x, "product")
    assert (chain[0] - prod[0]).abs().max() < TOL * max(1.0, float(prod[0].abs().max()))
    if chain[1] is not None:
        assert (chain[1] - prod[1]).abs().max() < TOL * max(1.0, float(prod[1].abs().max()))
    for a, b in zip(chain[2], prod[2], strict=True):
        assert (a - b).abs().max() < TOL * max(1.0, float(b.abs().max()))


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: nn.Linear(5, 7), (2, 3, 5)),  # tokens: B = 6 positions
        (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (2, 4, 7, 7)),
        (lambda: nn.Conv2d(3, 3, 3, padding=1, groups=3, padding_mode="reflect"), (1, 3, 5, 5)),
        (lambda: nn.Conv1d(3, 5, 3, dilation=2), (3, 11)),  # unbatched input
        (lambda: nn.Conv3d(2, 4, 3, padding="same"), (1, 2, 3, 4, 3)),
        (lambda: Conv1D(6, 4), (2, 3, 4)),
    ],
)
def test_gradients_equal_between_orders(gen, make, shape):
    """Every factor's gradient (and the input's) is the same whichever order computes the layer."""
    torch.manual_seed(0)
    module = make().double()
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    before = module(x).detach()
    overparameterize(module, depth=3, modules="all", init="near_zero", scale=0.5, generator=gen)
    _assert_orders_agree(module, x)
    overparameterize(copy.deepcopy(make()).double(), depth=2, modules="all")
    preserved = overparameterize(make().double(), depth=3, modules="all")
    for order in ("chain", "product"):
        preserved.weight_factors.order = order
        assert preserved(x).shape == before.shape


def test_embedding_tied_with_padding_orders_agree(gen):
    """A tied embedding chains ``W_N[idx] W_{N-1} .. W_1``; its padding row gets no gradient."""
    emb = nn.Embedding(9, 4, padding_idx=0).double()
    head = nn.Linear(4, 9, bias=False).double()
    head.weight = emb.weight
    net = nn.ModuleDict({"emb": emb, "head": head})
    idx = torch.tensor([[0, 3, 5, 0], [2, 8, 0, 1]])
    overparameterize(net, depth=3, init="near_zero", scale=0.5, generator=gen)

    def run(order):
        twin = copy.deepcopy(net)
        twin["emb"].weight_factors.order = order
        out = twin["emb"](idx)
        out.pow(2).sum().backward()
        return out.detach(), [f.grad.clone() for f in factors_of(twin["emb"])]

    (chain, g_chain), (prod, g_prod) = run("chain"), run("product")
    assert (chain - prod).abs().max() < TOL
    for a, b in zip(g_chain, g_prod, strict=True):
        assert (a - b).abs().max() < TOL
    assert torch.equal(g_chain[-1][0], torch.zeros(4, dtype=torch.float64))  # W_N's padding row


def test_costs_are_the_multiply_add_counts():
    """Linear 64 -> 48, widths [32, 16]: counts written out by hand."""
    layer = overparameterize(nn.Linear(64, 48), depth=3, width=[32, 16], init="near_zero")
    f = layer.weight_factors
    assert f.dims == [64, 32, 16, 48]
    B = 10
    assert f.chain_cost(B) == B * (64 * 32 + 32 * 16 + 16 * 48)
    assert f.product_cost(B) == 64 * (32 * 16 + 16 * 48) + B * 64 * 48
    assert f.chain_cost(B, lookup=True) == B * (64 * 32 + 32 * 16)
    assert f.product_cost(B, lookup=True) == 64 * (32 * 16 + 16 * 48)
    grouped = overparameterize(nn.Conv2d(4, 6, 3, groups=2), depth=2, modules=(nn.Conv2d,))
    g = grouped.weight_factors  # per group: n = 2 * 9, m = 3, width min(3, 18) = 3
    assert (g.groups, g.dims) == (2, [18, 3, 3])
    assert g.chain_cost(5) == 2 * 5 * (18 * 3 + 3 * 3)
    assert g.product_cost(5) == 2 * 18 * 3 * 3 + 2 * 5 * 18 * 3


def test_auto_picks_the_cheaper_order_per_call(gen):
    """Square 64 x 64 at depth 2: chain iff 2 B 64^2 < 64^3 + B 64^2, that is B < 64."""
    layer = overparameterize(nn.Linear(64, 64).double(), depth=2)
    products = []
    layer.weight_factors.register_forward_hook(lambda *_: products.append(1))
    for batch, formed in ((8, 0), (63, 0), (65, 1), (4, 0), (500, 1)):
        before = len(products)
        layer(torch.randn(batch, 64, generator=gen, dtype=torch.float64))
        assert len(products) - before == formed, batch
        assert layer.weight_factors.prefers_chain(batch) == (batch < 64)
    products.clear()
    layer(torch.randn(2, 40, 64, dtype=torch.float64))  # 80 tokens: the product
    assert products == [1]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stride": 2, "padding": 1},
        {"padding": "same", "dilation": 2},
        {"padding": "valid", "stride": (1, 3)},
        {"padding": (2, 0), "dilation": (1, 2), "padding_mode": "circular"},
    ],
)
def test_conv_positions_match_the_output(gen, kwargs):
    conv = nn.Conv2d(2, 3, 3, **kwargs)
    x = torch.randn(2, 2, 9, 10, generator=gen)
    out = conv(x)
    assert _out_positions(conv, x) == out.shape[0] * out.shape[2] * out.shape[3]
    assert _out_positions(conv, x[0]) == out.shape[2] * out.shape[3]


def test_module_weight_is_the_end_to_end_matrix(gen):
    layer = overparameterize(nn.Linear(5, 4).double(), depth=3, init="near_zero", generator=gen)
    W1, W2, W3 = factors_of(layer)
    assert torch.equal(layer.weight, W3 @ (W2 @ W1))
    x = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    assert (layer(x) - F.linear(x, layer.weight, layer.bias)).abs().max() < TOL

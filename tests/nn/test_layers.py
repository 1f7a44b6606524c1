"""Layers of real models: zero weights, ties, widths, groups, attention, Conv1D, precision, order."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from overparam import imbalance
from overparam.core.factorization import numerical_rank
from overparam.nn import collapse, factors_of, overparameterize, summary
from overparam.nn._factorized import gram_svd, preserving_factors

TOL = 1e-10  # float64 products of a few factors of size <= 16 round to ~1e-15 relative


class Conv1D(nn.Module):
    """Hugging Face's Conv1D (weight (in, out)), re-declared so no transformers import is needed."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.3)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        out = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return out.view(x.size()[:-1] + (self.nf,))


def _fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> list[float]:
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("size", [0.0, 1e-300])  # zero, and numerically zero
def test_zero_weight_gets_trainable_factors(gen, depth, size):
    """A zero-initialized head keeps its function, every factor gets gradient, and it trains."""
    head = nn.Linear(6, 3).double()
    with torch.no_grad():
        head.weight.copy_(size * torch.randn(3, 6, generator=gen, dtype=torch.float64))
    x = torch.randn(32, 6, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(6, 3, generator=gen, dtype=torch.float64)
    before = head(x).detach()
    overparameterize(head, depth=depth)
    assert (head(x) - before).abs().max() < TOL
    F.mse_loss(head(x), y).backward()
    assert all(float(f.grad.abs().max()) > 1e-3 for f in factors_of(head)[-1:])
    losses = _fit(head, x, y, 200, 0.05)
    assert losses[-1] < 1e-2 * losses[0]  # from ~3 to below 1% of it


def test_rank_deficient_weight_grows_rank(gen):
    """Balanced factors of a rank-1 weight stay rank 1 under training; these do not."""
    layer = nn.Linear(4, 4, bias=False).double()
    with torch.no_grad():
        u, v = (torch.randn(4, 1, generator=gen, dtype=torch.float64) for _ in range(2))
        layer.weight.copy_(u @ v.mT)
    x = torch.randn(64, 4, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(4, 4, generator=gen, dtype=torch.float64)
    overparameterize(layer, depth=3)
    W1, W2, W3 = (f.detach() for f in factors_of(layer))
    D1, D2 = imbalance([W1, W2, W3])
    assert D1[:1, :1].abs().max() < 1e-12 and D2[:1, :1].abs().max() < 1e-12  # balanced on s_1
    _fit(layer, x, y, 300, 0.05)
    assert numerical_rank(layer.weight.detach()) == 4


def test_gram_svd_is_an_svd(gen):
    for shape in ((7, 4), (4, 7), (5, 5)):
        W = torch.randn(3, *shape, generator=gen, dtype=torch.float64)
        U, s, Vh = gram_svd(W)
        assert torch.allclose(s, torch.linalg.svdvals(W), atol=1e-12)
        assert torch.allclose(U * s.unsqueeze(-2) @ Vh, W, atol=1e-12)
        k = min(shape)
        eye = torch.eye(k, dtype=torch.float64)
        assert torch.allclose(U.mT @ U, eye.expand(3, k, k), atol=1e-10)


def test_ties_stay_ties_through_training_state_dict_and_collapse(gen):
    """A head tied to the embedding (BERT, GPT-2): one set of factors, one parameter after collapse."""

    def tied() -> nn.ModuleDict:
        torch.manual_seed(3)
        net = nn.ModuleDict({"emb": nn.Embedding(11, 4), "mid": nn.Linear(4, 4)}).double()
        net["head"] = nn.Linear(4, 11, bias=False).double()
        net["head"].weight = net["emb"].weight
        return net

    def run(net: nn.ModuleDict, idx: torch.Tensor) -> torch.Tensor:
        return net["head"](torch.tanh(net["mid"](net["emb"](idx))))

    idx = torch.randint(0, 11, (5, 3), generator=gen)
    net = tied()
    original = copy.deepcopy(net)
    overparameterize(net, depth=3)
    assert factors_of(net["emb"]) == factors_of(net["head"])  # the same parameters
    assert len(list(net.parameters())) == 3 + 3 + 1  # shared factors counted once
    report = summary(net)
    assert ("emb.weight", "head.weight") in [c.names for c in report.converted]
    assert report.params_before == sum(p.numel() for p in original.parameters())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(run(net, idx).reshape(-1, 11), idx.reshape(-1)).backward()
        opt.step()
    assert torch.equal(net["emb"].weight, net["head"].weight)
    twin = overparameterize(tied(), depth=3)
    twin.load_state_dict(net.state_dict())
    assert torch.equal(run(twin, idx), run(net, idx))
    trained = run(net, idx).detach()
    collapse(net)
    assert net["emb"].weight is net["head"].weight and type(net["head"]) is nn.Linear
    assert (run(net, idx) - trained).abs().max() < TOL
    original.load_state_dict(net.state_dict())  # the original tied model takes the weights
    assert original["head"].weight is original["emb"].weight
    assert (run(original, idx) - trained).abs().max() < TOL


def test_default_width_is_the_rank_bound():
    """Linear(64, 8000) at depth 2: 8000 x 64 + 64 x 64, not an 8000 x 8000 matrix."""
    layer = overparameterize(nn.Linear(64, 800), depth=2)
    assert [tuple(f.shape) for f in factors_of(layer)] == [(64, 64), (800, 64)]
    report = summary(layer)
    assert (report.params_before, report.params_after) == (64 * 800 + 800, 64 * 64 + 800 * 64 + 800)
    assert "parameters 52,000 -> 56,096 (1.08x)" in str(report)


@pytest.mark.parametrize(("groups", "cin", "cout"), [(2, 4, 6), (3, 3, 3), (3, 3, 6)])
def test_grouped_and_depthwise_convs(gen, groups, cin, cout):
    """Per-group factors: the grouped k x k conv then grouped 1 x 1 convs; exact collapse."""
    conv = nn.Conv2d(cin, cout, 3, padding=1, groups=groups).double()
    x = torch.randn(2, cin, 6, 6, generator=gen, dtype=torch.float64)
    before = conv(x).detach()
    overparameterize(conv, depth=3, modules=(nn.Conv2d,))
    assert (conv(x) - before).abs().max() < TOL
    overparameterize(collapse(conv), depth=3, width=2, modules=(nn.Conv2d,), init="near_zero",
                     scale=0.5, generator=gen)  # fmt: skip
    W1, W2, W3 = (f.detach() for f in factors_of(conv))
    m, n = cout // groups, cin // groups * 9
    assert (W1.shape, W2.shape, W3.shape) == ((groups, 2, n), (groups, 2, 2), (groups, m, 2))
    h = F.conv2d(x, W1.reshape(-1, cin // groups, 3, 3), padding=1, groups=groups)
    h = F.conv2d(h, W2.reshape(-1, 2, 1, 1), groups=groups)
    explicit = F.conv2d(h, W3.reshape(-1, 2, 1, 1), conv.bias, groups=groups)
    assert (conv(x) - explicit).abs().max() < TOL
    collapse(conv)
    assert type(conv) is nn.Conv2d and (conv(x) - explicit).abs().max() < TOL


def test_hf_conv1d_by_duck_typing(gen):
    layer = Conv1D(5, 3).double()
    x = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    before = layer(x).detach()
    overparameterize(layer, depth=3, modules="all")
    assert [tuple(f.shape) for f in factors_of(layer)] == [(3, 3), (3, 3), (5, 3)]
    assert layer.weight.shape == (3, 5) and (layer(x) - before).abs().max() < TOL
    _fit(layer, x, torch.zeros(2, 4, 5, dtype=torch.float64), 2, 0.1)
    trained = layer(x).detach()
    collapse(layer)
    assert type(layer) is Conv1D and (layer(x) - trained).abs().max() < TOL


@pytest.mark.parametrize("separate", [False, True])
def test_multihead_attention_projections(gen, separate):
    kw = {"kdim": 5, "vdim": 3} if separate else {}
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True, **kw).double()
    q = torch.randn(2, 4, 8, generator=gen, dtype=torch.float64)
    k = torch.randn(2, 6, kw.get("kdim", 8), generator=gen, dtype=torch.float64)
    v = torch.randn(2, 6, kw.get("vdim", 8), generator=gen, dtype=torch.float64)
    before = mha(q, k, v)[0].detach()
    overparameterize(mha, depth=2, modules="all")
    names = sorted(n for c in summary(mha).converted for n in c.names)
    expected = (
        ["k_proj_weight", "q_proj_weight", "v_proj_weight"] if separate else ["in_proj_weight"]
    )
    assert names == sorted([*expected, "out_proj.weight"])
    assert (mha(q, k, v)[0] - before).abs().max() < TOL
    opt = torch.optim.SGD(mha.parameters(), lr=0.1)
    mha(q, k, v)[0].pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in mha.parameters())
    opt.step()
    trained = mha(q, k, v)[0].detach()
    order = [n for n, _ in nn.MultiheadAttention(8, 2, **kw).named_parameters()]
    collapse(mha)
    assert type(mha) is nn.MultiheadAttention and [n for n, _ in mha.named_parameters()] == order
    assert (mha(q, k, v)[0] - trained).abs().max() < TOL


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_factorized_in_float32(gen, dtype):
    net = nn.Sequential(nn.Linear(16, 12), nn.Conv1d(12, 8, 1)).to(dtype)
    W = net[0].weight.detach().clone()
    overparameterize(net, depth=3, modules="all")
    factors = factors_of(net[0])
    assert all(f.dtype == dtype for f in factors)
    expected, _ = preserving_factors(W.float().unsqueeze(0), 3, [12, 12])
    for f, e in zip(factors, expected, strict=True):
        assert torch.equal(f, e[0].to(dtype))
    rel = (net[0].weight.float() - W.float()).norm() / W.float().norm()
    assert rel < 2e-2  # three half-precision roundings of the factors (bf16 eps = 7.8e-3)
    x = torch.randn(3, 16, generator=gen).to(dtype)
    net[0](x).float().sum().backward()
    collapse(net)
    assert net[0].weight.dtype == dtype


def test_collapse_restores_registration_order():
    class Odd(nn.Linear):
        def __init__(self) -> None:
            super().__init__(3, 2)
            self.register_buffer("scale", torch.ones(2))
            self.extra = nn.Parameter(torch.zeros(2))

        def forward(self, x):
            return super().forward(x) * self.scale + self.extra

    layer = Odd()
    params, buffers = (
        [n for n, _ in layer.named_parameters()],
        [n for n, _ in layer.named_buffers()],
    )
    overparameterize(layer, depth=3)
    assert isinstance(layer, Odd) and layer(torch.ones(1, 3)).shape == (1, 2)
    collapse(layer)
    assert type(layer) is Odd and [n for n, _ in layer.named_parameters()] == params
    assert [n for n, _ in layer.named_buffers()] == buffers == ["scale"]
    assert params == ["weight", "bias", "extra"]


def test_same_shape_weights_factorize_in_one_batch(monkeypatch):
    import overparam.nn._overparameterize as impl

    calls = []
    original = impl.preserving_factors
    monkeypatch.setattr(
        impl, "preserving_factors", lambda W, *a: calls.append(W.shape) or original(W, *a)
    )
    net = nn.Sequential(*[nn.Linear(6, 6) for _ in range(5)], nn.Linear(6, 2), nn.Linear(2, 6))
    overparameterize(net, depth=2)
    assert sorted(calls) == sorted([(5, 6, 6), (1, 2, 6), (1, 6, 2)])
    storages = {f.untyped_storage().data_ptr() for f in net.parameters()}
    assert len(storages) == len(list(net.parameters()))  # own storage each (DDP/FSDP buckets)

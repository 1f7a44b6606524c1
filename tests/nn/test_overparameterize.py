"""overparameterize / collapse: function preservation, exact collapse, conv factors, torch plumbing."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from overparam import imbalance
from overparam.nn import collapse, factors_of, is_overparameterized, overparameterize, summary

# float64 products of <= 8 factors of size <= 12 round to ~1e-14 relative: 1e-10 is the bar
TOL = 1e-10


def stack(gen: torch.Generator, sizes: list[int], bias: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b, bias=bias), nn.Tanh()]
    net = nn.Sequential(*layers[:-1]).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return net


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("depth", range(1, 9))
@pytest.mark.parametrize("width", [None, 12, "pair"])
def test_preserve_keeps_function_and_balance(gen, bias, depth, width):
    net = stack(gen, [5, 7, 3], bias)
    x = torch.randn(9, 5, generator=gen, dtype=torch.float64)
    before = net(x)
    w = (
        [12, 6][: depth - 1]
        if width == "pair" and depth == 3
        else (None if width == "pair" else width)
    )
    overparameterize(net, depth=depth, width=w, init="preserve")
    assert (net(x) - before).abs().max() < TOL
    for layer in (net[0], net[2]):
        factors = factors_of(layer)
        assert len(factors) == depth
        for D in imbalance([f.detach() for f in factors]):  # exactly balanced (Definition 1)
            assert D.abs().max() < 1e-12 * max(1.0, float(layer.weight.detach().abs().max()) ** 2)
    collapse(net)
    assert type(net[0]) is nn.Linear and isinstance(net[0].weight, nn.Parameter)
    assert (net(x) - before).abs().max() < TOL


def test_width_smaller_than_layer_but_not_rank(gen):
    """A rank-2 layer 6 -> 8 factors through width 3 < 6 exactly; width 1 < rank raises."""
    layer = nn.Linear(6, 8).double()
    with torch.no_grad():
        layer.weight.copy_(
            torch.randn(8, 2, generator=gen, dtype=torch.float64)
            @ torch.randn(2, 6, generator=gen, dtype=torch.float64)
        )
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    before = layer(x)
    low_rank = copy.deepcopy(layer)
    net = overparameterize(layer, depth=3, width=3)
    assert [tuple(f.shape) for f in factors_of(net)] == [(3, 6), (3, 3), (8, 3)]
    assert (net(x) - before).abs().max() < TOL
    with pytest.raises(ValueError, match=r"`width` must be >= rank 2"):
        overparameterize(low_rank, depth=2, width=1)
    full = nn.Linear(6, 8).double()  # rank 6 > width 2: fine away from "preserve"
    overparameterize(full, depth=2, width=2, init="near_zero", generator=gen)
    assert factors_of(full)[0].shape == (2, 6) and torch.linalg.matrix_rank(full.weight) == 2
    with pytest.raises(ValueError, match=r"`width` must be >= rank 6 of the weight of '<model>"):
        overparameterize(nn.Linear(6, 8), depth=3, width=[8, 2])


def test_near_zero_and_collapse_after_training(gen):
    """Train the factors with Adam; collapse gives the same outputs and the original class."""
    net = stack(gen, [4, 6, 2], True)
    overparameterize(net, depth=4, width=3, init="near_zero", scale=0.3, generator=gen)
    assert factors_of(net[0])[0].shape == (3, 4)
    x, y = (torch.randn(20, n, generator=gen, dtype=torch.float64) for n in (4, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = F.mse_loss(net(x), y).item()
    for _ in range(30):
        opt.zero_grad()
        F.mse_loss(net(x), y).backward()
        opt.step()
    assert F.mse_loss(net(x), y).item() < first
    trained = net(x).detach()
    collapse(net)
    assert all(type(m) is nn.Linear for m in net if isinstance(m, nn.Linear))
    assert set(net.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert (net(x) - trained).abs().max() < TOL
    buffer = io.BytesIO()
    torch.save(net, buffer)  # a collapsed model pickles like a plain one


def test_identity_init_is_weight_then_identities(gen):
    layer = nn.Linear(5, 3).double()
    W = layer.weight.detach().clone()
    overparameterize(layer, depth=3, width=[4, 3], init="identity")
    W1, W2, W3 = (f.detach() for f in factors_of(layer))
    assert torch.equal(W1[:3], W) and torch.equal(W1[3], torch.zeros(5, dtype=torch.float64))
    assert torch.equal(W2, torch.eye(3, 4, dtype=torch.float64))
    assert torch.equal(W3, torch.eye(3, dtype=torch.float64))
    assert torch.equal(layer.weight, W)
    with pytest.raises(ValueError, match=r"`width` must be >= the output size 3"):
        overparameterize(nn.Linear(5, 3), depth=2, width=2, init="identity")


@pytest.mark.parametrize("order", ["product", "chain"])
def test_factor_gradients_match_closed_form(gen, order):
    """dL/dW_1 = W_2^T G and dL/dW_2 = G W_1^T with G = dL/dW (chain rule through the product)."""
    layer = overparameterize(nn.Linear(4, 3).double(), depth=2, order=order)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    W1, W2 = factors_of(layer)
    layer(x).square().sum().backward()
    W = (W2 @ W1).detach().requires_grad_()
    F.linear(x, W, layer.bias.detach()).square().sum().backward()
    G = W.grad
    assert torch.allclose(W1.grad, W2.detach().mT @ G, atol=1e-12)
    assert torch.allclose(W2.grad, G @ W1.detach().mT, atol=1e-12)
    factors = tuple(f.detach().requires_grad_() for f in (W1, W2))
    assert torch.autograd.gradcheck(lambda a, b: F.linear(F.linear(x, a), b), factors)


def test_conv_is_kxk_conv_then_1x1_convs(gen):
    """The overparameterized Conv2d equals the explicit k x k conv followed by 1 x 1 convs."""
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    x = torch.randn(2, 3, 7, 7, generator=gen, dtype=torch.float64)
    before = conv(x)
    overparameterize(
        conv,
        depth=3,
        width=[6, 5],
        init="near_zero",
        scale=0.5,
        generator=gen,
        modules=(nn.Conv2d,),
    )
    W1, W2, W3 = (f.detach() for f in factors_of(conv))
    h = F.conv2d(x, W1.reshape(6, 3, 3, 3), padding=1)
    h = F.conv2d(h, W2.reshape(5, 6, 1, 1))
    explicit = F.conv2d(h, W3.reshape(4, 5, 1, 1), bias=conv.bias)
    assert (conv(x) - explicit).abs().max() < TOL
    out = conv(x).detach()
    collapse(conv)
    assert type(conv) is nn.Conv2d and (conv(x) - out).abs().max() < TOL
    overparameterize(conv, depth=2, modules=(nn.Conv2d,))  # preserve on a conv kernel
    assert (conv(x) - out).abs().max() < TOL
    assert before.shape == out.shape


@pytest.mark.parametrize(
    ("kind", "kwargs", "size"),
    [
        (nn.Conv2d, {"stride": 2, "dilation": 2, "padding": 3, "padding_mode": "circular"}, 9),
        (nn.Conv2d, {"padding": "same", "padding_mode": "reflect", "bias": False}, 8),
        (nn.Conv2d, {"stride": (1, 2), "padding": (1, 0), "padding_mode": "replicate"}, 8),
        (nn.Conv1d, {"padding": 1, "stride": 2}, 11),
        (nn.Conv3d, {"padding": 1, "dilation": (1, 2, 1)}, 6),
    ],
)
def test_conv_options_preserved_and_exact_collapse(gen, kind, kwargs, size):
    """Stride, dilation, padding and padding modes act before the 1 x 1 convs: all supported."""
    conv = kind(3, 5, 3, **kwargs).double()
    dims = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[kind]
    x = torch.randn(2, 3, *[size] * dims, generator=gen, dtype=torch.float64)
    before = conv(x)
    overparameterize(conv, depth=4, width=7, modules=(kind,))
    assert (conv(x) - before).abs().max() < TOL
    overparameterize(
        collapse(conv), depth=3, width=[6, 4], init="near_zero", scale=0.4, generator=gen,
        modules=(kind,),
    )  # fmt: skip
    out = conv(x).detach()
    W1, W2, W3 = (f.detach() for f in factors_of(conv))
    conv_fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    one = (1,) * dims
    probe = collapse(copy.deepcopy(conv))
    probe.weight.data = W1.reshape(6, 3, *conv.kernel_size)  # the k x k conv alone, same options
    probe.bias = None
    h = conv_fn(conv_fn(probe(x), W2.reshape(4, 6, *one)), W3.reshape(5, 4, *one), conv.bias)
    assert (out - h).abs().max() < TOL  # = k x k conv into 6 channels, then two 1 x 1 convs
    collapse(conv)
    assert type(conv) is kind and (conv(x) - out).abs().max() < TOL


def test_unsupported_layers_are_skipped_and_reported_or_strict():
    net = nn.Sequential(nn.Linear(3, 4), nn.ConvTranspose2d(4, 4, 3), nn.LazyLinear(3))
    overparameterize(net, modules="all")
    report = summary(net)
    assert [c.names for c in report.converted] == [("0.weight",)]
    assert [(s.name, s.kind) for s in report.skipped] == [
        ("1", "ConvTranspose2d"),
        ("2", "LazyLinear"),
    ]
    assert "transposed convolutions are not supported" in report.skipped[0].reason
    assert "uninitialized (lazy) parameters" in report.skipped[1].reason
    assert "skipped 1 (ConvTranspose2d)" in str(report)
    with pytest.raises(ValueError, match=r"strict=True: .* 0 \(ConvTranspose2d\): transposed"):
        overparameterize(nn.Sequential(nn.ConvTranspose2d(3, 4, 3)), modules="all", strict=True)
    bn = nn.Sequential(nn.BatchNorm1d(3))
    overparameterize(bn, modules=(nn.BatchNorm1d,))
    assert "not a supported layer" in summary(bn).skipped[0].reason
    layer = overparameterize(nn.Linear(2, 2))
    overparameterize(layer)  # a second call leaves the factors alone and says so
    assert summary(layer).skipped[0].reason == "already overparameterized"
    assert len(factors_of(layer)) == 2


def test_state_dict_deepcopy_train_eval(gen):
    torch.manual_seed(0)
    net = overparameterize(
        nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2)).double(), depth=3
    )
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    twin = copy.deepcopy(net)
    assert all(
        p.data_ptr() != q.data_ptr()
        for p, q in zip(net.parameters(), twin.parameters(), strict=True)
    )
    with torch.no_grad():
        factors_of(twin[0])[0].mul_(2.0)
    assert (twin.eval()(x) - net.eval()(x)).abs().max() > 1e-3  # a real copy, not shared
    third = copy.deepcopy(net)
    expected = net(x)
    collapse(third)  # must not touch the class shared with `net` (torch deletes the property)
    assert is_overparameterized(net[0]) and torch.equal(net(x), expected)
    assert (third(x) - expected).abs().max() < TOL and type(third[0]) is nn.Linear
    fresh = overparameterize(
        nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2)).double(), depth=3
    )
    fresh.load_state_dict(twin.state_dict())
    assert torch.equal(fresh.eval()(x), twin(x))
    net.train()
    assert not torch.equal(net(x), net(x))  # dropout is active in train mode


def test_errors():
    with pytest.raises(ValueError, match=r"`depth` must be >= 1, got 0"):
        overparameterize(nn.Linear(2, 2), depth=0)
    with pytest.raises(ValueError, match=r"`init` must be one of"):
        overparameterize(nn.Linear(2, 2), init="orthogonal")
    with pytest.raises(ValueError, match=r"`order` must be one of \('auto', 'product', 'chain'\)"):
        overparameterize(nn.Linear(2, 2), order="fastest")
    with pytest.raises(ValueError, match=r"`width` must have depth - 1 = 2 entries, got 1"):
        overparameterize(nn.Linear(2, 2), depth=3, width=[2])
    with pytest.raises(ValueError, match=r"`model` must be a torch.nn.Module"):
        overparameterize("net")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`modules` must be 'all' or a non-empty tuple"):
        overparameterize(nn.Linear(2, 2), modules=("Linear",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`module` must be overparameterized"):
        factors_of(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"`model` must be a torch.nn.Module"):
        summary(3)  # type: ignore[arg-type]
    layer = overparameterize(nn.Linear(2, 2))
    assert is_overparameterized(layer) and not is_overparameterized(collapse(layer))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_round_trip(gen):
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double().cuda()
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64).cuda()
    before = net(x)
    overparameterize(net, depth=3)
    assert factors_of(net[0])[0].is_cuda and (net(x) - before).abs().max() < TOL
    collapse(net)
    assert net[0].weight.is_cuda and (net(x) - before).abs().max() < TOL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_conv_optimizer_deepcopy(gen):
    """Conv factors on CUDA, a torch optimizer step, deepcopy and state_dict stay on the device."""
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    net = net.double().cuda()
    x = torch.randn(5, 2, 4, 4, generator=gen, dtype=torch.float64).cuda()
    before = net(x)
    overparameterize(net, depth=3, modules=(nn.Linear, nn.Conv2d))
    assert (net(x) - before).abs().max() < TOL
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    net(x).square().mean().backward()
    opt.step()
    twin = copy.deepcopy(net)
    assert all(t.is_cuda for t in twin.state_dict().values())
    trained = net(x).detach()
    collapse(twin)
    assert twin[0].weight.is_cuda and (twin(x) - trained).abs().max() < TOL


def test_assigning_the_weight_is_a_clear_error():
    layer = overparameterize(nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"`weight` of an overparameterized .* collapse the model"):
        layer.weight = nn.Parameter(torch.zeros(2, 3))
    layer.bias = nn.Parameter(torch.ones(2))  # other attributes as usual
    assert torch.equal(layer.bias, torch.ones(2))


def test_generator_must_be_a_cpu_generator():
    with pytest.raises(ValueError, match=r"`generator` must be a torch.Generator or None, got int"):
        overparameterize(nn.Linear(4, 3), init="near_zero", generator=3)  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
def test_empty_weights_are_skipped_and_reported(gen):
    net = nn.Sequential(nn.Linear(0, 3), nn.Linear(3, 2)).double()
    x = torch.randn(5, 0, generator=gen, dtype=torch.float64)
    expected = net(x)
    overparameterize(net, strict=True)  # nothing to train in an empty weight: never an error
    report = summary(net)
    assert [c.names for c in report.converted] == [("1.weight",)]
    assert [(s.name, s.kind) for s in report.skipped] == [("0", "Linear")]
    assert report.skipped[0].reason.startswith("empty weight `weight` of shape (3, 0)")
    assert report.params_before == 3 + 6 + 2
    assert (net(x) - expected).abs().max() < TOL
    collapse(net)
    assert type(net[0]) is nn.Linear and type(net[1]) is nn.Linear
    assert (net(x) - expected).abs().max() < TOL

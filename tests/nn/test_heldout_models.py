"""overparameterize / collapse / EndToEndSGD on architectures beyond ``test_real_models.py``.

Plain-torch blocks (MobileNet-like depthwise-separable stack with a zero-initialized head,
ResNeXt-like grouped block with a zero-initialized last BatchNorm, ConvNeXt-like block with layer
scale, a weight tied across three layers, a pre-LN batch-first ``nn.TransformerEncoder``,
attention with ``kdim``/``vdim`` and with ``add_bias_kv``, strided/dilated/circular Conv1d and
Conv3d) and Hugging Face models built from tiny configs (RoBERTa, DistilBERT and MobileBERT with
tied MLM heads, T5 with one embedding shared by four modules, ViT, the Whisper encoder), plus
half precision, the ``meta`` device, parametrized weights, frozen weights and ``torch.compile``.
"""

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrizations

from overparam.nn import collapse, overparameterize, summary
from overparam.nn._factorized import Factorized
from overparam.optim import EndToEndSGD

TOL = 1e-10  # float64 forwards through products of 3 factors of size <= 64: ~1e-14 relative
DEPTH = 3


class MobileNet(nn.Module):
    """Depthwise-separable convs with BatchNorm and a zero-initialized classifier."""

    def __init__(self) -> None:
        super().__init__()

        def separable(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.ReLU6(), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6(),
            )  # fmt: skip

        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8))
        self.blocks = nn.Sequential(separable(8, 16, 1), separable(16, 24, 2))
        self.head = nn.Linear(24, 5)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(F.relu6(self.stem(x))).mean((2, 3)))


class ResNeXt(nn.Module):
    """Bottleneck with a grouped 3 x 3 conv; the last BatchNorm zero-initialized (a residual)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(16)
        self.c3, self.b3 = nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8)
        nn.init.zeros_(self.b3.weight)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.b3(self.c3(F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))))))
        return self.fc(F.relu(h + x).mean((2, 3)))


class ConvNeXt(nn.Module):
    """Depthwise 7 x 7 conv, LayerNorm, Linear MLP, layer scale 1e-6, residual."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.dw, self.norm = nn.Conv2d(d, d, 7, padding=3, groups=d), nn.LayerNorm(d)
        self.pw1, self.pw2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.gamma = nn.Parameter(1e-6 * torch.ones(d))
        self.head = nn.Linear(d, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.pw2(F.gelu(self.pw1(self.norm(self.dw(x).permute(0, 2, 3, 1))))) * self.gamma
        return self.head((x + h.permute(0, 3, 1, 2)).mean((2, 3)))


class TiedThree(nn.Module):
    """One 6 x 6 weight shared by three Linear layers (each with its own bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.out = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 2)  # fmt: skip
        self.b.weight = self.c.weight = self.a.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            16, 2, 24, dropout=0.0, batch_first=True, norm_first=True
        )
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.enc(x).mean(1))


class Attentions(nn.Module):
    """Separate q/k/v weights (``kdim``/``vdim``), then no biases with ``add_bias_kv``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.MultiheadAttention(16, 2, kdim=6, vdim=10, batch_first=True)
        self.b = nn.MultiheadAttention(16, 4, bias=False, add_bias_kv=True, add_zero_attn=True)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        h = self.a(q, k, v)[0].transpose(0, 1)
        return self.b(h, h, h)[0].transpose(0, 1)


class Convs(nn.Module):
    """Conv1d/Conv3d with stride, dilation, circular/reflect/replicate padding, groups."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 6, 3, stride=2, dilation=2, padding=2, padding_mode="circular")
        self.c2 = nn.Conv1d(6, 6, 3, padding="same", dilation=3, padding_mode="reflect", groups=3)
        self.c3 = nn.Conv3d(2, 4, (2, 3, 3), (1, 2, 1), (1, 1, 2), (1, 2, 1), padding_mode="circular")  # fmt: skip
        self.c4 = nn.Conv3d(4, 4, 1, groups=2, padding_mode="replicate")

    def forward(self, x1: Tensor, x3: Tensor) -> Tensor:
        return torch.cat([self.c2(self.c1(x1)).flatten(1), self.c4(self.c3(x3)).flatten(1)], 1)


Case = tuple[nn.Module, tuple[Tensor, ...], dict[str, Any]]


def _plain(name: str) -> Case:
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g)

    inputs = {
        "mobilenet": (MobileNet, (r(4, 3, 16, 16),)),
        "resnext": (ResNeXt, (r(2, 8, 6, 6),)),
        "convnext": (ConvNeXt, (r(2, 8, 9, 9),)),
        "tied-three": (TiedThree, (r(5, 6),)),
        "encoder": (Encoder, (r(2, 5, 16),)),
        "attentions": (Attentions, (r(2, 5, 16), r(2, 7, 6), r(2, 7, 10))),
        "convs": (Convs, (r(2, 3, 17), r(2, 2, 5, 8, 6))),
    }
    cls, xs = inputs[name]
    return cls(), xs, {}


def _hf(name: str) -> Case:
    T = pytest.importorskip("transformers", reason="needs the `models` extra (transformers)")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 40, (2, 6), generator=g)
    text = {"input_ids": ids, "labels": ids}
    bert = {"vocab_size": 40, "max_position_embeddings": 24, "num_hidden_layers": 2}
    bert |= {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 24}
    if name == "roberta":
        return T.RobertaForMaskedLM(T.RobertaConfig(pad_token_id=1, **bert)), (), text
    if name == "distilbert":
        config = T.DistilBertConfig(
            vocab_size=40, max_position_embeddings=24, dim=16, n_layers=2, n_heads=2, hidden_dim=24
        )
        return T.DistilBertForMaskedLM(config), (), text
    if name == "mobilebert":
        config = T.MobileBertConfig(
            embedding_size=8, intra_bottleneck_size=8, true_hidden_size=8,
            num_feedforward_networks=2, **bert,
        )  # fmt: skip
        return T.MobileBertForMaskedLM(config), (), text
    if name == "t5":
        config = T.T5Config(
            vocab_size=40, d_model=16, d_kv=8, d_ff=24, num_layers=2, num_heads=2,
            decoder_start_token_id=0, tie_word_embeddings=True,
        )  # fmt: skip
        return T.T5ForConditionalGeneration(config), (), text
    if name == "vit":
        config = T.ViTConfig(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
            image_size=16, patch_size=4, num_labels=3,
        )  # fmt: skip
        pixels = torch.randn(2, 3, 16, 16, generator=g)
        model = T.ViTForImageClassification(config)
        return model, (), {"pixel_values": pixels, "labels": torch.tensor([0, 2])}
    config = T.WhisperConfig(
        d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=24,
        num_mel_bins=8, max_source_positions=6, vocab_size=40, pad_token_id=0,
        bos_token_id=0, eos_token_id=0, decoder_start_token_id=0,
    )  # fmt: skip
    features = torch.randn(2, 8, 12, generator=g)
    model = T.WhisperForAudioClassification(config)
    return model, (), {"input_features": features, "labels": torch.tensor([0, 1])}


PLAIN = ["mobilenet", "resnext", "convnext", "tied-three", "encoder", "attentions", "convs"]
HF = ["roberta", "distilbert", "mobilebert", "t5", "vit", "whisper"]


def _build(name: str) -> Case:
    torch.manual_seed(0)
    model, xs, kw = _plain(name) if name in PLAIN else _hf(name)
    kw = {k: v.double() if v.is_floating_point() else v for k, v in kw.items()}
    return model.double().eval(), tuple(x.double() for x in xs), kw


def _out(model: nn.Module, xs: tuple[Tensor, ...], kw: dict[str, Any]) -> Tensor:
    return model(*xs, **kw).logits if kw else model(*xs)


def _loss_fn(model: nn.Module, xs: tuple[Tensor, ...], kw: dict[str, Any]) -> Callable[[], Tensor]:
    if kw:
        return lambda: model(**kw).loss
    target = torch.randn(model(*xs).shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # fmt: skip
    return lambda: F.mse_loss(model(*xs), target)


def _train(loss: Callable[[], Tensor], opt: torch.optim.Optimizer, steps: int = 4) -> list[float]:
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
        losses.append(value.item())
    return losses + [loss().item()]


def _ties(model: nn.Module) -> list[list[str]]:
    holders: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for pname, p in module._parameters.items():
            if p is not None:
                holders.setdefault(id(p), []).append(f"{name}.{pname}")
    return sorted(sorted(set(v)) for v in holders.values() if len(set(v)) > 1)


def _hand_count(model: nn.Module, depth: int) -> tuple[int, int]:
    """Parameters before and after, from the layer shapes alone: a weight read as ``g`` blocks
    ``(m, n)`` becomes ``g (n k + (N - 2) k^2 + k m)`` entries with ``k = min(m, n)``."""
    blocks: dict[int, tuple[int, int, int]] = {}
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            e = module.embed_dim
            if module.in_proj_weight is not None:
                blocks[id(module.in_proj_weight)] = (3, e, e)
            else:
                for c, d in zip("qkv", (e, module.kdim, module.vdim), strict=True):
                    blocks[id(getattr(module, f"{c}_proj_weight"))] = (1, e, d)
        elif isinstance(module, nn.Linear):
            blocks[id(module.weight)] = (1, *module.weight.shape)
        elif isinstance(module, nn.modules.conv._ConvNd):
            g = module.groups
            rest = module.in_channels // g * math.prod(module.kernel_size)
            blocks[id(module.weight)] = (g, module.out_channels // g, rest)
        elif type(module).__name__ == "Conv1D":
            blocks[id(module.weight)] = (1, module.nf, module.nx)
    before = sum(p.numel() for p in model.parameters())
    after = before
    for g, m, n in blocks.values():
        k = min(m, n)
        after += g * (n * k + (depth - 2) * k * k + k * m) - g * m * n
    return before, after


# hand counts of two models: MobileNet 1,213 -> 2,079 (stem 8x27: 216 -> 344; depthwise 8 x
# (1 x 9): 72 -> 88; 16 x 8: 128 -> 256; depthwise 16: 144 -> 176; 24 x 16: 384 -> 896; head 5 x
# 24: 120 -> 170); the tied 6 x 6 weight 36 -> 108 counted once, the head 12 -> 20: 68 -> 148
LITERAL = {"mobilenet": (1213, 2079), "tied-three": (68, 148)}


@pytest.mark.parametrize("name", PLAIN + HF)
def test_heldout_round_trip(name):
    model, xs, kw = _build(name)
    plain = copy.deepcopy(model)
    classes = [type(m) for m in model.modules()]
    names = [n for n, _ in model.named_parameters()]
    buffers = [n for n, _ in model.named_buffers()]
    ties = _ties(model)
    before = _out(model, xs, kw).detach()
    hand = _hand_count(model, DEPTH)
    overparameterize(model, depth=DEPTH, modules="all")
    report = summary(model)
    assert not report.skipped, str(report)
    assert (report.params_before, report.params_after) == hand == LITERAL.get(name, hand)
    assert sum(len(c.names) for c in report.converted) - len(report.converted) == sum(
        len(t) - 1 for t in ties if any(n.endswith("weight") for n in t)
    )  # every tie of a weight: one set of factors behind all its names
    assert (_out(model, xs, kw) - before).abs().max() < TOL
    model.train()
    loss = _loss_fn(model, xs, kw)
    sgd = _train(loss, torch.optim.SGD(model.parameters(), lr=0.05))
    model.zero_grad()
    loss().backward()  # after a step, a zero-initialized layer passes gradient to every factor
    for pname, p in model.named_parameters():
        if "_factors." in pname:
            assert p.grad is not None and float(p.grad.abs().max()) > 0, pname
    adamw = _train(loss, torch.optim.AdamW(model.parameters(), lr=3e-3))
    assert sgd[-1] < sgd[0] and adamw[-1] < adamw[0], (sgd, adamw)
    model.eval()
    trained = _out(model, xs, kw).detach()
    fresh = overparameterize(copy.deepcopy(plain), depth=DEPTH, modules="all")
    fresh.load_state_dict(model.state_dict())
    assert (_out(fresh, xs, kw) - trained).abs().max() < TOL
    collapse(model)
    assert [type(m) for m in model.modules()] == classes
    assert [n for n, _ in model.named_parameters()] == names
    assert [n for n, _ in model.named_buffers()] == buffers
    assert _ties(model) == ties
    assert (_out(model, xs, kw) - trained).abs().max() < TOL
    plain.load_state_dict(model.state_dict())
    assert (_out(plain, xs, kw) - trained).abs().max() < TOL


@pytest.mark.parametrize("name", PLAIN + HF)
def test_heldout_end_to_end_sgd(name):
    model, xs, kw = _build(name)
    losses = _train(_loss_fn(model.train(), xs, kw), EndToEndSGD(model.parameters(), lr=0.05, depth=3))  # fmt: skip
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["encoder", "convnext", "mobilenet", "attentions"])
def test_heldout_half_precision(name, dtype):
    """Factors in the model's dtype; outputs as close to float32 as the half model's own.

    The bound: the half model's distance to float32 times 4 plus 4 ulps of the output scale
    (three factors round where one weight did; bf16 eps is 2^-8, fp16 2^-11).
    """
    torch.manual_seed(0)
    model, xs, _ = _plain(name)
    model = model.train() if name == "mobilenet" else model.eval()
    nn.init.normal_(model.head.weight) if name == "mobilenet" else None
    reference = model(*xs).detach()
    half, hx = copy.deepcopy(model).to(dtype), tuple(x.to(dtype) for x in xs)
    own = (half(*hx).float() - reference).abs().max()
    overparameterize(half, depth=DEPTH, modules="all")
    assert {p.dtype for p in half.parameters()} == {dtype}
    out = half(*hx)
    ulp = torch.finfo(dtype).eps * float(reference.abs().max())
    assert (out.float() - reference).abs().max() <= 4 * own + 4 * ulp
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in half.parameters() if p.grad is not None)
    torch.optim.AdamW(half.parameters(), lr=1e-3).step()
    collapse(half)
    assert {p.dtype for p in half.parameters()} == {dtype}


def test_meta_device_gets_meta_factors_and_counts(gen):
    """A model built on ``meta`` (no values) converts to factors of the same shapes."""
    with torch.device("meta"):
        meta = Attentions()
    real = copy.deepcopy(meta).to_empty(device="cpu")
    with torch.no_grad():
        for p in real.parameters():
            p.normal_(generator=gen)
    hand = _hand_count(real, DEPTH)[1]
    overparameterize(meta, depth=DEPTH, modules="all")
    overparameterize(real, depth=DEPTH, modules="all")
    assert all(p.is_meta for p in meta.parameters())
    assert [(n, p.shape) for n, p in meta.named_parameters()] == [
        (n, p.shape) for n, p in real.named_parameters()
    ]
    assert summary(meta).params_after == summary(real).params_after == hand


def test_non_finite_weight_is_a_clear_error():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"weight '1.weight' has NaN or inf entries"):
        overparameterize(net, depth=2)


def test_parametrized_weights_are_skipped_with_the_reason():
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5), nn.Linear(5, 3))
    parametrizations.weight_norm(net[0])
    parametrizations.orthogonal(net[2])
    torch.nn.utils.weight_norm(net[3])  # the hook-based form: `weight` is no Parameter
    x = torch.randn(2, 4)
    before = net(x)
    overparameterize(net, depth=2, modules="all")
    reasons = {s.name: s.reason for s in summary(net).skipped}
    assert (
        reasons["0"]
        == reasons["2"]
        == ("`weight` already carries a torch.nn.utils.parametrize parametrization")
    )
    assert reasons["3"] == "`weight` is not a floating-point nn.Parameter of the module"
    assert torch.equal(net(x), before)
    with pytest.raises(ValueError, match=r"strict=True: .*0 \(ParametrizedLinear\): `weight` already"):  # fmt: skip
        overparameterize(net, depth=2, modules="all", strict=True)


class LoRA(nn.Module):
    """A frozen base layer plus a trainable low-rank update ``B A`` with ``B = 0``."""

    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(8, 6).requires_grad_(False)
        self.A, self.B = nn.Linear(8, 2, bias=False), nn.Linear(2, 6, bias=False)
        nn.init.zeros_(self.B.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.B(self.A(x))


def test_frozen_weights_are_left_plain_and_listed(gen):
    model = LoRA().double()
    x = torch.randn(16, 8, generator=gen, dtype=torch.float64)
    y = torch.randn(16, 6, generator=gen, dtype=torch.float64)
    before = model(x).detach()
    overparameterize(model, depth=DEPTH, modules="all", strict=True)  # frozen: never an error
    report = summary(model)
    assert [c.names for c in report.converted] == [("A.weight",), ("B.weight",)]
    assert [(s.name, s.reason) for s in report.skipped] == [
        ("base", "frozen `weight`: requires_grad=False, nothing to train; left plain")
    ]
    assert type(model.base) is nn.Linear and not model.base.weight.requires_grad
    assert (model(x) - before).abs().max() < TOL
    losses = _train(lambda: F.mse_loss(model(x), y), torch.optim.SGD(model.parameters(), lr=0.1), 20)  # fmt: skip
    assert losses[-1] < losses[0]  # the adapter trains, the base stays
    assert (model(x) - model.B(model.A(x)) - before).abs().max() < TOL
    collapse(model)
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == [
        ("base.weight", False), ("base.bias", False), ("A.weight", True), ("B.weight", True)
    ]  # fmt: skip


def test_attention_chains_without_forming_the_product(gen, monkeypatch):
    """At few tokens the q/k/v blocks and ``out_proj`` apply as chains: no ``W_N .. W_1`` formed,
    same outputs and factor gradients as the product order."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 24, dropout=0.0, batch_first=True, norm_first=True)
    x = torch.randn(1, 3, 16, generator=gen, dtype=torch.float64)  # 3 tokens << width 16
    nets = {o: overparameterize(copy.deepcopy(layer).double(), depth=DEPTH, modules="all", order=o) for o in ("auto", "product")}  # fmt: skip
    product = nets["product"](x)
    product.square().sum().backward()

    def refuse(self: Factorized, dtype: torch.dtype | None = None) -> Tensor:
        raise AssertionError(f"formed the product of {self.extra_repr()}")

    monkeypatch.setattr(Factorized, "forward", refuse)
    chained = nets["auto"](x)
    chained.square().sum().backward()
    assert (chained - product).abs().max() < TOL
    for a, b in zip(nets["auto"].parameters(), nets["product"].parameters(), strict=True):
        assert (a.grad - b.grad).abs().max() < TOL


@pytest.mark.parametrize("tokens", [3, 40])  # the chained and the product order
def test_encoder_layer_compiles_without_graph_breaks(gen, tokens):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 24, dropout=0.0, batch_first=True, norm_first=True)
    net = overparameterize(layer.double().train(), depth=DEPTH, modules="all")
    x = torch.randn(1, tokens, 16, generator=gen, dtype=torch.float64)
    assert torch._dynamo.explain(net)(x).graph_break_count == 0
    eager = copy.deepcopy(net)
    out = torch.compile(net, fullgraph=True, backend="aot_eager")(x)
    ref = eager(x)
    out.square().sum().backward()
    ref.square().sum().backward()
    assert (out - ref).abs().max() < TOL
    for a, b in zip(net.parameters(), eager.parameters(), strict=True):
        assert (a.grad - b.grad).abs().max() < TOL

"""overparameterize / collapse / EndToEndSGD on real architectures built from tiny configs.

No weights and no network: every model is built from a config with random initialization.
Hugging Face models need the ``models`` extra (``pip install -e ".[models]"``).
"""

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from overparam.nn import collapse, overparameterize, summary
from overparam.optim import EndToEndSGD

TOL = 1e-10  # float64 forward passes of two-layer models: ~1e-15 relative rounding

Case = tuple[nn.Module, dict[str, Any], list[tuple[str, str]]]  # model, inputs, tied names


def _hf(name: str) -> Case:
    T = pytest.importorskip("transformers", reason="needs the `models` extra (transformers)")
    small = {"vocab_size": 40, "max_position_embeddings": 16}
    ids = torch.randint(1, 40, (2, 6), generator=torch.Generator().manual_seed(0))
    if name == "bert":
        config = T.BertConfig(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
            **small,
        )  # fmt: skip
        model: nn.Module = T.BertForMaskedLM(config)
        ties = [("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight")]
    elif name == "gpt2":
        config = T.GPT2Config(
            n_embd=16, n_layer=2, n_head=2, vocab_size=40, n_positions=16, bos_token_id=0,
            eos_token_id=0,
        )  # fmt: skip
        model = T.GPT2LMHeadModel(config)
        ties = [("transformer.wte.weight", "lm_head.weight")]
    else:
        config = T.LlamaConfig(
            hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, **small,
        )  # fmt: skip
        model = T.LlamaForCausalLM(config)
        ties = []
    return model, {"input_ids": ids, "labels": ids}, ties


def _torch_transformer() -> Case:
    model = nn.Transformer(
        d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=24,
        dropout=0.0, batch_first=True,
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    return (
        model,
        {"src": torch.randn(2, 5, 16, generator=g), "tgt": torch.randn(2, 4, 16, generator=g)},
        [],
    )


BUILDERS: dict[str, Callable[[], Case]] = {
    "bert": lambda: _hf("bert"),
    "gpt2": lambda: _hf("gpt2"),
    "llama": lambda: _hf("llama"),
    "nn.Transformer": _torch_transformer,
}


def _build(name: str) -> Case:
    torch.manual_seed(0)
    model, inputs, ties = BUILDERS[name]()
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    return model.double().eval(), inputs, ties


def _out(model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    if isinstance(model, nn.Transformer):
        return model(**inputs)
    return model(**inputs).logits


def _loss(model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    if isinstance(model, nn.Transformer):
        return F.mse_loss(model(**inputs), torch.zeros_like(inputs["tgt"]))
    return model(**inputs).loss


def _train(model: nn.Module, inputs: dict[str, Any], opt: torch.optim.Optimizer) -> list[float]:
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = _loss(model, inputs)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses + [_loss(model, inputs).item()]


def _param(model: nn.Module, dotted: str) -> nn.Parameter:
    owner, _, name = dotted.rpartition(".")
    return getattr(model.get_submodule(owner), name)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_real_model_round_trip(name, tmp_path):
    model, inputs, ties = _build(name)
    plain = copy.deepcopy(model)
    classes = [type(m) for m in model.modules()]
    names = [n for n, _ in model.named_parameters()]
    before = _out(model, inputs).detach()
    overparameterize(model, depth=3, modules="all")
    report = summary(model)
    assert report.converted and not report.skipped, str(report)
    assert report.params_before == sum(p.numel() for p in plain.parameters())
    assert (_out(model, inputs) - before).abs().max() < TOL
    for a, b in ties:  # one set of factors behind both names
        assert [n for c in report.converted for n in c.names if n in (a, b)] == [a, b]
    sgd = _train(model, inputs, torch.optim.SGD(model.parameters(), lr=0.05))
    adamw = _train(model, inputs, torch.optim.AdamW(model.parameters(), lr=1e-2))
    assert sgd[-1] < sgd[0] and adamw[-1] < adamw[0]
    trained = _out(model, inputs).detach()
    fresh = overparameterize(_build(name)[0], depth=3, modules="all")
    fresh.load_state_dict(model.state_dict())
    assert (_out(fresh, inputs) - trained).abs().max() < TOL
    collapse(model)
    assert [type(m) for m in model.modules()] == classes
    assert [n for n, _ in model.named_parameters()] == names
    assert (_out(model, inputs) - trained).abs().max() < TOL
    for a, b in ties:
        assert _param(model, a) is _param(model, b)
    plain.load_state_dict(model.state_dict())  # the original architecture takes the weights
    assert (_out(plain, inputs) - trained).abs().max() < TOL
    if hasattr(model, "save_pretrained"):  # a local folder: no network
        model.save_pretrained(tmp_path)
        reloaded = type(model).from_pretrained(tmp_path, dtype=torch.float64).eval()
        assert (_out(reloaded, inputs) - trained).abs().max() < TOL
        for a, b in ties:
            assert _param(reloaded, a) is _param(reloaded, b)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_real_model_end_to_end_sgd(name):
    model, inputs, _ = _build(name)
    losses = _train(model, inputs, EndToEndSGD(model.parameters(), lr=0.05, depth=3))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_timm_models():
    timm = pytest.importorskip(
        "timm",
        reason="timm needs torchvision, whose package-index build does not import beside the "
        "torch 2.13 CPU build",
    )
    archs = {"vit_tiny_patch16_224": {"img_size": 64}, "convnext_atto": {}, "efficientnet_b0": {}}
    for arch, kwargs in archs.items():
        torch.manual_seed(0)
        model = timm.create_model(arch, pretrained=False, num_classes=5, **kwargs)
        model = model.double().eval()
        x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
        before = model(x).detach()
        overparameterize(model, depth=2, modules="all")
        assert (model(x) - before).abs().max() < 1e-8
        classes = type(model)
        assert type(collapse(model)) is classes

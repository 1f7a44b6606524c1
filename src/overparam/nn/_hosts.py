"""Modules whose weight is a :class:`Factorized` product: the ``weight`` property and the forwards.

An overparameterized module keeps its class's behaviour through a subclass made once per class:
each replaced parameter ``name`` becomes a read-only property returning ``self.<name>_factors()``
(the end-to-end weight, so code that reads ``module.weight`` sees the usual tensor), and for the
layers whose computation is known (``nn.Linear``, ``nn.Conv1d/2d/3d``, ``nn.Embedding``, Hugging
Face's ``Conv1D``) ``forward`` applies the factors in the cheaper order of
:meth:`Factorized.prefers_chain`.  A conv chain is the ``k x k`` conv into ``d_1`` channels
followed by ``1 x 1`` convs, all with the layer's ``groups``: the same function as the conv with
the product kernel (no bias or nonlinearity in between).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from overparam.core.factorization import product
from overparam.nn._factorized import Factorized

SUFFIX = "_factors"
_CONVS: dict[type[nn.Module], Any] = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


@dataclass
class HostInfo:
    """What :func:`collapse` needs to restore a module exactly."""

    cls: type[nn.Module]
    parameters: list[str]  # registration order of the original parameters
    names: list[str] = field(default_factory=list)  # the replaced ones
    kind: str | None = None  # the chained forward of the original class (see ``chain_kind``)


def is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face ``Conv1D`` (weight ``(in, out)``), recognised without importing transformers."""
    weight = module._parameters.get("weight")
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(getattr(module, "nf", None), int)
        and isinstance(getattr(module, "nx", None), int)
        and weight is not None
        and tuple(weight.shape) == (module.nx, module.nf)
    )


def chain_kind(module: nn.Module, name: str) -> str | None:
    """Which chained forward applies to ``module`` (``None``: only the ``weight`` property)."""
    forward = type(module).forward
    if isinstance(module, nn.MultiheadAttention) and forward is nn.MultiheadAttention.forward:
        return "mha"
    if name != "weight":
        return None
    if isinstance(module, nn.Linear) and forward is nn.Linear.forward:
        return "linear"
    for kind in _CONVS:
        if isinstance(module, kind) and forward is kind.forward:
            return "conv"
    if isinstance(module, nn.Embedding) and forward is nn.Embedding.forward:
        return "embedding"
    return "conv1d" if is_hf_conv1d(module) else None


def _factors(module: nn.Module) -> Factorized:
    out = module._modules["weight" + SUFFIX]
    assert isinstance(out, Factorized)
    return out


def _linear_chain(x: Tensor, f: Factorized, bias: Tensor | None) -> Tensor:
    for W in list(f.factors)[:-1]:
        x = F.linear(x, W)
    return F.linear(x, f.factors[-1], bias)


def _linear_forward(self: Any, x: Tensor) -> Tensor:
    f = _factors(self)
    if not f.transposed and f.prefers_chain(x.numel() // max(x.shape[-1], 1)):
        return _linear_chain(x, f, self.bias)
    return F.linear(x, self.weight, self.bias)


def _conv1d_hf_forward(self: Any, x: Tensor) -> Tensor:
    """Hugging Face ``Conv1D``: ``x W + b`` with ``W`` of shape ``(in, out)``."""
    f = _factors(self)
    if f.transposed and f.prefers_chain(x.numel() // max(x.shape[-1], 1)):
        return _linear_chain(x, f, self.bias)
    out = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _out_positions(conv: Any, x: Tensor) -> int:
    """Output positions (batch times pixels) of ``conv`` on ``x`` (unbatched input: batch 1)."""
    dims = len(conv.kernel_size)
    spatial = x.shape[-dims:]
    batch = x.shape[0] if x.dim() == dims + 2 else 1
    if conv.padding == "same":
        return batch * math.prod(spatial)
    pad = (0,) * dims if conv.padding == "valid" else conv.padding
    out = [
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, p, d, k, s in zip(
            spatial, pad, conv.dilation, conv.kernel_size, conv.stride, strict=True
        )
    ]
    return batch * math.prod(out)


def _conv_forward(self: Any, x: Tensor) -> Tensor:
    f = _factors(self)
    if f.transposed or not f.prefers_chain(_out_positions(self, x)):
        return self._conv_forward(x, self.weight, self.bias)
    conv = _CONVS[next(k for k in _CONVS if isinstance(self, k))]
    g, ones = self.groups, (1,) * len(self.kernel_size)
    first, *rest = list(f.factors)
    x = self._conv_forward(x, first.reshape(-1, self.in_channels // g, *self.kernel_size), None)
    for j, W in enumerate(rest):
        bias = self.bias if j == len(rest) - 1 else None
        x = conv(x, W.reshape(-1, W.shape[-1], *ones), bias, groups=g)
    return x


def _embedding_forward(self: Any, idx: Tensor) -> Tensor:
    """``W[idx] = W_N[idx] W_{N-1} ... W_1``; the padding row gets no gradient, as in the layer."""
    f = _factors(self)
    plain = self.max_norm is None and not self.scale_grad_by_freq and not self.sparse
    if f.transposed or f.groups > 1 or not plain or not f.prefers_chain(idx.numel(), True):
        return F.embedding(
            idx, self.weight, self.padding_idx, self.max_norm, self.norm_type,
            self.scale_grad_by_freq, self.sparse,
        )  # fmt: skip
    factors = list(f.factors)
    h = F.embedding(idx, factors[-1])
    for W in reversed(factors[:-1]):
        h = h @ W
    if self.padding_idx is not None:  # padding tokens: the value, no gradient to any factor
        h = h.where((idx != self.padding_idx).unsqueeze(-1), h.detach())
    return h


def _block(module: nn.Module, name: str) -> tuple[Factorized | None, list[Tensor]]:
    """The factors (``W_1`` first) of the q/k/v block ``name`` of an attention, if factorized."""
    packed = module._modules.get("in_proj_weight" + SUFFIX)
    f = packed if packed is not None else module._modules.get(name + SUFFIX)
    if not isinstance(f, Factorized):
        return None, []
    block = "qkv".index(name[0])
    return f, [W[block] for W in f.factors] if packed is not None else list(f.factors)


def _chains(f: Factorized | None, factors: list[Tensor], x: Tensor, square: int) -> bool:
    """Whether the block applies as a chain to ``x`` (the query's ``W_N`` must be ``E x E``)."""
    if f is None or len(factors) < 2 or not f.prefers_chain(x.numel() // max(x.shape[-1], 1)):
        return False
    return not square or factors[-1].shape[-1] == square


def _projection(module: nn.Module, name: str, x: Tensor, square: int) -> tuple[Tensor, Tensor]:
    """``(x W_1^T .. W_{N-1}^T, W_N)`` for one q/k/v block when chaining is cheaper, else
    ``(x, W)`` (``F.multi_head_attention_forward`` applies the returned weight)."""
    f, factors = _block(module, name)
    if f is None:  # a plain block
        packed = module._parameters.get("in_proj_weight")
        return x, packed.chunk(3)["qkv".index(name[0])] if packed is not None else getattr(
            module, name
        )
    if not _chains(f, factors, x, square):
        return x, product(factors)
    for W in factors[:-1]:
        x = F.linear(x, W)
    return x, factors[-1]


def _mha_forward(
    self: Any, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
    need_weights: bool = True, attn_mask: Tensor | None = None,
    average_attn_weights: bool = True, is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """``nn.MultiheadAttention`` with each q/k/v block and ``out_proj`` in its cheaper order.

    A chained block feeds ``x W_1^T .. W_{N-1}^T`` to ``F.multi_head_attention_forward`` with
    ``W_N`` as its (separate) projection weight; a chained ``out_proj`` enters as ``W_1`` and the
    rest of its chain is applied to the output.  With nothing to chain (or nested tensors) this
    is the layer's own forward, fast path included.
    """
    args = (query, key, value, key_padding_mask, need_weights, attn_mask)
    if query.is_nested or key.is_nested or value.is_nested:
        return nn.MultiheadAttention.forward(self, *args, average_attn_weights, is_causal)
    f = self.out_proj._modules.get("weight" + SUFFIX)
    f = f if isinstance(f, Factorized) and f.depth > 1 else None
    out = f is not None and f.prefers_chain(query.numel() // self.embed_dim)
    inputs = {"q": (query, self.embed_dim), "k": (key, 0), "v": (value, 0)}
    chained = [_chains(*_block(self, c + "_proj_weight"), x, sq) for c, (x, sq) in inputs.items()]
    if not (out or any(chained)):  # nothing to chain: the layer's own forward (and fast path)
        return nn.MultiheadAttention.forward(self, *args, average_attn_weights, is_causal)
    batched = query.dim() == 3
    if self.batch_first and batched:
        query, key, value = (t.transpose(1, 0) for t in (query, key, value))
    q, w_q = _projection(self, "q_proj_weight", query, self.embed_dim)
    k, w_k = _projection(self, "k_proj_weight", key, 0)
    v, w_v = _projection(self, "v_proj_weight", value, 0)
    rest = list(f.factors) if f is not None and out else []
    w_o, b_o = (rest.pop(0), None) if rest else (self.out_proj.weight, self.out_proj.bias)
    h, weights = F.multi_head_attention_forward(
        q, k, v, self.embed_dim, self.num_heads, None, self.in_proj_bias, self.bias_k,
        self.bias_v, self.add_zero_attn, self.dropout, w_o, b_o, training=self.training,
        key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=attn_mask,
        use_separate_proj_weight=True, q_proj_weight=w_q, k_proj_weight=w_k, v_proj_weight=w_v,
        average_attn_weights=average_attn_weights, is_causal=is_causal,
    )  # fmt: skip
    for j, W in enumerate(rest):
        h = F.linear(h, W, self.out_proj.bias if j == len(rest) - 1 else None)
    return (h.transpose(1, 0) if self.batch_first and batched else h), weights


_FORWARDS = {
    "mha": _mha_forward,
    "linear": _linear_forward,
    "conv": _conv_forward,
    "conv1d": _conv1d_hf_forward,
    "embedding": _embedding_forward,
}
_CLASSES: dict[tuple[type[nn.Module], tuple[str, ...], str | None], type[nn.Module]] = {}


def _getter(name: str) -> property:
    def get(self: nn.Module) -> Tensor:
        factors = self._modules[name + SUFFIX]
        assert factors is not None
        return factors()

    return property(get, doc=f"The end-to-end ``{name}``: the product of ``{name}{SUFFIX}``.")


def rebuild(cls: type[nn.Module], names: tuple[str, ...], kind: str | None) -> nn.Module:
    """An empty instance of ``host_class(cls, names, kind)``: the unpickling half of ``__reduce_ex__``."""
    made = host_class(cls, names, kind)
    return made.__new__(made)


def _reduce_ex(self: nn.Module, protocol: Any) -> tuple[Any, ...]:
    """Pickle by reference to the original class (the made subclass has no importable name)."""
    key = next(k for k, v in _CLASSES.items() if v is type(self))
    return rebuild, key, self.__dict__


def _setattr(self: nn.Module, name: str, value: Any) -> None:
    if name in vars(type(self)) and isinstance(vars(type(self))[name], property):
        raise ValueError(
            f"`{name}` of an overparameterized {type(self).__name__} is the product of its "
            f"factors ({name}{SUFFIX}); set the factors, or collapse the model first"
        )
    nn.Module.__setattr__(self, name, value)


def host_class(cls: type[nn.Module], names: tuple[str, ...], kind: str | None) -> type[nn.Module]:
    """The subclass of ``cls`` with ``names`` as product properties (made once, then cached)."""
    key = (cls, names, kind)
    if key not in _CLASSES:
        body: dict[str, Any] = {name: _getter(name) for name in names}
        if kind is not None:
            body["forward"] = _FORWARDS[kind]
        body["__module__"] = cls.__module__
        body["__reduce_ex__"] = _reduce_ex
        body["__setattr__"] = _setattr
        _CLASSES[key] = type(f"Overparameterized{cls.__name__}", (cls,), body)
    return _CLASSES[key]

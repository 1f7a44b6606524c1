"""Replace the weights of a model's layers by products of factors, and collapse them back.

A layer with weight ``W`` (read as ``g`` matrices of shape ``(m, n)``, see
:mod:`overparam.nn._factorized`) gets ``W = W_N ... W_1``: the overparameterization of Arora, Cohen &
Hazan (ICML 2018), Section 8 ("add a matrix after each dense layer").  The layer keeps its class
(a subclass made for it: ``isinstance`` holds), ``module.weight`` reads the end-to-end weight, and
its forward applies the factors in whichever order costs fewer multiply-adds for the batch at hand.
"""

from __future__ import annotations

import gc
import sys
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from overparam import _validate
from overparam.nn._factorized import ORDERS, Factorized, as_matrices, preserving_factors
from overparam.nn._hosts import SUFFIX, HostInfo, chain_kind, host_class, is_hf_conv1d
from overparam.nn._summary import SKIPPED, Skipped

INITS = ("preserve", "identity", "near_zero")
HOST = "_overparam_host"
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_SUPPORTED = "nn.Linear, nn.Conv1d/2d/3d, nn.MultiheadAttention, Hugging Face Conv1D"
Target = tuple[str, int, bool]  # parameter name, groups, transposed
FROZEN = "frozen"
EMPTY = "empty weight"


def _targets(module: nn.Module) -> list[Target] | str:
    """The parameters to replace in ``module``, or why it cannot be overparameterized."""
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
        return "uninitialized (lazy) parameters: run a forward first"
    if HOST in vars(module):
        return "already overparameterized"
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return "transposed convolutions are not supported"
    if isinstance(module, nn.Linear):
        found: list[Target] = [("weight", 1, False)]
    elif isinstance(module, _CONVS):
        found = [("weight", module.groups, False)]
    elif is_hf_conv1d(module):
        found = [("weight", 1, True)]
    elif isinstance(module, nn.MultiheadAttention):
        separate = [(f"{c}_proj_weight", 1, False) for c in "qkv"]
        found = separate if module.in_proj_weight is None else [("in_proj_weight", 3, False)]
    else:
        return f"not a supported layer ({_SUPPORTED})"
    for name, _, _ in found:
        if parametrize.is_parametrized(module, name):
            return f"`{name}` already carries a torch.nn.utils.parametrize parametrization"
        param = module._parameters.get(name)
        if not isinstance(param, nn.Parameter) or not param.is_floating_point():
            return f"`{name}` is not a floating-point nn.Parameter of the module"
        if param.numel() == 0:
            return (
                f"{EMPTY} `{name}` of shape {tuple(param.shape)}: nothing to factorize; left plain"
            )
    return found


def _trainable(module: nn.Module, targets: list[Target]) -> tuple[list[Target], str]:
    """The targets whose parameter trains, and the reason the frozen ones are left plain."""
    frozen = [t for t in targets if not module.get_parameter(t[0]).requires_grad]
    if not frozen:
        return targets, ""
    names = ", ".join(f"`{t[0]}`" for t in frozen)
    reason = f"{FROZEN} {names}: requires_grad=False, nothing to train; left plain"
    return [t for t in targets if t not in frozen], reason


def _selects(module: nn.Module, kinds: tuple[type[nn.Module], ...] | None) -> bool:
    if kinds is not None:
        return isinstance(module, kinds)
    supported = (nn.Linear, nn.MultiheadAttention, nn.modules.conv._ConvNd)
    return isinstance(module, supported) or is_hf_conv1d(module)


def _widths(width: int | Sequence[int] | None, depth: int, rows: int, cols: int) -> list[int]:
    """Hidden widths ``d_1 .. d_{N-1}``; ``None`` means the rank bound ``min(m, n)``."""
    if width is None:
        return [min(rows, cols)] * (depth - 1)
    if isinstance(width, int):  # bool included: int_sequence rejects it by name
        return _validate.int_sequence([width] * max(depth - 1, 1), "width")[: depth - 1]
    if not isinstance(width, Sequence):
        raise ValueError(f"`width` must be an int, a sequence of ints or None, got {width!r}")
    out = _validate.int_sequence(list(width), "width")
    if len(out) != depth - 1:
        raise ValueError(f"`width` must have depth - 1 = {depth - 1} entries, got {len(out)}")
    return out


def _other_init(
    M: Tensor, dims: list[int], init: str, scale: float, generator: torch.Generator | None
) -> list[Tensor]:
    """Factors of a stack ``M`` ``(b, m, n)`` for ``"identity"`` or ``"near_zero"``.

    ``"identity"``: ``W_1 = E_1 M`` (``M`` padded with zero rows to ``d_1``), ``W_j = E_j
    E_{j-1}^T`` (rectangular identities): the product is ``M`` exactly, the paper's "added identity
    matrix".  ``"near_zero"``: i.i.d. ``N(0, scale^2)`` entries (Arora et al. 2018, Section 8).
    """
    b, dtype, device = M.shape[0], M.dtype, M.device
    if init == "identity":
        first = torch.zeros(b, dims[1], dims[0], dtype=dtype, device=device)
        first[:, : dims[-1]] = M.detach()
        eyes = [
            torch.eye(dims[j + 1], dims[j], dtype=dtype, device=device)
            for j in range(1, len(dims) - 1)
        ]
        return [first, *(e.expand(b, -1, -1).clone() for e in eyes)]
    return [
        (scale * torch.randn(b, dims[j + 1], dims[j], generator=generator)).to(device, dtype)
        for j in range(len(dims) - 1)
    ]


class _Plan:
    """One weight to factorize: where it lives, its layout and its hidden widths."""

    def __init__(self, name: str, module: nn.Module, target: Target, widths: list[int]) -> None:
        self.name, self.module, (self.param, self.groups, self.transposed) = name, module, target
        self.weight: nn.Parameter = module._parameters[self.param]  # type: ignore[assignment]
        self.matrices = as_matrices(self.weight.detach(), self.groups, self.transposed)
        self.widths = widths
        self.factors: list[Tensor] = []

    def key(self) -> tuple[Any, ...]:
        return (
            tuple(self.matrices.shape[-2:]),
            self.weight.dtype,
            self.weight.device,
            tuple(self.widths),
        )


def _stack(plans: list[_Plan]) -> Tensor:
    return torch.cat([p.matrices.reshape(-1, *p.matrices.shape[-2:]) for p in plans])


def _initial_factors(
    plans: list[_Plan], depth: int, init: str, scale: float, generator: torch.Generator | None
) -> None:
    """Fill ``plan.factors``, one batched factorization per group of same-shape weights."""
    groups: dict[tuple[Any, ...], list[_Plan]] = defaultdict(list)
    for plan in plans:
        groups[plan.key()].append(plan)
    for (shape, _, _, widths), same in groups.items():
        M, dims = _stack(same), [shape[1], *widths, shape[0]]
        if init == "preserve" and not M.is_meta:
            _check_finite(same)
        if init == "preserve":
            factors, ranks = preserving_factors(M, depth, widths)
            _check_ranks(same, ranks, list(widths))
        else:
            if init == "identity" and widths and min(widths) < shape[0]:
                raise ValueError(
                    f"`width` must be >= the output size {shape[0]} of {same[0].name!r} for "
                    f"init='identity' (the product must equal the weight), got {list(widths)}"
                )
            factors = _other_init(M, dims, init, scale, generator)
        start = 0
        for plan in same:
            b = plan.groups
            plan.factors = [f[start : start + b] if b > 1 else f[start] for f in factors]
            start += b


def _check_finite(plans: list[_Plan]) -> None:
    for plan in plans:
        if not bool(torch.isfinite(plan.matrices).all()):
            raise ValueError(
                f"`model` weight {plan.name!r} has NaN or inf entries: init='preserve' "
                "factorizes finite weights only"
            )


def _check_ranks(plans: list[_Plan], ranks: Tensor, widths: list[int]) -> None:
    if not widths:
        return
    start = 0
    for plan in plans:
        rank = int(ranks[start : start + plan.groups].max())
        start += plan.groups
        if min(widths) < rank:
            raise ValueError(
                f"`width` must be >= rank {rank} of the weight of {plan.name!r} for "
                f"init='preserve' (the product must equal the weight), got {widths}"
            )


def _install(owners: list[tuple[str, nn.Module, str]], factors: Factorized) -> None:
    """Replace the shared parameter by ``factors`` in every module that holds it."""
    for _, module, name in owners:
        info: HostInfo | None = vars(module).get(HOST)
        if info is None:
            info = HostInfo(type(module), list(module._parameters), [], chain_kind(module, name))
        del module._parameters[name]
        module.add_module(name + SUFFIX, factors)
        info.names.append(name)
        kind = info.kind if info.kind == "mha" or info.names == ["weight"] else None
        module.__class__ = host_class(info.cls, tuple(info.names), kind)
        object.__setattr__(module, HOST, info)


def _held(model: nn.Module) -> bool:
    """Whether a wrapper module (one with a ``process_group``) holds ``model`` as a child."""
    for children in gc.get_referrers(model):
        if isinstance(children, dict):
            for attrs in gc.get_referrers(children):
                if isinstance(attrs, dict) and attrs.get("_modules") is children:
                    if "process_group" in attrs:
                        return True
    return False


def _check_not_wrapped(model: nn.Module) -> None:
    """Refuse models inside DDP / FSDP: those register the parameters they sync at wrap time."""
    from torch.nn.parallel import DistributedDataParallel

    wrappers: tuple[type, ...] = (DistributedDataParallel,)
    fsdp = sys.modules.get("torch.distributed.fsdp")  # no FSDP module exists before its import
    for kind in ("FSDPModule", "FullyShardedDataParallel"):
        if isinstance(getattr(fsdp, kind, None), type):
            wrappers += (getattr(fsdp, kind),)
    found = [
        (n or "<model>", type(m).__name__)
        for n, m in model.named_modules()
        if isinstance(m, wrappers)
    ]
    if not found and torch.distributed.is_available() and torch.distributed.is_initialized():
        found = [("<model>", "the .module of a DistributedDataParallel/FSDP wrapper")] * _held(
            model
        )
    if found:
        name, kind = found[0]
        raise ValueError(
            f"`model` is already wrapped ({name!r} is {kind}): overparameterize first, then wrap "
            "in DDP/FSDP (the wrapper registers the parameters it synchronizes when it is built)"
        )


def _kinds(modules: Any) -> tuple[type[nn.Module], ...] | None:
    if modules == "all":
        return None
    kinds = tuple(modules) if isinstance(modules, (tuple, list)) else (modules,)
    if not kinds or not all(isinstance(k, type) and issubclass(k, nn.Module) for k in kinds):
        raise ValueError(
            f"`modules` must be 'all' or a non-empty tuple of nn.Module classes, got {modules!r}"
        )
    return kinds


def _plan(
    model: nn.Module,
    kinds: tuple[type[nn.Module], ...] | None,
    depth: int,
    width: Any,
    strict: bool,
) -> list[_Plan]:
    """The weights to factorize (one per shared parameter); records skipped modules on ``model``."""
    plans: dict[int, _Plan] = {}
    skipped: list[Skipped] = []
    for name, module in model.named_modules():
        name = name or "<model>"
        if not _selects(module, kinds):
            continue
        targets = _targets(module)
        if isinstance(targets, str):
            skipped.append(Skipped(name, type(module).__name__, targets))
            continue
        targets, frozen = _trainable(module, targets)
        if frozen:
            skipped.append(Skipped(name, type(module).__name__, frozen))
        for target in targets:
            weight = module._parameters[target[0]]
            if id(weight) not in plans:
                M = as_matrices(weight.detach(), target[1], target[2])  # type: ignore[union-attr]
                widths = _widths(width, depth, M.shape[-2], M.shape[-1])
                plans[id(weight)] = _Plan(f"{name}.{target[0]}", module, target, widths)
    refused = [s for s in skipped if not s.reason.startswith((FROZEN, EMPTY))]
    if strict and refused:
        listing = "; ".join(f"{s.name} ({s.kind}): {s.reason}" for s in refused)
        raise ValueError(
            f"strict=True: these selected modules cannot be overparameterized: {listing}"
        )
    object.__setattr__(model, SKIPPED, skipped)
    return list(plans.values())


def _owners(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str]]]:
    """Every (module name, module, parameter name) holding each parameter (ties included)."""
    owners: dict[int, list[tuple[str, nn.Module, str]]] = defaultdict(list)
    for name, module in model.named_modules():
        for pname, param in module._parameters.items():
            if param is not None:
                owners[id(param)].append((name or "<model>", module, pname))
    return owners


def overparameterize(
    model: nn.Module,
    depth: int = 2,
    width: int | Sequence[int] | None = None,
    init: str = "preserve",
    modules: tuple[type[nn.Module], ...] | str = (nn.Linear,),
    *,
    scale: float = 1e-3,
    generator: torch.Generator | None = None,
    order: str = "auto",
    strict: bool = False,
) -> nn.Module:
    """Replace the weight ``W`` of every selected layer by ``W_N ... W_1``, in place.

    Init ``"preserve"``: balanced factors of ``W`` (``W_{j+1}^T W_{j+1} = W_j W_j^T``) on its
    nonzero singular values, and trainable ones on its numerically zero singular values (``W_N``
    zero there, the others not), so the model computes the same function (to rounding: ~1e-15
    relative in float64) and every factor receives gradient, a zero weight included.
    ``"identity"``: ``W_1 = W`` and identity extra matrices.  ``"near_zero"``: i.i.d.
    ``N(0, scale^2)`` factors.  Biases stay plain parameters.  The factors of ``module.weight``
    are ``module.weight_factors.factors[0 .. N-1]`` (``W_1`` first; see :func:`factors_of`).

    A parameter shared by several modules (tied embeddings and output heads) is factorized once
    and stays shared: every module holding it reads the same product.  Factorizations run batched
    over same-shape weights, in float32 for bf16/fp16 weights (factors stored in the weight's
    dtype).  Selected layers that cannot be overparameterized are skipped and listed by
    :func:`summary` (``strict=True`` raises instead).  Frozen weights (``requires_grad=False``,
    such as the base weights under a LoRA adapter) are left plain and listed, never an error:
    their factors could not train, and would only cost memory and time; so are empty weights
    (a zero dimension: nothing to factorize).  ``meta`` weights get
    ``meta`` factors of the same shapes (counted by :func:`summary`; no values to preserve).

    Args:
        model: the model, changed in place (the model itself may be a selected layer).  Must not
            be wrapped in DDP/FSDP yet: overparameterize first, then wrap.
        depth: number of factors ``N >= 1`` per weight.
        width: hidden widths ``d_1 .. d_{N-1}`` (per group): one int, a sequence of ``N - 1``
            ints, or ``None`` for the rank bound ``min(m, n)``, which preserves every weight.
        init: ``"preserve"``, ``"identity"`` or ``"near_zero"``.
        modules: the layer classes to select, or ``"all"``: ``nn.Linear``, ``nn.Conv1d/2d/3d``
            (grouped and depthwise: per-group factors), ``nn.MultiheadAttention`` (its
            ``in_proj_weight`` as three q/k/v blocks, or its separate q/k/v weights) and Hugging
            Face ``Conv1D``.
        scale: entry std of ``"near_zero"``.
        generator: CPU random generator of ``"near_zero"``.
        order: contraction order, ``"auto"`` (the cheaper per call), ``"product"`` or ``"chain"``.
        strict: raise on a selected layer that cannot be overparameterized (frozen and empty
            weights excepted).

    Returns:
        ``model``.

    Example:
        >>> net = overparameterize(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1)))
        >>> len(list(net.parameters()))  # two factors per weight, plus the biases
        6

    Reference: Arora, Cohen & Hazan 2018, Section 8 (ConvNet on MNIST).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    N = int(_validate.depth(depth, integer=True))
    if init not in INITS:
        raise ValueError(f"`init` must be one of {INITS}, got {init!r}")
    if order not in ORDERS:
        raise ValueError(f"`order` must be one of {ORDERS}, got {order!r}")
    scale = _validate.positive(scale, "scale")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(
            f"`generator` must be a torch.Generator or None, got {type(generator).__name__}"
        )
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            f"`generator` must be a CPU torch.Generator (factors are drawn on the CPU), "
            f"got one on {generator.device}"
        )
    kinds = _kinds(modules)
    _check_not_wrapped(model)
    plans = _plan(model, kinds, N, width, strict)
    with torch.no_grad():
        _initial_factors(plans, N, init, scale, generator)
    owners = _owners(model)
    for plan in plans:
        factors = Factorized(
            plan.factors, plan.weight.shape, plan.groups, plan.transposed, order,
            requires_grad=plan.weight.requires_grad,
        )  # fmt: skip
        _install(owners[id(plan.weight)], factors)
    return model


def is_overparameterized(module: nn.Module) -> bool:
    """Whether ``module`` holds a weight made of factors (by :func:`overparameterize`)."""
    return HOST in vars(module)


def factors_of(module: nn.Module, name: str = "weight") -> list[Tensor]:
    """The factors ``[W_1, ..., W_N]`` (parameters, ``W_1`` first) of ``module.<name>``."""
    factors = module._modules.get(name + SUFFIX) if is_overparameterized(module) else None
    if not isinstance(factors, Factorized):
        raise ValueError(
            f"`module` must be overparameterized (with a factorized `{name}`), got "
            f"{type(module).__name__}"
        )
    return list(factors.factors)


def _collapsed_weight(factors: Factorized) -> nn.Parameter:
    first = factors.factors[0]
    half = first.dtype in (torch.float16, torch.bfloat16)
    with torch.no_grad():
        W = factors(torch.float32 if half else None).to(first.dtype)
    return nn.Parameter(W.contiguous(), requires_grad=first.requires_grad)


def collapse(model: nn.Module) -> nn.Module:
    """Turn every overparameterized layer of ``model`` back into its original class, in place.

    Each factorized weight becomes one plain ``nn.Parameter`` holding ``W_N ... W_1`` (computed in
    float32 for half-precision factors), shared again by every module that shared it; parameters
    are registered in their original order, so ``parameters()`` and ``state_dict()`` match the
    original model's.  Outputs equal the overparameterized model's up to the rounding of the
    product.  Deep copies are independent.  Collapse the whole model (a tie reaching outside the
    collapsed part would be broken).

    Returns:
        ``model``, ready for ``torch.save`` / export.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    hosts = [m for m in model.modules() if is_overparameterized(m)]
    weights: dict[int, nn.Parameter] = {}
    for module in hosts:
        info: HostInfo = vars(module)[HOST]
        params = dict(module._parameters)
        for name in info.names:
            factors = module._modules.pop(name + SUFFIX)
            assert isinstance(factors, Factorized)
            if id(factors) not in weights:
                weights[id(factors)] = _collapsed_weight(factors)
            params[name] = weights[id(factors)]
        module._parameters.clear()
        order = info.parameters + [k for k in params if k not in info.parameters]
        module._parameters.update({k: params[k] for k in order})
        module.__class__ = info.cls
        del vars(module)[HOST]
    for module in model.modules():
        vars(module).pop(SKIPPED, None)
    return model

"""Replace a layer's weight by a product of factors (``torch.nn.utils.parametrize``) and back.

A layer with weight ``W`` of shape ``(m, n)`` (a convolution kernel ``(m, c, k_1, ..)`` is read as
the matrix ``(m, c k_1 ..)``) becomes ``W = W_N ... W_1`` with ``W_1`` of shape ``(d_1, n)`` and
``W_j`` of shape ``(d_j, d_{j-1})``, ``d_N = m``.  For a convolution, ``W_1`` is a ``k x k`` conv
into ``d_1`` channels and ``W_2 .. W_N`` are ``1 x 1`` convs: composing them is exactly the conv
with kernel ``W_N ... W_1`` (no bias or nonlinearity in between), so the collapse is exact.
This is the overparameterization of Arora, Cohen & Hazan (ICML 2018), Section 8: "add a matrix
after each dense layer".  The product is formed once per access of ``module.weight`` (once per
forward pass), not per sample; wrap several forwards in ``parametrize.cached()`` to share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from overparam import _validate
from overparam.core.factorization import balanced_factors, numerical_rank, product

INITS = ("preserve", "identity", "near_zero")
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class Factorized(nn.Module):
    """Parametrization ``W = reshape(W_N ... W_1, shape)`` of a weight of shape ``shape``.

    ``right_inverse`` (used at registration and on ``module.weight = X``) returns the exactly
    balanced factors of ``X`` (:func:`overparam.balanced_factors`), so ``forward(right_inverse(X))
    == X`` up to rounding.

    Args:
        shape: the weight's shape ``(m, ...)``; the matrix is ``(m, prod(shape[1:]))``.
        depth: number of factors ``N >= 1``.
        widths: hidden widths ``d_1 .. d_{N-1}``.
    """

    def __init__(self, shape: Sequence[int], depth: int, widths: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.depth = int(depth)
        self.widths = [int(w) for w in widths]
        self._pending: tuple[Tensor, ...] | None = None  # factors for the next right_inverse

    def start_from(self, factors: Sequence[Tensor]) -> Factorized:
        """Make the next ``right_inverse`` (the registration) return ``factors`` instead."""
        self._pending = tuple(factors)
        return self

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return int(torch.Size(self.shape[1:]).numel())

    def forward(self, *factors: Tensor) -> Tensor:
        return product(factors).reshape(self.shape)

    def right_inverse(self, weight: Tensor) -> tuple[Tensor, ...]:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            return pending
        matrix = weight.detach().reshape(self.rows, self.cols)
        return tuple(balanced_factors(matrix, self.depth, widths=self.widths or None))

    def extra_repr(self) -> str:
        return f"shape={self.shape}, depth={self.depth}, widths={self.widths}"


def _check_module(module: nn.Module, name: str) -> None:
    if not isinstance(module, (nn.Linear, *_CONV)):
        raise ValueError(
            f"`modules` may only select nn.Linear or nn.Conv1d/2d/3d, got {type(module).__name__} "
            f"at {name!r}"
        )
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
        raise ValueError(
            f"module {name!r} has uninitialized (lazy) parameters; run a forward first"
        )
    if isinstance(module, _CONV) and module.groups != 1:
        raise ValueError(
            f"module {name!r} must have groups == 1 to be overparameterized, got {module.groups}"
        )
    if parametrize.is_parametrized(module, "weight"):
        raise ValueError(f"module {name!r} already has a parametrized weight; collapse it first")


def _widths(width: int | Sequence[int] | None, depth: int, rows: int) -> list[int]:
    """Hidden widths ``d_1 .. d_{N-1}``; ``None`` means the layer's output size ``m``."""
    if width is None:
        return [rows] * (depth - 1)
    if isinstance(width, int):  # bool included: int_sequence rejects it by name
        return _validate.int_sequence([width] * max(depth - 1, 1), "width")[: depth - 1]
    if not isinstance(width, Sequence):
        raise ValueError(f"`width` must be an int, a sequence of ints or None, got {width!r}")
    out = _validate.int_sequence(list(width), "width")
    if len(out) != depth - 1:
        raise ValueError(f"`width` must have depth - 1 = {depth - 1} entries, got {len(out)}")
    return out


def _initial(
    weight: Tensor,
    dims: list[int],
    init: str,
    scale: float,
    generator: torch.Generator | None,
) -> list[Tensor] | None:
    """Factors for ``init`` other than ``"preserve"`` (``None``: keep the balanced ones).

    ``"identity"``: ``W_1 = E_1 W`` (``W`` padded with zero rows to ``d_1``), ``W_j = E_j E_{j-1}^T``
    (rectangular identities): the product is ``W`` exactly, the paper's "added identity matrix".
    ``"near_zero"``: i.i.d. ``N(0, scale^2)`` entries (Arora et al. 2018, Section 8); the function
    changes.
    """
    if init == "preserve":
        return None
    dtype, device = weight.dtype, weight.device
    matrix = weight.detach().reshape(dims[-1], dims[0])
    if init == "identity":
        first = torch.zeros(dims[1], dims[0], dtype=dtype, device=device)
        rows = min(dims[1], dims[-1])
        first[:rows] = matrix[:rows]
        rest = [
            torch.eye(dims[j + 1], dims[j], dtype=dtype, device=device)
            for j in range(1, len(dims) - 1)
        ]
        return [first, *rest]
    return [
        (scale * torch.randn(dims[j + 1], dims[j], generator=generator, dtype=weight.dtype)).to(
            weight.device
        )
        for j in range(len(dims) - 1)
    ]


def _check_identity(weight: Tensor, widths: list[int], name: str) -> None:
    rows = weight.shape[0]
    if widths and min(widths) < rows:
        raise ValueError(
            f"`width` must be >= the output size {rows} of {name!r} for init='identity' "
            f"(the product must equal the weight), got {widths}"
        )


def _factorize(
    module: nn.Module,
    name: str,
    depth: int,
    width: int | Sequence[int] | None,
    init: str,
    scale: float,
    generator: torch.Generator | None,
) -> None:
    weight = module.weight
    assert isinstance(weight, Tensor)
    shape = tuple(weight.shape)
    widths = _widths(width, depth, shape[0])
    cols = int(torch.Size(shape[1:]).numel())
    dims = [cols, *widths, shape[0]]
    if init == "identity":
        _check_identity(weight, widths, name)
    start = _initial(weight, dims, init, scale, generator)
    if init == "preserve" and widths:
        rank = numerical_rank(weight.detach().reshape(shape[0], cols))
        if min(widths) < rank:
            raise ValueError(
                f"`width` must be >= rank {rank} of the weight of {name!r} for "
                f"init='preserve' (the product must equal the weight), got {widths}"
            )
    parametrization = Factorized(shape, depth, widths)
    if start is not None:
        parametrization.start_from(start)
    parametrize.register_parametrization(module, "weight", parametrization)


def overparameterize(
    model: nn.Module,
    depth: int = 2,
    width: int | Sequence[int] | None = None,
    init: str = "preserve",
    modules: tuple[type[nn.Module], ...] = (nn.Linear,),
    *,
    scale: float = 1e-3,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Replace the weight ``W`` of every layer of a type in ``modules`` by ``W_N ... W_1`` in place.

    Init ``"preserve"``: the balanced factors of ``W`` (``W_{j+1}^T W_{j+1} = W_j W_j^T``), so the
    model computes the same function (to rounding: ~1e-15 relative in float64).  ``"identity"``:
    ``W_1 = W`` and identity extra matrices (also the same function).  ``"near_zero"``: i.i.d.
    ``N(0, scale^2)`` factors.  Biases stay plain parameters.  Each layer's factors are trainable
    parameters ``module.parametrizations.weight.original0 .. original{N-1}`` (``W_1`` first).

    Args:
        model: the model, changed in place (the model itself may be a matching layer).
        depth: number of factors ``N >= 1`` per layer.
        width: hidden widths ``d_1 .. d_{N-1}``: one int, a sequence of ``N - 1`` ints, or
            ``None`` for the layer's output size (one extra ``m x m`` matrix per layer at N = 2,
            as in the paper).  ``"preserve"`` needs widths >= rank(W); ``"identity"`` >= m.
        init: ``"preserve"``, ``"identity"`` or ``"near_zero"``.
        modules: layer types to overparameterize (subclasses of nn.Linear / nn.ConvNd).
        scale: entry std of ``"near_zero"``.
        generator: random generator of ``"near_zero"``.

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
    scale = _validate.positive(scale, "scale")
    kinds = tuple(modules) if isinstance(modules, (tuple, list)) else (modules,)
    if not kinds or not all(isinstance(k, type) and issubclass(k, nn.Module) for k in kinds):
        raise ValueError(
            f"`modules` must be a non-empty tuple of nn.Module classes, got {modules!r}"
        )
    targets = [(n or "<model>", m) for n, m in model.named_modules() if isinstance(m, kinds)]
    for name, module in targets:
        _check_module(module, name)
    for name, module in targets:
        _factorize(module, name, N, width, init, scale, generator)
    return model


def _chain(module: nn.Module) -> Any:
    """The ``ParametrizationList`` of ``module.weight`` (typed loosely: nn.Module's __getattr__)."""
    chains: Any = module.parametrizations
    return chains["weight"]


def is_overparameterized(module: nn.Module) -> bool:
    """Whether ``module.weight`` is a :class:`Factorized` product."""
    if not parametrize.is_parametrized(module, "weight"):
        return False
    chain: Any = _chain(module)
    return any(isinstance(p, Factorized) for p in chain)


def factors_of(module: nn.Module) -> list[Tensor]:
    """The factors ``[W_1, ..., W_N]`` (parameters, ``W_1`` first) of an overparameterized layer."""
    if not is_overparameterized(module):
        raise ValueError(f"`module` must be overparameterized, got {type(module).__name__}")
    originals: Any = _chain(module)
    count = len(list(originals.parameters(recurse=False)))
    return [getattr(originals, f"original{j}") for j in range(count)]


def _own_class(module: nn.Module) -> None:
    """Give ``module`` a private copy of its ``Parametrized*`` class.

    ``copy.deepcopy`` of a parametrized module shares the class that ``parametrize`` created, and
    ``remove_parametrizations`` deletes the ``weight`` property from that class: collapsing a copy
    would break the original (and vice versa) without this.
    """
    cls = module.__class__
    body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, body)


def collapse(model: nn.Module) -> nn.Module:
    """Turn every overparameterized layer of ``model`` back into a plain layer, in place.

    The weight becomes a plain ``nn.Parameter`` holding ``W_N ... W_1`` (reshaped to the kernel
    shape), the class is the original one again, and the outputs are identical up to the rounding
    of the product.  Layers that were not overparameterized are left alone.  Deep copies of the
    model are independent: collapsing one leaves the others overparameterized and working.

    Returns:
        ``model``, ready for ``torch.save`` / export.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    for module in list(model.modules()):
        if is_overparameterized(module):
            _own_class(module)
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model

"""Deep linear networks ``x -> W_N ... W_1 x`` (Arora, Cohen & Hazan 2018, Section 4)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from overparam import _validate
from overparam.core.factorization import balanced_factors, product

INITS = ("balanced", "near_zero", "identity")


def _random_end_to_end(
    dims: list[int], scale: float, generator: torch.Generator | None, dtype: torch.dtype
) -> Tensor:
    """Gaussian ``(d_N, d_0)`` matrix of entry std ``scale``, truncated to rank ``min(dims)``."""
    W = scale * torch.randn(dims[-1], dims[0], generator=generator, dtype=dtype)
    k = min(dims)
    if k < min(dims[0], dims[-1]):
        U, s, Vh = torch.linalg.svd(W, full_matrices=False)
        W = (U[:, :k] * s[:k]) @ Vh[:k]
    return W


def initial_factors(
    dims: Sequence[int],
    init: str | Sequence[Tensor] = "balanced",
    scale: float = 1e-3,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> list[Tensor]:
    """The factors ``[W_1, ..., W_N]`` of a deep linear network with layer sizes ``dims``.

    Inits: ``"balanced"`` (a Gaussian end-to-end matrix of entry std ``scale``, truncated to rank
    ``min(dims)`` and factored by ``balanced_factors``); ``"near_zero"`` (i.i.d. ``N(0, scale^2)``
    entries, the paper's initialization); ``"identity"`` (all layers square and equal to ``I``:
    a linear residual network); or an explicit list of matrices (copied).
    """
    dims = _validate.int_sequence(dims, "dims")
    if len(dims) < 2:
        raise ValueError(f"`dims` must list at least 2 sizes [d_0, ..., d_N], got {dims}")
    depth = len(dims) - 1
    _check_dtype_and_generator(dtype, generator)
    if not isinstance(init, str):
        if isinstance(init, Tensor):
            raise ValueError(f"`init` must be a list of {depth} matrices, got a Tensor")
        factors = [torch.as_tensor(W).detach().clone() for W in init]
        _validate.matrices(factors, "init")
        shapes = [tuple(W.shape) for W in factors]
        expected = [(dims[j + 1], dims[j]) for j in range(depth)]
        if shapes != expected:
            raise ValueError(f"`init` matrices must have shapes {expected}, got {shapes}")
        return factors
    if init not in INITS:
        raise ValueError(f"`init` must be one of {INITS} or a list of matrices, got {init!r}")
    scale = _validate.positive(scale, "scale", allow_zero=init != "balanced")
    if init == "identity":
        if len(set(dims)) != 1:
            raise ValueError(f"`init`='identity' needs equal layer sizes, got dims {dims}")
        return [torch.eye(dims[0], dtype=dtype) for _ in range(depth)]
    if init == "near_zero":
        return [
            scale * torch.randn(dims[j + 1], dims[j], generator=generator, dtype=dtype)
            for j in range(depth)
        ]
    W = _random_end_to_end(dims, scale, generator, dtype)
    return balanced_factors(W, depth, widths=dims[1:-1])


def _check_dtype_and_generator(dtype: torch.dtype, generator: torch.Generator | None) -> None:
    if dtype not in _validate.FLOATING:
        raise ValueError(
            f"`dtype` must be a floating torch.dtype (torch.float16, torch.bfloat16, "
            f"torch.float32 or torch.float64), got {dtype!r}"
        )
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(
            f"`generator` must be a torch.Generator or None, got {type(generator).__name__}"
        )


class DeepLinear(nn.Module):
    """A depth-``N`` linear network with end-to-end matrix ``W_e = W_N ... W_1``.

    Args:
        dims: layer sizes ``[d_0, ..., d_N]`` (``d_0`` inputs, ``d_N`` outputs).
        init: ``"balanced"``, ``"near_zero"``, ``"identity"`` or a list of ``N`` matrices.
        scale: entry std of the random init (see :func:`initial_factors`).
        generator: random generator for reproducible inits.
        dtype: parameter dtype.

    Example:
        >>> net = DeepLinear([4, 8, 1], init="balanced", scale=0.1)
        >>> net(torch.randn(10, 4, dtype=torch.float64)).shape
        torch.Size([10, 1])
    """

    def __init__(
        self,
        dims: Sequence[int],
        init: str | Sequence[Tensor] = "balanced",
        scale: float = 1e-3,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        factors = initial_factors(dims, init, scale, generator, dtype)
        self.dims = [int(d) for d in dims]
        self.factors = nn.ParameterList([nn.Parameter(W) for W in factors])

    @property
    def depth(self) -> int:
        return len(self.factors)

    def end_to_end(self) -> Tensor:
        """``W_e = W_N ... W_1``, shape ``(d_N, d_0)``."""
        return product(list(self.factors))

    def forward(self, x: Tensor) -> Tensor:
        """``x @ W_e^T`` for ``x`` of shape ``(batch, d_0)``."""
        dtype = self.factors[0].dtype
        if not isinstance(x, Tensor) or x.dim() == 0 or x.dtype != dtype:
            got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x)
            raise ValueError(f"`x` must be a {dtype} tensor of >= 1 dimensions, got {got}")
        if x.shape[-1] != self.dims[0]:
            raise ValueError(f"`x` must have {self.dims[0]} features, got shape {tuple(x.shape)}")
        return x @ self.end_to_end().mT

    def extra_repr(self) -> str:
        return f"dims={self.dims}"

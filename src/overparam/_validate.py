"""Argument checks shared by every public entry point.

Each check raises ``ValueError`` naming the argument, what was expected and what was received.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor


def depth(value: float, name: str = "depth", integer: bool = False) -> float:
    """Check a network depth: a finite real number >= 1 (an integer when ``integer``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`{name}` must be a number >= 1, got {value!r}")
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"`{name}` must be >= 1, got {value}")
    if integer and int(value) != value:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value}")
    return float(value)


def positive(value: float, name: str, allow_zero: bool = False) -> float:
    """Check a finite real number > 0 (or >= 0 when ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be {bound}, got {value}")
    return float(value)


FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
HALF = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the numerics run in: float32 for half precision, else ``dtype`` itself."""
    return torch.float32 if dtype in HALF else dtype


def floating(x: Tensor, name: str, min_dim: int = 0) -> Tensor:
    """Check a tensor of a dtype in :data:`FLOATING`, of at least ``min_dim`` dimensions, with
    finite entries (NaN and +-inf are rejected)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOATING:
        raise ValueError(
            f"`{name}` must have a floating dtype (float16, bfloat16, float32 or float64), "
            f"got {x.dtype}"
        )
    if x.dim() < min_dim:
        raise ValueError(
            f"`{name}` must have at least {min_dim} dimensions, got shape {tuple(x.shape)}"
        )
    extent(x, name)
    return x


def extent(x: Tensor, name: str) -> float:
    """``max |x|`` (0 for an empty tensor); ``ValueError`` for NaN or infinite entries and for
    meta tensors (which have no values).

    One ``aminmax`` pass (NaN propagates through it), cheaper than ``isfinite(x).all()``."""
    if x.is_meta:
        raise ValueError(
            f"`{name}` is a meta tensor: meta tensors have no values to compute with "
            "(give a tensor on a real device)"
        )
    if x.numel() == 0:
        return 0.0
    lo, hi = torch.stack(torch.aminmax(x.detach())).tolist()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"`{name}` contains NaN or infinite entries")
    return max(-lo, hi)


def same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """Check that two tensors have identical shapes and dtypes."""
    if a.shape != b.shape:
        raise ValueError(
            f"`{name_b}` must have the shape of `{name_a}` {tuple(a.shape)}, got {tuple(b.shape)}"
        )
    if a.dtype != b.dtype:
        raise ValueError(f"`{name_b}` must have the dtype of `{name_a}` ({a.dtype}), got {b.dtype}")


def same_dtype(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """Check that two tensors have the same dtype."""
    if a.dtype != b.dtype:
        raise ValueError(f"`{name_b}` must have the dtype of `{name_a}` ({a.dtype}), got {b.dtype}")


def int_sequence(values: Sequence[int], name: str, minimum: int = 1) -> list[int]:
    """Check a sequence of integers each >= ``minimum``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(
            f"`{name}` must be an integer or a sequence of integers >= {minimum}, got {values!r}"
        )
    out = list(values)
    for v in out:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"`{name}` must contain integers >= {minimum}, got {out}")
    return out


def batch_shapes(shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """Check that the leading (batch) dimensions broadcast; return the broadcast shape."""
    try:
        return tuple(torch.broadcast_shapes(*shapes.values()))
    except RuntimeError:
        listed = ", ".join(f"`{name}` {tuple(shape)}" for name, shape in shapes.items())
        raise ValueError(f"batch dimensions of {listed} must broadcast") from None


def matrices(values: Sequence[Tensor], name: str) -> list[Tensor]:
    """Check a non-empty list or tuple of finite floating matrices (``>= 2`` dims) of one dtype."""
    if isinstance(values, Tensor) or not isinstance(values, (list, tuple)):
        kind = "a Tensor" if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"`{name}` must be a sequence of tensors, got {kind}")
    if len(values) == 0:
        raise ValueError(f"`{name}` must contain at least one matrix, got an empty sequence")
    for j, x in enumerate(values):
        floating(x, f"{name}[{j}]", min_dim=2)
        if x.dtype != values[0].dtype:
            raise ValueError(
                f"`{name}[{j}]` must have the dtype of `{name}[0]` ({values[0].dtype}), got {x.dtype}"
            )
    return list(values)

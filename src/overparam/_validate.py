"""Argument checks shared by every public entry point.

Each check raises ``ValueError`` naming the argument, what was expected and what was received.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def floating(x: Tensor, name: str, min_dim: int = 0) -> Tensor:
    """Check a floating-point tensor of at least ``min_dim`` dimensions with finite entries."""
    if not isinstance(x, Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"`{name}` must have a floating dtype (float32/float64), got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(
            f"`{name}` must have at least {min_dim} dimensions, got shape {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"`{name}` contains NaN or infinite entries")
    return x


def same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """Check that two tensors have identical shapes and dtypes."""
    if a.shape != b.shape:
        raise ValueError(
            f"`{name_b}` must have the shape of `{name_a}` {tuple(a.shape)}, got {tuple(b.shape)}"
        )
    if a.dtype != b.dtype:
        raise ValueError(f"`{name_b}` must have the dtype of `{name_a}` ({a.dtype}), got {b.dtype}")


def int_sequence(values: Sequence[int], name: str, minimum: int = 1) -> list[int]:
    """Check a sequence of integers each >= ``minimum``."""
    out = list(values)
    for v in out:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"`{name}` must contain integers >= {minimum}, got {out}")
    return out

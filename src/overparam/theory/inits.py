"""The five initialisations of Xu et al. 2023's table (normal, NTK, Xavier, He, uniform).

A layer ``W`` of shape ``(fan_in, fan_out)`` in the source convention (``x -> x W``; ``W1`` is
``d x h``, ``W2`` is ``h x m``) gets i.i.d. entries:

- ``normal``:  ``N(0, 1)``;
- ``ntk``:     ``N(0, 1 / fan_in)`` -- the NTK parameterisation ``x -> x A / sqrt(fan_in)`` with
  ``A ~ N(0, 1)`` written in the standard parameterisation (same initial function);
- ``xavier``:  ``N(0, 2 / (fan_in + fan_out))`` (Glorot & Bengio 2010, normal form);
- ``he``:      ``N(0, 2 / fan_in)`` (He et al. 2015);
- ``uniform``: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (the PyTorch ``nn.Linear`` default).

The source names the schemes but not their variances; these are the standard definitions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SCHEMES = ("normal", "ntk", "xavier", "he", "uniform")


def init_layer(
    scheme: str,
    batch: int,
    fan_in: int,
    fan_out: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """``batch`` independent layers of shape ``(fan_in, fan_out)`` drawn from ``scheme``."""
    if scheme not in SCHEMES:
        raise ValueError(f"`scheme` must be one of {SCHEMES}, got {scheme!r}")
    for name, v in (("batch", batch), ("fan_in", fan_in), ("fan_out", fan_out)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"`{name}` must be an integer >= 1, got {v!r}")
    shape = (batch, fan_in, fan_out)
    if scheme == "uniform":
        u = torch.rand(shape, generator=generator, dtype=dtype)
        return (2 * u - 1) / math.sqrt(fan_in)
    std = {
        "normal": 1.0,
        "ntk": 1 / math.sqrt(fan_in),
        "xavier": math.sqrt(2 / (fan_in + fan_out)),
        "he": math.sqrt(2 / fan_in),
    }[scheme]
    return std * torch.randn(shape, generator=generator, dtype=dtype)

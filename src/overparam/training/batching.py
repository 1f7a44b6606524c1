"""Grouping configurations into one batch, and choosing the learning rate of a grid.

Arora, Cohen & Hazan (2018), Section 8: "for each configuration we chose the learning rate giving
the fastest convergence" from a grid; here every grid point runs in the same tensor program.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def select_fastest(loss: Tensor, diverged: Sequence[bool], floor: float = 0.0) -> int:
    """Index of the configuration that converges fastest ("the rate giving the fastest
    convergence", Arora et al. 2018, Section 8): the lowest final ``loss - floor`` among the
    configurations that did not diverge; near-ties (relative 1e-9, e.g. all at the optimum) go to
    the lowest mean ``log(loss - floor)`` over the recorded steps, i.e. the earliest to get there.

    Args:
        loss: ``(K, R)`` recorded losses.
        diverged: ``K`` booleans.
        floor: the optimum ``L*`` subtracted before comparing.

    Raises:
        ValueError: if every configuration diverged.
    """
    ok = [i for i, d in enumerate(diverged) if not d]
    if not ok:
        raise ValueError(
            f"`diverged` must leave at least one configuration, got all {len(diverged)}"
        )
    gap = (loss[ok].double() - floor).clamp_min(1e-300)
    final = torch.where(torch.isfinite(gap[:, -1]), gap[:, -1], torch.inf)
    near = final <= final.min() * (1 + 1e-9) + 1e-300
    area = torch.where(near, gap.log().nanmean(dim=1), torch.inf)
    return ok[int(area.argmin())]


def stack_configs(configs: Sequence[Sequence[Tensor]]) -> tuple[list[Tensor], list[int]]:
    """Stack per-configuration factor lists of possibly different depths into one batch.

    Shallower lists are padded on the output side with frozen ``m x m`` identity layers (valid
    when the deepest networks' extra layers are ``m x m``, e.g. width-1 hidden layers and one
    output), so one :func:`train` call runs them all (pass the returned ``depths``).

    Returns:
        ``(factors, depths)``: ``factors[j]`` of shape ``(K, d_j, d_{j-1})``.
    """
    if len(configs) == 0:
        raise ValueError("`configs` must contain at least one factor list, got none")
    depths = [len(c) for c in configs]
    n = max(depths)
    padded = []
    for c in configs:
        m = c[-1].shape[0]
        eye = torch.eye(m, dtype=c[-1].dtype)
        padded.append(list(c) + [eye] * (n - len(c)))
    out = []
    for j in range(n):
        shapes = {tuple(c[j].shape) for c in padded}
        if len(shapes) != 1:
            raise ValueError(
                f"`configs` layer {j + 1} must have one shape after padding, got {shapes}"
            )
        out.append(torch.stack([c[j] for c in padded]))
    return out, depths

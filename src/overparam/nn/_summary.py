"""What :func:`overparameterize` changed: converted weights, skipped modules, parameter counts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from overparam.nn._factorized import Factorized
from overparam.nn._hosts import SUFFIX

SKIPPED = "_overparam_skipped"


@dataclass(frozen=True)
class Skipped:
    """A selected module left as it was, and why."""

    name: str
    kind: str
    reason: str


@dataclass(frozen=True)
class Converted:
    """One factorized weight: where it is held, its shape, groups and factor dims."""

    names: tuple[str, ...]  # every ``module.parameter`` holding it (more than one: a tie)
    shape: tuple[int, ...]
    groups: int
    dims: tuple[int, ...]  # (n, d_1, ..., d_{N-1}, m)

    @property
    def parameters(self) -> int:
        d = self.dims
        return self.groups * sum(a * b for a, b in zip(d[:-1], d[1:], strict=True))


@dataclass(frozen=True)
class Summary:
    """Parameter counts before (the collapsed model) and after, converted and skipped layers."""

    converted: list[Converted] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0

    def __str__(self) -> str:
        ratio = self.params_after / max(self.params_before, 1)
        lines = [
            f"overparameterized {len(self.converted)} weights, skipped {len(self.skipped)} "
            f"modules; parameters {self.params_before:,} -> {self.params_after:,} ({ratio:.2f}x)"
        ]
        for c in self.converted:
            tie = f" (shared by {len(c.names)})" if len(c.names) > 1 else ""
            groups = f" x{c.groups} groups" if c.groups > 1 else ""
            lines.append(f"  converted {', '.join(c.names)}: {c.shape} dims {c.dims}{groups}{tie}")
        lines += [f"  skipped {s.name} ({s.kind}): {s.reason}" for s in self.skipped]
        return "\n".join(lines)


def summary(model: nn.Module) -> Summary:
    """The :class:`Summary` of an overparameterized ``model`` (``print`` it for a table).

    ``params_before`` counts the model as :func:`collapse` would leave it (each shared weight
    once), ``params_after`` its current parameters (uninitialized lazy ones not counted).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    holders: dict[int, list[str]] = {}
    found: dict[int, Factorized] = {}
    skipped: list[Skipped] = []
    for name, module in model.named_modules(remove_duplicate=False):
        for child, sub in module._modules.items():
            if isinstance(sub, Factorized) and child.endswith(SUFFIX):
                param = child[: -len(SUFFIX)]
                holders.setdefault(id(sub), []).append(f"{name}.{param}" if name else param)
                found[id(sub)] = sub
    for name, module in model.named_modules():
        for s in vars(module).get(SKIPPED, []):
            full = s.name if not name else (name if s.name == "<model>" else f"{name}.{s.name}")
            skipped.append(Skipped(full, s.kind, s.reason))
    converted = [
        Converted(tuple(dict.fromkeys(holders[k])), f.shape, f.groups, tuple(f.dims))
        for k, f in found.items()
    ]
    lazy = nn.parameter.UninitializedParameter
    after = sum(p.numel() for p in model.parameters() if not isinstance(p, lazy))
    before = (
        after - sum(c.parameters for c in converted) + sum(math.prod(c.shape) for c in converted)
    )
    return Summary(converted, skipped, before, after)

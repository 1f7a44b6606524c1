"""The optimizers timed by the wall-clock experiment, built on a fresh model.

* ``sgd``: SGD with momentum (the source's baseline).
* ``adamw``: :class:`torch.optim.AdamW` on every parameter (no weight decay: every optimizer
  minimizes the same objective).
* ``muon``: :class:`torch.optim.Muon` on the 2-D weights of the hidden layers, AdamW on the rest
  (embeddings, the output head, biases, norms, conv kernels), as Muon's documentation advises;
  ``adjust_lr_fn="match_rms_adamw"`` so one learning rate serves both (Liu et al. 2025).
* ``over-sgd-N``: the model with every ``nn.Linear`` overparameterized to depth ``N``
  (:func:`overparam.nn.overparameterize`), trained by the same SGD.
* ``e2e-N``: :class:`overparam.optim.EndToEndSGD` of depth ``N`` on the ``nn.Linear`` weights
  (plain SGD on the rest), exact (``precondition_every=1`` where that argument exists): the
  end-to-end dynamics of ``over-sgd-N`` with no extra parameters.  Built as a practitioner
  should use it at small batch: ``opt.capture(model)`` right after construction, so each weight
  gradient is kept as the low-rank product ``Delta^T X`` and preconditioned at cost
  ``~N B (r (m + n) + m n)`` instead of ``~3 m^2 n`` (the same update to rounding; the
  optimizer checks it against ``.grad`` and falls back to the dense gradient when the check
  fails, e.g. when the objective adds a penalty on the weight, as the ConvNet's L2 term does, or
  when the batch is too large for the low-rank route to pay).
* ``e2e-N-amortized``: the same with ``precondition_every=k`` (the singular basis refreshed every
  ``k`` steps), where the installed :class:`EndToEndSGD` accepts that argument.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from overparam.nn import overparameterize
from overparam.optim import EndToEndSGD

OPTIMIZERS = (
    "sgd",
    "adamw",
    "muon",
    "over-sgd-2",
    "over-sgd-3",
    "e2e-2",
    "e2e-3",
    "e2e-2-amortized",
    "e2e-3-amortized",
)
PRACTITIONER = ("adamw", "muon")
_NAME = re.compile(r"^(sgd|adamw|muon)$|^(over-sgd|e2e)-(\d+)(-amortized)?$")


@dataclass(frozen=True)
class Spec:
    """A parsed optimizer name: its kind, depth and whether the preconditioner is amortized."""

    name: str
    kind: str
    depth: int = 1
    amortized: bool = False

    @property
    def family(self) -> str:
        """``"adaptive"`` (AdamW, Muon: their own learning-rate grid) or ``"sgd"``."""
        return "adaptive" if self.kind in PRACTITIONER else "sgd"


def parse(name: str) -> Spec:
    """The :class:`Spec` of ``name`` (one of :data:`OPTIMIZERS`, any depth >= 2)."""
    match = _NAME.match(name) if isinstance(name, str) else None
    if match is None or (match.group(3) is not None and int(match.group(3)) < 2):
        raise ValueError(
            f"`optimizers` entries must look like {', '.join(OPTIMIZERS)} (depth >= 2), got {name!r}"
        )
    if match.group(1):
        return Spec(name, match.group(1))
    if match.group(2) == "over-sgd" and match.group(4):
        raise ValueError(f"`optimizers`: only e2e-N can be amortized, got {name!r}")
    return Spec(name, match.group(2), int(match.group(3)), bool(match.group(4)))


def amortization_available() -> bool:
    """Whether the installed :class:`EndToEndSGD` takes ``precondition_every``."""
    return "precondition_every" in inspect.signature(EndToEndSGD).parameters


def unavailable(spec: Spec) -> str | None:
    """Why ``spec`` cannot run with the installed packages, or None."""
    if spec.amortized and not amortization_available():
        return "not available: the installed EndToEndSGD has no `precondition_every` argument"
    return None


class Combined:
    """Two optimizers stepped together (Muon on the hidden matrices, AdamW on the rest)."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = list(optimizers)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()


def linear_weights(model: nn.Module) -> list[torch.Tensor]:
    """The ``weight`` of every ``nn.Linear`` of ``model``, in module order."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]


def _split(model: nn.Module, chosen: list[torch.Tensor]) -> tuple[list[Any], list[Any]]:
    ids = {id(p) for p in chosen}
    return chosen, [p for p in model.parameters() if id(p) not in ids]


def build(
    spec: Spec, model: nn.Module, lr: float, momentum: float, init: str, every: int
) -> tuple[nn.Module, Any]:
    """``(model, optimizer)`` for ``spec`` with step size ``lr`` (the model may be modified).

    Args:
        spec: the optimizer.
        model: a fresh model; ``over-sgd-N`` overparameterizes its ``nn.Linear`` layers in place.
        lr: the learning rate.
        momentum: heavy-ball momentum of the SGD family.
        init: :func:`overparameterize`'s ``init`` for ``over-sgd-N``.
        every: ``precondition_every`` of the amortized ``e2e-N``.
    """
    reason = unavailable(spec)
    if reason is not None:
        raise ValueError(f"optimizer {spec.name!r} is {reason}")
    if spec.kind == "adamw":
        return model, torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    if spec.kind == "muon":
        hidden, rest = _split(model, linear_weights(model)[:-1])  # the last Linear is the head
        adamw = torch.optim.AdamW(rest, lr=lr, weight_decay=0.0)
        if not hidden:
            return model, adamw
        muon = torch.optim.Muon(hidden, lr=lr, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")
        return model, Combined(muon, adamw)
    if spec.kind == "over-sgd":
        overparameterize(model, depth=spec.depth, init=init, modules=(nn.Linear,))
    if spec.kind == "e2e":
        weights, rest = _split(model, linear_weights(model))
        groups = [{"params": weights, "depth": spec.depth}, {"params": rest, "depth": 1}]
        extra: dict[str, Any] = {}
        if amortization_available():  # the exact rule refreshes the basis at every step
            extra["precondition_every"] = every if spec.amortized else 1
        opt = EndToEndSGD(groups, lr=lr, depth=spec.depth, momentum=momentum, **extra)
        opt.capture(model)  # low-rank weight gradients (hooks live as long as the model)
        return model, opt
    return model, torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)

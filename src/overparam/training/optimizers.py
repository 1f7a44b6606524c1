"""Batched first-order optimizers as pure tensor updates (one learning rate per configuration).

Every parameter has a leading configuration dimension ``K``; the learning rate has shape
``(K, 1, 1)`` so that ``K`` runs with different rates advance in one tensor program.  The
formulas follow ``torch.optim`` (defaults included):

* ``gd``:       ``W <- W - lr g``
* ``adagrad``:  ``s <- s + g^2``;  ``W <- W - lr g / (sqrt(s) + eps)``  (Duchi et al. 2011)
* ``adadelta``: ``s <- rho s + (1-rho) g^2``;  ``u = sqrt(d + eps) / sqrt(s + eps) g``;
  ``d <- rho d + (1-rho) u^2``;  ``W <- W - lr u``  (Zeiler 2012)
* ``adam``:     ``m <- b1 m + (1-b1) g``;  ``v <- b2 v + (1-b2) g^2``;
  ``W <- W - lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``  (Kingma & Ba 2015)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

OPTIMIZERS = ("gd", "adagrad", "adadelta", "adam")
DEFAULTS: dict[str, dict[str, float]] = {
    "gd": {},
    "adagrad": {"eps": 1e-10},
    "adadelta": {"rho": 0.9, "eps": 1e-6},
    "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
}


def check_optimizer(name: str, hyper: Mapping[str, float] | None = None) -> dict[str, float]:
    """Validate an optimizer name and its hyperparameters; return the full hyperparameter dict."""
    if name not in OPTIMIZERS:
        raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}, got {name!r}")
    out = dict(DEFAULTS[name])
    for key, value in (hyper or {}).items():
        if key not in out:
            raise ValueError(f"`hyper` keys for {name!r} must be in {sorted(out)}, got {key!r}")
        out[key] = float(value)
    return out


def init_state(name: str, params: list[Tensor]) -> dict[str, Any]:
    """Zero-initialized optimizer state for ``params`` (a list of ``(K, ...)`` tensors)."""
    state: dict[str, Any] = {"t": 0}
    zeros = [torch.zeros_like(p) for p in params]
    if name == "adagrad":
        state["sum"] = zeros
    elif name == "adadelta":
        state["sq"], state["delta"] = zeros, [torch.zeros_like(p) for p in params]
    elif name == "adam":
        state["m"], state["v"] = zeros, [torch.zeros_like(p) for p in params]
    return state


def apply_update(
    name: str,
    params: list[Tensor],
    grads: list[Tensor],
    state: dict[str, Any],
    lrs: list[Tensor],
    hyper: Mapping[str, float],
) -> None:
    """One in-place step of optimizer ``name``; ``lrs[j]`` (shape ``(K, 1, 1)``) scales layer ``j``.

    A zero entry of ``lrs[j]`` freezes layer ``j`` of that configuration (used to pad shallower
    networks with identity layers).
    """
    state["t"] += 1
    if name == "gd":
        for W, g, lr in zip(params, grads, lrs, strict=True):
            W.sub_(lr * g)
    elif name == "adagrad":
        for W, g, lr, s in zip(params, grads, lrs, state["sum"], strict=True):
            s.addcmul_(g, g)
            W.sub_(lr * g / (s.sqrt() + hyper["eps"]))
    elif name == "adadelta":
        rho, eps = hyper["rho"], hyper["eps"]
        for W, g, lr, s, d in zip(params, grads, lrs, state["sq"], state["delta"], strict=True):
            s.mul_(rho).addcmul_(g, g, value=1.0 - rho)
            u = (d + eps).sqrt() / (s + eps).sqrt() * g
            d.mul_(rho).addcmul_(u, u, value=1.0 - rho)
            W.sub_(lr * u)
    elif name == "adam":
        b1, b2, eps, t = hyper["beta1"], hyper["beta2"], hyper["eps"], state["t"]
        c1, c2 = 1.0 - b1**t, 1.0 - b2**t
        for W, g, lr, m, v in zip(params, grads, lrs, state["m"], state["v"], strict=True):
            m.mul_(b1).add_(g, alpha=1.0 - b1)
            v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            W.sub_(lr * (m / c1) / ((v / c2).sqrt() + eps))
    else:  # pragma: no cover - names are validated by check_optimizer
        raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}, got {name!r}")


def select_state(state: dict[str, Any], keep: Tensor) -> dict[str, Any]:
    """The state restricted to the configurations ``keep`` (an index tensor)."""
    out: dict[str, Any] = {"t": state["t"]}
    for key, value in state.items():
        if key != "t":
            out[key] = [v.index_select(0, keep) for v in value]
    return out

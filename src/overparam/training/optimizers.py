"""Batched first-order optimizers as pure tensor updates (one learning rate per configuration).

Every parameter has a leading configuration dimension ``K``; the learning rate has shape
``(K, 1, 1)`` so that ``K`` runs with different rates advance in one tensor program.  The
formulas follow ``torch.optim`` (defaults included):

* ``gd``:       ``W <- W - lr g``
* ``adagrad``:  ``s_0 = initial_accumulator``; ``s <- s + g^2``;
  ``W <- W - lr g / (sqrt(s) + eps)``  (Duchi et al. 2011)
* ``adadelta``: ``s <- rho s + (1-rho) g^2``;  ``u = sqrt(d + eps) / sqrt(s + eps) g``;
  ``d <- rho d + (1-rho) u^2``;  ``W <- W - lr u``  (Zeiler 2012)
* ``adam``:     ``m <- b1 m + (1-b1) g``;  ``v <- b2 v + (1-b2) g^2``;
  ``W <- W - lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``  (Kingma & Ba 2015); with
  ``epsilon_hat = 1``: ``W <- W - lr sqrt(1-b2^t) / (1-b1^t) m / (sqrt(v) + eps)``, the
  "epsilon hat" form of Kingma & Ba's Section 2 that TensorFlow 1 implements

``TF1_DEFAULTS`` holds TensorFlow 1's defaults (``tf.train.AdagradOptimizer``: initial
accumulator 0.1, no epsilon; ``AdadeltaOptimizer``: rho 0.95, epsilon 1e-8; ``AdamOptimizer``:
beta1 0.9, beta2 0.999, epsilon 1e-8 in the epsilon-hat form), the framework of Arora et al.
(2018); ``DEFAULTS`` holds torch's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

OPTIMIZERS = ("gd", "adagrad", "adadelta", "adam")
DEFAULTS: dict[str, dict[str, float]] = {
    "gd": {},
    "adagrad": {"eps": 1e-10, "initial_accumulator": 0.0},
    "adadelta": {"rho": 0.9, "eps": 1e-6},
    "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "epsilon_hat": 0.0},
}
TF1_DEFAULTS: dict[str, dict[str, float]] = {
    "gd": {},
    "adagrad": {"eps": 0.0, "initial_accumulator": 0.1},
    "adadelta": {"rho": 0.95, "eps": 1e-8},
    "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "epsilon_hat": 1.0},
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
    bad = [k for k, v in out.items() if not math.isfinite(v) or v < 0]
    if bad:
        raise ValueError(f"`hyper` values for {name!r} must be finite and >= 0, got {out}")
    if name == "adagrad" and out["eps"] == 0 and out["initial_accumulator"] == 0:
        raise ValueError("`hyper` for 'adagrad' needs eps > 0 or initial_accumulator > 0, got 0, 0")
    if name == "adam" and out["epsilon_hat"] not in (0.0, 1.0):
        raise ValueError(f"`hyper` epsilon_hat for 'adam' must be 0 or 1, got {out['epsilon_hat']}")
    return out


def init_state(
    name: str, params: list[Tensor], hyper: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """Optimizer state for ``params`` (a list of ``(K, ...)`` tensors): zeros, except AdaGrad's
    accumulator, which starts at ``hyper["initial_accumulator"]`` (0 by default)."""
    state: dict[str, Any] = {"t": 0}
    zeros = [torch.zeros_like(p) for p in params]
    if name == "adagrad":
        start = float((hyper or {}).get("initial_accumulator", 0.0))
        state["sum"] = [z.fill_(start) for z in zeros]
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
        hat = hyper.get("epsilon_hat", 0.0) == 1.0
        for W, g, lr, m, v in zip(params, grads, lrs, state["m"], state["v"], strict=True):
            m.mul_(b1).add_(g, alpha=1.0 - b1)
            v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            if hat:
                W.sub_(lr * (math.sqrt(c2) / c1) * m / (v.sqrt() + eps))
            else:
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


STATE_KEYS = {"gd": (), "adagrad": ("sum",), "adadelta": ("sq", "delta"), "adam": ("m", "v")}
Setting = tuple[str, dict[str, float]]


def check_settings(
    optimizer: str | Sequence[str],
    hyper: Mapping[str, float] | Sequence[Mapping[str, float] | None] | None,
    k: int,
) -> tuple[list[Setting], list[int]]:
    """Per-configuration optimizer settings for ``k`` configurations.

    ``optimizer`` is one name or ``k`` names; ``hyper`` one mapping (or None) or ``k`` of them.
    Returns the distinct ``(name, full hyperparameters)`` settings and each configuration's index
    into them.
    """
    names = [optimizer] * k if isinstance(optimizer, str) else list(optimizer)
    hypers = list(hyper) if isinstance(hyper, Sequence) else [hyper] * k
    if len(names) != k or len(hypers) != k:
        raise ValueError(
            f"`optimizer` and `hyper` must be one value or K = {k} values, got {len(names)} "
            f"and {len(hypers)}"
        )
    settings: list[Setting] = []
    tags = []
    for name, hp in zip(names, hypers, strict=True):
        setting = (name, check_optimizer(name, hp))
        if setting not in settings:
            settings.append(setting)
        tags.append(settings.index(setting))
    return settings, tags


def blocks(tags: Sequence[int]) -> list[tuple[int, int, int]]:
    """Contiguous runs ``(start, stop, tag)`` of equal tags."""
    out: list[tuple[int, int, int]] = []
    for i, tag in enumerate(tags):
        if out and out[-1][2] == tag:
            out[-1] = (out[-1][0], i + 1, tag)
        else:
            out.append((i, i + 1, tag))
    return out


def init_states(
    settings: list[Setting], tags: Sequence[int], params: list[Tensor]
) -> dict[str, Any]:
    """The state of every setting over all ``K`` rows (each row uses its setting's entries)."""
    state: dict[str, Any] = {"t": 0}
    for name, _ in settings:
        for key, value in init_state(name, params).items():
            if key != "t" and key not in state:
                state[key] = value
    for start, stop, tag in blocks(tags):
        name, hp = settings[tag]
        if name == "adagrad":
            for s in state["sum"]:
                s[start:stop] = hp["initial_accumulator"]
    return state


def apply_settings(
    settings: list[Setting],
    runs: list[tuple[int, int, int]],
    params: list[Tensor],
    grads: list[Tensor],
    state: dict[str, Any],
    lrs: list[Tensor],
) -> None:
    """One in-place step where the rows ``start:stop`` of each run use their own setting."""
    for start, stop, tag in runs:
        name, hp = settings[tag]
        part = {key: [v[start:stop] for v in state[key]] for key in STATE_KEYS[name]}
        part["t"] = state["t"]
        apply_update(name, [W[start:stop] for W in params], [g[start:stop] for g in grads], part,
                     [lr[start:stop] for lr in lrs], hp)  # fmt: skip
    state["t"] += 1

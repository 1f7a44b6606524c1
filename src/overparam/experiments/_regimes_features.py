"""Run, judge and plot of ``relu-features`` (S7): learned first-layer subspace and feature transfer.

See :mod:`overparam.experiments.regimes` for the presets and :mod:`overparam.regimes._features`
for the math.  Biases are carried as a constant last input coordinate (``x -> [x, 1]``), so the
first layer is ``[W, b]`` and ``relu(W x + b)`` is :func:`overparam.regimes.two_layer`'s hidden layer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from overparam.engine import Config, Metrics, RunContext, Verdict, log_steps
from overparam.experiments._regimes_lazy import figure
from overparam.regimes import (
    feature_angles,
    hermite_moments,
    hermite_polynomial,
    planted_subspace,
    readout_error,
    two_layer,
    two_layer_gd,
)

F64 = torch.float64
DEG = 180.0 / math.pi


def _augment(X: Tensor) -> Tensor:
    return torch.cat([X, torch.ones(*X.shape[:-1], 1, dtype=X.dtype)], -1)


def _sample(U: Tensor, N: int, terms: Any, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """``x ~ N(0, I_d)`` (S, N, d) and ``y = g(U x)`` normalized to unit variance."""
    X = torch.randn(U.shape[0], N, U.shape[-1], generator=g, dtype=F64)
    _, var = hermite_moments(terms)
    return X, hermite_polynomial(X @ U.mT, terms) / math.sqrt(var)


def _random_layer(S: int, m: int, d: int, g: torch.Generator, U: Tensor | None = None) -> Tensor:
    """``[W, b]`` with unit rows ``w_j`` (uniform on the sphere, or on the sphere of ``row(U)``)
    and ``b_j ~ N(0, 1)``."""
    if U is None:
        W = torch.randn(S, m, d, generator=g, dtype=F64)
    else:
        W = torch.randn(S, m, U.shape[-2], generator=g, dtype=F64) @ U
    W = W / torch.linalg.vector_norm(W, dim=-1, keepdim=True)
    return torch.cat([W, torch.randn(S, m, 1, generator=g, dtype=F64)], -1)


def _train(cfg: Config, U: Tensor, g: torch.Generator) -> dict[str, Any]:
    """GD on both layers from ``alpha``-small init on ``y = g_S(U x)``; angles along training."""
    S, d, m = cfg["seeds"], cfg["d"], cfg["width"]
    X, y = _sample(U, cfg["n"], cfg["g_source"], g)
    W0 = cfg["alpha"] * torch.randn(S, m, d + 1, generator=g, dtype=F64) / math.sqrt(d)
    a0 = cfg["alpha"] * torch.randn(S, m, generator=g, dtype=F64)
    record = log_steps(cfg["steps"], cfg["points"])
    out = two_layer_gd(W0, a0, _augment(X), y, cfg["lr"], cfg["steps"], record)
    angles = feature_angles(out["W"][..., :d], U) * DEG  # (R, S, r)
    Xt, yt = _sample(U, cfg["n_test"], cfg["g_source"], g)
    pred = two_layer(out["W"][-1], out["a"][-1], _augment(Xt))
    return {
        "steps": record,
        "loss": out["loss"].mean(-1),
        "angles_curve": angles.amax(-1).mean(-1),
        "angles": angles[-1],
        "init_angles": angles[0],
        "source_error": ((pred - yt).pow(2).mean(-1) / yt.var(-1)),
        "layer": out["W"][-1],
    }


def run_features(cfg: Config, ctx: RunContext) -> Metrics:
    """Train on g_S, then refit only the last layer on g_T with N samples, N in ``transfer_sizes``,
    for the learned first layer, a random one (random-features model) and one with random
    directions inside ``row(U)`` (the oracle the theory aims at), all of width ``m``."""
    g = torch.Generator().manual_seed(int(cfg["seed"]))
    S, d, m = cfg["seeds"], cfg["d"], cfg["width"]
    U = torch.stack([planted_subspace(d, cfg["r"], g) for _ in range(S)])
    ctx.log(f"training width {m} on n = {cfg['n']} samples for {cfg['steps']} steps")
    trained = _train(cfg, U, g)
    layers = {
        "learned": trained.pop("layer"),
        "random": _random_layer(S, m, d, g),
        "oracle": _random_layer(S, m, d, g, U),
    }
    rf_angles = feature_angles(layers["random"][..., :d], U) * DEG
    Xt, yt = _sample(U, cfg["n_test"], cfg["g_target"], g)
    errors: dict[str, list[float]] = {k: [] for k in layers}
    for N in ctx.progress(cfg["transfer_sizes"], desc="transfer"):
        Xn, yn = _sample(U, N, cfg["g_target"], g)
        for name, layer in layers.items():
            err = readout_error(layer, _augment(Xn), yn, _augment(Xt), yt, cfg["ridge"])
            errors[name].append(float(err.mean()))
    return {**trained, "random_angles": rf_angles, "transfer": errors}


def _samples_needed(sizes: list[int], errors: list[float], tol: float) -> int | None:
    """Smallest ``N`` from which every larger tested size stays at or below ``tol``."""
    need = None
    for N, e in zip(reversed(sizes), reversed(errors), strict=True):
        if e > tol:
            break
        need = N
    return need


def judge_features(cfg: Config, m: Metrics) -> list[Verdict]:
    sizes, tr = cfg["transfer_sizes"], m["transfer"]
    worst = max(max(a) for a in m["angles"])
    rf_best = min(min(a) for a in m["random_angles"])
    need = {k: _samples_needed(sizes, tr[k], cfg["error_tol"]) for k in tr}
    beats = all(le < re for le, re in zip(tr["learned"], tr["random"], strict=True))
    learned, rand = need["learned"], need["random"]
    ok = worst <= cfg["angle_tol"] and beats and learned is not None
    ok = ok and learned is not None and (rand is None or rand >= 4 * learned)
    curve = ", ".join(
        f"N={N}: {le:.3f} vs {re:.3f}"
        for N, le, re in zip(sizes, tr["learned"], tr["random"], strict=True)
    )
    note = (
        f"d={cfg['d']}, r={cfg['r']}, width {cfg['width']}, n={cfg['n']}, init scale {cfg['alpha']}, "
        f"{cfg['steps']} GD steps (source test error {float(torch.as_tensor(m['source_error']).mean()):.3f}). "
        f"Largest principal angle between the learned top-{cfg['r']} right singular subspace and "
        f"row(U): {worst:.2f} deg (at init {max(max(a) for a in m['init_angles']):.1f}; random "
        f"features' smallest angle {rf_best:.1f}). Transfer to g_T, last layer refit (ridge "
        f"{cfg['ridge']:g}), relative test error learned vs random features: {curve}; samples from which "
        f"all errors stay below {cfg['error_tol']}: learned {need['learned']}, random {need['random']}, oracle "
        f"directions in row(U) {need['oracle']} (None = not within N <= {max(sizes)}). "
        "Bias-free v^T relu(W x) of the slide cannot fit non-homogeneous polynomials, so a "
        "trained bias (constant input) is added."
    )
    measured = {"max_angle_deg": worst, "random_min_angle_deg": rf_best, "samples_needed": need}
    return [Verdict("S7", measured, ok, note)]


def plot_features(cfg: Config, m: Metrics) -> dict[str, Any]:
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, ax = figure(1, 3)
    keep = [i for i, s in enumerate(m["steps"]) if s > 0]  # log step axis: from step 1
    steps = [m["steps"][i] for i in keep]
    ax[0, 0].semilogx(steps, [m["loss"][i] for i in keep])
    ax[0, 0].set(
        xlabel="GD step", ylabel="source-task loss (MSE)", yscale="log", title="training loss"
    )
    ax[0, 1].semilogx(steps, [m["angles_curve"][i] for i in keep], label="learned first layer")
    ax[0, 1].axhline(
        cfg["angle_tol"], color="k", ls=":", lw=0.8, label=f"tolerance {cfg['angle_tol']:g} deg"
    )
    ax[0, 1].set(
        xlabel="GD step",
        ylabel="largest principal angle to row(U) (deg)",
        title="features align with row(U)",
    )
    ax[0, 1].legend(fontsize=7)
    for name, errs in m["transfer"].items():
        ax[0, 2].loglog(cfg["transfer_sizes"], errs, "o-", label=f"{name} features")
    ax[0, 2].axhline(
        cfg["error_tol"], color="k", ls=":", lw=0.8, label=f"tolerance {cfg['error_tol']:g}"
    )
    ax[0, 2].set_xticks(cfg["transfer_sizes"])
    ax[0, 2].xaxis.set_major_formatter(ScalarFormatter())
    ax[0, 2].xaxis.set_minor_formatter(NullFormatter())
    ax[0, 2].set(
        xlabel="target samples N",
        ylabel="relative test error (last layer refit)",
        title="transfer to a new g_T",
    )
    ax[0, 2].legend(fontsize=7)
    fig.suptitle("S7: a ReLU net from small init learns row(U) of y = g(U x)", fontsize=10)
    return {"relu_features": fig}

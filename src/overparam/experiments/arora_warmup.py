"""The scalar warm-up of Arora, Cohen & Hazan (2018, talk, seed 001): ``w = w1 * omega2`` (A7).

GD on ``(w1, omega2)`` for ``L(w1 omega2)`` with ``g_t = grad L(w_t)``:
``w1 <- w1 - eta omega2 g``, ``omega2 <- omega2 - eta <w1, g>``. Multiplying out the step and
unrolling ``w1(t) = w1(0) - eta sum_{tau<t} omega2(tau) g_tau`` gives, *exactly*,

    w(t+1) = w(t) - rho_t g_t - sum_{tau<t} mu_{t,tau} g_tau - eta <w1(t), g_t> w1(0),
    rho_t = eta omega2(t)^2 - eta^2 <w1(t), g_t> omega2(t),
    mu_{t,tau} = -eta^2 <w1(t), g_t> omega2(tau),

an adaptive learning rate ``rho_t`` plus momentum on all past gradients; the last term is the
initialization's, negligible from near-zero init (the talk's "for suitable rho, mu"). We run GD
on the factors of l4 Ethanol regression, check the identity at every step to rounding, and
measure how much of each step the past gradients carry and how far ``rho_t`` moves.

Command: ``overparam run scalar-warmup``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from overparam.core import lp_gradient, lp_loss_of_matrix
from overparam.engine import Claim, Config, Experiment, Metrics, RunContext, Verdict, register
from overparam.engine.steps import log_steps
from overparam.experiments.arora_ethanol import SUBSET_NOTE, ethanol


def warmup_decomposition(
    X: Tensor, Y: Tensor, w1: Tensor, omega2: float, lr: float, steps: int, p: float
) -> dict[str, Tensor]:
    """GD on ``w = w1 * omega2`` and the exact adaptive-rate-plus-momentum form of each step.

    Args: ``X (b, d)``, ``Y (b, 1)``, initial ``w1 (d,)`` and scalar ``omega2``, step ``lr``.
    Returns per step ``t`` (length ``steps``): ``loss`` (before the step), ``rho`` (adaptive
    rate), ``residual`` ``||w(t+1) - form|| / ||w(t+1) - w(t)||``, ``momentum_share``
    ``||sum_tau mu_{t,tau} g_tau|| / ||w(t+1) - w(t)||`` and ``init_share`` (the same for the
    ``w1(0)`` term).
    """
    if w1.dim() != 1 or w1.shape[0] != X.shape[1]:
        raise ValueError(f"`w1` must have shape ({X.shape[1]},), got {tuple(w1.shape)}")
    if not lr > 0 or steps < 1:
        raise ValueError(f"`lr` must be > 0 and `steps` >= 1, got lr={lr}, steps={steps}")
    w1_0, om = w1.clone(), torch.tensor(float(omega2), dtype=X.dtype)
    past = torch.zeros_like(w1)  # sum_{tau < t} omega2(tau) g_tau
    out: dict[str, list[Tensor]] = {k: [] for k in ("loss", "rho", "residual", "momentum", "init")}
    for t in range(steps):
        w = w1 * om
        if not bool(torch.isfinite(w).all()) or float(w.norm()) > 1e6:
            raise ValueError(f"GD on w1 * omega2 diverged at step {t}: lower `lr` (got {lr})")
        g = lp_gradient(w[None], X, Y, p)[0]
        inner = w1 @ g
        rho = lr * om**2 - lr**2 * inner * om
        momentum = -(lr**2) * inner * past  # sum_{tau<t} mu_{t,tau} g_tau
        init = lr * inner * w1_0
        w1, om, past = w1 - lr * om * g, om - lr * inner, past + om * g
        step = w1 * om - w
        form = w - rho * g - momentum - init
        scale = step.norm()
        out["loss"].append(lp_loss_of_matrix(w[None], X, Y, p))
        out["rho"].append(rho)
        out["residual"].append((w1 * om - form).norm() / scale)
        out["momentum"].append(momentum.norm() / scale)
        out["init"].append(init.norm() / scale)
    curves = {k: torch.stack(v) for k, v in out.items()}
    return {
        "loss": curves["loss"],
        "rho": curves["rho"],
        "residual": curves["residual"],
        "momentum_share": curves["momentum"],
        "init_share": curves["init"],
    }


def run_warmup(config: Config, ctx: RunContext) -> Metrics:
    X, Y = ethanol(ctx)
    gen = torch.Generator().manual_seed(config["seed"])
    w1 = config["init_std"] * torch.randn(X.shape[1], generator=gen, dtype=X.dtype)
    omega2 = config["init_std"] * float(torch.randn(1, generator=gen, dtype=X.dtype))
    curves = warmup_decomposition(X, Y, w1, omega2, config["lr"], config["steps"], config["p"])
    keep = log_steps(config["steps"] - 1, config["points"])
    return {
        "steps": keep,
        "curves": {k: v[keep] for k, v in curves.items()},
        "max_residual": curves["residual"].max(),
        "max_momentum_share": curves["momentum_share"].max(),
        "final_momentum_share": curves["momentum_share"][-1],
        "final_init_share": curves["init_share"][-1],
        "rho_over_lr": [curves["rho"][0] / config["lr"], curves["rho"][-1] / config["lr"]],
        "loss": [curves["loss"][0], curves["loss"][-1]],
    }


def judge_warmup(config: Config, m: Metrics) -> list[Verdict]:
    rho0, rho_end = m["rho_over_lr"]
    exact = m["max_residual"] < 1e-9  # float64: a few hundred roundings of O(1) numbers
    adaptive = rho_end > 10 * rho0
    momentum = m["max_momentum_share"] > 0.1
    measured = {
        "max_residual": m["max_residual"],
        "rho_over_lr_first_last": m["rho_over_lr"],
        "max_momentum_share": m["max_momentum_share"],
        "final_momentum_share": m["final_momentum_share"],
        "final_init_share": m["final_init_share"],
    }
    note = (
        f"GD on w1 (128) x omega2 (l{config['p']:g} Ethanol, eta {config['lr']}, "
        f"{config['steps']} steps, init std {config['init_std']}): the exact form "
        f"w(t+1) = w - rho_t g_t - sum mu g_tau - eta <w1, g> w1(0) holds to "
        f"{m['max_residual']:.1e} (relative to the step); the adaptive rate rho_t / eta goes from "
        f"{rho0:.2e} to {rho_end:.2e}; past gradients carry up to "
        f"{m['max_momentum_share']:.2f} of a step ({m['final_momentum_share']:.2f} at the end); the "
        f"init term dominates the first steps (the escape from near 0) and falls to "
        f"{m['final_init_share']:.2f} of a step at the end. "
        f"Judged: identity < 1e-9, rho grows > 10x, momentum share > 0.1. {SUBSET_NOTE}"
    )
    return [Verdict("A7", measured, bool(exact and adaptive and momentum), note)]


def plot_warmup(config: Config, m: Metrics) -> dict[str, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6))
    steps = [s + 1 for s in m["steps"]]
    for i, (key, label) in enumerate(
        [("rho", "adaptive rate rho_t / eta"), ("momentum_share", "momentum share of the step")]
    ):
        ax = fig.add_subplot(1, 3, i + 1)
        values = m["curves"][key]
        values = [v / config["lr"] for v in values] if key == "rho" else values
        ax.loglog(steps, values, label="past gradients" if i else "rho_t / eta")
        hidden = sum(1 for v in values if v is None or not v > 0)
        if hidden:
            label = f"{label}\n({hidden} points <= 0 not drawn on the log axis)"
        if i:
            ax.loglog(steps, m["curves"]["init_share"], label="init term")
        ax.set_xlabel("iteration t + 1")
        ax.set_ylabel(
            "rho_t / eta (dimensionless)" if key == "rho" else "share of |step| (fraction)"
        )
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 3, 3)
    ax.loglog(steps, m["curves"]["loss"])
    ax.set_xlabel("iteration t + 1")
    ax.set_ylabel("loss (l_p loss units)")
    ax.set_title("l_p loss of w = w1 * omega2", fontsize=9)
    fig.suptitle("A7: the scalar warm-up w = w1 * omega2 on Ethanol", fontsize=10)
    fig.tight_layout()
    return {"warmup": fig}


SCALAR_WARMUP = register(
    Experiment(
        name="scalar-warmup",
        version=2,  # Ethanol now has all 2565 samples (batches 7 and 10 reconstructed)
        title="Arora et al. 2018 (talk warm-up): w = w1 * omega2 is GD with adaptive rate + momentum",
        claims=(
            Claim(
                "A7",
                "Overparameterizing w by a vector times a scalar makes GD on w an adaptive "
                "learning rate plus momentum on past gradients.",
                "seed 001, 'Warm-Up (cont')': w(t+1) ~ w(t) - rho_t grad_t - sum mu_{t,tau} grad_tau",
            ),
        ),
        presets={
            "quick": {
                "p": 4.0,
                "lr": 0.002,
                "steps": 2000,
                "init_std": 0.01,
                "seed": 0,
                "points": 60,
            },
            "full": {
                "p": 4.0,
                "lr": 0.002,
                "steps": 20000,
                "init_std": 0.01,
                "seed": 0,
                "points": 120,
            },
        },
        run=run_warmup,
        judge=judge_warmup,
        plot=plot_warmup,
        doc=__doc__ or "",
    )
)

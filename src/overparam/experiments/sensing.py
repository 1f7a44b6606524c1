"""Seed 004 (Soltanolkotabi, "Overparameterized learning beyond the lazy regime"), part I: low-rank
matrix sensing by GD from small random initialization.

Three experiments: ``sensing-alpha`` (final error versus the init scale alpha, fitted log-log slope
next to the theory's ``21/16``, and the implicit-balancing bound along every trajectory),
``sensing-phases`` (spectral / saddle-avoidance / refinement phases, GD versus the power method, and
how the spectral phase scales with the step and with ``r``) and ``sensing-samples`` (success versus
the number of measurements against ``r*^2 (d1 + d2)``).  Operator ``A(M)_i = <A_i, M>/sqrt(n)``,
see :mod:`overparam.sensing`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from overparam.engine import Claim, Config, Experiment, Metrics, RunContext, Verdict, register
from overparam.sensing import (
    GaussianSensing,
    balancing_bound,
    planted_low_rank,
    sensing_gd,
)
from overparam.theory import fit_slope

SRC = "Soltanolkotabi, Erice 2022 slides (seed 004); Xie, Stöger & Soltanolkotabi 2022"
F64 = torch.float64


def small_init(g: torch.Generator, alphas: Tensor, d: int, r: int) -> Tensor:
    """``alpha_b * N(0, 1)`` factors of shape ``(len(alphas), d, r)`` (slide: ``U_0 = alpha U``)."""
    return alphas.reshape(-1, 1, 1) * torch.randn(len(alphas), d, r, generator=g, dtype=F64)


# ---------------------------------------------------------------------------------- sensing-alpha
def run_alpha(cfg: Config, ctx: RunContext) -> Metrics:
    """GD on ``U V^T`` for each alpha (one batch: alphas x seeds), one operator and ground truth."""
    g = torch.Generator().manual_seed(cfg["seed"])
    d1, d2, rs, r, n = cfg["d1"], cfg["d2"], cfg["r_star"], cfg["r"], cfg["n"]
    op = GaussianSensing(n, d1, d2, seed=cfg["seed"])
    X, Y = planted_low_rank(d1, d2, rs, g)
    truth = X @ Y.T
    y = op.apply(truth)
    alphas = torch.tensor(cfg["alphas"], dtype=F64).repeat_interleave(cfg["seeds"])
    ctx.log(f"{op}; {len(alphas)} trajectories of {cfg['steps']} steps")
    out = sensing_gd(
        op,
        y,
        small_init(g, alphas, d1, r),
        small_init(g, alphas, d2, r),
        cfg["mu"],
        cfg["steps"],
        truth=truth,
    )
    err = out["rel_error"]
    shape = (len(cfg["alphas"]), cfg["seeds"])
    bal = balancing_bound(out["imbalance"], out["loss"], cfg["mu"])
    final, best = err[-1].reshape(shape), err.min(0).values.reshape(shape)
    pts = np.unique(np.linspace(0, cfg["steps"], cfg["points"]).astype(int)).tolist()
    return {
        "alphas": cfg["alphas"],
        "final_error": final,
        "min_error": best,
        "final_loss": out["loss"][-1].reshape(shape),
        "slope_final": fit_slope(cfg["alphas"], final.mean(1).tolist()),
        "balancing_frac_holds": float(bal["holds"].double().mean()),
        "balancing_max_ratio": float(bal["max_ratio"].max()),
        "imbalance_0": out["imbalance"][0].reshape(shape),
        "imbalance_max": out["imbalance"].max(0).values.reshape(shape),
        "curves": {
            "steps": pts,
            "rel_error": err[pts, :: cfg["seeds"]].T,
            "imbalance": out["imbalance"][pts, :: cfg["seeds"]].T,
            "bound": bal["bound"][pts, :: cfg["seeds"]].T,
        },
    }


def judge_alpha(cfg: Config, m: Metrics) -> list[Verdict]:
    final = np.asarray(m["final_error"], dtype=float).mean(1)
    slope = m["slope_final"]
    monotone = bool(np.all(np.diff(final) < 0))
    return [
        Verdict(
            "S3",
            {
                "slope": slope,
                "theory": 21 / 16,
                "final_error": final.tolist(),
                "alphas": m["alphas"],
            },
            monotone and slope > 0.5,
            f"relative error at t = {cfg['steps']} (mean over {cfg['seeds']} seeds) shrinks as a "
            f"power of alpha with fitted slope {slope:.2f} over {len(final)} values; 21/16 is an "
            f"upper-bound exponent (with poly(d, r) constants and n >~ r*^2 (d1 + d2)); judged: "
            "error decreasing in alpha with slope > 0.5. d, n here are far below the theory's "
            "regime, and for r > r* the small components keep fitting the null space slowly, so the "
            "error at a fixed horizon is what we report",
        ),
        Verdict(
            "S5",
            {
                "frac_steps_holding": m["balancing_frac_holds"],
                "max_ratio_imbalance_over_bound": m["balancing_max_ratio"],
            },
            m["balancing_frac_holds"] == 1.0,
            "||U_t^T U_t - V_t^T V_t||_F <= ||B_0||_F + 2 mu (L(0) - L(t)) checked at every step of "
            "every trajectory (float64, relative slack 1e-12)",
        ),
    ]


def plot_alpha(cfg: Config, m: Metrics) -> dict[str, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    ax, bx = fig.subplots(1, 2)
    a = np.asarray(m["alphas"], dtype=float)
    e = np.asarray(m["final_error"], dtype=float)
    ax.loglog(a, e.mean(1), "o-", label=f"GD, slope {m['slope_final']:.2f}")
    ax.loglog(a, e.mean(1)[-1] * (a / a[-1]) ** (21 / 16), "k--", label="alpha^(21/16)")
    ax.set_xlabel("alpha")
    ax.set_ylabel("||U V^T - X Y^T||_F / ||X Y^T||_F")
    ax.legend()
    c = m["curves"]
    for i, alpha in enumerate(a):
        bx.semilogy(c["steps"], np.asarray(c["rel_error"][i], dtype=float), label=f"a={alpha:g}")
    bx.set_xlabel("iteration")
    bx.set_ylabel("relative error")
    bx.legend(fontsize=7)
    return {"error_vs_alpha": fig}


register(
    Experiment(
        name="sensing-alpha",
        title="Seed 004: matrix sensing from small init, error vs alpha; implicit balancing",
        claims=(
            Claim(
                "S3",
                "relative error of GD on U V^T from alpha-init scales like alpha^(21/16)",
                SRC + ", slide 'Our result'",
            ),
            Claim(
                "S5",
                "||U_t^T U_t - V_t^T V_t||_F <= ||B_0||_F + 2 mu (L(0) - L(t))",
                SRC + ", slide 'Proof of ... (Lemma)'",
            ),
        ),
        presets={
            "quick": {
                "seed": 0,
                "d1": 20,
                "d2": 20,
                "r_star": 2,
                "r": 20,
                "n": 300,
                "alphas": [1e-2, 1e-3, 1e-4, 1e-5, 1e-6],
                "seeds": 2,
                "mu": 0.5,
                "steps": 1500,
                "points": 100,
            },
            "full": {
                "seed": 0,
                "d1": 100,
                "d2": 100,
                "r_star": 5,
                "r": 100,
                "n": 5000,
                "alphas": [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7],
                "seeds": 2,
                "mu": 0.5,
                "steps": 3000,
                "points": 200,
            },
        },
        run=run_alpha,
        judge=judge_alpha,
        plot=plot_alpha,
        doc="Final relative error vs alpha over 4+ decades (r = d: maximal overparameterization) "
        "and the S5 lemma at every step. Quick ~5 s: `overparam run sensing-alpha --quick`.",
    )
)

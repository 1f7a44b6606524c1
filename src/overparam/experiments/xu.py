"""Xu, Tarmoun, Min, Mallada & Vidal 2023 (seed 002): two-layer linear networks under finite-step GD.

Three experiments: ``xu-figure1`` (bounds versus measured rates on ``X = I_20``, fixed versus
adaptive step, overparameterised versus not), ``xu-init-table`` (iterations to reach excess loss
1e-8 for five initialisations, the source's table) and ``xu-imbalance`` (the imbalance: its drift
under GD and its effect on the rate, eq. 8-12).  Source convention ``W = W1 W2``,
``L = 1/2 ||X W - Y||^2``; losses are excess losses ``L - L*``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from overparam.engine import (
    Claim,
    Config,
    Experiment,
    Metrics,
    RunContext,
    Verdict,
    log_steps,
    register,
)
from overparam.experiments import _xu_imbalance, _xu_table  # noqa: F401  (registration)
from overparam.experiments._xu_common import SRC, curve, first_hit, median
from overparam.theory import (
    InitConstants,
    LeastSquares,
    check_bounds,
    eta_max,
    plain_gd,
    plain_rate,
    two_layer_gd,
)


def _figure1_problem(cfg: Config) -> tuple[LeastSquares, Tensor, Tensor]:
    """``X = I_20``; ``W1 (20, h)``, ``W2 (h, 1)`` with entries ``N(0, w_std^2 / sqrt(h))`` so that
    ``W(0) = W1 W2`` has entries of variance ``w_std^2 = 1/4`` (eq. 35); ``Y = W(0) + 0.01 eps``."""
    g = torch.Generator().manual_seed(cfg["seed"])
    S, d, h = cfg["seeds"], cfg["d"], cfg["hidden"]
    std = cfg["w_std"] / h**0.25
    W1 = std * torch.randn(S, d, h, generator=g, dtype=torch.float64)
    W2 = std * torch.randn(S, h, 1, generator=g, dtype=torch.float64)
    X = torch.eye(d, dtype=torch.float64).expand(S, d, d)
    Y = X @ (W1 @ W2) + cfg["noise"] * torch.randn(S, d, 1, generator=g, dtype=torch.float64)
    return LeastSquares.from_data(X, Y), W1, W2


def run_figure1(cfg: Config, ctx: RunContext) -> Metrics:
    """Fixed ``eta = eta_max`` with every checker, adaptive ``f``/``rho`` steps, and plain GD."""
    prob, W1, W2 = _figure1_problem(cfg)
    c1, c2, T = cfg["c1"], cfg["c2"], cfg["steps"]
    tr = two_layer_gd(prob, W1, W2, 0, 1.0)
    const = InitConstants(
        tr["const_alpha0"],
        tr["const_beta0"],
        tr["const_p1"],
        tr["const_p2"],
        tr["const_L0"],
        prob.K,
        prob.mu,
    )
    e_max = eta_max(const, c1, c2)[0]
    ctx.log(f"eta_max median {float(e_max.median()):.3g}")
    fixed = two_layer_gd(prob, W1, W2, T, e_max, c1, c2)
    checks = check_bounds(fixed, prob, e_max, c1, c2)
    runs = {
        "f": two_layer_gd(prob, W1, W2, T, "f", c1, c2, diagnostics=False),
        "rho": two_layer_gd(prob, W1, W2, T, "rho", c1, c2, diagnostics=False),
    }
    runs["fixed_eta0"] = two_layer_gd(prob, W1, W2, T, runs["f"]["eta"][0], diagnostics=False)
    W0 = W1 @ W2
    plain = {
        "eta_max": plain_gd(prob, W0, T, e_max),
        "one_over_K": plain_gd(prob, W0, T, 1 / prob.K),
    }
    steps = log_steps(T, cfg["points"])
    tol = cfg["tol"]
    L0 = fixed["loss"][0]
    ratio = fixed["loss"][1:] / fixed["loss"][:-1]
    live = fixed["loss"][:-1] > 1e-12 * L0  # rates are meaningful above rounding
    plain_ratio = plain["eta_max"][1:] / plain["eta_max"][:-1]
    pl_live = plain["eta_max"][:-1] > 1e-12 * L0
    return {
        "eta_max": e_max,
        "f0": checks["f0"],
        "L0": L0,
        "alpha0": const.alpha0,
        "beta0": const.beta0,
        "p1": const.p1,
        "p2": const.p2,
        "frac_cond18": float(checks["cond18"].double().mean()),
        "frac_descent": float(checks["descent"].double().mean()),
        "frac_spectral": float(checks["spectral"].double().mean()),
        "frac_linear": float(checks["linear"].double().mean()),
        "max_product_residual": float(fixed["product_residual"].max()),
        "max_measured_over_rho": float((ratio / fixed["rho"])[live].max()),
        "max_measured_over_f0": float((ratio / checks["f0"])[live].max()),
        "max_plain_ratio_over_bound": float(
            (plain_ratio / plain_rate(e_max, prob.K, prob.mu))[pl_live].max()
        ),
        "iters": {
            k: first_hit(v / L0, tol)
            for k, v in {
                "fixed": fixed["loss"],
                "f": runs["f"]["loss"],
                "rho": runs["rho"]["loss"],
                "fixed_eta0": runs["fixed_eta0"]["loss"],
                "plain_eta_max": plain["eta_max"],
                "plain_one_over_K": plain["one_over_K"],
            }.items()
        },
        "final_loss_ratio": {k: v["loss"][-1] / L0 for k, v in {"fixed": fixed, **runs}.items()},
        "eta_f_first_last": [runs["f"]["eta"][0], runs["f"]["eta"][-1]],
        "curves": {
            "steps": steps,
            "fixed": curve(fixed["loss"][:, 0], steps),
            "bound_f0": curve(
                checks["f0"][0] ** torch.arange(T + 1.0, dtype=torch.float64) * L0[0], steps
            ),
            "bound_rho": curve(
                torch.cat([L0[:1], L0[0] * torch.cumprod(fixed["rho"][:, 0], 0)]), steps
            ),
            "adaptive_f": curve(runs["f"]["loss"][:, 0], steps),
            "adaptive_rho": curve(runs["rho"]["loss"][:, 0], steps),
            "plain_eta_max": curve(plain["eta_max"][:, 0], steps),
        },
    }


def judge_figure1(cfg: Config, m: Metrics) -> list[Verdict]:
    it = {k: median(v) for k, v in m["iters"].items()}
    fin = {k: median(v) for k, v in m["final_loss_ratio"].items()}
    eta_f = [float(np.median(np.asarray(v, dtype=float))) for v in m["eta_f_first_last"]]
    return [
        Verdict(
            "X4",
            m["max_product_residual"],
            m["max_product_residual"] < 1e-12,
            "max relative residual of eq. (16) over all steps and seeds (float64)",
        ),
        # X = I makes PL tight (K = mu = 1): the bound holds with equality, up to rounding of the
        # loss ratio (relative 1e-8 allows ~1e7 ulps, still far below any real violation).
        Verdict(
            "X5",
            m["max_plain_ratio_over_bound"],
            m["max_plain_ratio_over_bound"] <= 1 + 1e-8,
            "max over steps of measured L(t+1)/L(t) divided by 1 - 2 eta mu + K mu eta^2 "
            "(equality expected for X = I)",
        ),
        Verdict(
            "X6",
            {
                "frac_descent": m["frac_descent"],
                "frac_cond18": m["frac_cond18"],
                "max_measured_over_rho": m["max_measured_over_rho"],
            },
            m["frac_descent"] == 1.0,
            "descent lemma checked at every step where condition (18) holds (spectral-norm "
            "form); eta = eta_max",
        ),
        Verdict(
            "X7",
            {
                "frac_spectral": m["frac_spectral"],
                "frac_linear": m["frac_linear"],
                "median_eta_max": float(np.median(m["eta_max"])),
                "median_f0": float(np.median(m["f0"])),
            },
            m["frac_spectral"] == 1.0 and m["frac_linear"] == 1.0,
            "alpha0, beta0 = initial spectrum of tau; p1, p2 from the loss level (see "
            "InitConstants); f(eta_max, 0) is close to 1, so the guaranteed rate is slow",
        ),
        Verdict(
            "X8",
            {"median_iters": it, "median_final_loss_ratio": fin, "median_eta_f_first_last": eta_f},
            bool(fin["f"] <= fin["fixed_eta0"] and eta_f[1] > eta_f[0]),
            f"median iterations to reach {cfg['tol']:g} L(0) (null: not within the run) and median "
            "L(T)/L(0). Judged: adaptive argmin f versus the fixed step it starts from (eta_0^*), "
            "and eta_t^* increasing. Here L(0) ~ 1e-3 "
            "already, so a3, a4 are negligible and eta_t^* barely moves (first/last above); "
            "eta_max of eq. (24) can exceed argmin f, so fixed eta_max may beat the f-schedule, "
            "while argmin of the measured rho is several times faster",
        ),
    ]


def plot_figure1(cfg: Config, m: Metrics) -> dict[str, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 4))
    ax = fig.add_subplot()
    c = m["curves"]
    for key, label in [
        ("fixed", "GD, eta = eta_max (measured)"),
        ("bound_f0", "bound f(eta,0)^t"),
        ("bound_rho", "bound prod rho(eta,t)"),
        ("adaptive_f", "adaptive argmin f"),
        ("adaptive_rho", "adaptive argmin rho"),
        ("plain_eta_max", "not overparam., eta_max"),
    ]:
        ax.semilogy(c["steps"], np.maximum(np.asarray(c[key], dtype=float), 1e-300), label=label)
    ax.set_xlabel("GD iteration t")
    ax.set_ylabel("L(t) - L* (squared-loss units)")
    ax.set_title("X6-X8, Figure 1: X = I_20 (seed 0), bounds versus measured", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return {"figure1": fig}


FIGURE1 = register(
    Experiment(
        name="xu-figure1",
        title="Xu et al. 2023, Figure 1: rate bounds vs measured, fixed vs adaptive step (X = I_20)",
        claims=(
            Claim(
                "X4", "W(t+1) = W - eta tau(grad) + eta^2 grad W^T grad exactly", SRC + ", eq. (16)"
            ),
            Claim(
                "X5",
                "plain GD contracts by 1 - 2 eta mu + K mu eta^2 for eta < 2/K",
                SRC + ", eq. (15)",
            ),
            Claim(
                "X6",
                "L(t+1) <= rho(eta, t) L(t) whenever condition (18) holds",
                SRC + ", eq. (18)-(20)",
            ),
            Claim(
                "X7",
                "for eta <= eta_max: uniform spectral bounds and L(t) <= f(eta,0)^t L(0)",
                SRC + ", eq. (24)-(28)",
            ),
            Claim(
                "X8",
                "adaptive eta_t = argmin f(eta, t) improves the rate as L -> 0",
                SRC + ", eq. (29)-(33)",
            ),
        ),
        presets={
            "quick": {
                "seed": 0,
                "seeds": 8,
                "d": 20,
                "hidden": 20,
                "w_std": 0.5,
                "noise": 0.01,
                "c1": 0.5,
                "c2": 2.0,
                "steps": 2000,
                "tol": 1e-10,
                "points": 150,
            },
            "full": {
                "seed": 0,
                "seeds": 50,
                "d": 20,
                "hidden": 20,
                "w_std": 0.5,
                "noise": 0.01,
                "c1": 0.5,
                "c2": 2.0,
                "steps": 10000,
                "tol": 1e-10,
                "points": 300,
            },
        },
        run=run_figure1,
        judge=judge_figure1,
        plot=plot_figure1,
        version=2,
        doc="Reproduces the setting of Figure 1 (eq. 35): X = I_20, W(0) 20x1 with N(0,1/4) entries, "
        "Y = X W(0) + 0.01 eps. Command: overparam run xu-figure1 --quick. Runtime: quick ~10 s.",
    )
)

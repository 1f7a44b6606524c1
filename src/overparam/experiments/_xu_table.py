"""xu-init-table: iterations to excess loss 1e-8 by initialisation (Xu et al. 2023, eq. 36)."""

from __future__ import annotations

import math
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
    register,
)
from overparam.experiments._xu_common import first_hit, single_thread
from overparam.theory import (
    InitConstants,
    LeastSquares,
    eta_max,
    init_layer,
    measured_quantities,
    plain_gd,
    two_layer_gd,
)

SOURCE_TABLE = {
    "normal": (18.92, 14.0),
    "ntk": (12.7, 9.08),
    "xavier": (14.74, 12.0),
    "he": (13.8, 10.96),
    "uniform": (17.0, 12.96),
}
OVER_RULES = ("tau0", "tau0_opt", "curvature", "rho", "f", "eta_max")
PLAIN_RULES = ("one_over_K", "opt")


def _over_eta(
    rule: str, q: dict[str, Tensor], prob: LeastSquares, const: InitConstants, c1: float, c2: float
) -> Tensor | str:
    """Step rule of the overparameterised model (see ``INIT_TABLE.doc``)."""
    if rule == "tau0":
        return 1 / (prob.K * q["lam_max"])
    if rule == "tau0_opt":
        return 2 / (prob.K * q["lam_max"] + prob.mu * q["lam_min"])
    if rule == "eta_max":
        return eta_max(const, c1, c2)[0]
    return rule


@single_thread
def run_init_table(cfg: Config, ctx: RunContext) -> Metrics:
    """Iterations to reach excess loss ``tol`` per init, step rule and model (batched over seeds)."""
    g = torch.Generator().manual_seed(cfg["seed"])
    S, n, d, m, h = cfg["seeds"], cfg["n"], cfg["d"], cfg["m"], cfg["hidden"]
    f64 = torch.float64
    X = torch.randn(S, n, d, generator=g, dtype=f64)
    W_star = torch.randn(S, d, m, generator=g, dtype=f64)
    prob = LeastSquares.from_data(
        X, X @ W_star + cfg["noise"] * torch.randn(S, n, m, generator=g, dtype=f64)
    )
    out: dict[str, Any] = {"over": {}, "plain": {}, "L0_over": {}, "L0_plain": {}}
    for scheme in ctx.progress(list(SOURCE_TABLE), total=len(SOURCE_TABLE), desc="inits"):
        W = init_layer(scheme, S, d, m, g)
        W1, W2 = init_layer(scheme, S, d, h, g), init_layer(scheme, S, h, m, g)
        q = measured_quantities(prob, W1, W2)
        const = InitConstants.from_init(
            q["lam_min"], q["lam_max"], prob.W_ls, q["loss"], prob.K, prob.mu
        )
        out["L0_over"][scheme], out["L0_plain"][scheme] = q["loss"], prob.loss(W)
        out["over"][scheme] = {}
        for rule in cfg["over_rules"]:
            eta = _over_eta(rule, q, prob, const, cfg["c1"], cfg["c2"])
            steps = cfg["steps"] if rule != "f" else cfg["steps_slow"]
            tr = two_layer_gd(prob, W1, W2, steps, eta, cfg["c1"], cfg["c2"], diagnostics=False)
            out["over"][scheme][rule] = first_hit(tr["loss"], cfg["tol"])
        out["plain"][scheme] = {
            "one_over_K": first_hit(plain_gd(prob, W, cfg["steps"], 1 / prob.K), cfg["tol"]),
            "opt": first_hit(plain_gd(prob, W, cfg["steps"], 2 / (prob.K + prob.mu)), cfg["tol"]),
        }
    return out


def _mean_iters(v: Any) -> float:
    """Mean iterations over seeds; ``nan`` when any seed did not reach the tolerance."""
    a = np.asarray(v, dtype=float)
    return float("nan") if np.isnan(a).any() else float(a.mean())


def table_rows(m: Metrics) -> dict[str, dict[str, Any]]:
    """Per init: the source's (over, plain) pair and our mean iterations for every rule."""
    return {
        s: {
            "source": SOURCE_TABLE[s],
            "over": {r: _mean_iters(v) for r, v in m["over"][s].items()},
            "plain": {r: _mean_iters(v) for r, v in m["plain"][s].items()},
        }
        for s in m["over"]
    }


def _rel_err(ours: float, theirs: float) -> float:
    return abs(ours - theirs) / theirs if math.isfinite(ours) else math.inf


def judge_init_table(cfg: Config, m: Metrics) -> list[Verdict]:
    rows = table_rows(m)
    scores: dict[str, dict[str, float]] = {}
    for ro in cfg["over_rules"]:
        for rp in PLAIN_RULES:
            errs = [
                (_rel_err(r["over"][ro], r["source"][0]), _rel_err(r["plain"][rp], r["source"][1]))
                for r in rows.values()
            ]
            scores[f"{ro}/{rp}"] = {
                "rows_within_20pct": sum(max(e) <= 0.2 for e in errs),
                "over_cells_within_20pct": sum(e[0] <= 0.2 for e in errs),
                "plain_cells_within_20pct": sum(e[1] <= 0.2 for e in errs),
                "mean_rel_err": float(np.mean([e for pair in errs for e in pair])),
            }
    best = min(scores, key=lambda k: (-scores[k]["rows_within_20pct"], scores[k]["mean_rel_err"]))
    best_score = int(scores[best]["rows_within_20pct"])
    ro, rp = best.split("/")
    table = {
        s: {"source": r["source"], "measured": (r["over"][ro], r["plain"][rp])}
        for s, r in rows.items()
    }
    over_slower = all(r["over"][ro] >= r["plain"][rp] for r in rows.values())
    return [
        Verdict(
            "X9",
            {"best_rule": best, "rows_within_20pct": best_score, "table": table, "scores": scores},
            best_score >= 4,
            "best rule pair = most rows with both cells within 20%, then smallest mean relative "
            f"error. Iterations to excess loss {cfg['tol']:g}, mean of {cfg['seeds']} seeds, hidden width "
            f"{cfg['hidden']}. The plain model's count depends on "
            "the init only through log L(0), which is nearly equal for NTK/Xavier/He/uniform, so the "
            "source's spread 9.08-12.96 in that column cannot come from GD with an init-independent "
            f"step; overparameterised slower than plain in every row: {over_slower}. "
            "nan = some seed did not reach the tolerance within the step cap",
        ),
    ]


def plot_init_table(cfg: Config, m: Metrics) -> dict[str, Any]:
    from matplotlib.figure import Figure

    rows = table_rows(m)
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    series = [
        ("source over", [r["source"][0] for r in rows.values()]),
        ("source plain", [r["source"][1] for r in rows.values()]),
    ]
    series += [
        (f"over {k}", [r["over"][k] for r in rows.values()])
        for k in ("curvature", "rho")
        if k in cfg["over_rules"]
    ]
    series += [(f"plain {k}", [r["plain"][k] for r in rows.values()]) for k in PLAIN_RULES]
    width = 0.8 / len(series)
    for i, (label, vals) in enumerate(series):
        ax.bar(x + i * width, np.nan_to_num(np.asarray(vals, dtype=float)), width, label=label)
    ax.set_xticks(x + 0.4, list(rows))
    ax.set_ylabel(f"iterations to {cfg['tol']:g}")
    ax.legend(fontsize=7)
    return {"init_table": fig}


_TABLE_BASE = {
    "seed": 0,
    "n": 1000,
    "d": 20,
    "m": 20,
    "noise": 1e-3,
    "tol": 1e-8,
    "c1": 0.5,
    "c2": 2.0,
}
INIT_TABLE = register(
    Experiment(
        name="xu-init-table",
        title="Xu et al. 2023, table: iterations to loss 1e-8 by initialisation, over-param vs not",
        claims=(
            Claim(
                "X9",
                "iterations to reach 1e-8 (over-param / plain) for five inits",
                {k: list(v) for k, v in SOURCE_TABLE.items()},
            ),
        ),
        presets={
            "quick": {
                **_TABLE_BASE,
                "seeds": 4,
                "hidden": 400,
                "steps": 150,
                "steps_slow": 150,
                "over_rules": ["tau0_opt", "curvature", "rho"],
            },
            "full": {
                **_TABLE_BASE,
                "seeds": 50,
                "hidden": 400,
                "steps": 400,
                "steps_slow": 2000,
                "over_rules": list(OVER_RULES),
            },
        },
        run=run_init_table,
        judge=judge_init_table,
        plot=plot_init_table,
        version=2,
        doc="Setting of eq. (36): X (1000x20) and W* (20x20) N(0,1), Y = X W* + 0.001 eps; losses are "
        "excess losses (L* > 0 with noise). Inits: overparam.theory.inits. Hidden width 400 (not "
        "stated by the source). Rules, overparameterised: tau0 = 1/(K lambda_max(tau_0)), "
        "tau0_opt = 2/(K lambda_max(tau_0) + mu lambda_min(tau_0)), curvature = the same with tau_t "
        "at every step (our rule, not the source's), rho = argmin rho(eta,t), "
        "f = argmin f(eta,t), eta_max = eq. (24); plain: 1/K and 2/(K+mu). "
        "Command: overparam run xu-init-table --quick (about 10 s); --full about 2 min.",
    )
)

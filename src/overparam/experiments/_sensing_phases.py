"""``sensing-phases``: the three phases of small-init GD on ``U U^T`` (S4) and how the spectral
phase scales with the step ``mu`` and the overparameterization ``r`` (S6).

Slides "Role of randomness + overparameterization", "Convergence phases" and "Insights and
predictions" (seed 004): ``U_t ~ (I + mu Z)^t U_0`` with ``Z = A*A(X X^T)``; the spectral phase
needs ``t* ~ (1/mu) ln(2 d / r)`` iterations (the slide writes ``n`` for the dimension; setting
``n = 200, r* = 5, m = 10 n r*`` measurements); more overparameterization does not affect the other
phases.  All values of ``r`` run in one batch: ``U_0`` is ``d x r_max`` with the columns beyond
``r`` set to zero, which GD keeps at zero (the gradient is ``sym(G) U``), so each slice is exactly GD
with ``r`` columns.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from overparam.engine import Config, Metrics, RunContext, Verdict
from overparam.experiments._sensing_common import F64, grid, planted
from overparam.sensing import (
    GaussianSensing,
    detect_phases,
    power_iterates,
    sensing_gd,
    spectral_matrix,
    subspace_sin,
)
from overparam.theory import fit_slope


def padded_init(g: torch.Generator, ranks: list[int], seeds: int, d: int, alpha: float) -> Tensor:
    """``(len(ranks) * seeds, d, max(ranks))``: ``alpha N(0, 1)`` in the first ``r`` columns."""
    U0 = torch.zeros(len(ranks) * seeds, d, max(ranks), dtype=F64)
    for i, r in enumerate(ranks):
        for s in range(seeds):
            U0[i * seeds + s, :, :r] = alpha * torch.randn(d, r, generator=g, dtype=F64)
    return U0


def _one_mu(
    cfg: Config, op: GaussianSensing, y: Tensor, X: Tensor, U0: Tensor, mu: float
) -> dict[str, Any]:
    """GD and the power method at one step ``mu`` for all ``r`` and seeds; phases and angles."""
    rs, steps = cfg["r_star"], math.ceil(cfg["horizon"] / mu)
    Z = spectral_matrix(op, y, symmetric=True)
    QZ = torch.linalg.eigh(Z)[1][:, -rs:]  # top-r* eigenspace of the spectral matrix
    QX = torch.linalg.qr(X)[0]
    rec = grid(steps, cfg["points"])
    out = sensing_gd(op, y, U0, None, mu, steps, truth=X @ X.T, record=rec)
    U, P = out["U_rec"], power_iterates(Z, U0, mu, rec)
    sin_gd, sin_pm = subspace_sin(U, QZ), subspace_sin(P, QZ)
    dev = torch.linalg.matrix_norm(U - P) / torch.linalg.matrix_norm(P)
    signal = torch.linalg.svdvals(QX.T @ U)[..., rs - 1]
    err = out["rel_error"][rec]
    sigma_star = float(torch.linalg.svdvals(X)[rs - 1])
    ph = detect_phases(
        rec, sin_gd, signal, err, sigma_star, cfg["angle_tol"], error_tol=cfg["error_tol"]
    )
    t1 = ph["t_spectral"]
    times = torch.tensor(rec, dtype=F64).unsqueeze(1)
    before = times <= torch.nan_to_num(t1, nan=-1.0).unsqueeze(0)
    at_t1 = (times == t1.unsqueeze(0)).to(F64)
    shape = (len(cfg["ranks"]), cfg["seeds"])
    return {
        "mu": mu,
        "steps": steps,
        **{k: v.reshape(shape) for k, v in ph.items()},
        "dev_at_spectral_end": (dev * at_t1).sum(0).reshape(shape),
        "max_angle_gap_spectral": ((sin_gd - sin_pm).abs() * before).max(0).values.reshape(shape),
        "final_error": err[-1].reshape(shape),
        "curves": {
            "steps": rec,
            "sin_gd": sin_gd[:, :: cfg["seeds"]].T,
            "sin_pm": sin_pm[:, :: cfg["seeds"]].T,
            "sin_x": subspace_sin(U, QX)[:, :: cfg["seeds"]].T,
            "deviation": dev[:, :: cfg["seeds"]].T,
            "rel_error": err[:, :: cfg["seeds"]].T,
        },
    }


def run_phases(cfg: Config, ctx: RunContext) -> Metrics:
    """Symmetric sensing ``y = A(X X^T)``; GD on ``U U^T`` for every (mu, r, seed)."""
    d, rs = cfg["d"], cfg["r_star"]
    m = cfg["m_per_dr"] * d * rs
    op, X, _, y, g = planted(
        m, d, d, rs, cfg["seed"], True, kappa=cfg["kappa"], max_bytes=cfg["max_bytes"]
    )
    ctx.log(f"{op}; ranks {cfg['ranks']}, steps mu {cfg['mus']}")
    U0 = padded_init(g, cfg["ranks"], cfg["seeds"], d, cfg["alpha"])
    per_mu = [_one_mu(cfg, op, y, X, U0, mu) for mu in ctx.progress(cfg["mus"], desc="mu")]
    z = torch.linalg.eigvalsh(spectral_matrix(op, y, symmetric=True)).flip(0)
    return {"m": m, "ranks": cfg["ranks"], "z_eigenvalues": z[: rs + 2], "per_mu": per_mu}


def _phase_table(m: Metrics) -> dict[str, np.ndarray]:
    """Arrays ``(n_mu, n_r)`` (mean over seeds) of the phase ends and ``mu``."""

    def arr(key: str) -> np.ndarray:
        return np.array([np.asarray(p[key], dtype=float).mean(1) for p in m["per_mu"]])

    mus = np.array([p["mu"] for p in m["per_mu"]], dtype=float)[:, None]
    return {"mu": mus, "t1": arr("t_spectral"), "t2": arr("t_saddle"), "t3": arr("t_refine")}


def judge_phases(cfg: Config, m: Metrics) -> list[Verdict]:
    tab = _phase_table(m)
    t1, t2, t3, mu = tab["t1"], tab["t2"], tab["t3"], tab["mu"]
    found = bool(np.all(np.isfinite(t3)))
    ordered = found and bool(np.all((t1 <= t2) & (t2 < t3)))
    dev = max(float(np.max(p["dev_at_spectral_end"])) for p in m["per_mu"])
    gap = max(float(np.max(p["max_angle_gap_spectral"])) for p in m["per_mu"])
    s4 = Verdict(
        "S4",
        {
            "t_spectral": t1,
            "t_saddle": t2,
            "t_refine": t3,
            "mus": mu[:, 0],
            "max_rel_deviation_gd_vs_power_at_spectral_end": dev,
            "max_sin_gap_gd_vs_power_in_spectral_phase": gap,
        },
        ordered and dev <= 0.1 and gap <= 0.05,
        f"phase ends (mean over seeds; rows mu, columns r = {m['ranks']}): spectral = first "
        f"sin(top-r* subspace of U_t, top-r* eigenspace of Z) <= {cfg['angle_tol']}; saddle = "
        f"sigma_r*(Q_X^T U_t) >= 0.5 sigma_r*(X); refinement = error <= {cfg['error_tol']}. "
        f"GD vs (I + mu Z)^t U_0: relative distance {dev:.1e} at the end of the spectral phase, "
        f"largest gap between their angles {gap:.1e}; judged: phases found in order, distance <= "
        "0.1 and angle gap <= 0.05",
    )
    return [s4, _judge_s6(cfg, m, tab)]


def _judge_s6(cfg: Config, m: Metrics, tab: dict[str, np.ndarray]) -> Verdict:
    """S6: ``t_spectral ~ 1/mu``, ``mu t_spectral = a + b ln(2d/r)`` fitted on ``r >= 2 r*`` (the
    overparameterized ranks), and the other phases varying less with ``r`` than the spectral one."""
    t1, t2, t3, mu = tab["t1"], tab["t2"], tab["t3"], tab["mu"]
    rs, d = cfg["r_star"], cfg["d"]
    ranks = np.asarray(m["ranks"], dtype=float)
    mu_slope = float(np.mean([fit_slope(mu[:, 0], t1[:, j]) for j in range(t1.shape[1])]))
    log_ratio = np.log(2 * d / ranks)
    mt1 = (mu * t1).mean(0)
    over = ranks >= 2 * rs if np.count_nonzero(ranks >= 2 * rs) >= 2 else np.ones_like(ranks, bool)
    coef = float(np.polyfit(log_ratio[over], mt1[over], 1)[0])
    coef_all = float(np.polyfit(log_ratio, mt1, 1)[0])
    # sigma_min of the r* x r Gaussian block of U_0 in the signal space ~ (sqrt(r) - sqrt(r* - 1))
    # (Rudelson & Vershynin 2009): a diagnostic predictor ln(d / (sqrt(r) - sqrt(r* - 1))^2)
    smin = np.log(d / (np.sqrt(ranks) - math.sqrt(rs - 1)) ** 2)
    coef_smin = float(np.polyfit(smin, mt1, 1)[0])

    def spread(x: np.ndarray) -> float:  # relative spread over r of a duration (mean over mu)
        v = x.mean(0)
        return float((v.max() - v.min()) / v.mean())

    s_spec, s_saddle, s_ref = spread(mu * t1), spread(mu * (t2 - t1)), spread(mu * (t3 - t2))
    ok = -1.25 <= mu_slope <= -0.75 and 0.5 <= coef <= 1.5 and max(s_saddle, s_ref) < s_spec
    fit_ranks = ranks[over].astype(int).tolist()
    measured = {
        "slope_log_t_spectral_vs_log_mu": mu_slope,
        "slide_slope": -1.0,
        "coef_mu_t_spectral_on_ln(2d/r)": coef,
        "fit_ranks": fit_ranks,
        "coef_all_ranks": coef_all,
        "coef_on_ln(d/(sqrt(r)-sqrt(r*-1))^2)": coef_smin,
        "slide_coef": 1.0,
        "mu_t_spectral_mean_over_mu": mt1,
        "slide_mu_t": log_ratio,
        "rel_spread_over_r": {"spectral": s_spec, "saddle": s_saddle, "refinement": s_ref},
    }
    note = (
        f"d = {d}, r* = {rs}, m = {m['m']} measurements (slide: d = 200, r* = 5, m = 10,000); "
        f"spectral phase length ~ mu^{mu_slope:.2f} (slide: 1/mu); mu t_spectral = a + b ln(2d/r) "
        f"with b = {coef:.2f} on r = {fit_ranks} (slide: t* ~ (1/mu) ln(2d/r), b = 1); measured "
        f"mu t_spectral {np.round(mt1, 2).tolist()} for r = {m['ranks']} vs ln(2d/r) "
        f"{np.round(log_ratio, 2).tolist()}. Over all r, b = {coef_all:.2f}: at r close to r* "
        "alignment takes longer than ln(2d/r) says, since the r* x r block of U_0 in the signal "
        "space is nearly singular (sigma_min ~ sqrt(r) - sqrt(r* - 1)); against our diagnostic "
        f"ln(d / (sqrt(r) - sqrt(r* - 1))^2) b = {coef_smin:.2f} over all r. The offset a "
        "(alignment to sin <= tol, eigengap of Z) is not in the slide's order-of-magnitude formula. "
        f"Relative spread over r of the phase lengths (x mu): spectral {s_spec:.2f}, saddle "
        f"{s_saddle:.2f}, refinement {s_ref:.2f}; judged: mu-slope in [-1.25, -0.75], b (r >= 2 r*) "
        "in [0.5, 1.5], and the other phases vary less with r than the spectral one"
    )
    return Verdict("S6", measured, ok, note)


def plot_phases(cfg: Config, m: Metrics) -> dict[str, Any]:
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig = Figure(figsize=(14, 4))
    ax, bx, cx = fig.subplots(1, 3)
    p0 = m["per_mu"][0]
    c = p0["curves"]
    for i, r in enumerate(m["ranks"]):
        ax.semilogy(
            c["steps"], np.asarray(c["sin_gd"][i], dtype=float), color=f"C{i}", label=f"r={r}"
        )
        ax.semilogy(c["steps"], np.asarray(c["sin_pm"][i], dtype=float), "--", color=f"C{i}")
        bx.semilogy(c["steps"], np.asarray(c["rel_error"][i], dtype=float), color=f"C{i}")
    ax.plot([], [], "k-", label="GD")
    ax.plot([], [], "k--", label="power method")
    ax.set(
        xlabel="GD iteration",
        ylabel="sin angle to top-r* eigenspace of Z",
        title=f"S4: spectral phase, GD vs power method, mu={p0['mu']}",
    )
    ax.legend(fontsize=7, title="width r")
    bx.set(
        xlabel="GD iteration",
        ylabel="||U V^T - X Y^T||_F / ||X Y^T||_F",
        title=f"S4: relative error, mu={p0['mu']} (colours: r as left)",
    )
    tab = _phase_table(m)
    ranks = np.asarray(m["ranks"], dtype=float)
    for k, mu in enumerate(tab["mu"][:, 0]):
        cx.plot(ranks, mu * tab["t1"][k], "o-", color=f"C{k}", label=f"mu t_spectral, mu={mu:g}")
        cx.plot(ranks, mu * (tab["t2"][k] - tab["t1"][k]), "s:", color=f"C{k}")
    cx.plot([], [], "ks:", label="mu t_saddle (each mu)")
    cx.plot(ranks, np.log(2 * cfg["d"] / ranks), "k--", label="slide: ln(2d/r)")
    cx.set(
        xscale="log",
        xlabel="width r (overparameterization)",
        ylabel="mu x phase length (iterations x step)",
        title="S6: phase lengths vs r",
    )
    cx.set_xticks(ranks)
    cx.xaxis.set_major_formatter(ScalarFormatter())
    cx.xaxis.set_minor_formatter(NullFormatter())
    cx.legend(fontsize=7)
    fig.tight_layout()
    return {"phases": fig}

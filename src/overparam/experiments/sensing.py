"""Seed 004 (Soltanolkotabi, "Overparameterized learning beyond the lazy regime"), part I: low-rank
matrix sensing by GD from small random initialization.

Three experiments: ``sensing-alpha`` (final error versus the init scale alpha at several ``n``,
fitted log-log slope next to the theory's ``21/16``, and the implicit-balancing bound along every
trajectory), ``sensing-phases`` (spectral / saddle-avoidance / refinement phases, GD versus the
power method, and how the spectral phase scales with the step and with ``r``) and
``sensing-samples`` (success versus the number of measurements against ``r*^2 (d1 + d2)``).
Operator ``A(M)_i = <A_i, M>/sqrt(n)``, see :mod:`overparam.sensing`; the run/judge/plot functions
live in ``_sensing_alpha``, ``_sensing_phases`` and ``_sensing_samples``.
"""

from __future__ import annotations

from overparam.engine import Claim, Experiment, register
from overparam.experiments._sensing_alpha import judge_alpha, plot_alpha, run_alpha
from overparam.experiments._sensing_common import SRC
from overparam.experiments._sensing_phases import judge_phases, plot_phases, run_phases
from overparam.experiments._sensing_samples import judge_samples, plot_samples, run_samples

S3_STATEMENT = (
    "relative error of GD on U V^T from alpha-init scales like alpha^(21/16) (upper bound)"
)

register(
    Experiment(
        name="sensing-alpha",
        title="Seed 004: matrix sensing from small init, error vs alpha at several n; balancing",
        claims=(
            Claim("S3", S3_STATEMENT, SRC + ", slide 'Our result'"),
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
                "r": 5,
                "ns": [300, 800, 2000],
                "alphas": [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8],
                "seeds": 2,
                "mu": 0.5,
                "steps": 1500,
                "points": 100,
            },
            "full": {
                "seed": 0,
                "d1": 50,
                "d2": 50,
                "r_star": 3,
                "r": 10,
                "ns": [900, 3000, 9000],
                "alphas": [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8],
                "seeds": 3,
                "mu": 0.5,
                "steps": 4000,
                "points": 200,
            },
        },
        run=run_alpha,
        judge=judge_alpha,
        plot=plot_alpha,
        doc="Final relative error vs alpha over 5 decades for n = 1x .. 10x r*^2 (d1 + d2): the "
        "slope grows with n and passes 21/16; the S5 lemma at every step. alpha = 1e-2 is not small "
        "at d = 50, r = 10 (||U_0||_F ~ 0.2): measured, the error barely moves from 1e-2 to 1e-3 "
        "(local slope ~0.1), so the fit range starts at 1e-3. Quick ~10 s: "
        "`overparam run sensing-alpha --quick`; full: `--full` (~5 min of CPU on one core).",
        version=2,
    )
)

register(
    Experiment(
        name="sensing-phases",
        title="Seed 004: spectral / saddle-avoidance / refinement phases; GD vs power method",
        claims=(
            Claim(
                "S4",
                "three phases; in the spectral phase GD follows the power method (I + mu Z)^t U_0",
                SRC + ", slides 'Role of randomness + overparameterization', 'Convergence phases'",
            ),
            Claim(
                "S6",
                "spectral phase t* ~ (1/mu) ln(2d/r); overparameterization does not affect the "
                "other phases",
                SRC + ", slide 'Insights and predictions' (n = 200, r* = 5, m = 10 n r*)",
            ),
        ),
        presets={
            "quick": {
                "seed": 0,
                "d": 40,
                "r_star": 2,
                "m_per_dr": 10,
                "kappa": 1.0,
                "ranks": [2, 5, 10, 20, 40],
                "seeds": 1,
                "alpha": 1e-6,
                "mus": [0.05, 0.1, 0.2],
                "horizon": 40.0,
                "points": 200,
                "angle_tol": 0.1,
                "error_tol": 1e-3,
                "max_bytes": 2**29,
            },
            "full": {
                "seed": 0,
                "d": 100,
                "r_star": 5,
                "m_per_dr": 10,
                "kappa": 1.0,
                "ranks": [5, 10, 25, 50, 100],
                "seeds": 1,
                "alpha": 1e-6,
                "mus": [0.05, 0.1, 0.2],
                "horizon": 40.0,
                "points": 200,
                "angle_tol": 0.1,
                "error_tol": 1e-3,
                "max_bytes": 2**29,
            },
        },
        run=run_phases,
        judge=judge_phases,
        plot=plot_phases,
        doc="Symmetric sensing, m = 10 d r* measurements (the slide's ratio). Full: d = 100, r* = 5, "
        "m = 5,000 (0.4 GB operator), ranks 5..100; the slide's d = 200, m = 10,000 needs a 3.2 GB "
        "float64 operator read twice per step (measured 3.1 s per step on one core, ~70 min for "
        "the 1,400 steps of the three mus; 1.6 GB and ~35 min with the symmetric half of the A_i), "
        "so `--set d=200 --set ranks=[5,10,25,50,100,200] --set max_bytes=4294967296` runs it. "
        "Quick ~6 s: `overparam run sensing-phases --quick`.",
    )
)

register(
    Experiment(
        name="sensing-samples",
        title="Seed 004: recovery vs number of measurements n against r*^2 (d1 + d2)",
        claims=(
            Claim(
                "S3",
                "small-init GD recovers X Y^T with n >~ r*^2 (d1 + d2) Gaussian measurements",
                SRC + ", slide 'Our result' (assumption n >~ r*^2 (d1 + d2))",
            ),
        ),
        presets={
            "quick": {
                "seed": 0,
                "d1": 15,
                "d2": 15,
                "r_stars": [1, 2, 3],
                "r_factor": 2,
                "ratios": [0.5, 1.0, 2.0, 3.0, 4.0],
                "kappa": 2.0,
                "seeds": 3,
                "alpha": 1e-6,
                "mu": 0.25,
                "steps": 800,
                "success_tol": 1e-2,
            },
            "full": {
                "seed": 0,
                "d1": 50,
                "d2": 50,
                "r_stars": [1, 2, 3, 5],
                "r_factor": 2,
                "ratios": [0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0],
                "kappa": 2.0,
                "seeds": 5,
                "alpha": 1e-6,
                "mu": 0.25,
                "steps": 2000,
                "success_tol": 1e-2,
            },
        },
        run=run_samples,
        judge=judge_samples,
        plot=plot_samples,
        doc="Success rate (relative error <= 1e-2) vs n / (r*^2 (d1 + d2)) and vs n / dof for "
        "several r*. Quick ~10 s: `overparam run sensing-samples --quick`.",
    )
)

"""Tarmoun, França, Haeffele & Vidal 2021 (seed 003): gradient flow of overparameterized linear models.

Four experiments, all on exact gradient flow (``overparam.dynamics.gradient_flow``, DOP853):
``tarmoun-conservation`` (the conserved imbalance under the flow versus its O(eta^2)-per-step drift
under GD, depths 2-4), ``tarmoun-spectral`` (per-singular-value dynamics: rate
``sqrt(4 s^2 + delta^2)`` against the measured one), ``tarmoun-general`` (arbitrary inits on
``Y ~ N(0,1)^{5x10}``, ``k = 50``; sequential learning; a nonlinear target) and
``tarmoun-symmetric`` (the Riccati closed form and its rate ``2 lambda_min(Y)``).
Scalings: ``1/2 ||Y - U V^T||^2``, ``1/4 ||Y - U U^T||^2``, one layer ``1/2 ||Y - X||^2``.
"""

from __future__ import annotations

from overparam.engine import Claim, Experiment, register
from overparam.experiments._tarmoun_general import judge_general, plot_general, run_general
from overparam.experiments._tarmoun_matrix import (
    SRC,
    judge_conservation,
    judge_spectral,
    judge_symmetric,
    plot_conservation,
    plot_spectral,
    plot_symmetric,
    run_conservation,
    run_spectral,
    run_symmetric,
)

# --------------------------------------------------------------------------------- registration
_FLOW = {"rtol": 1e-12, "atol": 1e-14, "max_step": 0.1}
_FIT = {"fit_hi": 1e-3, "fit_lo": 1e-9, "tol": 1e-6, "rate_tol": 0.02}

CONSERVATION = register(
    Experiment(
        name="tarmoun-conservation",
        title="Tarmoun et al. 2021 / Arora et al. 2018: imbalance conserved by the flow, O(eta^2) GD drift",
        claims=(
            Claim(
                "T1", "gradient flow preserves U^T U - V^T V", SRC + ", Sec. 3 (conservation law)"
            ),
            Claim(
                "A2",
                "gradient flow preserves W_{j+1}^T W_{j+1} - W_j W_j^T (balancedness)",
                "Arora, Cohen & Hazan 2018, Theorem 1 (proof)",
            ),
        ),
        presets={
            "quick": {
                "seed": 0,
                "depths": [2, 3, 4],
                "inits": ["random", "balanced"],
                "d_in": 5,
                "d_out": 3,
                "width": 4,
                "samples": 20,
                "scale": 0.7,
                "T": 5.0,
                "n_times": 26,
                "etas": [0.04, 0.02, 0.01, 0.005],
                "gd_time": 1.0,
                "flow_tol": 1e-9,
                "rtol": 1e-11,
                "atol": 1e-13,
            },
            "full": {
                "seed": 0,
                "depths": [2, 3, 4],
                "inits": ["random", "balanced"],
                "d_in": 10,
                "d_out": 5,
                "width": 8,
                "samples": 100,
                "scale": 0.7,
                "T": 20.0,
                "n_times": 101,
                "etas": [0.02, 0.01, 0.005, 0.0025, 0.00125],  # 0.04: GD diverges at depth 4
                "gd_time": 2.0,
                "flow_tol": 1e-9,
                "rtol": 1e-12,
                "atol": 1e-14,
            },
        },
        run=run_conservation,
        judge=judge_conservation,
        plot=plot_conservation,
        doc="Flow drift of the imbalance (should be ~rtol) and GD drift slopes in eta (2 per step, "
        "1 over a fixed time). Quick ~5 s: `overparam run tarmoun-conservation --quick`.",
    )
)

SPECTRAL = register(
    Experiment(
        name="tarmoun-spectral",
        title="Tarmoun et al. 2021, Sec. 3: spectral init, rate sqrt(4 s^2 + delta^2) vs measured",
        claims=(
            Claim(
                "T3",
                "spectral init: per-singular-value dynamics, rate set by the imbalance and the "
                "spectrum; acceleration even for l2",
                SRC + ", Sec. 3",
            ),
            Claim(
                "T5",
                "balanced small init: depth can slow l2 convergence; components learned one after another",
                SRC + ", Sec. 1 (Saxe et al. 2014)",
            ),
        ),
        presets={
            "quick": {
                "seed": 0,
                "s_values": [2.0, 1.0, 0.4, 0.25],
                "deltas": [0.0, 1.0, 4.0],
                "p0": 1e-3,
                "T": 45.0,
                "n_times": 901,
                **_FLOW,
                **_FIT,
            },
            "full": {
                "seed": 0,
                "s_values": [3.0, 2.0, 1.0, 0.7, 0.4, 0.25, 0.15],
                "deltas": [0.0, 0.25, 0.5, 1.0, 2.0, 4.0],
                "p0": 1e-3,
                "T": 75.0,
                "n_times": 3001,
                **_FLOW,
                **_FIT,
            },
        },
        run=run_spectral,
        judge=judge_spectral,
        plot=plot_spectral,
        doc="Full matrix flow from spectral inits; per-mode rate fitted on |uv - s|/s in "
        "[fit_lo, fit_hi]. Quick: `overparam run tarmoun-spectral --quick`.",
    )
)

GENERAL = register(
    Experiment(
        name="tarmoun-general",
        title="Tarmoun et al. 2021, Sec. 4: arbitrary init, Y ~ N(0,1)^{5x10}, k = 50; nonlinear target",
        claims=(
            Claim(
                "T4",
                "arbitrary init: characterization of the rate (Riccati type)",
                SRC + ", Sec. 4",
            ),
            Claim(
                "T5",
                "balanced small init: components learned one after another",
                SRC + ", Sec. 1 (Saxe et al. 2019, Gidel et al. 2019)",
            ),
        ),
        presets={
            "quick": {
                "seed": 0,
                "m": 5,
                "n": 10,
                "k": 50,
                "inits": [[0.01, 0.01], [0.3, 0.3], [1.0, 0.1], [0.1, 1.0]],
                "small_scale": 1e-4,
                "samples": 200,
                "noise": 0.01,
                "T": 20.0,
                "n_times": 2001,
                "curve_points": 201,
                **_FLOW,
                **_FIT,
                "fit_lo": 1e-7,
            },
            "full": {
                "seed": 0,
                "m": 5,
                "n": 10,
                "k": 50,
                "inits": [
                    [0.01, 0.01],
                    [0.1, 0.1],
                    [0.3, 0.3],
                    [1.0, 1.0],
                    [1.0, 0.1],
                    [0.1, 1.0],
                    [2.0, 0.1],
                ],
                "small_scale": 1e-6,
                "samples": 1000,
                "noise": 0.01,
                "T": 40.0,
                "n_times": 8001,
                "curve_points": 401,
                **_FLOW,
                **_FIT,
                "fit_lo": 1e-7,
            },
        },
        run=run_general,
        judge=judge_general,
        plot=plot_general,
        doc="Relative error ||Y - UV^T||/||Y|| and singular-value trajectories of U V^T versus the "
        "one-layer flow from the same product, one panel per init (imbalance level); small "
        "balanced init (sequential learning); nonlinear target tanh(XW) + eps. "
        "Quick: `overparam run tarmoun-general --quick`.",
    )
)

SYMMETRIC = register(
    Experiment(
        name="tarmoun-symmetric",
        title="Tarmoun et al. 2021, Sec. 2: Riccati closed form of U U^T, rate 2 lambda_min(Y)",
        claims=(
            Claim(
                "T2",
                "symmetric factorization: closed-form (Riccati) solution, rate set by the "
                "eigenvalues of Y, without small or spectral init",
                SRC + ", Sec. 2",
            ),
        ),
        presets={
            "quick": {
                "seed": 0,
                "m": 6,
                "widths": [6, 9, 3],
                "lambda_mins": [0.25, 0.5, 1.0],
                "lambda_max": 3.0,
                "gap": 1.5,  # next error mode 2 lambda_min + gap: the fit sees the slowest one
                "init_std": 1.0,
                "T": 45.0,
                "n_times": 451,
                **_FLOW,
                **_FIT,
            },
            "full": {
                "seed": 0,
                "m": 20,
                "widths": [20, 40, 10],
                "lambda_mins": [0.1, 0.25, 0.5, 1.0, 2.0],
                "lambda_max": 5.0,
                "gap": 1.5,
                "init_std": 1.0,
                "T": 110.0,
                "n_times": 2201,
                **_FLOW,
                **_FIT,
            },
        },
        run=run_symmetric,
        judge=judge_symmetric,
        plot=plot_symmetric,
        doc="Quick: `overparam run tarmoun-symmetric --quick`.",
    )
)

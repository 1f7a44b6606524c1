"""Beyond the lazy regime (seed 004, Soltanolkotabi 2022): three experiments.

``overparam-least-squares`` (S1): GD on ``1/2 ||X theta - y||^2`` with ``n <= p`` reaches the
solution closest to ``theta_0`` along a short path.  ``lazy-vs-rich`` (S2): a two-layer ReLU network
``a^T relu(W x) / sqrt(m)`` stays close to its linearization at large init scale or width.
``relu-features`` (S7): a one-hidden-layer ReLU net trained by GD from small init on ``g(U x)``
learns ``row(U)``, and refitting only its last layer transfers to a new ``g_T`` with few samples.
"""

from __future__ import annotations

from overparam.engine import Claim, Experiment, register
from overparam.experiments._regimes_features import judge_features, plot_features, run_features
from overparam.experiments._regimes_lazy import (
    SRC,
    judge_lazy,
    judge_least_squares,
    plot_lazy,
    plot_least_squares,
    run_lazy,
    run_least_squares,
)

LEAST_SQUARES = register(
    Experiment(
        name="overparam-least-squares",
        title="Soltanolkotabi 2022, slide 'Prelude': GD on n <= p least squares -> closest optimum",
        claims=(
            Claim(
                "S1",
                "overparameterized least squares (n <= p): GD from theta_0 converges to the global "
                "optimum closest to theta_0, along a short path",
                SRC + ", slide 'Prelude: Overparameterized Least Squares'",
            ),
        ),
        presets={
            "quick": {
                "seed": 0,
                "shapes": [[20, 100], [50, 200], [100, 400]],
                "seeds": 4,
                "steps": 2000,
                "points": 40,
                "distance_tol": 1e-8,
                "loss_tol": 1e-20,
            },
            "full": {
                "seed": 0,
                "shapes": [[50, 1000], [250, 1000], [500, 1000], [100, 2000]],
                "seeds": 16,
                "steps": 3000,
                "points": 100,
                "distance_tol": 1e-8,
                "loss_tol": 1e-20,
            },
        },
        run=run_least_squares,
        judge=judge_least_squares,
        plot=plot_least_squares,
        doc="X ~ N(0, 1/p), y, theta_0 ~ N(0, 1); lr = 1/lambda_max(X X^T). Expected: distance to "
        "theta_0 + X^+(y - X theta_0) at float64 round-off (~1e-14), path/straight slightly above 1, "
        "below kappa and ||c||_1/||c||_2. Quick ~2 s: `overparam run overparam-least-squares --quick`.",
    )
)

LAZY = register(
    Experiment(
        name="lazy-vs-rich",
        title="Soltanolkotabi 2022, slides 'Lemma' and 'Lazy vs. non-lazy': linearization vs init scale and width",
        claims=(
            Claim(
                "S2",
                "lazy regime: with large init or width, the model stays close to its linearization "
                "f(theta_0) + J(theta_0)(theta - theta_0) along GD",
                SRC + ", slide 'Overparameterized nonlinear Least Squares: Lemma'",
            ),
        ),
        presets={
            "quick": {
                "seed": 0,
                "d": 10,
                "n": 48,
                "seeds": 1,
                "widths": [32, 128, 512],
                "alphas": [0.1, 0.3, 1.0, 3.0, 10.0],
                "steps": 1000,
                "points": 25,
                "lr_factor": 0.5,
                "lazy_tol": 0.05,
                "rich_min": 0.3,
            },
            "full": {
                "seed": 0,
                "d": 20,
                "n": 128,
                "seeds": 2,
                "widths": [64, 256, 1024, 4096],
                "alphas": [0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0],
                "steps": 2000,
                "points": 50,
                "lr_factor": 0.5,
                "lazy_tol": 0.05,
                "rich_min": 0.3,
            },
        },
        run=run_lazy,
        judge=judge_lazy,
        plot=plot_lazy,
        doc="Single-index target relu(u.x) - E; GD with step 0.5 n / lambda_max(NTK) (alpha >= 1) or "
        "the alpha = 1 step (alpha < 1). Expected: weight change and linearization gap fall like "
        "alpha^-2 and about m^-1/2. Quick ~5 s: `overparam run lazy-vs-rich --quick`.",
    )
)

FEATURES = register(
    Experiment(
        name="relu-features",
        title="Damian, Lee & Soltanolkotabi 2022 (seed 004): ReLU net learns row(U) of g(U x); transfer",
        claims=(
            Claim(
                "S7",
                "a one-hidden-layer ReLU net trained by GD from small init learns y = g(U x) and "
                "its features transfer: retraining only the last layer on a new g_T needs few samples",
                SRC
                + ", slides 'Learning polynomials with neural nets' and 'Transfer Learning Result'",
            ),
        ),
        presets={
            "quick": {
                "seed": 0,
                "d": 20,
                "r": 2,
                "n": 1000,
                "seeds": 1,
                "width": 100,
                "alpha": 1e-3,
                "lr": 0.1,
                "steps": 1000,
                "points": 30,
                "g_source": [[0.5, [2, 0]], [0.5, [0, 2]]],
                "g_target": [[1.0, [1, 1]], [0.5, [2, 0]], [-0.5, [0, 2]]],
                "n_test": 4000,
                "transfer_sizes": [20, 40, 80, 160, 320, 640],
                "ridge": 1e-3,
                "angle_tol": 10.0,
                "error_tol": 0.25,
            },
            "full": {
                "seed": 0,
                "d": 50,
                "r": 3,
                "n": 8000,
                "seeds": 3,
                "width": 300,
                "alpha": 1e-3,
                "lr": 0.1,
                "steps": 2000,
                "points": 40,
                "g_source": [[0.5, [2, 0, 0]], [0.5, [0, 2, 0]], [0.5, [0, 0, 2]]],
                "g_target": [
                    [1.0, [1, 1, 0]],
                    [0.5, [0, 0, 2]],
                    [0.5, [1, 0, 1]],
                    [-0.5, [2, 0, 0]],
                ],
                "n_test": 8000,
                "transfer_sizes": [25, 50, 100, 200, 400, 800, 1600, 3200],
                "ridge": 1e-3,
                "angle_tol": 10.0,
                "error_tol": 0.25,
            },
        },
        run=run_features,
        judge=judge_features,
        plot=plot_features,
        doc="Source g_S = sum_i He_2(z_i) (unit variance), target g_T = z1 z2 + (He_2(z1) - He_2(z2))/2 "
        "(normalized). Expected: largest principal angle a few degrees, learned features reach "
        "relative error 0.25 with a few hundred samples, random features of the same width do not. "
        "Quick ~6 s: `overparam run relu-features --quick`.",
    )
)

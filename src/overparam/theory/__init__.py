"""Theory of two-layer linear networks under finite-step GD (Xu, Tarmoun, Min, Mallada & Vidal 2023).

Source convention throughout: ``W = W1 W2`` (``W1: d x h``, ``W2: h x m``) and
``L(W) = 1/2 ||X W - Y||_F^2``; ``K = sigma_max(X)^2``, ``mu = sigma_min(X)^2``.
"""

from overparam.theory._operators import (
    LeastSquares,
    compress_factors,
    product_update,
    tau,
    tau_extremes,
    two_layer_imbalance,
)
from overparam.theory._rates import (
    InitConstants,
    condition_18,
    eta_max,
    f_coefficients,
    f_rate,
    minimize_quartic,
    plain_rate,
    positive_root,
    quartic,
    rho,
    rho_coefficients,
    scalar_rate_lower_bound,
)
from overparam.theory.inits import SCHEMES, init_layer
from overparam.theory.step_size import (
    AdaptiveStepLR,
    adaptive_step,
    adaptive_step_rho,
    measured_quantities,
)
from overparam.theory.trajectory import (
    check_bounds,
    fit_slope,
    imbalance_slopes,
    plain_gd,
    two_layer_gd,
)

__all__ = [
    "AdaptiveStepLR",
    "InitConstants",
    "SCHEMES",
    "LeastSquares",
    "adaptive_step",
    "adaptive_step_rho",
    "check_bounds",
    "compress_factors",
    "condition_18",
    "eta_max",
    "f_coefficients",
    "f_rate",
    "fit_slope",
    "imbalance_slopes",
    "init_layer",
    "measured_quantities",
    "minimize_quartic",
    "plain_gd",
    "plain_rate",
    "positive_root",
    "product_update",
    "quartic",
    "rho",
    "rho_coefficients",
    "scalar_rate_lower_bound",
    "tau",
    "tau_extremes",
    "two_layer_imbalance",
    "two_layer_gd",
]

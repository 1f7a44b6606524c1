"""Gradient flow, gradient descent on its clock, conservation laws and closed-form dynamics.

Reference: Tarmoun, França, Haeffele & Vidal, "Understanding the dynamics of gradient flow in
overparameterized linear models", ICML 2021.
"""

from overparam.dynamics.closed_forms import (
    asymmetric_loss,
    one_layer_flow,
    spectral_flow,
    spectral_init,
    spectral_rate,
    symmetric_flow,
    symmetric_loss,
    symmetric_rate,
)
from overparam.dynamics.conservation import (
    conservation_drift,
    fit_exponential_rate,
    fit_log_slope,
    gd_imbalance_step,
    imbalance_trajectory,
)
from overparam.dynamics.flow import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    METHODS,
    FlowBlowUpError,
    FlowDescentComparison,
    flow_versus_descent,
    gradient_descent,
    gradient_flow,
)

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "METHODS",
    "FlowBlowUpError",
    "FlowDescentComparison",
    "asymmetric_loss",
    "conservation_drift",
    "fit_exponential_rate",
    "fit_log_slope",
    "flow_versus_descent",
    "gd_imbalance_step",
    "gradient_descent",
    "gradient_flow",
    "imbalance_trajectory",
    "one_layer_flow",
    "spectral_flow",
    "spectral_init",
    "spectral_rate",
    "symmetric_flow",
    "symmetric_loss",
    "symmetric_rate",
]

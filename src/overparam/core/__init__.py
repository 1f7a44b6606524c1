"""The pure mathematics every other part of overparam calls."""

from overparam.core._cached import (
    cached_factorization,
    precondition_cached,
    precondition_tracked,
    refresh_factorization,
)
from overparam.core.factorization import balanced_factors, imbalance, numerical_rank, product
from overparam.core.losses import lp_gradient, lp_loss, lp_loss_of_matrix, lp_residual_gradient
from overparam.core.precondition import (
    geometric_closed_form,
    metric,
    precondition,
    precondition_coefficients,
    precondition_inverse,
    single_output_precondition,
)

__all__ = [
    "balanced_factors",
    "cached_factorization",
    "geometric_closed_form",
    "imbalance",
    "lp_gradient",
    "lp_loss",
    "lp_loss_of_matrix",
    "lp_residual_gradient",
    "metric",
    "numerical_rank",
    "precondition",
    "precondition_cached",
    "precondition_coefficients",
    "precondition_inverse",
    "precondition_tracked",
    "product",
    "refresh_factorization",
    "single_output_precondition",
]

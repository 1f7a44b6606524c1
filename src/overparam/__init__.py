"""overparam: implicit acceleration by overparameterization, exact and fast.

Reference: Arora, Cohen & Hazan, "On the optimization of deep networks: implicit acceleration by
overparameterization", ICML 2018.
"""

from overparam.core import balanced_factors
from overparam.core import imbalance
from overparam.core import lp_gradient
from overparam.core import lp_loss
from overparam.core import metric
from overparam.core import precondition
from overparam.core import precondition_inverse
from overparam.core import product
from overparam.core import single_output_precondition
from overparam.dynamics import gradient_flow
from overparam.models import DeepLinear

__version__ = "0.1.0"

__all__ = [
    "DeepLinear",
    "balanced_factors",
    "gradient_flow",
    "imbalance",
    "lp_gradient",
    "lp_loss",
    "metric",
    "precondition",
    "precondition_inverse",
    "product",
    "single_output_precondition",
]

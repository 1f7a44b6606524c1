"""Overparameterize the linear layers of any PyTorch model, train, and collapse back.

Supported: ``nn.Linear``, ``nn.Conv1d/2d/3d`` (grouped and depthwise included: a grouped ``k x k``
conv followed by grouped ``1 x 1`` convs, so the collapse is exact), ``nn.MultiheadAttention``'s
projection weights and Hugging Face's ``Conv1D``; tied weights stay tied.  Transposed
convolutions, uninitialized lazy modules and weights that already carry a
``torch.nn.utils.parametrize`` parametrization are skipped (listed by :func:`summary`;
``strict=True`` raises); frozen weights (``requires_grad=False``) are left plain and listed.
"""

from overparam.nn._factorized import Factorized
from overparam.nn._overparameterize import (
    collapse,
    factors_of,
    is_overparameterized,
    overparameterize,
)
from overparam.nn._summary import Converted, Skipped, Summary, summary

__all__ = [
    "Converted",
    "Factorized",
    "Skipped",
    "Summary",
    "collapse",
    "factors_of",
    "is_overparameterized",
    "overparameterize",
    "summary",
]

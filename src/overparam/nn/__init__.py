"""Overparameterize the linear layers of any PyTorch model, train, and collapse back.

Supported: ``nn.Linear`` and ``nn.Conv1d/2d/3d`` with ``groups == 1`` (a ``k x k`` conv followed by
``1 x 1`` convs: the factors act on the out-channel dimension, so the collapse is exact).
Not supported: grouped/depthwise convolutions, transposed convolutions, uninitialized lazy
modules, a weight that already carries another parametrization, and pickling the whole
overparameterized model (``torch.save(model)``; save ``state_dict()`` or :func:`collapse` first).
"""

from overparam.nn._overparameterize import (
    Factorized,
    collapse,
    factors_of,
    is_overparameterized,
    overparameterize,
)

__all__ = [
    "Factorized",
    "collapse",
    "factors_of",
    "is_overparameterized",
    "overparameterize",
]

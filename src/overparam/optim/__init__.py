"""Optimizers that apply the end-to-end update of an overparameterized model without its factors."""

from overparam.optim._end_to_end_sgd import (
    EndToEndSGD,
    end_to_end_direction,
    end_to_end_sgd,
)

__all__ = [
    "EndToEndSGD",
    "end_to_end_direction",
    "end_to_end_sgd",
]

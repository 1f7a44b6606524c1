"""Models built from the core operators."""

from overparam.models.deep_linear import DeepLinear, initial_factors

__all__ = ["DeepLinear", "initial_factors"]

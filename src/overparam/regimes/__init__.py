"""Beyond the lazy regime (seed 004, Soltanolkotabi 2022): overparameterized least squares, lazy
versus rich training of a two-layer ReLU network, and feature learning of ``y = g(U x)`` by a
one-hidden-layer ReLU net with transfer of the learned features."""

from overparam.regimes._features import (
    feature_angles,
    hermite,
    hermite_moments,
    hermite_polynomial,
    planted_subspace,
    readout_error,
    ridge_readout,
)
from overparam.regimes._least_squares import (
    closest_solution,
    gram_extremes,
    least_squares_gd,
    path_length_bounds,
)
from overparam.regimes._two_layer import (
    linearization_gap,
    ntk_gram,
    paired_init,
    two_layer,
    two_layer_gd,
    two_layer_loss_and_grads,
)

__all__ = [
    "closest_solution",
    "feature_angles",
    "gram_extremes",
    "hermite",
    "hermite_moments",
    "hermite_polynomial",
    "least_squares_gd",
    "linearization_gap",
    "ntk_gram",
    "paired_init",
    "path_length_bounds",
    "planted_subspace",
    "readout_error",
    "ridge_readout",
    "two_layer",
    "two_layer_gd",
    "two_layer_loss_and_grads",
]

"""Low-rank matrix sensing from small random initialization (seed 004: Stöger & Soltanolkotabi;
Xie, Stöger & Soltanolkotabi 2022): Gaussian operator, batched GD on ``U V^T`` and ``U U^T``,
power-method comparison, principal angles, phase detection and the implicit-balancing bound."""

from overparam.sensing._gd import sensing_gd, sensing_loss_and_grads
from overparam.sensing._operator import GaussianSensing, planted_low_rank
from overparam.sensing._phases import (
    balancing_bound,
    detect_phases,
    first_reached,
    lift,
    noise_exponent,
    power_iterates,
    principal_angles,
    spectral_matrix,
    subspace_sin,
    top_subspace,
)

__all__ = [
    "GaussianSensing",
    "balancing_bound",
    "detect_phases",
    "first_reached",
    "lift",
    "noise_exponent",
    "planted_low_rank",
    "power_iterates",
    "principal_angles",
    "sensing_gd",
    "sensing_loss_and_grads",
    "spectral_matrix",
    "subspace_sin",
    "top_subspace",
]

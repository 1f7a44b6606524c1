"""Batched training of deep linear networks: K configurations as one tensor program."""

from overparam.training.batching import select_fastest, stack_configs
from overparam.training.optimizers import OPTIMIZERS, TF1_DEFAULTS, apply_update, init_state
from overparam.training.optimum import lp_optimum
from overparam.training.trainer import TrainResult, emulate, end_to_end, factor_gradients, train

__all__ = [
    "OPTIMIZERS",
    "TF1_DEFAULTS",
    "TrainResult",
    "apply_update",
    "emulate",
    "end_to_end",
    "factor_gradients",
    "init_state",
    "lp_optimum",
    "select_fastest",
    "stack_configs",
    "train",
]

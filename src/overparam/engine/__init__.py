"""The experiment engine: declared experiments, one runner, one results store, one report."""

from overparam.engine.experiment import Claim, Config, Experiment, Metrics, RunContext, Verdict
from overparam.engine.registry import experiments, get, register
from overparam.engine.runner import run_experiment
from overparam.engine.steps import log_steps

__all__ = [
    "Claim",
    "Config",
    "Experiment",
    "Metrics",
    "RunContext",
    "Verdict",
    "experiments",
    "get",
    "log_steps",
    "register",
    "run_experiment",
]

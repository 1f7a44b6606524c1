"""The experiment engine: declared experiments, one runner, one results store, one report."""

from overparam.engine.environment import environment
from overparam.engine.experiment import Claim, Config, Experiment, Metrics, RunContext, Verdict
from overparam.engine.html_report import write_report
from overparam.engine.pieces import Piece
from overparam.engine.registry import experiments, get, register
from overparam.engine.results import StoredRun, stored_runs
from overparam.engine.runner import run_experiment
from overparam.engine.steps import log_steps

__all__ = [
    "Claim",
    "Config",
    "Experiment",
    "Metrics",
    "Piece",
    "RunContext",
    "StoredRun",
    "Verdict",
    "environment",
    "experiments",
    "get",
    "log_steps",
    "register",
    "run_experiment",
    "stored_runs",
    "write_report",
]

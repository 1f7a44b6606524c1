"""Run many experiment runs (``reproduce``, a sweep): one after another, or on a Dask cluster.

Serially each run is :func:`overparam.engine.runner.run_experiment`.  With a Dask client the runs
not in the store are computed on the cluster (:mod:`overparam.engine.distributed`) while the client
writes the store, the run directories and the figures exactly as the serial path does, so both give
the same files and the same metrics.  On a cluster the runs start longest first, by the seconds each
run directory's ``run.json`` recorded last time (:func:`longest_first`).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from overparam.engine.runner import finish_run, prepare_run, run_experiment


@dataclass(frozen=True)
class Request:
    """One run: an experiment, its preset, config overrides and (optionally) its own directory."""

    name: str
    preset: str = "quick"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    directory: Path | None = None


@dataclass
class Outcome:
    """What became of one request: its summary, or the error that stopped it."""

    request: Request
    summary: dict[str, Any] | None = None
    error: str | None = None


def run_requests(
    requests: Sequence[Request],
    out: Path,
    *,
    client: Any | None = None,
    force: bool = False,
    plots: bool = True,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run every request; a failing run is reported in its :class:`Outcome` and the others go on.

    Args:
        requests: the runs, in the order their outcomes are returned.
        out: the output root (store and run directories).
        client: a ``distributed.Client``; ``None`` runs serially in this process.
        force: recompute runs and pieces even when stored.
        plots: draw the figures.
        on_outcome: called on the client as each run finishes (for progress lines).
    """
    outcomes = [Outcome(r) for r in requests]
    report = on_outcome or (lambda outcome: None)
    if client is None:
        for outcome in outcomes:
            r = outcome.request
            try:
                outcome.summary = run_experiment(
                    r.name,
                    r.preset,
                    r.overrides,
                    out,
                    force=force,
                    plots=plots,
                    directory=r.directory,
                )
            except Exception as error:  # one broken run must not lose the others
                outcome.error = f"{type(error).__name__}: {error}"
            report(outcome)
        return outcomes
    _run_on_cluster(outcomes, out, client, force, plots, report)
    return outcomes


def _run_on_cluster(
    outcomes: Sequence[Outcome],
    out: Path,
    client: Any,
    force: bool,
    plots: bool,
    report: Callable[[Outcome], None],
) -> None:
    from overparam.engine.distributed import Job, run_jobs

    jobs, estimates, store = [], [], None
    for outcome in outcomes:
        r = outcome.request
        try:
            plan = prepare_run(r.name, r.preset, r.overrides, out, directory=r.directory)
        except ValueError as error:
            outcome.error = f"ValueError: {error}"
            report(outcome)
            continue
        store = plan.store
        found = None if force else plan.store.get(plan.kind, plan.config)
        if found is not None:
            outcome.summary = finish_run(plan, found, cached=True, seconds=0.0, plots=plots)
            report(outcome)
            continue
        jobs.append(
            Job(plan.experiment, plan.kind, plan.config, *_callbacks(outcome, plan, plots, report))
        )
        estimates.append(recorded_seconds(plan.directory))
    if not jobs or store is None:
        return
    jobs = [jobs[i] for i in longest_first(estimates)]  # submitted (and started) in this order
    bar = tqdm(
        total=len(jobs),
        desc="runs and pieces",
        unit="task",
        disable=not sys.stderr.isatty(),
        dynamic_ncols=True,
    )
    try:
        run_jobs(client, store, jobs, force, bar)
    finally:
        bar.close()


def recorded_seconds(directory: Path) -> float | None:
    """The wall-clock seconds of the run that computed the metrics in ``directory/run.json``
    (its ``computed.seconds``), or None when there is no such record."""
    try:
        record = json.loads((directory / "run.json").read_text())
    except (OSError, ValueError):
        return None
    computed = record.get("computed") if isinstance(record, dict) else None
    seconds = computed.get("seconds") if isinstance(computed, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return None
    return float(seconds) if math.isfinite(seconds) and seconds >= 0 else None


def longest_first(estimates: Sequence[float | None]) -> list[int]:
    """The order to start runs in on a cluster: those never timed first (their length is unknown),
    in the given order, then the timed ones longest first (ties in the given order), so that a long
    run does not start last and leave the other workers idle at the end."""
    unknown = [i for i, s in enumerate(estimates) if s is None]
    timed = [i for i, s in enumerate(estimates) if s is not None]
    return unknown + sorted(timed, key=lambda i: -(estimates[i] or 0.0))


def _callbacks(
    outcome: Outcome, plan: Any, plots: bool, report: Callable[[Outcome], None]
) -> tuple[Callable[[Any, float], None], Callable[[BaseException], None]]:
    def done(metrics: Any, seconds: float) -> None:
        outcome.summary = finish_run(plan, metrics, cached=False, seconds=seconds, plots=plots)
        report(outcome)

    def failed(error: BaseException) -> None:
        outcome.error = f"{type(error).__name__}: {error}"
        report(outcome)

    return done, failed

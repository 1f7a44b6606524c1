"""Run a registered experiment: resolve its config, reuse or compute metrics, judge, write, plot.

Each run writes into ``<out>/<name>/<preset>/`` (so a quick and a full run live side by side):
``config.json``, ``metrics.json``, ``summary.json``, ``run.json`` (the environment, see
:mod:`overparam.engine.environment`) and the figures (PNG and PDF); ``<out>/<name>/summary.json``
is a copy of the last run's summary, of either preset.  Metrics live in ``<out>/store.sqlite``; a
second identical invocation returns from the store, ``force=True`` recomputes.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm import tqdm

from overparam._threads import intra_op_threads
from overparam.engine.environment import run_record
from overparam.engine.experiment import Config, Experiment, Metrics, Verdict
from overparam.engine.files import atomic_path, write_json
from overparam.engine.locking import key_lock
from overparam.engine.overrides import check_overrides, parse_value
from overparam.engine.pieces import Piece, item_pieces
from overparam.engine.registry import get
from overparam.engine.store import Store, config_hash, to_jsonable

T = TypeVar("T")
PRESETS = ("quick", "full")
DEFAULT_OUT = Path("runs")


class Context:
    """The :class:`RunContext` of one run: progress bars, cached sub-results, log lines."""

    def __init__(self, store: Store, name: str, force: bool, quiet: bool = False) -> None:
        self.store, self.name, self.force, self.quiet = store, name, force, quiet

    def progress(self, items: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
        tty = sys.stderr.isatty()
        bar = tqdm(
            items,
            total=total,
            desc=f"{self.name} {desc}".strip(),
            disable=self.quiet,
            mininterval=0.5 if tty else 10.0,
            leave=False,
            dynamic_ncols=True,
        )
        yield from bar

    def cached(
        self, key: str, config: Mapping[str, Any], compute: Callable[[], Metrics]
    ) -> Metrics:
        kind = f"{self.name}/{key}"
        wait = functools.partial(self.log, f"waiting for another process computing {key}")
        return self.store.get_or_compute(kind, config, compute, self.force, on_wait=wait)[0]

    def map(
        self,
        key: str,
        function: Callable[[Any], Metrics],
        items: Sequence[Any],
        config: Mapping[str, Any],
        desc: str = "",
    ) -> list[Metrics]:
        return self.cached_all(item_pieces(key, function, items, config), desc=desc or key)

    def cached_all(self, pieces: Sequence[Piece], desc: str = "") -> list[Metrics]:
        shown = self.progress(pieces, total=len(pieces), desc=desc) if desc else iter(pieces)
        return [self.cached(p.key, p.config, functools.partial(p.compute, self)) for p in shown]

    def log(self, message: str) -> None:
        if not self.quiet:
            print(f"[{self.name}] {message}", file=sys.stderr, flush=True)


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are Python/JSON literals, else kept as strings.

    See :func:`overparam.engine.overrides.parse_value`: ``true``/``false`` are booleans and
    ``nan``/``inf`` floats (which the config check then refuses, naming the key).
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"`--set` expects key=value, got {pair!r}")
        out[key.strip()] = parse_value(text)
    return out


def resolve_config(
    experiment: Experiment, preset: str, overrides: Mapping[str, Any] | None
) -> Config:
    """The preset's config updated by ``overrides``, each checked against the presets' types.

    See :func:`overparam.engine.overrides.check_overrides` for the rules.
    """
    if preset not in experiment.presets:
        raise ValueError(f"`preset` must be one of {sorted(experiment.presets)}, got {preset!r}")
    return {**experiment.presets[preset], **check_overrides(experiment, overrides)}


def _judge(experiment: Experiment, config: Config, metrics: Metrics) -> list[dict[str, Any]]:
    verdicts: dict[str, Verdict] = {v.id: v for v in experiment.judge(config, metrics)}
    claims = []
    for claim in experiment.claims:
        verdict = verdicts.get(claim.id)
        entry = {"id": claim.id, "statement": claim.statement, "source": claim.source}
        if verdict is None:
            entry.update(measured=None, reproduced=False, note="not measured by this run")
        else:
            entry.update({k: v for k, v in asdict(verdict).items() if k != "id"})
        claims.append(to_jsonable(entry))
    return claims


def _write_json(path: Path, value: Any) -> None:
    write_json(path, to_jsonable(value))


def _plot(experiment: Experiment, config: Config, metrics: Metrics, directory: Path) -> list[str]:
    if experiment.plot is None:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, figure in experiment.plot(config, metrics).items():
        for suffix in ("png", "pdf"):
            with atomic_path(directory / f"{name}.{suffix}") as tmp:
                figure.savefig(tmp, dpi=120, bbox_inches="tight", format=suffix)
            written.append(f"{name}.{suffix}")
        plt.close(figure)
    return written


def _figures_of(summary: Path) -> list[str]:
    """The figure files listed in an existing ``summary.json`` (none when absent or unreadable)."""
    try:
        figures = json.loads(summary.read_text()).get("figures", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [f for f in figures if isinstance(f, str) and Path(f).name == f]


def run_directory_lock(plan: RunPlan) -> AbstractContextManager[None]:
    """The lock held while a run writes its directory, so that concurrent runs of different configs
    into one directory leave the files of one of them, never a mix."""
    where = str(plan.directory.resolve())
    return key_lock(plan.store.locks / f"dir-{config_hash('directory', {'path': where})}.lock")


def run_directory(root: str | Path, name: str, preset: str) -> Path:
    """Where a run of experiment ``name`` at ``preset`` writes its files: ``root/name/preset``."""
    return Path(root) / name / preset


@dataclass(frozen=True)
class RunPlan:
    """One run, resolved: the experiment, its config, store kind, output root and directory."""

    experiment: Experiment
    preset: str
    config: Config
    kind: str
    root: Path
    directory: Path
    store: Store
    default_directory: bool

    @property
    def name(self) -> str:
        return self.experiment.name


def prepare_run(
    name: str,
    preset: str = "quick",
    overrides: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    directory: str | Path | None = None,
) -> RunPlan:
    """Resolve and check a run's config and open its store; nothing is computed or written."""
    experiment = get(name)
    config = resolve_config(experiment, preset, overrides)
    root = Path(out) if out is not None else DEFAULT_OUT
    where = Path(directory) if directory is not None else run_directory(root, name, preset)
    store = Store(root / "store.sqlite")
    kind = f"{name}@v{experiment.version}"
    return RunPlan(experiment, preset, config, kind, root, where, store, directory is None)


def compute_run(
    plan: RunPlan, force: bool = False, quiet: bool = False
) -> tuple[Metrics, bool, float]:
    """The run's stored metrics, or computed (with a :class:`Context`) and stored: (metrics,
    cached, seconds)."""
    start = time.perf_counter()
    context = Context(plan.store, plan.name, force, quiet)

    def compute() -> Metrics:
        with intra_op_threads(plan.experiment.threads):
            return plan.experiment.run(dict(plan.config), context)

    wait = functools.partial(context.log, "waiting for another process computing this config")
    metrics, cached = plan.store.get_or_compute(
        plan.kind, plan.config, compute, force, on_wait=wait
    )
    return metrics, cached, time.perf_counter() - start


def finish_run(
    plan: RunPlan, metrics: Metrics, cached: bool, seconds: float, plots: bool = True
) -> dict[str, Any]:
    """Judge stored metrics and write the run directory; return ``summary.json``'s content."""
    experiment, config, directory, root = plan.experiment, plan.config, plan.directory, plan.root
    directory.mkdir(parents=True, exist_ok=True)
    summary = {
        "experiment": plan.name,
        "preset": plan.preset,
        "title": experiment.title,
        "directory": directory.relative_to(root).as_posix()
        if directory.is_relative_to(root)
        else str(directory),
        "config": config,
        "cached": cached,
        "seconds": seconds,
        "claims": _judge(experiment, config, metrics),
    }
    with run_directory_lock(plan):  # the files of one directory come from one run
        _write_json(directory / "config.json", config)
        threads = experiment.threads if experiment.threads is not None else torch.get_num_threads()
        record = run_record(directory / "run.json", plan.kind, config, threads, cached, seconds)
        _write_json(directory / "run.json", record)
        _write_json(directory / "metrics.json", metrics)
        previous = _figures_of(directory / "summary.json")
        figures = _plot(experiment, config, metrics, directory) if plots else []
        summary["figures"] = figures
        _write_json(directory / "summary.json", summary)
        for stale in sorted(set(previous) - set(figures)):
            (directory / stale).unlink(missing_ok=True)  # the previous run's, not this one's
        if plan.default_directory:
            _write_json(root / plan.name / "summary.json", summary)  # the last run, either preset
    return summary


def run_experiment(
    name: str,
    preset: str = "quick",
    overrides: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    force: bool = False,
    quiet: bool = False,
    plots: bool = True,
    directory: str | Path | None = None,
) -> dict[str, Any]:
    """Run (or reuse) experiment ``name`` and write its directory; return ``summary.json``'s content.

    Args:
        name: a registered experiment.
        preset: ``"quick"`` or ``"full"``.
        overrides: config keys to replace (``--set key=value``).
        out: output root (default ``runs``); results go to ``out/name/preset/``, the store to
            ``out/store.sqlite``.
        force: recompute even when the store has the result.
        quiet: no progress bars or log lines.
        plots: draw the figures.
        directory: write the run's files here instead of ``out/name/preset/`` (sweep points).
    """
    plan = prepare_run(name, preset, overrides, out, directory)
    metrics, cached, seconds = compute_run(plan, force, quiet)
    return finish_run(plan, metrics, cached, seconds, plots)

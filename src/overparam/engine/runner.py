"""Run a registered experiment: resolve its config, reuse or compute metrics, judge, write, plot.

Each run writes into ``<out>/<name>/``: ``config.json``, ``metrics.json``, ``summary.json`` and the
figures (PNG and PDF).  Metrics live in ``<out>/store.sqlite``; a second identical invocation
returns from the store, ``force=True`` recomputes.
"""

from __future__ import annotations

import ast
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from overparam._threads import intra_op_threads
from overparam.engine.experiment import Config, Experiment, Metrics, Verdict
from overparam.engine.registry import get
from overparam.engine.store import Store, to_jsonable

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
        if not self.force:
            found = self.store.get(kind, config)
            if found is not None:
                return found
        start = time.perf_counter()
        result = compute()
        return self.store.put(kind, config, result, time.perf_counter() - start)

    def log(self, message: str) -> None:
        if not self.quiet:
            print(f"[{self.name}] {message}", file=sys.stderr, flush=True)


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are Python/JSON literals, else kept as strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"`--set` expects key=value, got {pair!r}")
        try:
            out[key.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            lowered = text.strip().lower()
            out[key.strip()] = {"true": True, "false": False}.get(lowered, text)
    return out


def resolve_config(
    experiment: Experiment, preset: str, overrides: Mapping[str, Any] | None
) -> Config:
    """The preset's config updated by ``overrides`` (each key must exist in the preset)."""
    if preset not in experiment.presets:
        raise ValueError(f"`preset` must be one of {sorted(experiment.presets)}, got {preset!r}")
    config = dict(experiment.presets[preset])
    for key, value in (overrides or {}).items():
        if key not in config:
            raise ValueError(
                f"unknown config key {key!r} for {experiment.name}; known: {', '.join(sorted(config))}"
            )
        config[key] = value
    return config


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
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(to_jsonable(value), indent=2, sort_keys=False))
    tmp.replace(path)


def _plot(experiment: Experiment, config: Config, metrics: Metrics, directory: Path) -> list[str]:
    if experiment.plot is None:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, figure in experiment.plot(config, metrics).items():
        for suffix in ("png", "pdf"):
            figure.savefig(directory / f"{name}.{suffix}", dpi=120, bbox_inches="tight")
            written.append(f"{name}.{suffix}")
        plt.close(figure)
    return written


def run_experiment(
    name: str,
    preset: str = "quick",
    overrides: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    force: bool = False,
    quiet: bool = False,
    plots: bool = True,
) -> dict[str, Any]:
    """Run (or reuse) experiment ``name`` and write its directory; return ``summary.json``'s content.

    Args:
        name: a registered experiment.
        preset: ``"quick"`` or ``"full"``.
        overrides: config keys to replace (``--set key=value``).
        out: output root (default ``runs``); results go to ``out/name/``, the store to
            ``out/store.sqlite``.
        force: recompute even when the store has the result.
        quiet: no progress bars or log lines.
        plots: draw the figures.
    """
    experiment = get(name)
    config = resolve_config(experiment, preset, overrides)
    root = Path(out) if out is not None else DEFAULT_OUT
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    store = Store(root / "store.sqlite")
    kind = f"{name}@v{experiment.version}"
    metrics = None if force else store.get(kind, config)
    cached = metrics is not None
    start = time.perf_counter()
    if metrics is None:
        context = Context(store, name, force, quiet)
        with intra_op_threads(experiment.threads):
            raw = experiment.run(dict(config), context)
        metrics = store.put(kind, config, raw, time.perf_counter() - start)
    seconds = time.perf_counter() - start
    summary = {
        "experiment": name,
        "preset": preset,
        "title": experiment.title,
        "config": config,
        "cached": cached,
        "seconds": seconds,
        "claims": _judge(experiment, config, metrics),
    }
    _write_json(directory / "config.json", config)
    _write_json(directory / "metrics.json", metrics)
    if plots:
        summary["figures"] = _plot(experiment, config, metrics, directory)
    _write_json(directory / "summary.json", summary)
    return summary

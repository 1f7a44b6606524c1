"""Stored results of an output root, read back for reports: run directories, never a rerun.

A run of experiment ``name`` at ``preset`` lives in ``<root>/<name>/<preset>/`` (``summary.json``,
``run.json``, ``config.json``, figures); a directory written before presets had their own
sub-directory (``<root>/<name>/summary.json`` beside its figures) is read as the run of the preset
its summary names.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overparam.engine.registry import experiments

PRESETS = ("quick", "full")


@dataclass(frozen=True)
class StoredRun:
    """One stored run: its summary, the ``run.json`` record (None when absent) and its directory."""

    experiment: str
    preset: str
    directory: Path
    summary: dict[str, Any]
    record: dict[str, Any] | None = None
    figures: tuple[Path, ...] = field(default_factory=tuple)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _load(directory: Path, preset: str | None = None) -> StoredRun | None:
    path = directory / "summary.json"
    summary = _read_json(path)
    if not isinstance(summary, dict) or "experiment" not in summary or "claims" not in summary:
        if path.exists():
            warnings.warn(
                f"skipping {path}: not a readable run summary; rerun `overparam run "
                f"{directory.parent.name if preset else directory.name}` to rewrite it (finished "
                "results come back from the store)",
                UserWarning,
                stacklevel=3,
            )
        return None
    preset = preset or str(summary.get("preset", "quick"))
    if summary.get("preset", preset) != preset:
        return None
    record = _read_json(directory / "run.json")
    pngs = [directory / f for f in summary.get("figures", []) if str(f).endswith(".png")]
    return StoredRun(
        experiment=str(summary["experiment"]),
        preset=preset,
        directory=directory,
        summary=summary,
        record=record if isinstance(record, dict) else None,
        figures=tuple(pngs),
    )


def stored_runs(root: str | Path) -> list[StoredRun]:
    """Every run stored under ``root``, ordered by experiment (registry order, then unknown names
    alphabetically) and preset (``quick``, ``full``)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"`out` must be a directory of runs, got {str(root)!r} (not a directory)")
    runs = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        found = [_load(sub, sub.name) for sub in sorted(directory.iterdir()) if sub.is_dir()]
        here = [run for run in found if run is not None]
        legacy = _load(directory)
        if legacy is not None and "directory" not in legacy.summary:
            if all(run.preset != legacy.preset for run in here):
                here.append(legacy)
        runs += here
    rank = {name: i for i, name in enumerate(experiments())}
    return sorted(runs, key=lambda r: (*experiment_rank(r.experiment, rank), preset_rank(r.preset)))


def experiment_rank(name: str, rank: dict[str, int]) -> tuple[int, str]:
    """Sort key of an experiment: its registry position (unknown names last, alphabetically)."""
    return (rank.get(name, len(rank)), name)


def preset_rank(preset: str) -> tuple[int, str]:
    """Sort key of a preset: ``quick``, ``full``, then others alphabetically."""
    return (PRESETS.index(preset) if preset in PRESETS else len(PRESETS), preset)

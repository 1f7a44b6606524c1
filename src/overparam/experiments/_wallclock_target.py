"""Time to a target loss, learning-rate choice and the per-optimizer table of the wall-clock runs.

The target of seed ``s`` is the final training (probe) loss of the SGD baseline's seed ``s`` at its
chosen learning rate; every optimizer's seed ``s`` starts from the same initialization and sees the
same batches, so the comparison is paired.  The time (or step) at which a curve first reaches the
target is interpolated linearly between the two checkpoints that bracket the crossing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def first_crossing(
    xs: Sequence[float], losses: Sequence[float | None], target: float
) -> float | None:
    """The first ``x`` where the piecewise-linear curve ``(xs, losses)`` reaches ``<= target``.

    Points with a missing (``None``) or non-finite loss break the curve: no interpolation across
    them.  Returns ``xs[0]`` when the curve starts at or below the target, ``None`` if it never
    reaches it.
    """
    if len(xs) != len(losses):
        raise ValueError(f"`losses` must have one entry per x ({len(xs)}), got {len(losses)}")
    previous: tuple[float, float] | None = None
    for x, loss in zip(xs, losses, strict=True):
        if loss is None or not math.isfinite(loss):
            previous = None
            continue
        if loss <= target:
            if previous is None:
                return float(x)
            x0, l0 = previous
            return float(x0 + (l0 - target) / (l0 - loss) * (x - x0))
        previous = (float(x), float(loss))
    return None


def choose_lr(grid: dict[str, Any]) -> str | None:
    """The learning rate (a key of ``grid``) whose run has the lowest final loss; None if all diverged."""
    finite = {lr: run["final_loss"] for lr, run in grid.items() if run["final_loss"] is not None}
    return min(finite, key=lambda lr: finite[lr]) if finite else None


def _rounded(lr: float) -> float:
    """``lr`` to 3 significant digits (an extended rate keeps a short, stable cache key)."""
    return float(f"{lr:.3g}")


def search_lr(
    grid: Sequence[float], run: Callable[[float], dict[str, Any]], extend: int
) -> tuple[dict[str, Any], list[float], dict[str, int]]:
    """The runs of a learning-rate grid that extends itself while its best rate is at an edge.

    ``run(lr)`` is a run's metrics (``final_loss`` None when diverged).  After the grid's runs,
    while the best rate (:func:`choose_lr`) is the smallest of the grid, the rate
    ``lr_min * lr_min / lr_second`` (the grid's spacing at that edge, to 3 significant digits)
    is added and run, at most ``extend`` times; the same upwards with
    ``lr_max * lr_max / lr_second_largest``.  When every rate diverged the grid extends
    downwards.  A grid of one rate has no spacing and is not extended.

    Returns:
        ``({f"{lr:g}": run}, the final grid (sorted), {"down": added, "up": added})``.
    """
    if isinstance(extend, bool) or not isinstance(extend, int) or extend < 0:
        raise ValueError(f"`lr_extend` must be an integer >= 0, got {extend!r}")
    lrs = sorted({float(lr) for lr in grid})
    pieces = {f"{lr:g}": run(lr) for lr in lrs}
    added = {"down": 0, "up": 0}
    if len(lrs) < 2:
        return pieces, lrs, added
    factor = {"down": lrs[0] / lrs[1], "up": lrs[-1] / lrs[-2]}
    while True:
        chosen = choose_lr(pieces)
        side = "down" if chosen in (None, f"{lrs[0]:g}") else None
        side = "up" if chosen == f"{lrs[-1]:g}" else side
        if side is None or added[side] >= extend:
            return pieces, lrs, added
        edge = lrs[0] if side == "down" else lrs[-1]
        new = _rounded(edge * factor[side])
        if f"{new:g}" in pieces:  # a spacing too fine for 3 digits: nothing new to try
            return pieces, lrs, added
        pieces[f"{new:g}"] = run(new)
        lrs = sorted([*lrs, new])
        added[side] += 1


def at_edge(lr: float | None, lrs: Sequence[float]) -> bool:
    """Whether the chosen ``lr`` is the smallest or largest of a grid of more than 2 rates."""
    return lr is not None and len(lrs) > 2 and lr in (min(lrs), max(lrs))


def median_or_none(values: Sequence[float | None]) -> float | None:
    """Median with ``None`` read as "never" (+inf); None when the median itself is "never"."""
    if not values:
        return None
    finite = [math.inf if v is None else float(v) for v in values]
    value = float(np.median(finite))
    return value if math.isfinite(value) else None


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def reach(runs: list[dict[str, Any]], targets: list[float]) -> dict[str, Any]:
    """Seconds, CPU seconds and steps at which each seed's run reaches its seed's target."""
    out: dict[str, Any] = {"seconds": [], "cpu_seconds": [], "steps": []}
    for run, target in zip(runs, targets, strict=True):
        for key in out:
            out[key].append(first_crossing(run[key], run["loss"], target))
    for key in ("seconds", "cpu_seconds", "steps"):
        out[f"median_{key}"] = median_or_none(out[key])
    out["reached"] = sum(v is not None for v in out["seconds"])
    return out


def row(
    entry: dict[str, Any], targets: list[float], baseline_step_ms: float | None
) -> dict[str, Any]:
    """One table row: time and steps to target, final loss, held-out metrics, step time."""
    runs = entry["runs"]
    got = reach(runs, targets[: len(runs)])
    step_ms = float(np.median([r["step_ms"] for r in runs]))
    kinds = ("test_accuracy", "valid_loss", "train_cross_entropy")
    held = {k: _mean([r.get(k) for r in runs]) for k in kinds}
    return {
        "lr": entry["lr"],
        "lr_at_grid_edge": entry["lr_at_grid_edge"],
        "lr_grid": entry.get("lrs"),
        "seeds": len(runs),
        "reached": got["reached"],
        "seconds_to_target": got["median_seconds"],
        "cpu_seconds_to_target": got["median_cpu_seconds"],
        "steps_to_target": got["median_steps"],
        "per_seed_seconds": got["seconds"],
        "final_loss": _mean([r["final_loss"] for r in runs]),
        "diverged": sum(bool(r["diverged"]) for r in runs),
        **{k: v for k, v in held.items() if v is not None},
        "step_ms": step_ms,
        "cpu_step_ms": float(np.median([r.get("cpu_step_ms", math.nan) for r in runs])),
        "step_ratio": step_ms / baseline_step_ms if baseline_step_ms else None,
        "train_seconds": float(np.mean([r["train_seconds"] for r in runs])),
        "load": [max(r["load"][0] for r in runs), max(r["load"][1] for r in runs)],
    }


def table(task: dict[str, Any]) -> dict[str, Any]:
    """Rows of every available optimizer of one task, against the ``sgd`` baseline's targets."""
    entries = task["optimizers"]
    base = entries.get("sgd", {})
    if not base.get("runs"):
        return {"targets": None, "rows": {}}
    targets = [r["final_loss"] for r in base["runs"]]
    if any(t is None for t in targets):
        return {"targets": targets, "rows": {}}
    rows: dict[str, Any] = {}
    base_ms = float(np.median([r["step_ms"] for r in base["runs"]]))
    for name, entry in entries.items():
        if entry.get("runs"):
            rows[name] = row(entry, targets, base_ms)
    return {"targets": targets, "rows": rows}


def sooner(ours: float | None, theirs: float | None) -> bool:
    """Whether a time ``ours`` beats ``theirs`` (None = never reached; never beats nothing)."""
    if ours is None:
        return False
    return theirs is None or ours < theirs


def best(rows: dict[str, Any], names: Sequence[str], key: str = "seconds_to_target") -> str | None:
    """The name among ``names`` (present in ``rows``) with the smallest ``rows[name][key]``.

    Ties and "never reached" are broken by the lower final loss.
    """
    present = [n for n in names if n in rows]
    if not present:
        return None

    def order(name: str) -> tuple[float, float]:
        t, loss = rows[name][key], rows[name]["final_loss"]
        return (math.inf if t is None else t, math.inf if loss is None else loss)

    return min(present, key=order)


def _cell(value: float | None, digits: str = ".3g") -> str:
    return "never" if value is None else format(value, digits)


def _final(row: dict[str, Any]) -> str:
    """The final training loss, with its cross-entropy part where the objective has an L2 term."""
    text = _cell(row["final_loss"], ".4g")
    if "train_cross_entropy" in row:
        text += f" (CE {_cell(row['train_cross_entropy'], '.3g')})"
    return text


def markdown(metrics: dict[str, Any]) -> str:
    """The per-optimizer table of every task (Markdown), from stored metrics.

    Columns: learning rate (marked "grid edge" where it is still the smallest or largest rate
    of its grid after the grid's extension), seeds reaching the SGD baseline's final loss, median wall-clock and
    thread-CPU seconds and steps to it, mean final training loss (and its cross-entropy part
    where the objective has an L2 term), mean test accuracy (validation
    loss for the text task), median wall-clock and mean CPU step time, the wall step time's ratio
    to SGD's.
    """
    lines = [
        "| task | optimizer | lr | reached | s to target (wall) | s (CPU) | steps | final loss "
        "| test acc. / valid. loss | ms/step (wall) | ms/step (CPU) | x SGD step |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task, result in metrics["tasks"].items():
        for name, entry in result["optimizers"].items():
            r = result["rows"].get(name)
            if r is None:
                why = entry.get("reason", "diverged at every learning rate")
                lines.append(f"| {task} | {name} | | {why} | | | | | | | | |")
                continue
            held = r.get("test_accuracy", r.get("valid_loss"))
            edge = " (grid edge)" if r["lr_at_grid_edge"] else ""
            lines.append(
                f"| {task} | {name} | {r['lr']:g}{edge} | {r['reached']}/{r['seeds']} "
                f"| {_cell(r['seconds_to_target'])} | {_cell(r['cpu_seconds_to_target'])} "
                f"| {_cell(r['steps_to_target'], '.0f')} | {_final(r)} "
                f"| {_cell(held, '.4g')} | {r['step_ms']:.3g} | {r['cpu_step_ms']:.3g} "
                f"| {_cell(r['step_ratio'], '.2f')} |"
            )
    return "\n".join(lines)

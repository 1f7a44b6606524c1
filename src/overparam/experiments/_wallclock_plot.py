"""Figures of the wall-clock experiment, drawn from stored metrics (never by retraining)."""

from __future__ import annotations

from typing import Any

from overparam.engine import Config, Metrics
from overparam.experiments._wallclock_verdicts import TASK_NAMES

AXES = {
    "seconds": "training time (s, wall clock, one CPU thread; evaluation excluded)",
    "steps": "optimizer steps",
}


def _draw(ax: Any, task: dict[str, Any], x: str, colors: dict[str, Any]) -> None:
    for name, entry in task["optimizers"].items():
        for k, run in enumerate(entry.get("runs", [])):
            label = f"{name} (lr {entry['lr']:g})" if k == 0 else None
            ax.plot(run[x], run["loss"], color=colors[name], alpha=0.85, lw=1.2, label=label)
    targets = task.get("targets") or []
    finite = [t for t in targets if t is not None]
    if finite:
        ax.axhline(
            sum(finite) / len(finite), color="black", ls="--", lw=0.8,
            label="target: SGD final loss (mean over seeds)",
        )  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel(AXES[x])
    ax.set_ylabel("training loss on the probe set (nats)")


def plot(config: Config, metrics: Metrics) -> dict[str, Any]:
    """``training_loss``: per task, the loss against wall-clock seconds (top, the practitioner's
    axis) and against steps (bottom, the source's axis); every seed is a line."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    tasks = [t for t in config["tasks"] if t in metrics["tasks"]]
    fig = Figure(figsize=(5.0 * len(tasks), 8.2), layout="constrained")
    palette = colormaps["tab10"]
    colors = {name: palette(i % 10) for i, name in enumerate(config["optimizers"])}
    for i, name in enumerate(tasks):
        top = fig.add_subplot(2, len(tasks), i + 1)
        bottom = fig.add_subplot(2, len(tasks), len(tasks) + i + 1)
        for ax, x in ((top, "seconds"), (bottom, "steps")):
            _draw(ax, metrics["tasks"][name], x, colors)
        top.set_title(TASK_NAMES[name], fontsize=10)
        # below the lower axes, so that it hides no curve
        bottom.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2, fontsize=7)
    missing = [
        f"{n}: {e['reason']}" for n, e in metrics["tasks"][tasks[0]]["optimizers"].items()
        if not e.get("available", True)
    ]  # fmt: skip
    fig.suptitle(
        f"Training loss against wall-clock time and steps; {config['seeds']} seed(s) per "
        "optimizer, one line each" + (f"\nnot run: {'; '.join(missing)}" if missing else "")
    )
    return {"training_loss": fig}

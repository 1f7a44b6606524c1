"""Claims of the wall-clock experiment and their verdicts, read from the stored tables."""

from __future__ import annotations

from typing import Any

from overparam.engine import Claim, Config, Metrics, Verdict
from overparam.experiments._wallclock_target import best, sooner
from overparam.experiments._wallclock_tasks import TASKS

CLOCKS = {
    "wall": ("seconds_to_target", "cpu_seconds_to_target"),
    "cpu": ("cpu_seconds_to_target", "seconds_to_target"),
}
PRACTICE = "not in the source: practitioner comparison"
OURS = {
    "over": ("overparameterized SGD", ("over-sgd-2", "over-sgd-3")),
    "e2e": ("EndToEndSGD", ("e2e-2", "e2e-3", "e2e-2-amortized", "e2e-3-amortized")),
}
RIVALS = {"sgd": "SGD", "adamw": "AdamW", "muon": "Muon"}
TASK_NAMES = {
    "convnet": "the source's MNIST ConvNet",
    "mlp": "an MNIST MLP",
    "charlm": "a character-level transformer on the stdlib sources",
}
# (claim number, our family, rival) for P2 .. P7
COMPARISONS = [
    (2, "over", "sgd"),
    (3, "over", "adamw"),
    (4, "over", "muon"),
    (5, "e2e", "sgd"),
    (6, "e2e", "adamw"),
    (7, "e2e", "muon"),
]


def _claims() -> tuple[Claim, ...]:
    out = [
        Claim(
            "P1",
            "On the source's MNIST ConvNet, SGD on the overparameterized model (depth 2) reaches "
            "the SGD baseline's final training loss in an order of magnitude fewer steps.",
            "seed 001 slides (A11): 'orders-of-magnitude' faster training loss",
        )
    ]
    for number, ours, rival in COMPARISONS:
        for task in TASKS:
            source = PRACTICE
            if rival == "sgd":
                source = f"{PRACTICE} (the source counts iterations, not seconds: A11)"
            out.append(
                Claim(
                    f"P{number}-{task}",
                    f"On {TASK_NAMES[task]}, {OURS[ours][0]} (best of its variants) reaches the "
                    f"SGD baseline's final training loss sooner in wall-clock time than "
                    f"{RIVALS[rival]}.",
                    source,
                )
            )
    return tuple(out)


CLAIMS = _claims()


def _fmt(value: float | None, unit: str = "") -> str:
    return "never" if value is None else f"{value:.3g}{unit}"


def _reached(row: dict[str, Any], key: str) -> str:
    runs, ms = f"{row['reached']}/{row['seeds']} seeds", f"{row['step_ms']:.3g} ms/step"
    if row[key] is None:
        return f"never reaches the target ({runs}, {ms})"
    return f"reaches it in {row[key]:.3g} s ({runs}, {_fmt(row['steps_to_target'])} steps, {ms})"


def _scale(config: Config, task: str, rows: dict[str, Any]) -> str:
    seeds = config["seeds"]
    sgd = rows.get("sgd", {})
    text = (
        f"{config[f'{task}_steps']} steps, {seeds} seed(s)"
        + ("" if seeds >= 3 else " (fewer than the 3 of the full preset)")
        + f", one CPU thread; SGD step {_fmt(sgd.get('step_ms'), ' ms')}"
    )
    edges = sorted(n for n, r in rows.items() if r["lr_at_grid_edge"])
    load = max(max(r["load"]) for r in rows.values())
    text += f"; highest 1-minute load average during the runs {load:.2g}"
    if edges:
        grown = config["lr_extend"]
        text += (
            f"; learning rate still at the edge of its grid (extended up to {grown} time(s) "
            f"each way) for {', '.join(edges)}"
        )
    return text


def _p1(config: Config, metrics: Metrics) -> Verdict:
    task = metrics["tasks"].get("convnet")
    rows = task["rows"] if task else {}
    if "sgd" not in rows or "over-sgd-2" not in rows:
        return Verdict(
            "P1", "not run", False, "the convnet task with sgd and over-sgd-2 did not run"
        )
    base, over = rows["sgd"]["steps_to_target"], rows["over-sgd-2"]["steps_to_target"]
    speedup = base / over if base is not None and over else None
    need = config["min_speedup"]
    measured = {"steps_sgd": base, "steps_over_sgd_2": over, "speedup": speedup}
    note = (
        f"median steps to the SGD baseline's final probe loss: SGD {_fmt(base)}, "
        f"overparameterized depth 2 {_fmt(over)}, speed-up {_fmt(speedup)}x (threshold {need:g}x); "
        f"{_scale(config, 'convnet', rows)}; the source trains 10 epochs"
    )
    return Verdict("P1", measured, speedup is not None and speedup >= need, note)


def _compare(
    config: Config, metrics: Metrics, number: int, ours: str, rival: str, task: str
) -> Verdict:
    cid = f"P{number}-{task}"
    result = metrics["tasks"].get(task)
    if result is None:
        return Verdict(cid, "not run", False, f"task {task!r} was not in this run's `tasks`")
    rows, (label, names) = result["rows"], OURS[ours]
    key, other = CLOCKS[config["clock"]]
    pick = best(rows, names, key)
    if pick is None or rival not in rows:
        missing = label if pick is None else RIVALS[rival]
        return Verdict(cid, "not run", False, f"{missing} did not run (or diverged) on {task}")
    mine, theirs = rows[pick], rows[rival]
    won, other_won = sooner(mine[key], theirs[key]), sooner(mine[other], theirs[other])
    ratio = theirs[key] / mine[key] if mine[key] and theirs[key] is not None else None
    measured = {
        "ours": pick,
        "clock": config["clock"],
        "s": mine[key],
        f"{rival}_s": theirs[key],
        "speedup": ratio,
    }
    names_ = {"seconds_to_target": "wall clock", "cpu_seconds_to_target": "thread CPU time"}
    note = (
        f"{names_[key]}: {pick} (best of {label}) {_reached(mine, key)}; {RIVALS[rival]} "
        f"{_reached(theirs, key)}: {label} {'wins' if won else 'loses'}"
        + (f" ({ratio:.3g}x sooner)" if ratio is not None and won else "")
        + (
            f"; {names_[other]} agrees"
            if other_won == won
            else f"; in {names_[other]} it {'wins' if other_won else 'loses'}"
        )
        + f"; {_scale(config, task, rows)}"
    )
    return Verdict(cid, measured, won, note)


def judge(config: Config, metrics: Metrics) -> list[Verdict]:
    """P1 from the ConvNet's steps; P2-P7 per task from the median seconds to the target."""
    out = [_p1(config, metrics)]
    for number, ours, rival in COMPARISONS:
        out += [_compare(config, metrics, number, ours, rival, task) for task in TASKS]
    return out

"""Parameter sweeps: the Cartesian product of config overrides, each point an ordinary cached run.

``overparam sweep NAME --grid KEY=V1,V2 [--grid KEY2=...]`` runs every point (serially or on a
Dask cluster, see :mod:`overparam.engine.distributed`), writes ``<out>/sweeps/<NAME>/sweep.csv``
(the swept keys against each claim's measured value and verdict) and a figure of one measured value
against the first swept key, one line per combination of the other keys.
"""

from __future__ import annotations

import ast
import csv
import itertools
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from overparam.engine.files import atomic_path
from overparam.engine.report import compact


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets, braces, parentheses or quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {"true": True, "false": False}.get(text.lower(), text)


def parse_grid(pairs: Sequence[str]) -> dict[str, list[Any]]:
    """``["lr=0.1,0.2", "ps=[2,4],[4]"]`` -> ``{"lr": [0.1, 0.2], "ps": [[2, 4], [4]]}``.

    Values are Python literals (lists in brackets keep their commas), else strings.
    """
    grid: dict[str, list[Any]] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise ValueError(f"`--grid` expects KEY=V1,V2,..., got {pair!r}")
        if key in grid:
            raise ValueError(f"`--grid` names {key!r} twice")
        values = [_literal(part) for part in _split_top_level(text)]
        if any(part == "" for part in _split_top_level(text)):
            raise ValueError(f"`--grid` {key}: empty value in {text!r}")
        grid[key] = values
    if not grid:
        raise ValueError("`--grid` must be given at least once")
    return grid


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the last key varying fastest."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def point_label(point: Mapping[str, Any]) -> str:
    """A directory name for one point: ``lr=0.1_ps=2-4`` (runs of other characters become ``-``)."""

    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")

    return "_".join(f"{clean(k)}={clean(compact(v))}" for k, v in point.items())[:120]


def numeric_leaves(summary: Mapping[str, Any]) -> dict[str, float]:
    """Every finite number among the claims' measured values, named ``ID:outer.inner``."""
    out: dict[str, float] = {}

    def walk(value: Any, name: str) -> None:
        if isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, int | float):
            if math.isfinite(value):
                out[name] = float(value)
        elif isinstance(value, Mapping):
            for key, inner in value.items():
                walk(inner, f"{name}.{key}" if not name.endswith(":") else f"{name}{key}")

    for claim in summary["claims"]:
        walk(claim.get("measured"), f"{claim['id']}:")
    return {k.rstrip(":"): v for k, v in out.items()}


def sweep_rows(
    points: Sequence[Mapping[str, Any]], summaries: Sequence[Mapping[str, Any] | None]
) -> list[dict[str, Any]]:
    """One row per point: the swept values, then each claim's measured value and verdict."""
    rows = []
    for point, summary in zip(points, summaries, strict=True):
        row: dict[str, Any] = {k: compact(v) for k, v in point.items()}
        if summary is None:
            row["status"] = "failed"
        else:
            row["status"] = "stored" if summary["cached"] else "computed"
            for claim in summary["claims"]:
                row[f"{claim['id']} measured"] = compact(claim.get("measured"))
                row[f"{claim['id']} reproduced"] = "yes" if claim.get("reproduced") else "no"
        rows.append(row)
    return rows


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``rows`` (union of their columns, in first-seen order) as CSV."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def format_rows(rows: Sequence[Mapping[str, Any]], width: int = 100) -> str:
    """A text table of the sweep: the swept keys and the verdict columns, each row cut at ``width``."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns and not c.endswith(" measured")]
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    lines = [fmt.format(*columns), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in cells]
    return "\n".join(line[:width].rstrip() for line in lines)


def choose_metric(summaries: Sequence[Mapping[str, Any] | None], metric: str | None) -> str:
    """``metric`` if some point measured it, else (``None``) the first numeric measured value."""
    names: list[str] = []
    for summary in summaries:
        if summary is not None:
            names += [n for n in numeric_leaves(summary) if n not in names]
    if not names:
        raise ValueError("no claim of this sweep measured a number to plot")
    if metric is None:
        return names[0]
    if metric not in names:
        raise ValueError(f"`--metric` must be one of {names[:12]}..., got {metric!r}")
    return metric


def plot_sweep(
    grid: Mapping[str, Sequence[Any]],
    points: Sequence[Mapping[str, Any]],
    summaries: Sequence[Mapping[str, Any] | None],
    metric: str,
    title: str,
) -> Any:
    """``metric`` against the first swept key, one line per combination of the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first, others = next(iter(grid)), list(grid)[1:]
    numeric_x = all(isinstance(v, int | float) and not isinstance(v, bool) for v in grid[first])
    ticks = list(range(len(grid[first])))
    figure, axis = plt.subplots(figsize=(6, 4))
    for combo in itertools.product(*(grid[k] for k in others)):
        fixed = dict(zip(others, combo, strict=True))
        xs, ys = [], []
        for point, summary in zip(points, summaries, strict=True):
            if any(point[k] != v for k, v in fixed.items()) or summary is None:
                continue
            value = numeric_leaves(summary).get(metric)
            if value is not None:
                position = grid[first].index(point[first])
                xs.append(point[first] if numeric_x else ticks[position])
                ys.append(value)
        label = ", ".join(f"{k}={compact(v)}" for k, v in fixed.items()) or metric
        axis.plot(xs, ys, marker="o", label=label if ys else f"{label}: not measured")
    if not numeric_x:
        axis.set_xticks(ticks, [compact(v) for v in grid[first]])
    elif all(v > 0 for v in grid[first]) and max(grid[first]) / min(grid[first]) >= 100:
        axis.set_xscale("log")
    axis.set_xlabel(f"{first} (swept config value)")
    axis.set_ylabel("\n".join(textwrap.wrap(f"{metric} (measured)", 36)), fontsize=9)
    axis.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=10)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def run_sweep(
    name: str,
    grid: Mapping[str, Sequence[Any]],
    preset: str,
    out: Path,
    *,
    client: Any | None = None,
    force: bool = False,
    plots: bool = True,
    metric: str | None = None,
) -> dict[str, Any]:
    """Run every point of ``grid`` (each an ordinary cached run in ``out/sweeps/NAME/LABEL/``),
    write ``sweep.csv`` and ``sweep.png``/``.pdf`` there; return the rows, files and failures."""
    from overparam.engine.batch import Request, run_requests
    from overparam.engine.registry import get
    from overparam.engine.runner import prepare_run

    title = get(name).title
    points = grid_points(grid)
    where = out / "sweeps" / name
    labels = [point_label(p) for p in points]
    labels = [
        f"{label}-{i}" if labels.count(label) > 1 else label for i, label in enumerate(labels)
    ]
    requests = [
        Request(name, preset, p, where / label) for p, label in zip(points, labels, strict=True)
    ]
    for r in requests:  # every point's config is checked before anything runs
        prepare_run(r.name, r.preset, r.overrides, out, r.directory)
    outcomes = run_requests(requests, out, client=client, force=force, plots=plots)
    summaries = [o.summary for o in outcomes]
    rows = sweep_rows(points, summaries)
    files = [str(write_csv(where / "sweep.csv", rows))]
    if any(s is not None for s in summaries):
        chosen = choose_metric(summaries, metric)
        figure = plot_sweep(grid, points, summaries, chosen, f"{name} sweep ({preset}): {title}")
        for suffix in ("png", "pdf"):
            with atomic_path(where / f"sweep.{suffix}") as tmp:
                figure.savefig(tmp, dpi=120, bbox_inches="tight", format=suffix)
            files.append(str(where / f"sweep.{suffix}"))
        import matplotlib.pyplot as plt

        plt.close(figure)
    failures = [(o.request.overrides, o.error) for o in outcomes if o.error is not None]
    return {"rows": rows, "files": files, "failures": failures}

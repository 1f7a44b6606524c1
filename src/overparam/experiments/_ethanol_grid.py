"""Ethanol data groups and seeded rate grids for the Section 8 experiments (Arora et al. 2018).

A *cell* is one method on one depth with its learning-rate grid (``{"name", "depth", "rates",
"optimizer", "hyper"}``).  A grid run trains every cell x seed x rate in one batched program per
optimizer setting; the near-zero init is drawn once per (depth, seed), from a generator seeded
``100 * seed + depth``, and shared by the whole rate grid, so the rate choice does not also choose
an init.  The fastest rate is the one with the lowest median (over seeds) final ``L - L*`` among
the rates at which no seed diverged; curves and checkpoints are reported as median with min-max.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from overparam.datasets.gas_sensor import BATCHES, gas_sensor_batches, standardize_columns
from overparam.engine import Config, Piece, RunContext
from overparam.engine.steps import log_steps
from overparam.models.deep_linear import initial_factors
from overparam.training import lp_optimum, stack_configs, train

# data group -> batches; "half-a" / "half-b": a fixed random half of all samples and the rest
GROUPS: dict[str, tuple[int, ...]] = {
    "all": BATCHES,
    "original": (1, 2, 3, 4, 5, 6, 8, 9),
    "b1-5": (1, 2, 3, 4, 5),
    "b6,8,9": (6, 8, 9),
    "b7,10": (7, 10),
    "half-a": BATCHES,
    "half-b": BATCHES,
}
HALF_SEED = 0
RECONSTRUCTED = (7, 10)


def group_data(name: str) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Standardized ``X (n, 128)``, ``Y (n, 1)`` of data group ``name`` and where it came from.

    Each group is standardized on its own samples (features and target: mean 0, variance 1).
    """
    if name not in GROUPS:
        raise ValueError(f"`data` groups must be in {sorted(GROUPS)}, got {name!r}")
    batches = GROUPS[name]
    parts, sources = gas_sensor_batches("ethanol", batches=batches)
    X = torch.cat([parts[b][0] for b in batches])
    y = torch.cat([parts[b][1] for b in batches])
    if name.startswith("half-"):
        perm = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(HALF_SEED))
        half = X.shape[0] // 2
        rows = perm[:half] if name == "half-a" else perm[half:]
        X, y = X[rows.sort().values], y[rows.sort().values]
    partial = [b for b in batches if b in sources.partial]
    info = {"samples": X.shape[0], "batches": list(batches), "reconstructed_batches": partial}
    return standardize_columns(X), standardize_columns(y.unsqueeze(-1)), info


def optimum(ctx: RunContext, X: Tensor, Y: Tensor, p: float) -> float:
    """``L*`` of the l_p problem (Newton, float64), cached in the run store."""
    key = {"p": p, "b": X.shape[0], "sum": float(X.sum()), "ysum": float(Y.sum()),
           "y2": float(Y.square().sum())}  # fmt: skip
    return float(ctx.cached("optimum", key, lambda: {"L*": lp_optimum(X, Y, p)[1]})["L*"])


def _inits(cells: list[dict[str, Any]], seeds: list[int], d: int, scale: float) -> list[Any]:
    """Configurations in the order cell, seed, rate: one init per (depth, seed), copied per rate."""
    configs = []
    for cell in cells:
        for seed in seeds:
            gen = torch.Generator().manual_seed(100 * seed + cell["depth"])
            init = initial_factors([d] + [1] * cell["depth"], "near_zero", scale, gen)
            configs += [[W.clone() for W in init] for _ in cell["rates"]]
    return configs


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Median, min and max of ``values`` (None counts as +inf: a diverged run)."""
    vals = [math.inf if v is None else float(v) for v in values]
    finite = lambda v: None if not math.isfinite(v) else v  # noqa: E731
    return {"median": finite(statistics.median(vals)), "min": finite(min(vals)),
            "max": finite(max(vals)), "per_seed": [finite(v) for v in vals]}  # fmt: skip


def _cell_result(
    cell: dict[str, Any], gaps: Tensor, div: list[int | None], seeds: list[int]
) -> dict[str, Any]:
    """Selected rate (lowest median final gap, every seed stable) and its curve's spread."""
    rates, s = cell["rates"], len(seeds)
    final = gaps[:, -1].reshape(s, len(rates))  # (seed, rate)
    steps = [div[i * len(rates) : (i + 1) * len(rates)] for i in range(s)]
    stable = [all(steps[i][r] is None for i in range(s)) for r in range(len(rates))]
    medians = [statistics.median(final[:, r].tolist()) if stable[r] else None
               for r in range(len(rates))]  # fmt: skip
    out: dict[str, Any] = {
        "depth": cell["depth"], "optimizer": cell["optimizer"], "hyper": cell.get("hyper") or {},
        "rates": rates, "seeds": seeds, "median_final_per_rate": medians,
        "final_per_rate": [[None if steps[i][r] is not None else float(final[i, r])
                            for i in range(s)] for r in range(len(rates))],
        "diverged_step_per_rate": [[steps[i][r] for i in range(s)] for r in range(len(rates))],
        "lr": None, "gap": None, "final": None,
    }  # fmt: skip
    alive = [r for r in range(len(rates)) if medians[r] is not None]
    if not alive:
        return out
    best = min(alive, key=lambda r: medians[r])  # type: ignore[arg-type,return-value]
    curves = gaps.reshape(s, len(rates), -1)[:, best]  # (seed, R)
    out["lr"] = rates[best]
    out["gap"] = {
        "median": curves.quantile(0.5, dim=0).tolist(),
        "min": curves.min(dim=0).values.tolist(),
        "max": curves.max(dim=0).values.tolist(),
        "per_seed": curves.tolist(),
    }
    out["final"] = spread(curves[:, -1].tolist())
    return out


def _train_cells(
    X: Tensor,
    Y: Tensor,
    p: float,
    cells: list[dict[str, Any]],
    seeds: list[int],
    config: Config,
    progress: Any,
) -> tuple[list[int], Tensor, list[int | None], float]:
    """One batched :func:`train` call over every cell x seed x rate (each row its own optimizer
    setting, the data products shared); raw losses in the order cell, seed, rate."""
    factors, ds = stack_configs(_inits(cells, seeds, X.shape[1], config["scale"]))
    steps = int(config["steps"])
    checkpoints = [c for c in (10**4, 10**5, 3 * 10**5, 10**6) if c <= steps]
    record = sorted({*log_steps(steps, int(config["points"])), *checkpoints})
    rows = [(cell, r) for cell in cells for _ in seeds for r in cell["rates"]]
    res = train(X, Y, factors, lr=[r for _, r in rows], p=p, steps=steps,
                optimizer=[c["optimizer"] for c, _ in rows],
                hyper=[c.get("hyper") or None for c, _ in rows], depths=ds, record=record,
                progress=progress)  # fmt: skip
    return record, res.loss, res.diverged_step, res.seconds


def grid_piece(group: str, p: float, cells: list[dict[str, Any]], seeds: list[int],
               config: Config) -> Piece:  # fmt: skip
    """Every cell x seed x rate on data ``group`` as one independent cached piece (key
    ``"grid"``); its result has per cell the selected rate."""
    key = {
        "group": group,
        "p": p,
        "cells": cells,
        "seeds": seeds,
        "steps": int(config["steps"]),
        "points": int(config["points"]),
        "scale": config["scale"],
        "init": "near_zero",
    }
    compute = functools.partial(_grid_compute, group, p, cells, seeds, config)
    return Piece("grid", key, compute, f"grid {group} p={p}")


def _grid_compute(group: str, p: float, cells: list[dict[str, Any]], seeds: list[int],
                  config: Config, ctx: RunContext) -> dict[str, Any]:  # fmt: skip
    X, Y, info = group_data(group)
    star = optimum(ctx, X, Y, p)
    record, loss, div, seconds = _train_cells(X, Y, p, cells, seeds, config, ctx.progress)
    out: dict[str, Any] = {"L*": star, **info, "steps": record, "seconds": seconds, "cells": {}}
    rows = 0
    for cell in cells:
        k = len(seeds) * len(cell["rates"])
        gaps = loss[rows : rows + k] - star
        out["cells"][cell["name"]] = _cell_result(cell, gaps, div[rows : rows + k], seeds)
        rows += k
    ctx.log(f"{group} p={p}: {X.shape[0]} samples, {out['seconds']:.1f}s")
    return out


def seed_pieces(group: str, p: float, cells: list[dict[str, Any]], seeds: list[int],
                config: Config) -> list[Piece]:  # fmt: skip
    """As :func:`grid_piece`, one independent cached piece per seed (key ``"seed"``, the raw
    ``L - L*`` curves of every rate), so that an interrupted run keeps its finished seeds and a
    cluster trains the seeds in parallel; :func:`merge_seeds` makes them one result."""
    key = {
        "group": group,
        "p": p,
        "cells": cells,
        "steps": int(config["steps"]),
        "points": int(config["points"]),
        "scale": config["scale"],
        "init": "near_zero",
    }
    return [Piece("seed", {**key, "seed": s},
                  functools.partial(_seed_compute, group, p, cells, s, config),
                  f"seed {s} of {group} p={p}") for s in seeds]  # fmt: skip


def _seed_compute(group: str, p: float, cells: list[dict[str, Any]], seed: int, config: Config,
                  ctx: RunContext) -> dict[str, Any]:  # fmt: skip
    X, Y, info = group_data(group)
    star = optimum(ctx, X, Y, p)
    record, loss, div, seconds = _train_cells(X, Y, p, cells, [seed], config, ctx.progress)
    out: dict[str, Any] = {"L*": star, **info, "steps": record, "seconds": seconds, "cells": {}}
    rows = 0
    for cell in cells:
        k = len(cell["rates"])
        out["cells"][cell["name"]] = {"gap": (loss[rows : rows + k] - star).tolist(),
                                      "diverged_step": div[rows : rows + k]}  # fmt: skip
        rows += k
    ctx.log(f"{group} p={p} seed {seed}: {X.shape[0]} samples, {seconds:.1f}s")
    return out


def merge_seeds(pieces: list[dict[str, Any]], cells: list[dict[str, Any]],
                seeds: list[int]) -> dict[str, Any]:  # fmt: skip
    """The per-seed results of :func:`seed_pieces` (in seed order) as one :func:`grid_piece`-like
    result: per cell the selected rate and its curve's spread."""
    first = pieces[0]
    merged: dict[str, Any] = {k: first[k] for k in ("L*", "samples", "batches",
                                                    "reconstructed_batches", "steps")}  # fmt: skip
    merged["seconds"] = sum(piece["seconds"] for piece in pieces)
    merged["cells"] = {}
    for cell in cells:
        raw = [piece["cells"][cell["name"]] for piece in pieces]
        rows = [[math.nan if g is None else g for g in row] for r in raw for row in r["gap"]]
        gaps = torch.tensor(rows, dtype=torch.float64)  # stored NaN (diverged) come back None
        div = [step for r in raw for step in r["diverged_step"]]
        merged["cells"][cell["name"]] = _cell_result(cell, gaps, div, seeds)
    return merged


def final_median(run: dict[str, Any], cell: str) -> float:
    """The median final gap of ``cell``'s selected rate (+inf when every rate diverged)."""
    final = run["cells"][cell]["final"]
    return math.inf if final is None or final["median"] is None else final["median"]


def below(run_a: dict[str, Any], a: str, run_b: dict[str, Any], b: str) -> dict[str, Any]:
    """Whether ``a`` ends below ``b`` on medians; fragile when the min-max ranges overlap.

    A cell whose every rate diverged has no value and fails every comparison it enters.
    """
    fa, fb = run_a["cells"][a]["final"], run_b["cells"][b]["final"]
    ma, mb = final_median(run_a, a), final_median(run_b, b)
    holds = math.isfinite(ma) and math.isfinite(mb) and ma < mb  # a diverged method fails
    fragile = bool(fa and fb and fa["max"] is not None and fb["min"] is not None
                   and (fa["max"] >= fb["min"] if holds else fb["max"] >= fa["min"]))  # fmt: skip
    return {"holds": holds, "fragile": fragile, "median": [ma, mb]}


def checkpoint_spread(run: dict[str, Any], cell: str) -> dict[str, Any]:
    """Median / min / max of the selected rate's gap at 1e4, 1e5, 3e5 and 1e6 (those recorded)."""
    gap = run["cells"][cell]["gap"]
    if gap is None:
        return {}
    steps = run["steps"]
    return {str(c): spread([row[steps.index(c)] for row in gap["per_seed"]])
            for c in (10**4, 10**5, 3 * 10**5, 10**6) if c in steps}  # fmt: skip


def edge_cells(run: dict[str, Any]) -> list[str]:
    """Cells whose selected rate is the grid's smallest or its largest stable rate."""
    out = []
    for name, cell in run["cells"].items():
        stable = [r for r, m in zip(cell["rates"], cell["median_final_per_rate"], strict=True)
                  if m is not None]  # fmt: skip
        if cell["lr"] is not None and cell["lr"] in (min(cell["rates"]), max(stable)):
            out.append(name)
    return out

"""Arora, Cohen & Hazan (2018), Section 8, Figs. 3-4: l_p regression on UCI Ethanol.

``lp-depth`` (claim A8): GD on linear nets with width-1 hidden layers, depths 1/2/3, l2 and l4,
learning rate grid-searched per (p, depth), ``L - L*`` curves.  ``vs-adaptive`` (A9): l4,
AdaGrad/AdaDelta on depth 1 vs GD on depth 3, Adam on depths 1/2/3.

Measured (2-core machine shared with other jobs, load 4-5, one intra-op thread):

* l4 near the stability edge, ``overparam run lp-depth --full --set "ps=[4]" --set
  "depths=[2,3]" --set "lrs=[3e-4,3.5e-4,4e-4,4.5e-4,1e-3,1.1e-3,1.2e-3,1.3e-3,1.4e-3]"``
  (5 min 37 s): ``L - L*`` at 1e6 depth 2 = 0.0141 (rate 1.1e-3; 1.2e-3 diverged at step
  811,984), depth 3 = 0.0164 (rate 3.5e-4; 4e-4 diverged at the last recording, 1e6).  On the
  previous grid (1e-3 / 1.5e-3 and 3e-4 / 5e-4 around the edges) they were 0.0153 / 0.0185: the
  finer grid lowers both, depth 3 stays above depth 2 (ratio 1.16), so the order is not a grid
  artefact.  Nor is it the near-zero init: depth 3 halves ``L - L*`` only at step 28,994, but at
  1e6 its curve falls as ``t^-0.82``, so starting 29k steps earlier would lower the final gap
  by about 2.4%.  l4 GD diverges late (once ``W_e`` has grown), hence the full preset's grid
  is ~1.1-1.2 apart near each edge.
* ``overparam run lp-depth --full`` (18 rates, 10 min 25 s wall, 621 s of training): ``L - L*``
  at 1e6, l4 depths 1/2/3 = 0.0304 / 0.0141 / 0.0162 (rates 3e-3 / 1.1e-3 / 3.5e-4; paper
  3.7e-2 / 1.7e-2 / 6e-3), l2 = 0.0053 / 0.0049 / 0.0062 (paper 2.7e-3 / 3.5e-3 / 4e-3).  A8
  does not reproduce as stated: depths 2 and 3 both end ~2x below depth 1 on l4 and depth does
  not help l2, but depth 3 ends 14% above depth 2 instead of below it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from overparam.datasets.gas_sensor import gas_sensor
from overparam.engine import Claim, Config, Experiment, Metrics, RunContext, Verdict, register
from overparam.engine.steps import log_steps
from overparam.models.deep_linear import initial_factors
from overparam.training import lp_optimum, select_fastest, stack_configs, train

PAPER_A8 = {
    "l4": {"1": 3.7e-2, "2": 1.7e-2, "3": 6e-3},
    "l2": {"1": 2.7e-3, "2": 3.5e-3, "3": 4e-3},
}
PAPER_SAMPLES = 2565  # Ethanol records in all ten UCI batches
SUBSET_NOTE = (
    f"our Ethanol data is what the UCI batch files present give (the project's data lacks batches "
    f"7 and 10: 1316 of the paper's {PAPER_SAMPLES} samples; the loader warns which are missing) "
    "and we standardize features and target, so absolute values of L - L* are not comparable"
)


def ethanol(ctx: RunContext) -> tuple[Tensor, Tensor]:
    """Standardized Ethanol problem ``X (b, 128)``, ``Y (b, 1)`` in float64."""
    X, y = gas_sensor("ethanol")
    ctx.log(f"Ethanol: {X.shape[0]} samples x {X.shape[1]} features")
    return X, y.unsqueeze(-1)


def optimum(ctx: RunContext, X: Tensor, Y: Tensor, p: float) -> float:
    """``L*`` of the l_p problem (Newton, float64), cached in the run store."""
    key = {"p": p, "b": X.shape[0], "sum": float(X.sum()), "ysum": float(Y.sum())}
    return float(ctx.cached("optimum", key, lambda: {"L*": lp_optimum(X, Y, p)[1]})["L*"])


def width1_nets(
    depths: list[int], count: int, d: int, scale: float, seed: int, init: str = "near_zero"
) -> tuple[list[Tensor], list[int]]:
    """``count`` nets per depth with width-1 hidden layers, one generator seeded ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    configs = [
        initial_factors([d] + [1] * n, init, scale, gen) for n in depths for _ in range(count)
    ]
    return stack_configs(configs)


def grid_run(
    ctx: RunContext,
    X: Tensor,
    Y: Tensor,
    p: float,
    depths: list[int],
    config: Config,
    optimizer: str = "gd",
    lrs: list[float] | None = None,
) -> dict[str, Any]:
    """One batched run of ``depths x lrs``; per depth the curve of the fastest rate."""
    rates = [float(v) for v in (lrs or config["lrs"])]
    factors, ds = width1_nets(depths, len(rates), X.shape[1], config["scale"], config["seed"])
    checkpoints = [c for c in (10**4, 10**5, 10**6) if c <= int(config["steps"])]
    record = sorted({*log_steps(int(config["steps"]), int(config["points"])), *checkpoints})
    res = train(
        X,
        Y,
        factors,
        lr=rates * len(depths),
        p=p,
        steps=int(config["steps"]),
        optimizer=optimizer,
        depths=ds,
        record=record,
        progress=ctx.progress,
    )
    star = optimum(ctx, X, Y, p)
    out: dict[str, Any] = {"steps": record, "L*": star, "seconds": res.seconds, "depth": {}}
    for i, n in enumerate(depths):
        rows = slice(i * len(rates), (i + 1) * len(rates))
        div = res.diverged[rows]
        div_step = res.diverged_step[rows]
        if all(div):
            out["depth"][str(n)] = {
                "lr": None,
                "gap": None,
                "diverged_lrs": rates,
                "diverged_step_per_lr": div_step,
            }
            continue
        best = select_fastest(res.loss[rows], div, star)
        out["depth"][str(n)] = {
            "lr": rates[best],
            "gap": (res.loss[rows][best] - star).tolist(),
            "final_gap_per_lr": [
                None if d else float(v)
                for d, v in zip(div, res.loss[rows][:, -1] - star, strict=True)
            ],
            "diverged_lrs": [r for r, d in zip(rates, div, strict=True) if d],
            "diverged_step_per_lr": div_step,
        }
    ctx.log(f"{optimizer} p={p}: {res.seconds:.1f}s")
    return out


def final_gap(curve: dict[str, Any], depth: int) -> float:
    entry = curve["depth"][str(depth)]
    return math.inf if entry["gap"] is None or entry["gap"][-1] is None else entry["gap"][-1]


def escape_step(curve: dict[str, Any], depth: int) -> int | None:
    """First recorded step at which ``L - L*`` is below half its initial value."""
    gap = curve["depth"][str(depth)]["gap"]
    if not gap:
        return None
    return next(
        (s for s, g in zip(curve["steps"], gap, strict=True) if g is not None and g < 0.5 * gap[0]),
        None,
    )


def at_steps(curve: dict[str, Any], depth: int, checkpoints: list[int]) -> dict[str, float]:
    steps, gap = curve["steps"], curve["depth"][str(depth)]["gap"] or []
    return {str(c): gap[steps.index(c)] for c in checkpoints if c in steps and gap}


# ---------------------------------------------------------------- lp-depth (A8)
def run_lp_depth(config: Config, ctx: RunContext) -> Metrics:
    X, Y = ethanol(ctx)
    out = {}
    for p in config["ps"]:
        out[f"l{int(p)}"] = grid_run(ctx, X, Y, float(p), list(config["depths"]), config)
    return {"curves": out, "samples": X.shape[0]}


def _edge(curve: dict[str, Any], depth: int, rates: list[float]) -> bool:
    """Whether the selected rate is the grid's largest non-diverged or its smallest rate."""
    entry = curve["depth"][str(depth)]
    alive = [r for r in rates if r not in entry.get("diverged_lrs", [])]
    return entry["lr"] is not None and entry["lr"] in (min(rates), max(alive, default=None))


def next_divergence(curve: dict[str, Any], depth: int, rates: list[float]) -> list[float] | None:
    """``[rate, step]``: the smallest diverged rate above the selected one and the recorded step
    at which its divergence was detected (None if no rate above the selected one diverged)."""
    entry = curve["depth"][str(depth)]
    steps = entry.get("diverged_step_per_lr") or [None] * len(rates)
    above = [
        (r, s)
        for r, s in zip(rates, steps, strict=True)
        if s is not None and (entry["lr"] is None or r > entry["lr"])
    ]
    return list(min(above)) if above else None


def judge_lp_depth(config: Config, metrics: Metrics) -> list[Verdict]:
    """A8 as a claim about depth: l4, depths 2 and 3 end below depth 1 (and 3 below 2 once the
    run reaches the paper's 1e6 iterations); l2, depths 2 and 3 do not halve depth 1's gap."""
    curves, steps = metrics["curves"], int(config["steps"])
    checkpoints = sorted({c for c in (10**4, 10**5, 10**6) if c <= steps} | {steps})
    measured: dict[str, Any] = {"steps": steps, "samples": metrics.get("samples")}
    for loss, curve in curves.items():
        measured[loss] = {str(n): final_gap(curve, n) for n in config["depths"]}
        measured[loss + "_lr"] = {str(n): curve["depth"][str(n)]["lr"] for n in config["depths"]}
        measured[loss + "_checkpoints"] = {
            str(n): at_steps(curve, n, checkpoints) for n in config["depths"]
        }
    rates = [float(r) for r in config["lrs"]]
    nxt = {
        k: {str(n): next_divergence(curves[k], n, rates) for n in config["depths"]} for k in curves
    }
    measured["next_rate_diverged_at"] = nxt
    measured["paper_at_1e6"] = PAPER_A8
    l4 = curves.get("l4")
    escape = {str(n): escape_step(l4, n) for n in config["depths"]} if l4 else {}
    measured["l4_half_gap_step"] = escape
    g4, g2 = measured.get("l4", {}), measured.get("l2", {})
    inf = math.inf
    l4_faster = bool(g4) and max(g4.get("2", inf), g4.get("3", inf)) < g4.get("1", -inf)
    l4_ordered = bool(g4) and g4.get("3", inf) < g4.get("2", inf) < g4.get("1", -inf)
    need_order = steps >= 10**6
    l4_ok = l4_faster and (l4_ordered or not need_order)
    l2_ok = bool(g2) and min(g2.get("2", 0.0), g2.get("3", 0.0)) >= 0.5 * g2.get("1", inf)
    measured["checks"] = {
        "l4: depths 2,3 below depth 1": l4_faster,
        "l4: depth 3 below depth 2": l4_ordered,
        "l2: depths 2,3 not below half of depth 1": l2_ok,
    }
    edges = [
        f"{k} depth {n}" for k in curves for n in config["depths"] if _edge(curves[k], n, rates)
    ]
    note = (
        f"final L - L* after {steps} iterations, each (p, depth) at its grid-searched rate "
        f"(lowest final gap, no divergence). l4 depth 1/2/3: {[g4.get(k) for k in '123']}; l2: "
        f"{[g2.get(k) for k in '123']}; paper at 1e6: {PAPER_A8}. The order 3 < 2 is "
        + (
            "required (run reaches 1e6)"
            if need_order
            else "reported, not required: the paper states it at 1e6 iterations"
        )
        + f". From near-zero init the deeper nets first sit on a plateau: step where L - L* "
        f"halves, depths {list(escape)}: {list(escape.values())}"
        + f". Selected rate at the edge of the stable grid for: {edges or 'none'} (the fastest "
        "GD rate is usually just below the divergence threshold); l4 [next rate above the "
        f"selected one, step at which it diverged] per depth: {nxt.get('l4')} (l4 GD diverges "
        "late, once W_e has grown, so the stable edge is only found by running the whole "
        "horizon). " + SUBSET_NOTE + "; our L* "
        f"(l2 {curves.get('l2', {}).get('L*')}, l4 {curves.get('l4', {}).get('L*')}) is that of "
        "the standardized subset"
    )
    if steps < 10**6:
        note += f"; run has {steps} iterations, not the paper's 1e6"
    return [Verdict("A8", measured, l4_ok and l2_ok, note)]


def draw_curves(ax: Any, curve: dict[str, Any], prefix: str = "depth ") -> None:
    """``L - L*`` of each depth's selected rate on log-log axes (stored metrics only)."""
    steps = [max(s, 1) for s in curve["steps"]]
    for key, entry in curve["depth"].items():
        if entry["gap"] is not None:
            gap = [g if g is not None and g > 0 else float("nan") for g in entry["gap"]]
            ax.loglog(steps, gap, label=f"{prefix}{key} (lr {entry['lr']:g})")


def plot_curves(config: Config, metrics: Metrics) -> dict[str, Any]:
    from matplotlib.figure import Figure

    figures = {}
    for name, curve in metrics["curves"].items():
        fig = Figure(figsize=(5, 3.5))
        ax = fig.add_subplot()
        draw_curves(ax, curve)
        ax.set_xlabel("iteration")
        ax.set_ylabel("L - L*")
        ax.set_title(f"Ethanol, {name}")
        if ax.get_lines():
            ax.legend(fontsize=7)
        figures[name] = fig
    return figures


LP_DEPTH = register(
    Experiment(
        name="lp-depth",
        title="Arora et al. 2018 Fig. 3: depth accelerates l4 (not l2) regression on UCI Ethanol",
        claims=(
            Claim(
                "A8",
                "l4: deeper (width-1 hidden layers) converges faster; l2: depth does not help",
                "at 1e6 iterations L-L*: l4 3.7e-2/1.7e-2/6e-3, l2 2.7e-3/3.5e-3/4e-3 "
                "(depths 1/2/3)",
            ),
        ),
        presets={
            "quick": {
                "steps": 50000,
                "points": 40,
                "ps": [2, 4],
                "depths": [1, 2, 3],
                "lrs": [7e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2],
                "scale": 0.01,
                "seed": 0,
            },
            "full": {
                "steps": 10**6,
                "points": 200,
                "ps": [2, 4],
                "depths": [1, 2, 3],
                # factor ~2 apart, ~1.1-1.2 near the stability edges measured at 1e6 (l4 depth
                # 3: 3.5e-4 / 4e-4, depth 2: 1.1e-3 / 1.2e-3, depth 1: 2e-3 / 3e-3; l2 depth 1:
                # 2e-2 / 5e-2): "the rate giving the fastest convergence" (Section 8)
                "lrs": [
                    2e-4,
                    3e-4,
                    3.5e-4,
                    4e-4,
                    5e-4,
                    7e-4,
                    1e-3,
                    1.1e-3,
                    1.2e-3,
                    1.5e-3,
                    2e-3,
                    2.5e-3,
                    3e-3,
                    5e-3,
                    1e-2,
                    2e-2,
                    3e-2,
                    5e-2,
                ],
                "scale": 0.01,
                "seed": 0,
            },
        },
        run=run_lp_depth,
        judge=judge_lp_depth,
        plot=plot_curves,
        doc=__doc__ or "",
    )
)


# ---------------------------------------------------------------- vs-adaptive (A9)
VS_DOC = """l4 on Ethanol, each method at its grid-searched rate (final L - L* at 1e6).

Measured: ``overparam run vs-adaptive --full`` (18 min 20 s wall, 1097 s of training, 2-core
machine shared with other jobs at load ~5; a 1e5-step run took 126 s, so the estimate was ~21
min and the Adam grid was cut from 7 rates to the 5 around its optimum at 1e5, 3e-5 to 3e-3:
1e-2, 3e-2, 0.1 were the worst at 1e5 for every depth).  L - L*: GD depth 3 0.0161 (rate
3.5e-4, 4e-4 diverged at 1e6), AdaGrad 0.0326 (2e-2), AdaDelta 0.0157 (2e-2, 3e-2 diverged at
1e5), Adam depth 1/2/3 0.00155 / 0.00133 / 0.00135.  A9 does not reproduce as a whole:
AdaDelta ends 3% below depth-3 GD (at 1e5 it is 0.036 vs GD's 0.070; GD depth 3 leaves its
near-zero-init plateau only after 1.4e4-2.9e4 steps, init-dependent, measured in lp-depth); every other comparison holds.
"""


def run_vs_adaptive(config: Config, ctx: RunContext) -> Metrics:
    X, Y = ethanol(ctx)
    grids = config["grids"]
    return {
        "curves": {
            "gd": grid_run(ctx, X, Y, 4.0, [3], config, "gd", grids["gd"]),
            "adagrad": grid_run(ctx, X, Y, 4.0, [1], config, "adagrad", grids["adagrad"]),
            "adadelta": grid_run(ctx, X, Y, 4.0, [1], config, "adadelta", grids["adadelta"]),
            "adam": grid_run(ctx, X, Y, 4.0, [1, 2, 3], config, "adam", grids["adam"]),
        }
    }


def judge_vs_adaptive(config: Config, metrics: Metrics) -> list[Verdict]:
    """A9 from the final ``L - L*`` of each method at its grid-searched rate; a method whose
    every rate diverged has no value and fails every comparison it enters."""
    c = metrics["curves"]
    runs = {
        "gd3": (c["gd"], 3),
        "adagrad1": (c["adagrad"], 1),
        "adadelta1": (c["adadelta"], 1),
        **{f"adam{n}": (c["adam"], n) for n in (1, 2, 3)},
    }
    gap = {k: final_gap(curve, n) for k, (curve, n) in runs.items()}
    pairs = [
        ("gd3", "adagrad1"),
        ("gd3", "adadelta1"),
        ("adam1", "gd3"),
        ("adam2", "adam1"),
        ("adam3", "adam1"),
    ]
    finite = {k: math.isfinite(v) for k, v in gap.items()}
    checks = {f"{a} < {b}": finite[a] and finite[b] and gap[a] < gap[b] for a, b in pairs}
    all_diverged = [k for k, v in gap.items() if not math.isfinite(v)]
    grids = {k: [float(r) for r in v] for k, v in config["grids"].items()}
    edges = [k for k, (curve, n) in runs.items() if _edge(curve, n, grids[k.rstrip("123")])]
    steps = int(config["steps"])
    checkpoints = sorted({c for c in (10**4, 10**5, 10**6) if c <= steps} | {steps})
    measured = {
        "final_gap": {k: (v if math.isfinite(v) else None) for k, v in gap.items()},
        "lr": {k: curve["depth"][str(n)]["lr"] for k, (curve, n) in runs.items()},
        "checks": checks,
        "steps": config["steps"],
        "checkpoints": {k: at_steps(curve, n, checkpoints) for k, (curve, n) in runs.items()},
        "next_rate_diverged_at": {
            k: next_divergence(curve, n, grids[k.rstrip("123")]) for k, (curve, n) in runs.items()
        },
    }
    failed = [k for k, v in checks.items() if not v]
    note = (
        f"final L - L* (l4) after {config['steps']} iterations, each method at its grid-searched "
        f"rate; failed: {failed or 'none'}; every rate diverged for: {all_diverged or 'none'}; "
        f"selected rate at a grid edge for: {edges or 'none'} ([next rate above, step it "
        f"diverged]: {measured['next_rate_diverged_at']}). The paper shows curves (Fig. 4), "
        "no numbers; AdaDelta here has rho 0.9, eps 1e-6 and a grid-searched rate (the paper "
        "does not state its settings). " + SUBSET_NOTE
    )
    if config["steps"] < 10**6:
        note += f"; run has {config['steps']} iterations, not the paper's 1e6"
    return [Verdict("A9", measured, not failed, note)]


def plot_vs_adaptive(config: Config, metrics: Metrics) -> dict[str, Any]:
    """One figure as the paper's Fig. 4: every method's best curve of ``L - L*`` (l4)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.add_subplot()
    for method, curve in metrics["curves"].items():
        draw_curves(ax, curve, f"{method} depth ")
    ax.set_xlabel("iteration")
    ax.set_ylabel("L - L* (l4)")
    ax.set_title("Ethanol l4: depth vs explicit accelerators")
    if ax.get_lines():
        ax.legend(fontsize=7)
    return {"vs_adaptive": fig}


VS_ADAPTIVE = register(
    Experiment(
        name="vs-adaptive",
        title="Arora et al. 2018 Fig. 4: depth-3 GD vs AdaGrad/AdaDelta, Adam on depths 1-3 (l4)",
        claims=(
            Claim(
                "A9",
                "l4 Ethanol: depth-3 GD beats AdaGrad and AdaDelta on depth 1; Adam beats "
                "depth-3 GD; Adam on deeper nets beats Adam on depth 1",
                "qualitative (Fig. 4 curves)",
            ),
        ),
        presets={
            "quick": {
                "steps": 12000,
                "points": 30,
                "scale": 0.01,
                "seed": 0,
                "lrs": [],
                "grids": {
                    "gd": [7e-4, 1e-3],
                    "adagrad": [1e-2, 3e-2],
                    "adadelta": [1e-2, 3e-2],
                    "adam": [1e-3, 3e-3],
                },
            },
            "full": {
                "steps": 10**6,
                "points": 200,
                "scale": 0.01,
                "seed": 0,
                "lrs": [],
                "grids": {
                    "gd": [1e-4, 2e-4, 3e-4, 3.5e-4, 4e-4, 5e-4, 7e-4, 1e-3],
                    "adagrad": [1e-3, 3e-3, 1e-2, 2e-2, 3e-2, 0.1, 1.0],
                    "adadelta": [1e-3, 3e-3, 1e-2, 1.5e-2, 2e-2, 3e-2, 0.1, 1.0],
                    "adam": [3e-5, 1e-4, 3e-4, 1e-3, 3e-3],
                },
            },
        },
        run=run_vs_adaptive,
        judge=judge_vs_adaptive,
        plot=plot_vs_adaptive,
        doc=VS_DOC,
    )
)

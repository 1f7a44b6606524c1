"""Arora, Cohen & Hazan (2018), Section 8, Fig. 4: depth-3 GD vs AdaGrad / AdaDelta, and Adam on
depths 1/2/3, l4 regression on UCI Ethanol (claim A9).

Protocol as ``lp-depth`` (:mod:`overparam.experiments.arora_ethanol`): one near-zero init per
(depth, seed) shared by every rate and method, the fastest rate per method chosen on the median
final ``L - L*`` over seeds (among rates stable at every seed), verdicts on medians, marked
fragile when the seeds' min-max ranges of the two compared values overlap.  Per seed, every
method x rate runs in one batched program (one cached piece, so finished seeds survive an
interruption).

Optimizer settings: TensorFlow 1's defaults, the authors' framework, are primary
(:data:`overparam.training.optimizers.TF1_DEFAULTS`: AdaGrad initial accumulator 0.1 and no
epsilon; AdaDelta rho 0.95, epsilon 1e-8; Adam beta 0.9 / 0.999, epsilon 1e-8 in TF's
epsilon-hat form); torch's defaults (AdaGrad accumulator 0, eps 1e-10; AdaDelta rho 0.9, eps
1e-6) are reported beside for AdaGrad and AdaDelta.  Torch's Adam defaults are the same numbers
(only the place of epsilon differs), so Adam is run once.  The learning rate is grid-searched in
both settings; the grids have three rates (two for Adam) around the rates that were fastest on
the 1316 original-file samples (GD depth 3 3.5e-4, AdaGrad 2e-2, AdaDelta 2e-2; Adam between
3e-5 and 3e-3), 21 configurations per seed.  Measured cost (one thread): a step of all 63
configurations on 2565 samples takes about 2.4 ms of CPU, so the full preset needs about 40 CPU
minutes (far more wall time on a loaded machine).

Data: all 2565 samples, batches 7 and 10 reconstructed (see ``lp-depth``); standardized.

    overparam run vs-adaptive --quick
    overparam run vs-adaptive --full
"""

from __future__ import annotations

import math
from typing import Any

from overparam.engine import Claim, Config, Experiment, Metrics, RunContext, Verdict, register
from overparam.experiments._ethanol_grid import (
    below,
    checkpoint_spread,
    edge_cells,
    merge_seeds,
    seed_pieces,
)
from overparam.experiments.arora_ethanol import data_note, draw_cell
from overparam.training.optimizers import DEFAULTS, TF1_DEFAULTS

SETTINGS = {"tf1": TF1_DEFAULTS, "torch": DEFAULTS}
PAIRS = (("gd3", "adagrad1"), ("gd3", "adadelta1"), ("adam1", "gd3"), ("adam2", "adam1"),
         ("adam3", "adam1"))  # fmt: skip


def method_cells(config: Config) -> list[dict[str, Any]]:
    """One cell per configured method, with its setting's full hyperparameters."""
    cells = []
    for name, m in config["methods"].items():
        hyper = dict(SETTINGS[m["defaults"]][m["optimizer"]])
        cells.append({"name": name, "depth": int(m["depth"]), "optimizer": m["optimizer"],
                      "hyper": hyper, "defaults": m["defaults"],
                      "rates": [float(r) for r in m["rates"]]})  # fmt: skip
    return cells


def run_vs_adaptive(config: Config, ctx: RunContext) -> Metrics:
    """Every method x rate on each data group, one independent cached piece per group and seed
    (on a cluster, each a task of its own), merged per group."""
    seeds = [int(s) for s in config["seeds"]]
    cells = method_cells(config)
    groups = list(config["data"])
    pieces = [piece for g in groups for piece in seed_pieces(g, 4.0, cells, seeds, config)]
    results = ctx.cached_all(pieces)
    n = len(seeds)
    return {"runs": {g: merge_seeds(results[k * n : (k + 1) * n], cells, seeds)
                     for k, g in enumerate(groups)}}  # fmt: skip


def _checks(run: dict[str, Any], suffix: str) -> dict[str, Any]:
    """The A9 comparisons on medians (``suffix`` "-torch" swaps in torch-default AdaGrad/Delta)."""
    out = {}
    for a, b in PAIRS:
        b2 = b + suffix if b.startswith("ada") and b + suffix in run["cells"] else b
        if suffix and b2 == b:
            continue
        if a in run["cells"] and b2 in run["cells"]:
            out[f"{a} < {b2}"] = below(run, a, run, b2)
    return out


def _fmt(value: float | None) -> str:
    return "diverged" if value is None or not math.isfinite(value) else f"{value:.4g}"


def judge_vs_adaptive(config: Config, metrics: Metrics) -> list[Verdict]:
    """A9 on the first data group with TF1 defaults; torch defaults and other groups beside."""
    primary = config["data"][0]
    run = metrics["runs"][primary]
    main = _checks(run, "")
    torch_checks = _checks(run, "-torch")
    cells = run["cells"]
    measured: dict[str, Any] = {
        "data": primary, "steps": config["steps"], "seeds": config["seeds"],
        "final": {n: c["final"] for n, c in cells.items()},
        "lr": {n: c["lr"] for n, c in cells.items()},
        "checkpoints": {n: checkpoint_spread(run, n) for n in cells},
        "checks": main, "checks_torch_defaults": torch_checks,
        "beside": {g: _checks(metrics["runs"][g], "") for g in config["data"][1:]},
    }  # fmt: skip
    failed = [k for k, v in main.items() if not v["holds"]]
    fragile = [k for k, v in main.items() if v["fragile"]]
    finals = "; ".join(
        f"{n} {_fmt((c['final'] or {}).get('median'))} [{_fmt((c['final'] or {}).get('min'))}, "
        f"{_fmt((c['final'] or {}).get('max'))}] (lr {c['lr']})"
        for n, c in cells.items()
    )
    torch_failed = [k for k, v in torch_checks.items() if not v["holds"]]
    note = (
        f"judged on {data_note(run, primary)}; final L - L* (l4) after {config['steps']} "
        f"iterations, median [min, max] over seeds {config['seeds']}, each method at its rate "
        f"with the lowest median, TensorFlow 1 defaults (primary): {finals}. Failed on medians: "
        f"{failed or 'none'}; fragile (seed ranges overlap): {fragile or 'none'}. With torch's "
        f"AdaGrad/AdaDelta defaults, failed: {torch_failed or 'none'} of {list(torch_checks)}. "
        f"Selected rate at a grid edge: {edge_cells(run) or 'none'}. The paper shows curves "
        "(Fig. 4), no numbers"
    )
    if int(config["steps"]) < 10**6:
        note += f"; run has {config['steps']} iterations, not the paper's 1e6"
    return [Verdict("A9", measured, not failed and bool(main), note)]


def plot_vs_adaptive(config: Config, metrics: Metrics) -> dict[str, Any]:
    """As the paper's Fig. 4: every method's median curve of ``L - L*`` (l4), min-max bands."""
    from matplotlib.figure import Figure

    figures = {}
    for group, run in metrics["runs"].items():
        fig = Figure(figsize=(6.5, 5.4), layout="constrained")
        ax = fig.add_subplot()
        for name, cell in run["cells"].items():
            draw_cell(ax, run["steps"], cell, name)
        ax.set_xlabel("iteration (full-batch step)")
        ax.set_ylabel("L - L* (l4 loss, standardized data)")
        ax.set_title(f"Ethanol l4 ({group}, {run['samples']} samples): depth vs adaptive methods\n"
                     f"median over seeds {list(config['seeds'])}, band = min-max",
                     fontsize=9)  # fmt: skip
        if ax.get_lines():
            ax.legend(fontsize=6, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.14))
        figures["vs_adaptive" if group == config["data"][0] else f"vs_adaptive_{group}"] = fig
    return figures


def _method(optimizer: str, depth: int, rates: list[float], defaults: str = "tf1") -> dict:
    return {"optimizer": optimizer, "depth": depth, "rates": rates, "defaults": defaults}


FULL_METHODS = {
    "gd3": _method("gd", 3, [3e-4, 3.5e-4, 4e-4]),
    "adagrad1": _method("adagrad", 1, [1e-2, 2e-2, 3e-2]),
    "adadelta1": _method("adadelta", 1, [1e-2, 2e-2, 3e-2]),
    "adam1": _method("adam", 1, [3e-4, 1e-3]),
    "adam2": _method("adam", 2, [3e-4, 1e-3]),
    "adam3": _method("adam", 3, [3e-4, 1e-3]),
    "adagrad1-torch": _method("adagrad", 1, [1e-2, 2e-2, 3e-2], "torch"),
    "adadelta1-torch": _method("adadelta", 1, [1e-2, 1.5e-2, 2e-2], "torch"),
}
QUICK_METHODS = {
    "gd3": _method("gd", 3, [7e-4, 1e-3]),
    "adagrad1": _method("adagrad", 1, [1e-2, 3e-2]),
    "adadelta1": _method("adadelta", 1, [1e-2, 3e-2]),
    "adam1": _method("adam", 1, [1e-3, 3e-3]),
    "adam2": _method("adam", 2, [1e-3, 3e-3]),
    "adam3": _method("adam", 3, [1e-3, 3e-3]),
    "adagrad1-torch": _method("adagrad", 1, [1e-2, 3e-2], "torch"),
    "adadelta1-torch": _method("adadelta", 1, [1e-2, 3e-2], "torch"),
}

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
                "steps": 8000,
                "points": 30,
                "scale": 0.01,
                "seeds": [0, 1],  # the full preset has 3
                "data": ["all"],
                "methods": QUICK_METHODS,
            },
            "full": {
                "steps": 10**6,
                "points": 200,
                "scale": 0.01,
                "seeds": [0, 1, 2],
                "data": ["all"],
                "methods": FULL_METHODS,
            },
        },
        run=run_vs_adaptive,
        judge=judge_vs_adaptive,
        plot=plot_vs_adaptive,
        doc=__doc__ or "",
        version=2,
    )
)

"""The 2-D l_p illustration of Arora, Cohen & Hazan (2018) (talk "Illustration of acceleration";
lecture notes, seed 000): ``L(w) = sum_i (w_i - y_i)^p / p`` with ``y1 >> y2``.

Claims A6 and A12.  GD: ``Delta_i <- Delta_i (1 - eta Delta_i^(p-2))`` needs
``eta < 2 / max|y|^(p-2)``; for p > 2 the small coordinate then converges slowly.  A depth-N
single-output net multiplies the step by ``||w||^(2-2/N)``, about ``y1^(2-2/N)`` once coordinate 1
has converged.  Seed 000: the first step of N = 2 from ``eps2/eps1 = y2/y1`` is
``w1 + 2 eta eps1 y1^3`` and ``w2 + eta (eps1 y2^3 + eps2 y1^3)``: coordinate 1 "lends its scale".

Here ``X = I_2``, so ``lp_loss`` is ``L / 2`` and the trainer's rate is ``2 eta``.
Command: ``overparam run toy-lp --full``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from overparam.core import balanced_factors
from overparam.engine import Claim, Config, Experiment, Metrics, RunContext, Verdict, register
from overparam.training import factor_gradients, stack_configs, train


def _problem(y: list[float]) -> tuple[Tensor, Tensor]:
    return torch.eye(2, dtype=torch.float64), torch.tensor(y, dtype=torch.float64).unsqueeze(-1)


def stability(config: Config) -> dict[str, Any]:
    """Depth-1 GD from w = 0 over ``eta = c * 2 / max|y|^(p-2)``: the largest stable ``c``."""
    X, Y = _problem(config["y"])
    cs = torch.linspace(0.8, 1.2, int(config["stability_points"]), dtype=torch.float64)
    out = {}
    for p in config["ps"]:
        bound = 2.0 / max(abs(v) for v in config["y"]) ** (p - 2)
        zero = [torch.zeros(len(cs), 1, 2, dtype=torch.float64)]
        res = train(X, Y, zero, lr=2 * bound * cs, p=float(p), steps=int(config["stability_steps"]))
        stable = [float(c) for c, d in zip(cs, res.diverged, strict=True) if not d]
        unstable = [float(c) for c, d in zip(cs, res.diverged, strict=True) if d]
        out[f"l{p}"] = {
            "bound": bound,
            "largest_stable": max(stable, default=None),
            "smallest_unstable": min(unstable, default=None),
        }
    return out


def _first(mask: Tensor, steps: list[int]) -> int | None:
    """First recorded step from which ``mask`` holds until the end."""
    bad = (~mask).nonzero()
    if bad.numel() == 0:
        return steps[0]
    last = int(bad.max())
    return steps[last + 1] if last + 1 < len(steps) else None


def _multiplier(delta2: Tensor, steps: list[int], a: int, b: int, eta: float, p: float) -> float:
    """Measured step multiplier on coordinate 2 between recorded indices a < b:
    p = 2: ``log|D(a)/D(b)| / (eta k)``; p > 2: ``(|D(b)|^(2-p) - |D(a)|^(2-p)) / ((p-2) eta k)``."""
    k = steps[b] - steps[a]
    da, db = float(delta2[a].abs()), float(delta2[b].abs())
    if p == 2:
        return float(torch.tensor(da / db).log()) / (eta * k)
    return (db ** (2 - p) - da ** (2 - p)) / ((p - 2) * eta * k)


def acceleration(config: Config, ctx: RunContext) -> dict[str, Any]:
    """Depths x p x eta grid from balanced ``W_e(0) = scale y/||y||``; per depth the fastest eta."""
    X, Y = _problem(config["y"])
    y = torch.tensor(config["y"], dtype=torch.float64)
    w0 = (config["scale"] * y / y.norm()).view(1, 2)
    etas = torch.logspace(config["eta_range"][0], config["eta_range"][1], config["etas"]).tolist()
    depths, steps, tol = list(config["depths"]), int(config["steps"]), float(config["tol"])
    record = list(range(0, steps + 1, int(config["every"])))
    out: dict[str, Any] = {}
    for p in config["ps"]:
        nets = [balanced_factors(w0, n, widths=1) for n in depths for _ in etas]
        factors, ds = stack_configs(nets)
        res = train(
            X,
            Y,
            factors,
            lr=[2 * e for e in etas] * len(depths),
            p=float(p),
            steps=steps,
            depths=ds,
            record=record,
            watch=lambda W: W[:, 0, :],
            progress=ctx.progress,
        )
        assert res.watched is not None
        delta = res.watched - y  # (K, R, 2)
        for i, n in enumerate(depths):
            best: dict[str, Any] = {"eta": None, "steps_to_converge": None}
            for j, eta in enumerate(etas):
                k = i * len(etas) + j
                if res.diverged[k]:
                    continue
                t1 = _first(delta[k, :, 0].abs() <= tol * abs(y[0]), record)
                t2 = _first(delta[k, :, 1].abs() <= tol * abs(y[1]), record)
                if t1 is None or t2 is None:
                    continue
                if best["steps_to_converge"] is None or max(t1, t2) < best["steps_to_converge"]:
                    a, b = record.index(t1), record.index(t2)
                    mult = _multiplier(delta[k, :, 1], record, a, b, eta, p) if b > a else None
                    best = {
                        "eta": eta,
                        "steps_to_converge": max(t1, t2),
                        "coord1": t1,
                        "coord2": t2,
                        "multiplier": mult,
                    }
            out[f"l{p}_depth{n}"] = best
    return out


def first_step(config: Config) -> dict[str, Any]:
    """One GD step on balanced depth-2 factors of ``(eps1, eps2)``, ``eps2/eps1 = y2/y1`` (l4)."""
    y1, y2 = config["y"]
    eps1 = config["eps"]
    eps2 = eps1 * y2 / y1
    eta = config["first_step_eta"]
    w = torch.tensor([[eps1, eps2]], dtype=torch.float64)
    factors = [W.unsqueeze(0) for W in balanced_factors(w, 2, widths=1)]
    g = (w - torch.tensor([[y1, y2]], dtype=torch.float64)).pow(3).unsqueeze(0)
    grads = factor_gradients(factors, g)
    new = (factors[1] - eta * grads[1]) @ (factors[0] - eta * grads[0])
    step = (new - w)[0, 0]
    approx = torch.tensor(
        [2 * eta * eps1 * y1**3, eta * (eps1 * y2**3 + eps2 * y1**3)], dtype=torch.float64
    )
    return {
        "step": step,
        "approximation": approx,
        "relative_error": ((step - approx).abs() / approx.abs()).tolist(),
        "lent_share": float(eta * eps2 * y1**3 / step[1]),
    }


def run_toy(config: Config, ctx: RunContext) -> Metrics:
    return {
        "stability": stability(config),
        "acceleration": acceleration(config, ctx),
        "first_step": first_step(config),
    }


def judge_toy(config: Config, metrics: Metrics) -> list[Verdict]:
    st, acc, fs = metrics["stability"], metrics["acceleration"], metrics["first_step"]
    spacing = 0.4 / (int(config["stability_points"]) - 1)
    bound_ok = all(
        v["largest_stable"] is not None
        and v["smallest_unstable"] is not None
        and abs(v["largest_stable"] - 1) <= spacing + 1e-12
        and abs(v["smallest_unstable"] - 1) <= spacing + 1e-12
        for v in st.values()
    )
    y1 = config["y"][0]
    table = {}
    for key, v in acc.items():
        p, n = key.split("_depth")
        base = acc[f"{p}_depth1"].get("coord2")
        c2 = v.get("coord2")
        speed = None if c2 is None or base is None else base / max(c2, 1)
        table[key] = dict(v, speedup_coord2=speed, predicted=y1 ** (2 - 2 / int(n)))
    deep4 = [table[f"l4_depth{n}"]["speedup_coord2"] or 0.0 for n in config["depths"] if n > 1]
    deep2 = [table[f"l2_depth{n}"]["speedup_coord2"] or 0.0 for n in config["depths"] if n > 1]
    accel_ok = all(s > 1.5 for s in deep4) and all(s <= 1.5 for s in deep2)
    a12_ok = max(fs["relative_error"]) < 0.05 and fs["lent_share"] > 0.5
    return [
        Verdict(
            "A6",
            {"stability": st, "acceleration": table},
            bound_ok and accel_ok,
            f"stable bound: largest stable / smallest unstable eta as multiples of "
            f"2/max|y|^(p-2) (grid spacing {spacing:.3f}); acceleration: iterations for each "
            f"coordinate to reach {config['tol']:.0%} of |y_i| at each depth's fastest eta "
            f"(grid), speed-up of coordinate 2 vs depth 1 beside the predicted y1^(2-2/N); "
            f"'multiplier' is the measured step multiplier on coordinate 2 after coordinate 1 "
            f"converged (the heuristic predicts ~y1^(2-2/N) for the step, not for iteration "
            f"counts, which also include the escape from near 0)",
        ),
        Verdict(
            "A12",
            fs,
            a12_ok,
            "one real GD step on balanced depth-2 factors vs the lecture's first-order "
            "formula; lent_share = eta eps2 y1^3 / (step of w2): the part of coordinate 2's "
            "step that comes from coordinate 1's gradient",
        ),
    ]


def plot_toy(config: Config, metrics: Metrics) -> dict[str, Any]:
    """Iterations for the small coordinate to converge per depth and loss (each at its fastest
    eta of the grid), and the measured step multiplier on it against ``y1^(2-2/N)`` (A6)."""
    from matplotlib.figure import Figure

    depths, steps, y1 = list(config["depths"]), int(config["steps"]), config["y"][0]
    acc = metrics["acceleration"]
    fig = Figure(figsize=(10, 3.8))
    ax, bx = fig.subplots(1, 2)
    missing = []
    for k, p in enumerate(config["ps"]):
        rows = [acc[f"l{p}_depth{n}"].get("coord2") for n in depths]
        ax.semilogy(depths, [r if r else np.nan for r in rows], "o-", color=f"C{k}", label=f"l{p}")
        lost = [n for n, r in zip(depths, rows, strict=True) if not r]
        missing += [f"l{p} N={n}" for n in lost]
        if lost:
            ax.semilogy(lost, [steps] * len(lost), "v", color=f"C{k}", ms=9, mfc="none")
        mult = [acc[f"l{p}_depth{n}"].get("multiplier") for n in depths]
        shown = [(n, m) for n, m in zip(depths, mult, strict=True) if m is not None]
        if shown:
            bx.semilogy(*zip(*shown, strict=True), "o-", color=f"C{k}", label=f"l{p} measured")
    if missing:
        ax.plot([], [], "kv", mfc="none", label=f"not converged in {steps} iterations")
    ax.set_xticks(depths)
    ax.set_xlabel("depth N")
    ax.set_ylabel(f"iterations until |w2 - y2| <= {config['tol']:g} |y2|")
    ax.set_title(f"A6: small coordinate, y = {config['y']}, fastest eta per depth", fontsize=10)
    ax.legend(fontsize=8)
    bx.semilogy(depths, [y1 ** (2 - 2 / n) for n in depths], "k--", label="predicted y1^(2-2/N)")
    no_mult = [
        f"l{p}"
        for p in config["ps"]
        if all(acc[f"l{p}_depth{n}"].get("multiplier") is None for n in depths)
    ]
    bx.set_xticks(depths)
    bx.set_xlabel("depth N")
    bx.set_ylabel("step multiplier on coordinate 2 (x eta)")
    note = (
        f"\n{', '.join(no_mult)}: none (both coordinates converge in the same recorded interval)"
        if no_mult
        else ""
    )
    bx.set_title("A6: multiplier after coordinate 1 converged" + note, fontsize=10)
    bx.legend(fontsize=8)
    fig.tight_layout()
    return {"toy_lp": fig}


TOY_LP = register(
    Experiment(
        name="toy-lp",
        title="Arora et al. 2018 (talk, seed 000): the 2-D l_p illustration of acceleration",
        claims=(
            Claim(
                "A6",
                "GD needs eta < 2/max|y|^(p-2); for p > 2 depth accelerates the small "
                "coordinate by about y1^(2-2/N); no acceleration for p = 2",
                "eta < 2/max|y|^(p-2); factor y1^(2-2/N)",
            ),
            Claim(
                "A12",
                "first step of the 2-D l4 example with N = 2: the large coordinate lends "
                "its scale to the small one",
                "w2 <- eps2 + eta (eps1 y2^3 + eps2 y1^3)",
            ),
        ),
        presets={
            "quick": {
                "y": [10.0, 1.0],
                "ps": [2, 4],
                "depths": [1, 2, 3],
                "scale": 0.01,
                "tol": 0.1,
                "steps": 10000,
                "every": 10,
                "etas": 16,
                "eta_range": [-4.0, 0.5],
                "stability_points": 41,
                "stability_steps": 1000,
                "eps": 1e-3,
                "first_step_eta": 1e-5,
            },
            "full": {
                "y": [10.0, 1.0],
                "ps": [2, 4],
                "depths": [1, 2, 3],
                "scale": 0.01,
                "tol": 0.02,
                "steps": 300000,
                "every": 10,
                "etas": 46,
                "eta_range": [-5.0, 0.5],
                "stability_points": 401,
                "stability_steps": 5000,
                "eps": 1e-3,
                "first_step_eta": 1e-5,
            },
        },
        run=run_toy,
        judge=judge_toy,
        plot=plot_toy,
        doc=__doc__ or "",
    )
)

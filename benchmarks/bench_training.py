"""Iterations/s of the batched trainer on the ``lp-depth`` grid vs a plain per-configuration loop.

Run: ``.venv/bin/python benchmarks/bench_training.py [--steps 300] [--threads 1] [--ps 4 2]``.

The grid spans the rates ``lp-depth`` searches (Arora et al. 2018, Fig. 3): 14 learning rates
x depths 1/2/3 with width-1 hidden layers, on the Ethanol problem (every batch present, 2565 x
128 with the reconstructed batches 7 and 10; a synthetic problem of 1316 x 128 when
``$OVERPARAM_DATA`` is not set).  All in one process, same steps:

* ``batched``: :func:`overparam.training.train`, the 42 configurations as one tensor program
  (diverged configurations are dropped from the batch, as in the experiment);
* ``loop``: one configuration at a time, ``nn.Parameter`` factors, the loss
  ``mean |X W_e^T - Y|^p / p`` written out, autograd and ``torch.optim.SGD`` -- the plain
  PyTorch way (every configuration runs all steps, diverged ones in NaN);
* ``matmul``: a 2048 x 2048 float64 matmul, the machine's attainable GFLOP/s.

GFLOP/s of the trainers count the two data products of a step, ``4 b d`` flops per configuration
and step (``2 d^2`` with the Gram form for p = 2), over the configuration-steps actually run.
``speed-up``: the loop's wall time over this row's for the whole grid (what a user waits);
``per cfg-step``: the same ratio per configuration-step (the batched run drops diverged
configurations, the loop runs every configuration to the end).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import torch

from overparam.models.deep_linear import initial_factors
from overparam.training import end_to_end, stack_configs, train

LRS = [2e-4, 3e-4, 4e-4, 5e-4, 7e-4, 1e-3, 1.2e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 1e-2, 2e-2, 5e-2]


def width1_nets(depths: list[int], count: int, d: int, scale: float, seed: int):
    """``count`` near-zero nets per depth with width-1 hidden layers, stacked (one generator)."""
    gen = torch.Generator().manual_seed(seed)
    nets = [
        initial_factors([d] + [1] * n, "near_zero", scale, gen)
        for n in depths
        for _ in range(count)
    ]
    return stack_configs(nets)


def problem() -> tuple[torch.Tensor, torch.Tensor, str]:
    """Ethanol when available, else a random problem of the same shape."""
    if os.environ.get("OVERPARAM_DATA"):
        from overparam.datasets import gas_sensor

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            X, y = gas_sensor("ethanol")
        return X, y.unsqueeze(-1), "Ethanol"
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(1316, 128, dtype=torch.float64, generator=gen)
    y = X @ torch.randn(128, 1, dtype=torch.float64, generator=gen) / 128**0.5
    return X, y + 0.1 * torch.randn(1316, 1, dtype=torch.float64, generator=gen), "synthetic"


def batched(X, Y, p: float, lrs: list[float], steps: int) -> tuple[float, int]:
    """Seconds and configuration-steps run by one batched ``train`` call."""
    factors, depths = width1_nets([1, 2, 3], len(lrs), X.shape[1], 0.01, 0)
    start = time.perf_counter()
    res = train(X, Y, factors, lr=lrs * 3, p=p, steps=steps, depths=depths, threads=0)
    seconds = time.perf_counter() - start
    return seconds, sum(steps if s is None else s for s in res.diverged_step)


def loop(X, Y, p: float, lrs: list[float], steps: int) -> tuple[float, int]:
    """Seconds and configuration-steps of the plain per-configuration autograd loop."""
    factors, _ = width1_nets([1, 2, 3], len(lrs), X.shape[1], 0.01, 0)
    depths = [n for n in (1, 2, 3) for _ in lrs]
    configs = [[W[k] for W in factors[:n]] for k, n in enumerate(depths)]
    start = time.perf_counter()
    for net, lr in zip(configs, lrs * 3, strict=True):
        params = [torch.nn.Parameter(W.clone()) for W in net]
        opt = torch.optim.SGD(params, lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            ((X @ end_to_end(params).mT - Y).abs().pow(p).mean() / p).backward()
            opt.step()
    return time.perf_counter() - start, len(configs) * steps


def matmul_gflops(size: int = 2048, repeat: int = 5) -> float:
    a = torch.randn(size, size, dtype=torch.float64)
    a @ a  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        a @ a
    return 2 * size**3 * repeat / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ps", type=float, nargs="+", default=[4.0, 2.0])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    X, Y, name = problem()
    lrs = list(LRS)
    peak = matmul_gflops()
    b, d = X.shape
    print(
        f"{name} {b}x{d}, {3 * len(lrs)} configurations, {args.steps} steps, "
        f"{args.threads} thread(s); matmul 2048^2 float64: {peak:.1f} GFLOP/s"
    )
    head = f"{'p':>3} {'method':>8} {'seconds':>8} {'grid it/s':>10} {'cfg it/s':>10} "
    print(head + f"{'GFLOP/s':>8} {'% matmul':>8} {'speed-up':>8} {'per cfg-step':>12}")
    for p in args.ps:
        flops = 2 * d * d if p == 2 else 4 * b * d
        rows = {
            "batched": batched(X, Y, p, lrs, args.steps),
            "loop": loop(X, Y, p, lrs, args.steps),
        }
        for method, (seconds, cfg_steps) in rows.items():
            gflops = flops * cfg_steps / seconds / 1e9
            speed = rows["loop"][0] / seconds
            per_step = (cfg_steps / seconds) / (rows["loop"][1] / rows["loop"][0])
            print(
                f"{p:>3g} {method:>8} {seconds:>8.2f} {args.steps / seconds:>10.1f} "
                f"{cfg_steps / seconds:>10.0f} {gflops:>8.2f} {100 * gflops / peak:>7.1f}% "
                f"{speed:>7.1f}x {per_step:>11.1f}x"
            )


if __name__ == "__main__":
    main()

"""Training-step time of the overparameterized and EndToEndSGD ConvNets relative to the original,
and inference time after collapse.

Run: ``.venv/bin/python benchmarks/bench_nn.py [--device cpu|cuda] [--batch 64] [--repeats 30]
[--threads T]``.
The network is the MNIST ConvNet of the ``mnist-convnet`` experiment (TF tutorial sizes by
default).  Rows, all measured in one process with the same random batch, median milliseconds:
``original`` (SGD momentum), ``overparameterized`` (dense layers depth 2, SGD momentum),
``end_to_end`` (original + EndToEndSGD, depth 2 on the dense weights); then eval-mode inference
of the original and of the collapsed overparameterized model.  Target (issue 7): training
ratios <= 1.15, inference ratio 1.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from overparam.experiments.mnist_convnet import convnet, make_variant, objective
from overparam.nn import collapse


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int = 3
) -> dict[str, float]:
    """Median wall time (ms) of each ``fn()``, timed round-robin so that load drift on a shared
    machine hits every variant alike (device synchronized around each call)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--channels", type=int, nargs=2, default=[32, 64])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = {"lr": 0.01, "momentum": 0.9, "depth": 2, "init": "identity"}
    gen = torch.Generator().manual_seed(0)
    base = convnet(args.channels, args.hidden, 0.5, gen).to(device)
    x = torch.randn(args.batch, 1, 28, 28, generator=gen).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=gen).to(device)
    steps: dict[str, Callable[[], object]] = {}
    nets = {}
    for variant in ("original", "overparameterized", "end_to_end"):
        net, opt = make_variant(base, variant, config)
        nets[variant] = net.train()

        def step(net: torch.nn.Module = net, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            objective(net, x, y, 5e-4).backward()  # type: ignore[arg-type]
            opt.step()

        steps[f"train step: {variant}"] = step
    rows = median_ms(steps, device, args.repeats)
    original, deployed = nets["original"].eval(), collapse(nets["overparameterized"]).eval()
    with torch.no_grad():
        infer = {
            f"inference: {name}": (lambda net=net: F.softmax(net(x), 1))
            for name, net in (("original", original), ("collapsed", deployed))
        }
        rows.update(median_ms(infer, device, args.repeats))
    print(
        f"device {device}, batch {args.batch}, threads {torch.get_num_threads()}, "
        f"channels {args.channels}, hidden {args.hidden}, repeats {args.repeats}"
    )
    print(f"{'measurement':34s} {'ms':>9s} {'ratio':>7s} {'target':>7s}")
    for name, ms in rows.items():
        train = name.startswith("train")
        ref = rows["train step: original" if train else "inference: original"]
        target = "<= 1.15" if train else "1.00"
        print(f"{name:34s} {ms:9.3f} {ms / ref:7.2f} {target:>7s}")  # fmt: skip


if __name__ == "__main__":
    main()

"""Time of :func:`overparameterize` on a ViT-B/16-sized model, and its parameter counts.

Run: ``.venv/bin/python benchmarks/bench_convert.py [--threads 1] [--depths 2 3]
[--dtypes float32 bfloat16]``.

The model is ViT-B/16's layer stack in plain torch: the 16 x 16 patch conv 3 -> 768, 12
pre-LN encoder layers (``nn.MultiheadAttention`` with 12 heads, MLP 768 -> 3072 -> 768) and a
768 -> 1000 head: 50 weights (86.4M parameters), all selected with ``modules="all"`` (the
in-projections as three q/k/v blocks).  One conversion per row, default widths ``min(m, n)``,
``init="preserve"``; the time is dominated by one batched Gram-matrix ``eigh`` and two matrix
products per group of same-shape weights (:func:`overparam.nn._factorized.gram_svd`).  ``seconds``
is wall-clock, ``cpu s`` the process's CPU time (on a loaded machine the wall-clock time also
counts the time the process waited for a core).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from overparam.nn import overparameterize, summary


def vit_b16() -> nn.Module:
    layer = nn.TransformerEncoderLayer(
        768, 12, 3072, activation="gelu", batch_first=True, norm_first=True
    )
    return nn.Sequential(
        nn.Conv2d(3, 768, 16, stride=16),
        nn.Flatten(2),
        nn.TransformerEncoder(layer, 12, enable_nested_tensor=False),
        nn.Linear(768, 1000),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"{'dtype':>9} {'depth':>5} {'weights':>7} {'params before':>14} {'after':>13} "
        f"{'seconds':>8} {'cpu s':>7}"
    )
    for dtype in args.dtypes:
        for depth in args.depths:
            torch.manual_seed(0)
            model = vit_b16().to(getattr(torch, dtype))
            start, cpu = time.perf_counter(), time.process_time()
            overparameterize(model, depth=depth, modules="all")
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            s = summary(model)
            print(
                f"{dtype:>9} {depth:>5} {len(s.converted):>7} {s.params_before:>14,} "
                f"{s.params_after:>13,} {seconds:>8.2f} {cpu:>7.2f}"
            )


if __name__ == "__main__":
    main()

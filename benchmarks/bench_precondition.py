"""Time ``precondition`` against one bare SVD and naive sums of fractional matrix powers.

Run: ``.venv/bin/python benchmarks/bench_precondition.py [--sizes 20 64 ...] [--depths 2 4 8]``.
Prints one row per (size, depth), median milliseconds, all measured in the same process:
``svd`` one ``torch.linalg.svd(W)``; ``ours`` ``precondition``; ``naive`` the formula as written,
each fractional power ``(W W^T)^p``, ``(W^T W)^q`` formed by its own eigendecomposition; ``eig2``
a cached variant with one ``eigh`` per Gram matrix (it squares the condition number, so small
singular values lose accuracy, and is shown only for speed).  ``--backward`` adds ``f+b``: the
forward and backward pass of ``precondition`` with ``W`` and ``G`` requiring grad.
``--cpu-time`` measures process CPU time instead of wall time (steadier on a shared machine,
meaningful with one thread).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from overparam import precondition


def _power(e: torch.Tensor, Q: torch.Tensor, p: float) -> torch.Tensor:
    return (Q * e.clamp_min(0).pow(p)) @ Q.mT


def naive_precondition(W: torch.Tensor, G: torch.Tensor, depth: int) -> torch.Tensor:
    """sum_j (W W^T)^((N-j)/N) G (W^T W)^((j-1)/N), every fractional power formed on its own."""
    total = torch.zeros_like(G)
    for j in range(1, depth + 1):
        left = _power(*torch.linalg.eigh(W @ W.mT), (depth - j) / depth)
        right = _power(*torch.linalg.eigh(W.mT @ W), (j - 1) / depth)
        total = total + left @ G @ right
    return total


def eig2_precondition(W: torch.Tensor, G: torch.Tensor, depth: int) -> torch.Tensor:
    """The same sum with the two eigendecompositions computed once."""
    el, Ql = torch.linalg.eigh(W @ W.mT)
    er, Qr = torch.linalg.eigh(W.mT @ W)
    return sum(
        _power(el, Ql, (depth - j) / depth) @ G @ _power(er, Qr, (j - 1) / depth)
        for j in range(1, depth + 1)
    )


CLOCK = time.perf_counter


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = CLOCK()
        fn()
        times.append(CLOCK() - start)
    return 1e3 * statistics.median(times)


def forward_backward(W: torch.Tensor, G: torch.Tensor, depth: int) -> None:
    """One forward and backward pass of ``precondition`` in ``W`` and ``G``."""
    Wr, Gr = W.clone().requires_grad_(), G.clone().requires_grad_()
    precondition(Wr, Gr, depth).backward(G)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 64, 128, 256, 512, 1024])
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--backward", action="store_true", help="time forward + backward too")
    parser.add_argument("--cpu-time", action="store_true", help="process CPU time, not wall")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.cpu_time else time.perf_counter
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}")
    header = (
        f"{'size':>6} {'N':>3} {'svd ms':>9} {'ours ms':>9} {'naive ms':>10} {'eig2 ms':>9} "
        f"{'ours/svd':>9} {'naive/ours':>11} {'eig2/ours':>10}"
        + (f" {'f+b ms':>9} {'f+b/svd':>8}" if args.backward else "")
    )
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        W = torch.randn(size, size, generator=gen, dtype=dtype)
        G = torch.randn(size, size, generator=gen, dtype=dtype)
        repeat = 20 if size <= 256 else 5
        svd = median_ms(lambda W=W: torch.linalg.svd(W), repeat)
        for depth in args.depths:
            ours = median_ms(lambda W=W, G=G, d=depth: precondition(W, G, d), repeat)
            naive = median_ms(lambda W=W, G=G, d=depth: naive_precondition(W, G, d), repeat)
            eig2 = median_ms(lambda W=W, G=G, d=depth: eig2_precondition(W, G, d), repeat)
            row = (
                f"{size:>6} {depth:>3} {svd:>9.2f} {ours:>9.2f} {naive:>10.2f} {eig2:>9.2f} "
                f"{ours / svd:>9.2f} {naive / ours:>11.2f} {eig2 / ours:>10.2f}"
            )
            if args.backward:
                both = median_ms(lambda W=W, G=G, d=depth: forward_backward(W, G, d), repeat)
                row += f" {both:>9.2f} {both / svd:>8.2f}"
            print(row)


if __name__ == "__main__":
    main()

"""Attainable accuracy of ``precondition_inverse`` as a function of the condition number and dtype.

Run: ``.venv/bin/python benchmarks/accuracy_inverse.py [--seeds 5]``.
For ``W = Q1 diag(logspace(0, -log10 cond)) Q2^T`` (Haar-random ``Q1``, ``Q2``) and a Gaussian
``G`` it prints the largest round-trip error ``||A^{-1}(A(G)) - G|| / ||G||`` over the seeds,
the bound ``eps * kappa`` with ``kappa = (s_max / s_min)^(2(N-1)/N)`` (times ``N`` for non-square
``W``) and their ratio.  Rows past the default ``rtol = 1e-2`` are computed with ``rtol = 1e300``;
rows where ``W`` is numerically singular in the dtype are marked.
"""

from __future__ import annotations

import argparse
import math

import torch

from overparam import precondition, precondition_inverse


def conditioned(cond: float, shape: tuple[int, int], dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    m, n = shape
    r = min(m, n)
    Q1, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    Q2, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -math.log10(cond), r, dtype=torch.float64)
    W = (Q1[:, :r] * s) @ Q2[:, :r].T
    return W.to(dtype), torch.randn(m, n, generator=g, dtype=torch.float64).to(dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    print(
        f"{'dtype':>8} {'shape':>7} {'N':>2} {'cond':>6} {'kappa':>8} {'eps*kappa':>9} "
        f"{'error':>8} {'ratio':>6}"
    )
    for dtype in (torch.float64, torch.float32):
        eps = torch.finfo(dtype).eps
        for shape in ((6, 6), (8, 5)):
            for depth in (2, 3, 4):
                for cond in (1e2, 1e4, 1e6, 1e8, 1e10, 1e12, 1e14):
                    kappa = cond ** (2 * (depth - 1) / depth) * (
                        1 if shape[0] == shape[1] else depth
                    )
                    label = f"{str(dtype)[6:]:>8} {shape[0]}x{shape[1]:<5} {depth:>2} {cond:>6.0e}"
                    try:
                        errors = []
                        for seed in range(args.seeds):
                            W, G = conditioned(cond, shape, dtype, seed)
                            back = precondition_inverse(
                                W, precondition(W, G, depth), depth, rtol=1e300
                            )
                            errors.append(float((back - G).norm() / G.norm()))
                    except ValueError:
                        print(f"{label}   W numerically singular in {dtype}")
                        continue
                    worst = max(errors)
                    print(
                        f"{label} {kappa:>8.1e} {eps * kappa:>9.1e} {worst:>8.1e} "
                        f"{worst / (eps * kappa):>6.2f}"
                    )


if __name__ == "__main__":
    main()

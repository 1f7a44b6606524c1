"""EndToEndSGD's two measured choices: the factorization of a refresh, and the amortization gap.

Run: ``.venv/bin/python benchmarks/bench_end_to_end.py [--threads 1] [--repeats 5]``.

Table 1, per shape and ``method`` of :func:`overparam.core.cached_factorization`: median
milliseconds of one factorization of a float32 matrix, and the relative error
``|A - A_64| / |A_64|`` (Frobenius) of :func:`overparam.core.precondition_cached` (depth 2) from
that float32 factorization against float64 :func:`overparam.precondition`, on matrices with
condition number 10, 1e3 and 1e5 (singular values log-spaced, random orthogonal bases).

Table 2, the trajectory gap of the amortized rule: a tanh MLP 20-16-6 on 64 points (float64,
full batch, depth 2, no floor), trained for time ``t = 4`` (``4 / lr`` steps) with
``precondition_every = k`` and with ``k = 1`` (exact); the gap is
``max_t |theta_k(t) - theta_1(t)| / |theta_1(T)|``.  Rows: ``frozen``, both sides of the SVD
stored (``factorization="svd"``); ``follows W``, the Gram route's cache (``U`` and ``s``; the
long side taken from the current ``W``, as ``"auto"`` does for lopsided well-conditioned
matrices); ``sv-track``, both sides frozen and the singular values recomputed in that basis at
every step (``diag(U^T W V)``, one more product per step), an alternative not taken.

Table 3, the choice of the default ``precondition_every``: the source's MNIST ConvNet at batch
64 (the model of ``bench_nn.py``), EndToEndSGD's step time relative to SGD's and its gap to the
exact rule after 30 steps, per ``k``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import Tensor, nn

from overparam import precondition
from overparam.core import cached_factorization, precondition_cached
from overparam.optim import EndToEndSGD


def conditioned(m: int, n: int, cond: float, gen: torch.Generator) -> Tensor:
    """A float64 ``m x n`` matrix with singular values log-spaced from 1 down to ``1 / cond``."""
    r = min(m, n)
    U = torch.linalg.qr(torch.randn(m, r, generator=gen, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64))[0]
    s = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), r, dtype=torch.float64)
    return (U * s) @ V.mT


def factorization_table(shapes: list[tuple[int, int]], repeats: int) -> None:
    gen = torch.Generator().manual_seed(0)
    conds = (1e1, 3e1, 1e2, 1e3, 1e5)
    head = "".join(f" {'err cond ' + f'{c:.0e}':>14s}" for c in conds)
    print(f"{'shape':>12s} {'method':>6s} {'ms':>8s}{head}")
    for m, n in shapes:
        mats = [conditioned(m, n, c, gen) for c in conds]
        G = torch.randn(m, n, generator=gen, dtype=torch.float64)
        refs = [precondition(W, G, 2) for W in mats]
        for method in ("svd", "qr", "gram", "auto"):
            W32 = mats[0].float()
            times = []
            for _ in range(repeats + 1):
                start = time.perf_counter()
                cached_factorization(W32, method)
                times.append(1e3 * (time.perf_counter() - start))
            errs = []
            for W, ref in zip(mats, refs, strict=True):
                out = precondition_cached(*cached_factorization(W.float(), method), G.float(), 2)
                errs.append(float((out.double() - ref).norm() / ref.norm()))
            cells = "".join(f" {e:14.2e}" for e in errs)
            print(f"{f'{m}x{n}':>12s} {method:>6s} {statistics.median(times[1:]):8.2f}{cells}")


class _SingularValues(EndToEndSGD):
    """Frozen basis, singular values ``diag(U^T W V)`` of the current ``W`` (for comparison)."""

    def _cached(self, p: Tensor, every: int):  # type: ignore[no-untyped-def]
        cached = super()._cached(p, every)
        if cached is None:
            return None
        U, _, V = cached
        W = p.detach().reshape(p.shape[0], -1)
        return U, ((U.mT @ W) * V.mT).sum(-1).clamp_min(0), V


def trajectory(
    cls: type[EndToEndSGD], every: int, lr: float, method: str = "svd", horizon: float = 4.0
) -> Tensor:
    """Parameters after every step of an MLP regression trained with ``cls``."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(64, 20, generator=gen, dtype=torch.float64)
    Y = torch.tanh(X @ torch.randn(20, 6, generator=gen, dtype=torch.float64))
    net = nn.Sequential(nn.Linear(20, 16), nn.Tanh(), nn.Linear(16, 6)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    opt = cls(net.parameters(), lr=lr, depth=2, precondition_every=every, eps=0.0, factorization=method)  # fmt: skip
    out = []
    for _ in range(round(horizon / lr)):
        opt.zero_grad()
        (net(X) - Y).square().mean().backward()
        opt.step()
        out.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    return torch.stack(out)


def gap_table(ks: list[int], lrs: list[float]) -> None:
    print(f"\n{'lr':>6s} {'rule':>10s}" + "".join(f" {'k=' + str(k):>9s}" for k in ks))
    rules = (("frozen", EndToEndSGD, "svd"), ("follows W", EndToEndSGD, "gram"), ("sv-track", _SingularValues, "svd"))  # fmt: skip
    for lr in lrs:
        exact = trajectory(EndToEndSGD, 1, lr)
        for name, cls, method in rules:
            gaps = [
                float((trajectory(cls, k, lr, method) - exact).norm(dim=1).max() / exact[-1].norm())
                for k in ks
            ]
            print(f"{lr:6.3f} {name:>10s}" + "".join(f" {g:9.2e}" for g in gaps))


def every_table(ks: list[int], repeats: int, steps: int) -> None:
    """The source's MNIST ConvNet at batch 64 (``bench_nn.py``'s model): EndToEndSGD step time
    (with :meth:`EndToEndSGD.capture`)
    per ``precondition_every`` (mean over windows of ``k * ceil(20 / k)`` steps, so every window
    holds whole refresh periods; median of ``repeats`` round-robin windows) relative to SGD, and
    the gap to ``k = 1`` after ``steps`` steps."""
    from bench_nn import build, e2e_run, optimizers, timed  # the sibling benchmark's pieces

    torch.manual_seed(0)  # the layers' initialization, as in bench_nn.py
    base, (x, y), loss_fn, _ = build("convnet-64", torch.Generator().manual_seed(0))
    fns = {}
    for k in [0, *ks]:  # 0: plain SGD
        net = copy.deepcopy(base).train()
        if k == 0:
            opt: torch.optim.Optimizer = optimizers(net, "sgd", True)
        else:
            linear = [m.weight for m in net.modules() if isinstance(m, nn.Linear)]
            rest = [p for p in net.parameters() if all(p is not w for w in linear)]
            groups = [{"params": linear}, {"params": rest, "depth": 1}]
            opt = EndToEndSGD(groups, lr=1e-3, depth=2, momentum=0.9, precondition_every=k)
            opt.capture(net)
        window = max(k, 1) * -(-20 // max(k, 1))

        def run(net: nn.Module = net, opt: torch.optim.Optimizer = opt, n: int = window) -> None:
            for _ in range(n):
                opt.zero_grad(set_to_none=True)
                loss_fn(net(x), y).backward()
                opt.step()

        fns[k] = (run, window)
    ms = timed({k: f for k, (f, _) in fns.items()}, repeats, lambda: None)
    per_step = {k: ms[k] / fns[k][1] for k in fns}
    exact, _ = e2e_run(base, (x, y), loss_fn, steps, 0.01, 1)
    start = torch.cat([p.detach().flatten() for p in base.parameters()])
    print(f"\nconvnet-64: SGD {per_step[0]:.1f} ms/step; gap after {steps} steps (lr 0.01)")
    print(f"{'k':>4s} {'ratio':>7s} {'gap':>9s}")
    for k in ks:
        theta, _ = e2e_run(base, (x, y), loss_fn, steps, 0.01, k)
        gap = float((theta - exact).norm() / (exact - start).norm())
        print(f"{k:4d} {per_step[k] / per_step[0]:7.2f} {gap:9.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}, repeats {args.repeats}")
    factorization_table([(256, 256), (256, 1024), (512, 3136), (3136, 512)], args.repeats)
    gap_table([2, 4, 8, 16, 32], [0.025, 0.05, 0.1])
    every_table([1, 2, 5, 10, 20, 50], args.repeats, 30)


if __name__ == "__main__":
    main()

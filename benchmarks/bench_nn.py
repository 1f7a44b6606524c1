"""Training-step time of every optimizer path relative to plain SGD, in one process per model.

Run: ``.venv/bin/python benchmarks/bench_nn.py [--threads 1] [--repeats 5] [--block 10]
[--models convnet-8 convnet-64 block mlp] [--device cpu|cuda]``.

Models: ``convnet-B`` the source's MNIST ConvNet (5x5 convs 32 and 64, 2x2 pools, dense
3136 -> 512 -> 10; dropout left out) at batch ``B``; ``block`` a pre-LN transformer block of width
256 (4 heads, separate q/k/v/o projections, MLP 1024) on 8 x 64 tokens; ``mlp`` a wide MLP
784 -> 1024 -> 1024 -> 10 at batch 8.  Rows (median over ``--repeats`` round-robin samples of
``--block`` consecutive steps, so a refresh every ``block`` steps is inside every sample; an
untimed forward and backward pass precedes each sample):

* ``sgd`` (momentum 0.9, the reference) and ``adamw``;
* ``muon``: ``torch.optim.Muon`` on the 2-D hidden ``nn.Linear`` weights, AdamW on the rest;
* ``over-sgd-N``: :func:`overparameterize` (``nn.Linear`` layers, depth ``N``, default widths)
  trained with SGD; its ``MAC ratio`` is the multiply-add count of one training step in the
  contraction order each layer chooses for this batch, over the original's
  (:func:`layer_step_macs`: forward, weight gradients, and input gradients only where the
  layer's input needs one, as autograd computes them);
* ``e2e-exact`` / ``e2e-k``: the original model with :class:`EndToEndSGD` (depth 2 on the
  ``nn.Linear`` weights, the others ``depth=1``) and :meth:`EndToEndSGD.capture`,
  ``precondition_every=1`` and the default; ``e2e-k-dense`` the default without ``capture``
  (the preconditioner applied to the dense gradient).  Their ``MAC ratio`` adds the
  multiply-adds of applying the preconditioner (:func:`e2e_macs`) to the SGD step's: the floor
  of any amortization (factorizations excluded).

For the overparameterized ConvNet the last row is the inference time after :func:`collapse`
(ratio to the original's).  Each model ends with the trajectory gap of the default
``precondition_every`` against the exact rule after ``--gap-steps`` steps.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from overparam.core._cached import application_multiply_adds
from overparam.core._low_rank import low_rank_multiply_adds
from overparam.nn import collapse, overparameterize
from overparam.nn._factorized import Factorized
from overparam.optim import EndToEndSGD
from overparam.optim._end_to_end_sgd import DEFAULT_PRECONDITION_EVERY

Batch = tuple[Tensor, Tensor]


class Block(nn.Module):
    """Pre-LN transformer block: attention with q/k/v/o ``nn.Linear`` projections, GELU MLP."""

    def __init__(self, width: int = 256, heads: int = 4, hidden: int = 1024) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, w = x.shape
        h = self.ln1(x)
        q, k, v = (
            f(h).view(b, t, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, w)
        x = x + self.o(a)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


def build(name: str, gen: torch.Generator) -> tuple[nn.Module, Batch, Callable[..., Tensor], int]:
    """``(model, batch, loss_fn, extra multiply-adds per forward outside Linear/Conv layers)``."""
    if name.startswith("convnet"):
        batch = int(name.split("-")[1])
        net = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(7 * 7 * 64, 512), nn.ReLU(), nn.Linear(512, 10),
        )  # fmt: skip
        x = torch.randn(batch, 1, 28, 28, generator=gen)
        return net, (x, torch.randint(0, 10, (batch,), generator=gen)), F.cross_entropy, 0
    if name == "block":
        x = torch.randn(8, 64, 256, generator=gen)
        return Block(), (x, torch.randn(8, 64, 256, generator=gen)), F.mse_loss, 2 * 8 * 64 * 64 * 256  # fmt: skip
    if name == "mlp":
        net = nn.Sequential(
            nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
        )
        x = torch.randn(8, 784, generator=gen)
        return net, (x, torch.randint(0, 10, (8,), generator=gen)), F.cross_entropy, 0
    raise ValueError(f"unknown model {name!r}")


def layer_positions(model: nn.Module, x: Tensor) -> dict[str, tuple[int, bool]]:
    """``(B, input needs a gradient)`` of every Linear/Conv2d: ``B`` its input positions (batch
    x tokens, or batch x output pixels)."""
    seen: dict[str, tuple[int, bool]] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, name=name: seen.__setitem__(name, (
                    i[0].numel() // m.in_features if isinstance(m, nn.Linear) else o.numel() // o.shape[1],
                    i[0].requires_grad,
                ))))  # fmt: skip
    model(x)
    for h in hooks:
        h.remove()
    return seen


def layer_step_macs(mod: nn.Module, positions: int, input_grad: bool) -> int:
    """Multiply-adds of one training step (forward and backward) through one layer.

    Plain: ``B m n`` forward, ``B m n`` for the weight gradient, ``B m n`` more for the input
    gradient when the input needs one.  Overparameterized, in the order the layer chooses
    (:meth:`Factorized.prefers_chain`): chained, every factor's forward, weight gradient and
    input gradient (the first factor's only when the layer's input needs one); product, forming
    ``W_N ... W_1`` (``F``) plus the plain layer's cost with the product, and ``2 F`` to
    backpropagate through the formation.
    """
    f = mod._modules.get("weight_factors")
    if not isinstance(f, Factorized):  # a plain layer
        return positions * mod.weight.numel() * (3 if input_grad else 2)
    dims = f.dims  # [n, d_1, ..., m]
    pairs = [a * b for a, b in zip(dims[:-1], dims[1:], strict=True)]
    if f.prefers_chain(positions):
        first = pairs[0] if input_grad else 0
        return f.groups * positions * (2 * sum(pairs) + sum(pairs[1:]) + first)
    form = f.product_cost(positions) - f.groups * positions * dims[0] * dims[-1]
    apply = f.groups * positions * dims[0] * dims[-1]
    return 3 * form + apply * (3 if input_grad else 2)


def step_macs(model: nn.Module, positions: dict[str, tuple[int, bool]], extra: int) -> int:
    """Multiply-adds of one training step of ``model`` (``extra``: the forward multiply-adds
    outside Linear/Conv layers, counted three times: forward, and gradients for both inputs)."""
    total = 3 * extra
    for name, mod in model.named_modules():
        if name in positions:
            total += layer_step_macs(mod, *positions[name])
    return total


def optimizers(model: nn.Module, name: str, head: bool) -> Any:
    """The optimizer of row ``name`` for ``model`` (already overparameterized if it should be);
    Muon takes the 2-D ``nn.Linear`` weights except the output head (when ``head``)."""
    linear = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    ids = {id(w) for w in linear}
    rest = [p for p in model.parameters() if id(p) not in ids]
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-3)
    if name == "muon":
        hidden = linear[:-1] if head else linear
        hid = {id(w) for w in hidden}
        other = [p for p in model.parameters() if id(p) not in hid]
        return [torch.optim.Muon(hidden, lr=1e-3), torch.optim.AdamW(other, lr=1e-3)]
    if name.startswith("e2e"):
        every = 1 if name == "e2e-exact" else DEFAULT_PRECONDITION_EVERY
        groups = [{"params": linear}, {"params": rest, "depth": 1}]
        opt = EndToEndSGD(groups, lr=1e-3, depth=2, momentum=0.9, precondition_every=every)
        if not name.endswith("dense"):
            opt.capture(model)
        return opt
    return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)


def timed(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    sync: Callable[[], None],
    warm: dict[str, Callable[[], object]] | None = None,
) -> dict[str, float]:
    """Median wall time (ms) per call, round-robin so that load drift hits every row alike;
    ``warm[name]()`` runs untimed before each sample (the previous row's memory use and cache
    state must not land on the next row's first step)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if warm is not None:
                warm[name]()
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def muon_macs(weights: list[Tensor], steps: int = 5) -> int:
    """Newton-Schulz multiply-adds of torch's Muon: per step ``2 r^2 k + r^3`` (``r <= k``)."""
    total = 0
    for w in weights:
        r, k = sorted(w.shape)
        total += steps * (2 * r * r * k + r**3)
    return total


def e2e_run(
    base: nn.Module, batch: Batch, loss_fn: Callable[..., Tensor], steps: int, lr: float, every: int
) -> tuple[Tensor, float]:
    """Parameters and last loss after ``steps`` EndToEndSGD steps on a copy of ``base`` (depth 2
    on the Linear weights, momentum 0.9, ``precondition_every=every``; the fixed batch plus a
    seeded perturbation per step, the same for every call)."""
    x, y = batch
    net = copy.deepcopy(base).train()
    linear = [m.weight for m in net.modules() if isinstance(m, nn.Linear)]
    rest = [p for p in net.parameters() if all(p is not w for w in linear)]
    opt = EndToEndSGD(
        [{"params": linear}, {"params": rest, "depth": 1}],
        lr=lr, depth=2, momentum=0.9, precondition_every=every,
    )  # fmt: skip
    opt.capture(net)
    gen = torch.Generator().manual_seed(1)
    loss = torch.zeros(())
    for _ in range(steps):
        noise = 0.1 * torch.randn(x.shape, generator=gen).to(x.device)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x + noise), y)
        loss.backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in net.parameters()]), float(loss.detach())


def trajectory_gap(
    base: nn.Module, batch: Batch, loss_fn: Callable[..., Tensor], steps: int, lr: float
) -> tuple[float, float, float]:
    """``|theta_k - theta_1| / |theta_1 - theta_0|`` of the default ``k`` after ``steps`` steps
    (:func:`e2e_run`), and the two final losses."""
    exact, exact_loss = e2e_run(base, batch, loss_fn, steps, lr, 1)
    amortized, amortized_loss = e2e_run(base, batch, loss_fn, steps, lr, DEFAULT_PRECONDITION_EVERY)
    start = torch.cat([p.detach().flatten() for p in base.parameters()])
    return float((amortized - exact).norm() / (exact - start).norm()), exact_loss, amortized_loss


ROWS = ("sgd", "adamw", "muon", "over-sgd-2", "over-sgd-3", "e2e-exact", "e2e-k", "e2e-k-dense")


def e2e_macs(model: nn.Module, positions: dict[str, tuple[int, bool]], low_rank: bool) -> int:
    """Multiply-adds of applying the depth-2 preconditioner to every ``nn.Linear`` weight: the
    low-rank route where :meth:`EndToEndSGD.capture` takes it (``B`` rows at most the break-even
    count), the dense one elsewhere; a lopsided weight counted with its long side through ``W``
    (the Gram route, taken while its condition number is at most 30) and its recorded outputs."""
    total = 0
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            m, n = mod.weight.shape
            tracked = 4 * max(m, n) > 5 * min(m, n)  # the Gram route: the long side through W
            dense = application_multiply_adds(m, n, 2, tracked)
            rows = positions[name][0]
            fits = low_rank and rows <= (dense - 1) // low_rank_multiply_adds(m, n, 1, 2, tracked)
            total += low_rank_multiply_adds(m, n, rows, 2, tracked) if fits else dense
    return total


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(0)  # the layers' initialization (the data come from ``gen``)
    gen = torch.Generator().manual_seed(0)
    base, (x, y), loss_fn, extra = build(name, gen)
    base, x, y = base.to(device), x.to(device), y.to(device)
    positions = layer_positions(base, x)
    plain = step_macs(base, positions, extra)
    weights = [m.weight for m in base.modules() if isinstance(m, nn.Linear)]
    head = name != "block"
    macs: dict[str, float] = {}
    fns: dict[str, Callable[[], object]] = {}
    warm: dict[str, Callable[[], object]] = {}
    nets: dict[str, nn.Module] = {}
    for row in ROWS:
        net = copy.deepcopy(base).train()
        if row.startswith("over-sgd"):
            overparameterize(net, depth=int(row[-1]), modules=(nn.Linear,))
            macs[row] = step_macs(net, positions, extra) / plain
        if row.startswith("e2e"):
            macs[row] = (plain + e2e_macs(base, positions, not row.endswith("dense"))) / plain
        if row == "muon":
            hidden = weights[:-1] if head else weights
            macs[row] = (plain + muon_macs(hidden)) / plain
        opts = optimizers(net, row, head)
        opts = opts if isinstance(opts, list) else [opts]

        def steps(net: nn.Module = net, opts: list[Any] = opts) -> None:
            for _ in range(args.block):
                for o in opts:
                    o.zero_grad(set_to_none=True)
                loss_fn(net(x), y).backward()
                for o in opts:
                    o.step()

        def forward_backward(net: nn.Module = net, opts: list[Any] = opts) -> None:
            loss_fn(net(x), y).backward()  # no step: the amortization phase is kept
            for o in opts:
                o.zero_grad(set_to_none=True)

        fns[row], warm[row], nets[row] = steps, forward_backward, net
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    ms = {row: t / args.block for row, t in timed(fns, args.repeats, sync, warm).items()}
    if name.startswith("convnet"):
        deployed, original = collapse(nets["over-sgd-2"]).eval(), nets["sgd"].eval()
        with torch.no_grad():
            infer = timed({"orig": lambda: original(x), "coll": lambda: deployed(x)}, args.repeats * args.block, sync)  # fmt: skip
        ms["inference after collapse"] = infer["coll"]
        macs["inference after collapse"] = 1.0
        ms["inference: original"] = infer["orig"]
    gap, exact_loss, amortized_loss = trajectory_gap(base, (x, y), loss_fn, args.gap_steps, 0.01)
    print(f"\n{name}: step MACs {plain / 1e6:.1f}M, default precondition_every {DEFAULT_PRECONDITION_EVERY}")  # fmt: skip
    print(f"{'row':26s} {'ms/step':>9s} {'ratio':>7s} {'MAC ratio':>10s}")
    for row, t in ms.items():
        if row == "inference: original":
            continue
        ref = ms["inference: original"] if row.startswith("inference") else ms["sgd"]
        mac = f"{macs[row]:10.2f}" if row in macs else f"{'':10s}"
        print(f"{row:26s} {t:9.2f} {t / ref:7.2f} {mac}")
    print(
        f"trajectory gap after {args.gap_steps} steps (lr 0.01, momentum 0.9): "
        f"|theta_k - theta_1| / |theta_1 - theta_0| = {gap:.2e}; "
        f"loss exact {exact_loss:.4f}, amortized {amortized_loss:.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=["convnet-8", "convnet-64", "block", "mlp"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--block", type=int, default=DEFAULT_PRECONDITION_EVERY)
    parser.add_argument("--gap-steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, threads {torch.get_num_threads()}, repeats {args.repeats} x {args.block} steps")  # fmt: skip
    for name in args.models:
        bench_model(name, args, device)


if __name__ == "__main__":
    main()

"""Batched full-batch training of deep linear networks on l_p regression.

``K`` configurations (learning rate x depth x init x seed x p) advance as ONE tensor program:
every factor carries a leading ``K`` dimension, the data enter through two matrix products per
step for all configurations together (``X W_e^T`` and ``psi(R)^T X``), and for ``p = 2`` through
the Gram matrix ``X^T X`` only.  Configurations of different depth share a program when the extra
layers are square identity matrices that are frozen (``depths``).  Divergence (NaN/inf, or the
loss above ``blowup`` times its initial value) is checked at the recording steps; a diverged
configuration is marked, dropped from the batch and reported.

Gradients (backpropagation with the data collapsed into ``G = dL/dW_e``, Arora et al. 2018 eq. 4):

    G = psi(X W_e^T - Y)^T X / (b m),   psi(r) = sign(r) |r|^(p-1)
    dL/dW_j = (W_N ... W_{j+1})^T G (W_{j-1} ... W_1)^T.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from overparam import _validate
from overparam._threads import intra_op_threads
from overparam.core.factorization import imbalance as _imbalance
from overparam.core.losses import lp_residual_gradient
from overparam.core.precondition import precondition
from overparam.engine.steps import log_steps
from overparam.training import optimizers as _opt

Progress = Callable[..., Iterator[Any]]


@dataclass
class TrainResult:
    """Recorded curves of ``K`` configurations.

    Attributes:
        steps: the recorded iteration counts (``R`` of them, 0 first).
        loss: ``(K, R)`` float64 loss at those steps; NaN from the step divergence was detected.
        diverged: ``K`` booleans.
        diverged_step: the recorded step at which divergence was detected (None if it was not).
        factors: the final factors, each ``(K, ...)`` (NaN for diverged configurations).
        imbalance: ``(K, R)`` drift of balancedness, ``max_j ||D_j(t) - D_j(0)||_F /
            ||W_j(t) W_j(t)^T||_F`` with ``D_j = W_{j+1}^T W_{j+1} - W_j W_j^T`` (None unless
            requested or for a single layer).
        seconds: wall time of the loop.
        watched: ``(K, R, ...)`` values of ``watch(W_e)`` at the recorded steps (or None).
    """

    steps: list[int]
    loss: Tensor
    diverged: list[bool]
    diverged_step: list[int | None]
    factors: list[Tensor]
    imbalance: Tensor | None
    seconds: float
    watched: Tensor | None = None


SMALL_STEP_MACS = 10**8


def _threads(count: int | None, macs: int) -> contextlib.AbstractContextManager[None]:
    """Intra-op threads for the loop (restored after).

    ``None`` picks one thread when a step costs fewer than ``SMALL_STEP_MACS`` multiply-adds (see
    :mod:`overparam._threads`) and keeps torch's setting otherwise; ``0`` keeps torch's setting.
    """
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise ValueError(f"`threads` must be None or an integer >= 0, got {count!r}")
    if count is None:
        return intra_op_threads(1 if macs < SMALL_STEP_MACS else None)
    return intra_op_threads(count or None)


def _step_macs(X: Tensor, factors: Sequence[Tensor]) -> int:
    """Multiply-adds of one step: two data products per configuration and the factor chain."""
    k, m = factors[0].shape[0], factors[-1].shape[-2]
    chain = sum(W.shape[-1] * W.shape[-2] for W in factors)
    return k * (2 * X.shape[0] * X.shape[1] * m + 3 * m * chain)


def _per_config(value: float | Sequence[float] | Tensor, k: int, name: str) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float64).flatten()
    if t.numel() == 1:
        t = t.expand(k).clone()
    if t.numel() != k:
        raise ValueError(f"`{name}` must be a number or have K = {k} entries, got {t.numel()}")
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ValueError(f"`{name}` must be finite and >= 0, got {t.tolist()}")
    return t


def _psi(R: Tensor, p: float) -> Tensor:
    """``sign(r) |r|^(p-1)``; the polynomial forms for p = 2 and 4 are the same function, faster."""
    if p == 2.0:
        return R
    if p == 4.0:
        return R * R * R
    return lp_residual_gradient(R, p)


class _Problem:
    """The data of one batched run: ``X (b, d)``, ``Y (b, m)``, the p of each active column block."""

    def __init__(self, X: Tensor, Y: Tensor, ps: list[float], gram: bool) -> None:
        self.X, self.Y, self.b, self.m = X, Y, X.shape[0], Y.shape[1]
        self.gram = gram and all(p == 2.0 for p in ps) and X.shape[0] > X.shape[1]
        if self.gram:
            self.C, self.YX = X.mT @ X, Y.mT @ X
        self.set_ps(ps)

    def set_ps(self, ps: list[float]) -> None:
        """Group the (sorted) per-configuration exponents into contiguous column blocks."""
        self.blocks: list[tuple[int, int, float]] = []
        for k, p in enumerate(ps):
            if self.blocks and self.blocks[-1][2] == p:
                self.blocks[-1] = (self.blocks[-1][0], k + 1, p)
            else:
                self.blocks.append((k, k + 1, p))
        self.k = len(ps)
        self.Yrep = self.Y.repeat(1, self.k)
        if self.gram:
            self.YXrep = self.YX.repeat(self.k, 1)

    def residual(self, We: Tensor) -> Tensor:
        """``X W_e^T - Y`` for every configuration, as a ``(b, K m)`` matrix."""
        return self.X @ We.reshape(-1, We.shape[-1]).mT - self.Yrep

    def gradient(self, We: Tensor) -> Tensor:
        """``G = dL/dW_e``, shape ``(K, m, d)``."""
        if self.gram:
            G = We.reshape(-1, We.shape[-1]) @ self.C - self.YXrep
        else:
            R = self.residual(We)
            m = self.m
            parts = [_psi(R[:, a * m : z * m], p) for a, z, p in self.blocks]
            G = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)).mT @ self.X
        return (G / (self.b * self.m)).view(We.shape)

    def loss(self, We: Tensor) -> Tensor:
        """``mean |X W_e^T - Y|^p / p`` per configuration, shape ``(K,)``."""
        R = self.residual(We).reshape(self.b, self.k, self.m)
        out = [R[:, a:z].abs().pow(p).mean(dim=(0, 2)) / p for a, z, p in self.blocks]
        return torch.cat(out)


def end_to_end(factors: Sequence[Tensor]) -> Tensor:
    """``W_e = W_N ... W_1`` for batched factors (``W_1`` first).

    Multiplied from the narrow end (outputs when ``m < d``), so wide square layers cost
    matrix-vector products only.
    """
    if factors[-1].shape[-2] < factors[0].shape[-1]:
        out = factors[-1]
        for W in reversed(factors[:-1]):
            out = out @ W
        return out
    out = factors[0]
    for W in factors[1:]:
        out = W @ out
    return out


def factor_gradients(factors: Sequence[Tensor], G: Tensor) -> list[Tensor]:
    """``dL/dW_j = (W_N...W_{j+1})^T G (W_{j-1}...W_1)^T`` for all ``j``, from ``G = dL/dW_e``.

    Computed with two chains of products of the narrow side (``m`` rows), so the cost is
    ``O(m sum_j d_j d_{j-1})``: no product of two wide factors is formed.
    """
    n = len(factors)
    lefts: list[Tensor | None] = [None] * n  # lefts[j] = W_N ... W_{j+2} (None: identity)
    for j in range(n - 2, -1, -1):
        nxt = factors[j + 1]
        lefts[j] = nxt if lefts[j + 1] is None else lefts[j + 1] @ nxt  # type: ignore[operator]
    grads = []
    U = G
    for j in range(n):
        left = lefts[j]
        grads.append(U if left is None else left.mT @ U)
        if j + 1 < n:
            U = U @ factors[j].mT
    return grads


def _check_data(X: Tensor, Y: Tensor) -> tuple[Tensor, Tensor]:
    _validate.floating(X, "X", min_dim=2)
    _validate.floating(Y, "Y", min_dim=1)
    if Y.dim() == 1:
        Y = Y.unsqueeze(-1)
    if X.dim() != 2 or Y.dim() != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"`X` must be (b, d) and `Y` (b,) or (b, m) with the same b, got {tuple(X.shape)} "
            f"and {tuple(Y.shape)}"
        )
    return X, Y.to(X.dtype)


def _check_factors(factors: Sequence[Tensor], X: Tensor, Y: Tensor) -> list[Tensor]:
    if len(factors) == 0:
        raise ValueError("`factors` must contain at least one (K, d_j, d_{j-1}) tensor, got none")
    out = [_validate.floating(W, f"factors[{j}]", min_dim=3) for j, W in enumerate(factors)]
    k = out[0].shape[0]
    dims = [X.shape[1]] + [W.shape[-2] for W in out]
    for j, W in enumerate(out):
        if W.shape != (k, dims[j + 1], dims[j]) or W.dtype != X.dtype:
            raise ValueError(
                f"`factors[{j}]` must have shape {(k, dims[j + 1], dims[j])} and dtype {X.dtype}, "
                f"got {tuple(W.shape)} {W.dtype}"
            )
    if dims[-1] != Y.shape[1]:
        raise ValueError(f"`factors` must end with {Y.shape[1]} outputs, got {dims[-1]}")
    return [W.detach().clone() for W in out]


def _record_steps(steps: int, record: Sequence[int] | None) -> list[int]:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`steps` must be an integer >= 0, got {steps!r}")
    if record is None:
        return log_steps(steps, 100)
    out = sorted({0, steps, *(int(s) for s in record)})
    if out[0] < 0 or out[-1] > steps:
        raise ValueError(f"`record` steps must lie in [0, {steps}], got {list(record)}")
    return out


def _drift(factors: Sequence[Tensor], initial: list[Tensor]) -> Tensor:
    now = _imbalance(factors)
    worst = torch.zeros(factors[0].shape[0], dtype=torch.float64)
    for j, (d, d0) in enumerate(zip(now, initial, strict=True)):
        ref = torch.linalg.matrix_norm(factors[j] @ factors[j].mT).clamp_min(1e-300)
        worst = torch.maximum(worst, (torch.linalg.matrix_norm(d - d0) / ref).double())
    return worst


class _Batch:
    """The active configurations of a run: parameters, rates, exponents, optimizer state."""

    def __init__(
        self,
        params: list[Tensor],
        lrs: list[Tensor],
        ps: list[float],
        tags: list[int] | None = None,
    ) -> None:
        self.params, self.lrs, self.ps = params, lrs, ps
        self.tags = tags if tags is not None else [0] * len(ps)
        self.runs = _opt.blocks(self.tags)
        self.active = torch.arange(params[0].shape[0])
        self.state: dict[str, Any] = {}

    def keep(self, keep: Tensor, problem: _Problem) -> None:
        self.active = self.active[keep]
        self.params = [W.index_select(0, keep) for W in self.params]
        self.lrs = [lr.index_select(0, keep) for lr in self.lrs]
        self.ps = [self.ps[i] for i in keep.tolist()]
        self.tags = [self.tags[i] for i in keep.tolist()]
        self.runs = _opt.blocks(self.tags)
        if self.state:
            self.state = _opt.select_state(self.state, keep)
        problem.set_ps(self.ps)


def _loop(
    problem: _Problem,
    batch: _Batch,
    step: Callable[[_Batch], None],
    record: list[int],
    blowup: float,
    track: bool,
    progress: Progress | None,
    watch: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Any]:
    """Advance every active configuration, record the loss, drop the diverged ones."""
    k_all = batch.params[0].shape[0]
    loss = torch.full((k_all, len(record)), float("nan"), dtype=torch.float64)
    drift = torch.full_like(loss, float("nan")) if track and len(batch.params) > 1 else None
    div_step: list[int | None] = [None] * k_all
    final = [torch.full_like(W, float("nan")) for W in batch.params]
    initial = _imbalance(batch.params) if drift is not None else None
    loss0 = problem.loss(end_to_end(batch.params)).double()
    watched: Tensor | None = None
    intervals: Iterable[int] = range(len(record))
    if progress is not None:
        intervals = progress(intervals, total=len(record), desc="record steps")
    for r in intervals:
        if batch.active.numel() == 0:
            continue
        for _ in range(record[r] - record[r - 1] if r > 0 else 0):
            step(batch)
        We = end_to_end(batch.params)
        now = problem.loss(We).double()
        if watch is not None:
            seen = watch(We)
            if watched is None:
                watched = seen.new_full((k_all, len(record), *seen.shape[1:]), float("nan"))
            watched[batch.active, r] = seen
        bad = ~torch.isfinite(now) | (now > blowup * loss0.clamp_min(1e-300))
        loss[batch.active, r] = torch.where(bad, torch.nan, now)
        if drift is not None and initial is not None:
            drift[batch.active, r] = _drift(batch.params, initial)
        if bool(bad.any()):
            for i in batch.active[bad].tolist():
                div_step[i] = record[r]
            keep = (~bad).nonzero().flatten()
            loss0 = loss0[keep]
            if initial is not None:
                initial = [d.index_select(0, keep) for d in initial]
            batch.keep(keep, problem)
    for W, Wf in zip(final, batch.params, strict=True):
        W[batch.active] = Wf
    return {"loss": loss, "div": div_step, "drift": drift, "final": final, "watched": watched}


def _sorted_by_p(ps: Tensor, tags: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
    """The order that makes equal ``(p, tag)`` contiguous (stable), and its inverse."""
    keys = ps.tolist()
    rank = sorted(range(len(keys)), key=lambda i: (keys[i], 0 if tags is None else tags[i]))
    order = torch.tensor(rank, dtype=torch.long)
    return order, torch.argsort(order)


def _result(record: list[int], out: dict[str, Any], inverse: Tensor, seconds: float) -> TrainResult:
    loss, div_step, drift, final = out["loss"], out["div"], out["drift"], out["final"]
    watched = out["watched"]
    ds = [div_step[i] for i in inverse.tolist()]
    return TrainResult(
        steps=record,
        loss=loss[inverse],
        diverged=[s is not None for s in ds],
        diverged_step=ds,
        factors=[W[inverse] for W in final],
        imbalance=None if drift is None else drift[inverse],
        seconds=seconds,
        watched=None if watched is None else watched[inverse],
    )


def train(
    X: Tensor,
    Y: Tensor,
    factors: Sequence[Tensor],
    lr: float | Sequence[float] | Tensor,
    p: float | Sequence[float] | Tensor = 2.0,
    steps: int = 1000,
    optimizer: str | Sequence[str] = "gd",
    hyper: Mapping[str, float] | Sequence[Mapping[str, float] | None] | None = None,
    depths: Sequence[int] | None = None,
    record: Sequence[int] | None = None,
    blowup: float = 1e4,
    track_imbalance: bool = False,
    gram: bool = True,
    progress: Progress | None = None,
    watch: Callable[[Tensor], Tensor] | None = None,
    threads: int | None = None,
) -> TrainResult:
    """Train ``K`` deep linear networks ``x -> W_N ... W_1 x`` on ``lp_loss(X W_e^T, Y, p)`` at once.

    Args:
        X: inputs ``(b, d)``; Y: targets ``(b,)`` or ``(b, m)`` (same dtype as ``X``).
        factors: ``[W_1, ..., W_N]``, ``W_j`` of shape ``(K, d_j, d_{j-1})``, ``d_0 = d``,
            ``d_N = m`` (copied, not modified).
        lr: learning rate, one number or ``K`` numbers.
        p: loss exponent ``>= 1``, one number or ``K`` numbers (p = 4: the l4 loss).
        steps: number of full-batch iterations.
        optimizer: ``"gd"``, ``"adagrad"``, ``"adadelta"`` or ``"adam"``, or ``K`` of them;
            ``hyper`` overrides its defaults (see :mod:`overparam.training.optimizers`), one
            mapping or ``K`` of them.  Configurations with different settings still share the
            data products of each step (one tensor program).
        depths: per-configuration depth ``N_k <= N``: layers ``j > N_k`` are frozen and must be
            identity matrices, so configuration ``k`` is a depth-``N_k`` network.
        record: steps at which the loss is recorded (default ``log_steps(steps, 100)``).
        blowup: a configuration whose loss exceeds ``blowup`` times its initial loss (or is not
            finite) at a recording step is marked diverged and dropped.
        track_imbalance: also record the balancedness drift (see :class:`TrainResult`).
        gram: for p = 2 use ``X^T X`` instead of the data at each step (same function).
        progress: ``ctx.progress``-like wrapper for the loop over recording intervals.
        watch: a function of the batched end-to-end matrix ``(K, m, d) -> (K, ...)`` recorded at
            the recording steps (``TrainResult.watched``).
        threads: intra-op threads for the loop; ``None``: one thread for small steps (see
            ``SMALL_STEP_MACS``), else torch's setting; ``0``: torch's setting.

    Returns:
        A :class:`TrainResult`.

    Reference: Arora, Cohen & Hazan (2018), Section 8 (GD on depth-N linear nets, l_p regression).
    """
    X, Y = _check_data(X, Y)
    params = _check_factors(factors, X, Y)
    k, n = params[0].shape[0], len(params)
    settings, tags = _opt.check_settings(optimizer, hyper, k)
    rates = _per_config(lr, k, "lr")
    ps = _per_config(p, k, "p")
    if bool((ps < 1).any()):
        raise ValueError(f"`p` must be >= 1, got {ps.tolist()}")
    _validate.positive(blowup, "blowup")
    record_at = _record_steps(steps, record)
    masks = _depth_masks(depths, params, k)
    order, inverse = _sorted_by_p(ps, tags)
    params = [W[order] for W in params]
    lrs = [(rates[order] * masks[j][order]).to(X.dtype).view(k, 1, 1) for j in range(n)]
    batch = _Batch(params, lrs, ps[order].tolist(), [tags[i] for i in order.tolist()])
    batch.state = _opt.init_states(settings, batch.tags, params)
    problem = _Problem(X, Y, batch.ps, gram)

    def step(b: _Batch) -> None:
        grads = factor_gradients(b.params, problem.gradient(end_to_end(b.params)))
        _opt.apply_settings(settings, b.runs, b.params, grads, b.state, b.lrs)

    start = time.perf_counter()
    with torch.no_grad(), _threads(threads, _step_macs(X, params)):
        out = _loop(problem, batch, step, record_at, blowup, track_imbalance, progress, watch)
    return _result(record_at, out, inverse, time.perf_counter() - start)


def _depth_masks(depths: Sequence[int] | None, params: list[Tensor], k: int) -> list[Tensor]:
    n = len(params)
    if depths is None:
        return [torch.ones(k, dtype=torch.float64) for _ in range(n)]
    ds = _validate.int_sequence(depths, "depths")
    if len(ds) != k or max(ds) > n:
        raise ValueError(f"`depths` must have K = {k} entries each <= {n}, got {ds}")
    masks = []
    for j in range(n):
        mask = torch.tensor([1.0 if j < d else 0.0 for d in ds], dtype=torch.float64)
        frozen = (mask == 0).nonzero().flatten()
        W = params[j][frozen]
        if W.numel() and (
            W.shape[-1] != W.shape[-2]
            or not torch.equal(W, torch.eye(W.shape[-1], dtype=W.dtype).expand_as(W))
        ):
            raise ValueError(
                f"`factors[{j}]` must be the identity for configurations with depth <= {j}, "
                "so that they are shallower networks"
            )
        masks.append(mask)
    return masks


def emulate(
    X: Tensor,
    Y: Tensor,
    W0: Tensor,
    lr: float | Sequence[float] | Tensor,
    depth: float,
    p: float | Sequence[float] | Tensor = 2.0,
    steps: int = 1000,
    record: Sequence[int] | None = None,
    blowup: float = 1e4,
    progress: Progress | None = None,
    threads: int | None = None,
) -> TrainResult:
    """The end-to-end rule on one matrix: ``W <- W - lr A_{N,W}(dL/dW)`` for ``K`` configurations.

    ``A_{N,W}`` is :func:`overparam.precondition` (Arora, Cohen & Hazan 2018, Theorem 1, eq. 7);
    the paper validates Theorem 1 by comparing this "emulation" with GD on the factors (Fig. 1).

    Args:
        W0: initial end-to-end matrices ``(K, m, d)``; the other arguments as in :func:`train`.
        depth: the depth ``N >= 1`` of the emulated network (real values allowed).
    """
    X, Y = _check_data(X, Y)
    (W,) = _check_factors([W0], X, Y)
    n = _validate.depth(depth)
    k = W.shape[0]
    rates = _per_config(lr, k, "lr")
    ps = _per_config(p, k, "p")
    record_at = _record_steps(steps, record)
    order, inverse = _sorted_by_p(ps)
    batch = _Batch([W[order]], [rates[order].to(X.dtype).view(k, 1, 1)], ps[order].tolist())
    problem = _Problem(X, Y, batch.ps, gram=True)

    def step(b: _Batch) -> None:
        (We,) = b.params
        We.sub_(b.lrs[0] * precondition(We, problem.gradient(We), n))

    start = time.perf_counter()
    with torch.no_grad(), _threads(threads, _step_macs(X, [W])):
        out = _loop(problem, batch, step, record_at, blowup, False, progress)
    return _result(record_at, out, inverse, time.perf_counter() - start)

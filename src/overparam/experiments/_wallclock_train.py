"""One timed training run: only the optimizer's steps are timed, evaluations are not.

Each step (``zero_grad``, forward, backward, ``step``) is timed with ``time.perf_counter`` (wall
clock) and ``time.thread_time`` (CPU time of the calling thread; with one intra-op thread the
whole step runs on it, so it is the step's cost without the other processes' contention).  At the
checkpoints the training loss on a fixed probe subset is evaluated outside the timed region.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import torch

from overparam.engine import Metrics, log_steps
from overparam.experiments._wallclock_optim import build, parse
from overparam.experiments._wallclock_tasks import Task

BLOW_UP = 1e3  # a probe loss above BLOW_UP * max(1, initial loss) counts as diverged


def checkpoints(steps: int, points: int) -> list[int]:
    """Sorted steps in ``[0, steps]``: about ``points / 2`` log-spaced and ``points / 2`` even."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an integer >= 1, got {steps!r}")
    if isinstance(points, bool) or not isinstance(points, int) or points < 4:
        raise ValueError(f"`points` must be an integer >= 4, got {points!r}")
    even = np.linspace(0, steps, points // 2 + 1).round().astype(int)
    return sorted(set(log_steps(steps, points // 2)) | {int(s) for s in even})


def _bad(loss: float, first: float) -> bool:
    return not math.isfinite(loss) or loss > BLOW_UP * max(1.0, first)


def _timed_steps(
    task: Task, model: Any, opt: Any, draw: Any, count: int
) -> tuple[float, float, list[float], bool]:
    """Run ``count`` steps: their wall seconds, thread-CPU seconds, per-step wall, and whether the
    minibatch loss or a gradient became non-finite (the run then stops before that step's update;
    the gradient check is not timed)."""
    wall = cpu = 0.0
    each: list[float] = []
    model.train()
    for _ in range(count):
        x, y = draw()
        c0, t0 = time.thread_time(), time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = task.loss(model, x, y)
        if not bool(torch.isfinite(loss)):
            return wall, cpu, each, True
        loss.backward()
        c1, t1 = time.thread_time(), time.perf_counter()
        if not _gradients_finite(model):
            return wall, cpu, each, True
        c2, t2 = time.thread_time(), time.perf_counter()
        opt.step()
        dt = (t1 - t0) + (time.perf_counter() - t2)
        cpu += (c1 - c0) + (time.thread_time() - c2)
        wall += dt
        each.append(dt)
    return wall, cpu, each, False


def _gradients_finite(model: Any) -> bool:
    """Whether every gradient is finite (a step from an overflowed gradient is a divergence)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None and p.grad.numel()]
    return not grads or bool(torch.stack([g.abs().amax() for g in grads]).isfinite().all())


def train_piece(
    task: Task, optimizer: str, lr: float, seed: int, steps: int, settings: dict[str, Any]
) -> Metrics:
    """Train ``task`` with ``optimizer`` at ``lr`` from seed ``seed`` for ``steps`` steps.

    Args:
        settings: ``points`` (checkpoints), ``momentum``, ``precondition_every``.

    Returns:
        Metrics: checkpoint ``steps``, cumulative training ``seconds`` and ``cpu_seconds`` at each,
        probe ``loss`` at each, ``final_loss`` (None when diverged), ``diverged``, ``step_ms``
        (wall, median over the steps after the first), ``cpu_step_ms`` (mean thread CPU time per
        step), ``train_seconds``, held-out metrics, ``params``
        and the 1-minute load average before and after.
    """
    spec = parse(optimizer)
    marks = checkpoints(steps, settings["points"])
    load_before = os.getloadavg()[0]
    model, opt = build(
        spec, task.build(seed), lr, settings["momentum"], task.init, settings["precondition_every"]
    )
    draw = task.batches(seed)
    seconds, cpus, losses, per_step = [0.0], [0.0], [task.probe(model)], []
    diverged, done = _bad(losses[0], losses[0]), 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the same dropout masks for every optimizer
        for mark in marks[1:]:
            if diverged:
                break
            wall, cpu, each, blew_up = _timed_steps(task, model, opt, draw, mark - done)
            done = mark
            per_step += each
            seconds.append(seconds[-1] + wall)
            cpus.append(cpus[-1] + cpu)
            losses.append(math.nan if blew_up else task.probe(model))
            diverged = blew_up or _bad(losses[-1], losses[0])
    out: Metrics = {
        "steps": marks[: len(losses)],
        "seconds": seconds,
        "cpu_seconds": cpus,
        "loss": losses,
        "final_loss": None if diverged else losses[-1],
        "diverged": diverged,
        "step_ms": 1e3 * float(np.median(per_step[1:] or per_step or [math.nan])),
        "cpu_step_ms": 1e3 * cpus[-1] / max(1, len(per_step)),
        "train_seconds": seconds[-1],
        "params": sum(p.numel() for p in model.parameters()),
        "load": [load_before, os.getloadavg()[0]],
    }
    if not diverged:
        out.update(task.evaluate(model))
    return out

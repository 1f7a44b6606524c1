"""SGD with the end-to-end preconditioner: depth-N acceleration with no extra parameters.

Gradient descent with step ``eta`` on the factors of a balanced depth-``N`` linear network moves
the end-to-end matrix ``W`` by ``-eta A_{N,W}(grad)`` plus ``O(eta^2)`` (Arora, Cohen & Hazan 2018,
Theorem 1), with

    A_{N,W}(G) = sum_{j=1..N} (W W^T)^((N-j)/N) G (W^T W)^((j-1)/N).

:class:`EndToEndSGD` applies that update directly to each weight ``W`` (a parameter with 2 or more
dimensions; a conv kernel is read as the matrix ``out x (in * k ...)``) and plain SGD to the others
(biases, norms).  Structure follows ``torch.optim.SGD``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from overparam import _validate
from overparam.core.precondition import precondition


def _stack(tensors: list[Tensor]) -> Tensor:
    """``torch.stack``, as a view (no copy) for a single tensor."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def end_to_end_direction(params: list[Tensor], grads: list[Tensor], depth: float) -> list[Tensor]:
    """``A_{N,W}(G)`` for every ``(W, G)`` with ``W.ndim >= 2``; ``G`` unchanged otherwise.

    ``W`` of shape ``(m, ...)`` is read as the matrix ``(m, prod(rest))``.  Parameters of equal
    shape, dtype and device are stacked and preconditioned in one batched call (one batched SVD).

    Args:
        params: the current parameters ``W``.
        grads: their gradients (same shapes).
        depth: the depth ``N >= 1`` of the emulated overparameterization.

    Returns:
        The update directions, in the order of ``params``.
    """
    if len(params) != len(grads):
        raise ValueError(f"`grads` must have one entry per param ({len(params)}), got {len(grads)}")
    n = _validate.depth(depth)
    out: list[Tensor] = list(grads)
    if n == 1.0:
        return out
    buckets: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        if p.dim() >= 2:
            _validate.same_shape(p, g, "param", "grad")
            buckets[(tuple(p.shape), p.dtype, p.device)].append(i)
    for (shape, _, _), idx in buckets.items():
        rows = shape[0]
        W = _stack([params[i].detach().reshape(rows, -1) for i in idx])
        G = _stack([grads[i].reshape(rows, -1) for i in idx])
        D = precondition(W, G, n)
        for k, i in enumerate(idx):
            out[i] = D[k].reshape(shape)
    return out


def end_to_end_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: float,
    depth: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> None:
    """One step, in place: ``d = A_{N,W}(g + wd W)``; ``b = mu b + d``; ``W <- W - lr b``.

    Weight decay is added to the gradient before preconditioning (it is the gradient of
    ``wd/2 ||W||^2``, part of the loss); momentum accumulates the preconditioned directions (the
    update of the emulated factors' end-to-end matrix).  ``momentum_buffers`` entries that are
    ``None`` are created (a copy of ``d``) and stored back in the list.  With ``depth == 1`` this is
    ``torch.optim.SGD`` (no dampening, no Nesterov).

    Args:
        params: parameters to update (``W.ndim >= 2``: preconditioned; others: plain SGD).
        grads: their gradients.
        momentum_buffers: one buffer (or ``None``) per parameter; updated in place.
        lr: step size ``> 0``.
        depth: depth ``N >= 1`` of the emulated overparameterization.
        momentum: ``mu >= 0``.
        weight_decay: ``wd >= 0``.
    """
    _validate.positive(lr, "lr")
    _validate.positive(momentum, "momentum", allow_zero=True)
    _validate.positive(weight_decay, "weight_decay", allow_zero=True)
    if len(momentum_buffers) != len(params):
        raise ValueError(
            f"`momentum_buffers` must have one entry per param ({len(params)}), "
            f"got {len(momentum_buffers)}"
        )
    if weight_decay != 0.0:
        grads = [g.add(p.detach(), alpha=weight_decay) for p, g in zip(params, grads, strict=True)]
    directions = end_to_end_direction(params, grads, depth)
    with torch.no_grad():
        for i, (p, d) in enumerate(zip(params, directions, strict=True)):
            if momentum != 0.0:
                buf = momentum_buffers[i]
                if buf is None:
                    buf = torch.clone(d).detach()
                    momentum_buffers[i] = buf
                else:
                    buf.mul_(momentum).add_(d)
                d = buf
            p.add_(d, alpha=-lr)


class EndToEndSGD(torch.optim.Optimizer):
    """SGD whose matrix parameters follow the depth-``N`` end-to-end dynamics.

    For each parameter ``W`` with ``W.ndim >= 2``: ``W <- W - lr A_{N,W}(grad + wd W)`` (with
    momentum on the preconditioned direction); others get plain SGD.  ``depth`` may differ per
    param group (``depth=1`` is plain SGD).  The trajectory matches gradient descent on an actually
    overparameterized, balanced model to ``O(lr)`` (Arora, Cohen & Hazan 2018, Theorem 1).

    Args:
        params: iterable of parameters or param-group dicts.
        lr: step size ``> 0``.
        depth: depth ``N >= 1`` (real values allowed).
        momentum: momentum factor ``>= 0``.
        weight_decay: L2 coefficient ``>= 0``.

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> opt = EndToEndSGD(model.parameters(), lr=0.1, depth=2, momentum=0.9)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> opt.step()
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        depth: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        _validate.positive(lr, "lr")
        _validate.depth(depth)
        _validate.positive(momentum, "momentum", allow_zero=True)
        _validate.positive(weight_decay, "weight_decay", allow_zero=True)
        defaults = {"lr": lr, "depth": depth, "momentum": momentum, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its own ``lr``/``depth``/``momentum``/``weight_decay`` are validated."""
        for key, check in (("lr", False), ("momentum", True), ("weight_decay", True)):
            if key in param_group:
                _validate.positive(param_group[key], key, allow_zero=check)
        if "depth" in param_group:
            _validate.depth(param_group["depth"])
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update; ``closure`` (re-evaluating the loss with gradients) is called if given.

        Returns:
            The loss returned by ``closure``, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, buffers = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError("EndToEndSGD does not support sparse gradients")
                params.append(p)
                grads.append(p.grad)
                buffers.append(self.state[p].get("momentum_buffer"))
            if not params:
                continue
            end_to_end_sgd(
                params,
                grads,
                buffers,
                lr=group["lr"],
                depth=group["depth"],
                momentum=group["momentum"],
                weight_decay=group["weight_decay"],
            )
            if group["momentum"] != 0.0:
                for p, buf in zip(params, buffers, strict=True):
                    self.state[p]["momentum_buffer"] = buf
        return loss

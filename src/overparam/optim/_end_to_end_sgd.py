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
from overparam.core.precondition import _drop_rounding, precondition, precondition_coefficients


def reduced_precondition(W: Tensor, G: Tensor, depth: float) -> Tensor:
    """``A_{N,W}(G)`` of a wide ``W`` (``m <= n``) from a QR of ``W^T`` and an ``m x m`` SVD.

    With ``W^T = Q R`` (reduced QR, ``Q`` of shape ``n x m``) and ``R^T = U diag(s) V_R^T`` (SVD),
    ``W = U diag(s) (Q V_R)^T`` is an SVD of ``W``.  The operator is orthogonally equivariant,
    ``A_{N,WO}(GO) = A_{N,W}(G) O`` with ``O = [Q, Q_perp]``, and on ``W O = [R^T, 0]`` it acts
    blockwise: ``A_{N,R^T}`` on the first ``m`` columns and ``M = (W W^T)^((N-1)/N)`` (the
    null-space coefficient, ``0^0 = 1``) on the rest.  Hence, exactly for any rank,

        A_{N,W}(G) = A_{N,R^T}(G Q) Q^T + M (G - G Q Q^T)
                   = U ((a_ik - c_i) * (U^T G Q V_R)_ik) V_R^T Q^T + M G,

    with ``a_ik = a(s_i, s_k)`` (:func:`overparam.core.precondition_coefficients`),
    ``c_i = a(s_i, 0) = s_i^(2(N-1)/N)`` and ``M = U diag(c) U^T``.  Cost: one QR of ``n x m``,
    one SVD of ``m x m`` and three ``m x m x n`` products (a 512 x 3136 dense layer: about 3x
    cheaper than :func:`precondition` on one CPU thread).  Singular values below
    ``max(m, n) eps s_max`` are zeros, as in :func:`precondition`.  A tall ``W`` uses
    ``A_{N,W}(G) = A_{N,W^T}(G^T)^T``.  Batched.

    Args:
        W: matrices ``(..., m, n)``.
        G: directions, same shape.
        depth: the depth ``N >= 1``.

    Returns:
        ``A_{N,W}(G)`` (Arora, Cohen & Hazan 2018, Theorem 1), shape ``(..., m, n)``.
    """
    _validate.same_shape(W, G, "W", "G")
    if W.dim() < 2:
        raise ValueError(f"`W` must have at least 2 dimensions, got shape {tuple(W.shape)}")
    m, n = W.shape[-2], W.shape[-1]
    if m > n:
        return reduced_precondition(W.mT, G.mT, depth).mT
    N = _validate.depth(depth)
    Q, R = torch.linalg.qr(W.mT)
    U, s, VRh = torch.linalg.svd(R.mT)
    s = _drop_rounding(s, m, n, W.dtype)
    a = precondition_coefficients(s.unsqueeze(-1), s.unsqueeze(-2), N)
    c = precondition_coefficients(s, torch.zeros_like(s), N)
    core = U.mT @ (G @ Q) @ VRh.mT
    inner = U @ ((a - c.unsqueeze(-1)) * core) @ VRh
    M = (U * c.unsqueeze(-2)) @ U.mT
    return inner @ Q.mT + M @ G


def _direction(W: Tensor, G: Tensor, depth: float) -> Tensor:
    """:func:`precondition`, or :func:`reduced_precondition` when the long side > 1.25x the short.

    The two are the same operator; their CPU costs (one thread, float32, 256 x 300 to 512 x 1024)
    cross at an aspect ratio of about 1.25.
    """
    m, n = W.shape[-2], W.shape[-1]
    if 4 * max(m, n) > 5 * min(m, n):
        return reduced_precondition(W, G, depth)
    return precondition(W, G, depth)


def _stack(tensors: list[Tensor]) -> Tensor:
    """``torch.stack``, as a view (no copy) for a single tensor."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def end_to_end_direction(params: list[Tensor], grads: list[Tensor], depth: float) -> list[Tensor]:
    """``A_{N,W}(G)`` for every ``(W, G)`` with ``W.ndim >= 2``; ``G`` unchanged otherwise.

    ``W`` of shape ``(m, ...)`` is read as the matrix ``(m, prod(rest))``.  Parameters of equal
    shape, dtype and device are stacked and preconditioned in one batched call (one batched SVD);
    matrices with one side more than 1.25x the other go through :func:`reduced_precondition`.

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
        D = _direction(W, G, n)
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

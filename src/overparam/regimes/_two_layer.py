"""A two-layer ReLU network, its GD, its NTK and its linearization (lazy vs rich training).

Model (seed 004, slides "Overparameterized nonlinear Least Squares" and "Learning polynomials with
neural nets"): ``f(x; W, a) = a^T relu(W x) / scale`` with ``W`` of shape ``(m, d)`` and ``a`` of
shape ``(m,)``; ``scale = 1`` is the slide's ``v^T ReLU(W x)``, ``scale = sqrt(m)`` the NTK
parameterization.  Loss ``L = 1/(2n) sum_i (f(x_i) - y_i)^2``; GD ``theta <- theta - lr grad L``.
Lazy regime (slide "Lemma"; Chizat, Oyallon & Bach 2019): along GD,
``f(theta_t) ~ f(theta_0) + J(theta_0) (theta_t - theta_0)``.
Every function is batched over leading dimensions of ``W``/``a`` (configurations, seeds).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.func import jvp

from overparam import _validate


def _check_net(W: Tensor, a: Tensor, X: Tensor, scale: float) -> None:
    _validate.floating(W, "W", min_dim=2)
    _validate.floating(a, "a", min_dim=1)
    _validate.floating(X, "X", min_dim=2)
    _validate.positive(scale, "scale")
    if a.shape[-1] != W.shape[-2]:
        raise ValueError(f"`a` must have {W.shape[-2]} entries (rows of `W`), got {tuple(a.shape)}")
    if X.shape[-1] != W.shape[-1]:
        raise ValueError(
            f"`X` must have {W.shape[-1]} columns (the input dimension of `W`), got {tuple(X.shape)}"
        )


def two_layer(W: Tensor, a: Tensor, X: Tensor, scale: float = 1.0) -> Tensor:
    """``f(X) = relu(X W^T) a / scale``: inputs ``X (..., n, d)``, ``W (..., m, d)``, ``a (..., m)``;
    returns ``(..., n)`` (batch dimensions broadcast)."""
    _check_net(W, a, X, scale)
    return (torch.relu(X @ W.mT) @ a.unsqueeze(-1)).squeeze(-1) / scale


def two_layer_loss_and_grads(
    W: Tensor, a: Tensor, X: Tensor, y: Tensor, scale: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """``L = 1/(2n) ||f(X) - y||^2`` and its gradients in closed form.

    With ``P = X W^T``, ``r = (f - y) / n``: ``grad_a = relu(P)^T r / scale`` and
    ``grad_W = ((r a^T) * 1[P > 0])^T X / scale``.

    Returns:
        ``(loss (...), grad_W (..., m, d), grad_a (..., m))``.
    """
    _check_net(W, a, X, scale)
    if y.shape[-1] != X.shape[-2]:
        raise ValueError(f"`y` must have {X.shape[-2]} entries (rows of `X`), got {tuple(y.shape)}")
    return _loss_and_grads(W, a, X, y, scale)


def _loss_and_grads(
    W: Tensor, a: Tensor, X: Tensor, y: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    pre = X @ W.mT
    hidden = torch.relu(pre)
    err = (hidden @ a.unsqueeze(-1)).squeeze(-1) / scale - y
    n = X.shape[-2]
    r = err / n
    grad_a = (hidden.mT @ r.unsqueeze(-1)).squeeze(-1) / scale
    # back = r a^T * 1[P > 0] / scale, built in place in the buffer of P: two (..., n, m)
    # temporaries per step instead of six (they dominate the time at large width)
    back = pre.gt_(0).mul_(r.unsqueeze(-1)).mul_(a.unsqueeze(-2) / scale)
    return 0.5 * err.pow(2).sum(-1) / n, back.mT @ X, grad_a


def _rate(lr: float | Tensor, batch: torch.Size, dtype: torch.dtype) -> Tensor:
    rate = torch.as_tensor(lr, dtype=dtype)
    if not bool(torch.isfinite(rate).all()) or not bool((rate > 0).all()):
        raise ValueError(f"`lr` must be finite and > 0, got {lr!r}")
    try:
        return rate.expand(batch)
    except RuntimeError:
        raise ValueError(
            f"`lr` must be a number or broadcast to the batch shape {tuple(batch)}, "
            f"got shape {tuple(rate.shape)}"
        ) from None


def two_layer_gd(
    W0: Tensor,
    a0: Tensor,
    X: Tensor,
    y: Tensor,
    lr: float | Tensor,
    steps: int,
    record: Sequence[int] | None = None,
    scale: float = 1.0,
) -> dict[str, Tensor]:
    """Full-batch GD on both layers of :func:`two_layer` (loss of :func:`two_layer_loss_and_grads`).

    Args:
        W0, a0: initial weights ``(..., m, d)``, ``(..., m)``.
        X, y: data ``(..., n, d)``, ``(..., n)``.
        lr: step size, a number or a tensor of the batch shape ``W0.shape[:-2]``.
        steps: number of steps (>= 0).
        record: steps in ``[0, steps]`` at which to store the weights; default ``[0, steps]``.
        scale: output scale of the model.

    Returns:
        ``steps`` (R,), ``W`` (R, ..., m, d), ``a`` (R, ..., m), ``loss`` (R, ...).
    """
    _check_net(W0, a0, X, scale)
    if y.shape[-1] != X.shape[-2]:
        raise ValueError(f"`y` must have {X.shape[-2]} entries (rows of `X`), got {tuple(y.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`steps` must be an integer >= 0, got {steps!r}")
    rec = sorted(set(record if record is not None else [0, steps]))
    if rec and (rec[0] < 0 or rec[-1] > steps):
        raise ValueError(f"`record` must lie in [0, {steps}], got {rec[0]}..{rec[-1]}")
    rate = _rate(lr, W0.shape[:-2], W0.dtype)
    W, a = W0.clone(), a0.clone()
    wanted = set(rec)
    Ws, As, losses = [], [], []
    for t in range(steps + 1):
        loss, gW, ga = _loss_and_grads(W, a, X, y, scale)
        if t in wanted:
            Ws.append(W.clone())
            As.append(a.clone())
            losses.append(loss)
        if t == steps:
            break
        W = W - rate[..., None, None] * gW
        a = a - rate[..., None] * ga
    return {
        "steps": torch.tensor(rec),
        "W": torch.stack(Ws),
        "a": torch.stack(As),
        "loss": torch.stack(losses),
    }


def linearization_gap(
    W0: Tensor, a0: Tensor, W: Tensor, a: Tensor, X: Tensor, scale: float = 1.0
) -> Tensor:
    """``f(theta) - [f(theta_0) + J(theta_0)(theta - theta_0)]`` on the inputs ``X``.

    The Jacobian-vector product is exact (forward-mode ``torch.func.jvp`` at ``theta_0`` with
    tangent ``theta - theta_0``); the Jacobian is never materialized.  Shapes as in
    :func:`two_layer` (``W0``, ``a0`` broadcast against ``W``, ``a``, e.g. one init for a whole
    recorded trajectory); returns ``(..., n)``.
    """
    _check_net(W0, a0, X, scale)
    _check_net(W, a, X, scale)
    try:
        W0 = W0.expand(torch.broadcast_shapes(W0.shape, W.shape)).contiguous()
        a0 = a0.expand(torch.broadcast_shapes(a0.shape, a.shape)).contiguous()
        W, a = W.expand_as(W0).contiguous(), a.expand_as(a0).contiguous()
    except RuntimeError:
        raise ValueError(
            f"`W`, `a` {tuple(W.shape)}, {tuple(a.shape)} must broadcast with `W0`, `a0` "
            f"{tuple(W0.shape)}, {tuple(a0.shape)}"
        ) from None

    def f(w: Tensor, v: Tensor) -> Tensor:
        return (torch.relu(X @ w.mT) @ v.unsqueeze(-1)).squeeze(-1) / scale

    f0, jv = jvp(f, (W0, a0), (W - W0, a - a0))[:2]
    return f(W, a) - f0 - jv


def ntk_gram(W: Tensor, a: Tensor, X: Tensor, scale: float = 1.0) -> Tensor:
    """The tangent kernel ``K = J J^T`` of :func:`two_layer` on ``X``, in closed form.

    ``K = [relu(P) relu(P)^T + (D diag(a^2) D^T) * (X X^T)] / scale^2`` with ``P = X W^T`` and
    ``D = 1[P > 0]`` (``*`` elementwise).  Returns ``(..., n, n)``.
    """
    _check_net(W, a, X, scale)
    pre = X @ W.mT
    hidden = torch.relu(pre)
    gates = (pre > 0).to(W.dtype)
    inner = (gates * a.unsqueeze(-2).pow(2)) @ gates.mT
    return (hidden @ hidden.mT + inner * (X @ X.mT)) / scale**2


def paired_init(
    m: int, d: int, generator: torch.Generator, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor]:
    """Unit-scale init with ``f(theta_0) = 0``: rows of ``W`` ~ N(0, I/d), ``a`` ~ N(0, 1), the
    second half of the neurons a copy of the first with ``a`` negated (Chizat et al. 2019, Sec. 2.2).

    ``m`` must be even.  Multiply both by ``alpha`` for init scale ``alpha`` (the ReLU net is
    2-homogeneous, so ``f`` stays 0 and the NTK scales as ``alpha^2``).
    """
    if isinstance(m, bool) or not isinstance(m, int) or m < 2 or m % 2:
        raise ValueError(f"`m` must be an even integer >= 2, got {m!r}")
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"`d` must be an integer >= 1, got {d!r}")
    W = torch.randn(m // 2, d, generator=generator, dtype=dtype) / d**0.5
    a = torch.randn(m // 2, generator=generator, dtype=dtype)
    return torch.cat([W, W]), torch.cat([a, -a])

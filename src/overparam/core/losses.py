"""The l_p regression loss of Arora, Cohen & Hazan (2018) and the end-to-end gradient it induces."""

from __future__ import annotations

from torch import Tensor

from overparam import _validate


def _check_p(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p >= 1:
        raise ValueError(f"`p` must be a real number >= 1, got {p!r}")
    return float(p)


def lp_loss(pred: Tensor, target: Tensor, p: float) -> Tensor:
    """``mean(|pred - target|^p) / p`` over the last two dimensions (batched over leading dims).

    Args:
        pred: predictions, shape ``(..., b, m)`` (a 1-D tensor is treated as one output column).
        target: targets broadcastable to ``pred``.
        p: exponent ``p >= 1`` (2: least squares; 4: the l4 loss of the paper).

    Returns:
        The loss, shape ``pred.shape[:-2]`` (a scalar for 1-D or 2-D inputs).
    """
    p = _check_p(p)
    _validate.floating(pred, "pred", min_dim=1)
    _validate.floating(target, "target", min_dim=1)
    r = (pred - target).abs().pow(p)
    dims = (-1,) if r.dim() == 1 else (-2, -1)
    return r.mean(dim=dims) / p


def lp_residual_gradient(residual: Tensor, p: float) -> Tensor:
    """``d/dr [|r|^p / p] = sign(r) |r|^(p-1)`` elementwise."""
    return residual.sign() * residual.abs().pow(p - 1.0)


def lp_gradient(W: Tensor, X: Tensor, Y: Tensor, p: float) -> Tensor:
    """Gradient in ``W`` of ``lp_loss(X W^T, Y, p)``: ``psi(X W^T - Y)^T X / (b m)``.

    This is the gradient that the end-to-end rule preconditions, so experiments can run the
    rule on a single matrix ("emulation", Arora et al. 2018, Section 8).

    Args:
        W: end-to-end matrix, shape ``(..., m, d)``.
        X: inputs, shape ``(b, d)`` (or batched ``(..., b, d)``).
        Y: targets, shape ``(b, m)`` (or batched ``(..., b, m)``).
        p: exponent ``p >= 1``.

    Returns:
        ``dL/dW``, shape of ``W`` broadcast with the batch of ``X`` and ``Y``.
    """
    p = _check_p(p)
    _validate.floating(W, "W", min_dim=2)
    _validate.floating(X, "X", min_dim=2)
    _validate.floating(Y, "Y", min_dim=2)
    if X.shape[-1] != W.shape[-1] or Y.shape[-1] != W.shape[-2] or X.shape[-2] != Y.shape[-2]:
        raise ValueError(
            f"shapes must satisfy X (b, d), Y (b, m), W (m, d); got X {tuple(X.shape)}, "
            f"Y {tuple(Y.shape)}, W {tuple(W.shape)}"
        )
    residual = X @ W.mT - Y
    b, m = residual.shape[-2], residual.shape[-1]
    return lp_residual_gradient(residual, p).mT @ X / (b * m)


def lp_loss_of_matrix(W: Tensor, X: Tensor, Y: Tensor, p: float) -> Tensor:
    """``lp_loss(X W^T, Y, p)`` for an end-to-end matrix ``W`` of shape ``(..., m, d)``."""
    return lp_loss(X @ W.mT, Y, p)

"""The l_p regression loss of Arora, Cohen & Hazan (2018) and the end-to-end gradient it induces."""

from __future__ import annotations

import math

from torch import Tensor

from overparam import _validate


def _check_p(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 1 <= p < math.inf:
        raise ValueError(f"`p` must be a real number >= 1, got {p!r}")
    return float(p)


def _check_pred_target(pred: Tensor, target: Tensor) -> None:
    """1-D: equal shapes.  Otherwise equal ``(b, m)`` and broadcastable leading dimensions."""
    _validate.floating(pred, "pred", min_dim=1)
    _validate.floating(target, "target", min_dim=1)
    if target.dtype != pred.dtype:
        raise ValueError(
            f"`target` must have the dtype of `pred` ({pred.dtype}), got {target.dtype}"
        )
    core = 1 if min(pred.dim(), target.dim()) == 1 else 2
    if pred.dim() != target.dim() and core == 1 or pred.shape[-core:] != target.shape[-core:]:
        raise ValueError(
            f"`target` must have the shape of `pred` {tuple(pred.shape)} (leading batch "
            f"dimensions may broadcast), got {tuple(target.shape)}"
        )
    _validate.batch_shapes({"pred": pred.shape[:-2], "target": target.shape[:-2]})
    if pred.shape[-core:].numel() == 0:  # a mean over no entries is undefined
        raise ValueError(
            f"`pred` must contain at least one sample and one output, got shape {tuple(pred.shape)}"
        )


def lp_loss(pred: Tensor, target: Tensor, p: float) -> Tensor:
    """``mean(|pred - target|^p) / p`` over the last two dimensions (batched over leading dims).

    Args:
        pred: predictions, shape ``(..., b, m)``, or ``(b,)`` for one output column.
        target: targets of the same dtype and shape ``(..., b, m)`` (leading batch dimensions
            broadcast; the last two must equal those of ``pred``), or ``(b,)`` with a 1-D ``pred``.
            Never broadcast across ``b`` or ``m``: ``(b, 1)`` against ``(b,)`` is an error.
            ``b`` and ``m`` must be >= 1 (a mean over no entries is undefined); an empty batch
            gives an empty result.
        p: exponent ``p >= 1`` (2: least squares; 4: the l4 loss of the paper).

    Returns:
        The loss, shape of the broadcast batch dimensions (a scalar for 1-D or 2-D inputs).

    Example:
        >>> import torch
        >>> lp_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [1.0]]), p=2)
        tensor(1.2500)
    """
    p = _check_p(p)
    _check_pred_target(pred, target)
    work = _validate.compute_dtype(pred.dtype)  # half precision: |r|^p in float32
    r = (pred.to(work) - target.to(work)).abs().pow(p)
    dims = (-1,) if r.dim() == 1 else (-2, -1)
    return (r.mean(dim=dims) / p).to(pred.dtype)


def lp_residual_gradient(residual: Tensor, p: float) -> Tensor:
    """``d/dr [|r|^p / p] = sign(r) |r|^(p-1)`` elementwise."""
    return residual.sign() * residual.abs().pow(p - 1.0)


def _check_regression(W: Tensor, X: Tensor, Y: Tensor) -> None:
    """``W (..., m, d)``, ``X (..., b, d)``, ``Y (..., b, m)``, one dtype, broadcastable batches."""
    _validate.floating(W, "W", min_dim=2)
    _validate.floating(X, "X", min_dim=2)
    _validate.floating(Y, "Y", min_dim=2)
    for name, x in (("X", X), ("Y", Y)):
        if x.dtype != W.dtype:
            raise ValueError(f"`{name}` must have the dtype of `W` ({W.dtype}), got {x.dtype}")
    if X.shape[-1] != W.shape[-1]:
        raise ValueError(
            f"`X` must have W.shape[-1] = {W.shape[-1]} columns, got shape {tuple(X.shape)}"
        )
    if Y.shape[-1] != W.shape[-2]:
        raise ValueError(
            f"`Y` must have W.shape[-2] = {W.shape[-2]} columns, got shape {tuple(Y.shape)}"
        )
    if Y.shape[-2] != X.shape[-2]:
        raise ValueError(f"`Y` must have the {X.shape[-2]} rows of `X`, got shape {tuple(Y.shape)}")
    _validate.batch_shapes({"W": W.shape[:-2], "X": X.shape[:-2], "Y": Y.shape[:-2]})
    if X.shape[-2] == 0:  # the gradient is a mean over samples: undefined over none
        raise ValueError(f"`X` must contain at least one sample (row), got shape {tuple(X.shape)}")


def lp_gradient(W: Tensor, X: Tensor, Y: Tensor, p: float) -> Tensor:
    """Gradient in ``W`` of ``lp_loss(X W^T, Y, p)``: ``psi(X W^T - Y)^T X / (b m)``.

    This is the gradient that the end-to-end rule preconditions, so experiments can run the
    rule on a single matrix ("emulation", Arora et al. 2018, Section 8).

    Args:
        W: end-to-end matrix, shape ``(..., m, d)``.
        X: inputs, shape ``(b, d)`` (or batched ``(..., b, d)``), ``b >= 1``.
        Y: targets, shape ``(b, m)`` (or batched ``(..., b, m)``).
        p: exponent ``p >= 1``.

    Returns:
        ``dL/dW``, shape of ``W`` broadcast with the batch of ``X`` and ``Y``.
    """
    p = _check_p(p)
    _check_regression(W, X, Y)
    work = _validate.compute_dtype(W.dtype)  # half precision: computed in float32
    Xw = X.to(work)
    residual = Xw @ W.to(work).mT - Y.to(work)
    b, m = residual.shape[-2], residual.shape[-1]
    return (lp_residual_gradient(residual, p).mT @ Xw / (b * m)).to(W.dtype)


def lp_loss_of_matrix(W: Tensor, X: Tensor, Y: Tensor, p: float) -> Tensor:
    """``lp_loss(X W^T, Y, p)`` for an end-to-end matrix ``W`` of shape ``(..., m, d)``."""
    _check_p(p)
    _check_regression(W, X, Y)
    return lp_loss(X @ W.mT, Y, p)

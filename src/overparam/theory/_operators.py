"""Two-layer linear network ``W = W1 W2`` under least squares: the operator tau, the imbalance D.

Convention of the source (Xu, Tarmoun, Min, Mallada & Vidal 2023, "The convergence of
over-parametrized linear networks optimized via gradient descent"), kept everywhere in
:mod:`overparam.theory`: data ``X`` of shape ``(n, d)``, targets ``Y`` of shape ``(n, m)``,
``W1`` of shape ``(d, h)``, ``W2`` of shape ``(h, m)``, product ``W = W1 W2`` (``d x m``) and
``L(W) = 1/2 ||X W - Y||_F^2``.  (The rest of overparam writes ``W_N ... W_1`` acting on the left;
the two conventions are transposes of each other.)  Every function is batched over leading dims.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from overparam import _validate
from overparam.core import imbalance as _core_imbalance


def _pair(W1: Tensor, W2: Tensor) -> None:
    _validate.floating(W1, "W1", min_dim=2)
    _validate.floating(W2, "W2", min_dim=2)
    if W1.shape[-1] != W2.shape[-2]:
        raise ValueError(
            f"`W2` must have W1.shape[-1] = {W1.shape[-1]} rows (hidden width), "
            f"got shape {tuple(W2.shape)}"
        )


def tau(G: Tensor, W1: Tensor, W2: Tensor) -> Tensor:
    """The loss-dynamics operator ``tau(G) = G W2^T W2 + W1 W1^T G`` (source, eq. 5).

    ``tau = gamma^* o gamma`` with ``gamma(G) = (G W2^T, W1^T G)`` (eq. 3); it is Hermitian, positive
    semi-definite, and ``dL/dt = -<grad, tau(grad)>`` under gradient flow (eq. 4).

    Args:
        G: ``(..., d, m)``, e.g. the gradient ``X^T (X W - Y)``.
        W1: ``(..., d, h)``.  W2: ``(..., h, m)``.

    Returns:
        ``(..., d, m)``.
    """
    _pair(W1, W2)
    _validate.floating(G, "G", min_dim=2)
    if G.shape[-2:] != (W1.shape[-2], W2.shape[-1]):
        raise ValueError(
            f"`G` must have shape (..., {W1.shape[-2]}, {W2.shape[-1]}) = (d, m), "
            f"got {tuple(G.shape)}"
        )
    return G @ (W2.mT @ W2) + (W1 @ W1.mT) @ G


def tau_extremes(W1: Tensor, W2: Tensor) -> tuple[Tensor, Tensor]:
    """Exact ``(lambda_min(tau), lambda_max(tau))`` of the operator of eq. (5).

    As a matrix on ``vec(G)`` (column-major), ``tau = (W2^T W2) (x) I_d + I_m (x) (W1 W1^T)``, a
    Kronecker sum; its eigenvalues are ``lambda_i(W1 W1^T) + lambda_j(W2^T W2)`` for all ``i, j``,
    hence ``lambda_min(tau) = lambda_min(W1 W1^T) + lambda_min(W2^T W2)`` and likewise for the max.
    (``lambda_min(W1 W1^T) = 0`` when ``h < d``.)

    Returns:
        Two tensors of shape ``W1.shape[:-2]``.
    """
    _pair(W1, W2)
    a = torch.linalg.eigvalsh(W1 @ W1.mT)
    b = torch.linalg.eigvalsh(W2.mT @ W2)
    lo = (a[..., 0] + b[..., 0]).clamp_min(0.0)
    return lo, a[..., -1] + b[..., -1]


def two_layer_imbalance(W1: Tensor, W2: Tensor) -> Tensor:
    """Imbalance ``D = W1^T W1 - W2 W2^T`` (``h x h``), constant under gradient flow (eq. 11).

    Computed with :func:`overparam.imbalance` on the transposed factors ``[W1^T, W2^T]`` (whose
    product ``W2^T W1^T = W^T`` is the core's left-acting convention): the core returns
    ``W2 W2^T - W1^T W1 = -D``.
    """
    _pair(W1, W2)
    return -_core_imbalance([W1.mT, W2.mT])[0]


@dataclass(frozen=True)
class LeastSquares:
    """``L(W) = 1/2 ||X W - Y||_F^2`` with ``X`` of full column rank; ``K``-smooth and ``mu``-PL.

    ``K = sigma_max(X)^2``, ``mu = sigma_min(X)^2`` (source, before eq. 13), ``kappa = K / mu``.
    Losses are reported as the excess ``L(W) - L* = 1/2 ||X (W - W_ls)||_F^2`` with
    ``W_ls = X^+ Y`` (exact: ``X W_ls - Y`` is orthogonal to the range of ``X``), so that they can
    reach 1e-8 even when ``Y`` is noisy and ``L* > 0``; the PL inequality holds for the excess loss.

    Build with :meth:`from_data`.  Attributes have a leading batch shape ``B`` (maybe empty).
    """

    H: Tensor  # X^T X, (..., d, d)
    W_ls: Tensor  # (..., d, m)
    K: Tensor  # (...)
    mu: Tensor  # (...)
    L_star: Tensor  # (...)

    @classmethod
    def from_data(cls, X: Tensor, Y: Tensor) -> LeastSquares:
        """Precompute ``X^T X``, ``W_ls``, ``K``, ``mu`` and ``L*`` from ``X (..., n, d)``, ``Y``."""
        _validate.floating(X, "X", min_dim=2)
        _validate.floating(Y, "Y", min_dim=2)
        if Y.shape[-2] != X.shape[-2]:
            raise ValueError(f"`Y` must have {X.shape[-2]} rows like `X`, got {tuple(Y.shape)}")
        s = torch.linalg.svdvals(X)
        if X.shape[-2] < X.shape[-1] or bool((s[..., -1] <= 0).any()):
            raise ValueError(f"`X` must have full column rank, got shape {tuple(X.shape)}")
        W_ls = torch.linalg.lstsq(X, Y).solution
        r = X @ W_ls - Y
        return cls(X.mT @ X, W_ls, s[..., 0] ** 2, s[..., -1] ** 2, 0.5 * r.square().sum((-2, -1)))

    @property
    def kappa(self) -> Tensor:
        return self.K / self.mu

    def loss(self, W: Tensor) -> Tensor:
        """Excess loss ``L(W) - L* = 1/2 tr((W - W_ls)^T X^T X (W - W_ls))``."""
        E = W - self.W_ls
        return 0.5 * (E * (self.H @ E)).sum((-2, -1))

    def grad(self, W: Tensor) -> Tensor:
        """``grad l(W) = X^T (X W - Y) = X^T X (W - W_ls)``."""
        return self.H @ (W - self.W_ls)


def product_update(W1: Tensor, W2: Tensor, G: Tensor, eta: Tensor | float) -> Tensor:
    """``W(t+1) = W - eta tau(G) + eta^2 G W^T G`` (source, eq. 16; claim X4).

    Exact for one GD step ``W1 <- W1 - eta G W2^T``, ``W2 <- W2 - eta W1^T G``.  ``eta`` is a
    scalar or a tensor broadcastable to the batch shape.
    """
    e = torch.as_tensor(eta, dtype=G.dtype)
    e = e.reshape(*e.shape, 1, 1)
    W = W1 @ W2
    return W - e * tau(G, W1, W2) + e * e * (G @ W.mT @ G)


def compress_factors(W1: Tensor, W2: Tensor) -> tuple[Tensor, Tensor]:
    """Exact width reduction of GD on ``W = W1 W2`` to hidden width ``r = min(h, d + m)``.

    GD (eq. 1) adds ``-eta grad W2^T`` to ``W1`` (rows in the row space of ``W2^T``) and
    ``-eta W1^T grad`` to ``W2`` (columns in the column space of ``W1^T``), so the subspace
    ``V = range([W1(0)^T, W2(0)])`` of ``R^h`` (dimension ``<= d + m``) holds the rows of ``W1(t)``
    and the columns of ``W2(t)`` for all ``t``.  With ``Q`` (``h x r``, orthonormal columns
    spanning ``V``, from a QR factorisation), ``W1 = A Q^T`` and ``W2 = Q B`` with ``A = W1 Q``,
    ``B = Q^T W2``, and GD on ``(A, B)`` is GD on ``(W1, W2)`` expressed in that basis: the
    product, the loss, ``tau`` (hence its spectrum) and ``||D(t) - D(0)||_F`` (``D = Q D_AB Q^T``)
    are identical at every step.  Returns the factors unchanged when ``h <= d + m``.

    Returns:
        ``(A, B)`` of shapes ``(..., d, r)`` and ``(..., r, m)``.
    """
    _pair(W1, W2)
    d, h, m = W1.shape[-2], W1.shape[-1], W2.shape[-1]
    if h <= d + m:
        return W1, W2
    Q = torch.linalg.qr(torch.cat([W1.mT, W2], dim=-1)).Q  # (..., h, d + m)
    return W1 @ Q, Q.mT @ W2

"""Feature learning by a one-hidden-layer ReLU net on ``y = g(U x)`` and transfer of its features.

Source: seed 004, slides "Learning polynomials with neural nets" and "Transfer Learning Result"
(Damian, Lee & Soltanolkotabi, "Neural networks can learn representations with gradient descent",
COLT 2022).  Inputs ``x ~ N(0, I_d)``, labels ``y = g(U x)`` with ``U`` of shape ``(r, d)``,
``r << d``, orthonormal rows, and ``g`` a polynomial of degree ``p`` written in the Hermite basis
(the one the slides' proof uses): ``g(z) = sum_k c_k prod_j He_{s_kj}(z_j)``.  After GD on both
layers (see :func:`overparam.regimes.two_layer_gd`) the first layer's top-``r`` right singular
subspace should align with ``row(U)``; a new task ``g_T(U x)`` is then learned by refitting only the
last layer (ridge regression) on few samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from overparam import _validate
from overparam.sensing import principal_angles, top_subspace

HermiteTerms = Sequence[tuple[float, Sequence[int]]]


def hermite(z: Tensor, k: int) -> Tensor:
    """Probabilists' Hermite polynomial ``He_k(z)``: ``He_0 = 1``, ``He_1 = z``,
    ``He_{k+1} = z He_k - k He_{k-1}``; orthogonal under N(0, 1) with ``E[He_k^2] = k!``."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"`k` must be an integer >= 0, got {k!r}")
    prev, cur = torch.ones_like(z), z
    if k == 0:
        return prev
    for j in range(1, k):
        prev, cur = cur, z * cur - j * prev
    return cur


def _check_terms(terms: HermiteTerms, r: int | None = None) -> list[tuple[float, tuple[int, ...]]]:
    out = []
    for term in terms:
        try:
            coef, powers = float(term[0]), tuple(int(s) for s in term[1])
        except (TypeError, ValueError, IndexError):
            raise ValueError(
                f"`terms` must be (coefficient, exponents) pairs, got {term!r}"
            ) from None
        if not powers or min(powers) < 0 or (r is not None and len(powers) != r):
            want = f"{r} exponents >= 0" if r is not None else "exponents >= 0"
            raise ValueError(f"`terms` must have {want} per term, got {term!r}")
        out.append((coef, powers))
    if not out:
        raise ValueError("`terms` must contain at least one (coefficient, exponents) pair, got []")
    if len({p for _, p in out}) != len(out):
        raise ValueError(f"`terms` must not repeat an exponent tuple, got {list(terms)!r}")
    return out


def hermite_polynomial(Z: Tensor, terms: HermiteTerms) -> Tensor:
    """``g(z) = sum_k c_k prod_j He_{s_kj}(z_j)`` for each row of ``Z (..., n, r)``; returns ``(..., n)``.

    Args:
        Z: the low-dimensional inputs ``U x``.
        terms: ``[(c_k, (s_k1, ..., s_kr)), ...]``, distinct exponent tuples.
    """
    _validate.floating(Z, "Z", min_dim=1)
    checked = _check_terms(terms, Z.shape[-1])
    out = torch.zeros(Z.shape[:-1], dtype=Z.dtype)
    for coef, powers in checked:
        prod = torch.ones_like(out)
        for j, s in enumerate(powers):
            if s:
                prod = prod * hermite(Z[..., j], s)
        out = out + coef * prod
    return out


def hermite_moments(terms: HermiteTerms) -> tuple[float, float]:
    """``(E g, Var g)`` under ``z ~ N(0, I_r)``: ``E g = c_0`` (the all-zero exponent term) and
    ``Var g = sum_{k != 0} c_k^2 prod_j s_kj!`` (orthogonality of the Hermite products)."""
    checked = _check_terms(terms)
    mean = sum(c for c, p in checked if not any(p))
    var = sum(c**2 * math.prod(math.factorial(s) for s in p) for c, p in checked if any(p))
    return mean, var


def planted_subspace(
    d: int, r: int, generator: torch.Generator, dtype: torch.dtype = torch.float64
) -> Tensor:
    """A random ``U (r, d)`` with orthonormal rows (QR of a Gaussian matrix), ``1 <= r <= d``."""
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"`d` must be an integer >= 1, got {d!r}")
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= d:
        raise ValueError(f"`r` must be an integer in [1, {d}], got {r!r}")
    return torch.linalg.qr(torch.randn(d, r, generator=generator, dtype=dtype))[0].mT.contiguous()


def feature_angles(W: Tensor, U: Tensor) -> Tensor:
    """Principal angles (radians, ascending) between the top-``r`` right singular subspace of the
    first-layer weights ``W (..., m, d)`` and the row space of ``U (..., r, d)``, ``r = U.shape[-2]``.

    ``cos theta_i = sigma_i(Q_W^T Q_U)`` (Björck & Golub 1973), via
    :func:`overparam.sensing.principal_angles`.  Returns ``(..., r)``.
    """
    _validate.floating(W, "W", min_dim=2)
    _validate.floating(U, "U", min_dim=2)
    if U.shape[-1] != W.shape[-1]:
        raise ValueError(f"`U` must have {W.shape[-1]} columns like `W`, got {tuple(U.shape)}")
    r = U.shape[-2]
    if r > min(W.shape[-2:]):
        raise ValueError(f"`U` must have at most {min(W.shape[-2:])} rows, got {r}")
    batch = torch.broadcast_shapes(W.shape[:-2], U.shape[:-2])
    d = W.shape[-1]
    Q = top_subspace(W.mT, r).expand(*batch, d, r)
    return principal_angles(Q, U.mT.expand(*batch, d, r))


def ridge_readout(features: Tensor, y: Tensor, ridge: float) -> Tensor:
    """Last-layer weights ``v = argmin ||Phi v - y||^2 + lam ||v||^2``, ``lam = ridge tr(Phi^T Phi) / m``.

    Solved in the dual ``v = Phi^T (Phi Phi^T + lam I)^{-1} y`` when ``N <= m``, else in the primal;
    ``ridge = 0`` gives the minimum-norm least-squares solution (pseudo-inverse).

    Args:
        features: ``Phi (..., N, m)``.
        y: ``(..., N)``.
        ridge: relative regularization ``>= 0``.

    Returns:
        ``v (..., m)``.
    """
    _validate.floating(features, "features", min_dim=2)
    _validate.floating(y, "y", min_dim=1)
    _validate.positive(ridge, "ridge", allow_zero=True)
    N, m = features.shape[-2:]
    if y.shape[-1] != N:
        raise ValueError(f"`y` must have {N} entries (rows of `features`), got {tuple(y.shape)}")
    if ridge == 0:
        return (torch.linalg.pinv(features) @ y.unsqueeze(-1)).squeeze(-1)
    lam = ridge * features.pow(2).sum((-2, -1)) / m
    if N <= m:
        gram = features @ features.mT + lam[..., None, None] * torch.eye(N, dtype=y.dtype)
        return (features.mT @ torch.linalg.solve(gram, y.unsqueeze(-1))).squeeze(-1)
    gram = features.mT @ features + lam[..., None, None] * torch.eye(m, dtype=y.dtype)
    return torch.linalg.solve(gram, features.mT @ y.unsqueeze(-1)).squeeze(-1)


def readout_error(
    W: Tensor, X_train: Tensor, y_train: Tensor, X_test: Tensor, y_test: Tensor, ridge: float
) -> Tensor:
    """Relative test error of a last layer refit on frozen ReLU features ``relu(W x)``.

    ``v = ridge_readout(relu(X_train W^T), y_train, ridge)``; returns
    ``mean((relu(X_test W^T) v - y_test)^2) / mean((y_test - mean y_test)^2)``, shape ``W.shape[:-2]``.
    """
    _validate.floating(W, "W", min_dim=2)
    for name, X in (("X_train", X_train), ("X_test", X_test)):
        _validate.floating(X, name, min_dim=2)
        if X.shape[-1] != W.shape[-1]:
            raise ValueError(f"`{name}` must have {W.shape[-1]} columns, got {tuple(X.shape)}")
    v = ridge_readout(torch.relu(X_train @ W.mT), y_train, ridge)
    pred = (torch.relu(X_test @ W.mT) @ v.unsqueeze(-1)).squeeze(-1)
    centered = y_test - y_test.mean(-1, keepdim=True)
    return (pred - y_test).pow(2).mean(-1) / centered.pow(2).mean(-1)

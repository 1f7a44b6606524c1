"""Phase analysis of small-init GD for matrix sensing: power method, subspace angles, phases, S5.

Source: seed 004 (Stöger & Soltanolkotabi 2021; Xie, Stöger & Soltanolkotabi 2022), slides
"Role of randomness + overparameterization", "Convergence phases", "Insights and predictions" and
the implicit-balancing lemma ``||B_t||_F <= ||B_0||_F + 2 mu (L(0) - L(t))``, ``B = U^T U - V^T V``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from overparam import _validate
from overparam.sensing._operator import GaussianSensing


def spectral_matrix(op: GaussianSensing, y: Tensor, symmetric: bool) -> Tensor:
    """The spectral matrix ``Z = A*(y)`` (``= A*A(X Y^T)`` for noiseless ``y``).

    Symmetric model: returns ``(Z + Z^T) / 2`` so that GD from small ``U_0`` starts as
    ``U_{t+1} ~ (I + mu Z) U_t``.  Asymmetric: returns ``Z`` (``d1 x d2``); the lifted iterate
    ``W = [U; V]`` starts as ``W_{t+1} ~ (I + mu lift(Z)) W_t`` (see :func:`lift`).
    """
    Z = op.adjoint(y)
    return 0.5 * (Z + Z.mT) if symmetric else Z


def lift(Z: Tensor) -> Tensor:
    """``Sym(Z) = [[0, Z], [Z^T, 0]]`` (slide "Symmetrization I"), shape ``(..., d1+d2, d1+d2)``."""
    _validate.floating(Z, "Z", min_dim=2)
    d1, d2 = Z.shape[-2:]
    top = torch.cat([torch.zeros(*Z.shape[:-2], d1, d1, dtype=Z.dtype), Z], -1)
    bottom = torch.cat([Z.mT, torch.zeros(*Z.shape[:-2], d2, d2, dtype=Z.dtype)], -1)
    return torch.cat([top, bottom], -2)


def power_iterates(Z: Tensor, W0: Tensor, mu: float, steps: Sequence[int]) -> Tensor:
    """Exact power-method iterates ``(I + mu Z)^t W0`` for each ``t`` in ``steps``.

    ``Z`` symmetric ``(D, D)``; computed from one eigendecomposition ``Z = Q diag(l) Q^T`` as
    ``Q diag((1 + mu l)^t) Q^T W0`` (no repeated multiplication).  Returns ``(len(steps), ..., D, r)``.
    """
    _validate.floating(Z, "Z", min_dim=2)
    _validate.floating(W0, "W0", min_dim=2)
    _validate.positive(mu, "mu")
    if Z.shape[-1] != Z.shape[-2] or W0.shape[-2] != Z.shape[-1]:
        raise ValueError(
            f"`Z` must be square (D, D) with D = rows of `W0` {tuple(W0.shape)}, got {tuple(Z.shape)}"
        )
    lam, Q = torch.linalg.eigh(0.5 * (Z + Z.mT))
    coeff = Q.mT @ W0
    t = torch.as_tensor(list(steps), dtype=Z.dtype)
    growth = (1.0 + mu * lam).unsqueeze(0) ** t.reshape(-1, *([1] * lam.dim()))
    extra = max(0, W0.dim() - Z.dim())  # batch dims of W0 beyond those of Z
    growth = growth.reshape(len(t), *([1] * extra), *lam.shape, 1)
    return Q @ (growth * coeff)


def top_subspace(M: Tensor, k: int) -> Tensor:
    """Orthonormal basis ``(..., D, k)`` of the top-``k`` left singular subspace of ``M``."""
    _validate.floating(M, "M", min_dim=2)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(M.shape[-2:]):
        raise ValueError(f"`k` must be an integer in [1, {min(M.shape[-2:])}], got {k!r}")
    return torch.linalg.svd(M, full_matrices=False)[0][..., :k]


def principal_angles(A: Tensor, B: Tensor) -> Tensor:
    """Principal angles (radians, ascending) between the column spaces of ``A`` and ``B``.

    ``cos theta_i = sigma_i(Q_A^T Q_B)`` with orthonormal bases ``Q_A``, ``Q_B`` (Björck & Golub
    1973); ``min(rank)`` angles.  Both inputs must have full column rank.
    """
    _validate.floating(A, "A", min_dim=2)
    _validate.floating(B, "B", min_dim=2)
    if A.shape[-2] != B.shape[-2]:
        raise ValueError(f"`B` must have {A.shape[-2]} rows like `A`, got {tuple(B.shape)}")
    QA, QB = torch.linalg.qr(A)[0], torch.linalg.qr(B)[0]
    cos = torch.linalg.svdvals(QA.mT @ QB).clamp(-1.0, 1.0)
    return torch.arccos(cos)


def subspace_sin(U: Tensor, Q: Tensor) -> Tensor:
    """``sin`` of the largest principal angle between the top-``k`` left singular subspace of ``U``
    and the orthonormal columns of ``Q`` (``k`` = columns of ``Q``): ``||(I - Q Q^T) P_k(U)||_2``."""
    _validate.floating(Q, "Q", min_dim=2)
    top = top_subspace(U, Q.shape[-1])
    return torch.linalg.matrix_norm(top - Q @ (Q.mT @ top), ord=2)


def first_reached(
    series: Tensor,
    times: Sequence[int],
    threshold: Tensor | float,
    below: bool = True,
    start: Tensor | None = None,
) -> Tensor:
    """First recorded time (from ``times``, dim 0 of ``series``) with ``series <= threshold``
    (``>=`` when ``below=False``) at or after ``start``; ``nan`` where never reached."""
    t = torch.as_tensor(list(times), dtype=torch.float64).reshape(-1, *([1] * (series.dim() - 1)))
    hit = series <= threshold if below else series >= threshold
    if start is not None:
        hit = hit & (t >= start.unsqueeze(0))
    idx = hit.to(torch.int64).argmax(0)
    first = t.expand_as(series).gather(0, idx.unsqueeze(0)).squeeze(0)
    return torch.where(hit.any(0), first, torch.full_like(first, math.nan))


def detect_phases(
    times: Sequence[int],
    sin_gd: Tensor,
    signal: Tensor,
    rel_error: Tensor,
    sigma_star: float,
    angle_tol: float = 0.1,
    signal_frac: float = 0.5,
    floor_factor: float = 2.0,
    error_tol: float | None = None,
) -> dict[str, Tensor]:
    """The three phases of small-init GD (slide "Convergence phases"), batched over trailing dims.

    * spectral phase ``[0, t1)``: ``t1`` = first time the top-``r*`` subspace of ``U_t`` is aligned
      with the top-``r*`` eigenspace, ``sin theta_t <= angle_tol``;
    * saddle avoidance ``[t1, t2)``: ``t2`` = first time after ``t1`` the signal
      ``sigma_{r*}(Q^T U_t)`` reaches ``signal_frac * sigma_star`` (the slide: "minimum eigenvalue of
      U_t W_t grows"; ``sigma_star = sigma_{r*}(X)``);
    * refinement ``[t2, t3)``: ``t3`` = first time after ``t2`` the relative error is within
      ``floor_factor`` of its minimum over the run, or, when ``error_tol`` is given, at most
      ``error_tol`` (a horizon-independent end).

    Args: ``times`` the recorded steps; the curves have shape ``(len(times), ...)``.
    Returns ``t_spectral``, ``t_saddle``, ``t_refine`` (float, ``nan`` when not reached).
    """
    for name, v in (
        ("angle_tol", angle_tol),
        ("signal_frac", signal_frac),
        ("sigma_star", sigma_star),
    ):
        _validate.positive(v, name)
    if floor_factor < 1:
        raise ValueError(f"`floor_factor` must be >= 1, got {floor_factor}")
    for name, curve in (("sin_gd", sin_gd), ("signal", signal), ("rel_error", rel_error)):
        if curve.shape[0] != len(times):
            raise ValueError(
                f"`{name}` must have {len(times)} rows (one per time), got {curve.shape[0]}"
            )
    t1 = first_reached(sin_gd, times, angle_tol)
    t2 = first_reached(signal, times, signal_frac * sigma_star, below=False, start=t1)
    if error_tol is not None:
        _validate.positive(error_tol, "error_tol")
        floor: Tensor | float = error_tol
    else:
        floor = rel_error.min(0).values * floor_factor
    t3 = first_reached(rel_error, times, floor, start=t2)
    return {"t_spectral": t1, "t_saddle": t2, "t_refine": t3}


def balancing_bound(imbalance: Tensor, loss: Tensor, mu: float) -> dict[str, Tensor]:
    """Check ``||B_t||_F <= ||B_0||_F + 2 mu (L(0) - L(t))`` at every step (slide lemma, S5).

    Args: curves of shape ``(T+1, ...)``; ``mu`` the step.  Returns the bound ``(T+1, ...)``, the
    slack ``bound - ||B_t||``, ``holds`` (slack >= -1e-12 relative to the bound) and ``max_ratio``
    ``max_t ||B_t|| / bound``.
    """
    _validate.positive(mu, "mu")
    if imbalance.shape != loss.shape:
        raise ValueError(
            f"`loss` must have the shape of `imbalance` {tuple(imbalance.shape)}, got {tuple(loss.shape)}"
        )
    bound = imbalance[0] + 2.0 * mu * (loss[0] - loss)
    slack = bound - imbalance
    # rounding of ||B_t||_F in float64: relative 1e-12 of the bound is ~1e4 ulps
    holds = slack >= -1e-12 * bound.abs().clamp_min(1e-300)
    return {
        "bound": bound,
        "slack": slack,
        "holds": holds,
        "max_ratio": (imbalance / bound).max(0).values,
    }


def noise_exponent(svals: Tensor, r_star: int, mu: float, lead: int = 1) -> float:
    """Heuristic error exponent ``2 (1 - ln(1 + mu s_{r*+1}) / ln(1 + mu s_lead))`` of small-init GD.

    During the spectral phase (length ``~ ln(1/alpha) / ln(1 + mu s_lead)`` for the signal direction
    ``lead`` to grow from ``alpha`` to ``O(1)``), the component of ``U_0`` outside the top-``r*``
    eigenspace of ``Z`` grows by ``(1 + mu s_{r*+1})^t``, i.e. to ``alpha^(1 - rho)``; the error
    ``~ ||noise||^2`` then scales like ``alpha^(2 (1 - rho))``.  ``lead = 1`` (fastest signal) gives an
    upper, ``lead = r*`` (slowest signal) a lower estimate.  Not from the source: our diagnostic of
    why the fitted slope depends on ``n`` (``s_{r*+1} -> 0`` as ``n -> infinity``, exponent ``-> 2``).

    Args: ``svals`` singular values of ``Z`` (descending); ``r_star``; ``mu``; ``lead`` in ``1..r*``.
    """
    _validate.floating(svals, "svals", min_dim=1)
    _validate.positive(mu, "mu")
    if isinstance(r_star, bool) or not isinstance(r_star, int) or not 1 <= r_star < len(svals):
        raise ValueError(f"`r_star` must be an integer in [1, {len(svals) - 1}], got {r_star!r}")
    if isinstance(lead, bool) or not isinstance(lead, int) or not 1 <= lead <= r_star:
        raise ValueError(f"`lead` must be an integer in [1, {r_star}], got {lead!r}")
    rho = math.log1p(mu * float(svals[r_star])) / math.log1p(mu * float(svals[lead - 1]))
    return 2.0 * (1.0 - rho)

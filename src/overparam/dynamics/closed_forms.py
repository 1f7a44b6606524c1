"""Closed-form gradient flows of the one-layer model and of symmetric/asymmetric factorizations.

Scalings (fixed here, used by the experiments and tests):

* one layer: ``L(X) = 1/2 ||Y - X||_F^2``, flow ``dX/dt = Y - X``,
  ``X(t) = Y + e^{-t} (X_0 - Y)``: every entry converges at rate 1.
* symmetric factorization: ``L(U) = 1/4 ||Y - U U^T||_F^2`` (``Y`` symmetric ``m x m``, ``U`` of
  shape ``m x k``).  Then ``dL = -<(Y - U U^T) U, dU>``, so the flow is
  ``dU/dt = (Y - U U^T) U`` and ``X = U U^T`` obeys the Riccati equation
  ``dX/dt = Y X + X Y - 2 X^2`` (Tarmoun et al. 2021, Sec. 2, with their ``1/2`` replaced by
  ``1/4`` so that no factor 2 appears).
* asymmetric factorization: ``L(U, V) = 1/2 ||Y - U V^T||_F^2``, flow ``dU/dt = (Y - U V^T) V``,
  ``dV/dt = (Y - U V^T)^T U`` (Tarmoun et al. 2021, Sec. 3).

Source: S. Tarmoun, G. França, B. Haeffele, R. Vidal, "Understanding the dynamics of gradient flow
in overparameterized linear models", ICML 2021 (seed 003).  The derivations are written out in the
docstrings below.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from overparam import _validate


def _times(times: Sequence[float] | Tensor, like: Tensor) -> Tensor:
    t = torch.as_tensor(times, dtype=like.dtype, device=like.device).reshape(-1)
    if t.numel() == 0 or not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ValueError(
            f"`times` must be a non-empty 1-D sequence of finite numbers >= 0, got {times!r}"
        )
    return t


def symmetric_loss(U: Tensor, Y: Tensor) -> Tensor:
    """``1/4 ||Y - U U^T||_F^2`` summed over leading batch dims."""
    return 0.25 * (Y - U @ U.mT).pow(2).sum()


def asymmetric_loss(U: Tensor, V: Tensor, Y: Tensor) -> Tensor:
    """``1/2 ||Y - U V^T||_F^2`` summed over leading batch dims."""
    return 0.5 * (Y - U @ V.mT).pow(2).sum()


def one_layer_flow(X0: Tensor, Y: Tensor, times: Sequence[float] | Tensor) -> Tensor:
    """Gradient flow of ``1/2 ||Y - X||_F^2``: ``X(t) = Y + e^{-t} (X_0 - Y)``.

    Returns:
        Tensor of shape ``(T, *X0.shape)``.
    """
    _validate.floating(X0, "X0")
    _validate.floating(Y, "Y")
    _validate.same_shape(X0, Y, "X0", "Y")
    t = _times(times, X0).reshape(-1, *([1] * X0.dim()))
    return Y + torch.exp(-t) * (X0 - Y)


def _check_symmetric(Y: Tensor) -> None:
    _validate.floating(Y, "Y", min_dim=2)
    if Y.shape[-1] != Y.shape[-2]:
        raise ValueError(f"`Y` must be square (..., m, m), got shape {tuple(Y.shape)}")
    gap = (Y - Y.mT).abs().amax()
    if float(gap) > 1e-12 * max(1.0, float(Y.abs().amax())):
        raise ValueError(f"`Y` must be symmetric, got max |Y - Y^T| = {float(gap):.3e}")


def symmetric_flow(U0: Tensor, Y: Tensor, times: Sequence[float] | Tensor) -> Tensor:
    """Closed-form ``X(t) = U(t) U(t)^T`` under gradient flow on ``1/4 ||Y - U U^T||_F^2``.

    Derivation.  ``X`` solves the Riccati equation ``dX/dt = Y X + X Y - 2 X^2``.  For invertible
    ``X``, ``P = X^{-1}`` solves the *linear* equation ``dP/dt = -Y P - P Y + 2 I``, so
    ``P(t) = e^{-Yt} (P_0 + S(t)) e^{-Yt}`` with ``S(t) = 2 int_0^t e^{2Ys} ds``; inverting, and
    written without inverting ``X_0 = U_0 U_0^T`` (valid for any ``U_0``, of any rank, by
    continuity):

        ``X(t) = e^{Yt} X_0 (I + S(t) X_0)^{-1} e^{Yt}
               = e^{Yt} U_0 (I_k + U_0^T S(t) U_0)^{-1} U_0^T e^{Yt}``,
        ``S(t) = Q diag((e^{2 lambda_i t} - 1) / lambda_i) Q^T``  (``2t`` where ``lambda_i = 0``),

    with ``Y = Q diag(lambda) Q^T``.  ``S(t)`` is positive semidefinite for ``t >= 0`` (whatever the
    signs of the ``lambda_i``), so ``G = I_k + U_0^T S U_0`` has eigenvalues ``>= 1``.

    Evaluation.  In the eigenbasis (``Z = Q^T U``) one exact step of length ``tau`` is
    ``Z <- e^{Lambda tau} Z L^{-T}`` with ``L L^T = I_k + Z^T S(tau) Z`` (Cholesky): it returns a
    factor of ``X(t + tau)``, so steps compose (the flow is a semigroup).  Evaluating ``e^{Yt}``
    in one go loses everything once ``|lambda| t`` is large (products of ``e^{+|lambda| t}`` and
    ``e^{-|lambda| t}`` terms with rounding errors, overflow beyond ``|lambda| t ~ 700``), so the
    closed form is applied in exact steps of ``tau = 1 / max|lambda|`` (every exponential in
    ``[e^{-2}, e^{2}]``), then one partial step to each requested time: cost
    ``O(t_max max|lambda|)`` small matrix operations, no truncation error, only rounding.

    Consequence (claim T2): for ``Y`` positive definite and ``U_0`` of rank ``m``,
    ``X(t) -> Y`` and, in the eigenbasis of ``Y``, the error entry ``(i, j)`` decays like
    ``e^{-(lambda_i + lambda_j) t}``: the rate is ``2 lambda_min(Y)`` (:func:`symmetric_rate`),
    against 1 for the one-layer model; no small or spectral initialization is needed.

    Source: Tarmoun et al. (2021), Sec. 2 (Riccati solution of the symmetric factorization).

    Args:
        U0: initial factor, shape ``(..., m, k)``, any ``k``, any scale, any rank.
        Y: symmetric target, shape ``(..., m, m)`` (indefinite allowed).
        times: times ``>= 0`` (any order).

    Returns:
        ``X(t)``, shape ``(T, ..., m, m)``.

    Example:
        >>> Y = torch.diag(torch.tensor([2.0, 0.5], dtype=torch.float64))
        >>> U0 = torch.eye(2, dtype=torch.float64)
        >>> X = symmetric_flow(U0, Y, [0.0, 30.0])[-1]
        >>> bool(torch.allclose(X, Y, atol=1e-12))
        True
    """
    _validate.floating(U0, "U0", min_dim=2)
    _check_symmetric(Y)
    if U0.shape[-2] != Y.shape[-1]:
        raise ValueError(f"`U0` must have {Y.shape[-1]} rows like `Y`, got shape {tuple(U0.shape)}")
    t = _times(times, Y)
    lam, Q = torch.linalg.eigh(Y)
    Z = Q.mT @ U0.to(Y.dtype)  # (..., m, k) in the eigenbasis of Y
    lam = lam.expand(*Z.shape[:-1])  # batch dims of Y and U0 broadcast together
    top = float(lam.abs().max())
    tau = 1.0 / top if top > 0 else float("inf")
    last = int(float(t.max()) // tau) if top > 0 else 0
    bases = [Z]
    for _ in range(last):  # exact steps of length tau, |lambda| tau <= 1
        bases.append(_riccati_step(bases[-1], lam, torch.tensor(tau, dtype=Y.dtype)))
    index = (t / tau).floor().long().clamp(0, last) if top > 0 else torch.zeros_like(t).long()
    rest = (t - index.to(t.dtype) * (tau if top > 0 else 0.0)).clamp_min(0)
    Zt = _riccati_step(
        torch.stack(bases)[index], lam, rest.reshape(-1, *([1] * (lam.dim())))
    )  # (T, ..., m, k)
    X = Q @ Zt @ Zt.mT @ Q.mT
    return 0.5 * (X + X.mT)


def _riccati_step(Z: Tensor, lam: Tensor, tau: Tensor) -> Tensor:
    """Exact flow step in the eigenbasis: ``e^{Lambda tau} Z L^{-T}``, ``L L^T = I + Z^T S Z``,
    ``S = diag(expm1(2 lambda tau) / lambda)`` (``2 tau`` at ``lambda = 0``); ``tau >= 0``
    broadcasts against ``lam`` ``(..., m)``."""
    lt = lam * tau
    safe = torch.where(lam == 0, torch.ones_like(lam), lam)
    S = torch.where(lam == 0, 2 * tau * torch.ones_like(lam), torch.expm1(2 * lt) / safe)
    G = Z.mT @ (S.unsqueeze(-1) * Z)
    G = 0.5 * (G + G.mT) + torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    L = torch.linalg.cholesky(G)
    scaled = torch.exp(lt).unsqueeze(-1) * Z
    return torch.linalg.solve_triangular(L, scaled.mT, upper=False).mT


def symmetric_rate(Y: Tensor) -> Tensor:
    """Asymptotic rate ``2 lambda_min(Y)`` of ``||U U^T - Y||`` for positive definite ``Y``.

    (Linearizing the Riccati equation at ``X = Y``: ``dE/dt = -(Y E + E Y)``.)
    """
    _check_symmetric(Y)
    return 2 * torch.linalg.eigvalsh(Y)[..., 0]


def spectral_rate(s: Tensor | float, delta: Tensor | float) -> Tensor:
    """Rate ``r = sqrt(4 s^2 + delta^2)`` at which ``u v -> s`` for imbalance ``delta = u^2 - v^2``.

    One-layer rate is 1: the factorization is faster iff ``4 s^2 + delta^2 > 1``; balanced
    (``delta = 0``) it is ``2 s``, slower than one layer for ``s < 1/2`` (claims T3, T5).
    """
    s_t, d_t = _real(s, "s"), _real(delta, "delta")
    return torch.sqrt(4 * s_t**2 + d_t**2)


def _real(value: Tensor | float, name: str) -> Tensor:
    """``value`` as a float64 tensor of finite real numbers, else ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise ValueError(f"`{name}` must be a real number or tensor, got {type(value).__name__}")
    if isinstance(value, Tensor) and (value.is_complex() or value.dtype == torch.bool):
        raise ValueError(f"`{name}` must be a real tensor, got {value.dtype}")
    out = torch.as_tensor(value, dtype=torch.float64)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"`{name}` must be finite, got {value!r}")
    return out


def spectral_flow(
    u0: Tensor, v0: Tensor, s: Tensor, times: Sequence[float] | Tensor
) -> tuple[Tensor, Tensor]:
    """Closed-form per-singular-value flow ``du/dt = (s - uv) v``, ``dv/dt = (s - uv) u``.

    With spectral initialization ``U_0 = Phi diag(u_0)``, ``V_0 = Psi diag(v_0)`` for
    ``Y = Phi diag(s) Psi^T``, gradient flow on ``1/2 ||Y - U V^T||_F^2`` keeps ``U = Phi diag(u)``,
    ``V = Psi diag(v)`` with these scalar dynamics (Tarmoun et al. 2021, Sec. 3).

    Derivation.  ``delta = u^2 - v^2`` is conserved (``d/dt = 2uv(s - uv) - 2vu(s - uv) = 0``) and
    ``p = uv`` obeys ``dp/dt = (s - p)(u^2 + v^2) = (s - p) sqrt(delta^2 + 4 p^2)``.  Rotating,
    ``a = (u + v)/sqrt2``, ``b = (u - v)/sqrt2`` give ``da/dt = (s - p) a``, ``db/dt = -(s - p) b``,
    ``ab = delta/2`` and ``p = (a^2 - b^2)/2``, so ``A = a^2`` solves the constant-coefficient
    Riccati equation ``dA/dt = -A^2 + 2 s A + delta^2/4`` with roots ``A_pm = s pm r/2``,
    ``r = sqrt(4 s^2 + delta^2)``:

        ``A(t) = (A_+ (A_0 - A_-) - e^{-rt} A_- (A_0 - A_+)) / ((A_0 - A_-) - e^{-rt} (A_0 - A_+))``,

    then ``a = sign(a_0) sqrt(A)``, ``b = delta / (2a)``, ``u = (a + b)/sqrt2``,
    ``v = (a - b)/sqrt2``, and ``uv - s = O(e^{-rt})`` (:func:`spectral_rate`).

    Args:
        u0, v0: initial coordinates (broadcastable float tensors) with ``u0 + v0 != 0`` (on
            ``u = -v`` the flow goes to the saddle 0 instead).
        s: target singular values (broadcastable).
        times: times ``>= 0``.

    Returns:
        ``(u(t), v(t))``, each of shape ``(T, *broadcast_shape)``.
    """
    for value, name in ((u0, "u0"), (v0, "v0"), (s, "s")):
        _validate.floating(value, name)
    a0 = (u0 + v0) / 2**0.5
    if bool((a0 == 0).any()):
        raise ValueError("`u0` + `v0` must be nonzero everywhere (u = -v flows to the saddle 0)")
    t = _times(times, a0).reshape(-1, *([1] * a0.dim()))
    delta = u0**2 - v0**2
    r = torch.sqrt(4 * s**2 + delta**2)
    A0, Ap, Am = a0**2, s + r / 2, s - r / 2
    decay = torch.exp(-r * t)
    A = (Ap * (A0 - Am) - decay * Am * (A0 - Ap)) / ((A0 - Am) - decay * (A0 - Ap))
    a = torch.sign(a0) * torch.sqrt(A)
    b = delta / (2 * a)
    return (a + b) / 2**0.5, (a - b) / 2**0.5


def spectral_init(
    Y: Tensor, u0: Tensor, v0: Tensor, k: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Spectral initialization ``U_0 = Phi diag(u_0) E^T``, ``V_0 = Psi diag(v_0) E^T``.

    Args:
        Y: target ``(m, n)`` with thin SVD ``Phi diag(s) Psi^T`` (``q = min(m, n)`` values).
        u0, v0: per-singular-value coordinates, shape ``(q,)``.
        k: hidden width ``>= q`` (default ``q``); extra columns are zero.

    Returns:
        ``(U_0 (m, k), V_0 (n, k), s (q,))``.
    """
    _validate.floating(Y, "Y", min_dim=2)
    Phi, s, Psih = torch.linalg.svd(Y, full_matrices=False)
    q = s.numel()
    k = q if k is None else k
    if isinstance(k, bool) or not isinstance(k, int) or k < q:
        raise ValueError(f"`k` must be an integer >= min(m, n) = {q}, got {k!r}")
    for value, name in ((u0, "u0"), (v0, "v0")):
        _validate.floating(value, name)
        if tuple(value.shape) != (q,):
            raise ValueError(f"`{name}` must have shape ({q},), got {tuple(value.shape)}")
    E = torch.eye(q, k, dtype=Y.dtype)
    return (Phi * u0) @ E, (Psih.mT * v0) @ E, s

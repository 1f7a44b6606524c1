"""Per-step contraction rates of GD on ``W = W1 W2``: rho (eq. 20), f (eq. 26/29), eta_max (eq. 24).

Source: Xu, Tarmoun, Min, Mallada & Vidal 2023 (seed 002); notation and convention as in
:mod:`overparam.theory._operators` (``L = 1/2 ||X W - Y||^2``, ``K = sigma_max(X)^2``,
``mu = sigma_min(X)^2``, ``kappa = K / mu``; ``L`` is the excess loss ``L - L*``).

Every rate here is a quartic ``q(eta) = 1 - b1 eta + b2 eta^2 + b3 eta^3 + b4 eta^4`` with
``b_i >= 0``; its minimiser over ``eta > 0`` and the roots of the polynomials (24) are the unique
positive roots of increasing convex cubics, found by :func:`positive_root` (Newton).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from overparam import _validate

Coefficients = tuple[Tensor, Tensor, Tensor, Tensor]


def quartic(eta: Tensor | float, b: Coefficients) -> Tensor:
    """``1 - b1 eta + b2 eta^2 + b3 eta^3 + b4 eta^4`` (broadcast over the batch)."""
    e = torch.as_tensor(eta, dtype=b[0].dtype)
    return 1 - b[0] * e + b[1] * e**2 + b[2] * e**3 + b[3] * e**4


def positive_root(c1: Tensor, c2: Tensor, c3: Tensor, rhs: Tensor, iters: int = 40) -> Tensor:
    """The unique ``eta > 0`` with ``p(eta) = c3 eta^3 + c2 eta^2 + c1 eta = rhs`` (``c_i >= 0``, ``c1 > 0``).

    ``p`` is 0 at 0, increasing and convex on ``eta >= 0``.  Each term alone is ``<= rhs`` at the
    root, so the root is ``<= u := min(rhs / c1, sqrt(rhs / c2), cbrt(rhs / c3))``; and
    ``p(u / 3) <= (p_1(u) + p_2(u) + p_3(u)) / 3 <= rhs``, so it is ``>= u / 3``.  Newton's method
    started at ``u`` decreases monotonically to the root (convexity) and converges quadratically
    from within a factor 3: ``iters = 40`` reaches float64 resolution with a wide margin
    (vectorised over the batch, no data-dependent stopping).
    """
    c1, c2, c3, rhs = torch.broadcast_tensors(*(torch.as_tensor(c) for c in (c1, c2, c3, rhs)))
    if bool((c1 <= 0).any()) or bool((rhs < 0).any()):
        raise ValueError("`c1` must be > 0 and `rhs` >= 0 for a unique positive root")
    inf = torch.full_like(rhs, math.inf)
    eta = torch.minimum(
        rhs / c1,
        torch.minimum(
            torch.where(c2 > 0, torch.sqrt(rhs / c2), inf),
            torch.where(c3 > 0, torch.pow(rhs / c3, 1 / 3), inf),
        ),
    )
    for _ in range(iters):
        value = ((c3 * eta + c2) * eta + c1) * eta - rhs
        eta = eta - value / ((3 * c3 * eta + 2 * c2) * eta + c1)
    return eta.clamp_min(0.0)


def minimize_quartic(b: Coefficients) -> Tensor:
    """``argmin_{eta > 0}`` of :func:`quartic`: the root of ``4 b4 eta^3 + 3 b3 eta^2 + 2 b2 eta = b1``."""
    return positive_root(2 * b[1], 3 * b[2], 4 * b[3], b[0])


def rho_coefficients(
    lam_min: Tensor, lam_max: Tensor, sigma_max: Tensor, grad_norm: Tensor, K: Tensor, mu: Tensor
) -> Coefficients:
    """Coefficients of ``rho(eta, t)`` (source, eq. 20) from quantities measured at step ``t``.

    ``rho = 1 - 2 eta mu lmin + K mu eta^2 lmax^2 + 2 eta^2 mu s ||g|| + 2 eta^3 mu K lmax s ||g||
    + eta^4 mu K s^2 ||g||^2`` with ``lmin, lmax`` the extremes of ``tau_t``, ``s = sigma_max(W(t))``,
    ``||g|| = ||grad l(W(t))||_F``.  Derivation: insert eq. (16) in the smoothness inequality (17),
    use ``<g, tau(g)> >= lmin ||g||^2``, ``|<g, g W^T g>| <= s ||g||^3``,
    ``||tau(g) - eta g W^T g|| <= (lmax + eta s ||g||) ||g||``, then the PL inequality
    ``||g||^2 >= 2 mu L`` (valid because the bracket of condition (18) is >= 0).
    """
    sg = sigma_max * grad_norm
    return (
        2 * mu * lam_min,
        K * mu * lam_max**2 + 2 * mu * sg,
        2 * mu * K * lam_max * sg,
        mu * K * sg**2,
    )


def rho(
    eta: Tensor | float,
    lam_min: Tensor,
    lam_max: Tensor,
    sigma_max: Tensor,
    grad_norm: Tensor,
    K: Tensor,
    mu: Tensor,
) -> Tensor:
    """Per-step contraction ``rho(eta, t)`` of eq. (20): ``L(t+1) <= rho L(t)`` under (18)."""
    return quartic(eta, rho_coefficients(lam_min, lam_max, sigma_max, grad_norm, K, mu))


def condition_18(
    eta: Tensor | float,
    lam_min: Tensor,
    lam_max: Tensor,
    w_norm: Tensor,
    grad_norm: Tensor,
    K: Tensor,
) -> Tensor:
    """Condition (18): ``lmin - eta ||g|| ||W|| - (K eta / 2) (lmax + eta ||g|| ||W||)^2 >= 0``.

    The source prints ``||W(t)||_F``; the derivation of eq. (20) only needs the spectral norm
    ``sigma_max(W(t)) <= ||W(t)||_F``, so pass ``w_norm = sigma_max`` for the weaker (still
    sufficient) condition, or the Frobenius norm for the source's literal one.
    """
    e = torch.as_tensor(eta, dtype=lam_min.dtype)
    c = e * grad_norm * w_norm
    return lam_min - c - 0.5 * K * e * (lam_max + c) ** 2 >= 0


def plain_rate(eta: Tensor | float, K: Tensor | float, mu: Tensor | float) -> Tensor:
    """Non-overparameterised GD rate ``1 - 2 eta mu + K mu eta^2`` (eq. 15/21), for ``eta < 2/K``.

    Eq. (15) prints ``kappa/2`` in the smoothness inequality; it is ``K/2`` (``K``-smoothness),
    which is what eq. (21) uses.  Minimised at ``eta = 1/K`` with value ``1 - 1/kappa``.
    """
    K = K if isinstance(K, Tensor) else torch.tensor(K, dtype=torch.float64)
    mu = torch.as_tensor(mu, dtype=K.dtype)
    e = torch.as_tensor(eta, dtype=K.dtype)
    return 1 - 2 * e * mu + K * mu * e**2


@dataclass(frozen=True)
class InitConstants:
    """The constants of the theorem (eq. 23-26), computed from the initialisation.

    The source leaves them implicit (``alpha0 = alpha(D(0), sigma_min(W(0)))``, ``beta0``,
    ``p1``, ``p2``); we take the tightest values valid at ``t = 0``:

    - ``alpha0 = lambda_min(tau_0)``, ``beta0 = lambda_max(tau_0)`` (the exact initial spectrum:
      any valid lower/upper bound function satisfies ``alpha(D(0), .) <= lambda_min(tau_0)`` and
      ``beta(D(0), .) >= lambda_max(tau_0)``);
    - ``p1, p2`` bound ``sigma(W(t))`` while the loss does not increase (which the theorem
      guarantees): ``||X (W(t) - W_ls)||_F^2 = 2 L(t) <= 2 L(0)`` gives
      ``||W(t) - W_ls||_2 <= r := sqrt(2 L(0) / mu)``, so ``p2 = sigma_max(W_ls) + r`` and
      ``p1 = max(0, sigma_min(W_ls) - r)`` (Weyl).  This is the matrix form of eq. (9).
    """

    alpha0: Tensor
    beta0: Tensor
    p1: Tensor
    p2: Tensor
    L0: Tensor
    K: Tensor
    mu: Tensor

    @classmethod
    def from_init(
        cls, lam_min0: Tensor, lam_max0: Tensor, W_ls: Tensor, L0: Tensor, K: Tensor, mu: Tensor
    ) -> InitConstants:
        """Build from ``tau_0``'s extremes, ``W_ls``, the initial (excess) loss, ``K`` and ``mu``."""
        s = torch.linalg.svdvals(W_ls)
        r = torch.sqrt(2 * L0 / mu)
        return cls(lam_min0, lam_max0, (s[..., -1] - r).clamp_min(0.0), s[..., 0] + r, L0, K, mu)


def _check_c(c1: float, c2: float) -> None:
    _validate.positive(c1, "c1")
    _validate.positive(c2, "c2")
    if not c1 < 1 < c2:
        raise ValueError(f"`c1` and `c2` must satisfy 0 < c1 < 1 < c2, got c1={c1}, c2={c2}")


def f_coefficients(const: InitConstants, L: Tensor, c1: float, c2: float) -> Coefficients:
    """``a1, a2(t), a3(t), a4(t)`` of eq. (26)/(30) at loss ``L = L(t)``.

    ``a1 = 2 c1 alpha0 smin^2``, ``a2 = 2 sqrt(2 kappa L smin^6) p2 + kappa smin^4 (c2 beta0)^2``,
    ``a3 = 2 sqrt(2 kappa^3 L smin^10) c2 beta0 p2``, ``a4 = 2 kappa^2 smin^6 p2^2 L`` with
    ``smin^2 = mu``.  They are the coefficients of :func:`rho_coefficients` with
    ``lmin >= c1 alpha0``, ``lmax <= c2 beta0``, ``sigma_max(W) <= p2`` and
    ``||g||_F <= sqrt(2 K L)`` (from ``g = X^T X (W - W_ls)``) substituted.
    """
    _check_c(c1, c2)
    mu, kap = const.mu, const.K / const.mu
    b = c2 * const.beta0
    a1 = 2 * c1 * const.alpha0 * mu
    a2 = 2 * torch.sqrt(2 * kap * L * mu**3) * const.p2 + kap * mu**2 * b**2
    a3 = 2 * torch.sqrt(2 * kap**3 * L * mu**5) * b * const.p2
    a4 = 2 * kap**2 * mu**3 * const.p2**2 * L
    return a1, a2, a3, a4


def f_rate(eta: Tensor | float, const: InitConstants, L: Tensor, c1: float, c2: float) -> Tensor:
    """``f(eta, t) = 1 - a1 eta + a2(t) eta^2 + a3(t) eta^3 + a4(t) eta^4`` (eq. 29)."""
    return quartic(eta, f_coefficients(const, L, c1, c2))


def eta_max(const: InitConstants, c1: float, c2: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(eta_max, eta1_max, eta2_max)``: positive roots of the polynomials (24), ``eta_max = min``.

    ``a4 eta^3 + a3 eta^2 + (a2 + 4 c2 L0 K / (c2 - 1)) eta = a1`` and
    ``a4 eta^3 + a3 eta^2 + (a2 + 8 c2 beta0 L0 K / ((1 - c1) alpha0)) eta = a1``, all ``a_i``
    at ``t = 0``.  Requires ``alpha0 > 0`` (the theorem's assumption).
    """
    if bool((const.alpha0 <= 0).any()):
        raise ValueError("`const.alpha0` must be > 0 (lambda_min(tau_0) > 0), got 0")
    a1, a2, a3, a4 = f_coefficients(const, const.L0, c1, c2)
    e1 = positive_root(a2 + 4 * c2 * const.L0 * const.K / (c2 - 1), a3, a4, a1)
    e2 = positive_root(
        a2 + 8 * c2 * const.beta0 * const.L0 * const.K / ((1 - c1) * const.alpha0), a3, a4, a1
    )
    return torch.minimum(e1, e2), e1, e2


def scalar_rate_lower_bound(w1: Tensor, w2: Tensor, y: Tensor) -> Tensor:
    """Gradient-flow rate floor of the scalar toy ``L = 1/2 (y - w1 w2)^2`` (eq. 8-10).

    ``dL/dt = -2 (w1^2 + w2^2) L`` exactly and ``w1^2 + w2^2 = sqrt((w1^2 - w2^2)^2 + 4 (w1 w2)^2)``
    with ``w1^2 - w2^2`` conserved and ``|w1 w2| >= |y| - |y - w1(0) w2(0)|`` (eq. 9), so for all t
    ``w1(t)^2 + w2(t)^2 >= sqrt((w1(0)^2 - w2(0)^2)^2 + 4 max(0, |y| - |y - w1(0) w2(0)|)^2)``.
    The source's eq. (9)-(10) print ``|L(0)|`` for the residual ``|y - w1(0) w2(0)| = sqrt(2 L(0))``;
    we use the residual (the printed form is not a valid bound in general).
    """
    r0 = (y - w1 * w2).abs()
    return torch.sqrt((w1**2 - w2**2) ** 2 + 4 * (y.abs() - r0).clamp_min(0.0) ** 2)

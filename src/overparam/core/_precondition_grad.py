"""``precondition`` as a ``torch.autograd.Function`` with an exact backward (integer depth).

Write ``M1 = W W^T``, ``M2 = W^T W`` and ``f_k(x) = x^(k/N)`` (``f_0 = 1``), so that

    A_{N,W}(G) = sum_{j=1..N} f_{N-j}(M1) G f_{j-1}(M2).

For a wide or square ``W = U diag(s) V^T`` (``U`` square, ``V`` with orthonormal columns,
``p = s^(2/N)``), the backward of ``L = <Gbar, A_{N,W}(G)>`` is, exactly:

* ``dL/dG = A_{N,W}(Gbar)`` (the operator is self-adjoint);
* ``dL/dW = 2 S1 W + 2 W S2`` with ``S1 = sum_j Df_{N-j}(M1)[sym(Gbar f_{j-1}(M2) G^T)]`` and
  ``S2 = sum_j Df_{j-1}(M2)[sym(G^T f_{N-j}(M1) Gbar)]``, where the Frechet derivative of ``f_k``
  at ``M = U diag(p^N) U^T`` is the Daleckii-Krein form ``Df_k(M)[E] = U (D_k o U^T E U) U^T``
  with the divided differences

      D_k[i, l] = (p_i^k - p_l^k) / (p_i^N - p_l^N) = h_{k-1}(p_i, p_l) / h_{N-1}(p_i, p_l),

  ``h_q(x, y) = sum_{a=0..q} x^a y^(q-a)``: ratios of sums of positive terms, exact for equal or
  nearly equal singular values (``D_k = (k/N) p^(k-N)`` on the diagonal).  The null space of
  ``M2`` enters through ``D_k(p_i, 0) = p_i^(k-N)``, whose sum over ``k`` is
  ``Omega[i, l] = s_i p_i^(1-N) h_{N-2}(p_i, p_l)``.

In singular coordinates (``Gt = U^T G``, ``Gh = Gt V``, and the same for ``Gbar``):

    dL/dW = U [ (B - Y V) V^T + Y ],
    B = 2 sym(sum_{j<N} D_{N-j} o K_j) diag(s) + 2 diag(s) sum_{k<N} D_k o sym(Gh^T p^(N-1-k) Gbarh),
    K_1 = Gbart Gt^T,   K_j = Gbarh diag(p^(j-1)) Gh^T,
    Y = (Omega o Gh^T) Gbart + (Omega o Gbarh^T) Gt       (no Y term for square W: V V^T = I).

Real depth has no finite sum over ``j``: with ``P_q[x, y] = (x^q - y^q) / (x - y)`` and
``F[x, y, z]`` the second divided difference of ``t^N``, the same gradient is

    left = (P_{N-1} / P_N) o (Gbart Gt^T - Gbarh Gh^T) + S1,   right = S2 + S2^T,   Omega = P_{N-1},
    S1[i, l] = sum_k T[i, l, k] Gbarh[i, k] Gh[l, k],   S2[a, b] = sum_c T[a, b, c] Gh[c, a] Gbarh[c, b],
    T[i, l, k] = F[p_i, p_l, p_k] / P_N[p_i, p_l]

(``left + left^T`` and ``right`` replace the two sums in ``B``; for integer ``N`` these are the
formulas above), an ``r x r x r`` contraction evaluated in blocks.

Cost: the forward one SVD (a QR first when lopsided) and four products; the backward about
``10 m^2 n + (2N - 3) m^3`` multiply-adds for integer depth, plus ``O(r^3)`` elementwise work for
real depth, with no further factorization.

At a rank-deficient ``W`` the operator is not differentiable in the directions that raise the
rank (its coefficients contain ``s^(2/N)``); there the backward returns the derivative along
matrices of the same rank (the zero singular values held at zero, as the forward's rounding
threshold does), the limit of central finite differences (they converge to it at the rate
``eps^(2/N)``).  References for the
derivative of a matrix function by divided differences: Daleckii & Krein (1965); Bhatia,
*Matrix Analysis* (1997), Section V.3.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _factor(W: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``U, s, V`` of a wide or square ``W = U diag(s) V^T`` (QR first when lopsided)."""
    m, n = W.shape[-2], W.shape[-1]
    if 4 * n > 5 * m:
        Q, R = torch.linalg.qr(W.mT)
        U, s, VRh = torch.linalg.svd(R.mT)
        V = Q @ VRh.mT
    else:
        U, s, Vh = torch.linalg.svd(W, full_matrices=False)
        V = Vh.mT
    tol = max(m, n) * torch.finfo(W.dtype).eps * s[..., :1]
    return U, torch.where(s > tol, s, torch.zeros_like(s)), V


def _sums(p: Tensor, depth: int) -> list[Tensor]:
    """``[h_0, ..., h_{N-1}]`` with ``h_q[i, l] = sum_{a=0..q} p_i^a p_l^(q-a)``."""
    powers = p.unsqueeze(-1).pow(torch.arange(depth, dtype=p.dtype, device=p.device))
    return [powers[..., : q + 1] @ powers[..., : q + 1].flip(-1).mT for q in range(depth)]


def _power_dd(x: Tensor, y: Tensor, q: float) -> Tensor:
    """``P_q[x, y] = (x^q - y^q) / (x - y)`` for ``x, y >= 0`` without cancellation:
    ``hi^(q-1) expm1(q u) / expm1(u)``, ``u = log(lo / hi)``; ``q hi^(q-1)`` at equality, and 0
    where both are 0 and ``q != 1``."""
    hi, lo = torch.maximum(x, y), torch.minimum(x, y)
    positive = hi > 0
    u = torch.log1p((lo - hi) / torch.where(positive, hi, torch.ones_like(hi)))
    equal = u == 0
    u_safe = torch.where(equal, -torch.ones_like(u), u)
    ratio = torch.where(equal, torch.full_like(u, q), torch.expm1(q * u_safe) / torch.expm1(u_safe))
    out = hi.pow(q - 1.0) * ratio
    zero = torch.ones_like(out) if q == 1 else torch.zeros_like(out)
    return torch.where(positive, out, zero)


def _second_dd(p: Tensor, a: Tensor, rows: slice, depth: float) -> Tensor:
    """``F[p_i, p_l, p_k]`` of ``F(t) = t^N`` for ``i`` in ``rows`` and all ``l, k``, from the
    first divided differences ``a = P_N[p, p]``: ``(a[x, z] - a[y, z]) / (p_x - p_y)`` over the
    widest of the three pairs (relative error ``eps / spread``).  Where all three lie within
    ``eps^(1/3)`` of the largest, the Taylor series about ``z``,
    ``sum_j binom(N, j+2) z^(N-j-2) h_j(x - z, y - z)`` to ``j = 5`` (truncation ``(N spread)^6``).
    0 where all three are 0.
    """
    x = p[..., rows, None, None]
    y = p[..., None, :, None]
    z = p[..., None, None, :]
    dxy, dxz, dyz = x - y, x - z, y - z
    axz = a[..., rows, None, :]  # a[x, z]
    ayz = a[..., None, :, :]  # a[y, z]
    axy = a[..., rows, :, None]  # a[x, y]
    one = torch.ones((), dtype=p.dtype, device=p.device)
    c1 = (axz - ayz) / torch.where(dxy == 0, one, dxy)  # widest pair (x, y)
    c2 = (axy - ayz) / torch.where(dxz == 0, one, dxz)  # (x, z) about y (a is symmetric)
    c3 = (axy - axz) / torch.where(dyz == 0, one, dyz)  # (y, z) about x
    w1, w2, w3 = dxy.abs(), dxz.abs(), dyz.abs()
    out = torch.where((w1 >= w2) & (w1 >= w3), c1, torch.where(w2 >= w3, c2, c3))
    hi = torch.maximum(torch.maximum(x, y), z)
    widest = torch.maximum(torch.maximum(w1, w2), w3)
    close = (widest < torch.finfo(p.dtype).eps ** (1.0 / 3.0) * hi) & (hi > 0)
    out = torch.where(hi > 0, out, 0.0).expand(close.shape).clone()
    if bool(close.any()):
        xs, ys, zs = (v.expand(close.shape)[close] for v in (x, y, z))
        d1, d3 = xs - zs, ys - zs
        series, binom = torch.zeros_like(zs), depth * (depth - 1.0) / 2.0
        h, power = torch.ones_like(zs), torch.ones_like(zs)
        for j in range(6):
            series = series + binom * zs.pow(depth - j - 2.0) * h
            binom *= (depth - j - 2.0) / (j + 3.0)
            power = power * d1
            h = h * d3 + power  # h_{j+1}(d1, d3) = d3 h_j + d1^(j+1)
        out[close] = series
    return out


def _apply(
    U: Tensor, V: Tensor, Gt: Tensor, Gh: Tensor, coefficients: tuple[Tensor, Tensor]
) -> Tensor:
    """``A_{N,W}(G) = U ((a - c) o Gh) V^T + U diag(c) Gt`` with ``Gt = U^T G``, ``Gh = Gt V``."""
    a, c = coefficients
    return U @ (((a - c) * Gh) @ V.mT + c * Gt)


def _coefficients(s: Tensor, depth: float) -> tuple[Tensor, Tensor]:
    """``a[i, k] = P_N[p_i, p_k]`` (``p = s^(2/N)``) and ``c[i] = p_i^(N-1)`` as a column."""
    p = s.pow(2.0 / depth)
    c = p.pow(depth - 1.0).unsqueeze(-1)
    if depth == int(depth):
        return _sums(p, int(depth))[-1], c
    return _power_dd(p.unsqueeze(-1), p.unsqueeze(-2), depth), c


def _integer_terms(
    s: Tensor, G: tuple[Tensor, Tensor], B: tuple[Tensor, Tensor], depth: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``(left, right, Omega)`` of the module docstring for integer depth."""
    (Gt, Gh), (Bt, Bh) = G, B
    p = s.pow(2.0 / depth)
    h = _sums(p, depth)
    den = h[-1]
    safe = den > 0  # both singular values zero: the entry multiplies a zero (see docstring)
    den = torch.where(safe, den, torch.ones_like(den))

    def divided(k: int) -> Tensor:
        return torch.where(safe, h[k - 1] / den, torch.zeros_like(den))

    pw = p.unsqueeze(-2)  # row vector of p for column scaling
    left = divided(depth - 1) * (Bt @ Gt.mT)
    right = torch.zeros_like(left)
    for j in range(2, depth):
        left = left + divided(depth - j) * ((Bh * pw.pow(j - 1)) @ Gh.mT)
    for k in range(1, depth):
        Y = (Gh.mT * pw.pow(depth - 1 - k)) @ Bh
        right = right + divided(k) * (Y + Y.mT)
    return left, right, h[depth - 2]


def _real_terms(
    s: Tensor, G: tuple[Tensor, Tensor], B: tuple[Tensor, Tensor], depth: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(left, right, Omega)`` for real depth, through ``T[i, l, k] = F[p_i, p_l, p_k] /
    P_N[p_i, p_l]`` (blocks of rows, at most ``2^22`` entries at a time)."""
    (Gt, Gh), (Bt, Bh) = G, B
    p = s.pow(2.0 / depth)
    pi, pl = p.unsqueeze(-1), p.unsqueeze(-2)
    den_raw = _power_dd(pi, pl, depth)  # a[i, l] = P_N[p_i, p_l]
    den = den_raw
    safe = den > 0
    den = torch.where(safe, den, torch.ones_like(den))
    near = _power_dd(pi, pl, depth - 1.0)  # P_{N-1}: the null-space divided differences
    left = torch.where(safe, near / den, torch.zeros_like(den)) * (Bt @ Gt.mT - Bh @ Gh.mT)
    S2 = torch.zeros_like(left)
    r = p.shape[-1]
    block = max(1, (1 << 22) // max(1, r * r))
    for i0 in range(0, r, block):
        rows = slice(i0, min(r, i0 + block))
        T = _second_dd(p, den_raw, rows, depth)
        T = torch.where(safe[..., rows, :, None], T / den[..., rows, :, None], 0.0)
        left[..., rows, :] += torch.einsum("...ilk,...ik,...lk->...il", T, Bh[..., rows, :], Gh)
        S2[..., rows, :] = torch.einsum("...abc,...ca,...cb->...ab", T, Gh[..., :, rows], Bh)
    return left, S2 + S2.mT, near


def _weight_gradient(
    U: Tensor,
    s: Tensor,
    V: Tensor,
    G: tuple[Tensor, Tensor],
    B: tuple[Tensor, Tensor],
    depth: float,
) -> Tensor:
    """``dL/dW = U [(core - Y V) V^T + Y]`` from the module docstring; ``G = (Gt, Gh)``, ``B``
    the same for ``Gbar``."""
    if depth == int(depth):
        left, right, near = _integer_terms(s, G, B, int(depth))
    else:
        left, right, near = _real_terms(s, G, B, depth)
    left = left + left.mT
    core = left * s.unsqueeze(-2) + s.unsqueeze(-1) * right
    if V.shape[-2] == V.shape[-1]:  # square: V V^T = I, no null space of M2
        return U @ core @ V.mT
    (Gt, Gh), (Bt, Bh) = G, B
    p = s.pow(2.0 / depth)
    lead = torch.where(s > 0, p.clamp_min(torch.finfo(s.dtype).tiny).pow(1.0 - depth / 2.0), 0.0)
    omega = lead.unsqueeze(-1) * near
    Y = (omega * Gh.mT) @ Bt + (omega * Bh.mT) @ Gt
    return U @ ((core - Y @ V) @ V.mT + Y)


class _Precondition(torch.autograd.Function):
    """``A_{N,W}(G)`` for a wide or square ``W`` and integer ``N >= 2``, exact backward.

    The factors are extra (non-differentiable) outputs, so that ``setup_context`` can save them
    without a second SVD; this form also serves ``torch.func`` (``grad``, ``vmap``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(W: Tensor, G: Tensor, depth: float) -> tuple[Tensor, ...]:  # type: ignore[override]
        U, s, V = _factor(W)
        Gt = U.mT @ G
        Gh = Gt @ V
        return _apply(U, V, Gt, Gh, _coefficients(s, depth)), U, s, V, Gt, Gh

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        factors = output[1:]
        ctx.mark_non_differentiable(*factors)
        ctx.save_for_backward(*factors)
        ctx.depth = inputs[2]

    @staticmethod
    def backward(ctx: Any, grad: Tensor, *unused: Any) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        U, s, V, Gt, Gh = ctx.saved_tensors
        Bt = U.mT @ grad
        Bh = Bt @ V
        grad_G = None
        if ctx.needs_input_grad[1]:
            grad_G = _apply(U, V, Bt, Bh, _coefficients(s, ctx.depth))
        grad_W = None
        if ctx.needs_input_grad[0]:
            grad_W = _weight_gradient(U, s, V, (Gt, Gh), (Bt, Bh), ctx.depth)
        return grad_W, grad_G, None


def precondition_with_grad(W: Tensor, G: Tensor, depth: float) -> Tensor:
    """``A_{N,W}(G)`` through :class:`_Precondition` (tall ``W`` by transposition)."""
    if W.shape[-2] > W.shape[-1]:
        return _Precondition.apply(W.mT, G.mT, depth)[0].mT
    return _Precondition.apply(W, G, depth)[0]

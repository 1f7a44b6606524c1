"""The end-to-end preconditioner against independent float64 computations."""

import math

import pytest
import torch

from overparam import (
    balanced_factors,
    metric,
    precondition,
    precondition_inverse,
    product,
    single_output_precondition,
)
from overparam.core.precondition import geometric_closed_form, precondition_coefficients

F64 = torch.float64


def _power(M: torch.Tensor, p: float) -> torch.Tensor:
    """Naive PSD matrix power by eigendecomposition with 0^0 = 1 (identity on the null space)."""
    e, Q = torch.linalg.eigh(M)
    null = e <= 1e-10 * e.abs().max().clamp_min(1e-300)
    ep = torch.where(null, torch.full_like(e, 1.0 if p == 0 else 0.0), e.clamp_min(1e-300) ** p)
    return Q @ torch.diag(ep) @ Q.T


def naive(W: torch.Tensor, G: torch.Tensor, N: int) -> torch.Tensor:
    """sum_j (W W^T)^((N-j)/N) G (W^T W)^((j-1)/N), one fractional power at a time."""
    return sum(
        _power(W @ W.T, (N - j) / N) @ G @ _power(W.T @ W, (j - 1) / N) for j in range(1, N + 1)
    )


def dense_operator(W: torch.Tensor, N: int) -> torch.Tensor:
    """The (mn x mn) matrix of A_{N,W} acting on row-major vec(G), built from the naive sum."""
    m, n = W.shape
    basis = torch.eye(m * n, dtype=F64).reshape(m * n, m, n)
    return torch.stack([naive(W, E, N).reshape(-1) for E in basis], dim=1)


@pytest.mark.parametrize("shape", [(4, 4), (7, 3), (3, 7), (1, 6), (6, 1)])
@pytest.mark.parametrize("depth", [1, 2, 3, 6])
def test_matches_naive_power_sum(gen, shape, depth):
    W = torch.randn(*shape, generator=gen, dtype=F64)
    G = torch.randn(*shape, generator=gen, dtype=F64)
    expected = naive(W, G, depth)
    # Both sides are O(10) in size and built from well-conditioned eigendecompositions: 1e-11
    # leaves room for the eigh/svd rounding (~1e-14) amplified by fractional powers.
    torch.testing.assert_close(precondition(W, G, depth), expected, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("shape,rank", [((6, 5), 2), ((4, 7), 1), ((5, 5), 3), ((3, 3), 0)])
@pytest.mark.parametrize("depth", [1, 2, 4])
def test_rank_deficient_uses_identity_on_null_spaces(gen, shape, rank, depth):
    m, n = shape
    W = torch.randn(m, rank, generator=gen, dtype=F64) @ torch.randn(
        rank, n, generator=gen, dtype=F64
    )
    G = torch.randn(m, n, generator=gen, dtype=F64)
    torch.testing.assert_close(precondition(W, G, depth), naive(W, G, depth), rtol=1e-9, atol=1e-9)


def test_zero_matrix_depth_two_is_zero_and_depth_one_identity(gen):
    G = torch.randn(3, 4, generator=gen, dtype=F64)
    assert torch.equal(
        precondition(torch.zeros(3, 4, dtype=F64), G, 2), torch.zeros(3, 4, dtype=F64)
    )
    assert torch.equal(precondition(torch.zeros(3, 4, dtype=F64), G, 1), G)


@pytest.mark.parametrize("depth", [1, 2, 3, 5, 8])
def test_closed_form_matches_explicit_sum_including_near_equal(depth):
    # The explicit integer sum has only positive terms, hence no cancellation: a reference
    # accurate to a few ulps, also for equal and nearly equal singular values.
    base = torch.tensor([1.0, 1.0 + 1e-15, 1.0 + 1e-12, 1.0 + 1e-8, 0.7, 3.0, 1e-3, 0.0], dtype=F64)
    x, y = base[:, None], base[None, :]
    explicit = sum(
        x ** (2 * (depth - j) / depth) * y ** (2 * (j - 1) / depth) for j in range(1, depth + 1)
    )
    torch.testing.assert_close(
        geometric_closed_form(x, y, depth), explicit, rtol=4e-15 * depth, atol=0
    )
    torch.testing.assert_close(precondition_coefficients(x, y, depth), explicit, rtol=4e-15, atol=0)


def test_near_equal_singular_values_keep_precision(gen):
    Q1, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=F64))
    Q2, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=F64))
    s = torch.tensor([2.0, 1.0 + 1e-13, 1.0, 1.0 - 1e-13, 0.5], dtype=F64)
    W = Q1 @ torch.diag(s) @ Q2.T
    G = torch.randn(5, 5, generator=gen, dtype=F64)
    expected = naive(W, G, 3)
    torch.testing.assert_close(precondition(W, G, 3), expected, rtol=1e-11, atol=1e-11)


def test_real_depth_is_continuous_and_matches_closed_form(gen):
    W = torch.randn(4, 3, generator=gen, dtype=F64)
    G = torch.randn(4, 3, generator=gen, dtype=F64)
    # Continuity in N: a(N) is smooth, so a 1e-9 change of depth moves the result by O(1e-9).
    torch.testing.assert_close(precondition(W, G, 3 + 1e-9), naive(W, G, 3), rtol=1e-8, atol=1e-8)
    # Closed form (x^2 - y^2) / (x^(2/N) - y^(2/N)) in the singular basis, for well-separated s.
    N = 2.5
    U, s, Vh = torch.linalg.svd(W, full_matrices=True)
    sr = torch.cat([s, torch.zeros(1, dtype=F64)])
    x, y = sr[:, None], s[None, :]
    a = (x**2 - y**2) / (x ** (2 / N) - y ** (2 / N))
    a[range(3), range(3)] = N * s ** (2 * (N - 1) / N)
    expected = U @ (a * (U.T @ G @ Vh.T)) @ Vh
    torch.testing.assert_close(precondition(W, G, N), expected, rtol=1e-12, atol=1e-12)


def test_batched_float32_and_shapes(gen):
    W = torch.randn(3, 2, 5, 4, generator=gen, dtype=F64)
    G = torch.randn(3, 2, 5, 4, generator=gen, dtype=F64)
    out = precondition(W, G, 3)
    assert out.shape == W.shape and out.dtype == F64
    torch.testing.assert_close(out[1, 0], naive(W[1, 0], G[1, 0], 3), rtol=1e-11, atol=1e-11)
    out32 = precondition(W.float(), G.float(), 3)
    assert out32.dtype == torch.float32
    # float32 SVD rounding (~1e-7 relative) amplified by the conditioning of these small matrices.
    torch.testing.assert_close(out32.double(), out, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("shape", [(4, 4), (6, 3), (3, 6)])
@pytest.mark.parametrize("depth", [1, 2, 3, 4.5])
def test_inverse_round_trip(gen, shape, depth):
    W = torch.randn(*shape, generator=gen, dtype=F64)
    G = torch.randn(*shape, generator=gen, dtype=F64)
    torch.testing.assert_close(precondition_inverse(W, precondition(W, G, depth), depth), G)
    torch.testing.assert_close(precondition(W, precondition_inverse(W, G, depth), depth), G)


def test_metric_is_trace_with_dense_inverse(gen):
    W = torch.randn(3, 4, generator=gen, dtype=F64)
    Z1 = torch.randn(3, 4, generator=gen, dtype=F64)
    Z2 = torch.randn(3, 4, generator=gen, dtype=F64)
    A = dense_operator(W, 3)
    expected = Z1.reshape(-1) @ torch.linalg.solve(A, Z2.reshape(-1))
    torch.testing.assert_close(metric(W, Z1, Z2, 3), expected, rtol=1e-10, atol=1e-12)
    # A is self-adjoint and positive definite for full-rank W: the metric is symmetric, positive.
    torch.testing.assert_close(metric(W, Z1, Z2, 3), metric(W, Z2, Z1, 3), rtol=1e-10, atol=1e-12)
    assert metric(W, Z1, Z1, 3) > 0


def test_single_output_matches_matrix_form(gen):
    w = torch.randn(4, 7, generator=gen, dtype=F64)
    g = torch.randn(4, 7, generator=gen, dtype=F64)
    for depth in (1, 2, 3, 2.5):
        expected = precondition(w[:, None, :], g[:, None, :], depth)[:, 0, :]
        torch.testing.assert_close(single_output_precondition(w, g, depth), expected)


def test_single_output_at_zero():
    g = torch.tensor([1.0, -2.0], dtype=F64)
    zero = torch.zeros(2, dtype=F64)
    assert torch.equal(single_output_precondition(zero, g, 1), g)
    assert torch.equal(single_output_precondition(zero, g, 3), zero)
    # The limit is 0: at ||w|| = 1e-12 the value is O(||w||^(2-2/N)) = O(1e-8) for N = 3.
    tiny = single_output_precondition(torch.tensor([1e-12, 0.0], dtype=F64), g, 3)
    assert tiny.abs().max() < 1e-7


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda W: precondition(W, W, 0), "`depth` must be >= 1, got 0"),
        (lambda W: precondition(W, W, float("nan")), "`depth` must be >= 1, got nan"),
        (lambda W: precondition(W, W, "2"), "`depth` must be a number >= 1, got '2'"),
        (lambda W: precondition(W, W[:, :2], 2), r"`G` must have the shape of `W` \(3, 3\)"),
        (lambda W: precondition(W, W.float(), 2), "`G` must have the dtype of `W`"),
        (lambda W: precondition(W[0], W[0], 2), "`W` must have at least 2 dimensions"),
        (
            lambda W: precondition(W.long(), W.long(), 2),
            "`W` must have a floating dtype \\(float16, bfloat16, float32 or float64\\)",
        ),
        (lambda W: precondition(W * float("nan"), W, 2), "`W` contains NaN"),
        (lambda W: precondition_inverse(W[:, :1] @ W[:1], W, 2), "`W` must have full rank"),
        (lambda W: single_output_precondition(W[0], W[1, :2], 2), "`g` must have the shape of `w`"),
        (lambda W: metric(W, W[:2], W, 2), "`Z1` must have the shape of `W`"),
    ],
)
def test_errors_name_the_argument(gen, call, message):
    W = torch.randn(3, 3, generator=gen, dtype=F64)
    with pytest.raises(ValueError, match=message):
        call(W)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(gen):
    W = torch.randn(4, 64, 48, generator=gen, dtype=F64)
    G = torch.randn(4, 64, 48, generator=gen, dtype=F64)
    for depth in (2, 3.5):
        expected = precondition(W, G, depth)
        got = precondition(W.cuda(), G.cuda(), depth)
        assert got.device.type == "cuda"
        # Different LAPACK/cuSOLVER SVDs of well-conditioned matrices agree to ~1e-13.
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-10, atol=1e-10)
    factors = balanced_factors(W.cuda(), 3, widths=50)
    torch.testing.assert_close(product(factors).cpu(), W, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", [(4, 13), (13, 4), (5, 7), (32, 196)])
@pytest.mark.parametrize("depth", [2, 3, 2.5, 7.0])
def test_lopsided_path_equals_direct_svd_path(gen, shape, depth):
    """One side > 1.25x the other goes through QR + a square SVD (orthogonal equivariance); it is
    the same operator as the direct SVD path: batched, full rank, rank 2 and zero."""
    from overparam.core.precondition import _apply

    m, n = shape
    low = torch.randn(3, m, 2, generator=gen, dtype=F64) @ torch.randn(
        3, 2, n, generator=gen, dtype=F64
    )
    for W in (torch.randn(3, m, n, generator=gen, dtype=F64), low, torch.zeros(3, m, n, dtype=F64)):
        G = torch.randn(3, m, n, generator=gen, dtype=F64)
        # two exact factorizations of one operator: rounding of a QR and two SVDs, ~1e-14 relative
        torch.testing.assert_close(
            precondition(W, G, depth),
            _apply(W, G, float(depth)),
            rtol=1e-11,
            atol=1e-11,
        )


def _conditioned(cond: float, shape, dtype, seed: int):
    """W = Q1 diag(logspace(0, -log10 cond)) Q2^T with Haar-random orthonormal Q1, Q2."""
    g = torch.Generator().manual_seed(seed)
    m, n = shape
    r = min(m, n)
    Q1, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=F64))
    Q2, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    s = torch.logspace(0, -math.log10(cond), r, dtype=F64)
    W = (Q1[:, :r] * s) @ Q2[:, :r].T
    return W.to(dtype), torch.randn(m, n, generator=g, dtype=F64).to(dtype)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("shape", [(6, 6), (8, 5), (4, 7)])
@pytest.mark.parametrize("depth", [2, 3, 4])
def test_inverse_is_accurate_to_the_conditioning(dtype, shape, depth):
    """The round trip A^{-1}(A(G)) is accurate to eps * kappa, kappa = (s_max/s_min)^(2(N-1)/N)
    (times N for non-square W), the operator's condition number: the rounding of A(G) alone
    costs that much (benchmarks/accuracy_inverse.py: error / (eps kappa) between 0.04 and 0.31
    for 1e2 <= cond <= 1e14, 5 seeds each); every condition number within rtol is honoured."""
    eps = torch.finfo(dtype).eps
    factor = 1 if shape[0] == shape[1] else depth
    for cond in (1e2, 1e4, 1e6, 1e8, 1e10, 1e12, 1e14):
        kappa = factor * cond ** (2 * (depth - 1) / depth)
        if eps * kappa > 1e-2 or cond * max(shape) * eps >= 1:
            continue
        for seed in range(3):
            W, G = _conditioned(cond, shape, dtype, seed)
            back = precondition_inverse(W, precondition(W, G, depth), depth)
            assert float((back - G).norm() / G.norm()) <= eps * kappa


def test_ill_conditioned_inverse_is_refused_with_the_numbers():
    W, Z = _conditioned(1e12, (6, 6), F64, 0)
    message = (
        r"`W` is too ill-conditioned to invert the preconditioner to `rtol` = 0.01: condition "
        r"number 1.00e\+12 gives an operator condition number 1.00e\+16, attainable relative "
        r"accuracy eps \* kappa = 2.2e\+00 in torch.float64"
    )
    with pytest.raises(ValueError, match=message):
        precondition_inverse(W, Z, 3)
    with pytest.raises(ValueError, match="attainable relative accuracy"):
        metric(W, Z, Z, 3)
    W14, Z14 = _conditioned(1e14, (6, 6), F64, 0)  # depth 2: kappa 1e14, bound 2.2e-2
    with pytest.raises(ValueError, match=r"eps \* kappa = 2.2e-02"):
        precondition_inverse(W14, Z14, 2)
    G = precondition_inverse(W14, Z14, 2, rtol=0.1)  # accepted when asked for
    # the residual A(A^{-1}(Z)) - Z is bounded by eps * kappa as well (measured 2.3e-4)
    assert float((precondition(W14, G, 2) - Z14).norm() / Z14.norm()) < 2.2e-2
    with pytest.raises(ValueError, match="`rtol` must be > 0, got 0"):
        precondition_inverse(W14, Z14, 2, rtol=0)


@pytest.mark.parametrize("depth", [2, 3, 2.5])
def test_homogeneity_keeps_huge_and_tiny_inputs_finite(gen, depth):
    """A_{N,cW}(dG) = c^(2(N-1)/N) d A_{N,W}(G): W at 1e200 and G at 1e-200 (float64), W at 1e30
    and G at 1e-30 (float32) give the scaled O(1) result; both at 1e200 overflow to inf with the
    sign of the O(1) result, never nan."""
    W = torch.randn(4, 6, generator=gen, dtype=F64)
    G = torch.randn(4, 6, generator=gen, dtype=F64)
    base = precondition(W, G, depth)
    p = 2 * (depth - 1) / depth
    for c, d in [(1e200, 1e-200), (1e-150, 1e150), (2.0**-1000, 2.0**600)]:
        expected = base * math.exp(p * math.log(c) + math.log(d))  # c^p alone may underflow
        torch.testing.assert_close(precondition(c * W, d * G, depth), expected, rtol=1e-11, atol=0)
    both = precondition(1e200 * W, 1e200 * G, depth)
    assert torch.equal(both, torch.where(base > 0, math.inf, -math.inf))
    W32, G32 = W.float(), G.float()
    got = precondition(1e30 * W32, 1e-30 * G32, depth).double()
    expected = precondition(W32, G32, depth).double() * math.exp((p - 1) * math.log(1e30))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=0)
    inverse = precondition_inverse(1e200 * W, 1e-200 * G, depth)
    torch.testing.assert_close(
        inverse,
        precondition_inverse(W, G, depth) * math.exp(-p * math.log(1e200) + math.log(1e-200)),
        rtol=1e-11,
        atol=0,
    )


def test_subnormal_inputs_are_scaled_exactly(gen):
    """W with entries below the smallest normal float64 (2^-1022): divided by an exact power of
    two, the operator is that of 2^1074 W scaled back (depth 2: degree 1 in W)."""
    W = torch.randn(3, 3, generator=gen, dtype=F64)
    G = torch.randn(3, 3, generator=gen, dtype=F64)
    tiny = W * 2.0**-1040  # subnormal entries (about 13 significant bits)
    out = precondition(tiny, G * 2.0**1000, 2)
    expected = precondition(tiny * 2.0**520 * 2.0**520, G, 2) * 2.0**-40
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=0)

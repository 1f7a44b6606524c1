"""The cached-factorization form of the preconditioner against core ``precondition``."""

import pytest
import torch

from overparam import precondition
from overparam.core import cached_factorization, precondition_cached, precondition_coefficients


def _matrices(shape, gen):
    m, n = shape
    full = torch.randn(shape, generator=gen, dtype=torch.float64)
    low = torch.randn(m, 2, generator=gen, dtype=torch.float64) @ torch.randn(
        2, n, generator=gen, dtype=torch.float64
    )
    return {"full": full, "rank 2": low, "zero": torch.zeros(shape, dtype=torch.float64)}


@pytest.mark.parametrize("shape", [(5, 6), (6, 5), (4, 17), (17, 4), (6, 6), (3, 20)])
@pytest.mark.parametrize("depth", [1, 2, 3, 2.5])
@pytest.mark.parametrize("method", ["auto", "svd", "qr", "gram"])
def test_equals_precondition(gen, shape, depth, method):
    """Both association orders (``n <= 3m`` and beyond), tall and wide, any rank: the exact rule.

    float64; svd/qr agree to rounding (1e-12 absolute on O(1) entries); gram resolves singular
    values only down to sqrt(n eps) s_max ~ 5e-8 s_max, exact zeros included, hence 1e-6.
    """
    tol = 1e-6 if method == "gram" else 1e-12
    for W in _matrices(shape, gen).values():
        G = torch.randn(shape, generator=gen, dtype=torch.float64)
        out = precondition_cached(*cached_factorization(W, method), G, depth)
        assert torch.allclose(out, precondition(W, G, depth), atol=tol, rtol=0)


def test_factorization_is_a_thin_svd(gen):
    W = torch.randn(2, 4, 9, generator=gen, dtype=torch.float64)  # batched
    for method in ("svd", "qr", "gram"):
        U, s, V = cached_factorization(W, method)
        assert U.shape == (2, 4, 4) and s.shape == (2, 4) and V.shape == (2, 9, 4)
        assert torch.allclose((U * s.unsqueeze(-2)) @ V.mT, W, atol=1e-10)
        assert bool((s[..., :-1] >= s[..., 1:]).all())


def test_floor_at_zero_and_far_below_the_spectrum(gen):
    """eps lifts W = 0 to ``N eps^(2(N-1)/N) G``; square W with every s >> eps: unchanged;
    a wide W changes only its null-space coefficient, from a(s_i, 0) to a(s_i, eps)."""
    G = torch.randn(4, 7, generator=gen, dtype=torch.float64)
    for depth in (2, 3):
        zero = precondition_cached(
            *cached_factorization(torch.zeros(4, 7, dtype=torch.float64)), G, depth, eps=1e-3
        )
        assert torch.allclose(zero, depth * 1e-3 ** (2 * (depth - 1) / depth) * G, rtol=1e-12)  # fmt: skip
    sq = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64))[0] * 2.0
    Gs = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    for depth in (2, 3):
        f = cached_factorization(sq)
        assert torch.allclose(
            precondition_cached(*f, Gs, depth, eps=1e-3), precondition_cached(*f, Gs, depth), atol=1e-13
        )  # fmt: skip
    W = torch.randn(4, 7, generator=gen, dtype=torch.float64)
    f = cached_factorization(W)
    s_min = f[1].min()
    for depth in (2, 3):
        zero_floor = precondition_cached(*f, G, depth)
        floored = precondition_cached(*f, G, depth, eps=1e-3)
        eps_t, z = torch.tensor(1e-3, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
        bound = precondition_coefficients(s_min, eps_t, depth) / precondition_coefficients(s_min, z, depth) - 1  # fmt: skip
        change = (floored - zero_floor).norm() / zero_floor.norm()
        assert 0 < change <= bound, (change, bound)


def test_unknown_method():
    with pytest.raises(ValueError, match=r"`method` must be one of .*got 'lu'"):
        cached_factorization(torch.eye(3), "lu")


def test_auto_takes_gram_only_where_it_is_accurate(gen):
    """Wide matrices: ``"auto"`` is the Gram route up to condition number ``GRAM_CONDITION``
    and QR beyond it (and at rank deficiency), matrix by matrix in a batch."""
    from overparam.core._cached import GRAM_CONDITION

    def wide(cond):
        U = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=torch.float64))[0]
        V = torch.linalg.qr(torch.randn(12, 4, generator=gen, dtype=torch.float64))[0]
        return (U * torch.tensor([1.0, 0.7, 0.5, 1.0 / cond], dtype=torch.float64)) @ V.mT

    good, bad = wide(GRAM_CONDITION / 2), wide(GRAM_CONDITION * 2)
    rank = good.clone()
    rank[-1] = 0.0
    for W, route in ((good, "gram"), (bad, "qr"), (rank, "qr")):
        for a, b in zip(cached_factorization(W), cached_factorization(W, route), strict=True):
            assert torch.equal(a, b)
    stack = torch.stack([good, bad, good])
    auto = cached_factorization(stack)
    for k, route in enumerate(("gram", "qr", "gram")):
        for a, b in zip(auto, cached_factorization(stack[k], route), strict=True):
            assert torch.allclose(a[k], b, atol=1e-13, rtol=0)

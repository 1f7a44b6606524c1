"""The cached-factorization form of the preconditioner against core ``precondition``, and the
refresh whose long side follows the current weight."""

import pytest
import torch

from overparam import precondition
from overparam.core import cached_factorization, precondition_cached, precondition_coefficients
from overparam.core._cached import precondition_refreshed, refresh_factorization


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


def _stale(W, gen):
    """``W`` moved by a 10% random step: a weight some steps after its refresh."""
    return W + 0.1 * torch.randn(W.shape, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("shape", [(5, 6), (6, 5), (4, 17), (17, 4), (6, 6), (3, 20)])
@pytest.mark.parametrize("depth", [1, 2, 3, 2.5])
@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_refresh_without_the_long_side_is_the_exact_rule_at_the_refresh(gen, shape, depth, eps):
    """The Gram route leaves the long side out; applied with the same ``W`` the operator is
    ``precondition_cached`` of the full factorization (1e-12: both are float64 products of the
    same ``U`` and ``s``, any rank)."""
    for W in _matrices(shape, gen).values():
        G = torch.randn(shape, generator=gen, dtype=torch.float64)
        factors = refresh_factorization(W, "gram")
        long = factors[2] if shape[0] <= shape[1] else factors[0]
        assert long is None
        out = precondition_refreshed(factors, W, G, depth, eps)
        ref = precondition_cached(*cached_factorization(W, "gram"), G, depth, eps)
        assert torch.allclose(out, ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", [(5, 6), (6, 5), (4, 17), (17, 4), (3, 20), (20, 3)])
@pytest.mark.parametrize("depth", [2, 3, 2.5])
@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_between_refreshes_the_long_side_follows_the_weight(gen, shape, depth, eps):
    """A moved ``W``: the operator equals ``precondition_cached`` with the long side formed
    naively from it, ``V = W^T U diag(1/s)`` (``U = W V diag(1/s)`` for a tall ``W``), zero
    columns where ``s <= eps``; shapes on both sides of ``n = 2 m`` (two association orders)."""
    m, n = shape
    W = torch.randn(shape, generator=gen, dtype=torch.float64)
    W[..., 0] *= 0.2 if m <= n else 1.0  # a singular value near the floor 0.3 for one case
    U, s, V = cached_factorization(W, "svd")
    moved = _stale(W, gen)
    inv = torch.tensor([1.0 / v if v > eps else 0.0 for v in s.tolist()], dtype=torch.float64)
    if m <= n:
        factors, naive = (U, s, None), (U, s, moved.mT @ U @ torch.diag(inv))
    else:
        factors, naive = (None, s, V), (moved @ V @ torch.diag(inv), s, V)
    G = torch.randn(shape, generator=gen, dtype=torch.float64)
    out = precondition_refreshed(factors, moved, G, depth, eps)
    assert torch.allclose(out, precondition_cached(*naive, G, depth, eps), atol=1e-12, rtol=0)
    frozen = precondition_refreshed((U, s, V), moved, G, depth, eps)  # both sides stored
    assert torch.allclose(frozen, precondition_cached(U, s, V, G, depth, eps), atol=0, rtol=0)
    assert not torch.allclose(out, frozen, atol=1e-3)


def test_a_long_side_that_only_rotated_gets_the_exact_operator(gen):
    """``W' = W R`` with ``R`` orthogonal (the row space rotated, the Gram matrix unchanged): the
    refresh of ``W`` applied to ``W'`` is ``precondition(W')``; the frozen one is not."""
    W = torch.randn(4, 11, generator=gen, dtype=torch.float64)
    R = torch.linalg.qr(torch.randn(11, 11, generator=gen, dtype=torch.float64))[0]
    G = torch.randn(4, 11, generator=gen, dtype=torch.float64)
    for depth in (2, 3):
        exact = precondition(W @ R, G, depth)
        tracked = precondition_refreshed(refresh_factorization(W, "gram"), W @ R, G, depth)
        frozen = precondition_refreshed(cached_factorization(W, "gram"), W @ R, G, depth)
        assert torch.allclose(tracked, exact, atol=1e-10, rtol=0)
        assert not torch.allclose(frozen, exact, atol=1e-2)


def test_refresh_stores_both_sides_off_the_gram_route(gen):
    """``"auto"``: the Gram route (lopsided, condition <= 30) leaves the long side out; square or
    ill-conditioned matrices keep both sides (applied frozen), in a batch too."""
    from overparam.core._cached import GRAM_CONDITION

    good = torch.randn(4, 40, generator=gen, dtype=torch.float64)  # condition ~ 1.9
    bad = good.clone()
    bad[0] *= 1e-3
    assert float(torch.linalg.cond(good)) < GRAM_CONDITION < float(torch.linalg.cond(bad))
    assert refresh_factorization(good)[2] is None and refresh_factorization(good.mT)[0] is None
    assert all(f is not None for f in refresh_factorization(bad))
    assert all(f is not None for f in refresh_factorization(torch.randn(5, 5, generator=gen)))
    U, s, V = refresh_factorization(torch.stack([good, bad]))  # mixed: both sides for all
    assert V is not None
    for k, W in enumerate((good, bad)):
        assert torch.allclose((U[k] * s[k]) @ V[k].mT, W, atol=1e-10)

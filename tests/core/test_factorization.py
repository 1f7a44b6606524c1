"""Balanced factorizations, products and imbalance."""

import pytest
import torch

from overparam import balanced_factors, imbalance, product
from overparam.core.factorization import numerical_rank

F64 = torch.float64


@pytest.mark.parametrize(
    "shape,depth,widths",
    [((5, 4), 2, None), ((3, 6), 3, 4), ((6, 2), 4, [2, 7, 3]), ((1, 9), 3, 1), ((4, 4), 1, None)],
)
def test_product_exact_and_balanced(gen, shape, depth, widths):
    W = torch.randn(*shape, generator=gen, dtype=F64)
    factors = balanced_factors(W, depth, widths)
    assert len(factors) == depth
    dims = [shape[1], *[f.shape[0] for f in factors]]
    assert [tuple(f.shape) for f in factors] == [(dims[j + 1], dims[j]) for j in range(depth)]
    # Products of O(1) matrices built from one SVD: agreement to a few ulps of ||W||.
    torch.testing.assert_close(product(factors), W, rtol=1e-13, atol=1e-13)
    for D in imbalance(factors):
        assert D.abs().max() < 1e-13


def test_singular_values_are_nth_roots(gen):
    """Claim A14: balanced factors share the singular values s^(1/N) of W."""
    W = torch.randn(4, 6, generator=gen, dtype=F64)
    s = torch.linalg.svdvals(W)
    for f in balanced_factors(W, 3, widths=5):
        sf = torch.linalg.svdvals(f)[:4]
        torch.testing.assert_close(sf, s ** (1 / 3), rtol=1e-12, atol=1e-12)


def test_low_rank_fits_narrow_widths(gen):
    W = torch.randn(6, 2, generator=gen, dtype=F64) @ torch.randn(2, 5, generator=gen, dtype=F64)
    assert numerical_rank(W) == 2
    factors = balanced_factors(W, 3, widths=[2, 2])
    torch.testing.assert_close(product(factors), W, rtol=1e-12, atol=1e-12)


def test_batched(gen):
    W = torch.randn(3, 4, 5, generator=gen, dtype=F64)
    factors = balanced_factors(W, 2, widths=6)
    torch.testing.assert_close(product(factors), W, rtol=1e-13, atol=1e-13)
    assert factors[0].shape == (3, 6, 5)


def test_imbalance_of_generic_factors(gen):
    A = torch.randn(3, 4, generator=gen, dtype=F64)
    B = torch.randn(2, 3, generator=gen, dtype=F64)
    (D,) = imbalance([A, B])
    torch.testing.assert_close(D, B.T @ B - A @ A.T)


def test_errors(gen):
    W = torch.randn(4, 5, generator=gen, dtype=F64)
    with pytest.raises(ValueError, match=r"`widths` must each be >= rank\(W\) = 4, got \[3\]"):
        balanced_factors(W, 2, widths=3)
    with pytest.raises(ValueError, match="`widths` must have depth - 1 = 2 entries, got 1"):
        balanced_factors(W, 3, widths=[4])
    with pytest.raises(ValueError, match="`widths` must contain integers >= 1"):
        balanced_factors(W, 2, widths=[0])
    with pytest.raises(ValueError, match="`depth` must be an integer >= 1, got 2.5"):
        balanced_factors(W, 2.5)
    with pytest.raises(ValueError, match="`factors` must chain"):
        imbalance([W, W])
    with pytest.raises(ValueError, match="`factors` must contain at least one matrix"):
        product([])


def test_product_refuses_mixed_dtypes_and_unbroadcastable_batches(gen):
    W = torch.randn(3, 4, generator=gen, dtype=F64)
    with pytest.raises(
        ValueError,
        match=r"`factors\[1\]` must have the dtype of `factors\[0\]` \(torch.float32\), got torch.float64",
    ):
        product([W.float(), W.T])
    with pytest.raises(
        ValueError,
        match=r"batch dimensions of `factors\[0\]` \(2,\), `factors\[1\]` \(3,\) must broadcast",
    ):
        product([W.expand(2, 3, 4), W.T.expand(3, 4, 3)])


def test_product_accepts_any_iterable(gen):
    W = torch.randn(3, 4, generator=gen, dtype=F64)
    torch.testing.assert_close(product(x for x in [W, W.T]), W.T @ W, rtol=0, atol=0)
    with pytest.raises(ValueError, match="`factors` must contain at least one matrix"):
        product(iter([]))
    with pytest.raises(ValueError, match="`factors` must be a sequence of tensors, got int"):
        product(3)

"""The preconditioner of a gradient given as ``Delta^T X`` against the dense operator."""

import pytest
import torch

from overparam.core._cached import (
    application_multiply_adds,
    cached_factorization,
    precondition_refreshed,
    refresh_factorization,
)
from overparam.core._low_rank import low_rank_multiply_adds, precondition_low_rank


@pytest.mark.parametrize("shape", [(5, 9), (9, 5), (6, 6), (3, 14), (14, 3)])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("eps", [0.0, 0.3])
@pytest.mark.parametrize("long_side", ["stored", "through W"])
def test_low_rank_application_is_the_dense_one(gen, shape, depth, eps, long_side):
    """float64, batched, any rank (two zero columns), floored or not, both sides stored or the
    long side through a moved ``W``: ``precondition_refreshed(D^T X)`` to 1e-12, with and
    without the recorded outputs ``X W^T``."""
    m, n = shape
    W = torch.randn(m, n, generator=gen, dtype=torch.float64)
    W[:, :2] = 0.0
    stack = torch.stack([W, 2 * W])
    D = torch.randn(2, 3, m, generator=gen, dtype=torch.float64)  # B = 3 rows
    X = torch.randn(2, 3, n, generator=gen, dtype=torch.float64)
    if long_side == "stored":
        factors = cached_factorization(stack, "svd")
    else:
        U, s, V = cached_factorization(stack, "svd")
        factors = (U, s, None) if m <= n else (None, s, V)
    moved = stack + 0.1 * torch.randn(stack.shape, generator=gen, dtype=torch.float64)
    dense = precondition_refreshed(factors, moved, D.mT @ X, depth, eps)
    for outputs in (None, X @ moved.mT):
        out = precondition_low_rank(factors, moved, D, X, depth, eps, outputs)
        assert torch.allclose(out, dense, atol=1e-12, rtol=0)


def test_recorded_outputs_are_used_through_the_weight(gen):
    """The outputs stand in for ``X W^T`` (a wrong one changes the direction)."""
    W = torch.randn(4, 12, generator=gen, dtype=torch.float64)
    factors = refresh_factorization(W, "gram")
    D = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    X = torch.randn(3, 12, generator=gen, dtype=torch.float64)
    right = precondition_low_rank(factors, W, D, X, 2, outputs=X @ W.mT)
    wrong = precondition_low_rank(factors, W, D, X, 2, outputs=2 * X @ W.mT)
    assert torch.allclose(right, precondition_low_rank(factors, W, D, X, 2), atol=1e-12)
    assert not torch.allclose(right, wrong, atol=1e-3)


def test_multiply_adds_of_the_two_routes():
    """At small B the low-rank route is far cheaper; at large B the dense one is.  Through
    ``W`` with the outputs recorded, a 512 x 3136 layer at depth 2 costs ``3 B m n + 4 B m^2``
    against ``4 B m n + 2 B m^2`` with the stored long side."""
    m, n = 512, 3136
    for tracked in (False, True):
        assert low_rank_multiply_adds(m, n, 64, 2, tracked) * 5 < application_multiply_adds(m, n, 2, tracked)  # fmt: skip
        assert low_rank_multiply_adds(m, n, 4096, 2, tracked) > application_multiply_adds(m, n, 2, tracked)  # fmt: skip
    assert low_rank_multiply_adds(m, n, 64, 2, True) == 64 * (3 * m * n + 4 * m * m)
    assert low_rank_multiply_adds(m, n, 64, 2, False) == 64 * (4 * m * n + 2 * m * m)
    assert low_rank_multiply_adds(m, n, 64, 2, True, outputs=False) == 64 * (4 * m * n + 4 * m * m)

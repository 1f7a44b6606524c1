"""GaussianSensing: adjoint identity, dense vs streamed forms, memory at d = 100, n = 5000."""

import math
import subprocess
import sys

import pytest
import torch

from overparam.sensing import GaussianSensing, planted_low_rank

F64 = torch.float64


def test_adjoint_identity(gen):
    op = GaussianSensing(150, 7, 5, seed=3)
    M = torch.randn(4, 7, 5, generator=gen, dtype=F64)
    y = torch.randn(4, 150, generator=gen, dtype=F64)
    lhs = (op.apply(M) * y).sum(-1)
    rhs = (M * op.adjoint(y)).sum((-1, -2))
    # both sides are sums of ~1e3 O(1) products in float64: 1e-12 relative is ~1e4 ulps
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_apply_matches_naive_sum(gen):
    op = GaussianSensing(40, 4, 6, seed=1)
    A = op.matrices()
    M = torch.randn(4, 6, generator=gen, dtype=F64)
    naive = torch.stack([(A[i] * M).sum() for i in range(40)]) / math.sqrt(40)
    torch.testing.assert_close(op.apply(M), naive, rtol=1e-12, atol=1e-13)


def test_streamed_equals_dense(gen):
    dense = GaussianSensing(1000, 6, 5, seed=7, block=64)
    streamed = GaussianSensing(1000, 6, 5, seed=7, block=64, max_bytes=0)
    assert dense.materialized and not streamed.materialized
    M = torch.randn(3, 6, 5, generator=gen, dtype=F64)
    y = torch.randn(3, 1000, generator=gen, dtype=F64)
    # same A_i, same order of block sums up to the matmul's reduction order: 1e-12 relative
    torch.testing.assert_close(streamed.apply(M), dense.apply(M), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(streamed.adjoint(y), dense.adjoint(y), rtol=1e-12, atol=1e-12)


def test_normal_operator_is_identity_in_expectation():
    # E[A*A(M)] = M; with n = 20000, d1 d2 = 12 the entries of A*A(M) - M have std ~ ||M||_F / sqrt(n)
    op = GaussianSensing(20000, 3, 4, seed=0)
    M = torch.arange(12, dtype=F64).reshape(3, 4) / 10
    err = (op.normal(M) - M).abs().max()
    assert err < 6 * torch.linalg.matrix_norm(M) / math.sqrt(20000)


_MEMORY_SCRIPT = """
import resource, torch
from overparam.sensing import GaussianSensing
torch.set_num_threads(1)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
op = GaussianSensing(5000, 100, 100, seed=0, max_bytes=2**26)
M = torch.randn(2, 100, 100, dtype=torch.float64)
y = op.apply(M)
Z = op.adjoint(y)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(op.materialized, op.dense_bytes, (peak - base) * 1024, tuple(y.shape), tuple(Z.shape))
"""


def test_d100_n5000_streamed_memory():
    """The d = 100, n = 5000 operator (400 MB dense in float64) runs streamed in O(block d^2)."""
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, check=True
    )
    materialized, dense_bytes, grown = out.stdout.split()[:3]
    assert "(2, 5000) (2, 100, 100)" in out.stdout
    assert materialized == "False"
    assert int(dense_bytes) == 5000 * 100 * 100 * 8  # 400 MB if materialized
    # peak growth: one 512 x 10^4 float64 block (41 MB) plus its matmul: well under 1/4 of dense
    assert int(grown) < int(dense_bytes) // 4


def test_planted_low_rank_spectrum(gen):
    X, Y = planted_low_rank(9, 7, 3, gen, kappa=4.0)
    s = torch.linalg.svdvals(X @ Y.T)
    torch.testing.assert_close(s[:3], torch.tensor([1.0, 0.625, 0.25], dtype=F64))
    assert s[3] < 1e-12
    Xs, Ys = planted_low_rank(6, 6, 2, gen, symmetric=True)
    assert torch.equal(Xs, Ys)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0, "d1": 2, "d2": 2}, "`n` must be an integer >= 1, got 0"),
        ({"n": 3, "d1": 2, "d2": 2, "dtype": torch.int64}, "`dtype` must be torch.float32"),
        ({"n": 3, "d1": 2, "d2": 2, "seed": -1}, "`seed` must be an integer >= 0, got -1"),
    ],
)
def test_operator_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianSensing(**kwargs)


def test_shape_and_kappa_validation(gen):
    op = GaussianSensing(5, 3, 2)
    with pytest.raises(ValueError, match=r"`M` must end with shape \(3, 2\), got \(2, 3\)"):
        op.apply(torch.zeros(2, 3, dtype=F64))
    with pytest.raises(ValueError, match="`y` must end with 5 measurements"):
        op.adjoint(torch.zeros(4, dtype=F64))
    with pytest.raises(ValueError, match="`kappa` must be a number >= 1, got 0.5"):
        planted_low_rank(4, 4, 2, gen, kappa=0.5)
    with pytest.raises(ValueError, match="`rank` must be <= min"):
        planted_low_rank(4, 3, 4, gen)

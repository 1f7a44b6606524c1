"""The l_p loss and its end-to-end gradient against autograd."""

import pytest
import torch

from overparam import lp_gradient, lp_loss
from overparam.core.losses import lp_loss_of_matrix

F64 = torch.float64


@pytest.mark.parametrize("p", [1.5, 2, 3, 4])
def test_gradient_matches_autograd(gen, p):
    X = torch.randn(30, 5, generator=gen, dtype=F64)
    Y = torch.randn(30, 2, generator=gen, dtype=F64)
    W = torch.randn(2, 5, generator=gen, dtype=F64, requires_grad=True)
    lp_loss(X @ W.T, Y, p).backward()
    torch.testing.assert_close(lp_gradient(W.detach(), X, Y, p), W.grad)


def test_values_and_batching(gen):
    X = torch.randn(10, 3, generator=gen, dtype=F64)
    Y = torch.randn(10, 1, generator=gen, dtype=F64)
    W = torch.randn(4, 1, 3, generator=gen, dtype=F64)
    r = X @ W[2].T - Y
    torch.testing.assert_close(lp_loss_of_matrix(W, X, Y, 4)[2], (r**4).mean() / 4)
    grads = lp_gradient(W, X, Y, 4)
    torch.testing.assert_close(grads[2], lp_gradient(W[2], X, Y, 4))


def test_errors(gen):
    X = torch.randn(10, 3, dtype=F64)
    with pytest.raises(ValueError, match="`p` must be a real number >= 1, got 0.5"):
        lp_loss(X, X, 0.5)
    with pytest.raises(ValueError, match="shapes must satisfy"):
        lp_gradient(torch.zeros(1, 4, dtype=F64), X, X[:, :1], 2)

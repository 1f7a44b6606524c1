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
    with pytest.raises(
        ValueError, match=r"`X` must have W.shape\[-1\] = 4 columns, got shape \(10, 3\)"
    ):
        lp_gradient(torch.zeros(1, 4, dtype=F64), X, X[:, :1], 2)


def test_shapes_never_broadcast_silently(gen):
    pred = torch.randn(5, 1, generator=gen, dtype=F64)
    with pytest.raises(
        ValueError, match=r"`target` must have the shape of `pred` \(5, 1\).*got \(5,\)"
    ):
        lp_loss(pred, pred[:, 0], 2)
    with pytest.raises(
        ValueError, match=r"`target` must have the shape of `pred` \(5,\).*got \(5, 1\)"
    ):
        lp_loss(pred[:, 0], pred, 2)
    # leading batch dimensions broadcast: K predictions against one target
    batch = torch.randn(3, 5, 1, generator=gen, dtype=F64)
    torch.testing.assert_close(lp_loss(batch, pred, 2)[1], lp_loss(batch[1], pred, 2))
    with pytest.raises(
        ValueError, match=r"batch dimensions of `pred` \(3,\), `target` \(2,\) must broadcast"
    ):
        lp_loss(batch, torch.zeros(2, 5, 1, dtype=F64), 2)
    with pytest.raises(ValueError, match="`target` must have the dtype of `pred`"):
        lp_loss(pred, pred.float(), 2)


def test_gradient_names_the_mismatched_argument(gen):
    X = torch.randn(10, 3, generator=gen, dtype=F64)
    Y = torch.randn(10, 2, generator=gen, dtype=F64)
    W = torch.randn(2, 3, generator=gen, dtype=F64)
    with pytest.raises(
        ValueError, match=r"`X` must have W.shape\[-1\] = 3 columns, got shape \(10, 4\)"
    ):
        lp_gradient(W, torch.zeros(10, 4, dtype=F64), Y, 2)
    with pytest.raises(
        ValueError, match=r"`Y` must have W.shape\[-2\] = 2 columns, got shape \(10, 1\)"
    ):
        lp_gradient(W, X, Y[:, :1], 2)
    with pytest.raises(ValueError, match=r"`Y` must have the 10 rows of `X`, got shape \(9, 2\)"):
        lp_gradient(W, X, Y[:9], 2)
    with pytest.raises(ValueError, match="`X` must have the dtype of `W`"):
        lp_gradient(W, X.float(), Y, 2)
    with pytest.raises(ValueError, match=r"batch dimensions of `W` \(4,\), `X` \(2,\)"):
        lp_gradient(W.expand(4, 2, 3), X.expand(2, 10, 3), Y, 2)


def test_a_mean_over_zero_samples_is_refused():
    W = torch.randn(3, 4, dtype=F64)
    with pytest.raises(
        ValueError,
        match=r"`pred` must contain at least one sample and one output, got shape \(0, 4\)",
    ):
        lp_loss(W[:0], W[:0], 2)
    with pytest.raises(
        ValueError,
        match=r"`pred` must contain at least one sample and one output, got shape \(3, 0\)",
    ):
        lp_loss(W[:, :0], W[:, :0], 2)
    with pytest.raises(
        ValueError, match=r"`pred` must contain at least one sample.*got shape \(0,\)"
    ):
        lp_loss(W[0, :0], W[0, :0], 2)
    with pytest.raises(
        ValueError, match=r"`X` must contain at least one sample \(row\), got shape \(0, 4\)"
    ):
        lp_gradient(W, torch.zeros(0, 4, dtype=F64), torch.zeros(0, 3, dtype=F64), 2)
    with pytest.raises(ValueError, match=r"`X` must contain at least one sample \(row\)"):
        lp_loss_of_matrix(W, torch.zeros(0, 4, dtype=F64), torch.zeros(0, 3, dtype=F64), 2)
    # an empty batch of problems is still an empty result
    assert lp_loss(torch.zeros(0, 3, 4, dtype=F64), torch.zeros(0, 3, 4, dtype=F64), 2).shape == (
        0,
    )
    assert lp_gradient(
        W[:0], torch.ones(5, 4, dtype=F64), torch.ones(5, 0, dtype=F64), 2
    ).shape == (
        0,
        4,
    )

"""One input policy for every core operation.

* dtypes: float16, bfloat16, float32, float64; half precision is computed in float32 inside and
  returned in the input dtype;
* NaN or infinite entries: ``ValueError`` naming the argument (``product`` excepted: it is the
  forward pass of a model and propagates like ``torch.matmul``);
* empty tensors: the empty result of the right shape.
"""

import pytest
import torch

from overparam import (
    balanced_factors,
    imbalance,
    lp_gradient,
    lp_loss,
    metric,
    precondition,
    precondition_inverse,
    product,
    single_output_precondition,
)
from overparam.core import geometric_closed_form, numerical_rank, precondition_coefficients

F64 = torch.float64
HALF = [torch.float16, torch.bfloat16]


def _matrices(gen, shape=(5, 4)):
    W = torch.randn(*shape, generator=gen, dtype=F64) + 2 * torch.eye(*shape, dtype=F64)
    return W, torch.randn(*shape, generator=gen, dtype=F64)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("shape", [(5, 4), (3, 8)])
def test_half_precision_is_computed_in_float32_and_returned_in_its_dtype(gen, dtype, shape):
    W, G = (x.to(dtype) for x in _matrices(gen, shape))
    W32, G32 = W.float(), G.float()  # the same (rounded) values, exactly representable
    for depth in (2, 3, 2.5):
        out = precondition(W, G, depth)
        assert out.dtype == dtype
        # the float32 result rounded once to the output dtype
        assert torch.equal(out, precondition(W32, G32, depth).to(dtype))
        inv = precondition_inverse(W, G, depth)
        assert inv.dtype == dtype
        assert torch.equal(inv, precondition_inverse(W32, G32, depth).to(dtype))
        g = metric(W, G, G, depth)
        assert g.dtype == dtype and torch.isfinite(g)
    factors = balanced_factors(W, 3)
    assert all(f.dtype == dtype for f in factors)
    # factors carry s^(1/3) in the output dtype: the product is W to a few half-precision ulps
    eps = torch.finfo(dtype).eps
    assert float((product(factors).float() - W32).abs().max()) < 8 * eps * float(W32.abs().max())
    assert single_output_precondition(W[0], G[0], 3).dtype == dtype
    assert all(D.dtype == dtype for D in imbalance(factors))
    assert numerical_rank(W) == min(shape)
    s = torch.linalg.svdvals(W32).to(dtype)
    assert precondition_coefficients(s[:, None], s[None, :], 3).dtype == dtype
    assert geometric_closed_form(s[:, None], s[None, :], 2.5).dtype == dtype


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda W, G: precondition(W, G, 2), "G"),
        (lambda W, G: precondition(G, W, 2), "W"),
        (lambda W, G: precondition_inverse(W, G, 2), "Z"),
        (lambda W, G: metric(W, G, W, 2), "Z1"),
        (lambda W, G: balanced_factors(G, 2), "W"),
        (lambda W, G: imbalance([W.mT, G]), "factors\\[1\\]"),
        (lambda W, G: numerical_rank(G), "W"),
        (lambda W, G: single_output_precondition(W[1], G[1], 2), "g"),
        (lambda W, G: precondition_coefficients(W.abs(), G, 2), "s_col"),
        (lambda W, G: geometric_closed_form(G, W.abs(), 2), "s_row"),
    ],
)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_are_rejected_naming_the_argument(gen, call, name, bad):
    W, G = _matrices(gen)
    G[1, 2] = bad
    with pytest.raises(ValueError, match=f"`{name}` contains NaN or infinite entries"):
        call(W, G)


def test_product_propagates_nan_like_matmul(gen):
    W, _ = _matrices(gen)
    W[0, 0] = float("nan")
    assert torch.isnan(product([W.mT, W])).any()


@pytest.mark.parametrize("dtype", [torch.int64, torch.complex128, torch.float8_e4m3fn])
def test_other_dtypes_are_rejected_with_the_accepted_list(dtype):
    W = torch.ones(3, 3).to(dtype)
    message = (
        r"`W` must have a floating dtype \(float16, bfloat16, float32 or float64\), got torch\."
    )
    with pytest.raises(ValueError, match=message):
        precondition(W, W, 2)


@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (0, 0), (2, 0, 4, 4)])
def test_empty_inputs_give_empty_results(shape):
    W = torch.zeros(shape, dtype=F64)
    for depth in (1, 2, 2.5):
        assert precondition(W, W, depth).shape == shape
        assert precondition_inverse(W, W, depth).shape == shape
        g = metric(W, W, W, depth)
        assert g.shape == shape[:-2] and bool((g == 0).all())
    assert numerical_rank(W) == 0


def test_balanced_factors_of_an_empty_matrix():
    factors = balanced_factors(torch.zeros(0, 3, dtype=F64), 3)
    assert [tuple(f.shape) for f in factors] == [(0, 3), (0, 0), (0, 0)]
    assert product(factors).shape == (0, 3)


def test_imbalance_needs_a_sequence_of_matrices(gen):
    W, _ = _matrices(gen)
    with pytest.raises(ValueError, match=r"`factors` must be a sequence of tensors, got a Tensor"):
        imbalance(torch.randn(3, 4, 4, generator=gen, dtype=F64))
    with pytest.raises(ValueError, match=r"`factors\[0\]` must have at least 2 dimensions"):
        imbalance([W[0], W])
    with pytest.raises(ValueError, match=r"`factors\[1\]` must have the dtype of `factors\[0\]`"):
        imbalance([W.mT, W.float()])


@pytest.mark.parametrize("widths", [2.5, "4", True, [4.0]])
def test_balanced_factors_widths_must_be_integers(gen, widths):
    W, _ = _matrices(gen)
    with pytest.raises(ValueError, match="`widths` must (be an integer|contain integers)"):
        balanced_factors(W, 2, widths=widths)


@pytest.mark.parametrize("dtype", HALF)
def test_losses_in_half_precision_are_float32_inside(gen, dtype):
    X = torch.randn(20, 3, generator=gen, dtype=F64).to(dtype)
    Y = (8 * torch.randn(20, 2, generator=gen, dtype=F64)).to(dtype)  # |r|^4 > 65504 for fp16
    W = torch.randn(2, 3, generator=gen, dtype=F64).to(dtype)
    pred = X @ W.mT
    loss = lp_loss(pred, Y, 4)
    assert loss.dtype == dtype and torch.isfinite(loss)
    assert torch.equal(loss, lp_loss(pred.float(), Y.float(), 4).to(dtype))
    grad = lp_gradient(W, X, Y, 4)
    assert grad.dtype == dtype
    assert torch.equal(grad, lp_gradient(W.float(), X.float(), Y.float(), 4).to(dtype))


def test_single_output_form_is_homogeneous(gen):
    w = torch.randn(3, 5, generator=gen, dtype=F64)
    g = torch.randn(3, 5, generator=gen, dtype=F64)
    base = single_output_precondition(w, g, 3)
    # ||c w||^(2 - 2/N) = c^(4/3) ||w||^(4/3): c = 1e200, g scaled by 1e-200 gives base * 1e200^(4/3) * 1e-200
    got = single_output_precondition(1e200 * w, 1e-250 * g, 3)
    torch.testing.assert_close(got, base * 1e200 ** (4 / 3) * 1e-250, rtol=1e-12, atol=0)


def test_argument_names_and_ranges(gen):
    W, G = _matrices(gen)
    with pytest.raises(ValueError, match=r"`Z2` must have the shape of `W` \(5, 4\), got \(4, 4\)"):
        metric(W, G, G[:4], 2)
    with pytest.raises(ValueError, match=r"`factors\[1\]` must be a matrix \(>= 2 dimensions\)"):
        product([W, 3.0])
    with pytest.raises(ValueError, match="`p` must be a real number >= 1, got inf"):
        lp_loss(W, G, float("inf"))


def test_meta_tensors_are_refused_by_name():
    W = torch.zeros(3, 4, dtype=F64, device="meta")
    with pytest.raises(ValueError, match="`W` is a meta tensor: meta tensors have no values"):
        precondition(W, W, 2)

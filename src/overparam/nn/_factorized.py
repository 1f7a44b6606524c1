"""The factors of one overparameterized weight, their product, and the cost of each contraction order.

A weight ``P`` is read as ``g`` matrices ``M_i`` of shape ``(m, n)`` (``g`` groups of a grouped conv,
the three ``q/k/v`` blocks of an attention in-projection, ``g = 1`` otherwise; ``P^T`` for the
``(in, out)`` weight of Hugging Face's ``Conv1D``; a kernel ``(g m, c, k_1, ..)`` gives
``n = c k_1 ..``) and each is replaced by ``W_N ... W_1`` with ``W_1`` of shape ``(d_1, n)`` and
``W_j`` of shape ``(d_j, d_{j-1})``, ``d_N = m`` (Arora, Cohen & Hazan, ICML 2018, Section 8: "add a
matrix after each dense layer").

Two ways to apply the layer to ``B`` input positions (tokens times batch, or output pixels):

* product: form ``W = W_N ... W_1`` (``g n sum_{j>=2} d_j d_{j-1}`` multiply-adds) and apply it
  (``B g m n``);
* chain: apply ``W_1`` then ``W_2`` ... to the input (``B g sum_j d_j d_{j-1}``).

:meth:`Factorized.prefers_chain` picks the one with fewer multiply-adds; the backward pass of each
order costs twice its forward (one product for the input gradient, one for the factor gradient),
so the same order is the cheaper one for the whole training step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from overparam._threads import intra_op_threads
from overparam.core.factorization import product

ORDERS = ("auto", "product", "chain")


class Factorized(nn.Module):
    """Factors ``[W_1, ..., W_N]`` (``self.factors``, ``W_1`` first) of a weight of shape ``shape``.

    Calling the module returns the end-to-end weight ``reshape(W_N ... W_1)`` in the original
    parameter's shape (and orientation).  Factors of ``groups > 1`` carry a leading group dimension.

    Args:
        factors: the initial factors ``W_1`` first, each ``(d_j, d_{j-1})`` or ``(g, d_j, d_{j-1})``.
        shape: shape of the weight they stand for.
        groups: number of independent blocks ``g`` (rows of the weight split evenly).
        transposed: the matrix is ``P^T`` (a weight stored as ``(in, out)``).
        order: ``"auto"`` (fewer multiply-adds per call), ``"product"`` or ``"chain"``.
    """

    def __init__(
        self,
        factors: Sequence[Tensor],
        shape: Sequence[int],
        groups: int = 1,
        transposed: bool = False,
        order: str = "auto",
        requires_grad: bool = True,
    ) -> None:
        super().__init__()
        if order not in ORDERS:
            raise ValueError(f"`order` must be one of {ORDERS}, got {order!r}")
        self.factors = nn.ParameterList(
            [nn.Parameter(f.detach().clone(), requires_grad=requires_grad) for f in factors]
        )
        self.shape = tuple(int(s) for s in shape)
        self.groups = int(groups)
        self.transposed = bool(transposed)
        self.order = order
        dims = [int(self.factors[0].shape[-1])] + [int(f.shape[-2]) for f in self.factors]
        self.dims = dims  # [n, d_1, ..., d_{N-1}, m]

    @property
    def depth(self) -> int:
        return len(self.dims) - 1

    @property
    def widths(self) -> list[int]:
        return self.dims[1:-1]

    def chain_cost(self, positions: int, lookup: bool = False) -> int:
        """Multiply-adds of the chained order for ``positions`` inputs (``lookup``: skip ``W_N``)."""
        pairs = [a * b for a, b in zip(self.dims[:-1], self.dims[1:], strict=True)]
        return positions * self.groups * sum(pairs[:-1] if lookup else pairs)

    def product_cost(self, positions: int, lookup: bool = False) -> int:
        """Multiply-adds of forming ``W_N ... W_1`` and applying it (``lookup``: a row gather)."""
        n, d = self.dims[0], self.dims
        form = n * sum(d[j] * d[j - 1] for j in range(2, len(d)))
        apply = 0 if lookup else positions * n * d[-1]
        return self.groups * form + self.groups * apply

    def prefers_chain(self, positions: int, lookup: bool = False) -> bool:
        """Whether chaining the input through the factors is the cheaper order for this call."""
        if self.order != "auto":
            return self.order == "chain"
        return self.chain_cost(positions, lookup) < self.product_cost(positions, lookup)

    def forward(self, dtype: torch.dtype | None = None) -> Tensor:
        """The end-to-end weight ``W_N ... W_1``, reshaped (and transposed) to ``shape``.

        ``dtype``: compute the product in this dtype (for instance float32 for bf16 factors).
        """
        factors = list(self.factors) if dtype is None else [f.to(dtype) for f in self.factors]
        W = product(factors)
        if self.transposed:
            return W.mT
        return W.reshape(self.shape)

    def extra_repr(self) -> str:
        extra = f", groups={self.groups}" if self.groups > 1 else ""
        extra += ", transposed=True" if self.transposed else ""
        return f"shape={self.shape}, dims={self.dims}{extra}, order={self.order!r}"


def as_matrices(weight: Tensor, groups: int, transposed: bool) -> Tensor:
    """The matrices ``M_i`` a weight stands for: ``(m, n)``, or ``(g, m, n)`` when ``groups > 1``."""
    W = weight.mT if transposed else weight
    if groups > 1:
        return W.reshape(groups, W.shape[0] // groups, -1)
    return W.reshape(W.shape[0], -1)


def _null_mask(s: Tensor, rows: int, cols: int) -> Tensor:
    """Singular values at or below ``max(m, n) eps s_max`` (numerically zero), per matrix."""
    tol = max(rows, cols) * torch.finfo(s.dtype).eps * s.amax(dim=-1, keepdim=True)
    return s <= tol


def gram_svd(W: Tensor, sort: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """``W = U diag(s) V^T`` from the eigenvectors of the smaller Gram matrix (``s`` descending).

        For ``m >= n``: ``W^T W = V diag(lambda) V^T`` (``eigh``), ``B = W V``, ``s_i = ||B e_i||``,
        ``U = B diag(1/s)``, completed to orthonormal columns by the QR of ``B`` where ``s_i`` is
    numerically zero; ``m < n`` works on ``W^T``.  About 2x
        (square) to 3x (4:1) faster than ``torch.linalg.svd`` on CPU.  ``U diag(s) V^T = W V V^T``
        equals ``W`` to rounding for any orthonormal ``V``; the columns of ``U`` are orthonormal to
        ``eps s_max^2 / (s_i s_j)``, so directions far below ``s_max`` are only nearly orthogonal.
        ``sort=False`` skips the sort (and its two gathers): ``s`` then comes in the order of the
        Gram matrix's eigenvalues, descending up to their rounding (``eps s_max^2``).  The
        ``eigh`` runs on one intra-op thread (the products keep torch's setting): on a loaded
        2-core machine 49 float32 ``768 x 768`` eighs took 3.9 s on one thread and 29.9 s on two.
    """
    if W.shape[-2] < W.shape[-1]:
        U, s, Vh = gram_svd(W.mT, sort)
        return Vh.mT, s, U.mT
    gram = W.mT @ W
    with intra_op_threads(1):  # LAPACK's eigh barely scales, and stalls on a busy machine
        V = torch.linalg.eigh(gram).eigenvectors.flip(-1)  # eigenvalues descending
    B = W @ V
    s = torch.linalg.vector_norm(B, dim=-2)
    if sort:
        s, order = s.sort(dim=-1, descending=True)
        V = V.gather(-1, order.unsqueeze(-2).expand_as(V))
        B = B.gather(-1, order.unsqueeze(-2).expand_as(B))
    U = B / torch.where(s > 0, s, torch.ones_like(s)).unsqueeze(-2)
    null = _null_mask(s, W.shape[-2], W.shape[-1])
    rows = null.any(dim=-1)
    if bool(rows.any()):  # complete U: B's columns are orthogonal, so QR's Q extends them
        Q = torch.linalg.qr(B[rows]).Q
        U[rows] = torch.where(null[rows].unsqueeze(-2), Q, U[rows])
    return U, s, V.mT


def preserving_factors(W: Tensor, depth: int, widths: Sequence[int]) -> tuple[list[Tensor], Tensor]:
    """Factors of a stack ``W`` of shape ``(b, m, n)`` with ``W_N ... W_1 = W`` that all train.

    With ``W = U diag(s) V^T`` (:func:`gram_svd`; ``k = min(m, n, widths)`` directions), ``r_i = s_i^(1/N)``:
    ``W_1 = E_1 diag(f) V^T``, ``W_j = E_j diag(f) E_{j-1}^T``, ``W_N = U diag(z) E_{N-1}^T`` with
    ``z_i = r_i`` and ``f_i = r_i`` on the nonzero singular values (exactly balanced there:
    ``W_{j+1}^T W_{j+1} = W_j W_j^T``, Arora et al. 2018, Definition 1), and ``z_i = 0``,
    ``f_i = s_max^(1/N)`` (``1`` for ``W = 0``) on the numerically zero ones.  The product is
    ``W`` to rounding, and ``dL/dW_N = G (W_{N-1} .. W_1)^T`` is nonzero along every direction:
    balanced factors of a zero singular value are all zero, a saddle that gradient descent never
    leaves (a zero-initialized head would never train).

    Computed in float32 for half-precision ``W`` and returned in ``W``'s dtype, with the numerical
    rank of each matrix (singular values above ``max(m, n) eps s_max``): the product equals ``W``
    only where every width is at least that rank.  A ``meta`` ``W`` (no values) gets ``meta``
    factors of these shapes and rank 0.
    """
    dtype = W.dtype
    work = W.float() if dtype in (torch.float16, torch.bfloat16) else W
    b, m, n = work.shape
    if depth == 1:
        return [W.clone()], torch.full((b,), min(m, n), device=W.device)
    hidden = list(widths)
    if W.is_meta:
        dims = [n, *hidden, m]
        shapes = [(b, dims[j + 1], dims[j]) for j in range(depth)]
        return [torch.empty(shape, dtype=dtype, device=W.device) for shape in shapes], torch.zeros(
            b, dtype=torch.long
        )
    k = min([m, n, *hidden])
    U, s, Vh = gram_svd(work, sort=k < min(m, n))  # the order matters only when truncating
    null = _null_mask(s, m, n)
    ranks = (~null).sum(-1)
    U, s, Vh, null = U[..., :k], s[:, :k], Vh[:, :k, :], null[:, :k]
    root = s.pow(1.0 / depth)
    top = root.amax(dim=-1, keepdim=True)
    fill = torch.where(null, torch.where(top > 0, top, torch.ones_like(top)), root)
    last = torch.where(null, torch.zeros_like(root), root)
    idx = torch.arange(k, device=W.device)

    def embed(block: Tensor, rows: int, cols: int) -> Tensor:  # zero-padded to (b, rows, cols)
        if tuple(block.shape[-2:]) == (rows, cols):
            return block
        out = torch.zeros(b, rows, cols, dtype=work.dtype, device=W.device)
        out[:, : block.shape[-2], : block.shape[-1]] = block
        return out

    def diag(rows: int, cols: int) -> Tensor:
        out = torch.zeros(b, rows, cols, dtype=work.dtype, device=W.device)
        out[:, idx, idx] = fill
        return out

    factors = [embed(fill.unsqueeze(-1) * Vh, hidden[0], n)]
    factors += [diag(hidden[j], hidden[j - 1]) for j in range(1, depth - 1)]
    factors.append(embed(U * last.unsqueeze(-2), m, hidden[-1]))
    return [f.to(dtype) for f in factors], ranks

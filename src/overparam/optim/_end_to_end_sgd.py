"""SGD with the end-to-end preconditioner: depth-N acceleration with no extra parameters.

Gradient descent with step ``eta`` on the factors of a balanced depth-``N`` linear network moves
the end-to-end matrix ``W`` by ``-eta A_{N,W}(grad)`` plus ``O(eta^2)`` (Arora, Cohen & Hazan 2018,
Theorem 1), with

    A_{N,W}(G) = sum_{j=1..N} (W W^T)^((N-j)/N) G (W^T W)^((j-1)/N).

:class:`EndToEndSGD` applies that update directly to each weight ``W`` (a parameter with 2 or more
dimensions; a conv kernel is read as the matrix ``out x (in * k ...)``) and plain SGD to the others
(biases, norms).  Structure follows ``torch.optim.SGD``.

Amortization (``precondition_every=k``, as Shampoo and SOAP amortize their preconditioners): the
thin SVD ``W = U diag(s) V^T`` is computed at every ``k``-th step of a parameter (and earlier once
``||W||_F`` has moved by ``REFRESH_DRIFT = 10%`` from the cached ``||s||``, as a weight growing
from a small initialization does) and cached in its state (``basis_u``, ``singular_values``,
``basis_v``).  ``k = 1`` is the exact rule.  The steps in between apply the cached operator:

* both sides stored (a square or ill-conditioned ``W``): basis, singular values and
  coefficients all frozen (:func:`overparam.core.precondition_cached`);
* a lopsided, well-conditioned ``W`` (the Gram route of ``factorization="auto"``, ``m <= n``):
  only ``U`` and ``s`` are stored; the long side is taken from the current weight,
  ``V = W^T U diag(1/s)``, the Gram route's own formula used at the time of use
  (:func:`overparam.core.precondition_tracked`).  The refresh saves one ``m n r`` product, a
  weight that only rotated on its long side gets the exact operator, and with
  :meth:`EndToEndSGD.capture` the product ``X W^T`` is the layer's recorded output.  (``m > n``:
  the same with the sides swapped.)

The gap to the exact trajectory grows like ``lr (k - 1)`` (a stale operator of age ``j`` errs by
``O(lr j)``); ``tests/optim/test_end_to_end_amortized.py`` fits both slopes for both caches
and ``benchmarks/bench_end_to_end.py`` prints the gap tables.  Measured there: the long side
following ``W`` has a 4.7x-5.0x smaller gap than the frozen one on the test's regression, and on
the source's MNIST ConvNet at batch 64 the gap after 30 steps (lr 0.01) is 4.3e-2 at both
k = 10 and k = 20 (the frozen cache's was 4.7e-2 at k = 10), for a step 1.34x / 1.30x SGD's:
hence the default ``k = 20``.

Low-rank gradients (:meth:`EndToEndSGD.capture`): the gradient of an ``nn.Linear`` weight over
``B`` input rows is ``Delta^T X`` (output gradients times inputs, rank ``<= B``); with the two
factors recorded by forward hooks, as K-FAC records them, the operator costs
``N B (r (m + n) + m n)`` multiply-adds (``2 N B r^2 + (2 N - 1) B m n`` with the long side
through ``W``) instead of about ``3 m^2 n`` (:mod:`overparam.core._low_rank`), the same
direction to rounding.  At small batch this is the step's main cost: ``benchmarks/bench_nn.py``
prints both routes.

Precision: bfloat16/float16 parameters are preconditioned in float32 (factorization, cache and
direction) and updated in their own dtype; momentum buffers have the parameter's dtype.

Non-finite gradients: ``step`` raises ``ValueError`` naming the param group, the parameter's index
and shape before any parameter is changed (matrices and biases alike), so a NaN never enters the
weights or the cached factorization.  (Under ``torch.amp.GradScaler`` the scaler skips the step
first.)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from overparam import _validate
from overparam.core._cached import (
    METHODS,
    Refresh,
    application_multiply_adds,
    precondition_refreshed,
    refresh_factorization,
)
from overparam.core._low_rank import low_rank_factors, low_rank_multiply_adds
from overparam.optim._capture import Handles, LowRank, LowRankGradients

_CACHE_KEYS = ("basis_u", "singular_values", "basis_v")
DEFAULT_PRECONDITION_EVERY = 20
DEFAULT_EPS = 1e-3
REFRESH_DRIFT = 0.1  # a refresh comes early once ||W||_F moved by 10% (see the module docstring)


def _stack(tensors: list[Tensor]) -> Tensor:
    """``torch.stack``, as a view (no copy) for a single tensor."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def _drifted(W: Tensor, s: Tensor) -> bool:
    """Whether some ``||W||_F`` moved by more than ``REFRESH_DRIFT`` from the ``||s||`` of its
    factorization (a weight growing from a small initialization, say)."""
    now, then = torch.linalg.matrix_norm(W), torch.linalg.vector_norm(s, dim=-1)
    return bool(((now - then).abs() > REFRESH_DRIFT * then).any())


def _stack_optional(tensors: list[Tensor | None]) -> Tensor | None:
    """:func:`_stack`, or ``None`` for a list of ``None`` (a long side that was left out)."""
    return None if tensors[0] is None else _stack(tensors)  # type: ignore[arg-type]


def _row(t: Tensor | None, k: int) -> Tensor | None:
    return None if t is None else t[k]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision parameters (no half SVD), the parameter's dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_momentum(value: float) -> float:
    """``momentum`` must lie in ``[0, 1)`` (1 and above diverge: the buffer never forgets)."""
    _validate.positive(value, "momentum", allow_zero=True)
    if value >= 1.0:
        raise ValueError(f"`momentum` must be in [0, 1), got {value}")
    return float(value)


def _check_every(value: int) -> int:
    """``precondition_every`` must be an integer ``>= 1``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`precondition_every` must be an integer >= 1, got {value!r}")
    return value


def _check_flag(value: bool) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"`decoupled_weight_decay` must be a bool, got {value!r}")
    return value


def _check_method(value: str) -> str:
    if value not in METHODS:
        raise ValueError(f"`factorization` must be one of {METHODS}, got {value!r}")
    return value


def _check_finite(grads: list[Tensor], describe: Callable[[int], str]) -> None:
    """Raise ``ValueError`` naming ``describe(i)`` for the first gradient with NaN/inf entries.

    Fast path: one sum per gradient (NaN and inf propagate into it) and one device
    synchronization for the whole list; only a non-finite total (possibly an overflow of finite
    entries) triggers the entrywise check.
    """
    if not grads:
        return
    device = grads[0].device  # float32 partial sums: an overflow only sends us to the slow path
    total = torch.stack([g.sum(dtype=_compute_dtype(g.dtype)).float().to(device) for g in grads])
    if bool(torch.isfinite(total.sum())):
        return
    flags = torch.stack([torch.isfinite(g).all().to(device) for g in grads])
    if bool(flags.all()):
        return
    first = int((~flags).nonzero()[0, 0])
    raise ValueError(
        f"the gradient of {describe(first)} contains NaN or infinite entries; "
        "no parameter was updated"
    )


def _first_non_finite(tensors: list[Tensor], indices: list[int]) -> int | None:
    return next((i for i in indices if not bool(torch.isfinite(tensors[i]).all())), None)


def _check_pair(pair: LowRank, p: Tensor, i: int) -> int:
    """The row count ``B`` of ``low_rank[i] = (Delta, X[, Y])``: ``(B, m)``, ``(B, n)`` and
    ``(B, m)`` for the ``m x n`` matrix ``p``."""
    if not isinstance(pair, (tuple, list)) or len(pair) not in (2, 3):
        raise ValueError(f"`low_rank[{i}]` must be a tuple (Delta, X) or (Delta, X, Y)")
    if not all(isinstance(t, Tensor) for t in pair):
        raise ValueError(
            f"`low_rank[{i}]` must hold tensors, got {[type(t).__name__ for t in pair]}"
        )
    X = pair[1]
    m, n = p.shape[0], p[0].numel()
    shapes = [tuple(t.shape) for t in pair]
    rows = X.shape[0] if X.dim() == 2 else -1
    if shapes != [(rows, m), (rows, n), (rows, m)][: len(pair)]:
        raise ValueError(
            f"`low_rank[{i}]` must be (Delta, X) or (Delta, X, Y = X W^T) of shapes (B, {m}), "
            f"(B, {n}) and (B, {m}) for a parameter of shape {tuple(p.shape)}, got "
            + " and ".join(str(s) for s in shapes)
        )
    return int(rows)


def end_to_end_direction(
    params: list[Tensor],
    grads: list[Tensor],
    depth: float,
    *,
    eps: float = 0.0,
    factorizations: list[Refresh | None] | None = None,
    method: str = "auto",
    low_rank: list[LowRank | None] | None = None,
) -> list[Tensor]:
    """``A_{N,W}(G)`` for every ``(W, G)`` with ``W.ndim >= 2``; ``G`` unchanged otherwise.

    ``W`` of shape ``(m, ...)`` is read as the matrix ``(m, prod(rest))``.  Parameters of equal
    shape, dtype and device are stacked and preconditioned in one batched call.

    Args:
        params: the current parameters ``W``.
        grads: their gradients (same shapes).
        depth: the depth ``N >= 1`` of the emulated overparameterization.
        eps: floor on the singular values (:func:`overparam.core.precondition_cached`).
        factorizations: optional cache, one entry per parameter: the ``(U, s, V)`` of an
            earlier ``W`` (its long side possibly ``None``, then taken from the current ``W``:
            :func:`overparam.core._cached.precondition_refreshed`), or ``None`` to factorize the
            current ``W`` (the result is stored in the list).  Without it every matrix is
            factorized (the exact rule).
        method: the factorization (:func:`overparam.core._cached.refresh_factorization`).
        low_rank: optional, one entry per parameter: ``(Delta, X)`` with ``G = Delta^T X``
            (a 2-D weight's gradient over ``B`` rows), or ``(Delta, X, Y)`` with the layer's
            outputs without bias ``Y = X W^T`` (saves one ``B m n`` product), applied in that
            form (:func:`overparam.core._low_rank.precondition_low_rank`) at an integer depth;
            ``None`` entries (and real depths) use ``G``.

    Returns:
        The update directions, in the order of ``params`` (each in its parameter's dtype).
    """
    directions = _directions(params, grads, depth, eps, factorizations, method, low_rank)
    return [_formed(d, p) for d, p in zip(directions, params, strict=True)]


def _formed(direction: Tensor | LowRank, p: Tensor) -> Tensor:
    """A direction as a tensor of ``p``'s shape and dtype (``(L, R)``: ``L^T R``)."""
    if isinstance(direction, Tensor):
        return direction
    L, R = direction
    return (L.mT @ R).reshape(p.shape).to(p.dtype)


def _directions(
    params: list[Tensor],
    grads: list[Tensor],
    depth: float,
    eps: float,
    factorizations: list[Refresh | None] | None,
    method: str,
    low_rank: list[LowRank | None] | None,
) -> list[Tensor | LowRank]:
    """:func:`end_to_end_direction` with low-rank directions left as ``(L, R)``."""
    if len(params) != len(grads):
        raise ValueError(f"`grads` must have one entry per param ({len(params)}), got {len(grads)}")
    if factorizations is not None and len(factorizations) != len(params):
        raise ValueError(
            f"`factorizations` must have one entry per param ({len(params)}), "
            f"got {len(factorizations)}"
        )
    n = _validate.depth(depth)
    _validate.positive(eps, "eps", allow_zero=True)
    cache: list[Refresh | None] = factorizations or [None] * len(params)
    factored = low_rank if low_rank is not None and n == int(n) else [None] * len(params)
    if len(factored) != len(params):
        raise ValueError(
            f"`low_rank` must have one entry per param ({len(params)}), got {len(factored)}"
        )
    out: list[Tensor | LowRank] = list(grads)
    if n == 1.0:
        return out
    buckets: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        if p.dim() >= 2 and p.numel() > 0:  # an empty matrix: its (empty) gradient as is
            _validate.same_shape(p, g, "param", "grad")
            pair = factored[i]
            rows = None if pair is None else _check_pair(pair, p, i)
            kind = None if cache[i] is None else tuple(f is None for f in cache[i])  # type: ignore[union-attr]
            buckets[(tuple(p.shape), p.dtype, p.device, kind, rows)].append(i)
    for (shape, dtype, _, kind, rows), idx in buckets.items():
        compute = _compute_dtype(dtype)
        W = _stack([params[i].detach().reshape(shape[0], -1) for i in idx]).to(compute)
        if kind is not None and _drifted(W, _stack([cache[i][1] for i in idx])):  # type: ignore[index]
            kind = None  # refreshed early
        if kind is None:
            bad = None if bool(torch.isfinite(W.sum())) else _first_non_finite(params, idx)
            if bad is not None:
                raise ValueError(
                    f"`params[{bad}]` (shape {tuple(shape)}) contains NaN or infinite entries: "
                    "its singular basis cannot be refreshed"
                )
            U, s, V = refresh_factorization(W, method)
            for k, i in enumerate(idx):
                cache[i] = (_row(U, k), s[k], _row(V, k))
        else:
            U, s, V = (_stack_optional([cache[i][j] for i in idx]) for j in range(3))  # type: ignore[index, assignment]
        factors: Refresh = (U, s, V)  # type: ignore[assignment]
        if rows is not None:
            pairs = [factored[i] for i in idx]
            left, right = (_stack([pair[j] for pair in pairs]).to(compute) for j in range(2))  # type: ignore[index]
            outputs = None
            if all(len(pair) == 3 for pair in pairs):  # type: ignore[arg-type]
                outputs = _stack([pair[2] for pair in pairs]).to(compute)  # type: ignore[index, misc]
            L, R = low_rank_factors(factors, W, left, right, int(n), eps, outputs)
            for k, i in enumerate(idx):
                out[i] = (L[k], R[k])  # the direction L^T R, formed by the caller
            continue
        G = _stack([grads[i].reshape(shape[0], -1) for i in idx]).to(compute)
        D = precondition_refreshed(factors, W, G, n, eps)
        for k, i in enumerate(idx):
            out[i] = D[k].reshape(shape).to(dtype)
    return out


def end_to_end_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: float,
    depth: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    eps: float = 0.0,
    factorizations: list[Refresh | None] | None = None,
    method: str = "auto",
    check_gradients: bool = True,
    low_rank: list[LowRank | None] | None = None,
    decoupled_weight_decay: bool = False,
) -> None:
    """One step, in place: ``d = A_{N,W}(g + wd W)``; ``b = mu b + d``; ``W <- W - lr b``.

    Weight decay is added to the gradient before preconditioning (it is the gradient of
    ``wd/2 ||W||^2``, part of the loss); with ``decoupled_weight_decay`` it is applied to the
    weights instead, as AdamW and Muon apply it: ``d = A_{N,W}(g)``, ``b = mu b + d``,
    ``W <- (1 - lr wd) W - lr b`` (the gradient keeps its low-rank form).  Momentum accumulates the preconditioned directions (the
    update of the emulated factors' end-to-end matrix).  ``momentum_buffers`` entries that are
    ``None`` are created (a copy of ``d``) and stored back in the list.  With ``depth == 1`` this is
    ``torch.optim.SGD`` (no dampening, no Nesterov).

    Args:
        params: parameters to update (``W.ndim >= 2``: preconditioned; others: plain SGD).
        grads: their gradients.
        momentum_buffers: one buffer (or ``None``) per parameter; updated in place.
        lr: step size ``> 0``.
        depth: depth ``N >= 1`` of the emulated overparameterization.
        momentum: ``0 <= mu < 1``.
        weight_decay: ``wd >= 0``.
        eps: floor on the singular values ``>= 0`` (0: the exact rule).
        factorizations: the cache of :func:`end_to_end_direction` (``None``: exact, no cache).
        method: the factorization of a refresh.
        check_gradients: raise ``ValueError`` naming ``grads[i]`` and its shape if a gradient
            has NaN/inf entries (before anything is changed).
        low_rank: the gradients as ``(Delta, X)`` products (:func:`end_to_end_direction`);
            ignored under coupled weight decay (``g + wd W`` is not of that form).
        decoupled_weight_decay: decay the weights, not the gradient (see above).
    """
    _validate.positive(lr, "lr")
    _check_momentum(momentum)
    _validate.positive(weight_decay, "weight_decay", allow_zero=True)
    if len(momentum_buffers) != len(params):
        raise ValueError(
            f"`momentum_buffers` must have one entry per param ({len(params)}), "
            f"got {len(momentum_buffers)}"
        )
    if check_gradients:
        _check_finite(grads, lambda i: f"`grads[{i}]` (shape {tuple(grads[i].shape)})")
    coupled = weight_decay != 0.0 and not decoupled_weight_decay
    if coupled:
        grads = [g.add(p.detach(), alpha=weight_decay) for p, g in zip(params, grads, strict=True)]
        low_rank = None
    directions = _directions(params, grads, depth, eps, factorizations, method, low_rank)
    with torch.no_grad():
        for i, (p, d) in enumerate(zip(params, directions, strict=True)):
            if weight_decay != 0.0 and not coupled:
                p.mul_(1.0 - lr * weight_decay)
            if not (isinstance(d, Tensor) or (p.dim() == 2 and d[0].dtype == p.dtype)):
                d = _formed(d, p)  # a low-rank direction is added inside the product if it can
            if momentum == 0.0:
                _add_direction(p, d, -lr)
                continue
            buf = momentum_buffers[i]
            if buf is None:
                momentum_buffers[i] = buf = _formed(d, p).detach().clone()
            elif isinstance(d, Tensor):
                buf.mul_(momentum).add_(d)
            else:
                buf.addmm_(d[0].mT, d[1], beta=momentum)  # one pass over the buffer
            p.add_(buf, alpha=-lr)


def _coupled_decay(group: dict[str, Any]) -> bool:
    """Whether the group adds ``wd W`` to the gradient (which then has no low-rank form)."""
    return group["weight_decay"] != 0.0 and not group["decoupled_weight_decay"]


def _add_direction(target: Tensor, d: Tensor | LowRank, alpha: float) -> None:
    """``target += alpha d``; a low-rank ``d = L^T R`` is added inside the product (``addmm_``)."""
    if isinstance(d, Tensor):
        target.add_(d, alpha=alpha)
    else:
        target.addmm_(d[0].mT, d[1], alpha=alpha)


def _check_group(group: dict[str, Any]) -> None:
    checks: dict[str, Callable[[Any], Any]] = {
        "lr": lambda v: _validate.positive(v, "lr"),
        "depth": _validate.depth,
        "momentum": _check_momentum,
        "weight_decay": lambda v: _validate.positive(v, "weight_decay", allow_zero=True),
        "precondition_every": _check_every,
        "decoupled_weight_decay": _check_flag,
        "eps": lambda v: _validate.positive(v, "eps", allow_zero=True),
        "factorization": _check_method,
    }
    for key, check in checks.items():
        if key in group:
            check(group[key])


def _checked_group(group: Any, index: int, known: Iterable[str]) -> dict[str, Any]:
    """A param group dict with a ``params`` entry, known keys only, valid values and floating
    tensors; ``params`` is returned as a list (a generator is read once)."""
    if not isinstance(group, dict):
        raise ValueError(f"param group {index} must be a dict, got {type(group).__name__}")
    if "params" not in group:
        raise ValueError(
            f"param group {index} must have a 'params' entry, got keys {sorted(group)}"
        )
    allowed = {"params", "param_names", *known}
    unknown = sorted(str(k) for k in group if k not in allowed)
    if unknown:
        raise ValueError(
            f"param group {index} has unknown key {unknown[0]!r}; known keys: {sorted(allowed)}"
        )
    try:
        _check_group(group)
    except ValueError as error:
        raise ValueError(f"param group {index}: {error}") from None
    params = group["params"]
    if isinstance(params, set):
        raise ValueError(f"param group {index}: `params` must be ordered (a list), got a set")
    params = [params] if isinstance(params, Tensor) else list(params)
    for j, p in enumerate(params):
        where = f"param group {index}, parameter {j}"
        if not isinstance(p, Tensor):
            raise ValueError(f"{where} must be a torch.Tensor, got {type(p).__name__}")
        if p.dtype not in _validate.FLOATING:
            raise ValueError(
                f"{where} (shape {tuple(p.shape)}) must have a floating dtype (float16, "
                f"bfloat16, float32 or float64), got {p.dtype}"
            )
    return {**group, "params": params}


class EndToEndSGD(torch.optim.Optimizer):
    """SGD whose matrix parameters follow the depth-``N`` end-to-end dynamics.

    For each parameter ``W`` with ``W.ndim >= 2``: ``W <- W - lr A_{N,W}(grad + wd W)`` (with
    momentum on the preconditioned direction); others get plain SGD.  The trajectory matches
    gradient descent on an actually overparameterized, balanced model to ``O(lr)`` (Arora, Cohen &
    Hazan 2018, Theorem 1).  Every param-group key below may be set per group; ``depth=1`` is
    plain SGD, which is how to exclude parameters, as Muon's documentation advises for
    embeddings, the first layer and the output head (see the example).

    Args:
        params: iterable of parameters or param-group dicts.
        lr: step size ``> 0``.
        depth: depth ``N >= 1`` (real values allowed).
        momentum: momentum factor in ``[0, 1)``.
        weight_decay: L2 coefficient ``>= 0``.
        decoupled_weight_decay: apply ``weight_decay`` to the weights
            (``W <- (1 - lr wd) W``, as AdamW and Muon do) instead of adding ``wd W`` to the
            gradient before preconditioning; keeps :meth:`capture`'s low-rank route.
        precondition_every: refresh the cached SVD of each matrix every this many of its steps,
            or earlier when its norm drifts (``1``: the exact rule; the default amortizes, see
            the module docstring).
        eps: floor on the singular values, null directions included (``0``: the exact rule).  At
            ``W = 0`` the rule gives ``A_{N,0} = 0`` for ``N > 1``, so a zero-initialized weight
            would never move; with the floor it moves by ``N eps^(2(N-1)/N)`` times its
            gradient, and its singular values then grow.  A weight with all singular values
            above ``eps`` and no null space is unaffected.
        factorization: ``"auto"``, ``"svd"``, ``"qr"`` or ``"gram"``
            (:func:`overparam.core.cached_factorization`).

    Call :meth:`capture` with the model to have its ``nn.Linear`` gradients preconditioned in
    low-rank form (much cheaper at small batch; the same update).

    Example:
        >>> model = torch.nn.Sequential(
        ...     torch.nn.Embedding(100, 16), torch.nn.Linear(16, 32), torch.nn.Linear(32, 100)
        ... )
        >>> hidden = [model[1].weight]  # preconditioned; embedding, head and biases: plain SGD
        >>> rest = [p for p in model.parameters() if p is not model[1].weight]
        >>> opt = EndToEndSGD(
        ...     [{"params": hidden}, {"params": rest, "depth": 1}], lr=0.1, depth=2, momentum=0.9
        ... )
        >>> hooks = opt.capture(model)  # model[1]: low-rank gradients (depth-1 groups: as is)
        >>> model(torch.tensor([[1, 2, 3]])).square().mean().backward()
        >>> opt.step()
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        depth: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        precondition_every: int = DEFAULT_PRECONDITION_EVERY,
        eps: float = DEFAULT_EPS,
        factorization: str = "auto",
        decoupled_weight_decay: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "depth": depth,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "precondition_every": precondition_every,
            "eps": eps,
            "factorization": factorization,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        _check_group(defaults)
        if isinstance(params, (Tensor, dict)) or not isinstance(params, Iterable):
            kind = "a Tensor" if isinstance(params, Tensor) else type(params).__name__
            raise ValueError(
                "`params` must be an iterable of tensors or param-group dicts, got "
                f"{kind} (wrap a single tensor in a list)"
            )
        super().__init__(params, defaults)
        self._low_rank: LowRankGradients | None = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group: a dict with ``params``, known keys only, hyperparameters validated like
        the constructor's and floating-point tensors."""
        index = len(getattr(self, "param_groups", []))
        super().add_param_group(_checked_group(param_group, index, self.defaults))

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_low_rank", None)  # pickles hold no hooks: capture again
        for group in self.param_groups:  # checkpoints of the exact rule, saved before these keys
            group.setdefault("precondition_every", 1)
            group.setdefault("eps", 0.0)
            group.setdefault("factorization", "auto")
            group.setdefault("decoupled_weight_decay", False)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """``torch.optim.Optimizer.load_state_dict``, keeping the float32 cache of half-precision
        parameters in float32 (the base class casts every floating state tensor to the
        parameter's dtype).  The saved groups' hyperparameters are validated first."""
        for index, group in enumerate(state_dict["param_groups"]):
            try:
                _check_group(group)
            except ValueError as error:
                raise ValueError(f"param group {index}: {error}") from None
        saved = state_dict["state"]
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for index, entry in saved.items():
            p, state = params[index], self.state[params[index]]
            for key in _CACHE_KEYS:
                if key in entry:
                    state[key] = entry[key].to(device=p.device)

    def _gather(self) -> list[tuple[dict[str, Any], list[Tensor], list[Tensor]]]:
        """Each group with its parameters that have gradients; all gradients checked finite."""
        gathered = []
        for index, group in enumerate(self.param_groups):
            positions = [j for j, p in enumerate(group["params"]) if p.grad is not None]
            params: list[Tensor] = [group["params"][j] for j in positions]
            grads: list[Tensor] = [p.grad for p in params]  # type: ignore[misc]
            if any(g.is_sparse for g in grads):
                raise ValueError("EndToEndSGD does not support sparse gradients")

            def describe(i: int, index: int = index, positions: list[int] = positions) -> str:
                shape = tuple(self.param_groups[index]["params"][positions[i]].shape)
                return f"param group {index}, parameter {positions[i]} (shape {shape})"

            _check_finite(grads, describe)
            gathered.append((group, params, grads))
        return gathered

    def capture(self, model: nn.Module) -> Handles:
        """Keep the gradients of ``model``'s ``nn.Linear`` weights as low-rank products.

        Forward hooks record each layer's inputs ``X`` and output gradients ``Delta`` (as
        K-FAC does), so that the weight gradient ``G = Delta^T X`` over ``B`` rows (batch times
        tokens) is preconditioned in that form: ``N B (r (m + n) + m n)`` multiply-adds instead
        of about ``3 m^2 n`` (depth 2), the difference between a step that costs a few percent
        more than SGD's and one that costs several times more at small batch.  The direction
        is the same to rounding (the pairs are checked against ``.grad`` before use, see
        :mod:`overparam.optim._capture`; the dense gradient is used when the check fails, when
        the low-rank form would cost more (large ``B``), under weight decay and at real
        depths).  Call it once after building the optimizer; the returned handle's ``remove()``
        detaches the hooks.

        Args:
            model: the module whose ``nn.Linear`` layers' weights are (some of) this
                optimizer's parameters.

        Returns:
            A handle with ``remove()`` (also a context manager).
        """
        if not isinstance(model, nn.Module):
            raise ValueError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
        if self._low_rank is None:
            self._low_rank = LowRankGradients(self._rows_limit)
        weights = {p for group in self.param_groups for p in group["params"] if p.dim() == 2}
        return self._low_rank.attach(model, weights)

    def _group_of(self, p: Tensor) -> dict[str, Any] | None:
        return next((g for g in self.param_groups if any(q is p for q in g["params"])), None)

    def _rows_limit(self, p: Tensor) -> int:
        """The most rows for which the low-rank route costs fewer multiply-adds (0: never)."""
        group = self._group_of(p)
        if group is None or p.dim() != 2 or _coupled_decay(group):
            return 0
        depth = float(group["depth"])
        if depth == 1.0 or depth != int(depth) or depth > 64:
            return 0
        m, n = p.shape  # lopsided: the Gram route, whose long side goes through W (if conditioned)
        tracked = 4 * max(m, n) > 5 * min(m, n) and group["factorization"] in ("auto", "gram")
        per_row = low_rank_multiply_adds(m, n, 1, int(depth), tracked)
        return max(0, (application_multiply_adds(m, n, depth, tracked) - 1) // per_row)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``torch.optim.Optimizer.zero_grad``, also forgetting the captured gradient pairs."""
        super().zero_grad(set_to_none)
        captured = self._low_rank
        if captured is not None:
            captured.clear()

    def _low_rank_of(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> list[LowRank | None] | None:
        captured = self._low_rank
        if captured is None or _coupled_decay(group):
            return None
        return [
            captured.take(p, g) if p.dim() == 2 else None
            for p, g in zip(params, grads, strict=True)
        ]

    def _cached(self, p: Tensor, every: int) -> Refresh | None:
        """The cached ``(U, s, V)`` of ``p`` (the long side possibly ``None``), or ``None`` when a
        refresh is due."""
        state = self.state[p]
        if p.dim() < 2 or state.get("step", 0) % every == 0 or "singular_values" not in state:
            return None
        return state.get("basis_u"), state["singular_values"], state.get("basis_v")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update; ``closure`` (re-evaluating the loss with gradients) is called if given.

        Returns:
            The loss returned by ``closure``, or ``None``.

        Raises:
            ValueError: if a gradient has NaN or infinite entries (nothing is updated).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, params, grads in self._gather():
            if not params:
                continue
            buffers = [self.state[p].get("momentum_buffer") for p in params]
            cache = [self._cached(p, group["precondition_every"]) for p in params]
            end_to_end_sgd(
                params,
                grads,
                buffers,
                lr=group["lr"],
                depth=group["depth"],
                momentum=group["momentum"],
                weight_decay=group["weight_decay"],
                decoupled_weight_decay=group["decoupled_weight_decay"],
                eps=group["eps"],
                factorizations=cache,
                method=group["factorization"],
                check_gradients=False,
                low_rank=self._low_rank_of(group, params, grads),
            )
            for p, buf, factors in zip(params, buffers, cache, strict=True):
                state = self.state[p]
                if group["momentum"] != 0.0:
                    state["momentum_buffer"] = buf
                if factors is not None:
                    for key, value in zip(_CACHE_KEYS, factors, strict=True):
                        if value is None:
                            state.pop(key, None)  # the long side follows the current W
                        else:
                            state[key] = value
                state["step"] = state.get("step", 0) + 1
        captured = self._low_rank
        if captured is not None:
            captured.clear()
        return loss

"""Weight gradients of ``nn.Linear`` layers kept as the low-rank product ``Delta^T X``.

The gradient of a linear layer's weight over ``B`` input rows (batch times tokens) is
``G = Delta^T X``: ``X`` the ``B x n`` inputs, ``Delta`` the ``B x m`` gradients of the outputs.
Kronecker-factored methods (K-FAC, Martens & Grosse 2015) record the same two factors with module
hooks.  With them the end-to-end preconditioner costs ``N B (r (m + n) + m n)`` multiply-adds
(:func:`overparam.core._low_rank.precondition_low_rank`) instead of about ``3 m^2 n`` on the dense
gradient, which is what makes :class:`overparam.optim.EndToEndSGD` cheap at small batch.

:class:`LowRankGradients` holds, per weight, the ``(X, Delta)`` pairs of the backward passes since
the last step (gradient accumulation appends pairs).  Before a pair set is used it is checked
against the weight's actual ``.grad`` on a random projection ``v``: ``G v = alpha Delta^T (X v)``
to a relative tolerance of 1000 rounding units of the dtype (``alpha`` absorbs a uniform rescaling of the gradient, as gradient
clipping or ``GradScaler.unscale_`` apply).  Anything else that changed the gradient (a stale pair
set after ``model.zero_grad()``, a weight shared with another layer, DDP's all-reduce, an added
penalty) fails the check, and the dense gradient is used instead: the low-rank form is an exact
shortcut, never an approximation.

For a weight with ``m <= n`` of a plain ``nn.Linear`` (its own forward, no other forward hook
before this one) the layer's output less its bias, ``Y = X W^T``, is recorded too:
when the cached factorization's long side follows ``W`` (:mod:`overparam.core._low_rank`) the
step needs exactly that product.  It is used only if the weight's version counter has not moved
since the forward pass, the test autograd itself applies to the tensors it saves: a weight
changed in place in between (by another optimizer, a projection, ``load_state_dict``) gets
``X W^T`` formed again.  (Like autograd's, the test cannot see writes through ``.data``.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.modules.module import _global_forward_hooks
from torch.utils.hooks import RemovableHandle

LowRank = tuple[Tensor, ...]  # (Delta, X) or (Delta, X, Y): G = Delta^T X, Y = X W^T


@dataclass
class _Pairs:
    """The captured ``(X, Delta)`` of one weight since the last step."""

    inputs: list[Tensor] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)  # X W^T, for a weight with m <= n
    versions: set[int] = field(default_factory=set)  # the weight's version at those forwards
    rows: int = 0
    overflow: bool = False  # more rows than the low-rank route pays for: not recorded


class LowRankGradients:
    """Forward hooks on ``nn.Linear`` layers recording each weight gradient's two factors.

    Args:
        limit: ``limit(weight)`` is the largest number of rows for which the low-rank route
            pays (``0``: do not record this weight).
    """

    def __init__(self, limit: Callable[[Tensor], int]) -> None:
        self.limit = limit
        self.pairs: dict[Tensor, _Pairs] = {}
        self._limits: dict[Tensor, int] = {}
        self.generator: dict[torch.device, torch.Generator] = {}

    def attach(self, model: nn.Module, weights: set[Tensor]) -> Handles:
        """Hook every ``nn.Linear`` of ``model`` whose ``weight`` is in ``weights``."""
        handles = [
            module.register_forward_hook(self._forward_hook)
            for module in model.modules()
            if isinstance(module, nn.Linear) and module._parameters.get("weight") in weights
        ]
        if not handles:
            raise ValueError(
                "`model` has no nn.Linear layer whose weight this optimizer updates; "
                "nothing to capture"
            )
        return Handles(handles)

    def _forward_hook(self, module: nn.Module, args: tuple[object, ...], output: object) -> None:
        weight = module._parameters.get("weight")
        x = args[0] if args else None
        if (
            weight is None
            or not torch.is_grad_enabled()
            or not isinstance(output, Tensor)
            or not output.requires_grad
            or not isinstance(x, Tensor)
            or x.shape[-1:] != weight.shape[1:]
        ):
            return
        if weight not in self._limits:
            self._limits[weight] = self.limit(weight)
        entry = self.pairs.setdefault(weight, _Pairs())
        rows = x.numel() // weight.shape[1]
        if entry.overflow or entry.rows + rows > self._limits[weight]:
            entry.overflow = True
            return
        entry.rows += rows
        inputs = x.detach().reshape(rows, -1)
        outputs, version = None, weight._version
        if weight.shape[0] <= weight.shape[1] and self._plain_output(module):  # X W^T is used
            outputs = output.detach().reshape(rows, -1)
            bias = module._parameters.get("bias")
            outputs = outputs - bias.detach() if isinstance(bias, Tensor) else outputs

        def hook(
            grad: Tensor,
            inputs: Tensor = inputs,
            outputs: Tensor | None = outputs,
            entry: _Pairs = entry,
        ) -> None:
            entry.inputs.append(inputs)
            entry.grads.append(grad.detach().reshape(inputs.shape[0], -1))
            if outputs is not None:
                entry.outputs.append(outputs)
                entry.versions.add(version)

        output.register_hook(hook)

    def _plain_output(self, module: nn.Module) -> bool:
        """Whether the output this hook sees is ``F.linear(x, W, b)``: ``nn.Linear``'s own
        forward (not a subclass's), and no forward hook that ran before this one and could have
        replaced it."""
        if type(module).forward is not nn.Linear.forward or _global_forward_hooks:
            return False
        return next(iter(module._forward_hooks.values()), None) == self._forward_hook

    def clear(self) -> None:
        """Forget every captured pair (after a step, or when gradients are zeroed)."""
        self.pairs.clear()

    def take(self, weight: Tensor, grad: Tensor) -> LowRank | None:
        """``(Delta, X)`` with ``Delta^T X == grad`` (checked), or ``None`` (use ``grad``); with
        ``Y = X W^T`` as a third entry where it was recorded and ``weight`` has not changed in
        place since (its version counter, as autograd checks its saved tensors)."""
        entry = self.pairs.get(weight)
        if entry is None or entry.overflow or not entry.inputs:
            return None
        X = _joined(entry.inputs)
        D = _joined(entry.grads)
        if X.shape[0] != D.shape[0] or D.shape[1] != grad.shape[0]:
            return None
        alpha = self._scale(grad, D, X)
        if alpha is None:
            return None
        D = D * alpha if alpha != 1.0 else D
        if len(entry.outputs) != len(entry.inputs) or entry.versions != {weight._version}:
            return D, X  # the weight changed in place since a forward pass: X W^T is formed again
        return D, X, _joined(entry.outputs)

    def _random(self, size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        if device not in self.generator:
            self.generator[device] = torch.Generator(device).manual_seed(0)
        return torch.randn(size, generator=self.generator[device], device=device, dtype=dtype)

    def _scale(self, grad: Tensor, D: Tensor, X: Tensor) -> float | None:
        """``alpha`` with ``grad v = alpha D^T (X v)`` to ``tolerance`` on a random ``v``."""
        work = torch.promote_types(torch.float32, grad.dtype)
        v = self._random(grad.shape[1], grad.device, work)
        gv = grad.to(work) @ v
        hv = D.to(work).mT @ (X.to(work) @ v)
        norm = float(hv.dot(hv))
        if norm == 0.0 or not torch.isfinite(hv).all():
            return None
        alpha = float(gv.dot(hv)) / norm
        tolerance = _tolerance(grad.dtype, D.dtype, X.dtype)
        residual = float((gv - alpha * hv).norm())
        return alpha if residual <= tolerance * float(gv.norm()) else None


def _joined(parts: list[Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _tolerance(*dtypes: torch.dtype) -> float:
    """Relative mismatch allowed between ``.grad`` and ``Delta^T X`` on one projection:
    ``1000 eps`` of the coarsest dtype (``1.2e-4`` in float32, 100x its rounding), ``4 eps``
    when a factor is half precision (its rounding is then the gradient's own precision)."""
    eps = max(torch.finfo(d).eps for d in dtypes)
    half = any(d in (torch.float16, torch.bfloat16) for d in dtypes)
    return 4 * eps if half else 1000 * eps


class Handles:
    """The hooks of one :meth:`LowRankGradients.attach`; ``remove()`` (or a ``with`` block's
    end) detaches them all."""

    def __init__(self, handles: list[RemovableHandle]) -> None:
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def __enter__(self) -> Handles:
        return self

    def __exit__(self, *args: object) -> None:
        self.remove()

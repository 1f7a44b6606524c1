"""The adaptive step size ``eta_t = argmin_eta f(eta, t)`` of Xu et al. 2023 (eq. 29-30).

Functional forms (:func:`adaptive_step`, :func:`adaptive_step_rho`) and a
``torch.optim.lr_scheduler``-style object (:class:`AdaptiveStepLR`) that sets the learning rate of
an optimiser over the two factors ``W1, W2`` (source convention ``W = W1 W2``) before each step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from overparam.theory._operators import LeastSquares, tau_extremes
from overparam.theory._rates import (
    InitConstants,
    f_coefficients,
    minimize_quartic,
    rho_coefficients,
)


def adaptive_step(
    const: InitConstants, L: Tensor, c1: float, c2: float, cap: Tensor | float | None = None
) -> Tensor:
    """``eta_t^* = argmin_{eta > 0} f(eta, t)`` (source, after eq. 30), optionally ``min(., cap)``.

    ``f'(eta) = -a1 + 2 a2 eta + 3 a3 eta^2 + 4 a4 eta^3`` is increasing on ``eta > 0``, so the
    minimiser is its unique positive root.  As ``L(t) -> 0``, ``a3, a4 -> 0`` (eq. 31) and
    ``eta_t^* -> a1 / (2 a2(inf)) = c1 alpha0 / (K (c2 beta0)^2)``.

    Args:
        const: constants of the initialisation (:class:`InitConstants`), batch shape ``B``.
        L: current excess loss, shape ``B``.
        c1, c2: ``0 < c1 < 1 < c2`` of eq. (23).
        cap: optional upper limit (e.g. ``eta_max``).
    """
    eta = minimize_quartic(f_coefficients(const, L, c1, c2))
    return eta if cap is None else torch.minimum(eta, torch.as_tensor(cap, dtype=eta.dtype))


def adaptive_step_rho(
    lam_min: Tensor, lam_max: Tensor, sigma_max: Tensor, grad_norm: Tensor, K: Tensor, mu: Tensor
) -> Tensor:
    """``argmin_{eta > 0} rho(eta, t)`` of eq. (20) from the quantities measured at step ``t``."""
    return minimize_quartic(rho_coefficients(lam_min, lam_max, sigma_max, grad_norm, K, mu))


def measured_quantities(problem: LeastSquares, W1: Tensor, W2: Tensor) -> dict[str, Tensor]:
    """``loss, grad, lam_min, lam_max, s_min, s_max, grad_norm`` of ``W = W1 W2`` (batched)."""
    W = W1 @ W2
    g = problem.grad(W)
    lam_min, lam_max = tau_extremes(W1, W2)
    s = torch.linalg.svdvals(W)
    return {
        "W": W,
        "grad": g,
        "loss": problem.loss(W),
        "lam_min": lam_min,
        "lam_max": lam_max,
        "s_min": s[..., -1],
        "s_max": s[..., 0],
        "w_fro": torch.linalg.matrix_norm(W),
        "grad_norm": torch.linalg.matrix_norm(g),
    }


class AdaptiveStepLR(LRScheduler):
    """Set ``lr = eta_t`` (argmin of ``f`` or of the measured ``rho``) before each optimiser step.

    The optimiser must hold exactly the two factors ``W1 (d, h)`` and ``W2 (h, m)`` of one network
    (unbatched) and minimise ``problem``'s loss ``1/2 ||X W1 W2 - Y||^2`` with plain SGD; call
    ``scheduler.step()`` after each ``optimizer.step()``, as for any torch scheduler.

    Args:
        optimizer: e.g. ``torch.optim.SGD([W1, W2], lr=0.0)``.
        problem: the least-squares problem (:class:`LeastSquares`).
        c1, c2: ``0 < c1 < 1 < c2``.
        rule: ``"f"`` (eq. 29, the theorem's bound) or ``"rho"`` (eq. 20, measured quantities).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        problem: LeastSquares,
        c1: float = 0.5,
        c2: float = 2.0,
        rule: str = "f",
        last_epoch: int = -1,
    ) -> None:
        if rule not in ("f", "rho"):
            raise ValueError(f"`rule` must be 'f' or 'rho', got {rule!r}")
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if len(params) != 2 or params[0].dim() != 2 or params[0].shape[1] != params[1].shape[0]:
            shapes = [tuple(p.shape) for p in params]
            raise ValueError(f"`optimizer` must hold [W1 (d, h), W2 (h, m)], got shapes {shapes}")
        self.problem, self.c1, self.c2, self.rule = problem, c1, c2, rule
        self.factors = (params[0], params[1])
        q = self._measure()
        self.const = InitConstants.from_init(
            q["lam_min"], q["lam_max"], problem.W_ls, q["loss"], problem.K, problem.mu
        )
        f_coefficients(self.const, q["loss"], c1, c2)  # validates c1, c2
        super().__init__(optimizer, last_epoch)

    def _measure(self) -> dict[str, Tensor]:
        with torch.no_grad():
            return measured_quantities(
                self.problem, self.factors[0].detach(), self.factors[1].detach()
            )

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """The step size for the current factors, for every parameter group."""
        q = self._measure()
        if self.rule == "f":
            eta = adaptive_step(self.const, q["loss"], self.c1, self.c2)
        else:
            eta = adaptive_step_rho(
                q["lam_min"],
                q["lam_max"],
                q["s_max"],
                q["grad_norm"],
                self.problem.K,
                self.problem.mu,
            )
        return [float(eta)] * len(self.optimizer.param_groups)

    def state_dict(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in self.__dict__.items()
            if k not in ("optimizer", "problem", "factors", "const")
        }

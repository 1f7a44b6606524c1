"""scalar-warmup (A7): the exact adaptive-rate-plus-momentum form of GD on w = w1 * omega2."""

import os

import pytest
import torch

from overparam.core import lp_gradient
from overparam.engine import run_experiment
from overparam.experiments.arora_warmup import warmup_decomposition


def _problem(gen):
    X = torch.randn(50, 6, generator=gen, dtype=torch.float64)
    Y = X @ torch.randn(6, 1, generator=gen, dtype=torch.float64)
    return X, Y


@pytest.mark.parametrize("p", [2.0, 4.0])
def test_form_is_exact_and_matches_plain_factor_gd(gen, p):
    X, Y = _problem(gen)
    w1 = 0.1 * torch.randn(6, generator=gen, dtype=torch.float64)
    out = warmup_decomposition(X, Y, w1, 0.2, lr=0.01, steps=200, p=p)
    # float64 identity: the residual is rounding of O(1) sums, far below 1e-10
    assert out["residual"].max() < 1e-10
    # independent replay of GD on (w1, omega2) reproduces the recorded loss at step 199
    a, b = w1.clone(), torch.tensor(0.2, dtype=torch.float64)
    for _ in range(199):
        g = lp_gradient((a * b)[None], X, Y, p)[0]
        a, b = a - 0.01 * b * g, b - 0.01 * (a @ g)
    last = ((X @ (a * b)[:, None] - Y).abs() ** p).mean() / p
    torch.testing.assert_close(out["loss"][-1], last, rtol=1e-12, atol=0)


def test_zero_w1_init_has_no_init_term(gen):
    X, Y = _problem(gen)
    out = warmup_decomposition(X, Y, torch.zeros(6, dtype=torch.float64), 0.3, 0.01, 50, 2.0)
    assert out["init_share"].max() == 0.0 and out["momentum_share"][-1] > 0


def test_bad_input_and_divergence(gen):
    X, Y = _problem(gen)
    with pytest.raises(ValueError, match=r"`w1` must have shape \(6,\), got \(5,\)"):
        warmup_decomposition(X, Y, torch.zeros(5, dtype=torch.float64), 0.1, 0.01, 5, 2.0)
    with pytest.raises(ValueError, match="diverged at step"):
        warmup_decomposition(X, Y, torch.ones(6, dtype=torch.float64), 1.0, 10.0, 50, 4.0)


@pytest.mark.skipif(
    not os.path.isdir(
        os.path.join(os.environ.get("OVERPARAM_DATA", "../shared/data"), "gas-sensor-drift")
    ),
    reason="UCI gas-sensor data not found under $OVERPARAM_DATA",
)
def test_experiment_runs_and_reproduces(tmp_path):
    s = run_experiment("scalar-warmup", "quick", {"steps": 600}, out=tmp_path, quiet=True)
    (claim,) = s["claims"]
    assert claim["id"] == "A7" and claim["reproduced"], claim["note"]
    assert s["figures"]

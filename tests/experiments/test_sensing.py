"""sensing-alpha, sensing-phases, sensing-samples: run + judge + plot on configs smaller than quick."""

import pytest

from overparam.engine import get, run_experiment
from overparam.experiments._sensing_phases import padded_init
from overparam.experiments._sensing_samples import subset_weights

TINY = {
    "sensing-alpha": {
        "d1": 10,
        "d2": 10,
        "r_star": 1,
        "r": 3,
        "ns": [60, 400],
        "alphas": [1e-3, 1e-5, 1e-7],
        "seeds": 1,
        "steps": 400,
        "points": 20,
    },
    "sensing-phases": {
        "d": 16,
        "r_star": 1,
        "ranks": [1, 4, 16],
        "mus": [0.1, 0.2],
        "horizon": 30.0,
        "points": 60,
    },
    "sensing-samples": {
        "d1": 8,
        "d2": 8,
        "r_stars": [1, 2],
        "ratios": [0.5, 2.0, 4.0],
        "seeds": 2,
        "steps": 400,
    },
}


@pytest.mark.parametrize("name", list(TINY))
def test_run_judge_plot_tiny(tmp_path, tiny_run, name):
    tiny_run(name, TINY[name], tmp_path)


def test_balancing_holds_and_gd_follows_power_method(tmp_path):
    s = run_experiment(
        "sensing-alpha", overrides=TINY["sensing-alpha"], out=tmp_path, quiet=True, plots=False
    )
    assert {c["id"]: c for c in s["claims"]}["S5"]["reproduced"]  # a lemma: holds on any run
    p = run_experiment(
        "sensing-phases", overrides=TINY["sensing-phases"], out=tmp_path, quiet=True, plots=False
    )
    s4 = {c["id"]: c for c in p["claims"]}["S4"]["measured"]
    # early GD is the power method up to O(alpha^2) terms: alpha = 1e-6 leaves ~1e-6 relative
    assert s4["max_rel_deviation_gd_vs_power_at_spectral_end"] < 1e-3


def test_padding_and_subset_weights():
    import torch

    U0 = padded_init(torch.Generator().manual_seed(0), [1, 3], 2, 5, 1e-3)
    assert U0.shape == (4, 5, 3)
    assert torch.all(U0[:2, :, 1:] == 0) and torch.all(U0[2:] != 0)
    w = subset_weights([2, 4], 4)
    assert w.tolist() == [[2.0, 2.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]


def test_full_presets_keep_the_operator_dense_and_alpha_small():
    # the full sensing-phases preset must fit its operator in `max_bytes` (else every GD step
    # regenerates the m x d^2 Gaussian entries), at the slide's ratio m = 10 d r*
    full = get("sensing-phases").presets["full"]
    m = full["m_per_dr"] * full["d"] * full["r_star"]
    assert m * full["d"] ** 2 * 8 <= full["max_bytes"]
    assert max(full["ranks"]) <= full["d"]
    # sensing-alpha fits a power law in alpha: at alpha = 1e-2 (d = 50, r = 10) the init is not
    # small (||U_0||_F ~ 0.2) and the full run measured a local slope ~0.1 there
    cfg = get("sensing-alpha").presets["full"]
    assert max(cfg["alphas"]) * (cfg["d1"] * cfg["r"]) ** 0.5 <= 0.05


def test_s6_fits_the_slide_formula_on_overparameterized_ranks():
    import math

    from overparam.experiments._sensing_phases import _judge_s6, _phase_table

    # constructed phase ends: mu t_spectral = 2 + ln(2d/r) exactly for r >= 2 r*, 10x longer at
    # r = r*; saddle and refinement of constant length (x mu), so the fit must give b = 1 (to
    # rounding) on r >= 2 r* and a larger b over all ranks
    d, rs, ranks, mus = 100, 5, [5, 10, 25, 50, 100], [0.05, 0.1, 0.2]
    per_mu = []
    for mu in mus:
        t1 = [(2 + math.log(2 * d / r)) * (10 if r == rs else 1) / mu for r in ranks]
        per_mu.append(
            {
                "mu": mu,
                "t_spectral": [[t] for t in t1],
                "t_saddle": [[t + 5 / mu] for t in t1],
                "t_refine": [[t + 9 / mu] for t in t1],
            }
        )
    m = {"m": 5000, "ranks": ranks, "per_mu": per_mu}
    v = _judge_s6({"d": d, "r_star": rs}, m, _phase_table(m))
    assert v.reproduced
    assert v.measured["fit_ranks"] == [10, 25, 50, 100]
    assert abs(v.measured["coef_mu_t_spectral_on_ln(2d/r)"] - 1.0) < 1e-9  # exact data, lstsq
    assert abs(v.measured["slope_log_t_spectral_vs_log_mu"] + 1.0) < 1e-9  # t ~ 1/mu exactly
    assert v.measured["coef_all_ranks"] > 1.5

"""toy-lp, update-rule, deep-init, not-a-gradient, gd-rate: run + judge (+ plot) on tiny configs."""

import os
from pathlib import Path

import pytest

from overparam.engine import get, run_experiment

HAS_DATA = (
    bool(os.environ.get("OVERPARAM_DATA"))
    and (Path(os.environ.get("OVERPARAM_DATA", ".")) / "gas-sensor-drift" / "batch1.dat").exists()
)

TINY = {
    "toy-lp": {
        "steps": 400,
        "every": 20,
        "etas": 6,
        "stability_points": 11,
        "stability_steps": 200,
    },
    "update-rule": {"steps": 40, "points": 8, "widths": [1, 4]},
    "deep-init": {"steps": 30, "points": 8, "depths": [4], "lrs": [1e-3]},
    "not-a-gradient": {"nodes": 8, "trials": 1, "depths": [1, 2, 3]},
    "gd-rate": {"steps": 100, "points": 10, "eta_times_L": [0.5, 1.5]},
}
NEEDS_DATA = {"update-rule", "deep-init", "not-a-gradient", "gd-rate"}
# identities and theorems: they must hold on any run, however small
MUST_HOLD = {"toy-lp": {"A12"}, "not-a-gradient": {"A3", "A5", "A14"}, "gd-rate": {"A13"}}


@pytest.mark.filterwarnings("ignore:gas_sensor")
@pytest.mark.parametrize("name", list(TINY))
def test_run_judge_plot_tiny(tmp_path, name):
    if name in NEEDS_DATA and not HAS_DATA:
        pytest.skip("needs $OVERPARAM_DATA/gas-sensor-drift")
    experiment = get(name)
    summary = run_experiment(name, overrides=TINY[name], out=tmp_path, quiet=True, plots=True)
    claims = {c["id"]: c for c in summary["claims"]}
    assert set(claims) == {c.id for c in experiment.claims}
    assert all(c["measured"] is not None and c["note"] for c in claims.values())
    if experiment.plot is not None:
        assert (
            summary["figures"]
            and (tmp_path / summary["directory"] / summary["figures"][0]).exists()
        )
    for claim in MUST_HOLD.get(name, ()):
        assert claims[claim]["reproduced"], (claim, claims[claim]["measured"])


@pytest.mark.filterwarnings("ignore:gas_sensor")
@pytest.mark.skipif(not HAS_DATA, reason="needs $OVERPARAM_DATA/gas-sensor-drift")
def test_balanced_update_rule_gap_is_small_and_drift_bounded(tmp_path):
    s = run_experiment(
        "update-rule", overrides=TINY["update-rule"], out=tmp_path, quiet=True, plots=False
    )
    a1 = {c["id"]: c for c in s["claims"]}["A1"]["measured"]
    # Theorem 1 from balanced init: the emulation follows the net up to O(lr) per unit time
    assert a1["worst_by_init"]["balanced"] < 0.05


@pytest.mark.filterwarnings("ignore:gas_sensor")
@pytest.mark.skipif(not HAS_DATA, reason="needs $OVERPARAM_DATA/gas-sensor-drift")
def test_gd_rate_records_divergence_and_runs_outside_the_premise(tmp_path):
    overrides = {"steps": 50, "points": 10, "ps": [2], "eta_times_L": [0.5, 2.5, 100.0]}
    s = run_experiment("gd-rate", overrides=overrides, out=tmp_path, quiet=True, plots=True)
    a13 = {c["id"]: c for c in s["claims"]}["A13"]
    assert a13["reproduced"]  # the one run inside the premise satisfies the bound
    assert "1/1 runs with eta L < 2 satisfy it" in a13["note"]
    note = a13["note"]
    assert "2 runs with eta L >= 2 (outside the premise eta < 2/L) and 0 diverged runs" in note
    assert "diverged: l2 eta*L=2.50, l2 eta*L=100.00." in note


@pytest.mark.filterwarnings("ignore:gas_sensor")
@pytest.mark.skipif(not HAS_DATA, reason="needs $OVERPARAM_DATA/gas-sensor-drift")
def test_gd_rate_refuses_an_overflowing_or_non_smooth_p(tmp_path):
    overrides = {"steps": 5, "points": 3, "eta_times_L": [0.5]}
    with pytest.raises(ValueError, match=r"`ps` entry 1000 overflows float64 on Ethanol"):
        run_experiment("gd-rate", overrides={**overrides, "ps": [1000]}, out=tmp_path, quiet=True)
    with pytest.raises(ValueError, match=r"ps"):
        run_experiment("gd-rate", overrides={**overrides, "ps": [1]}, out=tmp_path, quiet=True)

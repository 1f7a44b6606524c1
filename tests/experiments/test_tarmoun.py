"""The four tarmoun experiments: run + judge + plot end to end on configs smaller than quick."""

import json

import pytest
import torch

from overparam.engine import get

TINY = {
    "tarmoun-conservation": {
        "depths": [2, 3],
        "etas": [0.04, 0.02, 0.01],
        "T": 2.0,
        "n_times": 9,
        "gd_time": 0.5,
    },
    "tarmoun-spectral": {
        "s_values": [1.0, 0.4],
        "deltas": [0.0, 2.0],
        "T": 30.0,
        "n_times": 601,
    },
    "tarmoun-general": {
        "inits": [[0.3, 0.3], [1.0, 0.1]],
        "samples": 50,
        "T": 10.0,
        "n_times": 1001,
        "curve_points": 51,
    },
    "tarmoun-symmetric": {
        "m": 4,
        "widths": [4, 2],
        "lambda_mins": [0.5, 1.0],
        "T": 35.0,
        "n_times": 351,
    },
}


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, tiny_run):
    """Each experiment run once on its tiny config, shared by the tests of this module."""
    out = tmp_path_factory.mktemp("tarmoun")
    cache: dict = {}

    def run(name):
        if name not in cache:
            # the tiny configs keep the claims' regimes: every claim must reproduce
            cache[name] = tiny_run(name, TINY[name], out, all_reproduced=True)
        return cache[name], out

    return run


@pytest.mark.parametrize("name", sorted(TINY))
def test_experiment_runs_and_reproduces(tiny_runs, name):
    summary, _ = tiny_runs(name)
    assert summary["experiment"] == name


def test_tiny_configs_only_override_preset_keys():
    for name in TINY:
        assert set(TINY[name]) <= set(get(name).presets["quick"])


def test_general_records_singular_value_trajectories(tiny_runs):
    """One- vs two-layer singular values per init (imbalance level) and the nonlinear variant."""
    cfg = TINY["tarmoun-general"]
    summary, tmp_path = tiny_runs("tarmoun-general")
    assert {"general.png", "general_singular_values.png"} <= set(summary["figures"])
    metrics = json.loads((tmp_path / "tarmoun-general" / "quick" / "metrics.json").read_text())
    f = metrics["factorization"]
    two = torch.tensor(f["singular_values"], dtype=torch.float64)
    one = torch.tensor(f["singular_values_one_layer"], dtype=torch.float64)
    assert two.shape == one.shape == (len(metrics["times"]), len(cfg["inits"]), 5)
    # both models start from the same product U_0 V_0^T and converge to Y's singular values
    assert torch.allclose(two[0], one[0], rtol=1e-12)
    target = torch.tensor(f["target_singular_values"], dtype=torch.float64)
    assert torch.allclose(two[-1], target.expand_as(two[-1]), rtol=1e-6)
    assert len(set(map(float, f["imbalance_norm"]))) == len(cfg["inits"])  # distinct levels
    assert {"excess", "excess_one_layer"} <= set(metrics["nonlinear"])

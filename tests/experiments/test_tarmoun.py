"""The four tarmoun experiments: run + judge + plot end to end on configs smaller than quick."""

import pytest

from overparam.engine import get, run_experiment

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


@pytest.mark.parametrize("name", sorted(TINY))
def test_experiment_runs_and_reproduces(tmp_path, name):
    summary = run_experiment(name, "quick", TINY[name], out=tmp_path, quiet=True)
    claims = {c["id"]: c for c in summary["claims"]}
    assert set(claims) == {c.id for c in get(name).claims}
    for claim in claims.values():
        # every number is measured by the run; the tiny configs keep the claims' regimes
        assert claim["measured"] is not None, claim
        assert claim["reproduced"] is True, claim["note"]
    assert summary["figures"] and all((tmp_path / name / f).exists() for f in summary["figures"])


def test_presets_declare_quick_and_full():
    for name in TINY:
        exp = get(name)
        assert set(TINY[name]) <= set(exp.presets["quick"])
        assert set(exp.presets["quick"]) == set(exp.presets["full"])

"""overparam-least-squares, lazy-vs-rich, relu-features: run + judge + plot on tiny configs."""

import pytest

from overparam.engine import get, run_experiment

TINY = {
    "overparam-least-squares": {
        "shapes": [[10, 40], [20, 60]],
        "seeds": 2,
        "steps": 800,
        "points": 10,
    },
    "lazy-vs-rich": {
        "d": 6,
        "n": 24,
        "widths": [16, 128],
        "alphas": [0.1, 1.0, 10.0],
        "steps": 400,
        "points": 10,
    },
    "relu-features": {
        "d": 10,
        "n": 500,
        "width": 40,
        "steps": 600,
        "points": 10,
        "n_test": 1000,
        "transfer_sizes": [20, 80, 320],
    },
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_run_judge_plot_tiny(tmp_path, name):
    summary = run_experiment(name, "quick", TINY[name], out=tmp_path, quiet=True)
    claims = {c["id"]: c for c in summary["claims"]}
    assert set(claims) == {c.id for c in get(name).claims}
    for claim in claims.values():
        assert claim["measured"] is not None, claim
        # the tiny configs keep each claim's regime (checked numbers are in the notes)
        assert claim["reproduced"] is True, claim["note"]
    assert summary["figures"] and all((tmp_path / name / f).exists() for f in summary["figures"])


def test_tiny_configs_only_override_preset_keys():
    for name in TINY:
        assert set(TINY[name]) <= set(get(name).presets["quick"])

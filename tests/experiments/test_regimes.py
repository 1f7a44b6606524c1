"""overparam-least-squares, lazy-vs-rich, relu-features: run + judge + plot on tiny configs."""

import pytest

from overparam.engine import get

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
def test_run_judge_plot_tiny(tmp_path, tiny_run, name):
    # the tiny configs keep each claim's regime (checked numbers are in the notes)
    tiny_run(name, TINY[name], tmp_path, all_reproduced=True)


def test_tiny_configs_only_override_preset_keys():
    for name in TINY:
        assert set(TINY[name]) <= set(get(name).presets["quick"])

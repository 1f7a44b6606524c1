"""Every registered experiment honours the contract: presets, claims, a docstring, names."""

import pytest

from overparam.engine import experiments, get

# the package's own experiments (tests register small ones of their own)
NAMES = sorted(
    name
    for name, exp in experiments().items()
    if exp.run.__module__.startswith("overparam.experiments")
)


def test_every_issue_experiment_is_registered():
    wanted = {
        "toy-lp", "update-rule", "lp-depth", "vs-adaptive", "deep-init", "not-a-gradient",
        "gd-rate", "xu-figure1", "xu-init-table", "xu-imbalance", "tarmoun-conservation",
        "tarmoun-spectral", "tarmoun-general", "tarmoun-symmetric", "sensing-alpha",
        "sensing-phases", "sensing-samples", "overparam-least-squares", "lazy-vs-rich",
        "relu-features", "mnist-convnet", "scalar-warmup",
    }  # fmt: skip
    assert wanted <= set(NAMES), sorted(wanted - set(NAMES))


@pytest.mark.parametrize("name", NAMES)
def test_presets_share_keys_and_claims_are_declared(name):
    exp = get(name)
    # full differs from quick only in values, so `--set` works the same on both
    assert set(exp.presets["quick"]) == set(exp.presets["full"])
    ids = [c.id for c in exp.claims]
    assert len(ids) == len(set(ids))
    assert all(c.statement and c.source not in (None, "") for c in exp.claims)
    assert exp.title and exp.run is not None and exp.judge is not None
    assert exp.plot is not None, f"{name} draws no figure"

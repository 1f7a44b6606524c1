"""vs-adaptive (A9): tiny run with TF1 and torch defaults, shared inits; the judge on hand-made
metrics (medians, fragility, a method whose every rate diverged)."""

import os
from pathlib import Path

import pytest

from overparam.experiments.arora_adaptive import judge_vs_adaptive, method_cells
from overparam.training.optimizers import DEFAULTS, TF1_DEFAULTS

HAS_DATA = (
    bool(os.environ.get("OVERPARAM_DATA"))
    and (Path(os.environ.get("OVERPARAM_DATA", ".")) / "gas-sensor-drift" / "batch1.dat").exists()
)
needs_data = pytest.mark.skipif(not HAS_DATA, reason="needs $OVERPARAM_DATA/gas-sensor-drift")


def _m(optimizer, depth, rates, defaults="tf1"):
    return {"optimizer": optimizer, "depth": depth, "rates": rates, "defaults": defaults}


TINY = {
    "steps": 200,
    "points": 10,
    "seeds": [0, 1],
    "methods": {
        "gd3": _m("gd", 3, [1e-3]),
        "adagrad1": _m("adagrad", 1, [1e-2]),
        "adadelta1": _m("adadelta", 1, [1e-2, 100.0]),
        "adam1": _m("adam", 1, [1e-3]),
        "adam2": _m("adam", 2, [1e-3]),
        "adam3": _m("adam", 3, [1e-3]),
        "adagrad1-torch": _m("adagrad", 1, [1e-2], "torch"),
        "adadelta1-torch": _m("adadelta", 1, [1e-2], "torch"),
    },
}


def test_method_cells_use_the_named_defaults():
    cells = {c["name"]: c for c in method_cells(TINY)}
    assert cells["adagrad1"]["hyper"] == TF1_DEFAULTS["adagrad"]
    assert cells["adagrad1"]["hyper"]["initial_accumulator"] == 0.1
    assert cells["adadelta1"]["hyper"] == {"rho": 0.95, "eps": 1e-8}
    assert cells["adam2"]["hyper"]["epsilon_hat"] == 1.0
    assert cells["adadelta1-torch"]["hyper"] == DEFAULTS["adadelta"] == {"rho": 0.9, "eps": 1e-6}


@needs_data
@pytest.mark.filterwarnings("ignore::overparam.datasets.gas_sensor.MissingBatchesWarning")
def test_tiny_run_has_per_seed_spreads_and_shared_inits(tmp_path, tiny_run):
    summary = tiny_run("vs-adaptive", TINY, tmp_path)
    (a9,) = summary["claims"]
    final = a9["measured"]["final"]
    assert all(len(f["per_seed"]) == 2 for f in final.values())
    assert "gd3 < adadelta1-torch" in a9["measured"]["checks_torch_defaults"]
    assert "TensorFlow 1 defaults" in a9["note"] and "reconstructed" in a9["note"]
    import json

    runs = json.loads((tmp_path / summary["directory"] / "metrics.json").read_text())["runs"]
    cells = runs["all"]["cells"]
    # lr 100 is far beyond AdaDelta's stable range: excluded; 1e-2 selected
    assert (
        cells["adadelta1"]["lr"] == 1e-2 and cells["adadelta1"]["median_final_per_rate"][1] is None
    )
    # one init per (depth, seed): the depth-1 methods start from the same point (step-0 gap,
    # equal up to the summation order of the batched loss, a few ulps)
    first = [cells[n]["gap"]["per_seed"] for n in ("adagrad1", "adam1", "adadelta1-torch")]
    for s in range(2):
        assert all(c[s][0] == pytest.approx(first[0][s][0], rel=1e-14, abs=0) for c in first)
    assert abs(first[0][0][0] - first[0][1][0]) > 1e-3  # seeds differ


def _metrics(finals: dict) -> dict:
    """Hand-made stored metrics: ``finals[name] = (median, min, max)`` or None (every rate
    diverged)."""
    cells = {}
    for name, f in finals.items():
        spread = None if f is None else {"median": f[0], "min": f[1], "max": f[2], "per_seed": []}
        cells[name] = {"final": spread, "lr": None if f is None else 0.1, "gap": None,
                       "rates": [0.1], "median_final_per_rate": [None if f is None else f[0]]}  # fmt: skip
    return {"runs": {"all": {"cells": cells, "steps": [0, 10], "samples": 5}}}


CONFIG = {"steps": 10, "seeds": [0, 1, 2], "data": ["all"]}
GOOD = {"gd3": (0.1, 0.09, 0.11), "adagrad1": (0.2, 0.19, 0.21), "adadelta1": (0.3, 0.2, 0.4),
        "adam1": (0.05, 0.04, 0.06), "adam2": (0.035, 0.03, 0.039), "adam3": (0.03, 0.02, 0.039),
        "adagrad1-torch": (0.2, 0.2, 0.2), "adadelta1-torch": (0.09, 0.08, 0.095)}  # fmt: skip


def test_judge_on_medians_with_fragility_and_torch_beside():
    (ok,) = judge_vs_adaptive(CONFIG, _metrics(GOOD))
    assert ok.reproduced
    checks = ok.measured["checks"]
    assert checks["adam3 < adam1"] == {"holds": True, "fragile": False, "median": [0.03, 0.05]}
    assert checks["adam2 < adam1"]["fragile"] is False
    assert ok.measured["checks_torch_defaults"]["gd3 < adadelta1-torch"]["holds"] is False
    assert "fragile (seed ranges overlap): none" in ok.note
    close = {**GOOD, "adam2": (0.045, 0.03, 0.07)}  # median below adam1, ranges overlap
    (frag,) = judge_vs_adaptive(CONFIG, _metrics(close))
    assert frag.reproduced and "adam2 < adam1" in frag.note.split("fragile")[1]


def test_judge_fails_a_method_whose_every_rate_diverged():
    (bad,) = judge_vs_adaptive(CONFIG, _metrics({**GOOD, "adadelta1": None}))
    assert not bad.reproduced and not bad.measured["checks"]["gd3 < adadelta1"]["holds"]
    assert bad.measured["final"]["adadelta1"] is None and "gd3 < adadelta1" in bad.note

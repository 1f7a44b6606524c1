"""mnist-convnet: run + judge + plot on a tiny config; judge logic on hand-made metrics."""

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from overparam.engine import get, run_experiment
from overparam.experiments import mnist_convnet as exp

DATA = Path(os.environ.get("OVERPARAM_DATA", "../shared/data")) / "mnist"
TINY = {
    "channels": [4, 8],
    "hidden": 32,
    "train_size": 640,
    "test_size": 300,
    "epochs": 1,
    "points": 5,
}


def dense_params(channels: list[int], hidden: int, extra: bool) -> int:
    """Closed-form parameter count: conv 5x5 kernels + biases, two dense layers (+ m x m each)."""
    c1, c2 = channels
    count = 25 * c1 + c1 + 25 * c1 * c2 + c2 + 49 * c2 * hidden + hidden + hidden * 10 + 10
    return count + (hidden * hidden + 100 if extra else 0)


def test_full_network_adds_about_15_percent():
    gen = torch.Generator().manual_seed(0)
    net = exp.convnet([32, 64], 512, 0.5, gen)
    assert sum(p.numel() for p in net.parameters()) == dense_params([32, 64], 512, False) == 1663370
    over, _ = exp.make_variant(net, "overparameterized", dict(exp.FULL))
    assert sum(p.numel() for p in over.parameters()) == dense_params([32, 64], 512, True)
    x = torch.randn(3, 1, 28, 28, generator=gen)
    assert torch.allclose(over.eval()(x), net.eval()(x), atol=1e-5)  # identity init: same function


def test_steps_to_reach_and_speedups():
    assert exp.steps_to_reach([10, 20, 30], [3.0, 1.0, 0.5], 1.0) == 20
    assert exp.steps_to_reach([10, 20], [3.0, None], 1.0) is None
    runs = {v: {"steps": [10, 20, 30, 40]} for v in exp.VARIANTS}
    runs["original"]["curve"] = [4.0, 3.0, 2.0, 1.0]
    runs["overparameterized"]["curve"] = [1.0, 0.5, 0.1, 0.1]
    runs["end_to_end"]["curve"] = [4.0, 4.0, 4.0, 4.0]
    out = exp._speedups({"variants": runs})
    assert out["speedup"] == {"overparameterized": 4.0, "end_to_end": None}
    assert out["window"] == 10 and out["target_loss"] == 1.0


def test_scale_note_names_the_measured_scale():
    device = {"device": "cpu"}
    full = exp._scale_note(dict(exp.FULL), device)
    assert full.startswith("; measured at the source's scale") and "9370 steps" in full
    one = exp._scale_note({**exp.FULL, "epochs": 1}, device)
    assert (
        "the source's architecture, all 60000 training images, 1 of the source's 10 epochs" in one
    )
    assert "937 steps of batch 64" in one and "source's scale (" not in one
    quick = exp._scale_note(dict(exp.QUICK), device)
    assert "a reduced network" in quick and "a subset of the training images" in quick
    assert "3 of the source's 10 epochs" in quick


@pytest.mark.skipif(not DATA.is_dir(), reason=f"MNIST data directory {DATA} is absent")
def test_tiny_run_judge_plot(tmp_path, monkeypatch):
    monkeypatch.setenv("OVERPARAM_DATA", str(DATA.parent))
    summary = run_experiment("mnist-convnet", "quick", overrides=TINY, out=tmp_path, quiet=True)
    claims = {c["id"]: c for c in summary["claims"]}
    assert set(claims) == {c.id for c in get("mnist-convnet").claims}
    assert all(c["measured"] is not None and c["note"] for c in claims.values())
    collapse = claims["A11-collapse"]["measured"]
    assert collapse["params"] == dense_params([4, 8], 32, False) and collapse["disagreements"] == 0
    assert claims["A11-params"]["measured"]["overparameterized"] == dense_params([4, 8], 32, True)
    assert (tmp_path / "mnist-convnet" / "training_loss.png").is_file()
    with pytest.raises(ValueError, match=r"`train_size` must be >= batch_size 64, got 10"):
        exp.run({**exp.QUICK, **TINY, "train_size": 10}, None)  # type: ignore[arg-type]
    assert isinstance(exp.convnet([4, 8], 32, 0.5, torch.Generator())[-1], nn.Linear)


class _Resumed:
    """A run context whose store already holds the ``original`` variant."""

    def __init__(self, stored: dict) -> None:
        self.stored, self.keys = stored, []

    def cached(self, key, config, compute):
        self.keys.append(key)
        return self.stored if key == "original" else compute()

    def progress(self, items, total=None, desc=""):
        return items

    def log(self, message):
        pass


@pytest.mark.skipif(not DATA.is_dir(), reason=f"MNIST data directory {DATA} is absent")
def test_variants_are_resumable_sub_results(monkeypatch):
    monkeypatch.setenv("OVERPARAM_DATA", str(DATA.parent))
    stored = {"params": -1, "marker": "from the store"}
    ctx = _Resumed(stored)
    out = exp.run({**exp.QUICK, **TINY, "train_size": 128, "test_size": 64}, ctx)
    assert ctx.keys == list(exp.VARIANTS)
    assert out["variants"]["original"] == stored  # reused, not retrained
    assert out["variants"]["end_to_end"]["params"] == dense_params([4, 8], 32, False)
    assert "collapse" not in out["variants"]["overparameterized"] and out["collapse"]["params"] > 0

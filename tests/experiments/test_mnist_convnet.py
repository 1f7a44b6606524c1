"""mnist-convnet: the tutorial's network, schedule and regularizers against closed forms and naive
formulas; run + judge + plot on a tiny config; the judge on hand-made metrics."""

import os
from pathlib import Path

import pytest
import torch

from overparam.engine import get, run_experiment
from overparam.experiments import _mnist_tutorial as tut
from overparam.experiments import mnist_convnet as exp

DATA = Path(os.environ.get("OVERPARAM_DATA", "../shared/data")) / "mnist"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"MNIST data directory {DATA} is absent")
TINY = {
    "channels": [4, 8],
    "hidden": 32,
    "validation_size": 100,
    "train_size": 640,
    "test_size": 300,
    "epochs": 1,
    "eval_every": 2,
}


def dense_params(channels: list[int], hidden: int, extra: bool) -> int:
    """Closed-form parameter count: conv 5x5 kernels + biases, two dense layers (+ m x m each)."""
    c1, c2 = channels
    count = 25 * c1 + c1 + 25 * c1 * c2 + c2 + 49 * c2 * hidden + hidden + hidden * 10 + 10
    return count + (hidden * hidden + 100 if extra else 0)


def test_full_network_adds_about_15_percent_and_identity_keeps_the_function():
    config = dict(exp.FULL)
    net, _ = exp.make_variant(config, "original", torch.device("cpu"))
    assert tut.count(net) == dense_params([32, 64], 512, False) == 1663370
    over, _ = exp.make_variant(config, "over_identity_l2factor", torch.device("cpu"))
    normal, _ = exp.make_variant(config, "over_normal_l2factor", torch.device("cpu"))
    assert tut.count(over) == tut.count(normal) == dense_params([32, 64], 512, True)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(over.eval()(x), net.eval()(x), atol=1e-5)  # identity: same function
    # every variant starts from the same draw of the original weights
    assert torch.equal(normal.fc1[0], net.fc1[0]) and torch.equal(
        normal.conv2.weight, net.conv2.weight
    )
    # the collapsed overparameterized net is the original shape and the same function
    flat = tut.collapsed(normal.eval())
    assert tut.count(flat) == tut.count(net)
    torch.testing.assert_close(flat.eval()(x), normal(x), rtol=1e-4, atol=1e-4)


def test_truncated_normal_and_biases_follow_the_tutorial():
    w = tut.truncated_normal((200, 300), torch.Generator().manual_seed(1))
    assert float(w.abs().max()) <= 0.2  # re-drawn beyond 2 std
    # std of N(0, 0.1^2) truncated at +-2 std: 0.1 * 0.8796 (closed form), 60000 draws
    assert abs(float(w.std()) - 0.08796) < 0.002
    net = tut.TutorialNet([4, 8], 16, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(net.conv1.bias.detach(), torch.zeros(4))
    for b in (net.conv2.bias, net.b1, net.b2):
        assert torch.equal(b.detach(), torch.full_like(b, 0.1))
    with pytest.raises(ValueError, match="`init` must be 'identity' or 'normal', got 'zeros'"):
        tut.added_matrix(3, "zeros", torch.Generator())


def test_schedule_is_in_order_without_shuffling():
    # tutorial: offset = (step * 64) % (55000 - 64); lr = 0.01 * 0.95 ** floor(step * 64 / 55000)
    assert tut.schedule(0, 64, 55000) == (0, 0)
    assert tut.schedule(858, 64, 55000) == (54912, 0)
    assert tut.schedule(859, 64, 55000) == (40, 0)  # wraps modulo 54936, same epoch
    assert tut.schedule(860, 64, 55000) == (104, 1)  # 860 * 64 = 55040 >= 55000: decay
    assert int(10 * 55000) // 64 == 8593  # the tutorial's number of steps


def test_regularizer_on_factors_and_on_products():
    net = tut.TutorialNet([2, 3], 4, 0.0, torch.Generator().manual_seed(0))
    net.overparameterize(2, "normal", torch.Generator().manual_seed(1))
    w1, w1b = (f.detach().double() for f in net.fc1)
    w2, w2b = (f.detach().double() for f in net.fc2)
    b = float(net.b1.detach().double().square().sum() + net.b2.detach().double().square().sum())
    factor = (sum(float(t.square().sum()) for t in (w1, w1b, w2, w2b)) + b) / 2
    product = (float((w1 @ w1b).square().sum()) + float((w2 @ w2b).square().sum()) + b) / 2
    with torch.no_grad():  # float32 against float64: relative 1e-5
        assert abs(float(tut.regularizer(net, "factor")) - factor) < 1e-5 * factor
        assert abs(float(tut.regularizer(net, "product")) - product) < 1e-5 * product
    with pytest.raises(ValueError, match="`l2_on` must be 'factor' or 'product', got 'sum'"):
        tut.regularizer(net, "sum")


def test_steps_to_reach_and_compare():
    assert exp.steps_to_reach([10, 20, 30], [3.0, 1.0, 0.5], 1.0) == 20
    assert exp.steps_to_reach([10, 20], [3.0, None], 1.0) is None
    run = {"window_steps": [10, 20, 30, 40], "train_loss": 1.0, "train_cross_entropy": 0.5,
           "window_cross_entropy": [2.0, 1.0, 0.5, 0.4]}  # fmt: skip
    metrics = {"variants": {
        "original": {**run, "window_loss": [4.0, 3.0, 2.0, 1.0]},
        "over_normal_l2factor": {**run, "window_loss": [1.0, 0.5, 0.1, 0.1], "train_loss": 0.1,
                                 "train_cross_entropy": 0.01},
    }}  # fmt: skip
    out = exp.compare(metrics, "over_normal_l2factor")
    assert out["speedup"] == 4.0 and out["steps"] == 10 and out["steps_original"] == 40
    assert out["train_loss_ratio"] == pytest.approx(10.0) and out["orders"] == pytest.approx(1.0)
    assert out["cross_entropy_ratio"] == pytest.approx(50.0)
    assert out["target_cross_entropy"] == 0.4 and out["cross_entropy_speedup"] == 1.0


def test_scale_note_names_the_measured_scale():
    device = {"device": "cpu"}
    full = exp._scale_note(dict(exp.FULL), device)
    assert full.startswith("; measured at the source's scale") and "8593 steps" in full
    one = exp._scale_note({**exp.FULL, "epochs": 1}, device)
    assert "the source's architecture, the source's 55000 training images, 1 of the" in one
    assert "859 steps of batch 64" in one
    quick = exp._scale_note(dict(exp.QUICK), device)
    assert "a reduced network" in quick and "a subset" in quick


@needs_data
def test_tiny_run_judge_plot(tmp_path, monkeypatch):
    monkeypatch.setenv("OVERPARAM_DATA", str(DATA.parent))
    summary = run_experiment("mnist-convnet", "quick", overrides=TINY, out=tmp_path, quiet=True)
    claims = {c["id"]: c for c in summary["claims"]}
    assert set(claims) == {c.id for c in get("mnist-convnet").claims}
    assert all(c["measured"] is not None and c["note"] for c in claims.values())
    collapse = claims["A11-collapse"]["measured"]
    assert collapse["params"] == dense_params([4, 8], 32, False) and collapse["disagreements"] == 0
    assert claims["A11-params"]["measured"]["overparameterized"] == dense_params([4, 8], 32, True)
    assert set(claims["A11"]["measured"]) == {v for v in exp.VARIANTS if exp.SPECS[v][0]}
    assert (tmp_path / summary["directory"] / "training_loss.png").is_file()
    with pytest.raises(ValueError, match=r"`train_size` must be > batch_size 64, got 10"):
        exp.run({**exp.QUICK, **TINY, "train_size": 10}, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`variants` must include 'original'"):
        exp.run({**exp.QUICK, **TINY, "variants": ["end_to_end"]}, None)  # type: ignore[arg-type]


class _Resumed:
    """A run context whose store already holds the ``original`` variant."""

    def __init__(self, stored: dict) -> None:
        self.stored, self.keys, self.configs = stored, [], []

    def cached(self, key, config, compute):
        self.keys.append(key)
        self.configs.append(config)
        return self.stored if key == "original" else compute()

    def cached_all(self, pieces, desc=""):
        return [self.cached(p.key, p.config, lambda p=p: p.compute(self)) for p in pieces]

    def progress(self, items, total=None, desc=""):
        return items

    def log(self, message):
        pass


@needs_data
def test_variants_are_resumable_sub_results(monkeypatch):
    monkeypatch.setenv("OVERPARAM_DATA", str(DATA.parent))
    stored = {"params": -1, "marker": "from the store"}
    ctx = _Resumed(stored)
    config = {**exp.QUICK, **TINY, "train_size": 128, "test_size": 64,
              "variants": ["original", "over_identity_l2product", "end_to_end"]}  # fmt: skip
    out = exp.run(config, ctx)
    assert ctx.keys == config["variants"]
    assert out["variants"]["original"] == stored  # reused, not retrained
    assert out["variants"]["end_to_end"]["params"] == dense_params([4, 8], 32, False)
    assert out["variants"]["over_identity_l2product"]["collapse"]["params"] > 0
    # the list of variants and the judge's thresholds are not part of a variant's cache key
    assert all("variants" not in c and "min_speedup" not in c for c in ctx.configs)
    # one minibatch loss per eval_every steps, from step 0, as the tutorial prints it
    run = out["variants"]["end_to_end"]
    assert run["printed_steps"] == list(range(0, 2, 2)) and len(run["window_loss"]) == 1

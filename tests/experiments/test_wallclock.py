"""time-to-target: crossing times on constructed curves, tables, verdicts, models, a tiny run."""

import json
import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from overparam.experiments import _mnist_tutorial as tutorial
from overparam.experiments import _wallclock_optim as optim
from overparam.experiments import _wallclock_target as target
from overparam.experiments import _wallclock_tasks as tasks
from overparam.experiments import wallclock as exp
from overparam.experiments._wallclock_train import checkpoints
from overparam.experiments._wallclock_verdicts import judge

DATA = Path(os.environ.get("OVERPARAM_DATA", "../shared/data")) / "mnist"
TINY = {
    "seeds": 2,
    "points": 4,
    "probe_size": 64,
    "test_size": 100,
    "convnet_channels": [2, 2],
    "convnet_hidden": 16,
    "convnet_train_size": 200,
    "convnet_batch": 16,
    "convnet_steps": 6,
    "mlp_hidden": [8],
    "mlp_train_size": 200,
    "mlp_batch": 16,
    "mlp_steps": 6,
    "charlm_bytes": 4000,
    "charlm_context": 8,
    "charlm_width": 8,
    "charlm_heads": 2,
    "charlm_layers": 1,
    "charlm_batch": 4,
    "charlm_steps": 6,
    "charlm_probe": 4,
    "convnet_lrs_sgd": [0.01],
    "convnet_lrs_adaptive": [1e-3],
    "mlp_lrs_sgd": [0.01, 0.03],
    "mlp_lrs_adaptive": [1e-3],
    "charlm_lrs_sgd": [0.1],
    "charlm_lrs_adaptive": [3e-3],
    "lr_extend": 1,
}


def test_first_crossing_interpolates_between_checkpoints():
    assert target.first_crossing([0, 10, 20], [4.0, 2.0, 1.0], 1.5) == pytest.approx(15.0)
    assert target.first_crossing([0, 10, 20], [4.0, 2.0, 1.0], 2.0) == pytest.approx(10.0)
    assert target.first_crossing([0.0, 2.0], [3.0, 1.0], 2.5) == pytest.approx(0.5)
    assert target.first_crossing([5, 10], [1.0, 0.5], 2.0) == 5.0  # starts below the target
    assert target.first_crossing([0, 1, 2], [4.0, 3.0, 2.5], 1.0) is None  # never reached
    # a missing point breaks the curve: no interpolation across it
    assert target.first_crossing([0, 1, 2], [4.0, None, 1.0], 2.0) == 2.0
    assert target.first_crossing([0, 1], [4.0, math.nan], 1.0) is None
    with pytest.raises(ValueError, match=r"`losses` must have one entry per x \(2\), got 1"):
        target.first_crossing([0, 1], [1.0], 0.5)


def test_median_choice_and_comparisons():
    assert target.median_or_none([1.0, None, 3.0]) == 3.0  # None counts as "never" (+inf)
    assert target.median_or_none([1.0, None, None]) is None
    assert target.median_or_none([2.0]) == 2.0 and target.median_or_none([]) is None
    grid = {"0.01": {"final_loss": 0.5}, "0.1": {"final_loss": None}, "0.03": {"final_loss": 0.2}}
    assert target.choose_lr(grid) == "0.03"
    assert target.choose_lr({"0.1": {"final_loss": None}}) is None
    assert target.sooner(1.0, 2.0) and not target.sooner(2.0, 1.0)
    assert (
        target.sooner(5.0, None) and not target.sooner(None, None) and not target.sooner(None, 1.0)
    )
    rows = {
        "a": {"seconds_to_target": None, "final_loss": 0.1},
        "b": {"seconds_to_target": 3.0, "final_loss": 0.9},
        "c": {"seconds_to_target": 3.0, "final_loss": 0.5},
    }
    assert target.best(rows, ["a", "b", "c", "missing"]) == "c"  # tie broken by the final loss
    assert target.best(rows, ["a"]) == "a" and target.best(rows, ["missing"]) is None


def _run(seconds, losses, final=None, step_ms=1.0):
    steps = list(range(0, 10 * len(losses), 10))
    return {
        "steps": steps, "seconds": seconds, "cpu_seconds": seconds, "loss": losses,
        "final_loss": losses[-1] if final is None else final, "diverged": False,
        "step_ms": step_ms, "cpu_step_ms": step_ms, "train_seconds": seconds[-1], "load": [0.5, 0.5], "test_accuracy": 0.9,
    }  # fmt: skip


def _entry(*runs, lr=0.01):
    return {"available": True, "lr": lr, "lr_at_grid_edge": False, "runs": list(runs)}


def _task_metrics():
    """SGD reaches its final losses 1.0 / 2.0 at 4 s; 'over' at 1 s but 2x dearer steps; AdamW at
    2 s; Muon never."""
    optimizers = {
        "sgd": _entry(_run([0, 2, 4], [3.0, 2.0, 1.0]), _run([0, 2, 4], [4.0, 3.0, 2.0])),
        "over-sgd-2": _entry(_run([0, 1, 2], [3.0, 1.0, 0.5], step_ms=2.0),
                             _run([0, 1, 2], [4.0, 2.0, 1.0], step_ms=2.0)),
        "adamw": _entry(_run([0, 2, 4], [3.0, 1.0, 0.9]), _run([0, 2, 4], [4.0, 2.0, 1.9])),
        "muon": _entry(_run([0, 2, 4], [3.0, 2.5, 2.0]), _run([0, 2, 4], [4.0, 3.5, 3.0])),
        "e2e-2-amortized": {"available": False, "reason": "not available: test"},
    }  # fmt: skip
    result = {"info": {}, "optimizers": optimizers}
    result.update(target.table(result))
    return result


def test_table_pairs_each_seed_with_the_sgd_baseline():
    result = _task_metrics()
    assert result["targets"] == [1.0, 2.0]
    rows = result["rows"]
    assert set(rows) == {"sgd", "over-sgd-2", "adamw", "muon"}  # unavailable ones have no row
    assert rows["sgd"]["seconds_to_target"] == 4.0 and rows["sgd"]["steps_to_target"] == 20.0
    assert rows["over-sgd-2"]["per_seed_seconds"] == [1.0, 1.0]
    assert rows["over-sgd-2"]["step_ratio"] == 2.0 and rows["over-sgd-2"]["reached"] == 2
    assert rows["adamw"]["seconds_to_target"] == 2.0 and rows["adamw"]["steps_to_target"] == 10.0
    assert rows["muon"]["seconds_to_target"] is None and rows["muon"]["reached"] == 0
    assert (
        rows["adamw"]["final_loss"] == pytest.approx(1.4) and rows["adamw"]["test_accuracy"] == 0.9
    )


def test_markdown_table_has_a_row_per_optimizer():
    text = target.markdown({"tasks": {"mlp": _task_metrics()}})
    lines = text.splitlines()
    assert len(lines) == 2 + 5 and lines[0].startswith("| task | optimizer | lr |")
    assert "| mlp | over-sgd-2 | 0.01 | 2/2 | 1 | 1 | 10 | 0.75 | 0.9 | 2 | 2 | 2.00 |" in lines
    assert "| mlp | muon | 0.01 | 0/2 | never | never | never |" in text
    assert "| mlp | e2e-2-amortized | | not available: test |" in text
    task = _task_metrics()
    for run, fit in zip(task["optimizers"]["sgd"]["runs"], [0.25, 0.35], strict=True):
        run["train_cross_entropy"] = fit  # an objective with an L2 term reports its CE part
    task.update(target.table(task))
    assert "| 1.5 (CE 0.3) |" in target.markdown({"tasks": {"convnet": task}})


def test_verdicts_say_who_wins_and_who_loses():
    task = _task_metrics()
    slow = _task_metrics()  # the same, with 'over' slower than AdamW in time
    for run in slow["optimizers"]["over-sgd-2"]["runs"]:
        run["seconds"] = [0, 3, 6]
        run["cpu_seconds"] = [0, 3, 6]
    slow.update(target.table(slow))
    config = {**exp.QUICK, "seeds": 2}
    verdicts = {v.id: v for v in judge(config, {"tasks": {"mlp": task, "charlm": slow}})}
    assert verdicts["P2-mlp"].reproduced and verdicts["P3-mlp"].reproduced
    assert verdicts["P4-mlp"].reproduced  # Muon never reaches the target
    assert verdicts["P3-mlp"].measured["speedup"] == pytest.approx(2.0)
    assert "wins (2x sooner)" in verdicts["P3-mlp"].note
    assert not verdicts["P3-charlm"].reproduced and "loses" in verdicts["P3-charlm"].note
    assert verdicts["P2-charlm"].reproduced  # 3 s still beats SGD's 4 s
    assert not verdicts["P5-mlp"].reproduced and verdicts["P5-mlp"].measured == "not run"
    assert verdicts["P1"].measured == "not run" and verdicts["P2-convnet"].measured == "not run"
    cpu = {v.id: v for v in judge({**config, "clock": "cpu"}, {"tasks": {"mlp": task}})}
    assert cpu["P3-mlp"].measured["clock"] == "cpu" and cpu["P3-mlp"].note.startswith("thread CPU")


def test_p1_is_the_step_speedup_on_the_convnet():
    task = _task_metrics()
    verdict = judge({**exp.QUICK, "seeds": 2}, {"tasks": {"convnet": task}})[0]
    assert verdict.id == "P1" and verdict.measured["speedup"] == pytest.approx(2.0)
    assert not verdict.reproduced  # 2x < the 10x threshold


def test_checkpoints_mix_log_and_even_steps():
    marks = checkpoints(100, 8)
    assert marks[0] == 0 and marks[-1] == 100 and marks == sorted(set(marks))
    assert {25, 50, 75} <= set(marks) and 1 in marks
    with pytest.raises(ValueError, match=r"`points` must be an integer >= 4, got 2"):
        checkpoints(10, 2)


def test_optimizer_names_and_routing():
    assert optim.parse("e2e-3-amortized") == optim.Spec("e2e-3-amortized", "e2e", 3, True)
    assert optim.parse("over-sgd-2").family == "sgd" and optim.parse("muon").family == "adaptive"
    for bad in ("adam", "e2e-1", "over-sgd-2-amortized"):
        with pytest.raises(ValueError, match="`optimizers`"):
            optim.parse(bad)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    _, combined = optim.build(optim.parse("muon"), model, 1e-3, 0.9, "preserve", 10)
    muon, adamw = combined.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    hidden = {id(p) for g in muon.param_groups for p in g["params"]}
    assert hidden == {id(model[0].weight), id(model[2].weight)}  # the head goes to AdamW
    assert sum(len(g["params"]) for g in adamw.param_groups) == 4  # head weight + 3 biases


def test_end_to_end_exact_and_amortized_settings():
    model = nn.Sequential(nn.Linear(4, 3))
    _, exact = optim.build(optim.parse("e2e-2"), model, 0.1, 0.9, "preserve", 7)
    assert exact.param_groups[0]["depth"] == 2 and exact.param_groups[1]["depth"] == 1
    if optim.amortization_available():
        assert exact.param_groups[0]["precondition_every"] == 1
        _, amortized = optim.build(optim.parse("e2e-2-amortized"), model, 0.1, 0.9, "preserve", 7)
        assert amortized.param_groups[0]["precondition_every"] == 7
    else:
        assert optim.unavailable(optim.parse("e2e-2-amortized")).startswith("not available")


def test_source_convnet_is_the_tutorial_network():
    generator = torch.Generator().manual_seed(0)
    net = tutorial.TutorialNet([2, 3], 8, 0.5, generator).eval()
    ours = tasks.SourceConvNet(net).eval()
    x = torch.randn(5, 1, 28, 28, generator=generator)
    assert torch.allclose(ours(x), net(x), atol=1e-5)  # float32: same products, other order
    flat = [t for m in (ours.fc1, ours.fc2) for t in (m.weight, m.bias)]
    assert torch.allclose(tutorial.l2_loss(flat), tutorial.regularizer(net, "product"))


def test_piece_configs_depend_only_on_their_task():
    config = dict(exp.QUICK)
    base = exp.piece_config(config, "convnet", "sgd", 0.01, 0)
    changed = {**config, "charlm_width": 64, "convnet_lrs_sgd": [0.5], "clock": "cpu"}
    assert exp.piece_config(changed, "convnet", "sgd", 0.01, 0) == base
    assert "precondition_every" not in base
    assert "precondition_every" in exp.piece_config(config, "mlp", "e2e-2-amortized", 0.01, 0)
    assert exp.piece_config({**config, "convnet_steps": 7}, "convnet", "sgd", 0.01, 0) != base


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match=r"`optimizers` must include the 'sgd' baseline"):
        exp.run({**exp.QUICK, "optimizers": ["adamw"]}, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`tasks` must be a non-empty list"):
        exp.run({**exp.QUICK, "tasks": ["imagenet"]}, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`clock` must be 'wall' or 'cpu', got 'gpu'"):
        exp.run({**exp.QUICK, "clock": "gpu"}, None)  # type: ignore[arg-type]


@pytest.mark.skipif(not DATA.is_dir(), reason=f"MNIST data directory {DATA} is absent")
def test_tiny_run(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("OVERPARAM_DATA", str(DATA.parent))
    summary = tiny_run("time-to-target", TINY, tmp_path)
    claims = {c["id"]: c for c in summary["claims"]}
    assert isinstance(claims["P1"]["measured"], dict)
    assert "training_loss.png" in {Path(f).name for f in summary["figures"]}
    assert claims["P2-mlp"]["note"].startswith("wall clock: ")
    metrics = json.loads((tmp_path / summary["directory"] / "metrics.json").read_text())
    sgd = metrics["tasks"]["mlp"]["optimizers"]["sgd"]  # a 2-rate grid extends once
    assert len(sgd["lrs"]) == 3 and sum(sgd["lr_extended"].values()) == 1


def test_an_overflowed_gradient_stops_the_run_as_diverged():
    """A finite loss with an infinite gradient (sqrt at 0) is a divergence, never an update."""
    import types

    from torch import nn

    from overparam.experiments._wallclock_train import _timed_steps

    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    task = types.SimpleNamespace(loss=lambda m, x, y: torch.sqrt(m.weight).sum())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    wall, cpu, each, diverged = _timed_steps(task, model, opt, lambda: (None, None), 3)
    assert diverged and each == [] and float(model.weight) == 0.0

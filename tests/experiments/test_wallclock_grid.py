"""time-to-target: the self-extending learning-rate grid, EndToEndSGD's captured gradients, the
experiment's version."""

import math
import types

import pytest
import torch
from torch import nn

from overparam.engine.runner import prepare_run
from overparam.experiments import _wallclock_optim as optim
from overparam.experiments import _wallclock_target as target
from overparam.experiments import wallclock as exp
from overparam.experiments._wallclock_verdicts import judge
from overparam.optim import EndToEndSGD


def _recorder(loss):
    """A fake piece function: ``final_loss = loss(lr)`` (None: diverged), and the rates asked."""
    asked = []

    def run(lr):
        asked.append(lr)
        return {"final_loss": loss(lr)}

    return run, asked


def test_a_loss_falling_in_lr_extends_up_to_the_limit_and_stops():
    run, asked = _recorder(lambda lr: 1.0 / lr)
    pieces, lrs, added = target.search_lr([0.1, 0.01, 1.0], run, 2)
    assert asked == [0.01, 0.1, 1.0, 10.0, 100.0]  # each rate trained once, the grid first
    assert lrs == [0.01, 0.1, 1.0, 10.0, 100.0] and added == {"down": 0, "up": 2}
    assert list(pieces) == ["0.01", "0.1", "1", "10", "100"]
    assert target.choose_lr(pieces) == "100" and target.at_edge(100.0, lrs)  # still at the edge


def test_a_loss_rising_in_lr_extends_down_with_the_edge_spacing():
    run, asked = _recorder(lambda lr: lr)
    _, lrs, added = target.search_lr([0.003, 0.01, 0.03], run, 2)
    # spacing at the lower edge 0.003 / 0.01; new rates to 3 significant digits
    assert lrs == [0.00027, 0.0009, 0.003, 0.01, 0.03] and added == {"down": 2, "up": 0}
    _, up, _ = target.search_lr([0.003, 0.01, 0.03], _recorder(lambda lr: -lr)[0], 1)
    assert up == [0.003, 0.01, 0.03, 0.09]  # spacing at the upper edge 0.03 / 0.01


def test_an_interior_minimum_does_not_extend():
    run, asked = _recorder(lambda lr: math.log10(lr / 0.1) ** 2)
    pieces, lrs, added = target.search_lr([0.01, 0.1, 1.0], run, 2)
    assert asked == [0.01, 0.1, 1.0] and added == {"down": 0, "up": 0}
    assert target.choose_lr(pieces) == "0.1" and not target.at_edge(0.1, lrs)


def test_a_minimum_just_outside_the_grid_is_found_and_the_search_stops_there():
    run, asked = _recorder(lambda lr: math.log10(lr / 10.0) ** 2)
    pieces, lrs, added = target.search_lr([0.01, 0.1, 1.0], run, 5)
    assert asked == [0.01, 0.1, 1.0, 10.0, 100.0] and added == {"down": 0, "up": 2}
    assert target.choose_lr(pieces) == "10" and not target.at_edge(10.0, lrs)


def test_divergence_at_every_rate_extends_down_and_one_rate_has_no_spacing():
    run, asked = _recorder(lambda lr: None if lr > 0.02 else (lr - 0.01) ** 2)
    _, lrs, added = target.search_lr([0.1, 1.0], run, 3)
    assert lrs == [0.001, 0.01, 0.1, 1.0] and added == {"down": 2, "up": 0}  # 0.01 is the best
    run, asked = _recorder(lambda lr: 1.0 / lr)
    _, lrs, added = target.search_lr([0.1], run, 3)
    assert lrs == [0.1] and asked == [0.1] and added == {"down": 0, "up": 0}
    assert not target.at_edge(0.1, lrs) and not target.at_edge(None, [0.1, 1.0, 10.0])
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match=r"`lr_extend` must be an integer >= 0, got "):
            target.search_lr([0.1, 1.0], run, bad)


def _fake_piece(calls):
    """``_piece`` of the experiment replaced by a run whose final loss falls with lr."""

    def piece(task, optimizer, lr, seed, config, ctx):
        calls.append((optimizer, lr, seed))
        return {"final_loss": 1.0 / lr + seed, "seed": seed}

    return piece


def test_the_entry_reports_its_final_grid_and_reruns_the_chosen_rate(monkeypatch):
    calls = []
    monkeypatch.setattr(exp, "_piece", _fake_piece(calls))
    config = {**exp.FULL, "mlp_lrs_sgd": [0.01, 0.1, 1.0], "lr_extend": 1, "seeds": 3}
    entry = exp._entry(types.SimpleNamespace(name="mlp"), "sgd", config, None)
    assert entry["lrs"] == [0.01, 0.1, 1.0, 10.0] and entry["lr_extended"] == {"down": 0, "up": 1}
    assert entry["lr"] == 10.0 and entry["lr_at_grid_edge"] is True
    assert list(entry["grid"]) == ["0.01", "0.1", "1", "10"]
    assert calls[-2:] == [("sgd", 10.0, 1), ("sgd", 10.0, 2)]  # other seeds at the chosen rate
    assert [r["seed"] for r in entry["runs"]] == [0, 1, 2]
    calls.clear()
    entry = exp._entry(types.SimpleNamespace(name="mlp"), "sgd", {**config, "lr_extend": 0}, None)
    assert entry["lrs"] == [0.01, 0.1, 1.0] and entry["lr_at_grid_edge"] is True
    assert len(calls) == 3 + 2


def test_the_edge_flag_reaches_the_table_and_the_notes():
    run = {
        "steps": [0, 10], "seconds": [0.0, 1.0], "cpu_seconds": [0.0, 1.0], "loss": [2.0, 1.0],
        "final_loss": 1.0, "diverged": False, "step_ms": 1.0, "cpu_step_ms": 1.0,
        "train_seconds": 1.0, "load": [0.5, 0.5],
    }  # fmt: skip
    entry = {"available": True, "lr": 0.3, "lr_at_grid_edge": True, "lrs": [0.03, 0.1, 0.3]}
    interior = {**entry, "lr_at_grid_edge": False, "runs": [run]}
    task = {"info": {}, "optimizers": {"sgd": {**entry, "runs": [run]}, "over-sgd-2": interior}}
    task.update(target.table(task))
    assert task["rows"]["sgd"]["lr_grid"] == [0.03, 0.1, 0.3]
    assert "| mlp | sgd | 0.3 (grid edge) | 1/1 |" in target.markdown({"tasks": {"mlp": task}})
    config = {**exp.FULL, "seeds": 1}
    notes = {v.id: v.note for v in judge(config, {"tasks": {"mlp": task}})}
    assert (
        "still at the edge of its grid (extended up to 2 time(s) each way) for sgd"
        in (notes["P2-mlp"])
    )


def test_bad_lr_extend_is_named():
    with pytest.raises(ValueError, match=r"`lr_extend` must be an integer >= 0, got -1"):
        exp.run({**exp.QUICK, "lr_extend": -1}, None)  # type: ignore[arg-type]


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 4)).double()


@pytest.mark.parametrize("name", ["e2e-2", "e2e-3-amortized"])
def test_end_to_end_optimizers_capture_the_model_they_train(name):
    model, opt = optim.build(optim.parse(name), _mlp(0), 0.05, 0.9, "preserve", 3)
    assert isinstance(opt, EndToEndSGD) and opt._low_rank is not None
    assert all(len(m._forward_hooks) == 1 for m in model if isinstance(m, nn.Linear))
    # the same update as the optimizer without captured gradients (float64: to rounding)
    reference = _mlp(0)
    spec = optim.parse(name)
    weights, rest = optim._split(reference, optim.linear_weights(reference))
    plain = EndToEndSGD(
        [{"params": weights, "depth": spec.depth}, {"params": rest, "depth": 1}],
        lr=0.05, depth=spec.depth, momentum=0.9, precondition_every=3 if spec.amortized else 1,
    )  # fmt: skip
    # 3 rows: few enough for the low-rank route of the 16 x 12 layer at depth 2 and 3
    x = torch.randn(3, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for net, o in ((model, opt), (reference, plain)):
        for _ in range(4):
            o.zero_grad()
            net(x).square().mean().backward()
            if o is opt:  # this backward pass's pairs, recorded on the trained model, are used
                assert opt._low_rank.take(model[0].weight, model[0].weight.grad) is not None
            o.step()
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_other_optimizers_have_no_hooks():
    model, _ = optim.build(optim.parse("sgd"), _mlp(0), 0.05, 0.9, "preserve", 3)
    assert all(not m._forward_hooks for m in model.modules())


def test_the_version_is_bumped_past_the_first_stored_results(tmp_path):
    assert prepare_run("time-to-target", "quick", out=tmp_path).kind == "time-to-target@v3"
    piece = exp.piece_config(dict(exp.QUICK), "mlp", "e2e-2", 0.01, 0)
    assert piece["version"] == 4 and "lr_extend" not in piece  # the grid rule is no piece's key

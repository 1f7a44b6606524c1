"""Sweeps: grid parsing, the Cartesian product, the table and figure, serial and on a cluster."""

from __future__ import annotations

import csv
import json
import sys

import cloudpickle
import pytest

from overparam.engine import Claim, Experiment, Verdict, register
from overparam.engine.sweep import grid_points, numeric_leaves, parse_grid, point_label, run_sweep

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests


def _run(cfg: dict, ctx) -> dict:
    return {"product": cfg["a"] * cfg["b"], "tag": cfg["tag"]}


def _judge(cfg: dict, m: dict) -> list[Verdict]:
    return [Verdict("Z2", {"product": m["product"]}, m["product"] > 2)]


register(
    Experiment(
        name="test-sweep",
        title="test: a product of two config values",
        claims=(Claim("Z2", "a * b > 2", "> 2"),),
        presets={"quick": {"a": 1, "b": 1.0, "tag": "x"}, "full": {"a": 2, "b": 2.0, "tag": "x"}},
        run=_run,
        judge=_judge,
    )
)


def test_parse_grid_keeps_brackets_and_types():
    grid = parse_grid(["lr=0.1,1e-3", "ps=[2, 4],[4]", "name=a,b", "flag=true,false"])
    assert grid == {
        "lr": [0.1, 1e-3],
        "ps": [[2, 4], [4]],
        "name": ["a", "b"],
        "flag": [True, False],
    }


@pytest.mark.parametrize(
    "pairs, message",
    [
        (["lr"], "`--grid` expects KEY=V1,V2,..., got 'lr'"),
        (["lr="], "`--grid` expects KEY=V1,V2,..., got 'lr='"),
        (["lr=1,2", "lr=3"], "`--grid` names 'lr' twice"),
        (["lr=1,,2"], "`--grid` lr: empty value in '1,,2'"),
        ([], "`--grid` must be given at least once"),
    ],
)
def test_parse_grid_errors(pairs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("*", r"\*")):
        parse_grid(pairs)


def test_grid_points_is_the_cartesian_product_in_order():
    points = grid_points({"a": [1, 2], "b": [0.5, 1.5, 2.5]})
    assert len(points) == 6
    assert points[0] == {"a": 1, "b": 0.5} and points[1] == {"a": 1, "b": 1.5}
    assert points[-1] == {"a": 2, "b": 2.5}
    assert point_label({"ps": [2, 4], "lr": 0.001}) == "ps=2-4_lr=0.001"


def test_numeric_leaves_names_claim_and_path():
    summary = {"claims": [{"id": "A", "measured": {"x": 1.5, "y": {"z": 2}, "s": "no"}}]}
    assert numeric_leaves(summary) == {"A:x": 1.5, "A:y.z": 2.0}
    assert numeric_leaves({"claims": [{"id": "B", "measured": 3.0}]}) == {"B": 3.0}


def _sweep(tmp_path, client=None):
    grid = parse_grid(["a=1,2,3", "b=0.5,2.0"])
    return run_sweep("test-sweep", grid, "quick", tmp_path, client=client)


def test_sweep_writes_table_and_figure_and_caches(tmp_path):
    result = _sweep(tmp_path)
    assert not result["failures"]
    with open(tmp_path / "sweeps" / "test-sweep" / "sweep.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["a"], r["b"], r["Z2 reproduced"]) for r in rows] == [
        ("1", "0.5", "no"),
        ("1", "2", "no"),
        ("2", "0.5", "no"),
        ("2", "2", "yes"),
        ("3", "0.5", "no"),
        ("3", "2", "yes"),
    ]
    assert (tmp_path / "sweeps" / "test-sweep" / "sweep.png").stat().st_size > 0
    point = tmp_path / "sweeps" / "test-sweep" / "a=3_b=2"
    assert json.loads((point / "metrics.json").read_text())["product"] == 6.0
    assert all(r["status"] == "stored" for r in _sweep(tmp_path)["rows"])


def test_sweep_on_a_cluster_matches_serial(tmp_path, client):
    serial = _sweep(tmp_path / "serial")["rows"]
    remote = _sweep(tmp_path / "dask", client)["rows"]
    strip = [{k: v for k, v in r.items() if k != "status"} for r in serial]
    assert strip == [{k: v for k, v in r.items() if k != "status"} for r in remote]
    assert all(r["status"] == "computed" for r in remote)


def test_sweep_rejects_unknown_key(tmp_path):
    with pytest.raises(ValueError, match="unknown config key 'c'"):
        run_sweep("test-sweep", {"c": [1]}, "quick", tmp_path)


def test_cli_sweep_prints_the_table_and_writes_files(tmp_path, capsys):
    from overparam.cli import main

    code = main(
        ["sweep", "test-sweep", "--grid", "a=1,3", "--grid", "b=2.0", "--out", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "a  b  status    Z2 reproduced" in out and "3  2  computed  yes" in out
    assert (tmp_path / "sweeps" / "test-sweep" / "sweep.csv").exists()


def test_cli_sweep_bad_grid_is_one_line_exit_2(tmp_path, capsys):
    from overparam.cli import main

    code = main(["sweep", "test-sweep", "--grid", "a", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["overparam: error: `--grid` expects KEY=V1,V2,..., got 'a'"]

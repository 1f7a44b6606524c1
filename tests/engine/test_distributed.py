"""Runs on a Dask ``LocalCluster`` of 2 processes against the same runs done serially.

The serial path itself is reproducible only to the last bits between two processes (MKL's
reduction order: ``gd-rate``'s L* differs by ~1e-15 relative from one process to the next), so
floats are compared to a relative 1e-12 and everything else exactly.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import cloudpickle
import pytest

from overparam.engine import Claim, Experiment, Verdict, get, register
from overparam.engine.batch import Request, run_requests
from overparam.engine.store import Store

pytest.importorskip("distributed")

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests


def _close(a, b, path="") -> None:
    if isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300), (path, a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for key in a:
            _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def _piece(cfg: dict, item: int) -> dict:
    """A piece that logs each computation and fails while the marker file exists."""
    with open(cfg["log"], "a") as handle:
        handle.write(f"{item}\n")
    if item == cfg["fail_item"] and Path(cfg["marker"]).exists():
        raise RuntimeError(f"piece {item} failed on purpose")
    return {"item": item, "square": item * item}


def _run(cfg: dict, ctx) -> dict:
    import functools

    pieces = ctx.map("item", functools.partial(_piece, cfg), list(range(cfg["n"])), cfg)
    return {"total": sum(p["square"] for p in pieces), "pieces": pieces}


def _judge(cfg: dict, m: dict) -> list[Verdict]:
    expected = sum(i * i for i in range(cfg["n"]))
    return [Verdict("Z1", m["total"], m["total"] == expected)]


PIECES = register(
    Experiment(
        name="test-pieces",
        title="test: independent pieces through ctx.map",
        claims=(Claim("Z1", "sum of squares", "n(n-1)(2n-1)/6"),),
        presets={
            "quick": {"n": 4, "fail_item": 2, "log": "", "marker": ""},
            "full": {"n": 6, "fail_item": 2, "log": "", "marker": ""},
        },
        run=_run,
        judge=_judge,
    )
)


def _metrics(out: Path, name: str) -> dict:
    return json.loads((out / name / "quick" / "metrics.json").read_text())


def test_quick_experiments_match_serial(tmp_path, client):
    names = ["toy-lp", "sensing-samples"]
    requests = [Request(name, "quick", {}) for name in names]
    serial = run_requests(requests, tmp_path / "serial", plots=False)
    remote = run_requests(requests, tmp_path / "dask", client=client, plots=False)
    for s, r in zip(serial, remote, strict=True):
        assert s.error is None and r.error is None, (s.error, r.error)
        assert [c["reproduced"] for c in s.summary["claims"]] == [
            c["reproduced"] for c in r.summary["claims"]
        ]
        assert not r.summary["cached"]
    for name in names:
        _close(_metrics(tmp_path / "serial", name), _metrics(tmp_path / "dask", name))
    # every sensing-samples piece was stored by the client, one row per r*
    rows = Store(tmp_path / "dask" / "store.sqlite").prefixed("sensing-samples/")
    assert len(rows) == 3


def test_failed_piece_is_reported_and_the_rest_resumes(tmp_path, client):
    log, marker = tmp_path / "log.txt", tmp_path / "fail"
    marker.touch()
    overrides = {"log": str(log), "marker": str(marker)}
    first = run_requests([Request("test-pieces", "quick", overrides)], tmp_path, client=client)
    assert first[0].summary is None and "piece 2 failed on purpose" in first[0].error
    stored = Store(tmp_path / "store.sqlite").prefixed("test-pieces/")
    assert sorted(m["item"] for m in stored.values()) == [0, 1, 3]
    marker.unlink()
    log.write_text("")
    second = run_requests([Request("test-pieces", "quick", overrides)], tmp_path, client=client)
    assert second[0].error is None and second[0].summary["claims"][0]["reproduced"] is True
    assert log.read_text().split() == ["2"]  # only the failed piece was computed again


def _part(cfg: dict, tag: str, ctx) -> dict:
    """A ``cached_all`` piece: a nested cached result, a log line, a failure while marked."""

    def inner() -> dict:
        with open(cfg["log"], "a") as handle:
            handle.write(f"inner-{tag}\n")
        return {"length": len(tag)}

    found = ctx.cached("inner", {"tag": tag}, inner)
    ctx.log(f"part {tag} computed")
    with open(cfg["log"], "a") as handle:
        handle.write(f"part-{tag}\n")
    if tag == cfg["fail"] and Path(cfg["marker"]).exists():
        raise RuntimeError(f"part {tag} failed on purpose")
    return {"tag": tag, "inner": found}


def _run_parts(cfg: dict, ctx) -> dict:
    import functools

    from overparam.engine import Piece

    tags = ["a", "bb", "ccc"]
    pieces = [
        Piece("part", {"tag": t}, functools.partial(_part, cfg, t), f"part {t}") for t in tags
    ]
    return {"parts": ctx.cached_all(pieces)}


PARTS = register(
    Experiment(
        name="test-parts",
        title="test: independent pieces through ctx.cached_all",
        claims=(Claim("Z2", "every part", "three parts"),),
        presets={
            "quick": {"fail": "bb", "log": "", "marker": ""},
            "full": {"fail": "bb", "log": "", "marker": ""},
        },
        run=_run_parts,
        judge=lambda cfg, m: [Verdict("Z2", len(m["parts"]), len(m["parts"]) == 3)],
    )
)


def test_cached_all_failure_is_reported_and_nested_pieces_resume(tmp_path, client, capsys):
    log, marker = tmp_path / "log.txt", tmp_path / "fail"
    marker.touch()
    overrides = {"log": str(log), "marker": str(marker)}
    first = run_requests([Request("test-parts", "quick", overrides)], tmp_path, client=client)
    assert first[0].summary is None
    assert "part bb: RuntimeError: part bb failed on purpose" in first[0].error
    assert "[test-parts] part ccc computed" in capsys.readouterr().err  # a piece's log line
    store = Store(tmp_path / "store.sqlite")
    assert store.get("test-parts/part", {"tag": "ccc"}) == {"tag": "ccc", "inner": {"length": 3}}
    assert store.get("test-parts/part", {"tag": "bb"}) is None
    assert store.get("test-parts/inner", {"tag": "bb"}) == {"length": 2}  # nested, kept
    marker.unlink()
    log.write_text("")
    second = run_requests([Request("test-parts", "quick", overrides)], tmp_path, client=client)
    assert second[0].error is None and second[0].summary["claims"][0]["reproduced"] is True
    assert log.read_text().split() == ["part-bb"]  # its nested piece came from the store
    serial = run_requests([Request("test-parts", "quick", overrides)], tmp_path / "serial")
    assert serial[0].summary is not None
    assert _metrics(tmp_path / "serial", "test-parts") == _metrics(tmp_path, "test-parts")
    assert Store(tmp_path / "serial" / "store.sqlite").prefixed("test-parts/").keys() == (
        store.prefixed("test-parts/").keys()
    )


def test_serial_and_cluster_share_the_piece_cache(tmp_path, client):
    log, marker = tmp_path / "log.txt", tmp_path / "absent"
    overrides = {"log": str(log), "marker": str(marker)}
    run_requests([Request("test-pieces", "quick", overrides)], tmp_path, client=client)
    assert sorted(log.read_text().split()) == ["0", "1", "2", "3"]
    log.write_text("")
    again = run_requests([Request("test-pieces", "quick", overrides)], tmp_path, force=False)
    assert again[0].summary["cached"] is True and log.read_text() == ""


DATA = Path(os.environ.get("OVERPARAM_DATA", "/nonexistent"))
needs_data = pytest.mark.skipif(
    not ((DATA / "mnist").is_dir() and (DATA / "gas-sensor-drift" / "batch1.dat").is_file()),
    reason="needs $OVERPARAM_DATA/mnist and $OVERPARAM_DATA/gas-sensor-drift",
)
MNIST_TINY = {"channels": [4, 8], "hidden": 32, "validation_size": 100, "train_size": 320,
              "test_size": 100, "epochs": 1, "eval_every": 2}  # fmt: skip
ADAPTIVE_TINY = {"steps": 100, "points": 5, "seeds": [0, 1],
                 "methods": {name: {"optimizer": opt, "depth": depth, "rates": [1e-3],
                                    "defaults": "torch" if name.endswith("torch") else "tf1"}
                             for name, opt, depth in [
                                 ("gd3", "gd", 3), ("adagrad1", "adagrad", 1),
                                 ("adadelta1", "adadelta", 1), ("adam1", "adam", 1),
                                 ("adam2", "adam", 2), ("adam3", "adam", 3),
                                 ("adagrad1-torch", "adagrad", 1),
                                 ("adadelta1-torch", "adadelta", 1)]}}  # fmt: skip


def _timeless(value):
    """``value`` without its ``seconds`` entries (wall times differ from run to run)."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


@needs_data
@pytest.mark.filterwarnings("ignore::overparam.datasets.gas_sensor.MissingBatchesWarning")
@pytest.mark.filterwarnings("ignore::overparam.engine.distributed.RemoteWarning")
def test_variants_and_seeds_are_tasks_of_their_own_and_match_serial(tmp_path, client, capsys):
    from distributed import get_task_stream

    requests = [Request("mnist-convnet", "quick", MNIST_TINY),
                Request("vs-adaptive", "quick", ADAPTIVE_TINY)]  # fmt: skip
    serial = run_requests(requests, tmp_path / "serial", plots=False)
    capsys.readouterr()
    with get_task_stream(client=client) as stream:
        remote = run_requests(requests, tmp_path / "dask", client=client, plots=False)
    assert all(o.error is None for o in serial + remote), [o.error for o in serial + remote]
    keys = [task["key"] for task in stream.data]
    variants = {k.rsplit("-", 1)[0] for k in keys if k.startswith("piece-mnist-convnet-")}
    names = get("mnist-convnet").presets["quick"]["variants"]
    assert variants == {f"piece-mnist-convnet-{v}" for v in names} and len(names) == 6
    assert len({k for k in keys if k.startswith("piece-vs-adaptive-seed-")}) == 2
    printed = capsys.readouterr().err
    assert "[mnist-convnet] end_to_end: train loss" in printed  # a piece's log line, on the client
    assert "[vs-adaptive] all p=4.0 seed 1:" in printed
    for name in ("mnist-convnet", "vs-adaptive"):
        one, other = (_timeless(_metrics(tmp_path / d, name)) for d in ("serial", "dask"))
        _close(one, other)
        # the same pieces (kinds and configs), each stored by the client
        stored = [
            Store(tmp_path / d / "store.sqlite").prefixed(f"{name}/") for d in ("serial", "dask")
        ]
        assert stored[0].keys() == stored[1].keys()
    assert len(Store(tmp_path / "dask" / "store.sqlite").prefixed("vs-adaptive/seed")) == 2


def test_cli_reproduce_with_workers_matches_serial(tmp_path, capsys):
    from overparam.cli import main

    for out, extra in (("serial", []), ("dask", ["--workers", "2"])):
        assert (
            main(
                ["reproduce", "--only", "toy-lp", "--no-plots", "--out", str(tmp_path / out)]
                + extra
            )
            == 0
        )
    printed = capsys.readouterr().out
    assert printed.count("report: ") == 2
    _close(_metrics(tmp_path / "serial", "toy-lp"), _metrics(tmp_path / "dask", "toy-lp"))


def test_unparsable_scheduler_address_names_the_argument():
    pytest.importorskip("distributed")
    from overparam.engine.distributed import open_client

    with pytest.raises(
        ValueError,
        match=r"`scheduler` must be an address such as tcp://host:8786, got 'notanaddress'",
    ):
        open_client(scheduler="notanaddress")

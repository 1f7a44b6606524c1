"""Runs on a Dask ``LocalCluster`` of 2 processes against the same runs done serially.

The serial path itself is reproducible only to the last bits between two processes (MKL's
reduction order: ``gd-rate``'s L* differs by ~1e-15 relative from one process to the next), so
floats are compared to a relative 1e-12 and everything else exactly.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import cloudpickle
import pytest

from overparam.engine import Claim, Experiment, Verdict, register
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


def test_serial_and_cluster_share_the_piece_cache(tmp_path, client):
    log, marker = tmp_path / "log.txt", tmp_path / "absent"
    overrides = {"log": str(log), "marker": str(marker)}
    run_requests([Request("test-pieces", "quick", overrides)], tmp_path, client=client)
    assert sorted(log.read_text().split()) == ["0", "1", "2", "3"]
    log.write_text("")
    again = run_requests([Request("test-pieces", "quick", overrides)], tmp_path, force=False)
    assert again[0].summary["cached"] is True and log.read_text() == ""


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

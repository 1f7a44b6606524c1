"""The results store survives a corrupt file, corrupt rows and concurrent writers."""

import json
import multiprocessing
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

from overparam.engine import Claim, Experiment, Verdict, register, run_experiment
from overparam.engine.store import Store, config_hash

COUNT = {"run": 0}


def _run(config, ctx):
    COUNT["run"] += 1
    return {"value": config["n"] * 2}


register(
    Experiment(
        name="engine-store-toy",
        title="doubles n",
        claims=(Claim("S1", "2n", "2n"),),
        presets={"quick": {"n": 3}, "full": {"n": 4}},
        run=_run,
        judge=lambda config, metrics: [Verdict("S1", metrics["value"], True)],
    )
)


def _filled(path):
    store = Store(path)
    for i in range(8):
        store.put("k", {"i": i}, {"v": list(range(400))}, 0.0)
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_file_is_moved_aside_and_rebuilt(tmp_path, damage):
    path = tmp_path / "store.sqlite"
    data = _filled(path)
    bad = b"not a database, " * 64 if damage == "garbage" else data[: len(data) // 2]
    path.write_bytes(bad)
    with pytest.warns(UserWarning, match=r"results store .*store\.sqlite is not a readable SQLite"):
        store = Store(path)
    backups = list(tmp_path.glob("store.sqlite.corrupt-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == bad
    assert store.count() == 0
    store.put("k", {"i": 1}, {"v": 1}, 0.0)
    assert Store(path).get("k", {"i": 1}) == {"v": 1}


def test_run_over_a_corrupt_store_recomputes(tmp_path):
    (tmp_path / "store.sqlite").write_bytes(b"\x00garbage" * 100)
    COUNT["run"] = 0
    with pytest.warns(UserWarning, match=r"moved it to .*store\.sqlite\.corrupt-\d{8}T\d{6}"):
        summary = run_experiment("engine-store-toy", out=tmp_path, quiet=True, plots=False)
    assert summary["claims"][0]["measured"] == 6 and COUNT["run"] == 1


def test_corrupt_row_is_a_cache_miss_recomputed_and_replaced(tmp_path):
    COUNT["run"] = 0
    run_experiment("engine-store-toy", out=tmp_path, quiet=True, plots=False)
    path = tmp_path / "store.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("UPDATE results SET metrics = '{\"value\": 6' ")
    with pytest.warns(UserWarning, match=r"stored result engine-store-toy@v1 .* is not valid JSON"):
        assert Store(path).get("engine-store-toy@v1", {"n": 3}) is None
    with pytest.warns(UserWarning, match="recomputing"):
        summary = run_experiment("engine-store-toy", out=tmp_path, quiet=True, plots=False)
    assert not summary["cached"] and COUNT["run"] == 2
    again = run_experiment("engine-store-toy", out=tmp_path, quiet=True, plots=False)
    assert again["cached"] and COUNT["run"] == 2  # the row was replaced


def test_get_or_compute_waits_for_the_lock_with_a_timeout(tmp_path):
    store = Store(tmp_path / "store.sqlite")
    with store.lock("k", {"a": 1}):
        with pytest.raises(TimeoutError, match=r"waited 0.2 s for another process computing k"):
            store.get_or_compute("k", {"a": 1}, lambda: {"x": 1}, timeout=0.2)
    value, cached = store.get_or_compute("k", {"a": 1}, lambda: {"x": 1})
    assert value == {"x": 1} and not cached
    value, cached = store.get_or_compute("k", {"a": 1}, lambda: {"x": 2})
    assert value == {"x": 1} and cached
    assert store.get_or_compute("k", {"a": 1}, lambda: {"x": 3}, force=True) == ({"x": 3}, False)
    assert list(store.locks.iterdir()) == []  # a released lock leaves no file behind


def test_lock_holders_exclude_each_other_and_leave_no_files(tmp_path):
    from overparam.engine.locking import key_lock

    inside, overlaps = [0], []

    def hold(k):
        for _ in range(20):
            with key_lock(tmp_path / "locks" / "one.lock"):
                inside[0] += 1
                overlaps.append(inside[0])
                time.sleep(0.001)
                inside[0] -= 1

    threads = [threading.Thread(target=hold, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(overlaps) == 80 and max(overlaps) == 1
    assert list((tmp_path / "locks").iterdir()) == []


def _slow_run(config, ctx):
    with open(Path(config["out"]) / "computed.txt", "a") as f:
        f.write("x")
    time.sleep(0.5)
    return {"value": 1}


register(
    Experiment(
        name="engine-slow",
        title="sleeps half a second",
        claims=(Claim("S2", "runs", 1),),
        presets={"quick": {"out": ""}, "full": {"out": ""}},
        run=_slow_run,
        judge=lambda config, metrics: [Verdict("S2", metrics["value"], True)],
    )
)


def _cli_in_child(out, k):
    """One ``overparam run`` in a forked process (the registry and imports are inherited)."""
    from overparam.cli import main

    with open(out / f"stdout.{k}", "w") as stdout, open(out / f"stderr.{k}", "w") as stderr:
        sys.stdout, sys.stderr = stdout, stderr
        code = main(["run", "engine-slow", "--no-plots", "--out", str(out), "--set", f"out={out}"])
    sys.exit(code)


def test_concurrent_runs_of_one_config_compute_once(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=_cli_in_child, args=(out, k)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    errors = [(out / f"stderr.{k}").read_text() for k in range(3)]
    assert [p.exitcode for p in procs] == [0, 0, 0], errors
    assert (out / "computed.txt").read_text() == "x"  # one computed, two waited for its row
    stdouts = [(out / f"stdout.{k}").read_text() for k in range(3)]
    assert sum("from the store" in text for text in stdouts) == 2
    summaries = list(out.rglob("summary.json"))
    assert summaries and all(
        json.loads(p.read_text())["experiment"] == "engine-slow" for p in summaries
    )
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_concurrent_writes_of_one_file_use_unique_temporary_names(tmp_path):
    from overparam.engine.runner import _write_json

    target = tmp_path / "summary.json"
    errors = []

    def write(k):
        try:
            for i in range(40):
                _write_json(target, {"writer": k, "i": i, "pad": "x" * 2000})
        except Exception as error:  # noqa: BLE001  (collected for the assertion)
            errors.append(repr(error))

    threads = [threading.Thread(target=write, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads(target.read_text())["i"] == 39
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_config_hash_is_stable():
    assert config_hash("k", {"a": 1.0, "b": [1, 2]}) == config_hash("k", {"b": [1, 2], "a": 1.0})

"""The order runs start in on a cluster: longest first, by each run directory's last ``run.json``."""

from __future__ import annotations

import json

from overparam.engine.batch import Request, longest_first, recorded_seconds, run_requests


def _record(directory, computed) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "run.json").write_text(json.dumps({"key": "k", "computed": computed}))


def test_recorded_seconds_reads_the_computing_runs_time(tmp_path):
    assert recorded_seconds(tmp_path / "absent") is None
    _record(tmp_path / "a", {"seconds": 12.5})
    assert recorded_seconds(tmp_path / "a") == 12.5
    for bad in (None, {}, {"seconds": True}, {"seconds": -1.0}, {"seconds": "7"}):
        _record(tmp_path / "b", bad)
        assert recorded_seconds(tmp_path / "b") is None, bad
    (tmp_path / "b" / "run.json").write_text("{not json")
    assert recorded_seconds(tmp_path / "b") is None


def test_longest_first_puts_untimed_runs_first_then_decreasing_times():
    assert longest_first([]) == []
    assert longest_first([None, None]) == [0, 1]  # no record: the given (registry) order
    assert longest_first([5.0, None, 60.0, 5.0, 0.0, None]) == [1, 5, 2, 0, 3, 4]


def test_cluster_jobs_are_submitted_longest_first(tmp_path, monkeypatch):
    from overparam.engine import distributed

    _record(tmp_path / "toy-lp" / "quick", {"seconds": 1.0})
    _record(tmp_path / "sensing-samples" / "quick", {"seconds": 30.0})
    submitted: list[str] = []

    def fake_run_jobs(client, store, jobs, force, bar=None):
        submitted.extend(job.experiment.name for job in jobs)

    monkeypatch.setattr(distributed, "run_jobs", fake_run_jobs)
    names = ["toy-lp", "sensing-samples", "gd-rate"]
    outcomes = run_requests([Request(n) for n in names], tmp_path, client=object(), plots=False)
    assert submitted == ["gd-rate", "sensing-samples", "toy-lp"]
    assert [o.request.name for o in outcomes] == names  # outcomes keep the requests' order

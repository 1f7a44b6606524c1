"""The engine: registry, config resolution, the store's cache, files written, the CLI."""

import json

import pytest
import torch

from overparam.cli import main
from overparam.engine import Claim, Experiment, Verdict, log_steps, register, run_experiment
from overparam.engine.runner import parse_overrides
from overparam.engine.store import Store, config_hash, to_jsonable

CALLS = {"run": 0, "sub": 0}


def _run(config, ctx):
    CALLS["run"] += 1
    total = 0.0
    for k in ctx.progress(range(config["n"]), total=config["n"], desc="sum"):
        total += k

    def sub():
        CALLS["sub"] += 1
        return {"square": torch.tensor(config["n"] ** 2.0)}

    part = ctx.cached("square", {"n": config["n"]}, sub)
    return {
        "total": total,
        "square": part["square"],
        "curve": torch.arange(3.0),
        "bad": float("nan"),
    }


def _judge(config, metrics):
    expected = config["n"] * (config["n"] - 1) / 2
    return [Verdict("T1", metrics["total"], metrics["total"] == expected, "sum of range")]


def _plot(config, metrics):
    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot().plot(metrics["curve"])
    return {"curve": fig}


TOY = register(
    Experiment(
        name="engine-toy",
        title="sum of a range",
        claims=(
            Claim("T1", "the sum of 0..n-1 is n(n-1)/2", "n(n-1)/2"),
            Claim("T2", "unjudged", 0),
        ),
        presets={"quick": {"n": 10}, "full": {"n": 100}},
        run=_run,
        judge=_judge,
        plot=_plot,
    )
)


def test_run_writes_files_and_caches(tmp_path):
    CALLS.update(run=0, sub=0)
    summary = run_experiment("engine-toy", "quick", out=tmp_path, quiet=True)
    assert summary["claims"][0] == {
        "id": "T1",
        "statement": "the sum of 0..n-1 is n(n-1)/2",
        "source": "n(n-1)/2",
        "measured": 45.0,
        "reproduced": True,
        "note": "sum of range",
    }
    assert summary["claims"][1]["reproduced"] is False  # a claim without verdict is not reproduced
    assert not summary["cached"] and CALLS == {"run": 1, "sub": 1}
    directory = tmp_path / "engine-toy" / "quick"
    for name in (
        "config.json",
        "metrics.json",
        "summary.json",
        "run.json",
        "curve.png",
        "curve.pdf",
    ):
        assert (directory / name).is_file()
    stored = json.loads((directory / "summary.json").read_text())
    assert stored["experiment"] == "engine-toy" and stored["preset"] == "quick"
    assert json.loads((directory / "metrics.json").read_text())["bad"] is None

    again = run_experiment("engine-toy", "quick", out=tmp_path, quiet=True)
    assert again["cached"] and CALLS == {"run": 1, "sub": 1}
    run_experiment("engine-toy", "quick", out=tmp_path, quiet=True, force=True)
    assert CALLS == {"run": 2, "sub": 2}
    run_experiment("engine-toy", "quick", {"n": 11}, out=tmp_path, quiet=True)
    assert CALLS == {"run": 3, "sub": 3}


def test_interrupted_run_keeps_finished_sub_results(tmp_path):
    CALLS.update(run=0, sub=0)
    store = Store(tmp_path / "store.sqlite")
    store.put("engine-toy/square", {"n": 12}, {"square": 144.0}, 0.0)
    run_experiment("engine-toy", "quick", {"n": 12}, out=tmp_path, quiet=True)
    assert CALLS == {"run": 1, "sub": 0}


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown config key 'm' for engine-toy; known: n"):
        run_experiment("engine-toy", "quick", {"m": 1}, out=tmp_path)
    with pytest.raises(ValueError, match="`preset` must be one of"):
        run_experiment("engine-toy", "medium", out=tmp_path)
    with pytest.raises(ValueError, match="unknown experiment 'nope'"):
        run_experiment("nope", out=tmp_path)
    with pytest.raises(ValueError, match="must declare a 'full' preset"):
        Experiment("x", "t", (Claim("a", "b", 1),), {"quick": {}}, _run, _judge)


def test_parse_overrides_and_json():
    assert parse_overrides(["a=1", "b=[1, 2]", "c=hello", "d=true", "e=1e-3"]) == {
        "a": 1,
        "b": [1, 2],
        "c": "hello",
        "d": True,
        "e": 1e-3,
    }
    with pytest.raises(ValueError, match="`--set` expects key=value"):
        parse_overrides(["novalue"])
    assert to_jsonable({"t": torch.tensor([1.0, float("inf")]), 2: (1, "x")}) == {
        "t": [1.0, None],
        "2": [1, "x"],
    }
    assert config_hash("k", {"a": 1, "b": 2}) == config_hash("k", {"b": 2, "a": 1})
    assert config_hash("k", {"a": 1}) != config_hash("k", {"a": 2})


def test_log_steps():
    steps = log_steps(10**6, 100)
    assert steps[0] == 0 and steps[-1] == 10**6 and steps == sorted(set(steps))
    assert 60 < len(steps) <= 102
    assert log_steps(0) == [0]
    with pytest.raises(ValueError, match=r"^`points` must be >= 2, got 1$"):
        log_steps(100, 1)
    with pytest.raises(ValueError, match=r"^the number of steps must be >= 0, got -5$"):
        log_steps(-5)


def test_cli_run_and_reproduce(tmp_path, capsys):
    assert main(["run", "engine-toy", "--out", str(tmp_path), "--set", "n=5", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "T1" in out and "  10\n" in out and "1 of 2 claims reproduced" in out
    code = main(["reproduce", "--only", "engine-toy", "--out", str(tmp_path), "--no-plots"])
    assert code == 0 and (tmp_path / "claims.md").is_file()
    assert main(["run", "engine-toy", "--out", str(tmp_path), "--set", "zz=1"]) == 2


def _threads_run(config, ctx):
    return {"threads": torch.get_num_threads()}


THREADS = register(
    Experiment(
        name="engine-threads",
        title="records its intra-op threads",
        claims=(Claim("T3", "runs with the declared threads", 2),),
        presets={"quick": {}, "full": {}},
        run=_threads_run,
        judge=lambda config, metrics: [Verdict("T3", metrics["threads"], True, "")],
        threads=2,
    )
)


def test_run_uses_declared_threads_and_restores(tmp_path):
    before = torch.get_num_threads()
    summary = run_experiment("engine-threads", out=tmp_path, quiet=True, plots=False)
    assert summary["claims"][0]["measured"] == 2
    assert torch.get_num_threads() == before


def test_declared_threads_validated():
    from overparam._threads import intra_op_threads

    with pytest.raises(ValueError, match=r"`threads` must be None or an integer >= 1, got 0"):
        with intra_op_threads(0):
            pass


def test_cli_reports_missing_data_without_traceback(tmp_path, monkeypatch, capsys):
    """Offline and no data: a one-line error naming the URL, exit status 2."""

    def offline(url, dest, timeout=60.0):
        raise OSError(f"could not download {url} to {dest}: offline")

    monkeypatch.setenv("OVERPARAM_DATA", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    import sys

    import overparam.datasets  # noqa: F401  (the package re-exports the function under the module's name)

    monkeypatch.setattr(sys.modules["overparam.datasets.gas_sensor"], "download", offline)
    assert main(["run", "deep-init", "--quick", "--out", str(tmp_path), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("overparam: error: could not download https://archive.ics.uci.edu")


def test_no_plots_removes_the_figures_of_the_previous_run(tmp_path):
    first = run_experiment("engine-toy", "quick", {"n": 7}, out=tmp_path, quiet=True)
    directory = tmp_path / first["directory"]
    assert first["figures"] == ["curve.png", "curve.pdf"] and (directory / "curve.png").is_file()
    (directory / "notes.txt").write_text("mine")  # a file the run did not write is kept
    second = run_experiment("engine-toy", "quick", {"n": 7}, out=tmp_path, quiet=True, plots=False)
    assert second["figures"] == []
    assert sorted(p.name for p in directory.glob("curve.*")) == []
    assert (directory / "notes.txt").read_text() == "mine"
    assert json.loads((directory / "summary.json").read_text())["figures"] == []


def test_concurrent_runs_into_one_directory_leave_one_runs_files(tmp_path):
    """While a run writes its directory another run of a different config waits for it."""
    import threading
    import time

    from overparam.engine.runner import prepare_run, run_directory_lock

    run_experiment("engine-toy", "quick", {"n": 3}, out=tmp_path, quiet=True, plots=False)
    plan = prepare_run("engine-toy", "quick", {"n": 4}, tmp_path)
    worker = threading.Thread(
        target=run_experiment,
        args=("engine-toy", "quick", {"n": 4}),
        kwargs={"out": tmp_path, "quiet": True, "plots": False},
    )
    with run_directory_lock(plan):
        worker.start()
        time.sleep(0.5)
        assert worker.is_alive()  # computed, and waiting to write
        assert json.loads((plan.directory / "config.json").read_text()) == {"n": 3}
    worker.join(timeout=30)
    files = [json.loads((plan.directory / f).read_text()) for f in ("config.json", "summary.json")]
    assert files[0] == {"n": 4} and files[1]["config"] == {"n": 4}
    assert json.loads((plan.directory / "metrics.json").read_text())["total"] == 6.0

"""The command line ends every fault in one line: bad input (2), interrupt (130), failure (1)."""

import multiprocessing
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import pytest

from overparam.cli import main
from overparam.engine import Claim, Experiment, Verdict, register

STATE = {"mode": "ok"}


def _run(config, ctx):
    if STATE["mode"] == "interrupt":
        raise KeyboardInterrupt
    if STATE["mode"] == "fail":
        raise RuntimeError("the solver diverged")
    warnings.warn("three batch files are absent; using the others", UserWarning, stacklevel=1)
    return {"value": config["n"]}


register(
    Experiment(
        name="cli-toy",
        title="warns, fails or is interrupted on request",
        claims=(Claim("K1", "n", 1),),
        presets={"quick": {"n": 1}, "full": {"n": 2}},
        run=_run,
        judge=lambda config, metrics: [Verdict("K1", metrics["value"], True)],
    )
)


register(
    Experiment(
        name="cli-ok",
        title="always works",
        claims=(Claim("K3", "works", 1),),
        presets={"quick": {}, "full": {}},
        run=lambda config, ctx: {"value": 1},
        judge=lambda config, metrics: [Verdict("K3", metrics["value"], True)],
    )
)


def _cli(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr()


def test_warnings_print_as_one_line(tmp_path, capsys):
    STATE["mode"] = "ok"
    code, captured = _cli(capsys, "run", "cli-toy", "--out", str(tmp_path), "--no-plots")
    assert code == 0
    assert captured.err.splitlines() == [
        "overparam: warning: three batch files are absent; using the others"
    ]


def test_interrupt_is_one_line_with_exit_130(tmp_path, capsys):
    STATE["mode"] = "interrupt"
    for command in ("run", "reproduce"):
        flag = [] if command == "run" else ["--only"]
        code, captured = _cli(capsys, command, *flag, "cli-toy", "--out", str(tmp_path))
        assert code == 130
        lines = captured.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("overparam: interrupted; finished results")
        assert f"{tmp_path}" in lines[0] and "rerun the same command to resume" in lines[0]


def test_failed_experiment_is_one_line_with_exit_1(tmp_path, capsys):
    STATE["mode"] = "fail"
    code, captured = _cli(capsys, "run", "cli-toy", "--out", str(tmp_path), "--no-plots")
    assert code == 1
    assert captured.err.splitlines() == [
        "overparam: error: cli-toy failed: RuntimeError: the solver diverged"
    ]
    code, captured = _cli(
        capsys, "reproduce", "--only", "cli-toy", "cli-ok", "--out", str(tmp_path)
    )
    assert code == 1 and "Traceback" not in captured.err + captured.out
    assert "cli-toy: FAILED RuntimeError: the solver diverged" in captured.err
    assert "K3" in captured.out and (tmp_path / "cli-ok" / "quick" / "summary.json").is_file()


def test_corrupt_store_is_one_warning_line_and_the_run_goes_on(tmp_path, capsys):
    STATE["mode"] = "ok"
    (tmp_path / "store.sqlite").write_bytes(b"garbage" * 100)
    code, captured = _cli(capsys, "run", "cli-toy", "--out", str(tmp_path), "--no-plots")
    assert code == 0
    lines = captured.err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("overparam: warning: results store ")
    assert "moved it to" in lines[0] and list(tmp_path.glob("store.sqlite.corrupt-*"))


def test_reproduce_checks_names_before_running(tmp_path, capsys):
    code, captured = _cli(capsys, "reproduce", "--only", "cli-toy", "nope", "--out", str(tmp_path))
    assert code == 2 and captured.err.startswith("overparam: error: unknown experiment 'nope'")
    assert captured.err.count("\n") == 1 and not (tmp_path / "store.sqlite").exists()


def test_unwritable_output_is_one_line(tmp_path, capsys):
    STATE["mode"] = "ok"
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, captured = _cli(capsys, "run", "cli-toy", "--out", str(blocker / "x"), "--no-plots")
    assert code == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("overparam: error: ")


def _pieces_run(config, ctx):
    done = []
    for k in range(config["pieces"]):

        def piece(k=k):
            with open(Path(config["out"]) / "computed.txt", "a") as f:
                f.write(f"{k}\n")
            time.sleep(0.3)
            return {"k": k}

        done.append(ctx.cached("piece", {"k": k, "out": config["out"]}, piece)["k"])
    return {"done": done}


register(
    Experiment(
        name="cli-pieces",
        title="sleeps in pieces",
        claims=(Claim("K2", "every piece", 6),),
        presets={"quick": {"pieces": 6, "out": ""}, "full": {"pieces": 7, "out": ""}},
        run=_pieces_run,
        judge=lambda config, metrics: [Verdict("K2", len(metrics["done"]), True)],
    )
)


def _cli_in_child(out):
    """``overparam run cli-pieces`` in a forked process (the registry and imports are inherited)."""
    with open(out / "stderr.txt", "w") as stderr:
        sys.stderr = stderr
        code = main(["run", "cli-pieces", "--no-plots", "--out", str(out), "--set", f"out={out}"])
    sys.exit(code)


def _lines(path):
    return path.read_text().split() if path.exists() else []


@pytest.mark.parametrize(
    "sig, code, message",
    [
        (signal.SIGINT, 130, "overparam: interrupted; finished results are kept in "),
        (signal.SIGTERM, 143, "overparam: terminated (SIGTERM); finished results are kept in "),
    ],
)
def test_a_signal_is_one_line_keeps_finished_pieces_and_a_rerun_resumes(
    tmp_path, sig, code, message
):
    out = tmp_path / "out"
    out.mkdir()
    child = multiprocessing.get_context("fork").Process(target=_cli_in_child, args=(out,))
    child.start()
    computed = out / "computed.txt"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_lines(computed)) < 3:
        time.sleep(0.02)
    os.kill(child.pid, sig)
    child.join(timeout=60)
    stderr = (out / "stderr.txt").read_text()
    assert child.exitcode == code, stderr
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    assert stderr.startswith(message)
    rerun = multiprocessing.get_context("fork").Process(target=_cli_in_child, args=(out,))
    rerun.start()
    rerun.join(timeout=60)
    assert rerun.exitcode == 0, (out / "stderr.txt").read_text()
    pieces = _lines(computed)
    assert sorted(set(pieces)) == [str(k) for k in range(6)]
    assert pieces.count("0") == 1 and pieces.count("1") == 1  # finished before the signal


def test_out_that_is_a_file_names_the_option(tmp_path, capsys):
    STATE["mode"] = "ok"
    blocker = tmp_path / "file"
    blocker.write_text("")
    for argv in (["run", "cli-ok"], ["reproduce", "--only", "cli-ok"], ["sweep", "cli-toy"]):
        extra = ["--grid", "n=1,2"] if argv[0] == "sweep" else []
        code, captured = _cli(capsys, *argv, *extra, "--out", str(blocker), "--no-plots")
        assert code == 2
        assert captured.err == (
            f"overparam: error: `--out` must be a directory of runs, got '{blocker}' (a file)\n"
        )
    code, captured = _cli(capsys, "run", "cli-ok", "--out", str(blocker / "x"), "--no-plots")
    assert code == 2 and "`--out` must be a directory of runs" in captured.err
    assert "cannot create it" in captured.err and captured.err.count("\n") == 1


def test_reproduce_only_runs_a_repeated_name_once(tmp_path, capsys):
    import json

    code, captured = _cli(
        capsys, "reproduce", "--only", "cli-ok", "cli-ok", "--out", str(tmp_path), "--no-plots"
    )
    assert code == 0 and captured.err.count("cli-ok: ") == 1
    rows = json.loads((tmp_path / "claims.json").read_text())
    assert [(r["experiment"], r["id"]) for r in rows] == [("cli-ok", "K3")]


def test_store_path_that_is_a_directory_is_one_line(tmp_path, capsys):
    (tmp_path / "store.sqlite").mkdir()
    code, captured = _cli(capsys, "run", "cli-ok", "--out", str(tmp_path), "--no-plots")
    assert code == 2 and captured.err.count("\n") == 1
    assert "store.sqlite is not a file (a directory?); move it away" in captured.err

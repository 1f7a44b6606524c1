"""`--set` values are checked against the presets' value types and ranges before anything runs."""

import math

import pytest

from overparam.cli import main
from overparam.engine import Claim, Experiment, Verdict, experiments, register, run_experiment
from overparam.engine.overrides import check_overrides, describe, value_spec

RUNS = {"count": 0}


def _run(config, ctx):
    RUNS["count"] += 1
    return {"ok": 1}


CHECKED = register(
    Experiment(
        name="engine-checked",
        title="an experiment with every kind of config value",
        claims=(Claim("C1", "runs", 1),),
        presets={
            "quick": {
                "steps": 10,
                "lr": 0.1,
                "shift": -1.0,
                "seed": 0,
                "flag": True,
                "name": "balanced",
                "ys": [10.0, 1.0],
                "ps": [2, 4],
                "pairs": [[0.5, [2, 0]], [0.5, [0, 2]]],
                "grid": {"gd": [0.1, 0.2], "adam": [0.01]},
                "free": [],
                "momentum": 0.9,
            },
            "full": {
                "steps": 1000,
                "lr": 1,
                "shift": 2.0,
                "seed": 0,
                "flag": False,
                "name": "near_zero",
                "ys": [10.0, 1.0, 0.5],
                "ps": [2, 4],
                "pairs": [[0.5, [2, 0, 0]]],
                "grid": {"gd": [0.1], "adam": [0.01, 0.03]},
                "free": [],
                "momentum": 0.0,
            },
        },
        run=_run,
        judge=lambda config, metrics: [Verdict("C1", metrics["ok"], True)],
        bounds={"momentum": (0.0, 1.0)},
    )
)


def _check(overrides):
    return check_overrides(CHECKED, overrides)


def test_accepted_values_are_normalized():
    out = _check(
        {
            "steps": 3,
            "lr": 2,  # a float key takes an int, stored as float (one config, one hash)
            "shift": -3.5,
            "flag": False,
            "name": "other",
            "ys": (1, 2.5),  # a tuple literal is a list
            "pairs": [[1.0, [1, 1, 1]]],
            "grid": {"gd": [0.5], "adam": [], "sgd": [0.1]},
            "free": ["anything", 1],
            "momentum": 1.0,
        }
    )
    assert out["lr"] == 2.0 and isinstance(out["lr"], float)
    assert out["ys"] == [1.0, 2.5] and all(isinstance(v, float) for v in out["ys"])
    assert out["pairs"] == [[1.0, [1, 1, 1]]] and out["steps"] == 3 and out["flag"] is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": 1.5}, "config key 'steps' of engine-checked must be an int > 0, got 1.5 (float)"),
        ({"steps": -5}, "config key 'steps' of engine-checked must be an int > 0, got -5 (int)"),
        ({"steps": 0}, "must be an int > 0, got 0 (int)"),
        ({"steps": True}, "must be an int > 0, got True (bool)"),
        ({"steps": "10"}, "must be an int > 0, got '10' (str)"),
        ({"seed": -1}, "config key 'seed' of engine-checked must be an int >= 0, got -1 (int)"),
        ({"lr": math.nan}, "config key 'lr' of engine-checked must be a finite float > 0, got nan (float)"),
        ({"lr": math.inf}, "must be a finite float > 0, got inf (float)"),
        ({"lr": "fast"}, "must be a finite float > 0, got 'fast' (str)"),
        ({"shift": math.nan}, "must be a finite float, got nan (float)"),
        ({"flag": 1}, "config key 'flag' of engine-checked must be true or false, got 1 (int)"),
        ({"name": 3}, "config key 'name' of engine-checked must be a string, got 3 (int)"),
        ({"ys": "hello"}, "config key 'ys' of engine-checked must be a list of float > 0, got 'hello' (str)"),
        ({"ys": [1.0, -2.0]}, r"must be a list of float > 0, got \[1.0, -2.0\] \(ys\[1\] is -2.0\)"),
        ({"ps": 3}, "config key 'ps' of engine-checked must be a list of int > 0, got 3 (int)"),
        ({"ps": [2, 2.5]}, r"got \[2, 2.5\] \(ps\[1\] is 2.5\)"),
        (
            {"pairs": [[0.5, [2, "a"]]]},
            r"must be a list of \[float > 0, list of int >= 0\], got \[\[0.5, \[2, 'a'\]\]\] "
            r"\(pairs\[0\]\[1\]\[1\] is 'a'\)",
        ),
        ({"pairs": [[0.5]]}, r"\(pairs\[0\] is \[0.5\]\)"),
        ({"grid": {"gd": [0.1]}}, r"must be a dict \(keys adam, gd\) of list of float > 0, got"),
        ({"grid": {"gd": [0.1], "adam": ["x"]}}, r"\(grid\['adam'\]\[0\] is 'x'\)"),
        ({"momentum": 1.5}, r"config key 'momentum' of engine-checked must be a finite float in \[0.0, 1.0\], got 1.5"),
    ],
)  # fmt: skip
def test_bad_values_name_key_expected_type_and_value(overrides, message):
    with pytest.raises(ValueError, match=message if "\\" in message else _literal(message)):
        _check(overrides)


def _literal(message):
    import re

    return re.escape(message)


def test_unknown_key_and_bad_bounds_declaration():
    with pytest.raises(ValueError, match="unknown config key 'stepz' for engine-checked; known: "):
        _check({"stepz": 1})
    with pytest.raises(ValueError, match="`overrides` must be a mapping of config keys to values"):
        _check([("steps", 1)])
    with pytest.raises(ValueError, match=r"`bounds` of experiment 'x' name keys absent from"):
        Experiment(
            "x", "t", (Claim("a", "b", 1),), {"quick": {"n": 1}, "full": {"n": 2}},
            _run, lambda c, m: [], bounds={"m": (0, 1)},
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"`bounds\['n'\]` of experiment 'x' must be"):
        Experiment(
            "x", "t", (Claim("a", "b", 1),), {"quick": {"n": 1}, "full": {"n": 2}},
            _run, lambda c, m: [], bounds={"n": (2, 1)},
        )  # fmt: skip


def test_parse_value_reads_literals_and_bare_words():
    from overparam.engine.overrides import parse_value

    value = parse_value("[1, nan, -inf, True, null]")
    assert value[0] == 1 and math.isnan(value[1]) and value[2:] == [-math.inf, True, None]
    assert parse_value("{'l2': 0.1}") == {"l2": 0.1} and parse_value("(2, 4)") == [2, 4]
    assert parse_value("hello") == "hello" and parse_value("[a, b]") == "[a, b]"
    assert parse_value("10**9") == "10**9" and parse_value("") == ""  # no arithmetic is evaluated
    with pytest.raises(ValueError, match=r"config key 'ys' .* \(ys\[1\] is nan\)"):
        _check({"ys": parse_value("[1, nan]")})


def test_describe_specs():
    assert describe(value_spec(CHECKED, "pairs")) == "a list of [float > 0, list of int >= 0]"
    assert describe(value_spec(CHECKED, "free")) == "a list"
    assert describe(value_spec(CHECKED, "shift")) == "a finite float"


def test_run_experiment_checks_before_running(tmp_path):
    RUNS["count"] = 0
    with pytest.raises(ValueError, match="config key 'steps' of engine-checked must be an int > 0"):
        run_experiment("engine-checked", overrides={"steps": 2.5}, out=tmp_path, quiet=True)
    assert RUNS["count"] == 0 and not (tmp_path / "store.sqlite").exists()
    summary = run_experiment("engine-checked", overrides={"lr": 1}, out=tmp_path, quiet=True)
    assert summary["config"]["lr"] == 1.0 and RUNS["count"] == 1
    again = run_experiment("engine-checked", overrides={"lr": 1.0}, out=tmp_path, quiet=True)
    assert again["cached"] and RUNS["count"] == 1  # 1 and 1.0 are the same config


@pytest.mark.parametrize(
    ("name", "pair", "message"),
    [
        ("gd-rate", "steps=1.5", "config key 'steps' of gd-rate must be an int > 0, got 1.5 (float)"),
        ("gd-rate", "steps=-5", "config key 'steps' of gd-rate must be an int > 0, got -5 (int)"),
        ("toy-lp", "ps=3", "config key 'ps' of toy-lp must be a list of int > 0, got 3 (int)"),
        ("toy-lp", "y=hello", "config key 'y' of toy-lp must be a list of float > 0, got 'hello' (str)"),
        ("toy-lp", "scale=nan", "config key 'scale' of toy-lp must be a finite float > 0, got nan (float)"),
    ],
)  # fmt: skip
def test_cli_rejects_bad_set_in_one_line(name, pair, message, tmp_path, capsys):
    assert main(["run", name, "--set", pair, "--out", str(tmp_path), "--no-plots"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"overparam: error: {message}" and captured.out == ""
    assert not (tmp_path / "store.sqlite").exists()  # nothing ran


@pytest.mark.parametrize("name", sorted(experiments()))
def test_every_registered_preset_passes_the_checker(name):
    experiment = experiments()[name]
    for preset, config in experiment.presets.items():
        assert check_overrides(experiment, config) == config, preset


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": 2**63}, "must be an int > 0, got 9223372036854775808 (int) (beyond the 64-bit"),
        ({"ps": [2, 10**30]}, "(ps[1] is 1000000000000000000000000000000) (beyond the 64-bit"),
        ({"ps": []}, "config key 'ps' of engine-checked must be a list of int > 0 with at least one element, got []"),
        ({"ys": []}, "must be a list of float > 0 with at least one element, got [] (list)"),
    ],
)  # fmt: skip
def test_huge_ints_and_empty_lists_are_refused(overrides, message):
    with pytest.raises(ValueError, match=_literal(message)):
        _check(overrides)


def test_empty_list_stays_allowed_where_a_preset_has_one():
    assert _check({"free": []}) == {"free": []}
    assert _check({"grid": {"gd": [0.5], "adam": []}})["grid"]["adam"] == []
    assert _check({"steps": 2**63 - 1})["steps"] == 2**63 - 1

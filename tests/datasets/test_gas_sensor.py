"""The UCI gas-sensor loader on tiny synthetic batch files, and on the real data when present."""

import os
import warnings
from pathlib import Path

import pytest
import torch

from overparam.datasets.gas_sensor import (
    FEATURES,
    MissingBatchesWarning,
    batch_sources,
    gas_sensor,
    gas_sensor_batches,
    parse_line,
    standardize_columns,
)


def _line(gas: int, conc: float, values: list[float]) -> str:
    return f"{gas};{conc:.4f} " + " ".join(f"{k}:{v:.6f}" for k, v in enumerate(values, 1))


def _write(
    directory: Path, batch: int, rows: list[tuple[int, float, list[float]]], suffix: str = ""
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    text = "\n".join(_line(*row) for row in rows) + "\n"
    (directory / f"batch{batch}{suffix}.dat").write_text(text)


def _rows(gen: torch.Generator, gas: int, n: int) -> list[tuple[int, float, list[float]]]:
    values = torch.randn(n, FEATURES, dtype=torch.float64, generator=gen) * 100
    conc = torch.rand(n, dtype=torch.float64, generator=gen) * 500
    return [(gas, float(conc[i]), values[i].tolist()) for i in range(n)]


@pytest.fixture
def two_batches(tmp_path, gen):
    a = _rows(gen, 1, 3) + _rows(gen, 2, 2)
    b = _rows(gen, 2, 1) + _rows(gen, 1, 4)
    _write(tmp_path / "gas-sensor-drift", 1, a)
    _write(tmp_path / "gas-sensor-drift", 4, b)
    return tmp_path, [r for r in a + b if r[0] == 1]


def test_parses_the_selected_gas_in_batch_order(two_batches):
    root, ethanol = two_batches
    with pytest.warns(MissingBatchesWarning, match=r"missing \[2, 3, 5, 6, 7, 8, 9, 10\]"):
        X, y = gas_sensor("ethanol", path=root, standardize=False)
    assert X.shape == (7, FEATURES) and X.dtype == torch.float64
    # the files hold 6 decimals (features) and 4 (concentration): rounding of the writer only
    want_X = torch.tensor([r[2] for r in ethanol], dtype=torch.float64)
    want_y = torch.tensor([r[1] for r in ethanol], dtype=torch.float64)
    torch.testing.assert_close(X, want_X, rtol=0, atol=1e-6)
    torch.testing.assert_close(y, want_y, rtol=0, atol=1e-4)
    with pytest.warns(UserWarning):  # the gas id and the dataset directory itself work too
        X2, _ = gas_sensor(1, path=root / "gas-sensor-drift", standardize=False)
    assert torch.equal(X, X2)


def test_standardization_matches_a_naive_formula(two_batches):
    root, _ = two_batches
    with pytest.warns(UserWarning):
        raw_X, raw_y = gas_sensor("ethanol", path=root, standardize=False)
        X, y = gas_sensor("ethanol", path=root)
    n = raw_X.shape[0]
    for j in range(FEATURES):
        col = raw_X[:, j].tolist()
        mean = sum(col) / n
        std = (sum((v - mean) ** 2 for v in col) / n) ** 0.5  # population std
        want = torch.tensor([(v - mean) / std for v in col], dtype=torch.float64)
        torch.testing.assert_close(X[:, j], want, rtol=1e-12, atol=1e-12)
    assert abs(float(y.mean())) < 1e-12 and abs(float(y.std(unbiased=False)) - 1) < 1e-12
    const = standardize_columns(torch.full((4, 2), 3.0, dtype=torch.float64))
    assert torch.equal(const, torch.zeros(4, 2, dtype=torch.float64))  # only centered


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("1 3.0 " + " ".join(f"{k}:1" for k in range(1, 129)), "GAS;CONCENTRATION"),
        ("1;3.0 " + " ".join(f"{k}:1" for k in range(1, 128)), "expected 128 features, got 127"),
        ("1;3.0 " + " ".join(f"{k}:1" for k in range(2, 130)), "expected feature '1:value'"),
        ("1;abc " + " ".join(f"{k}:1" for k in range(1, 129)), "could not convert"),
        ("1;3.0 1:nan " + " ".join(f"{k}:1" for k in range(2, 129)), "feature 1 must be a finite"),
        ("1;3.0 " + " ".join(f"{k}:1" for k in range(1, 128)) + " 128:-inf", "feature 128 must"),
        ("1;inf " + " ".join(f"{k}:1" for k in range(1, 129)), "concentration must be a finite"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, gen, bad, reason):
    good = [_line(*row) for row in _rows(gen, 1, 2)]
    (tmp_path / "batch3.dat").write_text("\n".join(good[:1] + [bad] + good[1:]) + "\n")
    with pytest.raises(ValueError, match=rf"batch3\.dat, line 2: .*{reason}"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gas_sensor(path=tmp_path)


def test_parse_line_and_argument_errors(tmp_path, gen):
    gas, conc, values = parse_line(_line(5, 12.5, [float(k) for k in range(128)]), "f", 9)
    assert (gas, conc, values[:3]) == (5, 12.5, [0.0, 1.0, 2.0])
    _write(tmp_path, 2, _rows(gen, 2, 2))
    with pytest.raises(ValueError, match="`gas` must be one of"):
        gas_sensor("methane", path=tmp_path)
    with pytest.raises(ValueError, match="`gas` must be one of"):
        gas_sensor(True, path=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`gas` 'ethanol' has no samples"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gas_sensor("ethanol", path=tmp_path)
    with pytest.raises(ValueError, match="`path` must be an existing directory"):
        gas_sensor(path=tmp_path / "nowhere")


def _partial_setup(root: Path, gen: torch.Generator) -> dict[str, list]:
    """batch1.dat (all gases), batch2-ethanol.dat (one-gas), batch3.dat AND batch3-ethanol.dat."""
    d = root / "gas-sensor-drift"
    rows = {"b1": _rows(gen, 1, 2) + _rows(gen, 3, 2), "b2": _rows(gen, 1, 3),
            "b3": _rows(gen, 1, 1) + _rows(gen, 2, 1), "b3-partial": _rows(gen, 1, 4)}  # fmt: skip
    _write(d, 1, rows["b1"])
    _write(d, 2, rows["b2"], "-ethanol")
    _write(d, 3, rows["b3"])
    _write(d, 3, rows["b3-partial"], "-ethanol")
    return rows


def test_partial_file_is_read_for_its_gas_only_and_the_original_wins(tmp_path, gen):
    rows = _partial_setup(tmp_path, gen)
    with pytest.warns(MissingBatchesWarning) as caught:
        X, y = gas_sensor("ethanol", path=tmp_path, standardize=False)
    ethanol = [r for r in rows["b1"] + rows["b2"] + rows["b3"] if r[0] == 1]  # not b3-partial
    want = torch.tensor([r[2] for r in ethanol], dtype=torch.float64)
    torch.testing.assert_close(X, want, rtol=0, atol=1e-6)
    assert y.shape == (6,)
    # one line, naming the partial and missing batches; no source line of the library
    (warning,) = caught
    shown = warnings.formatwarning(
        warning.message, warning.category, warning.filename, warning.lineno, warning.line
    )
    assert shown.count("\n") == 1 and "gas_sensor.py" not in shown
    assert "partial one-gas files [2]" in shown and "missing [4, 5, 6, 7, 8, 9, 10]" in shown
    sources = batch_sources("ethanol", path=tmp_path)
    assert (sources.original, sources.partial) == ((1, 3), (2,))
    assert sources.missing == (4, 5, 6, 7, 8, 9, 10)
    # another gas: the one-gas ethanol file is not used
    with pytest.warns(MissingBatchesWarning):
        X3, _ = gas_sensor("ammonia", path=tmp_path, standardize=False)
    assert X3.shape == (2, FEATURES)
    assert batch_sources("ammonia", path=tmp_path).partial == ()


def test_batches_selection_and_a_foreign_line_in_a_one_gas_file(tmp_path, gen):
    rows = _partial_setup(tmp_path, gen)
    with pytest.warns(MissingBatchesWarning):
        parts, _ = gas_sensor_batches("ethanol", path=tmp_path, batches=[2, 1])
    assert sorted(parts) == [1, 2] and parts[2][0].shape == (3, FEATURES)
    torch.testing.assert_close(parts[2][1], torch.tensor([r[1] for r in rows["b2"]],
                               dtype=torch.float64), rtol=0, atol=1e-4)  # fmt: skip
    with pytest.raises(ValueError, match=r"includes batches absent from .*: \[5\]"):
        gas_sensor("ethanol", path=tmp_path, batches=[1, 5])
    with pytest.raises(ValueError, match=r"`batches` must be distinct batch numbers 1-10"):
        gas_sensor("ethanol", path=tmp_path, batches=[1, 11])
    bad = _rows(gen, 1, 1) + _rows(gen, 4, 1)
    _write(tmp_path / "gas-sensor-drift", 2, bad, "-ethanol")
    with pytest.raises(ValueError, match=r"batch2-ethanol\.dat, line 2: .*holds a line of gas 4"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gas_sensor("ethanol", path=tmp_path)


@pytest.mark.skipif(
    not os.environ.get("OVERPARAM_DATA")
    or not (Path(os.environ["OVERPARAM_DATA"]) / "gas-sensor-drift" / "batch1.dat").exists(),
    reason="real data: needs $OVERPARAM_DATA/gas-sensor-drift",
)
def test_real_ethanol_with_the_reconstructed_batches():
    sources = batch_sources("ethanol")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingBatchesWarning)
        X, y = gas_sensor("ethanol")
        original, _ = gas_sensor("ethanol", batches=sources.original)
    # data README: batches 1-6, 8, 9 hold 90+164+365+64+28+514+30+61 = 1316 Ethanol samples;
    # with the one-gas files of batches 7 (649) and 10 (600), the paper's 2565
    assert original.shape == (1316, 128)
    if sources.partial == (7, 10):
        assert X.shape == (2565, 128) and y.shape == (2565,)
    assert bool(torch.isfinite(X).all()) and abs(float(y.mean())) < 1e-12

"""UCI "Gas Sensor Array Drift Dataset at Different Concentrations" (UCI id 270).

Vergara et al. (2012), Rodriguez-Lujan et al. (2014); the regression problem of Arora, Cohen &
Hazan (2018), Section 8: the "Ethanol" subset, 128 features, target the concentration (ppmv).

Files ``batch1.dat`` ... ``batch10.dat``; one measurement per line:
``GAS;CONCENTRATION 1:v1 2:v2 ... 128:v128`` (gas 1 Ethanol, 2 Ethylene, 3 Ammonia,
4 Acetaldehyde, 5 Acetone, 6 Toluene).
"""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from overparam.datasets._source import data_dir, download

URL = (
    "https://archive.ics.uci.edu/static/public/270/"
    "gas+sensor+array+drift+dataset+at+different+concentrations.zip"
)
SUBDIR = "gas-sensor-drift"
GASES = {"ethanol": 1, "ethylene": 2, "ammonia": 3, "acetaldehyde": 4, "acetone": 5, "toluene": 6}
BATCHES = tuple(range(1, 11))
FEATURES = 128


def parse_line(line: str, source: str, number: int) -> tuple[int, float, list[float]]:
    """``(gas, concentration, features)`` of one line; ``ValueError`` naming file and line."""
    where = f"{source}, line {number}"
    head, _, rest = line.strip().partition(" ")
    gas_text, sep, conc_text = head.partition(";")
    try:
        if not sep:
            raise ValueError("expected 'GAS;CONCENTRATION' at the start")
        gas, conc = int(gas_text), float(conc_text)
        fields = rest.split()
        if len(fields) != FEATURES:
            raise ValueError(f"expected {FEATURES} features, got {len(fields)}")
        values = []
        for k, field in enumerate(fields, start=1):
            index, colon, value = field.partition(":")
            if not colon or int(index) != k:
                raise ValueError(f"expected feature '{k}:value', got {field!r}")
            values.append(float(value))
    except ValueError as error:
        raise ValueError(f"malformed line in {where}: {error}") from None
    return gas, conc, values


def _read_batch(file: Path, gas: int) -> tuple[list[list[float]], list[float]]:
    rows, targets = [], []
    with open(file, encoding="ascii", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            g, conc, values = parse_line(line, str(file), number)
            if g == gas:
                rows.append(values)
                targets.append(conc)
    return rows, targets


def _fetch(directory: Path) -> None:
    """Download and unpack the official archive into ``directory`` (needs a network)."""
    archive = download(URL, directory / "gas_sensor_drift.zip")
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            name = Path(member).name
            if name.startswith("batch") and name.endswith(".dat"):
                (directory / name).write_bytes(zf.read(member))


def _gas_id(gas: str | int) -> int:
    if isinstance(gas, str) and gas.lower() in GASES:
        return GASES[gas.lower()]
    if isinstance(gas, int) and not isinstance(gas, bool) and gas in GASES.values():
        return gas
    raise ValueError(f"`gas` must be one of {sorted(GASES)} or an id 1-6, got {gas!r}")


def standardize_columns(values: Tensor) -> Tensor:
    """``(v - mean) / std`` per column (population std); constant columns are only centered."""
    centered = values - values.mean(dim=0)
    std = values.std(dim=0, unbiased=False)
    return centered / torch.where(std > 0, std, torch.ones_like(std))


def gas_sensor(
    gas: str | int = "ethanol",
    path: str | os.PathLike[str] | None = None,
    standardize: bool = True,
) -> tuple[Tensor, Tensor]:
    """The measurements of one gas as float64 ``(X, y)``: ``X (n, 128)``, ``y (n,)`` concentration.

    Reads every ``batch*.dat`` present in ``path`` (or ``$OVERPARAM_DATA/gas-sensor-drift``, or the
    user cache, where the official archive is downloaded when no file is found); missing batches
    are reported with a ``UserWarning`` (the paper used all 10: 2565 Ethanol samples).

    Args:
        gas: a name (``"ethanol"``) or gas id 1-6.
        path: directory of the batch files (or its parent).
        standardize: scale each feature and the target to mean 0, variance 1 (constant columns
            are centered only).

    Returns:
        ``(X, y)``.

    Raises:
        ValueError: on a malformed line (naming file and line) or when no sample of ``gas`` exists.
        OSError: when no batch file exists and the download fails.
    """
    gas_id = _gas_id(gas)
    directory = data_dir(path, SUBDIR)
    files = {b: directory / f"batch{b}.dat" for b in BATCHES}
    if not any(f.exists() for f in files.values()):
        _fetch(directory)
    missing = [b for b, f in files.items() if not f.exists()]
    if missing:
        warnings.warn(
            f"gas_sensor: batch files {missing} are absent from {directory}; using the others",
            UserWarning,
            stacklevel=2,
        )
    rows: list[list[float]] = []
    targets: list[float] = []
    for f in files.values():
        if f.exists():
            r, t = _read_batch(f, gas_id)
            rows += r
            targets += t
    if not rows:
        raise ValueError(f"`gas` {gas!r} has no samples in {directory}")
    X = torch.tensor(rows, dtype=torch.float64)
    y = torch.tensor(targets, dtype=torch.float64)
    if standardize:
        X, y = standardize_columns(X), standardize_columns(y.unsqueeze(-1)).squeeze(-1)
    return X, y

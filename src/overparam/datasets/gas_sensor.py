"""UCI "Gas Sensor Array Drift Dataset at Different Concentrations" (UCI id 270).

Vergara et al. (2012), Rodriguez-Lujan et al. (2014); the regression problem of Arora, Cohen &
Hazan (2018), Section 8: the "Ethanol" subset, 128 features, target the concentration (ppmv).

Files ``batch1.dat`` ... ``batch10.dat``; one measurement per line:
``GAS;CONCENTRATION 1:v1 2:v2 ... 128:v128`` (gas 1 Ethanol, 2 Ethylene, 3 Ammonia,
4 Acetaldehyde, 5 Acetone, 6 Toluene).  Where ``batch{b}.dat`` is absent, a partial file
``batch{b}-{gas}.dat`` (same format, the lines of that one gas only, e.g. ``batch7-ethanol.dat``)
is read in its place for that gas; the original file wins when both exist.  Which batches came
from original files, which from partial ones and which are missing is reported by
:func:`batch_sources` and, whenever not all ten batches are original, by one
:class:`MissingBatchesWarning` (a one-line message, no source line).
"""

from __future__ import annotations

import math
import os
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
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


class MissingBatchesWarning(UserWarning):
    """Not every batch was read from its original UCI file (partial files or missing batches)."""


@dataclass(frozen=True)
class BatchSources:
    """Where each batch of one gas comes from.

    Attributes:
        gas: the gas name.
        directory: the data directory.
        original: batches read from ``batch{b}.dat``.
        partial: batches read from ``batch{b}-{gas}.dat`` (one gas only).
        missing: batches with neither file.
    """

    gas: str
    directory: Path
    original: tuple[int, ...]
    partial: tuple[int, ...]
    missing: tuple[int, ...]

    def describe(self) -> str:
        """One line: ``gas_sensor ethanol: original batch files [...], partial ..., missing ...``."""
        return (
            f"gas_sensor {self.gas}: original batch files {list(self.original)}, partial one-gas files "
            f"{list(self.partial)}, missing {list(self.missing)} (in {self.directory})"
        )


def parse_line(line: str, source: str, number: int) -> tuple[int, float, list[float]]:
    """``(gas, concentration, features)`` of one line; ``ValueError`` naming file and line.

    A value that is not a finite number (``nan``, ``inf``) is malformed.
    """
    where = f"{source}, line {number}"
    head, _, rest = line.strip().partition(" ")
    gas_text, sep, conc_text = head.partition(";")
    try:
        if not sep:
            raise ValueError("expected 'GAS;CONCENTRATION' at the start")
        gas, conc = int(gas_text), float(conc_text)
        if not math.isfinite(conc):
            raise ValueError(f"concentration must be a finite number, got {conc_text!r}")
        fields = rest.split()
        if len(fields) != FEATURES:
            raise ValueError(f"expected {FEATURES} features, got {len(fields)}")
        values = []
        for k, field in enumerate(fields, start=1):
            index, colon, value = field.partition(":")
            if not colon or int(index) != k:
                raise ValueError(f"expected feature '{k}:value', got {field!r}")
            number_ = float(value)
            if not math.isfinite(number_):
                raise ValueError(f"feature {k} must be a finite number, got {value!r}")
            values.append(number_)
    except ValueError as error:
        raise ValueError(f"malformed line in {where}: {error}") from None
    return gas, conc, values


def _read_batch(file: Path, gas: int, only: bool) -> tuple[list[list[float]], list[float]]:
    """The lines of ``gas`` in ``file``; ``only``: every line must be of ``gas`` (a partial file)."""
    rows, targets = [], []
    with open(file, encoding="ascii", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            g, conc, values = parse_line(line, str(file), number)
            if only and g != gas:
                raise ValueError(
                    f"malformed line in {file}, line {number}: a one-gas file of gas {gas} "
                    f"holds a line of gas {g}"
                )
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


def _gas_name(gas_id: int) -> str:
    return next(name for name, i in GASES.items() if i == gas_id)


def _files(directory: Path, name: str) -> dict[int, tuple[Path, bool]]:
    """``batch -> (file, partial?)`` of every batch with a file; the original file wins."""
    out: dict[int, tuple[Path, bool]] = {}
    for b in BATCHES:
        original, partial = directory / f"batch{b}.dat", directory / f"batch{b}-{name}.dat"
        if original.exists():
            out[b] = (original, False)
        elif partial.exists():
            out[b] = (partial, True)
    return out


def _sources(directory: Path, name: str, files: dict[int, tuple[Path, bool]]) -> BatchSources:
    return BatchSources(
        gas=name,
        directory=directory,
        original=tuple(b for b, (_, part) in files.items() if not part),
        partial=tuple(b for b, (_, part) in files.items() if part),
        missing=tuple(b for b in BATCHES if b not in files),
    )


def _locate(gas: str | int, path: str | os.PathLike[str] | None) -> BatchSources:
    name = _gas_name(_gas_id(gas))
    directory = data_dir(path, SUBDIR)
    if not any(directory.glob("batch*.dat")):
        _fetch(directory)
    return _sources(directory, name, _files(directory, name))


def batch_sources(
    gas: str | int = "ethanol", path: str | os.PathLike[str] | None = None
) -> BatchSources:
    """Which batches of ``gas`` are read from original, partial (one-gas) or no files."""
    return _locate(gas, path)


def _check_batches(batches: Iterable[int] | None) -> tuple[int, ...]:
    if batches is None:
        return BATCHES
    out = tuple(batches)
    if (
        not out
        or any(isinstance(b, bool) or b not in BATCHES for b in out)
        or len(set(out)) < len(out)
    ):
        raise ValueError(f"`batches` must be distinct batch numbers 1-10, got {list(out)!r}")
    return tuple(sorted(out))


def gas_sensor_batches(
    gas: str | int = "ethanol",
    path: str | os.PathLike[str] | None = None,
    batches: Iterable[int] | None = None,
) -> tuple[dict[int, tuple[Tensor, Tensor]], BatchSources]:
    """The raw float64 ``(X_b, y_b)`` of each batch present among ``batches``, and the sources.

    Raises:
        ValueError: on a malformed line (naming file and line), bad ``gas`` or ``batches``, or a
            batch named in ``batches`` that has no file.
        OSError: when no batch file exists and the download fails.
    """
    wanted = _check_batches(batches)
    gas_id = _gas_id(gas)
    sources = _locate(gas, path)
    absent = [b for b in wanted if b in sources.missing]
    if batches is not None and absent:
        raise ValueError(f"`batches` {list(wanted)} includes batches absent from "
                         f"{sources.directory}: {absent}")  # fmt: skip
    if sources.partial or sources.missing:
        warnings.warn_explicit(sources.describe(), MissingBatchesWarning, str(sources.directory), 0)
    files = _files(sources.directory, sources.gas)
    out: dict[int, tuple[Tensor, Tensor]] = {}
    for b in wanted:
        if b in files:
            file, partial = files[b]
            rows, targets = _read_batch(file, gas_id, partial)
            X = torch.tensor(rows, dtype=torch.float64).reshape(-1, FEATURES)
            out[b] = (X, torch.tensor(targets, dtype=torch.float64))
    return out, sources


def standardize_columns(values: Tensor) -> Tensor:
    """``(v - mean) / std`` per column (population std); constant columns are only centered."""
    centered = values - values.mean(dim=0)
    std = values.std(dim=0, unbiased=False)
    return centered / torch.where(std > 0, std, torch.ones_like(std))


def gas_sensor(
    gas: str | int = "ethanol",
    path: str | os.PathLike[str] | None = None,
    standardize: bool = True,
    batches: Iterable[int] | None = None,
) -> tuple[Tensor, Tensor]:
    """The measurements of one gas as float64 ``(X, y)``: ``X (n, 128)``, ``y (n,)`` concentration.

    Reads every batch present in ``path`` (or ``$OVERPARAM_DATA/gas-sensor-drift``, or the user
    cache, where the official archive is downloaded when no file is found), in batch order;
    ``batch{b}.dat``, else the one-gas file ``batch{b}-{gas}.dat``.  Partial and missing batches
    are reported with a :class:`MissingBatchesWarning` (the paper used all 10: 2565 Ethanol
    samples); :func:`batch_sources` returns the same report as data.

    Args:
        gas: a name (``"ethanol"``) or gas id 1-6.
        path: directory of the batch files (or its parent).
        standardize: scale each feature and the target to mean 0, variance 1 over the samples
            returned (constant columns are centered only).
        batches: only these batch numbers (each must have a file); default all present.

    Returns:
        ``(X, y)``.

    Raises:
        ValueError: on a malformed line (naming file and line), a non-finite value, or when no
            sample of ``gas`` exists.
        OSError: when no batch file exists and the download fails.
    """
    parts, sources = gas_sensor_batches(gas, path, batches)
    if not parts or sum(x.shape[0] for x, _ in parts.values()) == 0:
        raise ValueError(f"`gas` {gas!r} has no samples in {sources.directory}")
    X = torch.cat([x for x, _ in parts.values()])
    y = torch.cat([t for _, t in parts.values()])
    if standardize:
        X, y = standardize_columns(X), standardize_columns(y.unsqueeze(-1)).squeeze(-1)
    return X, y

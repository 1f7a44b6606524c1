"""The results store: finished runs in an embedded SQLite file, keyed by a hash of their config.

Every finished result is committed at once, so an interrupted sweep keeps what finished.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch


def to_jsonable(value: Any) -> Any:
    """Convert tensors, arrays and numpy scalars to lists and floats; non-finite floats to None."""
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    raise ValueError(f"cannot store a value of type {type(value).__name__} in metrics: {value!r}")


def config_hash(kind: str, config: Mapping[str, Any]) -> str:
    """SHA-256 (hex, 16 chars) of the canonical JSON of ``(kind, config)``."""
    text = json.dumps({"kind": kind, "config": to_jsonable(config)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Store:
    """Key-value store of finished results: ``(kind, config) -> metrics`` in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, kind TEXT, "
                "config TEXT, metrics TEXT, seconds REAL, created REAL)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def get(self, kind: str, config: Mapping[str, Any]) -> dict[str, Any] | None:
        """The stored metrics of ``(kind, config)``, or None."""
        with self._connect() as db:
            row = db.execute(
                "SELECT metrics FROM results WHERE key = ?", (config_hash(kind, config),)
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, kind: str, config: Mapping[str, Any], metrics: Any, seconds: float) -> Any:
        """Store (and return, JSON-converted) the metrics of ``(kind, config)``."""
        clean = to_jsonable(metrics)
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?)",
                (
                    config_hash(kind, config),
                    kind,
                    json.dumps(to_jsonable(config), sort_keys=True),
                    json.dumps(clean),
                    seconds,
                    time.time(),
                ),
            )
        return clean

    def count(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

"""The results store: finished runs in an embedded SQLite file, keyed by a hash of their config.

Every finished result is committed at once, so an interrupted sweep keeps what finished.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, closing
from pathlib import Path
from typing import Any

import numpy as np
import torch

from overparam.engine.locking import key_lock


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
    """Key-value store of finished results: ``(kind, config) -> metrics`` in one SQLite file.

    Faults are recovered without losing a finished run directory: a file that is not a readable
    SQLite database (garbage, truncated) is moved aside to ``<name>.corrupt-<timestamp>`` and an
    empty store is started, with a warning; a stored row that is not valid JSON is a cache miss
    (with a warning) and is replaced when the result is recomputed.  :meth:`get_or_compute` lets
    one process compute a result while others asking for the same one wait for its row (a lock
    file per result in ``<name>.locks/``, see :mod:`overparam.engine.locking`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_file():
            raise OSError(
                f"results store {self.path} is not a file (a directory?); move it away or give "
                "another --out"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.locks = self.path.with_name(self.path.name + ".locks")
        try:
            self._create()
        except sqlite3.DatabaseError as error:
            if not _corrupt(error):
                raise OSError(f"results store {self.path}: {error}") from error
            self._recover(error)

    def _create(self) -> None:
        with closing(self._connect()) as db, db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, kind TEXT, "
                "config TEXT, metrics TEXT, seconds REAL, created REAL)"
            )
            problems = db.execute("PRAGMA quick_check").fetchall()
        if problems != [("ok",)]:
            raise sqlite3.DatabaseError(f"integrity check: {problems[0][0]}")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def _recover(self, error: sqlite3.DatabaseError) -> None:
        """Move the unreadable file (and its journals) aside and start an empty store."""
        with key_lock(self.locks / "store.lock", what="the store's recovery"):
            try:  # another process may have recovered it meanwhile
                self._create()
                return
            except sqlite3.DatabaseError:
                pass
            stamp = time.strftime("%Y%m%dT%H%M%S")
            backup = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
            k = 1
            while backup.exists():
                backup, k = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{k}"), k + 1
            for suffix in ("", "-journal", "-wal", "-shm"):
                source = self.path.with_name(self.path.name + suffix)
                if source.exists():
                    source.replace(backup.with_name(backup.name + suffix))
            self._create()
        warnings.warn(
            f"results store {self.path} is not a readable SQLite database ({error}); moved it to "
            f"{backup} and started an empty store (run directories are kept; results are "
            "recomputed)",
            UserWarning,
            stacklevel=3,
        )

    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """Run one statement and commit; recover once from a corrupt file, else ``OSError``."""
        for attempt in (0, 1):
            try:
                with closing(self._connect()) as db, db:
                    return db.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as error:
                if attempt or not _corrupt(error):
                    raise OSError(f"results store {self.path}: {error}") from error
                self._recover(error)
        raise AssertionError("unreachable")

    def _load(self, kind: str, key: str, text: str) -> Any:
        try:
            return json.loads(text)
        except (TypeError, ValueError) as error:
            warnings.warn(
                f"stored result {kind} (key {key}) in {self.path} is not valid JSON ({error}); "
                "recomputing it",
                UserWarning,
                stacklevel=3,
            )
            return None

    def get(self, kind: str, config: Mapping[str, Any]) -> dict[str, Any] | None:
        """The stored metrics of ``(kind, config)``, or None (also for a corrupt row)."""
        key = config_hash(kind, config)
        rows = self._execute("SELECT metrics FROM results WHERE key = ?", (key,))
        return None if not rows else self._load(kind, key, rows[0][0])

    def put(self, kind: str, config: Mapping[str, Any], metrics: Any, seconds: float) -> Any:
        """Store (and return, JSON-converted) the metrics of ``(kind, config)``."""
        clean = to_jsonable(metrics)
        self._execute(
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

    def lock(
        self,
        kind: str,
        config: Mapping[str, Any],
        timeout: float | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> AbstractContextManager[None]:
        """The exclusive lock of the result ``(kind, config)``, see :func:`key_lock`."""
        key = config_hash(kind, config)
        return key_lock(self.locks / f"{key}.lock", timeout, on_wait, what=f"{kind} ({key})")

    def get_or_compute(
        self,
        kind: str,
        config: Mapping[str, Any],
        compute: Callable[[], Any],
        force: bool = False,
        timeout: float | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> tuple[Any, bool]:
        """``(metrics, cached)``: the stored result, else ``compute()`` stored under its lock.

        While one process computes a result, another asking for the same one waits for the lock
        (``timeout`` seconds at most, ``None``: as long as the holder lives) and then reads the
        row instead of computing it again; ``force`` recomputes in any case.
        """
        if not force:
            found = self.get(kind, config)
            if found is not None:
                return found, True
        with self.lock(kind, config, timeout, on_wait):
            if not force:
                found = self.get(kind, config)
                if found is not None:
                    return found, True
            start = time.perf_counter()
            result = compute()
            return self.put(kind, config, result, time.perf_counter() - start), False

    def prefixed(self, prefix: str) -> dict[str, Any]:
        """Every stored result whose kind starts with ``prefix``: ``{config hash: metrics}``.

        A row that is not valid JSON is left out (with a warning), as a cache miss.
        """
        rows = self._execute(
            "SELECT key, kind, metrics FROM results WHERE substr(kind, 1, ?) = ?",
            (len(prefix), prefix),
        )
        loaded = {key: self._load(kind, key, text) for key, kind, text in rows}
        return {key: value for key, value in loaded.items() if value is not None}

    def count(self) -> int:
        """The number of stored results."""
        return int(self._execute("SELECT COUNT(*) FROM results")[0][0])


def _corrupt(error: sqlite3.DatabaseError) -> bool:
    """Whether ``error`` says the file is not a (readable) SQLite database."""
    name = getattr(error, "sqlite_errorname", "")
    if name:
        return name in ("SQLITE_CORRUPT", "SQLITE_NOTADB")
    return type(error) is sqlite3.DatabaseError

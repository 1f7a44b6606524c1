"""The environment of a run: what produced a result, recorded beside it in ``run.json``.

As big_vision and most research repositories do, every run directory says which code (package
version, git commit, uncommitted changes), which software (Python, torch, numpy), which machine
(platform, processor, cores, intra-op threads), when, and with which seeds it ran.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

import overparam
from overparam.engine.store import config_hash


def _git(args: list[str], where: Path) -> str | None:
    """Output of ``git <args>`` run in ``where``; None when git or a checkout is absent."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=where, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(where: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout holding ``where``.

    ``where`` defaults to the installed package's directory, so an editable install reports the
    checkout it runs from; outside a git checkout (a wheel, no git) both are None.
    """
    path = Path(where) if where is not None else Path(overparam.__file__).resolve().parent
    commit = _git(["rev-parse", "HEAD"], path)
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git(["status", "--porcelain", "--untracked-files=no"], path)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def find_seeds(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every config entry whose key names a seed (``seed``, ``seeds``, ``data_seed``, ...),
    nested mappings included (keys joined with ``.``)."""
    found: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            found.update(find_seeds(value, name + "."))
        elif "seed" in str(key).lower():
            found[name] = value
    return found


def environment(config: Mapping[str, Any] | None = None, threads: int | None = None) -> dict:
    """The environment of a run of ``config`` now.

    Args:
        config: the run's config (its seed entries are recorded); None records none.
        threads: the intra-op threads the run used; None reads torch's current setting.

    Returns:
        A JSON-able dict: package, git, python, torch, numpy, threads, machine, date (UTC,
        ISO 8601) and seeds.
    """
    return {
        "package": {"name": "overparam", "version": overparam.__version__},
        "git": git_state(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads": int(threads) if threads is not None else torch.get_num_threads(),
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "processor": platform.processor() or None,
            "cpus": os.cpu_count(),
        },
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seeds": find_seeds(config or {}),
    }


def _previous(path: Path, key: str) -> dict[str, Any] | None:
    """The ``computed`` entry of an earlier ``run.json`` at ``path`` for the same result key."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(earlier, dict) or earlier.get("key") != key:
        return None
    computed = earlier.get("computed")
    return computed if isinstance(computed, dict) else None


def run_record(
    path: Path,
    kind: str,
    config: Mapping[str, Any],
    threads: int | None,
    cached: bool,
    seconds: float,
) -> dict[str, Any]:
    """The content of a run directory's ``run.json``.

    ``environment`` is this invocation's; ``computed`` is that of the invocation that computed the
    metrics, with its wall-clock ``seconds``: this one when not ``cached``, else the one recorded
    in the earlier ``run.json`` at ``path`` for the same ``(kind, config)`` (None when unknown,
    e.g. the store was filled elsewhere).
    """
    key = config_hash(kind, config)
    now = environment(config, threads)
    computed = {**now, "seconds": seconds} if not cached else _previous(path, key)
    return {"kind": kind, "key": key, "cached": cached, "environment": now, "computed": computed}

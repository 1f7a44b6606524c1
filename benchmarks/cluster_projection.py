"""Project ``reproduce`` on N Dask workers from the compute times in a results store.

Run: ``.venv/bin/python benchmarks/cluster_projection.py --out runs [--preset full]
[--only NAME ...] [--workers 1 2 4 8 16 64]``.

Every row of the store records the seconds its computation took.  For each experiment the script
replays ``run(config, ctx)`` of the preset against the store with a context that computes nothing
(only for experiments with piece rows in the store; the others are one task each):
each ``ctx.cached`` / ``cached_all`` / ``map`` piece the run asks for is read from the store with
its seconds (a missing piece marks the experiment incomplete).  Those pieces are the units a
cluster schedules; an experiment that declares none is one task of its stored whole-run seconds.
The projection schedules all tasks longest first on ``N`` identical workers and prints the
makespan beside its two lower bounds, total / N and the longest task.  Times are those of the
machine and load that computed the rows; a piece's nested pieces count inside it as well
(they ran inside it), so sums over-count nesting, which is small here (optima of a few seconds).
"""

from __future__ import annotations

import argparse
import heapq
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from overparam.engine import Piece
from overparam.engine.pieces import item_pieces
from overparam.engine.registry import experiments
from overparam.engine.runner import prepare_run
from overparam.engine.store import config_hash

T = TypeVar("T")


class Missing(Exception):
    """A piece the run asks for is not in the store."""


class Replay:
    """A run context answering every piece from the store and recording ``(kind, seconds)``."""

    def __init__(self, db: sqlite3.Connection, name: str) -> None:
        self.db, self.name = db, name
        self.pieces: dict[str, tuple[str, float]] = {}

    def progress(self, items: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
        yield from items

    def log(self, message: str) -> None:
        pass

    def cached(self, key: str, config: Mapping[str, Any], compute: Callable[[], Any]) -> Any:
        kind = f"{self.name}/{key}"
        digest = config_hash(kind, config)
        row = self.db.execute(
            "SELECT metrics, seconds FROM results WHERE key = ?", (digest,)
        ).fetchone()
        if row is None:
            raise Missing(kind)
        self.pieces[digest] = (kind, float(row[1] or 0.0))
        return json.loads(row[0])

    def cached_all(self, pieces: Sequence[Piece], desc: str = "") -> list[Any]:
        return [self.cached(p.key, p.config, lambda: None) for p in pieces]

    def map(
        self,
        key: str,
        function: Callable[[Any], Any],
        items: Sequence[Any],
        config: Mapping[str, Any],
        desc: str = "",
    ) -> list[Any]:
        return self.cached_all(item_pieces(key, function, items, config))


def experiment_tasks(name: str, preset: str, out: str) -> tuple[list[tuple[str, float]], str]:
    """The tasks ``(label, seconds)`` of one experiment's stored run, and its status."""
    plan = prepare_run(name, preset, out=out)
    with sqlite3.connect(f"file:{plan.store.path}?mode=ro", uri=True) as db:
        row = db.execute(
            "SELECT seconds FROM results WHERE key = ?", (config_hash(plan.kind, plan.config),)
        ).fetchone()
        prefix = f"{name}/"
        has_pieces = db.execute(
            "SELECT 1 FROM results WHERE substr(kind, 1, ?) = ? LIMIT 1", (len(prefix), prefix)
        ).fetchone()
        if not has_pieces:  # it declares none (or never ran): one task, replaying would compute
            if row is None:
                return [], "not run"
            return [(plan.kind, float(row[0] or 0.0))], "stored (one task)"
        replay = Replay(db, name)
        try:
            plan.experiment.run(dict(plan.config), replay)  # type: ignore[arg-type]
        except Missing as missing:
            return sorted(replay.pieces.values()), f"incomplete: no {missing}"
    return sorted(replay.pieces.values()), "stored"


def makespan(tasks: list[float], workers: int) -> float:
    """Longest-first greedy schedule of ``tasks`` on ``workers`` identical workers."""
    loads = [0.0] * workers
    heapq.heapify(loads)
    for seconds in sorted(tasks, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + seconds)
    return max(loads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs")
    parser.add_argument("--preset", default="full")
    parser.add_argument("--only", nargs="+", default=None)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16, 64])
    args = parser.parse_args()
    tasks: list[tuple[str, float]] = []
    print(f"{'experiment':18s} {'tasks':>5s} {'min':>7s} {'longest min':>11s}  status")
    for name in args.only or list(experiments()):
        own, status = experiment_tasks(name, args.preset, args.out)
        if status == "not run":
            continue
        tasks += own
        top = max((s for _, s in own), default=0.0)
        total = sum(s for _, s in own)
        print(f"{name:18s} {len(own):5d} {total / 60:7.1f} {top / 60:11.1f}  {status}")
    seconds = [s for _, s in tasks]
    total = sum(seconds)
    label, longest = max(tasks, key=lambda t: t[1], default=("-", 0.0))
    print(f"\ntotal {total / 60:.1f} min; longest task {longest / 60:.1f} min ({label})")
    print(f"{'workers':>7s} {'projected min':>13s} {'total/N':>8s}  bound")
    for n in args.workers:
        bound = "longest task" if longest >= total / n else "total work"
        print(f"{n:7d} {makespan(seconds, n) / 60:13.1f} {total / n / 60:8.1f}  {bound}")


if __name__ == "__main__":
    main()

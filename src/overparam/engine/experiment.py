"""What an experiment is: a declared config, the claims it measures, and three pure functions.

An experiment never writes files itself.  ``run(config, ctx)`` returns metrics (JSON-able: numbers,
strings, lists, dicts; tensors and arrays are converted), ``judge(config, metrics)`` turns stored
metrics into verdicts on the claims, and ``plot(config, metrics)`` draws figures from stored metrics.
The engine caches, writes and reports; see :mod:`overparam.engine.runner`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from overparam.engine.overrides import check_bounds
from overparam.engine.pieces import Piece

T = TypeVar("T")
Config = dict[str, Any]
Metrics = dict[str, Any]


@dataclass(frozen=True)
class Claim:
    """A claim of the source: its catalogue id (``"A8"``), statement, and the source's value/words."""

    id: str
    statement: str
    source: Any


@dataclass(frozen=True)
class Verdict:
    """What we measured for one claim and whether it reproduces the source."""

    id: str
    measured: Any
    reproduced: bool
    note: str = ""


class RunContext(Protocol):
    """Services the engine gives to ``Experiment.run``."""

    def progress(self, items: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
        """Iterate with a progress bar (ETA) on long loops."""
        ...

    def cached(
        self, key: str, config: Mapping[str, Any], compute: Callable[[], Metrics]
    ) -> Metrics:
        """Return ``compute()`` stored under (key, config); a rerun or resumed run reuses it."""
        ...

    def cached_all(self, pieces: Sequence[Piece], desc: str = "") -> list[Metrics]:
        """``[ctx.cached(p.key, p.config, lambda: p.compute(ctx)) for p in pieces]``, the pieces
        independent of each other: on a cluster each missing one runs as its own task.

        Each result is stored as it finishes (under the same kind and config as ``cached``) and
        comes back JSON-converted.  Serially the pieces run in order and the first failure stops
        the run; on a cluster a failing piece (after its retries) is reported once the others
        have finished and been stored.  ``desc``: a progress bar over the pieces (none when
        empty).  See :class:`overparam.engine.pieces.Piece`.
        """
        ...

    def map(
        self,
        key: str,
        function: Callable[[Any], Metrics],
        items: Sequence[Any],
        config: Mapping[str, Any],
        desc: str = "",
    ) -> list[Metrics]:
        """``[function(item) for item in items]``, each item an independent, cached piece
        (:func:`overparam.engine.pieces.item_pieces` through ``cached_all``).

        ``function`` must be a module-level function (or a ``functools.partial`` of one) of the
        item alone: on a cluster each piece runs as its own task.  Each result is stored under
        (key, config, item) as it finishes and comes back JSON-converted, as from ``cached``.
        """
        ...

    def log(self, message: str) -> None:
        """Print one line of progress information."""
        ...


@dataclass(frozen=True)
class Experiment:
    """One registered experiment.

    Attributes:
        name: the registry name (``"lp-depth"``).
        title: one line: what it reproduces (paper, figure).
        claims: the claims it measures.
        presets: at least ``"quick"`` (under a minute on 2 cores) and ``"full"`` (source's scale).
        run: ``(config, ctx) -> metrics``.
        judge: ``(config, metrics) -> [Verdict, ...]``, one per claim id it can judge.
        plot: ``(config, metrics) -> {name: matplotlib Figure}``, or None.
        doc: the figure reproduced, expected result, runtime and the exact command.
        version: bump to invalidate cached results after a change of ``run``.
        threads: intra-op threads while ``run`` computes; 1 by default (small matrices, see
            :mod:`overparam._threads`), ``None`` keeps torch's setting (large convolutions).
        bounds: inclusive ``(low, high)`` ranges (``None``: no limit) of config keys whose values
            need more than the type and sign inferred from the presets, see
            :mod:`overparam.engine.overrides`.
    """

    name: str
    title: str
    claims: tuple[Claim, ...]
    presets: Mapping[str, Config]
    run: Callable[[Config, RunContext], Metrics]
    judge: Callable[[Config, Metrics], list[Verdict]]
    plot: Callable[[Config, Metrics], Mapping[str, Any]] | None = None
    doc: str = ""
    version: int = 1
    tags: tuple[str, ...] = field(default_factory=tuple)
    threads: int | None = 1
    bounds: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for preset in ("quick", "full"):
            if preset not in self.presets:
                raise ValueError(
                    f"experiment {self.name!r} must declare a {preset!r} preset, "
                    f"got {sorted(self.presets)}"
                )
        if not self.claims:
            raise ValueError(f"experiment {self.name!r} must declare at least one claim")
        check_bounds(self.name, self.presets, self.bounds)

"""Independent pieces of a run: what ``ctx.cached_all`` computes (and ``ctx.map`` declares).

A :class:`Piece` is one cached sub-result, stored under ``f"{experiment}/{key}"`` and ``config``
exactly as ``ctx.cached(key, config, ...)`` stores it.  Its ``compute`` is called with the run
context it executes under (on a cluster, the worker's), so that progress bars, log lines and nested
``ctx.cached`` calls inside a piece go there; it must be picklable (a module-level function or a
``functools.partial`` of one) and load its own data rather than capture large tensors.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from overparam.engine.store import to_jsonable

if TYPE_CHECKING:
    from overparam.engine.experiment import Metrics, RunContext


class Piece(NamedTuple):
    """One independent cached sub-result: its store key, store config and computation.

    Attributes:
        key: the sub-result's name; stored under the kind ``f"{experiment}/{key}"``.
        config: the store config (what the result depends on).
        compute: ``compute(ctx) -> metrics``, ``ctx`` being the context the piece runs under.
        label: how a failure names the piece (default: ``key``).
    """

    key: str
    config: Mapping[str, Any]
    compute: Callable[[RunContext], Metrics]
    label: str = ""

    @property
    def name(self) -> str:
        """``label``, else ``key``."""
        return self.label or self.key


def piece_config(config: Mapping[str, Any], item: Any) -> dict[str, Any]:
    """The store config of one ``ctx.map`` item: the run's config and the item."""
    return {"run": to_jsonable(dict(config)), "item": to_jsonable(item)}


def _call_item(function: Callable[[Any], Metrics], item: Any, ctx: RunContext) -> Metrics:
    return function(item)


def item_pieces(
    key: str, function: Callable[[Any], Metrics], items: Sequence[Any], config: Mapping[str, Any]
) -> list[Piece]:
    """The pieces of ``ctx.map(key, function, items, config)``: ``function(item)`` per item,
    stored under :func:`piece_config`."""
    return [
        Piece(
            key,
            piece_config(config, item),
            functools.partial(_call_item, function, item),
            f"{key}[{item!r}]",
        )
        for item in items
    ]

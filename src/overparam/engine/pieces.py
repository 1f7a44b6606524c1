"""How one piece of a run (a ``ctx.map`` item) is named in the results store."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from overparam.engine.store import to_jsonable


def piece_config(config: Mapping[str, Any], item: Any) -> dict[str, Any]:
    """The store config of one ``ctx.map`` item: the run's config and the item."""
    return {"run": to_jsonable(dict(config)), "item": to_jsonable(item)}

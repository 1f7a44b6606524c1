"""The claims table: claim, source value, measured value, reproduced yes/no."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any


def compact(value: Any) -> str:
    """A measured value for a table cell: numbers to 3 significant digits, nested mappings as
    ``key=value`` pairs (``outer.inner=...``), lists in brackets; ``None`` as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, Mapping):
        return " ".join(_pairs(value, ""))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(compact(v) for v in value) + "]"
    return json.dumps(value, default=str)


def _pairs(mapping: Mapping[str, Any], prefix: str) -> list[str]:
    out = []
    for key, v in mapping.items():
        name = f"{prefix}{key}"
        out += _pairs(v, name + ".") if isinstance(v, Mapping) else [f"{name}={compact(v)}"]
    return out


def _short(value: Any, width: int) -> str:
    text = " ".join(compact(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def claim_rows(summaries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per claim of every summary, in order."""
    rows = []
    for summary in summaries:
        for claim in summary["claims"]:
            rows.append({"experiment": summary["experiment"], **claim})
    return rows


def format_table(rows: Iterable[Mapping[str, Any]], width: int = 48, markdown: bool = False) -> str:
    """Render rows as a fixed-width text table (or a Markdown table)."""
    header = ["claim", "experiment", "source", "measured", "reproduced"]
    body = [
        [
            str(row["id"]),
            str(row["experiment"]),
            _short(row.get("source"), width),
            _short(row.get("measured"), width),
            "yes" if row.get("reproduced") else "NO",
        ]
        for row in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [
        max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)
    ]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*cells) for cells in body]
    return "\n".join(lines)


def tally(rows: Iterable[Mapping[str, Any]]) -> str:
    """``"N of M claims reproduced"``."""
    rows = list(rows)
    return f"{sum(bool(r.get('reproduced')) for r in rows)} of {len(rows)} claims reproduced"

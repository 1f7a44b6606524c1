"""The claims table: claim, source value, measured value, reproduced yes/no."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any


def _short(value: Any, width: int) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, separators=(",", ":"), default=str)
    text = " ".join(text.split())
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

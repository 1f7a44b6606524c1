"""The claims table: claim, source value, measured value, reproduced yes/no.

In the terminal the table fits ``width`` columns (long values wrapped, then cut with ``…``);
``claims.md`` and ``claims.json`` hold every value in full, and :func:`merge_claims` keeps the
rows of experiments not rerun (``reproduce --only``).  The HTML report is
:mod:`overparam.engine.html_report`.
"""

from __future__ import annotations

import json
import textwrap
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from overparam.engine.files import write_text
from overparam.engine.locking import key_lock


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


def claim_rows(summaries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per claim of every summary, in order, with its experiment, preset and figures.

    ``figures`` are the PNG paths relative to the output root (``lp-depth/quick/l4.png``).
    """
    rows = []
    for summary in summaries:
        directory = summary.get("directory", summary["experiment"])
        figures = [f"{directory}/{f}" for f in summary.get("figures", []) if f.endswith(".png")]
        for claim in summary["claims"]:
            rows.append(
                {
                    "experiment": summary["experiment"],
                    "preset": summary.get("preset", "quick"),
                    **claim,
                    "figures": figures,
                }
            )
    return rows


def merge_claims(
    old: Iterable[Mapping[str, Any]], new: Iterable[Mapping[str, Any]], order: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The claims table ``old`` updated by ``new``: the rows of every (experiment, preset) in
    ``new`` replace those of ``old``, the others are kept.

    Rows are ordered by preset (``quick``, ``full``, others), then by experiment as in ``order``
    (the registry's order; unknown names after, alphabetically), claims in their order.  A row
    without a ``preset`` (a table written before presets were recorded) counts as ``quick``.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rows, replace in ((old, False), (new, True)):
        fresh: set[tuple[str, str]] = set()
        for row in rows:
            key = (str(row.get("preset") or "quick"), str(row["experiment"]))
            if replace and key not in fresh:
                groups[key], fresh = [], fresh | {key}
            groups.setdefault(key, []).append({**row, "preset": key[0]})
    presets = ["quick", "full"]
    rank = {name: i for i, name in enumerate(order)}

    def sort_key(key: tuple[str, str]) -> tuple[int, str, int, str]:
        preset, name = key
        p = presets.index(preset) if preset in presets else len(presets)
        return (p, preset, rank.get(name, len(rank)), name)

    return [row for key in sorted(groups, key=sort_key) for row in groups[key]]


def _wrap(text: str, width: int, lines: int) -> list[str]:
    """``text`` wrapped to ``width`` columns, at most ``lines`` lines (the last ends in ``…``)."""
    wrapped = textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False) or ["-"]
    if len(wrapped) <= lines:
        return wrapped
    return wrapped[: lines - 1] + [wrapped[lines - 1][: width - 1] + "…"]


def format_table(
    rows: Iterable[Mapping[str, Any]], width: int = 100, markdown: bool = False, lines: int = 4
) -> str:
    """Render rows as a text table at most ``width`` columns wide (or the full Markdown table).

    The text table has the claim, its experiment, the verdict and the measured value (see
    :func:`compact`), wrapped over at most ``lines`` lines; a longer value ends in ``…`` and is
    complete in ``claims.md`` and ``report.html``.
    """
    rows = list(rows)
    if markdown:
        return claims_markdown(rows)
    header = ["claim", "experiment", "ok", "measured"]
    ids = max([len(header[0])] + [len(str(r["id"])) for r in rows])
    names = max([len(header[1])] + [len(str(r["experiment"])) for r in rows])
    left = [min(ids, 14), min(names, 24), 3]
    room = max(20, width - sum(left) - 2 * len(left))
    fmt = "  ".join(f"{{:{w}}}" for w in left) + "  {}"
    out = [fmt.format(*header), fmt.format(*("-" * w for w in [*left, room]))]
    for row in rows:
        cells = [str(row["id"]), str(row["experiment"]), "yes" if row.get("reproduced") else "NO"]
        cells = [c if len(c) <= w else c[: w - 1] + "…" for c, w in zip(cells, left, strict=True)]
        measured = _wrap(" ".join(compact(row.get("measured")).split()), room, lines)
        out.append(fmt.format(*cells, measured[0]).rstrip())
        out += [fmt.format("", "", "", more).rstrip() for more in measured[1:]]
    return "\n".join(out)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def claims_markdown(rows: Iterable[Mapping[str, Any]]) -> str:
    """The claims table in Markdown, one section per preset: the claim, its statement, the
    source's value, the measured value in full, the verdict, the note and links to the figures
    (paths relative to the output root, where ``claims.md`` lives)."""
    by_preset: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_preset.setdefault(str(row.get("preset") or "quick"), []).append(row)
    header = ["claim", "experiment", "statement", "source", "measured", "reproduced", "note"]
    out = []
    for preset, group in by_preset.items():
        out += [f"## {preset} preset: {tally(group)}", ""]
        out += ["| " + " | ".join([*header, "figures"]) + " |", "|" + "---|" * (len(header) + 1)]
        for row in group:
            figures = " ".join(
                f"[{Path(f).stem}]({f})" for f in row.get("figures", []) if isinstance(f, str)
            )
            cells = [
                str(row["id"]),
                f"[{row['experiment']}]({row['experiment']}/{preset}/summary.json)",
                _cell(row.get("statement", "")),
                _cell(compact(row.get("source"))),
                _cell(compact(row.get("measured"))),
                "yes" if row.get("reproduced") else "**no**",
                _cell(row.get("note", "")),
                figures or "-",
            ]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def tally(rows: Iterable[Mapping[str, Any]]) -> str:
    """``"N of M claims reproduced"``."""
    rows = list(rows)
    return f"{sum(bool(r.get('reproduced')) for r in rows)} of {len(rows)} claims reproduced"


def _replace_text(path: Path, text: str) -> None:
    write_text(path, text)  # atomic, and no temporary file left when interrupted


def write_claims(
    out: str | Path, rows: Iterable[Mapping[str, Any]], order: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Merge ``rows`` into ``out/claims.json`` and rewrite it and ``out/claims.md``.

    The rows of the experiments (and presets) in ``rows`` are replaced, those of others kept
    (:func:`merge_claims`); an unreadable ``claims.json`` is replaced with a warning.  Returns the
    merged table.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # one merge at a time: concurrent `reproduce --only` processes must not drop each other's rows
    with key_lock(out / "store.sqlite.locks" / "claims.lock", what="the claims table"):
        return _merge_claims_file(out, rows, order)


def _merge_claims_file(
    out: Path, rows: Iterable[Mapping[str, Any]], order: Sequence[str]
) -> list[dict[str, Any]]:
    path = out / "claims.json"
    old: list[dict[str, Any]] = []
    if path.exists():
        try:
            loaded = json.loads(path.read_text())
            if not isinstance(loaded, list) or not all(
                isinstance(r, dict) and "experiment" in r and "id" in r for r in loaded
            ):
                raise ValueError("not a list of claim rows")
            old = loaded
        except ValueError as error:
            warnings.warn(f"{path} is unreadable ({error}); rewriting it", stacklevel=2)
    merged = merge_claims(old, rows, order)
    _replace_text(path, json.dumps(merged, indent=2) + "\n")
    _replace_text(
        out / "claims.md", "# Claims: source says / we measured\n\n" + claims_markdown(merged)
    )
    return merged

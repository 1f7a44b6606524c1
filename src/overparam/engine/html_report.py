"""``report.html``: every claim, its measurement and its figures in one self-contained page.

Built only from stored results (:func:`overparam.engine.results.stored_runs`): the summaries,
``run.json`` records and PNG figures of the run directories; nothing is recomputed.  Figures are
inlined as base64 PNG and the style sheet is inline, so the file opens with no network access.
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from overparam.engine.registry import experiments
from overparam.engine.report import compact
from overparam.engine.results import StoredRun, preset_rank, stored_runs

SOURCES = {
    "A": "Arora, Cohen & Hazan 2018 (seeds 000, 001)",
    "X": "Xu, Min, Tarmoun, Mallada & Vidal 2023 (seed 002)",
    "T": "Tarmoun, França, Haeffele & Vidal 2021 (seed 003)",
    "S": "Soltanolkotabi and co-authors (seed 004)",
    "P": "practice: wall-clock training (this project's claims)",
}
NOT_MEASURED = "not measured by this run"

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9}
main{max-width:1500px;margin:0 auto;padding:1.2em 2em 4em}
h1{font-size:1.7em;margin:.3em 0}h2{font-size:1.35em;margin:0 0 .3em}h3{font-size:1.1em;margin:.2em 0}
a{color:#1a56b0;text-decoration:none}a:hover{text-decoration:underline}
code,pre,.mono{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:.87em}
pre.doc{white-space:pre-wrap;background:#fff;border-left:3px solid #c5cbd6;padding:.5em .8em;margin:.4em 0}
table{border-collapse:collapse}
table.claims{width:100%;background:#fff}
table.claims>thead>tr>th{position:sticky;top:0;background:#e8ebf0;z-index:1}
table.claims>tbody>tr>td,table.claims>thead>tr>th{border:1px solid #d5d9e0;padding:.35em .5em;
vertical-align:top;text-align:left}
table.claims td.note{font-size:.86em;color:#3a4150;min-width:20em;max-width:34em}
table.claims td.stmt{max-width:26em}
table.kv{font-size:.86em;margin:.1em 0}
table.kv td{border:none;border-bottom:1px dotted #dde1e7;padding:.05em .45em .05em 0;vertical-align:top}
table.kv td.k{color:#5a6272;white-space:nowrap;font-family:ui-monospace,Menlo,Consolas,monospace}
table.kv table.kv{font-size:1em}
table.kv.grid td.v{word-break:normal;overflow-wrap:normal}
table.kv th{font-weight:600;vertical-align:bottom;color:#5a6272;text-align:left;padding:0 .45em 0 0;
font-family:ui-monospace,Menlo,Consolas,monospace}
table.kv td.v{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-word}
.src{color:#5a6272;font-size:.88em;margin-top:.3em}
.yes,.no,.na{display:inline-block;border-radius:3px;padding:0 .45em;font-weight:600;font-size:.85em}
.yes{background:#d7f0dd;color:#135c28}.no{background:#fadcd9;color:#8a1c12}
.na{background:#eceef2;color:#5a6272}
.preset{font-size:.78em;text-transform:uppercase;letter-spacing:.04em;color:#5a6272;font-weight:600}
section.exp{background:#fff;border:1px solid #d5d9e0;border-radius:6px;padding:1em 1.2em;margin:1.4em 0}
.runs{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:1em}
.run{border:1px solid #e1e4ea;border-radius:5px;padding:.6em .8em;min-width:0}
figure{margin:.6em 0}figure img{max-width:100%;height:auto;border:1px solid #eceef2}
figcaption{font-size:.85em;color:#5a6272}
details{margin:.3em 0}summary{cursor:pointer;color:#1a56b0}
table.tally td,table.tally th{border:1px solid #d5d9e0;padding:.25em .7em;text-align:left;background:#fff}
nav.toc{columns:3 22em;font-size:.92em;margin:.5em 0 1em}
nav.toc div{break-inside:avoid}
.muted{color:#5a6272}.missing{color:#8a1c12}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def anchor(name: str) -> str:
    """The id of an experiment's section."""
    return "exp-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def _breakable(key: Any) -> str:
    """An escaped key that may wrap after ``_``, ``.`` and ``/`` (long column names)."""
    text = _e(key)
    for mark in ("_", ".", "/"):
        text = text.replace(mark, mark + "<wbr>")
    return text


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _grid(value: Mapping[str, Any]) -> str | None:
    """A mapping of at least two mappings with the same keys and scalar values as one grid
    (outer keys as rows, inner keys as columns); None when it has another shape."""
    inner = list(value.values())
    if len(inner) < 2 or not all(isinstance(v, Mapping) and v for v in inner):
        return None
    keys = list(inner[0])
    if any(list(v) != keys or not all(_scalar(x) for x in v.values()) for v in inner):
        return None
    head = "<tr><th></th>" + "".join(f"<th>{_breakable(k)}</th>" for k in keys) + "</tr>"
    body = "".join(
        f'<tr><td class="k">{_e(name)}</td>'
        + "".join(f'<td class="v">{value_html(row[k])}</td>' for k in keys)
        + "</tr>"
        for name, row in value.items()
    )
    return f'<table class="kv grid">{head}{body}</table>'


def value_html(value: Any) -> str:
    """A measured value, complete and readable: mappings as key/value tables (nested; a mapping
    of like mappings as a grid), lists of numbers inline, floats to 4 significant digits,
    ``None`` as a dash."""
    if isinstance(value, Mapping):
        grid = _grid(value)
        if grid is not None:
            return grid
        if not value:
            return '<span class="muted">{}</span>'
        rows = "".join(
            f'<tr><td class="k">{_e(k)}</td><td class="v">{value_html(v)}</td></tr>'
            for k, v in value.items()
        )
        return f'<table class="kv">{rows}</table>'
    if isinstance(value, list | tuple) and any(isinstance(v, Mapping) for v in value):
        return "<ol>" + "".join(f"<li>{value_html(v)}</li>" for v in value) + "</ol>"
    if isinstance(value, float):
        return _e(f"{value:.4g}")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(value_html(v) for v in value) + "]"
    return _e(compact(value))


def verdict_html(claim: Mapping[str, Any]) -> str:
    if claim.get("measured") is None and claim.get("note") == NOT_MEASURED:
        return '<span class="na">not measured</span>'
    return (
        '<span class="yes">yes</span>' if claim.get("reproduced") else '<span class="no">no</span>'
    )


def _measured(claim: Mapping[str, Any]) -> bool:
    return not (claim.get("measured") is None and claim.get("note") == NOT_MEASURED)


def _source_of(claim_id: str) -> str:
    return SOURCES.get(str(claim_id)[:1], "other")


def summary_html(runs: Sequence[StoredRun]) -> str:
    """Claims reproduced out of claims measured, per source and preset."""
    presets = sorted({r.preset for r in runs}, key=preset_rank)
    counts: dict[tuple[str, str], list[int]] = {}
    for run in runs:
        for claim in run.summary["claims"]:
            if _measured(claim):
                cell = counts.setdefault((_source_of(claim["id"]), run.preset), [0, 0])
                cell[0] += bool(claim.get("reproduced"))
                cell[1] += 1
    sources = [s for s in [*SOURCES.values(), "other"] if any(k[0] == s for k in counts)]
    head = "".join(f"<th>{_e(p)} preset</th>" for p in presets)
    body = ""
    for source in [*sources, "all"]:
        cells = ""
        for preset in presets:
            got = [v for (s, p), v in counts.items() if p == preset and source in (s, "all")]
            done, total = sum(v[0] for v in got), sum(v[1] for v in got)
            cells += f"<td>{done} of {total}</td>" if total else '<td class="muted">-</td>'
        label = "<b>all sources</b>" if source == "all" else _e(source)
        body += f"<tr><td>{label}</td>{cells}</tr>"
    return (
        '<table class="tally"><thead><tr><th>source (claims reproduced of claims measured)</th>'
        f"{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _claim_groups(runs: Sequence[StoredRun]) -> list[tuple[str, str, list[tuple[str, dict]]]]:
    """``(experiment, claim id, [(preset, claim), ...])`` in experiment and claim order."""
    groups: dict[tuple[str, str], list[tuple[str, dict]]] = {}
    for run in runs:
        for claim in run.summary["claims"]:
            groups.setdefault((run.experiment, str(claim["id"])), []).append((run.preset, claim))
    return [(name, cid, entries) for (name, cid), entries in groups.items()]


def _per_preset(entries: Sequence[tuple[str, dict]], cell: Any, label: bool) -> str:
    parts = []
    for preset, claim in entries:
        head = f'<div class="preset">{_e(preset)}</div>' if label else ""
        parts.append(f"<div>{head}{cell(claim)}</div>")
    return "".join(parts)


def claims_table_html(runs: Sequence[StoredRun]) -> str:
    """One row per claim (per experiment): statement, source, measured per preset, verdict, note."""
    rows = []
    for name, cid, entries in _claim_groups(runs):
        first = entries[0][1]
        label = len(entries) > 1
        notes = {c.get("note", "") for _, c in entries}
        note = (
            _e(first.get("note", ""))
            if len(notes) == 1
            else _per_preset(entries, lambda c: _e(c.get("note", "")), True)
        )
        rows.append(
            f'<tr class="claim" id="claim-{_e(name)}-{_e(cid)}">'
            f'<td><b>{_e(cid)}</b><br><a class="exp-link" href="#{anchor(name)}">{_e(name)}</a></td>'
            f'<td class="stmt">{_e(first.get("statement", ""))}'
            f'<div class="src">source: {value_html(first.get("source"))}</div></td>'
            f"<td>{_per_preset(entries, lambda c: value_html(c.get('measured')), label)}</td>"
            f"<td>{_per_preset(entries, verdict_html, label)}</td>"
            f'<td class="note">{note}</td></tr>'
        )
    return (
        '<table class="claims" id="claims"><thead><tr><th>claim</th><th>statement and source '
        "value</th><th>measured</th><th>reproduced</th><th>note: how it was measured, what "
        "differs</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def environment_html(record: Mapping[str, Any] | None) -> str:
    """The environment of a run (``run.json``): what computed it and this invocation."""
    if record is None:
        return '<p class="muted">no run.json (run written before environments were recorded)</p>'
    env = record.get("environment") or {}
    computed = record.get("computed")
    git = env.get("git") or {}
    commit = git.get("commit")
    line = {
        "package": f"overparam {env.get('package', {}).get('version', '?')}",
        "git commit": "not a git checkout"
        if commit is None
        else f"{commit[:12]}" + (" (uncommitted changes)" if git.get("dirty") else " (clean)"),
        "python / torch / numpy": f"{env.get('python')} / {env.get('torch')} / {env.get('numpy')}",
        "threads": env.get("threads"),
        "machine": env.get("machine"),
        "date": env.get("date"),
        "seeds": env.get("seeds") or "none in the config",
    }
    text = value_html(line)
    if record.get("cached"):
        if computed:
            what = f"computed {_e(computed.get('date'))} in {computed.get('seconds', 0):.1f} s"
            text += f"<p>Metrics read from the store; {what} with:</p>"
            text += environment_html({"environment": computed})
        else:
            text += (
                '<p class="muted">metrics read from the store; what computed them is unknown</p>'
            )
    return text


def _figures_html(run: StoredRun) -> str:
    if not run.figures:
        return '<p class="muted">no figures stored for this run (drawn with --no-plots?)</p>'
    parts = []
    for path in run.figures:
        try:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
        except OSError:
            parts.append(f'<p class="missing">figure {_e(path.name)} is listed but missing</p>')
            continue
        parts.append(
            f'<figure><img alt="{_e(run.experiment)}: {_e(path.stem)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{_e(path.stem)} '
            f"({_e(run.preset)} preset; PDF beside it in {_e(run.summary.get('directory', ''))})"
            "</figcaption></figure>"
        )
    return "".join(parts)


def run_html(run: StoredRun) -> str:
    """One preset's run of an experiment: runtime, config, environment, figures, verdicts."""
    s = run.summary
    seconds = float(s.get("seconds") or 0.0)
    state = f"computed in {seconds:.1f} s"
    if s.get("cached"):
        computed = (run.record or {}).get("computed") or {}
        state = "metrics read from the store" + (
            f" (computed in {computed['seconds']:.1f} s on {computed.get('date')})"
            if isinstance(computed.get("seconds"), int | float)
            else " (what computed them is not recorded)"
        )
    verdicts = "".join(
        f"<li><b>{_e(c['id'])}</b> {verdict_html(c)} <span class='note'>{_e(c.get('note', ''))}"
        "</span></li>"
        for c in s["claims"]
    )
    return (
        f'<div class="run" id="{anchor(run.experiment)}-{_e(run.preset)}">'
        f"<h3>{_e(run.preset)} preset</h3><p>{_e(state)}; command: <code>overparam run "
        f"{_e(run.experiment)} --{_e(run.preset)}</code>; files: <code>"
        f"{_e(s.get('directory', run.experiment))}/</code></p>"
        f"{_figures_html(run)}<ul>{verdicts}</ul>"
        f"<details><summary>config</summary>{value_html(s.get('config', {}))}</details>"
        f"<details><summary>environment</summary>{environment_html(run.record)}</details></div>"
    )


def experiment_html(name: str, runs: Sequence[StoredRun]) -> str:
    """The section of one experiment: title, claims, doc, and its runs side by side."""
    registered = experiments().get(name)
    title = runs[0].summary.get("title") or (registered.title if registered else name)
    doc = registered.doc.strip() if registered is not None and registered.doc else ""
    ids = ", ".join(
        f'<a href="#claim-{_e(name)}-{_e(c["id"])}">{_e(c["id"])}</a>'
        for c in runs[0].summary["claims"]
    )
    body = (
        f"<details open><summary>what it measures, how, runtime, command</summary><pre class='doc'>{_e(doc)}</pre></details>"
        if doc
        else ""
    )
    return (
        f'<section class="exp" id="{anchor(name)}"><h2>{_e(name)}</h2>'
        f"<p><b>{_e(title)}</b></p><p>claims: {ids}</p>{body}"
        f'<div class="runs">{"".join(run_html(r) for r in runs)}</div></section>'
    )


def _by_experiment(runs: Iterable[StoredRun]) -> dict[str, list[StoredRun]]:
    out: dict[str, list[StoredRun]] = {}
    for run in runs:
        out.setdefault(run.experiment, []).append(run)
    return out


def _toc(groups: Mapping[str, Sequence[StoredRun]]) -> str:
    items = []
    for name, runs in groups.items():
        marks = " ".join(
            f"{_e(r.preset)}: {sum(bool(c.get('reproduced')) for c in r.summary['claims'])}/"
            f"{len(r.summary['claims'])}"
            for r in runs
        )
        items.append(
            f'<div><a href="#{anchor(name)}">{_e(name)}</a> <span class="muted">{marks}</span></div>'
        )
    return '<nav class="toc">' + "".join(items) + "</nav>"


def _png(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}"></figure>'


def sweeps_html(root: str | Path) -> str:
    """One block per stored sweep (``<root>/sweeps/<NAME>/``): its figure and its CSV table."""
    base = Path(root) / "sweeps"
    blocks = []
    for where in sorted(p for p in base.glob("*") if p.is_dir()):
        parts = [
            f'<section class="exp" id="sweep-{anchor(where.name)}"><h2>sweep: {_e(where.name)}</h2>'
        ]
        if (where / "sweep.png").is_file():
            parts.append(_png(where / "sweep.png", f"sweep {where.name}"))
        try:
            with open(where / "sweep.csv", newline="") as handle:
                table = list(csv.reader(handle))
        except OSError:
            table = []
        if table:
            head = "".join(f"<th>{_breakable(c)}</th>" for c in table[0])
            body = "".join(
                "<tr>" + "".join(f'<td class="v">{_e(c)}</td>' for c in row) + "</tr>"
                for row in table[1:]
            )
            parts.append(f'<table class="kv grid"><tr>{head}</tr>{body}</table>')
        blocks.append("".join(parts) + "</section>")
    return "<h2>Sweeps</h2>" + "".join(blocks) if blocks else ""


def render_report(runs: Sequence[StoredRun], root: str | Path = "runs") -> str:
    """The whole page for ``runs`` (see :func:`overparam.engine.results.stored_runs`)."""
    groups = _by_experiment(runs)
    missing = [n for n in experiments() if n not in groups]
    not_run = (
        f"<p class='muted'>Registered but not in this output root: {_e(', '.join(missing))}.</p>"
        if missing
        else ""
    )
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>overparam: claims reproduced</title><style>{CSS}</style></head><body><main>"
        "<h1>overparam: what the sources claim and what we measured</h1>"
        f"<p class='muted'>Built {now} from the stored runs in <code>{_e(root)}</code> "
        "(nothing recomputed). Each claim links to its experiment's section; each section shows "
        "its runs (quick and full side by side where both exist) with config, runtime, figures "
        "and the environment that produced them.</p>"
        f"<h2>Summary</h2>{summary_html(runs)}{not_run}"
        f"<h2>Experiments</h2>{_toc(groups)}"
        f"<h2>Claims</h2>{claims_table_html(runs)}"
        + "".join(experiment_html(name, group) for name, group in groups.items())
        + sweeps_html(root)
        + "</main></body></html>"
    )


def write_report(root: str | Path) -> Path:
    """Write ``<root>/report.html`` from the runs stored under ``root`` and return its path."""
    root = Path(root)
    runs = stored_runs(root)
    if not runs:
        raise ValueError(f"no stored runs under {str(root)!r}: run `overparam reproduce` first")
    path = root / "report.html"
    tmp = path.with_name(f".report.html.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(render_report(runs, root), encoding="utf-8")
    tmp.replace(path)
    return path

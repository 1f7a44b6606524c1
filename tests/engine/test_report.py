"""Reports: the terminal table, claims.md / claims.json merging, run.json, report.html."""

import json
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from overparam.cli import main
from overparam.engine import Claim, Experiment, Verdict, register, run_experiment
from overparam.engine.environment import environment, find_seeds, git_state
from overparam.engine.html_report import render_report, value_html, write_report
from overparam.engine.report import (
    claim_rows,
    claims_markdown,
    compact,
    format_table,
    merge_claims,
    write_claims,
)
from overparam.engine.results import stored_runs

LONG = {f"depth{n}": {"gap": 0.1 / n, "lr": 1e-3 * n, "steps": 1000 * n} for n in range(1, 9)}


def _run(config, ctx):
    return {"value": config["n"] * 1.5, "curve": [float(k * k) for k in range(config["n"])]}


def _judge(config, metrics):
    return [Verdict("R1", {"value": metrics["value"], "per_depth": LONG}, True, "always")]


def _plot(config, metrics):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2))
    ax = fig.add_subplot()
    ax.plot(metrics["curve"], label="k^2")
    ax.set(title="toy", xlabel="k", ylabel="k^2")
    ax.legend()
    return {"curve": fig}


def _toy(name, claim_id):
    return register(
        Experiment(
            name=name,
            title=f"{name}: a toy for the report",
            claims=(Claim(claim_id, f"statement of {claim_id} <b>", "source value"),),
            presets={"quick": {"n": 4, "seed": 3}, "full": {"n": 6, "seed": 3}},
            run=_run,
            judge=lambda c, m, cid=claim_id: [
                Verdict(cid, {"value": m["value"], "per_depth": LONG}, cid != "R2", "a note")
            ],
            plot=_plot,
            doc="What it measures. Command: ``overparam run " + name + "``.",
        )
    )


TOY_A = _toy("report-toy-a", "R1")
TOY_B = _toy("report-toy-b", "R2")


def test_compact_cells_for_the_claims_table():
    value = {"steps": 50000, "l2": {"1": 0.016896352802125314}, "ok": True, "v": [1.0, None]}
    assert compact(value) == "steps=50000 l2.1=0.0169 ok=yes v=[1, -]"


def test_terminal_table_fits_100_columns_and_wraps():
    rows = [
        {"id": "A8", "experiment": "lp-depth", "measured": LONG, "reproduced": False},
        {"id": "A3", "experiment": "not-a-gradient", "measured": 1.09e-15, "reproduced": True},
    ]
    table = format_table(rows)
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert lines[2].startswith("A8") and "NO" in lines[2] and "depth1.gap=0.1" in lines[2]
    # wrapped over 4 lines at most, the cut marked; the next claim follows
    assert lines[5].endswith("…") and lines[6].startswith("A3") and "1.09e-15" in lines[6]
    assert "depth4.gap=0.025" in table  # values past the first line are kept, not cut away
    narrow = format_table(rows, width=60, lines=10)
    assert max(len(line) for line in narrow.splitlines()) <= 60


def test_claims_markdown_has_full_values_and_figure_links():
    summary = {
        "experiment": "x",
        "preset": "full",
        "directory": "x/full",
        "figures": ["curve.png", "curve.pdf"],
        "claims": [
            {"id": "C", "statement": "s|t", "source": 1, "measured": LONG, "reproduced": False}
        ],
    }
    text = claims_markdown(claim_rows([summary]))
    assert text.startswith("## full preset: 0 of 1 claims reproduced")
    assert "depth8.steps=8000" in text and "…" not in text  # nothing cut
    assert "[curve](x/full/curve.png)" in text and "curve.pdf" not in text
    assert "s\\|t" in text and "**no**" in text


def test_merge_claims_replaces_only_the_rerun_experiments():
    old = [
        {"experiment": "b", "preset": "quick", "id": "B1", "measured": 1},
        {"experiment": "a", "preset": "quick", "id": "A1", "measured": 1},
        {"experiment": "a", "preset": "quick", "id": "A2", "measured": 1},
        {"experiment": "a", "id": "legacy"},  # no preset recorded: quick
    ]
    new = [
        {"experiment": "a", "preset": "quick", "id": "A1", "measured": 2},
        {"experiment": "a", "preset": "full", "id": "A1", "measured": 3},
    ]
    merged = merge_claims(old, new, order=["a", "b"])
    assert [(r["experiment"], r["preset"], r["id"], r.get("measured")) for r in merged] == [
        ("a", "quick", "A1", 2),
        ("b", "quick", "B1", 1),
        ("a", "full", "A1", 3),
    ]


def test_reproduce_only_merges_the_claims_table(tmp_path, capsys):
    out = str(tmp_path)
    assert main(["reproduce", "--only", "report-toy-a", "report-toy-b", "--out", out]) == 0
    assert main(["reproduce", "--only", "report-toy-a", "--out", out, "--force"]) == 0
    printed = capsys.readouterr().out
    rows = json.loads((tmp_path / "claims.json").read_text())
    assert [(r["experiment"], r["id"]) for r in rows] == [
        ("report-toy-a", "R1"),
        ("report-toy-b", "R2"),
    ]
    markdown = (tmp_path / "claims.md").read_text()
    assert "| R2 |" in markdown and "[curve](report-toy-b/quick/curve.png)" in markdown
    assert f"report: {tmp_path / 'report.html'}" in printed
    assert (tmp_path / "report.html").is_file()


def test_unreadable_claims_json_is_replaced_with_a_warning(tmp_path):
    (tmp_path / "claims.json").write_text("{not json")
    rows = claim_rows([run_experiment("report-toy-b", out=tmp_path, quiet=True, plots=False)])
    with pytest.warns(UserWarning, match="claims.json is unreadable"):
        write_claims(tmp_path, rows)
    assert len(json.loads((tmp_path / "claims.json").read_text())) == 1


def test_run_json_records_the_environment(tmp_path):
    run_experiment("report-toy-a", out=tmp_path, quiet=True, plots=False)
    record = json.loads((tmp_path / "report-toy-a" / "quick" / "run.json").read_text())
    env = record["environment"]
    assert record["cached"] is False and record["computed"]["seconds"] >= 0
    assert env["seeds"] == {"seed": 3} and env["threads"] == 1
    assert env["package"]["version"] and env["python"].count(".") == 2 and env["torch"]
    assert env["machine"]["cpus"] >= 1 and env["date"].endswith("+00:00")
    assert set(env["git"]) == {"commit", "dirty"}
    # a second run reads the store and keeps what computed the metrics
    run_experiment("report-toy-a", out=tmp_path, quiet=True, plots=False)
    again = json.loads((tmp_path / "report-toy-a" / "quick" / "run.json").read_text())
    assert again["cached"] is True and again["computed"] == record["computed"]


def test_git_state_outside_a_checkout_and_seed_search(tmp_path):
    assert git_state(tmp_path) == {"commit": None, "dirty": None}
    assert find_seeds({"seed": 1, "data_seed": 2, "inner": {"seeds": [3]}, "n": 4}) == {
        "seed": 1,
        "data_seed": 2,
        "inner.seeds": [3],
    }
    assert environment()["seeds"] == {}


def test_git_state_of_a_dirty_checkout(tmp_path):
    try:
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not available")
    (tmp_path / "f").write_text("a")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env |= {"GIT_COMMITTER_EMAIL": "t@t", "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for args in (["add", "f"], ["commit", "-q", "-m", "x"]):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, env=env)
    clean = git_state(tmp_path)
    assert len(clean["commit"]) == 40 and clean["dirty"] is False
    (tmp_path / "f").write_text("b")
    assert git_state(tmp_path)["dirty"] is True


def test_quick_and_full_live_side_by_side(tmp_path):
    run_experiment("report-toy-a", "quick", out=tmp_path, quiet=True)
    run_experiment("report-toy-a", "full", out=tmp_path, quiet=True)
    for preset in ("quick", "full"):
        summary = json.loads((tmp_path / "report-toy-a" / preset / "summary.json").read_text())
        assert summary["preset"] == preset and summary["directory"] == f"report-toy-a/{preset}"
        assert (tmp_path / "report-toy-a" / preset / "curve.png").is_file()
    last = json.loads((tmp_path / "report-toy-a" / "summary.json").read_text())
    assert last["preset"] == "full"  # the last run, where older tools look
    runs = stored_runs(tmp_path)
    assert [(r.experiment, r.preset) for r in runs] == [
        ("report-toy-a", "quick"),
        ("report-toy-a", "full"),
    ]
    page = render_report(runs, tmp_path)
    assert 'id="exp-report-toy-a-quick"' in page and 'id="exp-report-toy-a-full"' in page
    assert page.count('class="claim"') == 1  # one row per claim, both presets inside it


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.hrefs, self.srcs, self.tags = set(), [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if "href" in attrs:
            self.hrefs.append(attrs["href"])
        if "src" in attrs:
            self.srcs.append(attrs["src"])


def test_report_is_self_contained_and_complete(tmp_path):
    for name in ("report-toy-a", "report-toy-b", "report-toy-a"):  # the second a: from the store
        run_experiment(name, out=tmp_path, quiet=True)
    path = write_report(tmp_path)
    page = path.read_text()
    links = _Links()
    links.feed(page)
    assert {"script", "link", "iframe"}.isdisjoint(links.tags)  # no external CSS or JS
    assert links.srcs and all(s.startswith("data:image/png;base64,") for s in links.srcs)
    assert links.hrefs and all(h.startswith("#") and h[1:] in links.ids for h in links.hrefs)
    assert "statement of R1 &lt;b&gt;" in page  # escaped, not markup
    assert "depth8" in page and ">8000<" in page  # the nested measured value in full
    assert "2 of 2" not in page and "1 of 2" in page  # R2 is judged not reproduced
    assert "Command: ``overparam run report-toy-a``" in page  # the experiment's doc
    assert page.count("metrics read from the store (computed in ") == 1


def test_value_html_is_complete_and_readable():
    grid = value_html({"a": {"x": 1.234567, "y": None}, "b": {"x": 2, "y": True}})
    assert 'class="kv grid"' in grid and "1.235" in grid and "yes" in grid and "<th>y</th>" in grid
    nested = value_html({"a": {"x": 1.0}, "c": [1e-9, 2]})  # unlike rows: nested key/values
    assert "grid" not in nested and "[1e-09, 2]" in nested and nested.count("<table") == 2
    assert value_html([{"k": 1}, {"k": 2}]).startswith("<ol>")
    assert value_html("<x>") == "&lt;x&gt;"


def test_legacy_directory_is_read_and_bad_roots_fail_clearly(tmp_path, capsys):
    legacy = tmp_path / "report-toy-b"
    legacy.mkdir()
    claims = [{"id": "R2", "statement": "s", "source": 1, "measured": 2, "reproduced": True}]
    summary = {"experiment": "report-toy-b", "preset": "quick", "claims": claims}
    (legacy / "summary.json").write_text(json.dumps({**summary, "figures": ["gone.png"]}))
    runs = stored_runs(tmp_path)
    assert [(r.experiment, r.preset, r.directory) for r in runs] == [
        ("report-toy-b", "quick", legacy)
    ]
    assert main(["report", "--out", str(tmp_path)]) == 0
    page = Path(capsys.readouterr().out.strip()).read_text()
    assert "gone.png is listed but missing" in page and "no run.json" in page
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", "--out", str(empty)]) == 2
    assert "no stored runs under" in capsys.readouterr().err
    assert main(["report", "--out", str(tmp_path / "nope")]) == 2
    assert "`out` must be a directory of runs" in capsys.readouterr().err


def test_report_shows_stored_sweeps(tmp_path):
    from matplotlib.figure import Figure

    run_experiment("report-toy-a", out=tmp_path, quiet=True, plots=False)
    where = tmp_path / "sweeps" / "report-toy-a"
    where.mkdir(parents=True)
    (where / "sweep.csv").write_text("n,R1 measured,R1 reproduced\n4,6,yes\n8,12,yes\n")
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([1, 2])
    fig.savefig(where / "sweep.png")
    page = write_report(tmp_path).read_text()
    links = _Links()
    links.feed(page)
    assert 'id="sweep-exp-report-toy-a"' in page and '<td class="v">12</td>' in page
    assert len(links.srcs) == 1 and links.srcs[0].startswith("data:image/png;base64,")


def test_concurrent_claims_merges_keep_every_experiment(tmp_path):
    """Writers of different experiments at once (two ``reproduce --only`` processes): every row
    survives, because the read-merge-write of ``claims.json`` holds a lock."""
    import threading

    names = [f"exp{k}" for k in range(8)]
    barrier = threading.Barrier(len(names))

    def write(name):
        barrier.wait()
        for _ in range(5):
            write_claims(tmp_path, [{"experiment": name, "preset": "quick", "id": "C1"}], names)

    threads = [threading.Thread(target=write, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rows = json.loads((tmp_path / "claims.json").read_text())
    assert [r["experiment"] for r in rows] == names
    assert not list(tmp_path.glob(".claims.*"))  # no temporary file left behind


def test_report_warns_about_an_unreadable_summary(tmp_path):
    run_experiment("report-toy-a", out=tmp_path, quiet=True, plots=False)
    run_experiment("report-toy-b", out=tmp_path, quiet=True, plots=False)
    (tmp_path / "report-toy-b" / "quick" / "summary.json").write_text("{truncated")
    with pytest.warns(UserWarning, match=r"skipping .*report-toy-b/quick/summary.json: not a "):
        runs = stored_runs(tmp_path)
    assert [(r.experiment, r.preset) for r in runs] == [("report-toy-a", "quick")]

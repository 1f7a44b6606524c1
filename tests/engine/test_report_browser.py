"""report.html in a real browser: headless Chromium (Debian's package) driven by Playwright.

Built from the quick runs of a few fast experiments that need no dataset (and one tiny full run,
so quick and full appear side by side).  The page must load with no console error and no network
request, every image must decode, the claims table must have one row per claim and every internal
link must resolve.  The screenshot is saved beside the report (``tmp_path``).
"""

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from overparam.engine import run_experiment
from overparam.engine.html_report import write_report

CHROMIUM = os.environ.get("OVERPARAM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
QUICK = ["toy-lp", "overparam-least-squares", "tarmoun-spectral", "sensing-samples"]
TINY_FULL = {  # toy-lp's full preset at quick sizes: a second preset in seconds
    "toy-lp": {"tol": 0.1, "steps": 10000, "etas": 16, "eta_range": [-4.0, 0.5]}
    | {"stability_points": 41, "stability_steps": 1000}
}

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None,
        reason="the Python package playwright is not installed (pip install playwright; no "
        "browser download is needed, Debian's chromium is used)",
    ),
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file(),
        reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, or set OVERPARAM_CHROMIUM)",
    ),
]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    summaries = [run_experiment(name, "quick", out=out, quiet=True) for name in QUICK]
    summaries += [
        run_experiment(name, "full", overrides, out=out, quiet=True)
        for name, overrides in TINY_FULL.items()
    ]
    claims = {(s["experiment"], c["id"]) for s in summaries for c in s["claims"]}
    figures = sum(len([f for f in s["figures"] if f.endswith(".png")]) for s in summaries)
    return write_report(out), len(claims), figures


def test_report_in_headless_chromium(report, tmp_path):
    from playwright.sync_api import sync_playwright

    path, claims, figures = report
    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.resolve().as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images, i => [i.complete, i.naturalWidth, i.naturalHeight])"
            )
            rows = page.locator("table#claims > tbody > tr").count()
            broken = page.evaluate(
                """Array.from(document.querySelectorAll('a[href]'))
                     .map(a => a.getAttribute('href'))
                     .filter(h => !h.startsWith('#') || !document.getElementById(h.slice(1)))"""
            )
            links = page.locator("a[href^='#']").count()
            page.locator("a.exp-link").first.click()  # a claim's link scrolls to its section
            scrolled = page.evaluate("window.scrollY")
            page.evaluate("window.scrollTo(0, 0)")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert all(not (u.startswith("http:") or u.startswith("https:")) for u in requests), requests
    assert len(images) == figures > len(QUICK)
    assert all(done and w > 0 and h > 0 for done, w, h in images), images
    assert rows == claims
    assert links >= 2 * claims and broken == []
    assert scrolled > 0
    assert shot.stat().st_size > 10_000

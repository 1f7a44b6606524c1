"""The experiment contract checked on tiny configs: one helper for every experiment module."""

from pathlib import Path

import pytest

from overparam.engine import get, run_experiment


def _run_and_check(name, overrides, out, *, all_reproduced=False, plots=True):
    """Run ``name`` at ``quick`` with ``overrides``; check one verdict per declared claim, each
    with a measured value (and reproduced, if asked), and the figures on disk."""
    summary = run_experiment(name, "quick", overrides, out=out, quiet=True, plots=plots)
    claims = {c["id"]: c for c in summary["claims"]}
    assert set(claims) == {c.id for c in get(name).claims}
    for claim in claims.values():
        assert claim["measured"] is not None, claim
        if all_reproduced:
            assert claim["reproduced"] is True, claim["note"]
    if plots:
        figures = summary["figures"]
        assert figures and all((Path(out) / summary["directory"] / f).exists() for f in figures)
    return summary


@pytest.fixture(scope="session")
def tiny_run():
    """``tiny_run(name, overrides, out, all_reproduced=False, plots=True) -> summary``."""
    return _run_and_check

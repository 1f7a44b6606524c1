"""The ``overparam`` command line: list, run, reproduce and sweep the registered experiments, and
write the report; ``--workers N`` / ``--scheduler ADDRESS`` run on a Dask cluster."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from overparam.engine.batch import Outcome, Request, run_requests
from overparam.engine.html_report import write_report
from overparam.engine.registry import experiments, get
from overparam.engine.report import claim_rows, format_table, tally, write_claims
from overparam.engine.runner import DEFAULT_OUT, parse_overrides, run_experiment
from overparam.engine.sweep import format_rows, parse_grid, run_sweep


def _preset(args: argparse.Namespace) -> str:
    return "full" if args.full else "quick"


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="small preset (default)")
    group.add_argument("--full", action="store_true", help="the source's scale")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output root (default: runs)")
    parser.add_argument("--force", action="store_true", help="recompute even if stored")
    parser.add_argument("--no-plots", action="store_true", help="skip figures")


def _add_cluster(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--workers", type=int, metavar="N", help="run on a local Dask cluster of N worker processes"
    )
    group.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on the Dask cluster at ADDRESS (tcp://host:8786)",
    )


def _cmd_list(args: argparse.Namespace) -> int:
    for name, experiment in experiments().items():
        ids = ",".join(c.id for c in experiment.claims)
        print(f"{name:28s} [{ids}] {experiment.title}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.set or [])
    try:
        summary = run_experiment(
            args.name, _preset(args), overrides, args.out, force=args.force, plots=not args.no_plots
        )
    except (ValueError, OSError):  # bad input or data: exit 2 in main
        raise
    except Exception as error:  # the experiment itself failed
        _close_progress_bars()
        print(f"overparam: error: {args.name} failed: {_reason(error)}", file=sys.stderr)
        return 1
    rows = claim_rows([summary])
    state = "from the store" if summary["cached"] else f"in {summary['seconds']:.1f} s"
    print(
        f"{args.name} ({summary['preset']}) {state} -> {args.out / summary.get('directory', args.name)}"
    )
    print(format_table(rows))
    print(tally(rows))
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    names = list(dict.fromkeys(args.only or experiments()))  # a name given twice runs once
    for name in names:  # a misspelt name is bad input, found before anything runs
        get(name)
    start = time.perf_counter()

    def progress(outcome: Outcome) -> None:
        name, summary = outcome.request.name, outcome.summary
        if summary is None:
            print(f"{name}: FAILED {outcome.error}", file=sys.stderr, flush=True)
        else:
            state = "stored" if summary["cached"] else f"{summary['seconds']:.1f} s"
            print(f"{name}: {state}", file=sys.stderr, flush=True)

    requests = [Request(name, _preset(args)) for name in names]
    with _cluster(args) as client:
        outcomes = run_requests(
            requests,
            args.out,
            client=client,
            force=args.force,
            plots=not args.no_plots,
            on_outcome=progress,
        )
    summaries = [o.summary for o in outcomes if o.summary is not None]
    failures = [(o.request.name, o.error) for o in outcomes if o.summary is None]
    rows = claim_rows(summaries)
    merged = write_claims(args.out, rows, list(experiments()))
    print(format_table(rows))
    print(
        f"{tally(rows)}; {len(failures)} experiment(s) failed; {time.perf_counter() - start:.0f} s"
    )
    for name, message in failures:
        print(f"FAILED {name}: {message}")
    print(f"claims ({len(merged)} rows, full values): {args.out / 'claims.md'}")
    if summaries:
        print(f"report: {write_report(args.out)}")
    return 1 if failures else 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    grid = parse_grid(args.grid or [])
    with _cluster(args) as client:
        result = run_sweep(
            args.name,
            grid,
            _preset(args),
            args.out,
            client=client,
            force=args.force,
            plots=not args.no_plots,
            metric=args.metric,
        )
    print(format_rows(result["rows"]))
    points, failed = len(result["rows"]), len(result["failures"])
    print(f"{points} point(s), {failed} failed; table and figure: {', '.join(result['files'])}")
    for overrides, message in result["failures"]:
        print(f"FAILED {overrides}: {message}")
    return 1 if failed else 0


@contextlib.contextmanager
def _cluster(args: argparse.Namespace) -> Iterator[Any]:
    """A Dask client for ``--workers N`` / ``--scheduler ADDRESS``, else ``None`` (serial)."""
    if args.workers is None and args.scheduler is None:
        yield None
        return
    from overparam.engine.distributed import close_client, open_client

    client = open_client(args.workers, args.scheduler)
    try:
        yield client
    finally:
        close_client(client)


def _cmd_report(args: argparse.Namespace) -> int:
    print(write_report(args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overparam", description="Implicit acceleration by overparameterization."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the registered experiments").set_defaults(func=_cmd_list)
    run = sub.add_parser("run", help="run one experiment")
    run.add_argument("name")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    _add_common(run)
    run.set_defaults(func=_cmd_run)
    rep = sub.add_parser("reproduce", help="run every experiment and print the claims table")
    rep.add_argument("--only", nargs="+", metavar="NAME", help="restrict to these experiments")
    _add_common(rep)
    _add_cluster(rep)
    rep.set_defaults(func=_cmd_reproduce)
    swp = sub.add_parser("sweep", help="run an experiment over a grid of config overrides")
    swp.add_argument("name")
    swp.add_argument(
        "--grid",
        action="append",
        metavar="KEY=V1,V2,...",
        required=True,
        help="values of one config key (repeat for a Cartesian product)",
    )
    swp.add_argument(
        "--metric", help="measured value to plot, as 'CLAIM:path' (default: the first number)"
    )
    _add_common(swp)
    _add_cluster(swp)
    swp.set_defaults(func=_cmd_sweep)
    html = sub.add_parser(
        "report", help="write OUT/report.html from the stored runs (no experiment is rerun)"
    )
    html.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output root (default: runs)")
    html.set_defaults(func=_cmd_report)
    return parser


def _check_out(args: argparse.Namespace) -> None:
    """``--out`` of a command that writes runs: an existing directory, or one it can create."""
    out = getattr(args, "out", None)
    if out is None or args.command not in ("run", "reproduce", "sweep"):
        return
    if out.exists() and not out.is_dir():
        raise ValueError(f"`--out` must be a directory of runs, got {str(out)!r} (a file)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"`--out` must be a directory of runs, got {str(out)!r} (cannot create it: "
            f"{error.strerror or error})"
        ) from None


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: finished results are kept, one line, exit 143."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def _reason(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Print a warning as one line, without the source line that raised it."""
    text = " ".join(str(message).split())
    print(f"overparam: warning: {text}", file=file or sys.stderr, flush=True)


def _close_progress_bars() -> None:
    """Clear the progress bars a failed or interrupted run left open, so its last line is ours."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _interrupted(args: argparse.Namespace, how: str = "interrupted") -> str:
    out = getattr(args, "out", None)
    if out is None or args.command not in ("run", "reproduce", "sweep"):
        return f"overparam: {how}"
    return (
        f"overparam: {how}; finished results are kept in {out} (store.sqlite and the run "
        "directories); rerun the same command to resume"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; exit status 0, 1 (an experiment failed), 2 (bad input), 130 (Ctrl-C),
    143 (SIGTERM).

    Every fault ends in one line on stderr; warnings print as ``overparam: warning: ...``.
    """
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings(), _on_sigterm():
        warnings.showwarning = _show_warning
        try:
            _check_out(args)
            return int(args.func(args))
        except (ValueError, OSError) as error:  # bad arguments or data; a failed download
            _close_progress_bars()
            print(f"overparam: error: {' '.join(str(error).split())}", file=sys.stderr)
            return 2
        except _Terminated:
            _close_progress_bars()
            print(_interrupted(args, "terminated (SIGTERM)"), file=sys.stderr)
            return 143
        except KeyboardInterrupt:
            _close_progress_bars()
            print(_interrupted(args), file=sys.stderr)
            return 130


@contextlib.contextmanager
def _on_sigterm() -> Iterator[None]:
    """Handle SIGTERM like Ctrl-C while ``main`` runs (in the main thread only), then restore."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``overparam`` command line: list, run and reproduce the registered experiments."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from overparam.engine.registry import experiments
from overparam.engine.report import claim_rows, format_table, tally
from overparam.engine.runner import DEFAULT_OUT, parse_overrides, run_experiment


def _preset(args: argparse.Namespace) -> str:
    return "full" if args.full else "quick"


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="small preset (default)")
    group.add_argument("--full", action="store_true", help="the source's scale")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output root (default: runs)")
    parser.add_argument("--force", action="store_true", help="recompute even if stored")
    parser.add_argument("--no-plots", action="store_true", help="skip figures")


def _cmd_list(args: argparse.Namespace) -> int:
    for name, experiment in experiments().items():
        ids = ",".join(c.id for c in experiment.claims)
        print(f"{name:28s} [{ids}] {experiment.title}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    summary = run_experiment(
        args.name,
        _preset(args),
        parse_overrides(args.set or []),
        args.out,
        force=args.force,
        plots=not args.no_plots,
    )
    rows = claim_rows([summary])
    state = "from the store" if summary["cached"] else f"in {summary['seconds']:.1f} s"
    print(f"{args.name} ({summary['preset']}) {state} -> {args.out / args.name}")
    print(format_table(rows))
    print(tally(rows))
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    names = args.only or list(experiments())
    summaries, failures = [], []
    start = time.perf_counter()
    for name in names:
        begin = time.perf_counter()
        try:
            summary = run_experiment(
                name, _preset(args), None, args.out, force=args.force, plots=not args.no_plots
            )
        except Exception as error:  # one broken experiment must not lose the others
            failures.append((name, f"{type(error).__name__}: {error}"))
            print(f"{name}: FAILED {type(error).__name__}: {error}", file=sys.stderr)
            continue
        summaries.append(summary)
        state = "stored" if summary["cached"] else f"{time.perf_counter() - begin:.1f} s"
        print(f"{name}: {state}", file=sys.stderr, flush=True)
    rows = claim_rows(summaries)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "claims.json").write_text(json.dumps(rows, indent=2))
    (args.out / "claims.md").write_text(format_table(rows, markdown=True) + "\n")
    print(format_table(rows))
    print(
        f"{tally(rows)}; {len(failures)} experiment(s) failed; {time.perf_counter() - start:.0f} s"
    )
    for name, message in failures:
        print(f"FAILED {name}: {message}")
    return 1 if failures else 0


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
    rep.set_defaults(func=_cmd_reproduce)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, OSError) as error:  # bad arguments or data; a failed download
        print(f"overparam: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

"""`tiframework compare`: arms of runs compared with intervals, tests and verdicts."""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

from tiframework.errors import UserError


def _compare(args: argparse.Namespace) -> int:
    for target in args.targets:  # refused before seconds of imports (globs and URLs are checked later)
        if "://" not in target and not glob.has_magic(target) and not Path(target).exists():
            raise UserError(f"{target}: no such run folder, sweep folder or journal file")
    # scipy, statsmodels, plotly, wandb: imported when the command runs, so --help stays fast
    from tiframework.reports.compare.report import compare
    from tiframework.reports.compare.verdicts import terminal

    done = compare(args.targets, by=args.by, study_name=args.study_name, out_dir=args.out, wandb=not args.no_wandb,
                   margin=args.margin, a=args.a, b=args.b)
    arms = ", ".join(f"{a['name']} (n={a['n']})" for a in done.result["arms"])
    print(f"arms: {arms}")
    for note in done.result["notes"]:
        print(f"note: {note}")
    print(terminal(done.result))
    print(f"report: {done.files['html']} (also report.md, comparison.json)")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="compare arms of runs (a sweep with arms:, a study, or run folders) with error bars and tests",
        description="Compare arms of training runs metric by metric: curves with 95% intervals over seeds, the "
        "step-0 baseline and gains, and for every pair of arms the difference at the chosen checkpoint and at the "
        "last evaluation with its interval, a paired (matched seeds) or Welch t-test, an effect size, Holm-corrected "
        "p-values and a one-line verdict. Writes comparison.json, report.md and a self-contained report.html, and "
        "logs a W&B run in the runs' group (offline unless W&B is configured).",
    )
    p.add_argument("targets", nargs="+", metavar="TARGET",
                   help="a sweep folder (runs/sweeps/<study>), a journal file, a database URL, or run folders "
                   "(globs are fine; a folder is searched for run folders)")
    p.add_argument("--by", action="append", default=[], metavar="KEY",
                   help="form arms by this config key (repeatable), e.g. --by embedding.vectors_per_token; "
                   "default: the arms a sweep recorded")
    p.add_argument("--study-name", help="the study, when the storage holds several")
    p.add_argument("--out", help="output folder (default: <sweep folder>/compare, or beside the run folders)")
    p.add_argument("--margin", type=float, default=0.02,
                   help="equivalence margin: 'A is as good as B' when A - B is shown within ±MARGIN by two one-sided "
                   "t-tests (TOST; default 0.02, about the seed-to-seed spread of a fidelity mean over 32 images)")
    p.add_argument("--a", metavar="ARM", help="the arm to call A (differences are A - B); default: the first arm")
    p.add_argument("--b", metavar="ARM", help="the arm to call B; default: the next arm")
    p.add_argument("--no-wandb", action="store_true", help="do not log the comparison as a W&B run")
    p.set_defaults(func=_compare)

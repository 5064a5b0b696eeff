"""`tiframework sweep` (run an Optuna sweep) and `tiframework sweep-report` (tables and plots)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tiframework.errors import UserError


def _sweep(args: argparse.Namespace) -> int:
    if not Path(args.sweep).is_file():  # refused before seconds of imports
        raise UserError(f"{args.sweep}: sweep file not found")
    # torch and friends: imported when the command runs, so --help stays fast
    import optuna

    from tiframework.sweeps.confirm import parse_confirm
    from tiframework.sweeps.launch import all_failed, run_sweep
    from tiframework.sweeps.population_size import parse_population

    # optuna prints through its own handler ("[I ...] A new study created in Journal"); through
    # ours, the CLI's filter keeps its warnings (a failed trial, one line) and drops its INFO.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    summary = run_sweep(args.sweep, args.overrides, storage=args.storage, n_trials=args.n_trials,
                        workers=args.workers, study_name=args.study_name, fresh=args.fresh,
                        population=None if args.population is None else parse_population(args.population),
                        confirm=False if args.no_confirm else parse_confirm(args.confirm) if args.confirm else None)
    print(json.dumps(summary, indent=2, default=str))
    failed = all_failed(summary)
    if failed:
        print(f"error: {failed}", file=sys.stderr)
        return 1
    where = args.storage or summary["folder"]
    print(f"report: tiframework sweep-report {where} --study-name {summary['study']}")
    return 0


def _report(args: argparse.Namespace) -> int:
    # optuna, matplotlib: imported when the command runs, so --help stays fast
    from tiframework.reports.sweep.report import write_report

    out = write_report(args.study, study_name=args.study_name, out_dir=args.out)
    print(f"report written to {out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="run an Optuna sweep (sweeps/<name>.yaml) over experiment settings",
        description="Run the trials of a sweep file. Each trial trains once per seed into "
        "<runs_dir>/sweeps/<study>/trial-<n>[-seed-<s>]/. The study is a journal file in that folder unless "
        "--storage names a PostgreSQL URL, which lets several machines (each running this same command) "
        "share one study. Re-running the command resumes the study up to --n-trials in total. Exits 1 when no trial "
        "completed and some failed, with the failure reasons counted. A worker trains several runs at once as one "
        "population (--population); each run's folder, scores and study record are those it would have alone.",
    )
    p.add_argument("sweep", help="sweep YAML, e.g. sweeps/vpt_lr_accum.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides for the base experiment, e.g. "
                   "model.preset=tiny training.max_steps=4 (see `tiframework config keys`)")
    p.add_argument("--storage", help="postgresql://user:pass@host:5432/db, or a journal file/folder "
                   "(default: <runs_dir>/sweeps/<study>/journal.log)")
    p.add_argument("--n-trials", type=int, help="trials in the study in total (default: the sweep's n_trials)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default: 1)")
    p.add_argument("--study-name", help="default: the sweep's study_name, else the file's stem")
    p.add_argument("--population", metavar="K|auto",
                   help="runs each worker trains at once through one frozen model, each scored, named and stored "
                   "as if it trained alone (K trials of an arms or grid sweep, K points asked of TPE); auto: from "
                   "the device and its free memory; 1: one run at a time. Pruning sweeps use 1 "
                   "(default: the sweep file's population:, else auto)")
    p.add_argument("--confirm", metavar="TOPxSEEDS",
                   help="after a search, train its TOP best configurations and the base experiment's settings "
                   "again on SEEDS fresh seeds as a comparison (study <study>-confirm), e.g. 3x5; default: the "
                   "sweep file's confirm:")
    p.add_argument("--no-confirm", action="store_true", help="skip the sweep file's confirmation stage")
    p.add_argument("--fresh", action="store_true",
                   help="start the study over: move the existing one (and its run folders) aside to "
                   "<study>-old-<time>, never deleting it; run it with no worker of that study running")
    p.set_defaults(func=_sweep)

    r = subparsers.add_parser(
        "sweep-report", help="tables, parameter importances and plots of a sweep's study",
        description="Write trials.csv, trials.md (with parameter importances) and PNG plots: optimization "
        "history, fidelity vs vectors per token (mean and std over seeds), plateau step vs learning rate.",
    )
    r.add_argument("study", metavar="STUDY_FOLDER_OR_STORAGE",
                   help="runs/sweeps/<study>/, its journal.log, or a postgresql:// URL")
    r.add_argument("--study-name", help="needed when the storage holds several studies")
    r.add_argument("--out", help="output folder (default: <study folder>/report, or ./sweep-report-<study>)")
    r.set_defaults(func=_report)

"""`tiframework eval`: score the saved checkpoints of a finished run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tiframework.errors import UserError


def _eval(args: argparse.Namespace) -> int:
    if not (Path(args.run_dir) / "config.yaml").is_file():  # refused before seconds of imports
        raise UserError(f"{args.run_dir}: not a run folder (no config.yaml); give runs/<experiment>/<run-id>")
    # torch and friends: imported when the command runs, so --help stays fast
    from tiframework.evaluation.rescore import evaluate_run

    overrides = list(args.overrides)
    if args.clip_model:
        overrides.append(f"eval.clip_model={args.clip_model}")
    if args.clip_pretrained:
        overrides.append(f"eval.clip_pretrained={args.clip_pretrained}")
    summary = evaluate_run(Path(args.run_dir), reference=args.reference, overrides=overrides)
    keys = ("best_step", "best_score", "plateau_step", "baseline_score")
    print(json.dumps({k: summary.get(k) for k in keys}, indent=2))
    print(f"wrote {Path(args.run_dir) / 'eval.csv'}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="score a finished run's checkpoints (CLIP fidelity/flexibility) into eval.csv",
        description="Generate images with every saved checkpoint of a run (and the step-0 init-text baseline) "
        "using the eval prompts and seeds, score them with CLIP against reference art, and write eval.csv "
        "plus best/plateau steps in summary.json; the eval.csv and summary.json it replaces are kept in the run's "
        "history/ folder, and summary.json records the eval settings that made the new table.",
    )
    p.add_argument("run_dir", help="a run folder, runs/<experiment>/<run-id>")
    p.add_argument("--reference", help="folder of reference art (default: eval.reference from the run's config)")
    p.add_argument("--clip-model", help="open_clip model name, e.g. ViT-L-14-quickgelu")
    p.add_argument("--clip-pretrained", help="local open_clip weights file for --clip-model")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of the run's config, e.g. eval.seeds=[0,1,2]")
    p.set_defaults(func=_eval)

"""`tiframework toyworld ...`: build the toy models, list characters, write datasets, the tagger."""

from __future__ import annotations

import argparse
from pathlib import Path

from tiframework.toyworld.characters import CHARACTERS, DEFAULT_N, materialize
from tiframework.toyworld.world import GROUPS


def register(subparsers) -> None:
    parser = subparsers.add_parser("toyworld", help="the procedural toy world: build models, list characters, "
                                   "write character datasets")
    sub = parser.add_subparsers(dest="toyworld_command", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="generate data and train every toy model from seeds")
    build.add_argument("--out", type=Path, default=None, help="output folder (default: the shipped weights folder)")
    build.add_argument("--budget-minutes", type=float, default=50.0,
                       help="wall-clock budget for all training (the shipped weights: 50 on 2 CPU cores)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--threads", type=int, default=0,
                       help="torch CPU threads (default 0: torch's default, every core; 2 threads ran the UNet "
                       "1.3x faster than 1 on an idle 2-core machine, 1 is better when other work shares it)")
    build.set_defaults(func=_build)
    chars = sub.add_parser("characters", help="list characters and attribute values")
    chars.set_defaults(func=_characters)
    data = sub.add_parser("dataset", help="write a character's images and captions to a folder")
    data.add_argument("--character", required=True)
    data.add_argument("--out", type=Path, required=True, help="parent folder; the dataset goes in a subfolder")
    data.add_argument("--n", type=int, default=None, help="number of images (default 24 train, 8 reference)")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--split", choices=("train", "reference"), default="train")
    data.set_defaults(func=_dataset)
    tagger = sub.add_parser("tagger", help="write the toy world's WD1.4-shaped tagger (model.onnx + "
                            "selected_tags.csv, built from the attribute classifier) for `tiframework tag`")
    tagger.add_argument("--out", type=Path, default=Path(".cache/toyworld/tagger"),
                        help="output folder (default: .cache/toyworld/tagger, where eval.tagger=toyworld finds it)")
    tagger.set_defaults(func=_tagger)


def _build(args: argparse.Namespace) -> int:
    # torch and friends: imported when the command runs, so --help stays fast
    from tiframework.toyworld.build import WEIGHTS_DIR, build, folder_size_mb

    out = args.out or WEIGHTS_DIR
    report = build(out, args.budget_minutes, args.seed, args.threads)
    print(f"wrote {out} ({folder_size_mb(out):.1f} MB) in {report.phases['total_seconds']['seconds']:.0f} s")
    return 0


def _characters(args: argparse.Namespace) -> int:
    for c in CHARACTERS.values():
        note = "held out of base training" if c.held_out else "seen in base training"
        emblem = ", untagged star emblem" if c.base.emblem else ""
        print(f"{c.name:6s} {', '.join(c.trait_tags())}{emblem}  [{note}]")
    print("\nattribute groups:")
    for group, values in GROUPS.items():
        print(f"  {group}: {', '.join(values)}")
    return 0


def _dataset(args: argparse.Namespace) -> int:
    n = args.n or DEFAULT_N[args.split]
    print(materialize(args.character, n, args.seed, args.out, args.split))
    return 0


def _tagger(args: argparse.Namespace) -> int:
    # onnx and torch: imported when the command runs, so --help stays fast
    from tiframework.toyworld.tagger import MODEL_FILE, TAGS_FILE, build_toy_tagger

    folder = build_toy_tagger(args.out)
    print(f"wrote {folder / MODEL_FILE} and {folder / TAGS_FILE}")
    return 0

"""Dataset commands: `tag`, `tags stats`, `tags prune`, `lint` (the guide's steps 2-4)."""

from __future__ import annotations

import argparse
import json
import sys

from tiframework.cli.options import add_model_options, model_from_args
from tiframework.configoptions import MASK_SUFFIX
from tiframework.data.images import MAX_PIXELS, list_images, split_tags
from tiframework.data.lint import (
    HASH_DISTANCE,
    MAX_RATIO,
    MIN_SIDE,
    dataset_images,
    exit_code,
    format_findings,
    lint_dataset,
)
from tiframework.data.tagger import TagOptions, tag_folder
from tiframework.data.tags import TRAIT_SHARE, make_variant, parse_replace, tag_stats

# A table cell, not the caption: a tag too long for a line is cut (the JSON output keeps it whole).
TAG_WIDTH = 80


def shown_tag(tag: str) -> str:
    """A tag as a table shows it: control characters (a NUL, a line break) escaped, never sent raw
    to the terminal, and a runaway tag cut to `TAG_WIDTH` with its length."""
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in tag)
    return text if len(text) <= TAG_WIDTH else f"{text[:TAG_WIDTH - 20]}... ({len(tag)} characters)"


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_tag(subparsers)
    _register_tags(subparsers)
    _register_lint(subparsers)


def _tag_list(values: list[str] | None) -> list[str]:
    """Repeatable comma-separated options: `--remove "a, b" --remove c` -> [a, b, c]."""
    return [t for v in values or [] for t in split_tags(v)]


# ---------------------------------------------------------------- tag


def _register_tag(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tag",
        help="caption images with a local WD1.4 tagger (ONNX)",
        description="Write <stem>.txt WD1.4 tag captions beside every image in DIR. Existing captions "
        "are kept unless --overwrite (which backs them up to <stem>.txt.bak first).",
    )
    p.add_argument("dir", metavar="DIR", help="folder of images")
    p.add_argument("--model", required=True, metavar="PATH", help="the tagger's model.onnx "
                   "(e.g. from SmilingWolf/wd-v1-4-convnext-tagger-v2)")
    p.add_argument("--tags", required=True, metavar="PATH", help="the selected_tags.csv from the same model repo")
    add_model_options(p, TagOptions)
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per model call (default: 8)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing captions, backing each up to <stem>.txt.bak (.bak.1, ...) first")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="onnxruntime provider: CUDA when it starts, else CPU (auto, default); or force one")
    p.set_defaults(func=_run_tag)


def _run_tag(args: argparse.Namespace) -> int:
    options = model_from_args(TagOptions, args)
    report = tag_folder(args.dir, args.model, args.tags, options, args.batch_size, args.overwrite, args.device)
    print(f"tagged {len(report.written)} image(s) on {report.provider}")
    if report.kept:
        print(f"kept {len(report.kept)} existing caption(s); pass --overwrite to replace them")
    if report.unchanged:
        print(f"{len(report.unchanged)} caption(s) already identical, left alone")
    if report.backups:
        print(f"backed up {len(report.backups)} old caption(s) (*.txt.bak)")
    if report.skipped:
        print(f"skipped {len(report.skipped)} image(s):", file=sys.stderr)
        for path, why in report.skipped:
            print(f"  {path.name}: {why}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- tags stats / prune


def _register_tags(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tags", help="tag statistics and pruned dataset variants",
                              description="Inspect caption tags and write pruned dataset variants.")
    sub = p.add_subparsers(dest="tags_command", metavar="ACTION")
    p.set_defaults(func=lambda _args: (p.print_help(), 2)[1])

    stats = sub.add_parser("stats", help="how many images carry each tag",
                           description="Count tags over DIR's captions; tags in most images are likely "
                           "character traits to prune.")
    stats.add_argument("dir", metavar="DIR", help="folder of images with .txt captions")
    stats.add_argument("--threshold", type=float, default=TRAIT_SHARE, metavar="SHARE",
                       help=f"flag tags in at least this share of images as traits (default: {TRAIT_SHARE:g})")
    stats.add_argument("--top", type=int, default=None, metavar="N", help="show only the N most common tags")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(func=_run_stats)

    prune = sub.add_parser("prune", help="write a pruned copy (variant) of a dataset",
                           description="Write DIR's images (linked) with pruned captions to --out, plus "
                           "variant.yaml recording the rules. DIR is never modified.")
    prune.add_argument("dir", metavar="DIR", help="source folder of images with .txt captions")
    prune.add_argument("--out", required=True, metavar="DIR2", help="variant folder to write (replaced if a variant)")
    prune.add_argument("--remove", action="append", metavar="TAGS",
                       help='comma-separated tags to delete, e.g. "black gloves, ahoge" (repeatable)')
    prune.add_argument("--auto", type=float, default=None, metavar="SHARE",
                       help="also delete every tag found in at least this share of images, e.g. 0.6")
    prune.add_argument("--replace", action="append", metavar="OLD=NEW",
                       help='comma-separated replacements, e.g. "nude=nsfw,nipples=nsfw" (repeatable)')
    prune.add_argument("--keep", action="append", metavar="TAGS",
                       help="comma-separated tags that --auto must not delete (repeatable)")
    prune.set_defaults(func=_run_prune)


def _run_stats(args: argparse.Namespace) -> int:

    stats = tag_stats(args.dir, args.threshold)
    n_images = len(list_images(args.dir))
    shown = stats[: args.top] if args.top else stats
    if args.json:
        payload = {"images": n_images, "threshold": args.threshold,
                   "tags": [{"tag": s.tag, "count": s.count, "share": s.share, "trait": s.trait} for s in shown]}
        print(json.dumps(payload, indent=2, ensure_ascii=False))
        return 0
    print(f"{n_images} images, {len(stats)} distinct tags")
    print(f"{'count':>6} {'share':>6}  tag")
    for s in shown:
        print(f"{s.count:>6} {s.share:>6.0%}  {shown_tag(s.tag)}{'  *' if s.trait else ''}")
    if any(s.trait for s in stats):
        print(f"* in >= {args.threshold:.0%} of images: likely a character trait; prune it with "
              f"`tags prune --remove` or `--auto {args.threshold:g}`")
    return 0


def _run_prune(args: argparse.Namespace) -> int:
    replace: dict[str, str] = {}
    for value in args.replace or []:
        replace.update(parse_replace(value))
    report = make_variant(args.dir, args.out, remove=_tag_list(args.remove), auto=args.auto,
                          replace=replace, keep=_tag_list(args.keep))
    record = report.record
    links = ", ".join(f"{n} {how}" for how, n in record["links"].items())
    print(f"wrote variant {report.out}: {report.images} images ({links}), {record['captions']} captions")
    for tag, n in record["removed"].items():
        print(f"  removed {tag!r} from {n} caption(s)")
    for tag, r in record["replaced"].items():
        print(f"  replaced {tag!r} by {r['to']!r} in {r['count']} caption(s)")
    if not record["removed"] and not record["replaced"]:
        print("  no caption changed: the rules matched no tag")
    return 0


# ---------------------------------------------------------------- lint


def _register_lint(subparsers: argparse._SubParsersAction) -> None:

    p = subparsers.add_parser(
        "lint",
        help="check a dataset for broken, tiny, extreme or duplicate images and bad captions",
        description="Check DIR before training. Exit status 1 when there are errors, 0 with warnings only.",
    )
    p.add_argument("dir", metavar="DIR", help="folder of images with .txt captions")
    p.add_argument("--name", metavar="EMBEDDING", help="the embedding name; an error if a caption contains it")
    p.add_argument("--json", action="store_true", help="print findings as JSON")
    p.add_argument("--min-side", type=int, default=MIN_SIDE, metavar="PX",
                   help=f"warn when an image's shorter side is below this (default: {MIN_SIDE})")
    p.add_argument("--max-ratio", type=float, default=MAX_RATIO, metavar="R",
                   help=f"warn when long side / short side exceeds this (default: {MAX_RATIO:g})")
    p.add_argument("--max-megapixels", type=float, default=MAX_PIXELS / 1e6, metavar="MP",
                   help=f"refuse (error) images over this many megapixels, read from the header before "
                   f"decoding (default: {MAX_PIXELS / 1e6:g})")
    p.add_argument("--hash-distance", type=int, default=HASH_DISTANCE, metavar="BITS",
                   help=f"near-duplicate when perceptual hashes differ in at most this many of 64 bits "
                   f"(default: {HASH_DISTANCE}; -1 turns the check off)")
    p.add_argument("--mask-suffix", default=MASK_SUFFIX, metavar="SUFFIX",
                   help=f"<image stem>SUFFIX is that image's loss-mask file, checked as a mask, not an image "
                   f"(training.mask_suffix; default: {MASK_SUFFIX})")
    p.set_defaults(func=_run_lint)


def _run_lint(args: argparse.Namespace) -> int:

    findings = lint_dataset(args.dir, args.name, args.min_side, args.max_ratio,
                            int(args.max_megapixels * 1_000_000), args.hash_distance, args.mask_suffix)
    n_images = len(dataset_images(args.dir, args.mask_suffix)[0])
    if args.json:
        errors = sum(f.severity == "error" for f in findings)
        payload = {"folder": args.dir, "images": n_images, "errors": errors,
                   "warnings": len(findings) - errors, "findings": [f.to_dict() for f in findings]}
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        print(format_findings(findings, n_images))
    return exit_code(findings)

"""`tiframework embedding create|inspect|convert`: make, look into and convert embedding files.

torch, diffusers and the embeddings module are imported inside the handlers so that
`tiframework --help` does not pay for them; the options come from the typed config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import get_args

from tiframework.cli.options import add_model_options, model_from_args
from tiframework.config import EmbeddingConfig, EmbeddingFormat, ModelConfig
from tiframework.data.images import captions_by_image
from tiframework.errors import UserError
from tiframework.sd.embedding_paths import check_embedding_path

FORMAT_CHOICES = get_args(EmbeddingFormat)
EMBEDDING_FLAGS = {"vectors_per_token": "--vpt"}
FORMAT_HELP = ("file format: a1111-pt (.pt), a1111-safetensors (.safetensors, 'emb_params'), or diffusers "
               "({token: vectors}, .safetensors or .bin); default: from OUT's extension "
               "(.pt -> a1111-pt, .safetensors -> a1111-safetensors, .bin -> diffusers)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embedding", help="create, inspect or convert embedding files",
        description="Create an embedding from initialization text, inspect one, or convert between "
                    "the A1111 .pt, A1111/kohya .safetensors and diffusers formats.",
    )
    sub = parser.add_subparsers(dest="embedding_command", metavar="ACTION", required=True)
    _register_create(sub)

    inspect = sub.add_parser("inspect", help="show an embedding's name, step, vectors, width and norms",
                             description="Show what an embedding file holds; any supported format.")
    inspect.add_argument("file", metavar="FILE", help="embedding file (.pt, .safetensors or .bin)")
    inspect.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    vocab = inspect.add_mutually_exclusive_group()
    vocab.add_argument("--model", metavar="PRESET", help="also show each vector against this model's vocabulary: "
                       "norm relative to the median token's, cosine to --init-text, nearest tokens")
    vocab.add_argument("--model-path", metavar="PATH", help="as --model, a diffusers folder or SD 1.x checkpoint")
    inspect.add_argument("--init-text", default=None, help="with --model: the init text to measure each vector's "
                         "cosine against (spread over the vectors as A1111 does)")
    inspect.add_argument("--top-k", type=int, default=5, help="with --model: nearest tokens shown per vector")
    inspect.set_defaults(func=cmd_inspect)

    convert = sub.add_parser("convert", help="convert an embedding file to another format",
                             description="Read any supported embedding file and write it in another format.")
    convert.add_argument("input", metavar="IN", help="embedding file to read")
    convert.add_argument("output", metavar="OUT", help="file to write")
    convert.add_argument("--format", choices=FORMAT_CHOICES, default=None, help=FORMAT_HELP)
    convert.add_argument("--name", default=None,
                         help="rename the embedding (the prompt token in diffusers' format); default: keep it")
    convert.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    convert.set_defaults(func=cmd_convert)


def _register_create(sub: argparse._SubParsersAction) -> None:
    create = sub.add_parser(
        "create", help="create a new embedding from initialization text",
        description="Create an embedding whose vectors start as the model's token rows of --init-text "
                    "(A1111's 'Create embedding'). The init text may have at most --vpt tokens.",
    )
    source = create.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="PRESET",
                        help="built-in model preset: tiny, sd15-random or toyworld")
    source.add_argument("--model-path", metavar="PATH",
                        help="a diffusers folder or an SD 1.x checkpoint file (.safetensors or .ckpt)")
    add_model_options(create, EmbeddingConfig, flags=EMBEDDING_FLAGS, required=("name",))
    create.add_argument("--out", required=True, metavar="FILE", help="file to write (.pt, .safetensors or .bin)")
    create.add_argument("--dataset", metavar="DIR",
                        help="training images with .txt captions; the name must not be one of their tags")
    create.add_argument("--format", choices=FORMAT_CHOICES, default=None, help=FORMAT_HELP)
    create.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    create.set_defaults(func=cmd_create)


def _refuse_overwrite(path: Path, overwrite: bool) -> None:
    # An embedding file is all of a run's progress; replacing one is never the default.
    if path.exists() and not overwrite:
        raise UserError(f"{path}: already exists; pass --overwrite to replace it or choose another --out")


def cmd_create(args: argparse.Namespace) -> int:
    # torch and friends: imported when the command runs, so --help stays fast
    from tiframework.sd.embeddings import (
        create,
        resolve_format,
        save_embedding,
    )
    from tiframework.sd.models import load_model

    out = Path(args.out)
    spec = model_from_args(EmbeddingConfig, args, flags=EMBEDDING_FLAGS)
    fmt = resolve_format(out, args.format)  # fail on a bad name before loading a model
    _refuse_overwrite(out, args.overwrite)
    captions = captions_by_image(args.dataset) if args.dataset else None
    parts = load_model(ModelConfig(path=args.model_path) if args.model_path else ModelConfig(preset=args.model))
    emb = create(spec, parts, captions)
    save_embedding(emb, out, fmt)
    print(f"wrote {out} ({fmt}): {emb.name!r}, {emb.n_vectors} vector(s) of width {emb.width}")
    return 0


def format_text(info: dict) -> str:
    """`embedding inspect` as aligned `key: value` lines."""
    checkpoint = info["sd_checkpoint_name"] or "-"
    if info["sd_checkpoint"]:
        checkpoint += f" [{info['sd_checkpoint']}]"
    rows = [
        ("file", info["file"]),
        ("format", info["format"]),
        ("name", info["name"]),
        ("step", info["step"]),
        ("vectors", info["vectors"]),
        ("width", f"{info['width']} ({info['model_family']})"),
        ("checkpoint", checkpoint),
        ("norms", " ".join(f"{n:.4f}" for n in info["norms"])),
    ]
    return "\n".join(f"{key + ':':<12}{value}" for key, value in rows)


def cmd_inspect(args: argparse.Namespace) -> int:
    check_embedding_path(Path(args.file))  # a wrong path costs no torch import
    # torch and friends: imported when the command runs, so --help stays fast
    import torch

    from tiframework.sd.embeddings import describe, load_embedding

    emb = load_embedding(args.file, finite=False)  # inspect shows a diverged embedding; other commands refuse it
    info = describe(emb, args.file)
    report = _telemetry(args, emb) if (args.model or args.model_path) else None
    if report is not None:
        info["telemetry"] = [r.as_dict() for r in report]
    print(json.dumps(info, indent=2) if args.json else format_text(info))
    if report is not None and not args.json:
        from tiframework.sd.telemetry import format_telemetry

        print(format_telemetry(report))
    if not torch.isfinite(emb.vectors).all():
        print(f"warning: {args.file}: some vectors hold NaN/Inf values (a run that diverged); "
              "training, eval and convert refuse it", file=sys.stderr)
        return 1
    return 0


def _telemetry(args: argparse.Namespace, emb):
    """Each vector against the model's vocabulary (`sd.telemetry`); a warning when still its init text."""
    from tiframework.sd.embeddings import init_vectors
    from tiframework.sd.models import load_model
    from tiframework.sd.telemetry import still_init, vector_telemetry
    from tiframework.sd.text import prompt_token_ids

    parts = load_model(ModelConfig(path=args.model_path) if args.model_path else ModelConfig(preset=args.model))
    table = parts.text_encoder.get_input_embeddings().weight
    if emb.width != table.shape[1]:
        raise UserError(f"{args.file}: width {emb.width}, but the model's tokens have width {table.shape[1]}")
    init = None
    if args.init_text is not None:
        ids = prompt_token_ids(parts.tokenizer, args.init_text, None, 0, parts.vocab_size)
        init = init_vectors(table[ids].detach() if ids else table[:0].detach(), emb.n_vectors, emb.width)
    report = vector_telemetry(emb.vectors, table, parts.tokenizer, init, k=args.top_k)
    if still_init(report):
        print(f"warning: {args.file}: every vector is still within cosine 0.99 of --init-text: the embedding is "
              "essentially its init text", file=sys.stderr)
    return report


def cmd_convert(args: argparse.Namespace) -> int:
    check_embedding_path(Path(args.input))  # a wrong path costs no torch import
    # torch and friends: imported when the command runs, so --help stays fast
    from tiframework.sd.embeddings import check_name, load_embedding, resolve_format, save_embedding
    from tiframework.sd.tokenizer import clip_tokenizer

    out = Path(args.output)
    fmt = resolve_format(out, args.format)
    _refuse_overwrite(out, args.overwrite)
    emb = load_embedding(args.input)
    if args.name:
        emb.name = check_name(args.name, clip_tokenizer())
    save_embedding(emb, out, fmt)
    print(f"wrote {out} ({fmt}) from {args.input} ({emb.file_format})")
    return 0

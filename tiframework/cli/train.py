"""`tiframework train` and `tiframework config`."""

from __future__ import annotations

import argparse
import json

from tiframework.config import describe_keys, load_config, to_yaml
from tiframework.training.preflight import preflight

OVERRIDE_HELP = ("dotted key=value overrides, e.g. training.max_steps=20 embedding.vectors_per_token=2 "
                 "resume=runs/x/y/embeddings/mychar-500.pt (see `tiframework config keys`)")


def _train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    preflight(cfg, args.fresh)  # a refused input costs no torch import
    # torch, diffusers and Lightning (seconds): imported only once the input has passed
    from tiframework.training.train import train

    summary = train(cfg, fresh=args.fresh)
    shown = {k: v for k, v in summary.items() if k not in ("vector_norms", "eval_settings")}  # in summary.json
    print(json.dumps(shown, indent=2))
    print(f"run folder: {summary['run_dir']}")
    return 1 if summary.get("stopped") else 0


def _show(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    print(to_yaml(cfg), end="")
    if not args.no_resolve:
        print(resolved_comment(cfg))
    return 0


def resolved_comment(cfg) -> str:
    """What the `auto` choices become on this machine (and on a GPU, when this one has none),
    as YAML comments, so the printed config still loads."""
    # torch and diffusers: imported here, so `config keys` and --help stay fast
    from tiframework.errors import UserError
    from tiframework.sd.models import unet_parameters
    from tiframework.sd.runtime import Machine, detect_machine, resolve_runtime

    try:
        params = unet_parameters(cfg.model)
        size = f"{params / 1e6:.1f}M UNet parameters"
    except UserError as exc:
        params, size = 0, f"UNet size unknown: {exc}"
    here = detect_machine(cfg.training.device if cfg.training.device != "cuda" else "auto")
    machines = [here] if here.device == "cuda" else [here, Machine.cuda(bf16=True, name="a CUDA GPU with bf16 (float16 without)")]
    model = cfg.model.path or f"preset {cfg.model.preset}"
    lines = [f"# resolved for {model} ({size}):"]
    for machine in machines:
        rt = resolve_runtime(cfg, machine, params)
        lines.append(f"#   on {machine.name if machine.device == 'cuda' else 'this CPU'}: "
                     f"model.dtype={rt.weight_dtype} training.precision={rt.precision} "
                     f"training.gradient_checkpointing={str(rt.gradient_checkpointing).lower()} "
                     f"training.compile={str(rt.compile).lower()} "
                     f"VAE {'offloaded after latent caching' if rt.offload_vae else 'kept in place'}")
    return "\n".join(lines)


def _keys(args: argparse.Namespace) -> int:
    for key, default, text in describe_keys():
        print(f"{key:34} {default:28} {text}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train an embedding from an experiment config",
        description="Train a textual-inversion embedding. Writes runs/<experiment>/<run-id>/ with the resolved "
        "config.yaml, metrics.csv, embeddings/ (A1111 .pt + .safetensors every training.save_every steps, "
        "optimizer state beside them) and previews/.",
    )
    p.add_argument("config", help="experiment YAML, e.g. experiments/quickstart.yaml")
    p.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
    p.add_argument("--fresh", action="store_true",
                   help="start logging.run_id anew when a run of that id exists: the old run folder is moved "
                   "aside (to .<run-id>.replaced-<time> beside it), never overwritten")
    p.set_defaults(func=_train)

    c = subparsers.add_parser("config", help="show resolved configs and every config key")
    csub = c.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    s = csub.add_parser("show", help="print the resolved config (extends + overrides applied)")
    s.add_argument("config", nargs="?", help="experiment YAML (default: built-in defaults)")
    s.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
    s.add_argument("--no-resolve", action="store_true",
                   help="only the config, without the comment saying what the 'auto' choices resolve to")
    s.set_defaults(func=_show)
    k = csub.add_parser("keys", help="list every config key with its default and meaning")
    k.set_defaults(func=_keys)

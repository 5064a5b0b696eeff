"""Where a dataset comes from: a folder, or a toy-world spec generated on first use.

`data.path` and `eval.reference` take a folder of images with same-stem `.txt` captions,
or `toyworld:<character>[:train|:reference][?n=<images>&seed=<seed>&pruned=1]`, a toy-world
dataset written once into `.cache/toyworld/` and reused while the world's code is unchanged.
"""

from __future__ import annotations

from pathlib import Path

from tiframework.data.tags import VARIANT_FILE, make_variant
from tiframework.errors import UserError
from tiframework.toyworld.characters import get_character, is_current, is_spec, materialize, parse_spec, stamp

TOYWORLD_CACHE = Path(".cache/toyworld")


def toyworld_dataset(spec: str, cache_root: Path = TOYWORLD_CACHE) -> Path:
    """A toy-world spec -> a folder of images and captions (generated once, then reused)."""
    name, split, n, seed, pruned = parse_spec(spec)
    folder = materialize(name, n, seed, Path(cache_root), split)
    if not pruned:
        return folder
    # The guide's step 4, done by the project's own tool (`tiframework tags prune --remove`):
    # her traits leave the captions, so the embedding has to carry them.
    variant = folder.with_name(folder.name + "-pruned")
    if not ((variant / VARIANT_FILE).is_file() and is_current(variant)):
        make_variant(folder, variant, remove=get_character(name).trait_tags())
        stamp(variant)
    return variant


def resolve_data_path(spec: str, what: str) -> Path:
    """A dataset folder from a path or a toy-world spec; `what` names the config key at fault."""
    if is_spec(spec):
        return toyworld_dataset(spec)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise UserError(f"{spec}: {what} folder not found; fix {what}")
    return path

"""Tag statistics and pruned dataset *variants* (the guide's step 4).

The guide prunes tags that describe the character ("always wearing black gloves,
ahoge, short hair") so the embedding absorbs them, and its appendix compares pruned
with unpruned embeddings. Here pruning never edits the source folder: it writes a
variant folder (images linked, captions rewritten, `variant.yaml` recording the
rules and their effect), so pruned and unpruned datasets sit side by side and an
ablation can point `data.path` at either.
"""

from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tiframework.data.images import caption_path, join_tags, list_images, read_caption, split_tags
from tiframework.errors import UserError
from tiframework.fileio import atomic_dir

VARIANT_FILE = "variant.yaml"
VARIANT_KIND = "tiframework-dataset-variant"
TRAIT_SHARE = 0.6  # a tag in >= 60% of images is probably the character, not the scene

_UNESCAPE = re.compile(r"\\([\\()])")


@dataclass(frozen=True)
class TagStat:
    tag: str  # the most common spelling in the captions
    count: int  # images whose caption has the tag
    share: float  # count / images in the folder
    trait: bool  # share >= threshold: likely a character trait, a pruning candidate


@dataclass
class VariantReport:
    """What `make_variant` wrote; `record` is the content of variant.yaml."""

    out: Path
    images: int
    record: dict = field(default_factory=dict)


# ---------------------------------------------------------------- pure tag processing


def tag_key(tag: str) -> str:
    """The form tags are compared in: `Black_Gloves`, `black gloves` and `black  gloves`
    are one tag, and so are `\\(cosplay\\)` and `(cosplay)`."""
    tag = _UNESCAPE.sub(r"\1", tag)
    return " ".join(tag.replace("_", " ").lower().split())


def count_tags(captions: Iterable[list[str]], n_images: int, threshold: float = TRAIT_SHARE) -> list[TagStat]:
    """Per-tag image counts over `captions` (one tag list per image), most common first."""
    counts: Counter[str] = Counter()
    spellings: dict[str, Counter[str]] = {}
    for tags in captions:
        seen = set()
        for tag in tags:
            key = tag_key(tag)
            spellings.setdefault(key, Counter())[tag] += 1
            if key not in seen:  # a tag repeated in one caption still counts once
                seen.add(key)
                counts[key] += 1
    stats = []
    for key, count in counts.items():
        share = count / n_images if n_images else 0.0
        spelling = spellings[key].most_common(1)[0][0]
        stats.append(TagStat(spelling, count, share, share >= threshold))
    return sorted(stats, key=lambda s: (-s.count, s.tag))


def parse_replace(text: str | None) -> dict[str, str]:
    """`"nude=nsfw, nipples=nsfw"` -> {"nude": "nsfw", "nipples": "nsfw"}."""
    pairs: dict[str, str] = {}
    for item in split_tags(text or ""):
        old, sep, new = item.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise UserError(f"replace rule {item!r} is not OLD=NEW (to delete a tag use --remove)")
        pairs[old.strip()] = new.strip()
    return pairs


def apply_rules(
    tags: list[str], remove: set[str], replace: Mapping[str, str]
) -> tuple[list[str], list[str], list[str]]:
    """One caption through the rules: (new tags, removed tags, replaced tags).

    `remove` holds `tag_key`s; `replace` maps a `tag_key` to the new tag. Several
    tags replaced by the same tag (nude, nipples -> nsfw) give it once, and once
    more than a tag already in the caption.
    """
    out: list[str] = []
    out_keys: set[str] = set()
    removed: list[str] = []
    replaced: list[str] = []
    targets = _keys(replace.values())
    for tag in tags:
        key = tag_key(tag)
        if key in remove:
            removed.append(tag)
            continue
        if key in replace:
            replaced.append(tag)
            tag = replace[key]
            key = tag_key(tag)
        if key in targets and key in out_keys:
            continue  # a second "nsfw": two replaced tags, or one meeting an existing "nsfw"
        out.append(tag)
        out_keys.add(key)
    return out, removed, replaced


def _keys(tags: Iterable[str]) -> set[str]:
    return {tag_key(t) for t in tags}


# ---------------------------------------------------------------- folders


def read_captions(folder: str | Path) -> tuple[list[Path], list[list[str] | None]]:
    """Images of `folder` and their tag lists (None where an image has no caption)."""
    images = list_images(folder)
    captions = []
    for image in images:
        text = read_caption(image)
        captions.append(None if text is None else split_tags(text))
    return images, captions


def tag_stats(folder: str | Path, threshold: float = TRAIT_SHARE) -> list[TagStat]:
    """Tag counts over a dataset folder; tags in >= `threshold` of images are flagged as traits."""
    images, captions = read_captions(folder)
    if not images:
        raise UserError(f"{folder}: no images")
    return count_tags((c or [] for c in captions), len(images), threshold)


def make_variant(
    src: str | Path,
    out: str | Path,
    remove: Iterable[str] = (),
    auto: float | None = None,
    replace: Mapping[str, str] | None = None,
    keep: Iterable[str] = (),
) -> VariantReport:
    """Write a pruned copy of the dataset `src` to `out`; `src` is never modified.

    remove: tags to delete from every caption. auto: also delete every tag found in
    at least this share of images (0..1), except `keep`. replace: OLD -> NEW tags.
    Images are relative symlinks (hard links, then copies, where symlinks fail).
    Re-running with the same rules gives the same folder; `out` is replaced atomically.
    """
    src, out = Path(src), Path(out)
    replace = dict(replace or {})
    remove, keep = [t for t in remove if t.strip()], [t for t in keep if t.strip()]
    _check_rules(remove, auto, replace, keep)
    images, captions = read_captions(src)
    if not images:
        raise UserError(f"{src}: no images")
    _check_out(src, out)
    stats = count_tags((c or [] for c in captions), len(images))
    auto_removed = [s for s in stats if auto is not None and s.share >= auto and tag_key(s.tag) not in _keys(keep)]
    remove_keys = _keys(remove) | _keys(s.tag for s in auto_removed)
    replace_keys = {tag_key(k): v for k, v in replace.items()}
    removed: Counter[str] = Counter()
    replaced: Counter[str] = Counter()
    links: Counter[str] = Counter()
    with atomic_dir(out) as tmp:
        target_dir = Path(os.path.realpath(out.parent)) / out.name
        for image, tags in zip(images, captions, strict=True):
            links[_link(image, tmp / image.name, target_dir)] += 1
            if tags is None:
                continue
            new, gone, swapped = apply_rules(tags, remove_keys, replace_keys)
            removed.update(tag_key(t) for t in gone)
            replaced.update(tag_key(t) for t in swapped)
            (tmp / caption_path(image).name).write_text(join_tags(new), encoding="utf-8")
        record = _record(src, images, captions, stats, (remove, auto, replace, keep), auto_removed,
                         removed, replaced, links)
        (tmp / VARIANT_FILE).write_text(yaml.safe_dump(record, sort_keys=False, allow_unicode=True), "utf-8")
    return VariantReport(out, len(images), record)


def _check_rules(remove: list[str], auto: float | None, replace: dict[str, str], keep: list[str]) -> None:
    if auto is not None and not 0.0 < auto <= 1.0:
        raise UserError(f"auto share must be in (0, 1], got {auto}")
    both = _keys(remove) & _keys(replace)
    if both:
        raise UserError(f"tags both removed and replaced: {', '.join(sorted(both))}")
    kept_removed = _keys(remove) & _keys(keep)
    if kept_removed:
        raise UserError(f"tags both removed and kept: {', '.join(sorted(kept_removed))}")


def _check_out(src: Path, out: Path) -> None:
    """Refuse an `out` whose replacement would touch `src` or a folder that is not a variant."""
    src_r, out_r = src.resolve(), out.resolve()
    if out_r == src_r or src_r in out_r.parents:
        raise UserError(f"{out}: the variant must be outside the source folder {src}")
    if out_r in src_r.parents:
        raise UserError(f"{out}: contains the source folder {src}; writing the variant would replace it")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / VARIANT_FILE).is_file())):
        raise UserError(f"{out}: exists and is not a dataset variant (no {VARIANT_FILE}); "
                        "choose another --out or delete it yourself")


def _link(image: Path, link: Path, final_dir: Path) -> str:
    """Link `image` as `link`; returns how: "symlink", "hardlink" or "copy"."""
    real = os.path.realpath(image)
    try:
        # Relative to the variant's final place (a sibling of the temporary folder, so
        # the same path): the pair of folders can move together without breaking links.
        os.symlink(os.path.relpath(real, final_dir), link)
        return "symlink"
    except OSError:
        pass
    try:
        os.link(real, link)  # fails across filesystems
        return "hardlink"
    except OSError:
        shutil.copy2(real, link)
        return "copy"


def _record(
    src: Path,
    images: list[Path],
    captions: list[list[str] | None],
    stats: list[TagStat],
    rules: tuple[list[str], float | None, dict[str, str], list[str]],
    auto_removed: list[TagStat],
    removed: Counter[str],
    replaced: Counter[str],
    links: Counter[str],
) -> dict:
    """variant.yaml: where the variant came from, its rules, and what they did (deterministic)."""
    remove, auto, replace, keep = rules
    spelling = {tag_key(s.tag): s.tag for s in stats}
    replace_to = {tag_key(k): v for k, v in replace.items()}
    return {
        "kind": VARIANT_KIND,
        "source": str(src.resolve()),
        "images": len(images),
        "captions": sum(c is not None for c in captions),
        "links": dict(sorted(links.items())),
        "rules": {"remove": list(remove), "auto": auto, "keep": list(keep), "replace": dict(replace)},
        "auto_removed": [{"tag": s.tag, "share": round(s.share, 4)} for s in auto_removed],
        "removed": {spelling.get(k, k): n for k, n in sorted(removed.items(), key=lambda kv: (-kv[1], kv[0]))},
        "replaced": {
            spelling.get(k, k): {"to": replace_to[k], "count": n}
            for k, n in sorted(replaced.items(), key=lambda kv: (-kv[1], kv[0]))
        },
    }

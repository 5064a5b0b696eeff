"""Named characters and their datasets on disk.

A character is a fixed attribute set. Two are *held out*: their defining combination
(hair colour + outfit colour) never appears in the base model's training data, so the
base model cannot draw them from tags alone and an embedding has something to learn.
`kiri` also always wears the untagged star emblem.

Dataset specs (the data loader's `data.path` / `eval.reference`):

    toyworld:<character>[:train|:reference][?n=<images>&seed=<seed>&pruned=1]

e.g. `toyworld:kiri` (24 training images, seed 0), `toyworld:kiri:reference?n=8`, or
`toyworld:kiri?pruned=1` (her trait tags pruned from the captions, as `tags prune` does).
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tiframework.errors import UserError
from tiframework.fileio import atomic_dir
from tiframework.toyworld.draw import render
from tiframework.toyworld.world import ACCESSORIES, BACKGROUNDS, VIEWS, Attributes, Combo, with_jitter


@dataclass(frozen=True)
class Character:
    name: str
    base: Attributes  # background/view/jitter here are ignored: datasets vary them
    held_out: bool

    @property
    def combo(self) -> Combo:
        return Combo({"hair_color": self.base.hair_color, "outfit_color": self.base.outfit_color})

    def trait_tags(self) -> list[str]:
        """Tags that describe the character itself: what the guide says to prune."""
        a = self.base
        tags = [f"{a.hair_length} hair", f"{a.hair_color} hair", f"{a.eye_color} eyes",
                f"{a.outfit_color} {a.outfit_type}"]
        return tags + [acc for acc in ACCESSORIES if acc in a.accessories]

    def trait_groups(self) -> list[str]:
        """The groups that make her *her*: every group but absent accessories ("no hat"
        is true of most images anyway)."""
        return [g for g, want in self.expected().items() if want != "no"]

    def expected(self) -> dict[str, str]:
        """Per-group labels of this character seen from the front (for accuracy)."""
        labels = self.base.visible()
        for group in ("background", "view"):
            labels.pop(group)
        return labels


def _char(name: str, hair: str, length: str, eyes: str, otype: str, ocolor: str,
          acc: tuple[str, ...] = (), emblem: bool = False, held_out: bool = False) -> Character:
    base = Attributes("simple background", hair, length, eyes, otype, ocolor, frozenset(acc), emblem=emblem)
    return Character(name, base, held_out)


CHARACTERS: dict[str, Character] = {c.name: c for c in (
    _char("mika", "blonde", "short", "blue", "dress", "red", ("hair bow",)),
    _char("rin", "black", "long", "red", "shirt", "white", ("glasses",)),
    _char("kiri", "pink", "long", "green", "dress", "green", ("hat",), emblem=True, held_out=True),
    _char("sora", "blue", "short", "yellow", "shirt", "purple", ("gloves",), held_out=True),
)}
HELD_OUT: tuple[Combo, ...] = tuple(c.combo for c in CHARACTERS.values() if c.held_out)
SPLITS = ("train", "reference")
DEFAULT_N = {"train": 24, "reference": 8}
SPEC = re.compile(r"^toyworld:(?P<name>[\w-]+)(?::(?P<split>\w+))?(?:\?(?P<query>.*))?$")


def get_character(name: str) -> Character:
    if name not in CHARACTERS:
        raise UserError(f"unknown toy-world character {name!r}; known characters: {', '.join(CHARACTERS)}")
    return CHARACTERS[name]


def character_images(name: str, n: int, seed: int, split: str = "train") -> list[Attributes]:
    """The attribute records of a character's dataset (pure: nothing drawn or written).

    train: varied views, backgrounds and poses. reference: "official art", front view
    on a simple background, from a separate seed stream so it never repeats training images.
    """
    char = get_character(name)
    if split not in SPLITS:
        raise UserError(f"unknown toy-world split {split!r}; use one of {', '.join(SPLITS)}")
    rng = random.Random(f"{name}:{split}:{seed}")
    if split == "reference":
        return [with_jitter(char.base, rng, background="simple background", view="front") for _ in range(n)]
    return [
        with_jitter(char.base, rng, background=rng.choice(BACKGROUNDS),
                    view=rng.choices(VIEWS, weights=(0.6, 0.25, 0.15))[0])
        for _ in range(n)
    ]


def materialize(character: str, n: int, seed: int, root: Path, split: str = "train") -> Path:
    """Write `NNNN.png` + `NNNN.txt` of a character into `root/<character>-<split>-n<n>-s<seed>`.

    Written atomically, so an existing folder is complete and is reused as is.
    """
    records = character_images(character, n, seed, split)
    folder = Path(root) / f"{character}-{split}-n{n}-s{seed}"
    if is_current(folder) and len(list(folder.glob("*.png"))) == n and len(list(folder.glob("*.txt"))) == n:
        return folder
    with atomic_dir(folder, keep_concurrent=True) as tmp:
        for i, attrs in enumerate(records):
            render(attrs).save(tmp / f"{i:04d}.png", optimize=False)
            (tmp / f"{i:04d}.txt").write_text(attrs.caption() + "\n", encoding="utf-8")
        stamp(tmp)
    return folder


STAMP_FILE = ".toyworld"


@functools.lru_cache(maxsize=1)
def world_stamp() -> str:
    """A hash of the code that draws and captions the world: a cached dataset made by
    other code (an older checkout) is stale and gets regenerated, never silently reused."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in ("world.py", "draw.py", "characters.py"):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


def is_current(folder: Path) -> bool:
    """True when `folder` was written by this checkout's world code (see `world_stamp`)."""
    mark = folder / STAMP_FILE
    return mark.is_file() and mark.read_text() == world_stamp()


def stamp(folder: Path) -> None:
    """Mark a folder derived from the world (e.g. a pruned variant) as made by this code."""
    (folder / STAMP_FILE).write_text(world_stamp())


class Spec(NamedTuple):
    name: str
    split: str
    n: int
    seed: int
    pruned: bool


def parse_spec(spec: str) -> Spec:
    """`toyworld:<character>[:split][?n=N&seed=S&pruned=1]` -> Spec."""
    m = SPEC.match(spec.strip())
    if not m:
        raise UserError(f"{spec!r}: not a toy-world dataset; write "
                        "toyworld:<character>[:train|:reference][?n=24&seed=0&pruned=1]")
    split = m["split"] or "train"
    get_character(m["name"])
    if split not in SPLITS:
        raise UserError(f"{spec!r}: unknown split {split!r}; use one of {', '.join(SPLITS)}")
    options = {"n": DEFAULT_N[split], "seed": 0, "pruned": 0}
    for item in filter(None, (m["query"] or "").split("&")):
        key, _, value = item.partition("=")
        if key not in options or not value.lstrip("-").isdigit():
            raise UserError(f"{spec!r}: bad option {item!r}; options are n=<int>, seed=<int> and pruned=0|1")
        options[key] = int(value)
    if options["n"] < 1:
        raise UserError(f"{spec!r}: n must be at least 1")
    if options["pruned"] not in (0, 1):
        raise UserError(f"{spec!r}: pruned must be 0 or 1")
    return Spec(m["name"], split, options["n"], options["seed"], bool(options["pruned"]))


def is_spec(path: str) -> bool:
    return str(path).startswith("toyworld:")

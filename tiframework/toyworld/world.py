"""A procedural booru-style world where the truth is known.

Every image is a 64x64 girl drawn from flat PIL shapes, with a caption that lists
exactly the tags of what is drawn and visible (a tag for a hidden part, e.g. eye
colour seen from behind, would be a caption lie no tagger makes). Hair, outfit and
background are big flat colour regions on purpose: those are what a tiny diffusion
model can learn at 16x16 latents, so a textual-inversion run that learns a character
shows up as measurable attribute accuracy.

One thing is drawn but never tagged: a gold star emblem on the outfit. A character
that always wears it lets us test whether an embedding picks up untagged traits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

SIZE = 64

HAIR_COLORS = {
    "black": (25, 25, 32), "blonde": (245, 212, 70), "brown": (125, 70, 30), "red": (215, 35, 35),
    "blue": (35, 85, 225), "pink": (250, 135, 200), "purple": (140, 50, 200),
}
EYE_COLORS = {
    "blue": (30, 110, 255), "red": (230, 20, 20), "green": (20, 170, 40), "yellow": (240, 210, 0),
    "brown": (110, 60, 20),
}
OUTFIT_COLORS = {
    "red": (205, 30, 40), "blue": (30, 70, 200), "green": (30, 150, 50), "yellow": (250, 215, 30),
    "purple": (130, 40, 180), "white": (248, 248, 248), "black": (30, 30, 30),
}
OUTFIT_TYPES = ("dress", "shirt")
HAIR_LENGTHS = ("short", "long")
BACKGROUNDS = ("simple background", "sky", "grass", "indoors")
VIEWS = ("front", "from side", "from behind")
ACCESSORIES = ("hat", "glasses", "hair bow", "gloves")

SKIN = (252, 222, 190)
PANTS = (75, 75, 90)
STAR = (255, 190, 0)
HAT = (70, 40, 25)
BOW = (235, 40, 110)
GLOVE = (255, 255, 255)

# The attribute groups a classifier predicts, and their values. "hidden" marks a
# group that the view hides (eyes from behind), so the label is still exact.
GROUPS: dict[str, tuple[str, ...]] = {
    "background": BACKGROUNDS,
    "hair_color": tuple(HAIR_COLORS),
    "hair_length": HAIR_LENGTHS,
    "eye_color": (*EYE_COLORS, "hidden"),
    "outfit_type": OUTFIT_TYPES,
    "outfit_color": tuple(OUTFIT_COLORS),
    "view": VIEWS,
    "hat": ("no", "yes"),
    "glasses": ("no", "yes"),
    "hair bow": ("no", "yes"),
    "gloves": ("no", "yes"),
    "emblem": ("no", "yes"),
}


@dataclass(frozen=True)
class Attributes:
    """What one image shows: the semantic attributes plus untagged pose jitter."""

    background: str
    hair_color: str
    hair_length: str
    eye_color: str
    outfit_type: str
    outfit_color: str
    accessories: frozenset[str] = frozenset()
    view: str = "front"
    emblem: bool = False  # drawn, never tagged
    scale: float = 1.0
    dx: int = 0
    dy: int = 0
    arms_up: bool = False
    bg_seed: int = 0
    flip: bool = False

    def visible(self) -> dict[str, str]:
        """Exact per-group labels of what is visible in the drawing."""
        behind = self.view == "from behind"
        labels = {
            "background": self.background, "hair_color": self.hair_color, "hair_length": self.hair_length,
            "eye_color": "hidden" if behind else self.eye_color, "outfit_type": self.outfit_type,
            "outfit_color": self.outfit_color, "view": self.view,
            "emblem": "yes" if self.emblem and not behind else "no",
        }
        for acc in ACCESSORIES:
            shown = acc in self.accessories and not (acc == "glasses" and behind)
            labels[acc] = "yes" if shown else "no"
        return labels

    def tags(self) -> list[str]:
        """Booru tags in a fixed (tagger-like) order; only what is visible."""
        seen = self.visible()
        tags = ["1girl", "solo", f"{self.hair_length} hair", f"{self.hair_color} hair"]
        if seen["eye_color"] != "hidden":
            tags.append(f"{self.eye_color} eyes")
        tags.append(f"{self.outfit_color} {self.outfit_type}")
        tags += [acc for acc in ACCESSORIES if seen[acc] == "yes"]
        if self.view != "front":
            tags.append(self.view)
        tags.append(self.background)
        return tags

    def caption(self) -> str:
        return ", ".join(self.tags())


@dataclass(frozen=True)
class Combo:
    """A partial attribute assignment; `matches` is true when all its keys agree."""

    values: dict[str, str] = field(default_factory=dict)

    def matches(self, attrs: Attributes) -> bool:
        return all(getattr(attrs, k) == v for k, v in self.values.items())


def sample_attributes(rng: random.Random, exclude: tuple[Combo, ...] = ()) -> Attributes:
    """Uniform over the world, rejecting held-out combinations (never seen in training)."""
    while True:
        attrs = _draw_uniform(rng)
        if not any(c.matches(attrs) for c in exclude):
            return attrs


def _draw_uniform(rng: random.Random) -> Attributes:
    accessories = frozenset(a for a in ACCESSORIES if rng.random() < 0.25)
    outfit_color = rng.choice(tuple(OUTFIT_COLORS))
    return Attributes(
        background=rng.choice(BACKGROUNDS),
        hair_color=rng.choice(tuple(HAIR_COLORS)),
        hair_length=rng.choice(HAIR_LENGTHS),
        eye_color=rng.choice(tuple(EYE_COLORS)),
        outfit_type=rng.choice(OUTFIT_TYPES),
        outfit_color=outfit_color,
        accessories=accessories,
        view=rng.choices(VIEWS, weights=(0.6, 0.25, 0.15))[0],
        # A star on a yellow outfit would be invisible; elsewhere 30% wear it, untagged.
        emblem=outfit_color != "yellow" and rng.random() < 0.3,
        **jitter(rng),
    )


def jitter(rng: random.Random) -> dict:
    """Untagged pose/scale/position variation."""
    return {
        "scale": round(rng.uniform(0.85, 1.1), 3), "dx": rng.randint(-6, 6), "dy": rng.randint(-3, 3),
        "arms_up": rng.random() < 0.3, "bg_seed": rng.randrange(1 << 30), "flip": rng.random() < 0.5,
    }


def with_jitter(attrs: Attributes, rng: random.Random, **changes) -> Attributes:
    return replace(attrs, **jitter(rng), **changes)

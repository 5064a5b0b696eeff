"""Rendering `Attributes` to a 64x64 RGB image with PIL shapes (deterministic)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from PIL import Image, ImageDraw

from tiframework.toyworld.world import (
    BOW,
    EYE_COLORS,
    GLOVE,
    HAIR_COLORS,
    HAT,
    OUTFIT_COLORS,
    PANTS,
    SIZE,
    SKIN,
    STAR,
    Attributes,
)

Point = tuple[float, float]


def render(attrs: Attributes) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE))
    draw = ImageDraw.Draw(img)
    _background(draw, attrs.background, random.Random(attrs.bg_seed))
    _figure(draw, attrs)
    # Mirroring is free pose variety; the character stays tag-identical.
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if attrs.flip else img


def _background(draw: ImageDraw.ImageDraw, kind: str, rng: random.Random) -> None:
    if kind == "simple background":
        draw.rectangle((0, 0, SIZE, SIZE), fill=(238, 238, 238))
    elif kind == "sky":
        draw.rectangle((0, 0, SIZE, SIZE), fill=(135, 195, 250))
        for _ in range(rng.randint(2, 3)):
            x, y, w = rng.randint(-4, 56), rng.randint(2, 50), rng.randint(12, 22)
            draw.ellipse((x, y, x + w, y + w // 2), fill=(255, 255, 255))
    elif kind == "grass":
        horizon = rng.randint(26, 36)
        draw.rectangle((0, 0, SIZE, horizon), fill=(175, 220, 245))
        draw.rectangle((0, horizon, SIZE, SIZE), fill=(70, 165, 55))
    else:  # indoors: wall, floor and a window
        floor = rng.randint(42, 50)
        draw.rectangle((0, 0, SIZE, floor), fill=(225, 200, 160))
        draw.rectangle((0, floor, SIZE, SIZE), fill=(140, 95, 60))
        x = rng.choice((4, 44))
        draw.rectangle((x, 8, x + 16, 26), fill=(160, 210, 240), outline=(100, 70, 45), width=2)


def _transform(attrs: Attributes) -> Callable[[float, float], Point]:
    s, cx, cy = attrs.scale, SIZE / 2 + attrs.dx, SIZE / 2 + attrs.dy

    def t(x: float, y: float) -> Point:
        return (cx + x * s, cy + (y - 32) * s)

    return t


def _box(t: Callable[[float, float], Point], x0: float, y0: float, x1: float, y1: float) -> tuple[float, ...]:
    return (*t(x0, y0), *t(x1, y1))


def _figure(draw: ImageDraw.ImageDraw, a: Attributes) -> None:
    # Figure coordinates: x relative to the centre line, y in a 64-px frame.
    t = _transform(a)
    hair, outfit = HAIR_COLORS[a.hair_color], OUTFIT_COLORS[a.outfit_color]
    behind, side = a.view == "from behind", a.view == "from side"
    hx = 2 if side else 0  # the face turns right in profile
    if a.hair_length == "long":  # long hair falls behind the body
        draw.rectangle(_box(t, -11, 14, 11, 46), fill=hair)
    _body(draw, t, a, outfit)
    draw.ellipse(_box(t, -10, 6, 10, 27), fill=hair)  # back of the head
    if not behind:
        draw.ellipse(_box(t, -7 + hx, 10, 7 + hx, 25), fill=SKIN)
        draw.chord(_box(t, -9 + hx, 6, 9 + hx, 20), 180, 360, fill=hair)  # bangs
        _face(draw, t, a, hx, side)
    if "hat" in a.accessories:
        draw.rectangle(_box(t, -13, 7, 13, 10), fill=HAT)
        draw.rectangle(_box(t, -8, 0, 8, 8), fill=HAT)
    if "hair bow" in a.accessories:
        draw.polygon([t(5, 6), t(13, 2), t(13, 11)], fill=BOW)
        draw.polygon([t(5, 6), t(-3, 2), t(-3, 11)], fill=BOW)


def _face(draw: ImageDraw.ImageDraw, t, a: Attributes, hx: float, side: bool) -> None:
    eye = EYE_COLORS[a.eye_color]
    xs = (4,) if side else (-4, 2)
    for x in xs:
        draw.rectangle(_box(t, x + hx - 1, 14.5, x + hx + 3, 19), fill=eye)  # 4x4.5 px: survives the x4 VAE
    if "glasses" in a.accessories:
        for x in xs:
            draw.rectangle(_box(t, x + hx - 2, 13.5, x + hx + 4, 20), outline=(10, 10, 10), width=1)
        if not side:
            draw.line((*t(-1.5, 16), *t(1.5, 16)), fill=(10, 10, 10), width=1)


def _body(draw: ImageDraw.ImageDraw, t, a: Attributes, outfit: tuple[int, int, int]) -> None:
    hand = GLOVE if "gloves" in a.accessories else SKIN
    draw.rectangle(_box(t, -2, 24, 2, 29), fill=SKIN)  # neck
    legs_top = 48 if a.outfit_type == "dress" else 54
    for x in (-6, 2):
        draw.rectangle(_box(t, x, legs_top, x + 4, 59), fill=SKIN)
        draw.rectangle(_box(t, x - 1, 59, x + 5, 62), fill=(60, 35, 25))  # shoes
    if a.outfit_type == "dress":
        draw.polygon([t(-8, 27), t(8, 27), t(14, 50), t(-14, 50)], fill=outfit)
    else:
        draw.rectangle(_box(t, -7, 41, 7, 54), fill=PANTS)
        draw.rectangle(_box(t, -9, 27, 9, 42), fill=outfit)
    hand_y = 16 if a.arms_up else 43
    for sx in (-1, 1):
        draw.line((*t(sx * 8, 29), *t(sx * 13, hand_y)), fill=outfit, width=max(2, round(4 * a.scale)))
        draw.ellipse(_box(t, sx * 13 - 2.5, hand_y - 2.5, sx * 13 + 2.5, hand_y + 2.5), fill=hand)
    if a.emblem and a.view != "from behind":
        _star(draw, t(0, 34), 5 * a.scale)


def _star(draw: ImageDraw.ImageDraw, centre: Point, r: float) -> None:
    pts = []
    for i in range(10):
        rad = r if i % 2 == 0 else r * 0.45
        ang = -math.pi / 2 + i * math.pi / 5
        pts.append((centre[0] + rad * math.cos(ang), centre[1] + rad * math.sin(ang)))
    draw.polygon(pts, fill=STAR)

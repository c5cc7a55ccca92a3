"""Colours and type of a synthetic screen: the theme (light or dark, an accent), wallpapers and the font."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache

from PIL import ImageFont

from imagelora_dist.data.synth.elements import RGB

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

ACCENTS = (
    (37, 99, 235), (22, 163, 74), (124, 58, 237), (220, 38, 38), (234, 88, 12), (13, 148, 136),
    (219, 39, 119), (2, 132, 199), (79, 70, 229), (101, 163, 13), (0, 120, 212), (181, 71, 8),
)  # fmt: skip
WALLPAPERS = (
    ((30, 60, 114), (42, 82, 152)), ((15, 32, 39), (44, 83, 100)), ((131, 96, 195), (46, 191, 145)),
    ((255, 126, 95), (254, 180, 123)), ((67, 198, 172), (25, 22, 84)), ((34, 40, 49), (57, 62, 70)),
    ((0, 82, 212), (101, 199, 247)), ((238, 156, 167), (255, 221, 225)), ((96, 108, 136), (63, 76, 107)),
)  # fmt: skip


@dataclass(frozen=True)
class Theme:
    """The colours of one screen (window, surfaces, text, inputs, accent, title bar)."""

    dark: bool
    window: RGB
    surface: RGB
    sidebar: RGB
    border: RGB
    text: RGB
    muted: RGB
    input_bg: RGB
    input_border: RGB
    accent: RGB
    accent_text: RGB
    link: RGB
    select: RGB
    title_bg: RGB
    title_text: RGB
    button_bg: RGB


def mix(a: RGB, b: RGB, t: float) -> RGB:
    """`a` blended towards `b` by `t` (0: a, 1: b)."""
    return (round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t))


def pick_theme(rng: random.Random) -> Theme:
    """A random light (65%) or dark theme around one accent colour."""
    dark = rng.random() < 0.35
    accent = rng.choice(ACCENTS)
    tint = rng.choice(((0, 0, 0), (0, 2, 6), (4, 2, 0), (0, 3, 2)))
    if dark:
        base = rng.randint(24, 40)
        window = (base + tint[0], base + tint[1], base + tint[2])
        surface = mix(window, (255, 255, 255), 0.06)
        sidebar = mix(window, (0, 0, 0), 0.25)
        text, muted = (232, 234, 237), (150, 155, 162)
        input_bg, input_border = mix(window, (0, 0, 0), 0.35), mix(window, (255, 255, 255), 0.22)
        border = mix(window, (255, 255, 255), 0.14)
        link = mix(accent, (255, 255, 255), 0.45)
        button_bg = mix(window, (255, 255, 255), 0.14)
    else:
        base = rng.randint(242, 255)
        window = (min(255, base + tint[0]), min(255, base + tint[1] - 1), min(255, base + tint[2] - 1))
        surface = mix(window, (0, 0, 0), rng.uniform(0.04, 0.09))
        sidebar = mix(window, (0, 0, 0), rng.uniform(0.03, 0.06))
        text, muted = rng.choice(((24, 24, 27), (33, 37, 41), (17, 24, 39))), (107, 114, 128)
        input_bg, input_border = (255, 255, 255), (rng.randint(175, 205),) * 3
        border = mix(window, (0, 0, 0), 0.16)
        link = mix(accent, (0, 0, 0), 0.1)
        button_bg = mix(window, (0, 0, 0), 0.08)
    if rng.random() < 0.3:  # coloured title bar (Windows accent colour, branded apps)
        title_bg, title_text = mix(accent, (0, 0, 0), 0.15), (255, 255, 255)
    else:
        title_bg, title_text = mix(surface, (0, 0, 0), 0.05 if not dark else 0.3), text
    select = mix(window, accent, 0.22 if not dark else 0.35)
    return Theme(
        dark, window, surface, sidebar, border, text, muted, input_bg, input_border, accent, (255, 255, 255),
        link, select, title_bg, title_text, button_bg,
    )  # fmt: skip


@lru_cache(maxsize=64)
def get_font(size: int) -> Font:
    """The bundled font at `size` px."""
    # Pillow's bundled FreeType font: scalable, offline, and the same glyphs on every machine.
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=8192)
def word_layout(text: str, size: int) -> tuple[tuple[tuple[str, int], ...], int]:
    """Word x offsets and total advance of `text` at `size`, with a readable word gap."""
    # The bundled font's space is 2 px below 12 px, so "Zip code" would read "Zipcode": words are
    # placed one by one with a gap of at least ~0.27 em.
    f = get_font(size)
    gap = max(math.ceil(f.getlength(" ")), round(size * 0.27))
    out, x = [], 0
    for word in text.split(" "):
        if word:
            out.append((word, x))
            x += math.ceil(f.getlength(word))
        x += gap
    return tuple(out), max(0, x - gap)

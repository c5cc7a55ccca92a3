"""The drawing state of one GUI screenshot: image, theme, UI scale, and the elements placed so far."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from PIL import Image, ImageDraw

from imagelora_dist.data.synth.elements import RGB, Box, Element
from imagelora_dist.data.synth.theme import Font, get_font, mix, pick_theme, word_layout
from imagelora_dist.data.synth.vocabulary import ICONS, key


class Screen:
    """Canvas, theme and fonts of one screenshot, plus the elements (and texts, icons) used so far."""

    def __init__(self, rng: random.Random, width: int, height: int) -> None:
        self.rng = rng
        self.w, self.h = width, height
        # Bigger screens show more content at a moderately larger UI scale (like a HiDPI setting), not a
        # blown-up 448x336 layout.
        self.scale = max(0.8, min(2.5, min(width / 448, height / 336) ** 0.5))
        self.theme = pick_theme(rng)
        self.base = max(9, round(rng.choice((11, 12, 12, 13)) * self.scale))
        self.img = Image.new("RGB", (width, height), self.theme.window)
        self.d = ImageDraw.Draw(self.img)
        self.elements: list[Element] = []
        self.used_text: set[str] = set()
        self.used_icons: set[str] = set()

    def px(self, v: float) -> int:
        """`v` design pixels at this screen's UI scale (at least 1)."""
        return max(1, round(v * self.scale))

    def font(self, delta: int = 0) -> Font:
        """The UI font, `delta` design pixels above or below the screen's base size."""
        return get_font(max(8, self.base + round(delta * self.scale)))

    def text_w(self, text: str, font: Font) -> int:
        """Advance width of `text` as `text()` lays it out."""
        return word_layout(text, font.size)[1]

    def taken(self, text: str) -> bool:
        """Whether a label reading like `text` is already on the screen."""
        return key(text) in self.used_text

    def free(self, candidates: Sequence[str]) -> list[str]:
        """The candidates not yet on the screen."""
        # Unique visible text across the whole screen keeps every target unambiguous.
        return [c for c in candidates if not self.taken(c)]

    def pick(self, candidates: Sequence[str], fits: Callable[[str], bool] | None = None) -> str | None:
        """A random free candidate that `fits` (None when none does)."""
        options = [c for c in self.free(candidates) if fits is None or fits(c)]
        return self.rng.choice(options) if options else None

    def pick_icon(self, pool: Sequence[str] = ICONS) -> str | None:
        """A random icon name not used yet, now reserved (None when all are used)."""
        options = [n for n in pool if n not in self.used_icons]
        if not options:
            return None
        name = self.rng.choice(options)
        self.used_icons.add(name)
        return name

    def add(self, type_: str, text: str, box: Sequence[float], **kw: str) -> Element:
        """Record a targetable element, its box rounded outwards and clipped to the screen."""
        x0, y0 = int(math.floor(box[0])), int(math.floor(box[1]))
        x1, y1 = int(math.ceil(box[2])), int(math.ceil(box[3]))
        el = Element(type_, text, (max(0, x0), max(0, y0), min(self.w, x1), min(self.h, y1)), **kw)
        if text:
            self.used_text.add(key(text))
        self.elements.append(el)
        return el

    def text(self, x: float, y: float, text: str, font: Font, fill: RGB, anchor: str = "lm") -> Box:
        """Draw text; return its ink box (x1/y1 exclusive)."""
        words, width = word_layout(text, font.size)
        x0 = round(x - {"l": 0, "m": width / 2, "r": width}[anchor[0]])
        y = round(y)
        wa = "l" + anchor[1]
        box = [math.inf, math.inf, -math.inf, -math.inf]
        for word, off in words:
            self.d.text((x0 + off, y), word, font=font, fill=fill, anchor=wa)
            left, top, right, bottom = font.getbbox(word, anchor=wa)
            box = [
                min(box[0], x0 + off + left),
                min(box[1], y + top),
                max(box[2], x0 + off + right),
                max(box[3], y + bottom),
            ]
        return (math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3]))

    def button(self, x: int, y: int, label: str, h: int, style: str, font: Font, radius: int) -> Box:
        """Draw a push button (`primary`, `secondary`, `outline` or `danger`); return its box."""
        t = self.theme
        w = self.text_w(label, font) + 2 * self.px(12)
        if style == "primary":
            fill, outline, fg = t.accent, mix(t.accent, (0, 0, 0), 0.15), t.accent_text
        elif style == "outline":
            fill, outline, fg = t.window, t.accent, t.accent if not t.dark else t.link
        elif style == "danger":
            fill, outline, fg = (200, 45, 45), (170, 35, 35), (255, 255, 255)
        else:
            fill, outline, fg = t.button_bg, t.input_border, t.text
        self.d.rounded_rectangle([x, y, x + w - 1, y + h - 1], radius=radius, fill=fill, outline=outline)
        self.text(x + w / 2, y + h / 2, label, font, fg, anchor="mm")
        return (x, y, x + w, y + h)

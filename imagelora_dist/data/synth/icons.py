"""Icon glyphs drawn from primitives (no icon font ships offline): one small function per icon name."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from PIL import ImageDraw

from imagelora_dist.data.synth.elements import RGB
from imagelora_dist.data.synth.theme import get_font


@dataclass(frozen=True)
class _Cell:
    """The square a glyph is drawn in: its inset corners, centre, half width, line width and colours."""

    d: ImageDraw.ImageDraw
    s: int
    lw: int
    x0: int
    y0: int
    x1: int
    y1: int
    fg: RGB
    bg: RGB

    @property
    def cx(self) -> float:
        return (self.x0 + self.x1) / 2

    @property
    def cy(self) -> float:
        return (self.y0 + self.y1) / 2

    @property
    def r(self) -> float:
        return (self.x1 - self.x0) / 2

    @property
    def w(self) -> int:
        return self.x1 - self.x0

    @property
    def h(self) -> int:
        return self.y1 - self.y0

    def ln(self, *pts: float) -> None:
        """A polyline through (x, y) pairs in the glyph's colour and line width."""
        pairs = [(pts[i], pts[i + 1]) for i in range(0, len(pts), 2)]
        self.d.line(pairs, fill=self.fg, width=self.lw, joint="curve")


def _settings(c: _Cell) -> None:
    cx, cy, r = c.cx, c.cy, c.r
    for k in range(8):  # gear teeth, then the wheel and its hole
        a = k * math.pi / 4
        inner = (cx + math.cos(a) * r * 0.5, cy + math.sin(a) * r * 0.5)
        c.d.line(
            [inner, (cx + math.cos(a) * r, cy + math.sin(a) * r)], fill=c.fg, width=max(2, round(c.s / 6))
        )
    c.d.ellipse([cx - r * 0.72, cy - r * 0.72, cx + r * 0.72, cy + r * 0.72], fill=c.fg)
    c.d.ellipse([cx - r * 0.3, cy - r * 0.3, cx + r * 0.3, cy + r * 0.3], fill=c.bg)


def _search(c: _Cell) -> None:
    rr = c.r * 0.62
    c.d.ellipse([c.x0, c.y0, c.x0 + 2 * rr, c.y0 + 2 * rr], outline=c.fg, width=c.lw)
    c.ln(c.x0 + 2 * rr * 0.85, c.y0 + 2 * rr * 0.85, c.x1, c.y1)


def _delete(c: _Cell) -> None:
    x0, y0, x1, y1, w, h, cx = c.x0, c.y0, c.x1, c.y1, c.w, c.h, c.cx
    c.ln(x0, y0 + h * 0.18, x1, y0 + h * 0.18)
    c.d.rectangle([cx - w * 0.15, y0, cx + w * 0.15, y0 + h * 0.18], outline=c.fg, width=c.lw)
    can = [
        (x0 + w * 0.12, y0 + h * 0.3),
        (x1 - w * 0.12, y0 + h * 0.3),
        (x1 - w * 0.2, y1),
        (x0 + w * 0.2, y1),
    ]
    c.d.polygon(can, outline=c.fg, width=c.lw)
    c.ln(cx, y0 + h * 0.45, cx, y1 - h * 0.15)


def _favorite(c: _Cell) -> None:
    pts = []
    for k in range(10):  # a five-pointed star: outer and inner radii alternate
        a = -math.pi / 2 + k * math.pi / 5
        rad = c.r if k % 2 == 0 else c.r * 0.45
        pts.append((c.cx + math.cos(a) * rad, c.cy + 0.08 * c.h + math.sin(a) * rad))
    c.d.polygon(pts, fill=c.fg)


def _home(c: _Cell) -> None:
    x0, y0, x1, y1, w, h, cx, cy = c.x0, c.y0, c.x1, c.y1, c.w, c.h, c.cx, c.cy
    c.d.polygon([(cx, y0), (x1, cy), (x0, cy)], fill=c.fg)
    c.d.rectangle([x0 + w * 0.18, cy, x1 - w * 0.18, y1], fill=c.fg)
    c.d.rectangle([cx - w * 0.1, y1 - h * 0.32, cx + w * 0.1, y1], fill=c.bg)


def _add(c: _Cell) -> None:
    t = max(2, c.lw + 1)
    c.d.rectangle([c.cx - t / 2, c.y0, c.cx + t / 2, c.y1], fill=c.fg)
    c.d.rectangle([c.x0, c.cy - t / 2, c.x1, c.cy + t / 2], fill=c.fg)


def _notifications(c: _Cell) -> None:
    x0, y0, x1, y1, w, h, cx, cy = c.x0, c.y0, c.x1, c.y1, c.w, c.h, c.cx, c.cy
    c.d.chord([x0 + w * 0.15, y0 + h * 0.05, x1 - w * 0.15, y1 + h * 0.3], 180, 360, fill=c.fg)
    c.d.rectangle([x0 + w * 0.15, cy + h * 0.1, x1 - w * 0.15, y1 - h * 0.18], fill=c.fg)
    c.ln(x0, y1 - h * 0.18, x1, y1 - h * 0.18)
    c.d.ellipse([cx - w * 0.12, y1 - h * 0.15, cx + w * 0.12, y1], fill=c.fg)


def _profile(c: _Cell) -> None:
    c.d.ellipse([c.cx - c.r * 0.42, c.y0, c.cx + c.r * 0.42, c.y0 + c.r * 0.84], fill=c.fg)
    c.d.chord([c.x0, c.cy + c.h * 0.05, c.x1, c.y1 + c.h * 0.5], 180, 360, fill=c.fg)


def _folder(c: _Cell) -> None:
    x0, y0, x1, y1, w, h, lw = c.x0, c.y0, c.x1, c.y1, c.w, c.h, c.lw
    tab, body, foot = y0 + h * 0.12, y0 + h * 0.27, y1 - h * 0.08
    outline = [(x0, tab), (x0 + w * 0.4, tab), (x0 + w * 0.5, body), (x1, body), (x1, foot), (x0, foot)]
    c.d.polygon(outline, fill=c.fg)
    c.ln(x0 + lw, y0 + h * 0.38, x1 - lw, y0 + h * 0.38)
    c.d.line([(x0 + lw, y0 + h * 0.38), (x1 - lw, y0 + h * 0.38)], fill=c.bg, width=max(1, lw // 2))


def _edit(c: _Cell) -> None:
    x0, y0, x1, y1 = c.x0, c.y0, c.x1, c.y1
    t = c.w * 0.16
    c.d.polygon(
        [(x1 - t, y0), (x1, y0 + t), (x0 + t * 1.3, y1 - t * 0.3), (x0 + t * 0.3, y1 - t * 1.3)], fill=c.fg
    )
    c.d.polygon([(x0 + t * 0.3, y1 - t * 1.3), (x0 + t * 1.3, y1 - t * 0.3), (x0, y1)], fill=c.fg)
    c.ln(x0 + c.w * 0.55, y1, x1, y1)


def _refresh(c: _Cell) -> None:
    w, h = c.w, c.h
    c.d.arc([c.x0, c.y0, c.x1, c.y1], 40, 340, fill=c.fg, width=c.lw + 1)
    ax, ay = c.cx + math.cos(math.radians(340)) * c.r, c.cy + math.sin(math.radians(340)) * c.r
    c.d.polygon([(ax + w * 0.22, ay), (ax - w * 0.14, ay), (ax + w * 0.06, ay + h * 0.3)], fill=c.fg)


def _transfer(c: _Cell, down: bool) -> None:
    """`download` (arrow down onto a line) or `upload` (arrow up from it)."""
    w, h, cx, lw = c.w, c.h, c.cx, c.lw
    top, bot = (c.y0, c.y1 - h * 0.25) if down else (c.y1 - h * 0.25, c.y0)
    c.ln(cx, top, cx, bot)
    sgn = 1 if down else -1
    head = [(cx - w * 0.3, bot - sgn * h * 0.3), (cx + w * 0.3, bot - sgn * h * 0.3), (cx, bot + sgn * lw)]
    c.d.polygon(head, fill=c.fg)
    c.ln(c.x0, c.y1, c.x1, c.y1)


def _like(c: _Cell) -> None:
    x0, y0, x1, y1, w, h = c.x0, c.y0, c.x1, c.y1, c.w, c.h
    rr = w * 0.27
    c.d.ellipse([x0, y0 + h * 0.08, x0 + 2 * rr, y0 + h * 0.08 + 2 * rr], fill=c.fg)
    c.d.ellipse([x1 - 2 * rr, y0 + h * 0.08, x1, y0 + h * 0.08 + 2 * rr], fill=c.fg)
    tip = [(x0 + w * 0.02, y0 + h * 0.08 + rr * 1.2), (x1 - w * 0.02, y0 + h * 0.08 + rr * 1.2), (c.cx, y1)]
    c.d.polygon(tip, fill=c.fg)


def _lock(c: _Cell) -> None:
    x0, y0, x1, y1, w, h, cx, cy, lw = c.x0, c.y0, c.x1, c.y1, c.w, c.h, c.cx, c.cy, c.lw
    c.d.arc([x0 + w * 0.2, y0, x1 - w * 0.2, y0 + h * 0.7], 180, 360, fill=c.fg, width=lw + 1)
    c.ln(x0 + w * 0.2 + lw / 2, y0 + h * 0.35, x0 + w * 0.2 + lw / 2, y0 + h * 0.45)
    c.ln(x1 - w * 0.2 - lw / 2, y0 + h * 0.35, x1 - w * 0.2 - lw / 2, y0 + h * 0.45)
    c.d.rectangle([x0 + w * 0.08, y0 + h * 0.42, x1 - w * 0.08, y1], fill=c.fg)
    c.d.ellipse([cx - w * 0.08, cy + h * 0.08, cx + w * 0.08, cy + h * 0.24], fill=c.bg)


def _mail(c: _Cell) -> None:
    x0, y0, x1, h = c.x0, c.y0, c.x1, c.h
    c.d.rectangle([x0, y0 + h * 0.15, x1, c.y1 - h * 0.12], outline=c.fg, width=c.lw)
    c.ln(x0, y0 + h * 0.15, c.cx, c.cy + h * 0.05, x1, y0 + h * 0.15)


def _calendar(c: _Cell) -> None:
    x0, y0, x1, y1, w, h = c.x0, c.y0, c.x1, c.y1, c.w, c.h
    c.d.rectangle([x0, y0 + h * 0.12, x1, y1], outline=c.fg, width=c.lw)
    c.d.rectangle([x0, y0 + h * 0.12, x1, y0 + h * 0.34], fill=c.fg)
    c.ln(x0 + w * 0.28, y0, x0 + w * 0.28, y0 + h * 0.2)
    c.ln(x1 - w * 0.28, y0, x1 - w * 0.28, y0 + h * 0.2)
    t = max(1.0, w * 0.09)
    for gx in (0.3, 0.7) if c.s < 18 else (0.28, 0.5, 0.72):  # day cells: fewer on a small glyph
        for gy in (0.56, 0.8):
            px, py = x0 + w * gx, y0 + h * gy
            c.d.rectangle([px - t / 2, py - t / 2, px + t / 2, py + t / 2], fill=c.fg)


def _play(c: _Cell) -> None:
    c.d.polygon([(c.x0 + c.w * 0.18, c.y0), (c.x1, c.cy), (c.x0 + c.w * 0.18, c.y1)], fill=c.fg)


def _circled(c: _Cell, glyph: str) -> None:
    """`info` ("i") or `help` ("?"): a character in a ring."""
    c.d.ellipse([c.x0, c.y0, c.x1, c.y1], outline=c.fg, width=c.lw)
    c.d.text((c.cx, c.cy + 0.5), glyph, fill=c.fg, font=get_font(max(8, round(c.s * 0.6))), anchor="mm")


def _menu(c: _Cell) -> None:
    for fy in (0.15, 0.5, 0.85):
        c.ln(c.x0, c.y0 + c.h * fy, c.x1, c.y0 + c.h * fy)


def _more_options(c: _Cell) -> None:
    t = max(1.5, c.s / 10)
    for fx in (0.15, 0.5, 0.85):
        px = c.x0 + c.w * fx
        c.d.ellipse([px - t, c.cy - t, px + t, c.cy + t], fill=c.fg)


def _share(c: _Cell) -> None:
    w, h = c.w, c.h
    pts = [(c.x1 - w * 0.15, c.y0 + h * 0.15), (c.x0 + w * 0.15, c.cy), (c.x1 - w * 0.15, c.y1 - h * 0.15)]
    c.ln(*pts[0], *pts[1], *pts[2])
    t = w * 0.16
    for px, py in pts:
        c.d.ellipse([px - t, py - t, px + t, py + t], fill=c.fg)


def _print(c: _Cell) -> None:
    x0, y0, x1, y1, w, h, lw = c.x0, c.y0, c.x1, c.y1, c.w, c.h, c.lw
    c.d.rectangle([x0 + w * 0.22, y0, x1 - w * 0.22, y0 + h * 0.3], outline=c.fg, width=lw)
    c.d.rounded_rectangle([x0, y0 + h * 0.3, x1, y1 - h * 0.2], radius=max(1, c.s // 8), fill=c.fg)
    c.d.rectangle([x0 + w * 0.22, y0 + h * 0.6, x1 - w * 0.22, y1], fill=c.bg, outline=c.fg, width=lw)


def _save(c: _Cell) -> None:
    x0, y0, x1, y1, w, h, lw = c.x0, c.y0, c.x1, c.y1, c.w, c.h, c.lw
    c.d.polygon([(x0, y0), (x1 - w * 0.2, y0), (x1, y0 + h * 0.2), (x1, y1), (x0, y1)], fill=c.fg)
    c.d.rectangle([x0 + w * 0.22, y0 + lw, x1 - w * 0.3, y0 + h * 0.32], fill=c.bg)
    c.d.rectangle([x0 + w * 0.2, y0 + h * 0.55, x1 - w * 0.2, y1 - lw], fill=c.bg)


def _arrow(c: _Cell, back: bool) -> None:
    """`back` (pointing left) or `forward` (pointing right)."""
    a, b = (c.x1, c.x0) if back else (c.x0, c.x1)
    c.ln(a, c.cy, b, c.cy)
    sgn = 1 if back else -1
    c.ln(b + sgn * c.w * 0.42, c.y0 + c.h * 0.1, b, c.cy, b + sgn * c.w * 0.42, c.y1 - c.h * 0.1)


def _filter(c: _Cell) -> None:
    w, cx, cy = c.w, c.cx, c.cy
    left, right = cx - w * 0.1, cx + w * 0.1  # the stem
    funnel = [(c.x0, c.y0), (c.x1, c.y0), (right, cy), (right, c.y1), (left, c.y1 - c.h * 0.12), (left, cy)]
    c.d.polygon(funnel, fill=c.fg)


def _bookmark(c: _Cell) -> None:
    x0, x1, w = c.x0, c.x1, c.w
    ribbon = [(x0 + w * 0.15, c.y0), (x1 - w * 0.15, c.y0), (x1 - w * 0.15, c.y1), (c.cx, c.y1 - c.h * 0.3),
              (x0 + w * 0.15, c.y1)]  # fmt: skip
    c.d.polygon(ribbon, fill=c.fg)


def _image(c: _Cell) -> None:
    x0, y0, x1, y1, w, h, lw = c.x0, c.y0, c.x1, c.y1, c.w, c.h, c.lw
    c.d.rectangle([x0, y0 + h * 0.1, x1, y1 - h * 0.1], outline=c.fg, width=lw)
    mountain = [
        (x0 + lw, y1 - h * 0.1 - lw),
        (x0 + w * 0.38, c.cy - h * 0.02),
        (x0 + w * 0.65, y1 - h * 0.1 - lw),
    ]
    c.d.polygon(mountain, fill=c.fg)
    c.d.ellipse([x1 - w * 0.32, y0 + h * 0.22, x1 - w * 0.14, y0 + h * 0.4], fill=c.fg)


def _close(c: _Cell) -> None:
    x0, y0, x1, y1, w, h = c.x0, c.y0, c.x1, c.y1, c.w, c.h
    c.ln(x0 + w * 0.1, y0 + h * 0.1, x1 - w * 0.1, y1 - h * 0.1)
    c.ln(x0 + w * 0.1, y1 - h * 0.1, x1 - w * 0.1, y0 + h * 0.1)


def _minimize(c: _Cell) -> None:
    c.ln(c.x0 + c.w * 0.1, c.cy, c.x1 - c.w * 0.1, c.cy)


def _maximize(c: _Cell) -> None:
    w, h = c.w, c.h
    c.d.rectangle(
        [c.x0 + w * 0.12, c.y0 + h * 0.12, c.x1 - w * 0.12, c.y1 - h * 0.12], outline=c.fg, width=c.lw
    )


GLYPHS: dict[str, Callable[[_Cell], None]] = {
    "settings": _settings, "search": _search, "delete": _delete, "favorite": _favorite, "home": _home,
    "add": _add, "notifications": _notifications, "profile": _profile, "folder": _folder, "edit": _edit,
    "refresh": _refresh, "download": partial(_transfer, down=True), "upload": partial(_transfer, down=False),
    "like": _like, "lock": _lock, "mail": _mail, "calendar": _calendar, "play": _play,
    "info": partial(_circled, glyph="i"), "help": partial(_circled, glyph="?"), "menu": _menu,
    "more options": _more_options, "share": _share, "print": _print, "save": _save,
    "back": partial(_arrow, back=True), "forward": partial(_arrow, back=False), "filter": _filter,
    "bookmark": _bookmark, "image": _image, "close": _close, "minimize": _minimize, "maximize": _maximize,
}  # fmt: skip


def draw_icon(d: ImageDraw.ImageDraw, name: str, x: int, y: int, s: int, fg: RGB, bg: RGB) -> None:
    """Draw glyph `name` inside the square [x, x+s) x [y, y+s) in `fg`, cut-outs in `bg`."""
    glyph = GLYPHS.get(name)
    if glyph is None:
        raise ValueError(f"no glyph for icon {name!r}")
    lw = max(1, round(s / 9))
    m = max(1, lw // 2 + 1)  # inset so a stroke of width lw stays inside the square
    glyph(_Cell(d, s, lw, x + m, y + m, x + s - 1 - m, y + s - 1 - m, fg, bg))

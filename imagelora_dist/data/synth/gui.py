"""GUI screenshots: an application window (chrome from chrome.py) whose content area holds form widgets.

Every screen is an application window (title bar, optional menu bar, toolbar, tabs, sidebar and status
bar) whose content area holds form widgets laid out without overlap, then decorations that are never
targets (a chart, a page of text, thumbnails, table rows) in the space left over.
"""

from __future__ import annotations

import random

from PIL import Image

from imagelora_dist.data.synth.canvas import Screen
from imagelora_dist.data.synth.chrome import desktop, menu_bar, sidebar, status_bar, tabs, title_bar, toolbar
from imagelora_dist.data.synth.elements import Box, Element
from imagelora_dist.data.synth.theme import WALLPAPERS, mix
from imagelora_dist.data.synth.vocabulary import BUTTON_GROUPS, HEADINGS, LOREM
from imagelora_dist.data.synth.widgets import WIDGET_WEIGHTS, WIDGETS, Form, widget_height


def _heading(s: Screen, ax0: int, ay0: int, ax1: int, ay1: int, gap: int) -> int | None:
    """Maybe a heading at the top of the content; return the y below it (None: no heading)."""
    hfont = s.font(s.rng.choice((3, 4, 6)))
    text = s.pick(HEADINGS, lambda h: s.text_w(h, hfont) <= ax1 - ax0)
    if not text:
        return None
    asc, desc = hfont.getmetrics()
    if ay0 + asc + desc > ay1:
        return None
    s.add("text", text, s.text(ax0, ay0, text, hfont, s.theme.text, anchor="la"))
    return ay0 + asc + desc + gap + s.px(4)


def _dialog_buttons(
    s: Screen, area: Box, inner: Box, form: Form, gap: int, budget: int
) -> tuple[int, int] | None:
    """Maybe a dialog's button group along the bottom; (elements added, new content bottom) or None."""
    rng = s.rng
    ax0, ay0, ax1, ay1 = inner
    group = list(rng.choice(BUTTON_GROUPS))[-budget:]
    if any(s.taken(b) for b in group):
        return None
    widths = [s.text_w(b, form.font) + 2 * s.px(12) for b in group]
    total = sum(widths) + s.px(8) * (len(group) - 1)
    if total > ax1 - ax0:
        return None
    x = ax1 - total if rng.random() < 0.75 else ax0
    y = ay1 - form.ch
    for k, (label, bw) in enumerate(zip(group, widths, strict=True)):
        style = "primary" if k == len(group) - 1 else "secondary"
        if label in ("Delete", "Discard") and style == "primary":
            style = "danger"
        s.add("button", label, s.button(x, y, label, form.ch, style, form.font, form.radius))
        x += bw + s.px(8)
    ay1 = y - gap - s.px(4)
    if rng.random() < 0.5:  # a separator above the buttons
        s.d.line([(area[0] + 1, ay1 + gap // 2), (area[2] - 2, ay1 + gap // 2)], fill=s.theme.border)
        ay1 -= gap
    return len(group), ay1


def content(s: Screen, area: Box, n: int) -> None:
    """Lay out up to `n` widget elements in `area` (one or two columns), then decorate what is left."""
    rng = s.rng
    pad = s.px(rng.choice((10, 12, 14, 16)))
    ax0, ay0, ax1, ay1 = area[0] + pad, area[1] + pad, area[2] - pad, area[3] - pad
    if ax1 - ax0 < s.px(80) or ay1 - ay0 < s.px(24):
        return
    ch = s.base + s.px(rng.choice((9, 10, 12)))
    gap = s.px(rng.choice((6, 8, 10)))
    radius = rng.choice((2, 3, 4, 6, ch // 2))
    font = s.font(0)
    budget = n
    if budget > 0 and rng.random() < 0.55:
        below = _heading(s, ax0, ay0, ax1, ay1, gap)
        if below is not None:
            budget, ay0 = budget - 1, below
    if budget >= 1 and rng.random() < 0.55 and ay1 - ch >= ay0:
        # Only `font`, `ch` and `radius` matter to the button row; the rest of the form is drawn below.
        placed = _dialog_buttons(s, area, (ax0, ay0, ax1, ay1), Form(font, ch, 0, False, radius), gap, budget)
        if placed is not None:
            budget, ay1 = budget - placed[0], placed[1]
    width = ax1 - ax0
    ncols = 2 if width >= s.px(320) and rng.random() < 0.45 else 1
    cgap = s.px(20)
    cw = (width - cgap * (ncols - 1)) // ncols
    cols = [[ax0 + k * (cw + cgap), ay0] for k in range(ncols)]
    form = Form(font, ch, s.px(rng.choice((64, 72, 84))), rng.random() < 0.35, radius)
    col = 0
    failures = 0
    while budget > 0 and col < ncols and failures < 12:
        kind = rng.choices(list(WIDGET_WEIGHTS), list(WIDGET_WEIGHTS.values()))[0]
        x, y = cols[col]
        need = widget_height(s, kind, form)
        if y + need > ay1:
            if need <= ch:  # not even a one-line widget fits: this column is full
                col += 1
            failures += 1
            continue
        used = WIDGETS[kind](s, form, x, y, cw, budget)
        if used is None:
            failures += 1
            continue
        h, count = used
        budget -= count
        cols[col][1] = y + h + gap
        if ncols > 1 and rng.random() < 0.5:  # move on to the other column if it is not lower
            col = (col + 1) % ncols if cols[(col + 1) % ncols][1] <= cols[col][1] else col
    for x, y in cols:
        if ay1 - y >= s.px(56) and cw >= s.px(100) and rng.random() < 0.6:
            decorate(s, x, y, x + cw, ay1)


def _chart(s: Screen, x0: int, y0: int, x1: int, y1: int) -> None:
    """A bar or line chart on a card with grid lines."""
    rng, t, d = s.rng, s.theme, s.d
    d.rounded_rectangle([x0, y0, x1 - 1, y1 - 1], radius=s.px(6), fill=t.input_bg, outline=t.border)
    pad = s.px(10)
    bx0, by0, bx1, by1 = x0 + pad, y0 + pad, x1 - pad, y1 - pad
    for k in range(1, 4):
        gy = by0 + (by1 - by0) * k // 4
        d.line([(bx0, gy), (bx1, gy)], fill=mix(t.input_bg, t.border, 0.6))
    n = rng.randint(5, 12)
    bw = (bx1 - bx0) / n
    colors = (t.accent, mix(t.accent, t.input_bg, 0.5))
    line = rng.random() < 0.4
    pts = []
    for k in range(n):
        top = by1 - (by1 - by0) * rng.uniform(0.15, 0.95)
        if line:
            pts.append((bx0 + bw * (k + 0.5), top))
        else:
            d.rectangle(
                [bx0 + bw * k + bw * 0.2, top, bx0 + bw * (k + 1) - bw * 0.2, by1], fill=colors[k % 2]
            )
    if pts:
        d.line(pts, fill=t.accent, width=s.px(2), joint="curve")
    d.line([(bx0, by1), (bx1, by1)], fill=t.muted)


def _page(s: Screen, x0: int, y0: int, x1: int, y1: int) -> None:
    """A page of filler prose (Latin, so it never reads as a target's label)."""
    rng, t = s.rng, s.theme
    page = (255, 255, 255) if not t.dark else mix(t.window, (255, 255, 255), 0.04)
    s.d.rectangle([x0, y0, x1 - 1, y1 - 1], fill=page, outline=t.border)
    font = s.font(-2)
    asc, desc = font.getmetrics()
    y = y0 + s.px(8)
    fg = (70, 70, 70) if not t.dark else (190, 190, 190)
    while y + asc + desc <= y1 - s.px(6):
        line = ""
        while True:
            cand = (line + " " + rng.choice(LOREM)).strip()
            if s.text_w(cand, font) > x1 - x0 - s.px(16):
                break
            line = cand
        if rng.random() < 0.15:  # paragraph end: a short line
            line = " ".join(line.split()[: max(1, len(line.split()) // 2)])
        s.text(x0 + s.px(8), y, line, font, fg, anchor="la")
        y += asc + desc + s.px(3)


def _thumbs(s: Screen, x0: int, y0: int, x1: int, y1: int) -> None:
    """A grid of landscape thumbnails."""
    rng, d = s.rng, s.d
    size = s.px(rng.choice((48, 56, 64)))
    gap = s.px(8)
    y = y0
    while y + size <= y1:
        x = x0
        while x + size <= x1:
            sky = rng.choice(WALLPAPERS)[rng.randrange(2)]
            d.rounded_rectangle([x, y, x + size - 1, y + size - 1], radius=s.px(4), fill=sky)
            right, bottom = x + size - 1, y + size - 1
            hills = [
                (x, y + size * 0.8), (x + size * 0.35, y + size * 0.45), (x + size * 0.6, y + size * 0.7),
                (x + size * 0.8, y + size * 0.55), (right, y + size * 0.75), (right, bottom), (x, bottom),
            ]  # fmt: skip
            d.polygon(hills, fill=mix(sky, (20, 60, 30), 0.6))
            x += size + gap
        y += size + gap


def _rows(s: Screen, x0: int, y0: int, x1: int, y1: int) -> None:
    """Table rows of placeholder bars, every other row shaded."""
    rng, t, d = s.rng, s.theme, s.d
    rh = s.px(rng.choice((22, 26)))
    y = y0
    k = 0
    while y + rh <= y1:
        if k % 2 == 1:
            d.rectangle([x0, y, x1 - 1, y + rh - 1], fill=mix(t.window, t.border, 0.25))
        bar = mix(t.window, t.muted, 0.45)
        bx = x0 + s.px(8)
        for frac in (0.3, 0.2, 0.15):
            bw = round((x1 - x0) * frac * rng.uniform(0.5, 1.0))
            mid = y + rh // 2
            d.rounded_rectangle([bx, mid - s.px(3), bx + bw, mid + s.px(3)], radius=s.px(3), fill=bar)
            bx += round((x1 - x0) * (frac + 0.08))
        y += rh
        k += 1


_DECORATIONS = {"chart": _chart, "page": _page, "thumbs": _thumbs, "rows": _rows}


def decorate(s: Screen, x0: int, y0: int, x1: int, y1: int) -> None:
    """Fill empty content space with something that is never a target: a chart, a page, thumbnails, rows."""
    _DECORATIONS[s.rng.choice(tuple(_DECORATIONS))](s, x0, y0, x1, y1)


def render_screen(seed: int, width: int, height: int, n_elements: int) -> tuple[Image.Image, list[Element]]:
    """Render one GUI screenshot: the image and every targetable element on it.

    The window chrome (title-bar buttons, menus, toolbar icons, tabs, sidebar, status text) brings its own
    elements; `n_elements` counts the widgets of the content area, fewer when they do not fit.
    """
    rng = random.Random(seed)
    s = Screen(rng, width, height)
    win = desktop(s)
    y = title_bar(s, win)
    if rng.random() < 0.5:
        y = menu_bar(s, win, y)
    if rng.random() < 0.55:
        y = toolbar(s, win, y)
    bottom = win[3] - 1
    if rng.random() < 0.35:
        bottom = status_bar(s, win, win[3])
    x0 = win[0]
    if win[2] - win[0] >= s.px(340) and rng.random() < 0.35:
        x0 = sidebar(s, y, win[0], bottom)
    if rng.random() < 0.35:
        y = tabs(s, x0, y, win[2])
    content(s, (x0, y, win[2], bottom), n_elements)
    return s.img, s.elements

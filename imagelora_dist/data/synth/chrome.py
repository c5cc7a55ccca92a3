"""Window chrome of a GUI screenshot: desktop, taskbar, title/menu/tool/status bars, sidebar, tabs.

Each function draws one part onto a `Screen`, records the targetable elements it brings, and returns
the coordinate where the next part starts.
"""

from __future__ import annotations

from PIL import Image

from imagelora_dist.data.synth.canvas import Screen
from imagelora_dist.data.synth.elements import Box
from imagelora_dist.data.synth.icons import draw_icon
from imagelora_dist.data.synth.theme import ACCENTS, WALLPAPERS, mix
from imagelora_dist.data.synth.vocabulary import (
    APPS,
    DOCS,
    MENU_SETS,
    SIDEBAR_SETS,
    STATUS_TEXTS,
    TAB_SETS,
    WINDOW_ICONS,
)

_SEARCH_PLACEHOLDERS = ("Search", "Search files", "Search mail", "Search settings", "Type to search")


def desktop(s: Screen) -> Box:
    """Paint the wallpaper (and maybe a taskbar); return the application window's box, drawn empty."""
    rng, w, h = s.rng, s.w, s.h
    c1, c2 = rng.choice(WALLPAPERS)
    if rng.random() < 0.5:
        c1, c2 = c2, c1
    mask = Image.linear_gradient("L").resize((w, h))
    s.img.paste(Image.composite(Image.new("RGB", (w, h), c2), Image.new("RGB", (w, h), c1), mask))
    for _ in range(rng.randint(0, 3)):  # soft shapes on the wallpaper
        r = rng.randint(h // 6, h // 2)
        cx, cy = rng.randint(0, w), rng.randint(0, h)
        s.d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=mix(c1, c2, rng.uniform(0.2, 0.8)))
    bottom = h
    if rng.random() < 0.5:
        bottom = taskbar(s)
    if rng.random() < 0.4:  # maximised
        win = (0, 0, w, bottom)
    else:
        lo = s.px(6)
        ml, mr = rng.randint(lo, max(lo, w // 14)), rng.randint(lo, max(lo, w // 14))
        mt, mb = rng.randint(lo, max(lo, h // 14)), rng.randint(lo, max(lo, h // 14))
        win = (ml, mt, w - mr, bottom - mb)
        s.d.rectangle([win[0] + 2, win[1] + 3, win[2] + 1, win[3] + 2], fill=mix(c1, (0, 0, 0), 0.45))
    s.d.rectangle([win[0], win[1], win[2] - 1, win[3] - 1], fill=s.theme.window, outline=s.theme.border)
    return win


def taskbar(s: Screen) -> int:
    """A taskbar along the bottom (launchers, a clock); return its top."""
    rng, t = s.rng, s.theme
    th = s.px(rng.choice((22, 24, 26)))
    y0 = s.h - th
    bar = (24, 26, 32) if t.dark or rng.random() < 0.6 else (228, 230, 235)
    fg = (240, 240, 240) if sum(bar) < 300 else (30, 30, 30)
    s.d.rectangle([0, y0, s.w - 1, s.h - 1], fill=bar)
    x = s.px(8)
    size = th - s.px(8)
    ty = y0 + (th - size) // 2
    for _ in range(rng.randint(3, 6)):  # app launchers: plain coloured tiles, never a named glyph
        s.d.rounded_rectangle(
            [x, ty, x + size, ty + size], radius=max(1, size // 4), fill=rng.choice(ACCENTS)
        )
        x += size + s.px(6)
    clock = f"{rng.randint(1, 12)}:{rng.randint(0, 59):02d} {rng.choice(('AM', 'PM'))}"
    box = s.text(s.w - s.px(8), y0 + th / 2, clock, s.font(-1), fg, anchor="rm")
    s.add("text", clock, box, region="taskbar")
    return y0


def _win_controls(s: Screen, win: Box, th: int, left: int) -> tuple[int, int]:
    """Windows: control cells at the right, an app glyph at the left; return the title's (left, right)."""
    t, d = s.theme, s.d
    x0, y0, x1, _ = win
    cw = s.px(30)
    for i, name in enumerate(WINDOW_ICONS):
        bx1 = x1 - 1 - [0, 2, 1][i] * cw  # on screen: minimize, maximize, close
        bx0 = bx1 - cw
        if name == "close" and s.rng.random() < 0.3:
            d.rectangle([bx0, y0, bx1 - 1, y0 + th - 2], fill=(196, 43, 28))
        g = s.px(10)
        draw_icon(d, name, bx0 + (cw - g) // 2, y0 + (th - g) // 2, g, t.title_text, t.title_bg)
        s.add("icon", "", (bx0, y0, bx1, y0 + th - 1), name=name, region="title bar")
    right = x1 - 3 * cw - s.px(6)
    g = s.px(14)  # app glyph, part of the title
    gy = y0 + (th - g) // 2
    d.rounded_rectangle([left, gy, left + g, gy + g], radius=max(1, g // 4), fill=t.accent)
    return left + g + s.px(6), right


def _mac_controls(s: Screen, win: Box, th: int, left: int) -> int:
    """macOS: three coloured dots at the left; return where the title may start."""
    size, gap = s.px(12), s.px(8)
    colours = ((255, 95, 87), (254, 188, 46), (40, 200, 64))
    for i, (name, col) in enumerate(zip(WINDOW_ICONS, colours, strict=True)):
        bx = left + i * (size + gap)
        by = win[1] + (th - size) // 2
        s.d.ellipse([bx, by, bx + size - 1, by + size - 1], fill=col, outline=mix(col, (0, 0, 0), 0.15))
        s.add("icon", "", (bx, by, bx + size, by + size), name=name, region="title bar")
    return left + 3 * size + 2 * gap + s.px(10)


def _gnome_controls(s: Screen, win: Box, th: int, right: int) -> int:
    """GNOME: a round close button at the right, then maximize and minimize; return where the title ends."""
    t, d = s.theme, s.d
    y0 = win[1]
    size = s.px(20)
    bx, by = right - size, y0 + (th - size) // 2
    d.ellipse([bx, by, bx + size - 1, by + size - 1], fill=mix(t.title_bg, t.title_text, 0.15))
    gs = s.px(10)
    draw_icon(d, "close", bx + (size - gs) // 2, by + (size - gs) // 2, gs, t.title_text, t.title_bg)
    s.add("icon", "", (bx, by, bx + size, by + size), name="close", region="title bar")
    gx = bx - s.px(10) - gs
    gy = y0 + (th - gs) // 2
    for name in ("maximize", "minimize"):
        draw_icon(d, name, gx, gy, gs, t.title_text, t.title_bg)
        s.add("icon", "", (gx, gy, gx + gs, gy + gs), name=name, region="title bar")
        gx -= s.px(12) + gs
    return gx + gs


def title_bar(s: Screen, win: Box) -> int:
    """A title bar in the Windows, macOS or GNOME manner: window controls and a title; return its bottom."""
    rng, t, d = s.rng, s.theme, s.d
    style = rng.choice(("win", "mac", "gnome"))
    th = s.px({"win": 26, "mac": 24, "gnome": 30}[style])
    x0, y0, x1, _ = win
    d.rectangle([x0, y0, x1 - 1, y0 + th - 1], fill=t.title_bg)
    d.line([(x0, y0 + th - 1), (x1 - 1, y0 + th - 1)], fill=mix(t.title_bg, (0, 0, 0), 0.12))
    font = s.font(0 if style != "gnome" else 1)
    left, right = x0 + s.px(8), x1 - s.px(8)
    if style == "win":
        left, right = _win_controls(s, win, th, left)
    elif style == "mac":
        left = _mac_controls(s, win, th, left)
    else:
        right = _gnome_controls(s, win, th, right)
    centered = style != "win"
    s.used_icons.update(WINDOW_ICONS)
    app, doc = rng.choice(APPS), rng.choice(DOCS)
    # A centred title must clear the controls on both sides.
    room = (min(right - x0 - (x1 - x0) / 2, (x0 + x1) / 2 - left) * 2 if centered else right - left) - s.px(6)
    for title in (f"{doc} - {app}", app) if rng.random() < 0.7 else (app,):
        if s.text_w(title, font) <= room and not s.taken(title):
            if centered:
                box = s.text((x0 + x1) / 2, y0 + th / 2, title, font, t.title_text, anchor="mm")
            else:
                box = s.text(left, y0 + th / 2, title, font, t.title_text)
            s.add("text", title, box, region="title bar")
            break
    return y0 + th


def menu_bar(s: Screen, win: Box, y: int) -> int:
    """A menu bar (File, Edit, ...) below `y`; return its bottom."""
    rng, t = s.rng, s.theme
    mh = s.px(rng.choice((18, 20, 22)))
    x0, _, x1, _ = win
    bg = t.window if rng.random() < 0.5 else t.surface
    s.d.rectangle([x0 + 1, y, x1 - 2, y + mh - 1], fill=bg)
    font = s.font(-1 if rng.random() < 0.5 else 0)
    pad = s.px(7)
    x = x0 + s.px(4)
    for label in rng.choice(MENU_SETS):
        tw = s.text_w(label, font)
        if x + tw + 2 * pad > x1 - s.px(4):
            break
        if s.taken(label):
            continue
        s.text(x + pad, y + mh / 2, label, font, t.text)
        s.add("menu", label, (x, y + 1, x + tw + 2 * pad, y + mh - 1), region="menu bar")
        x += tw + 2 * pad
    s.d.line([(x0 + 1, y + mh - 1), (x1 - 2, y + mh - 1)], fill=t.border)
    return y + mh


def _toolbar_search(s: Screen, x0: int, y: int, bh: int, right: int) -> int:
    """Maybe a search field ending at `right`; return where the toolbar's icons must end."""
    t, d = s.theme, s.d
    fw = s.px(s.rng.choice((110, 130, 150)))
    if right - fw <= x0 + s.px(120):
        return right
    font = s.font(-1)
    text = s.pick(_SEARCH_PLACEHOLDERS)
    if not text:
        return right
    fh = bh - s.px(10)
    fx0, fy0 = right - fw, y + (bh - fh) // 2
    d.rounded_rectangle(
        [fx0, fy0, right - 1, fy0 + fh - 1], radius=fh // 2, fill=t.input_bg, outline=t.input_border
    )
    gs = max(8, fh - s.px(10))
    # a decorative magnifier inside the field: part of the input, so the icon name is reserved
    draw_icon(d, "search", fx0 + s.px(6), fy0 + (fh - gs) // 2, gs, t.muted, t.input_bg)
    s.used_icons.add("search")
    s.text(fx0 + s.px(10) + gs, fy0 + fh / 2, text, font, t.muted)
    s.add("input", text, (fx0, fy0, right, fy0 + fh), state="placeholder", region="toolbar")
    return fx0 - s.px(10)


def toolbar(s: Screen, win: Box, y: int) -> int:
    """A toolbar of icons (and maybe a search field) below `y`; return its bottom."""
    rng, t, d = s.rng, s.theme, s.d
    bh = s.px(rng.choice((28, 30, 34)))
    x0, _, x1, _ = win
    d.rectangle([x0 + 1, y, x1 - 2, y + bh - 1], fill=t.surface)
    d.line([(x0 + 1, y + bh - 1), (x1 - 2, y + bh - 1)], fill=t.border)
    size = s.px(rng.choice((14, 16, 18)))
    gap = s.px(rng.choice((10, 12, 14)))
    right = x1 - s.px(8)
    if rng.random() < 0.45:  # a search box at the right end of the toolbar
        right = _toolbar_search(s, x0, y, bh, right)
    x = x0 + s.px(10)
    for _ in range(rng.randint(3, 9)):
        if x + size > right:
            break
        name = s.pick_icon()
        if name is None:
            break
        iy = y + (bh - size) // 2
        draw_icon(d, name, x, iy, size, t.text, t.surface)
        s.add("icon", "", (x, iy, x + size, iy + size), name=name, region="toolbar")
        x += size + gap
        if rng.random() < 0.2 and x + gap < right:  # group separator
            d.line([(x - gap // 2, y + s.px(6)), (x - gap // 2, y + bh - s.px(7))], fill=t.border)
            x += gap // 2
    return y + bh


def status_bar(s: Screen, win: Box, bottom: int) -> int:
    """A status bar ending at `bottom` with one or two status texts; return its top."""
    t = s.theme
    sh = s.px(20)
    x0, _, x1, _ = win
    y = bottom - sh
    s.d.rectangle([x0 + 1, y, x1 - 2, bottom - 2], fill=t.surface)
    s.d.line([(x0 + 1, y), (x1 - 2, y)], fill=t.border)
    font = s.font(-2)
    left = s.pick(STATUS_TEXTS)
    if left:
        box = s.text(x0 + s.px(8), y + sh / 2, left, font, t.muted)
        s.add("text", left, box, region="status bar")
        right = s.pick(STATUS_TEXTS, lambda txt: s.text_w(txt, font) < (x1 - x0) / 2 - s.px(20))
        if right and s.rng.random() < 0.6:
            box = s.text(x1 - s.px(10), y + sh / 2, right, font, t.muted, anchor="rm")
            s.add("text", right, box, region="status bar")
    return y


def sidebar(s: Screen, y0: int, x0: int, y1: int) -> int:
    """A navigation sidebar from `x0` between `y0` and `y1`, one item selected; return its right edge."""
    rng, t, d = s.rng, s.theme, s.d
    sw = s.px(rng.choice((100, 112, 124, 136)))
    d.rectangle([x0 + 1, y0, x0 + sw - 1, y1 - 2], fill=t.sidebar)
    d.line([(x0 + sw - 1, y0), (x0 + sw - 1, y1 - 2)], fill=t.border)
    font = s.font(-1)
    ih = s.px(rng.choice((22, 24, 26)))
    y = y0 + s.px(8)
    with_icons = rng.random() < 0.5
    gs = s.px(12)
    items = rng.choice(SIDEBAR_SETS)
    selected = rng.randrange(len(items))
    for k, label in enumerate(items):
        if y + ih > y1 - s.px(6):
            break
        tx = x0 + s.px(12) + (gs + s.px(6) if with_icons else 0)
        if s.taken(label) or tx + s.text_w(label, font) > x0 + sw - s.px(10):
            continue
        box = (x0 + s.px(5), y, x0 + sw - s.px(6), y + ih)
        if k == selected:
            d.rounded_rectangle([box[0], box[1], box[2] - 1, box[3] - 1], radius=s.px(4), fill=t.select)
        if with_icons:
            name = s.pick_icon()
            if name:  # the glyph belongs to the item; reserving its name keeps icon targets unique
                bg = t.select if k == selected else t.sidebar
                draw_icon(d, name, x0 + s.px(11), y + (ih - gs) // 2, gs, t.muted, bg)
        s.text(tx, y + ih / 2, label, font, t.text)
        s.add("item", label, box, state="selected" if k == selected else "", region="sidebar")
        y += ih + s.px(2)
    return x0 + sw


def tabs(s: Screen, x0: int, y: int, x1: int) -> int:
    """A tab strip below `y`, one tab active; return its bottom."""
    rng, t, d = s.rng, s.theme, s.d
    th = s.px(rng.choice((24, 26)))
    d.rectangle([x0 + 1, y, x1 - 2, y + th - 1], fill=t.surface)
    font = s.font(-1)
    pad = s.px(12)
    x = x0 + s.px(6)
    labels = rng.choice(TAB_SETS)
    active = rng.randrange(min(3, len(labels)))
    underline = rng.random() < 0.5
    for k, label in enumerate(labels):
        tw = s.text_w(label, font)
        if x + tw + 2 * pad > x1 - s.px(6):
            break
        if s.taken(label):
            continue
        box = (x, y + s.px(3), x + tw + 2 * pad, y + th)
        if k == active and underline:
            d.rectangle([box[0], box[3] - s.px(2), box[2] - 1, box[3] - 1], fill=t.accent)
        elif k == active:  # a raised tab open into the content below
            d.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=t.window, outline=t.border)
            d.line([(box[0] + 1, box[3] - 1), (box[2] - 2, box[3] - 1)], fill=t.window)
        fg = t.text if k == active else t.muted
        s.text(x + pad, y + s.px(3) + (th - s.px(3)) / 2, label, font, fg)
        s.add("tab", label, box, state="selected" if k == active else "", region="tabs")
        x += tw + 2 * pad + s.px(2)
    d.line([(x0 + 1, y + th - 1), (x1 - 2, y + th - 1)], fill=t.border)
    return y + th

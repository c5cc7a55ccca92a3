"""Form widgets of a GUI screenshot's content area, one drawing function per kind (see `WIDGETS`).

A widget function draws one widget (or a small group: a button row, radio options, icons) at (x, y) in a
column `cw` wide, records its elements, and returns (height used, elements added), or None when
nothing fits or no unused label is left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from imagelora_dist.data.synth.canvas import Screen
from imagelora_dist.data.synth.icons import draw_icon
from imagelora_dist.data.synth.theme import Font
from imagelora_dist.data.synth.vocabulary import (
    BUTTONS,
    CHECKBOXES,
    DROPDOWNS,
    FIELDS,
    LINKS,
    RADIOS,
    SLIDERS,
    SWITCHES,
    TEXTS,
    key,
    words,
)


@dataclass(frozen=True)
class Form:
    """How the content area lays out its widgets: font, control height, label column, labels above, radius."""

    font: Font
    ch: int
    label_w: int
    stacked: bool
    radius: int


Placed = tuple[int, int] | None
Widget = Callable[[Screen, Form, int, int, int, int], Placed]


def widget_height(s: Screen, kind: str, form: Form) -> int:
    """Height a widget of `kind` needs (before knowing which label it gets)."""
    asc, desc = form.font.getmetrics()
    if kind in ("field", "dropdown") and form.stacked:
        return asc + desc + s.px(3) + form.ch
    if kind in ("link", "text"):
        return asc + desc
    return form.ch


def _labelled_box(s: Screen, f: Form, x: int, y: int, cw: int, budget: int, kind: str) -> Placed:
    """A text field (typed value or placeholder) or a dropdown, labelled at its left or above it."""
    rng, t, font, ch = s.rng, s.theme, f.font, f.ch
    small = s.font(-1)
    entries = [e for e in (FIELDS if kind == "field" else DROPDOWNS) if not s.taken(e[0])]
    if not entries:
        return None
    entry = rng.choice(entries)
    label = entry[0]
    with_label = budget >= 2
    lw = f.label_w if with_label and not f.stacked else 0
    if with_label and not f.stacked and s.text_w(label + ":", small) > lw - s.px(6):
        lw = s.text_w(label + ":", small) + s.px(8)
    fw = min(cw - lw, s.px(rng.choice((140, 170, 200, 240))))
    if fw < s.px(80):
        return None
    if kind == "field":
        typed = rng.random() < 0.5
        value = s.pick(words(entry[2]) if typed else (entry[1],))
    else:
        typed, value = True, s.pick(words(entry[1]))
    arrow = s.px(14) if kind == "dropdown" else 0
    if value is None or key(value) == key(label) or s.text_w(value, font) > fw - s.px(10) - arrow:
        return None
    fy = y
    if with_label:
        shown = label if f.stacked else label + ":"
        if f.stacked:
            box = s.text(x, y, shown, small, t.text, anchor="la")
            asc, desc = font.getmetrics()
            fy = y + asc + desc + s.px(3)
        else:
            box = s.text(x, y + ch / 2, shown, small, t.text)
        s.add("text", shown, box)
    fx = x + lw
    corner = min(f.radius, ch // 2, 6)
    frame = [fx, fy, fx + fw - 1, fy + ch - 1]
    if kind == "field":
        s.d.rounded_rectangle(frame, radius=corner, fill=t.input_bg, outline=t.input_border)
        s.text(fx + s.px(6), fy + ch / 2, value, font, t.text if typed else t.muted)
        s.add("input", value, (fx, fy, fx + fw, fy + ch), name=label, state="" if typed else "placeholder")
    else:
        fill = t.button_bg if rng.random() < 0.5 else t.input_bg
        s.d.rounded_rectangle(frame, radius=corner, fill=fill, outline=t.input_border)
        s.text(fx + s.px(6), fy + ch / 2, value, font, t.text)
        cx, cy, a = fx + fw - s.px(10), fy + ch / 2, s.px(4)
        chevron = [(cx - a, cy - a / 2), (cx, cy + a / 2), (cx + a, cy - a / 2)]
        s.d.line(chevron, fill=t.muted, width=max(1, s.px(1.5)))
        s.add("dropdown", value, (fx, fy, fx + fw, fy + ch), name=label)
    return (fy - y) + ch, 1 + with_label


def _checkbox_glyph(s: Screen, x: int, y: int, ch: int, on: bool) -> tuple[int, int, int]:
    """Draw a checkbox square (ticked when `on`); return its top and its width and height."""
    t = s.theme
    size = s.px(s.rng.choice((12, 13, 14)))
    sy = y + (ch - size) // 2
    square = [x, sy, x + size - 1, sy + size - 1]
    if on:
        s.d.rounded_rectangle(square, radius=s.px(2), fill=t.accent)
        tick = [(x + size * 0.22, sy + size * 0.52), (x + size * 0.42, sy + size * 0.72),
                (x + size * 0.78, sy + size * 0.28)]  # fmt: skip
        s.d.line(tick, fill=(255, 255, 255), width=max(2, s.px(2)))
    else:
        s.d.rounded_rectangle(square, radius=s.px(2), fill=t.input_bg, outline=t.input_border)
    return sy, size, size


def _switch_glyph(s: Screen, x: int, y: int, ch: int, on: bool) -> tuple[int, int, int]:
    """Draw a toggle switch (knob right and accent track when `on`); return its top, width and height."""
    gw, gh = s.px(28), s.px(16)
    sy = y + (ch - gh) // 2
    track = s.theme.accent if on else s.theme.input_border
    s.d.rounded_rectangle([x, sy, x + gw - 1, sy + gh - 1], radius=gh // 2, fill=track)
    k = gh - s.px(4)
    kx = x + gw - k - s.px(2) if on else x + s.px(2)
    s.d.ellipse([kx, sy + s.px(2), kx + k - 1, sy + s.px(2) + k - 1], fill=(255, 255, 255))
    return sy, gw, gh


def _toggle(s: Screen, f: Form, x: int, y: int, cw: int, budget: int, kind: str) -> Placed:
    """A checkbox or a switch with its label at the right."""
    label = s.pick(CHECKBOXES if kind == "checkbox" else SWITCHES)
    on = s.rng.random() < 0.5
    if label is None:
        return None
    glyph = _checkbox_glyph if kind == "checkbox" else _switch_glyph
    sy, gw, gh = glyph(s, x, y, f.ch, on)
    tx = x + gw + s.px(7)
    # Checked after drawing, as the data sets were made: a glyph whose label does not fit stays as a
    # decoration without a record.
    if tx + s.text_w(label, f.font) > x + cw:
        return None
    box = s.text(tx, y + f.ch / 2, label, f.font, s.theme.text)
    state = ("checked" if on else "unchecked") if kind == "checkbox" else ("on" if on else "off")
    s.add(kind, label, (x, min(sy, box[1]), box[2], max(sy + gh, box[3])), state=state)
    return f.ch, 1


def _radio_button(s: Screen, f: Form, x: int, y: int, text: str, on: bool) -> None:
    """One radio option: a ring (filled when `on`) and its text."""
    t = s.theme
    size = s.px(13)
    sy = y + (f.ch - size) // 2
    ring = t.accent if on else t.input_border
    s.d.ellipse([x, sy, x + size - 1, sy + size - 1], fill=t.input_bg, outline=ring, width=max(1, s.px(1)))
    if on:
        q = s.px(3)
        s.d.ellipse([x + q, sy + q, x + size - 1 - q, sy + size - 1 - q], fill=t.accent)
    box = s.text(x + size + s.px(6), y + f.ch / 2, text, f.font, t.text)
    s.add("radio", text, (x, min(sy, box[1]), box[2], max(sy + size, box[3])), state="selected" if on else "")


def _radios(s: Screen, f: Form, x: int, y: int, cw: int, budget: int) -> Placed:
    """A row of radio options (one selected), maybe after a group label."""
    rng = s.rng
    small = s.font(-1)
    groups = [g for g in RADIOS if not any(s.taken(o) for o in words(g[1]))]
    if not groups:
        return None
    glabel, opts = rng.choice(groups)
    with_label = budget >= 3 and not s.taken(glabel)
    options = list(words(opts))[: budget - with_label]
    selected = rng.randrange(len(options))
    x_cur = x
    size = s.px(13)
    placed: list[tuple[int | None, int]] = []  # (option index or None for the label, x)
    if with_label:
        placed.append((None, x_cur))
        x_cur += s.text_w(glabel + ":", small) + s.px(10)
    for k, o in enumerate(options):
        ow = size + s.px(6) + s.text_w(o, f.font)
        if x_cur + ow > x + cw:
            break
        placed.append((k, x_cur))
        x_cur += ow + s.px(14)
    if all(k is None for k, _ in placed):
        return None
    for k, px in placed:
        if k is None:
            box = s.text(px, y + f.ch / 2, glabel + ":", small, s.theme.text)
            s.add("text", glabel + ":", box)
        else:
            _radio_button(s, f, px, y, options[k], k == selected)
    return f.ch, len(placed)


def _buttons(s: Screen, f: Form, x: int, y: int, cw: int, budget: int) -> Placed:
    """One to three push buttons in a row, the first maybe primary."""
    rng = s.rng
    k = min(budget, rng.choice((1, 1, 2, 3)))
    style = rng.choice(("primary", "secondary", "outline"))
    x_cur, count = x, 0
    for _ in range(k):
        label = s.pick(BUTTONS, lambda b, x_cur=x_cur: x_cur + s.text_w(b, f.font) + 2 * s.px(12) <= x + cw)
        if label is None:
            break
        box = s.button(x_cur, y, label, f.ch, style, f.font, f.radius)
        s.add("button", label, box)
        x_cur = box[2] + s.px(8)
        count += 1
        style = "secondary" if style == "primary" else style
    return (f.ch, count) if count else None


def _line_of_text(s: Screen, f: Form, x: int, y: int, cw: int, budget: int, kind: str) -> Placed:
    """A link (maybe underlined) or a line of static text."""
    rng, t = s.rng, s.theme
    fnt = f.font if kind == "link" or rng.random() < 0.5 else s.font(-1)
    label = s.pick(LINKS if kind == "link" else TEXTS, lambda txt: s.text_w(txt, fnt) <= cw)
    if label is None:
        return None
    fill = t.link if kind == "link" else (t.muted if rng.random() < 0.5 else t.text)
    box = s.text(x, y, label, fnt, fill, anchor="la")
    if kind == "link" and rng.random() < 0.6:
        ub = y + fnt.getmetrics()[0] + 1
        s.d.line([(box[0], ub), (box[2] - 1, ub)], fill=t.link)
        box = (box[0], box[1], box[2], max(box[3], ub + 1))
    s.add(kind, label, box)
    asc, desc = f.font.getmetrics()
    return asc + desc, 1


def _slider(s: Screen, f: Form, x: int, y: int, cw: int, budget: int) -> Placed:
    """A labelled slider with its value in percent."""
    rng, t, d, ch = s.rng, s.theme, s.d, f.ch
    small = s.font(-1)
    label = s.pick(SLIDERS)
    if label is None:
        return None
    lw = s.text_w(label, small) + s.px(10)
    tw = min(cw - lw - s.px(40), s.px(rng.choice((120, 150, 180))))
    if tw < s.px(60):
        return None
    lbox = s.text(x, y + ch / 2, label, small, t.text)
    tx0, cy = x + lw, y + ch // 2
    frac = rng.random()
    th = s.px(4)
    ty0, ty1 = cy - th // 2, cy - th // 2 + th - 1
    d.rounded_rectangle([tx0, ty0, tx0 + tw - 1, ty1], radius=th // 2, fill=t.input_border)
    kx = tx0 + round(frac * (tw - 1))
    d.rounded_rectangle([tx0, ty0, kx, ty1], radius=th // 2, fill=t.accent)
    k = s.px(7)
    knob = t.accent if rng.random() < 0.5 else (255, 255, 255)
    d.ellipse([kx - k, cy - k, kx + k, cy + k], fill=knob, outline=t.accent)
    vbox = s.text(tx0 + tw + k + s.px(6), y + ch / 2, f"{round(frac * 100)}%", small, t.muted)
    s.add("slider", label, (x, min(lbox[1], cy - k), vbox[2], max(lbox[3], cy + k + 1, vbox[3])))
    return ch, 1


def _icons(s: Screen, f: Form, x: int, y: int, cw: int, budget: int) -> Placed:
    """Two to four icon buttons in a row, framed or bare."""
    rng, t, ch = s.rng, s.theme, f.ch
    k = min(budget, rng.randint(2, 4))
    size = s.px(rng.choice((16, 18, 20)))
    framed = rng.random() < 0.5
    cell = ch if framed else size
    x_cur, count = x, 0
    for _ in range(k):
        if x_cur + cell > x + cw:
            break
        name = s.pick_icon()
        if name is None:
            break
        cy0 = y + (ch - cell) // 2
        if framed:
            frame = [x_cur, cy0, x_cur + cell - 1, cy0 + cell - 1]
            s.d.rounded_rectangle(
                frame, radius=min(f.radius, cell // 2), fill=t.button_bg, outline=t.input_border
            )
        inset = (cell - size) // 2
        bg = t.button_bg if framed else t.window
        draw_icon(s.d, name, x_cur + inset, cy0 + inset, size, t.text, bg)
        s.add("icon", "", (x_cur, cy0, x_cur + cell, cy0 + cell), name=name)
        x_cur += cell + s.px(10)
        count += 1
    return (ch, count) if count else None


WIDGETS: dict[str, Widget] = {
    "field": partial(_labelled_box, kind="field"),
    "checkbox": partial(_toggle, kind="checkbox"),
    "switch": partial(_toggle, kind="switch"),
    "radio": _radios,
    "dropdown": partial(_labelled_box, kind="dropdown"),
    "button": _buttons,
    "link": partial(_line_of_text, kind="link"),
    "text": partial(_line_of_text, kind="text"),
    "slider": _slider,
    "icons": _icons,
}
# How often the content area asks for each kind.
WIDGET_WEIGHTS = {
    "field": 5, "checkbox": 4, "switch": 2, "radio": 2, "dropdown": 3, "button": 3, "link": 2, "text": 2,
    "slider": 1, "icons": 2,
}  # fmt: skip

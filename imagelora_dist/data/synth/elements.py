"""What a screen is made of, as the records describe it: targetable elements and their pixel boxes."""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]

ELEMENT_TYPES = (
    "button", "input", "checkbox", "switch", "radio", "dropdown", "link", "text", "icon", "slider", "tab",
    "menu", "item",
)  # fmt: skip


@dataclass(frozen=True)
class Element:
    """One targetable element: type, visible text ("" for icons), pixel box (x0, y0, x1, y1), x1/y1 exclusive.

    `name` is what an instruction calls it (the icon name; the text otherwise), `state` is "checked",
    "unchecked", "on", "off", "selected", "placeholder" or "", and `region` where it sits on the screen.
    """

    type: str
    text: str
    box: Box
    name: str = ""
    state: str = ""
    region: str = "content"

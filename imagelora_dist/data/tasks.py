"""Prompt and answer text of the screenshot tasks, shared by the synthesizer, the converter and eval.

Coordinates in text are normalised to integers in [0, 1000) so an answer does not change when the
collator resizes the image to its pixel budget.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

GROUNDING = "grounding"
REFERRING = "referring"
TASKS = (GROUNDING, REFERRING)
COORD_SCALE = 1000


def normalize_point(x: float, y: float, width: int, height: int) -> tuple[int, int]:
    """Pixel point -> integer coordinates in [0, 1000)."""
    nx = min(COORD_SCALE - 1, max(0, int(x * COORD_SCALE / width)))
    ny = min(COORD_SCALE - 1, max(0, int(y * COORD_SCALE / height)))
    return nx, ny


def normalize_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) -> integer coordinates in [0, 1000)."""
    x0, y0 = normalize_point(box[0], box[1], width, height)
    x1, y1 = normalize_point(box[2], box[3], width, height)
    return x0, y0, x1, y1


def box_center(box: Sequence[float]) -> tuple[float, float]:
    """Centre of a pixel box (x0, y0, x1, y1)."""
    return (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0


def grounding_answer(box: Sequence[float], width: int, height: int) -> str:
    """The click target for a grounding instruction: the box centre, as `(x, y)` in [0, 1000)."""
    x, y = normalize_point(*box_center(box), width, height)
    return f"({x}, {y})"


def referring_instruction(box: Sequence[float], width: int, height: int, what: str = "type and text") -> str:
    """Ask what the element inside a box is, answered with `what` (a GUI element: its type and text)."""
    x0, y0, x1, y1 = normalize_box(box, width, height)
    return f"What is the element in the box ({x0}, {y0}, {x1}, {y1})? Answer with its {what}."


def referring_answer(element_type: str, text: str) -> str:
    """`type: text`, e.g. `button: Save`."""
    return f"{element_type}: {text}" if text else element_type


_POINT = re.compile(r"\(\s*(\d{1,4})\s*,\s*(\d{1,4})\s*\)")


def parse_point(text: str) -> tuple[int, int] | None:
    """The first `(x, y)` in generated text, or None when there is none."""
    m = _POINT.search(text)
    return (int(m.group(1)), int(m.group(2))) if m else None

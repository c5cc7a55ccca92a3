"""Controlled "shapes" screens: a few large coloured shapes on a plain background.

The GUI screens of `synth/` ask a base to read small text; a tiny model trained for 30 minutes on two
CPU cores does not learn that (RESULTS.md, "Can the tiny base see?"), so a study on them measures
nothing but text priors. These screens keep the study's tasks (grounding: click an element named in the
instruction; referring: say what sits in a box) but make the visual part learnable at that budget: each
element is a shape (square, circle, triangle) in a colour no other shape on the screen has, 1-2 visual
tokens wide. An `Element` here has `type` = the shape, `text` = the colour, `name` = "red circle".

`STYLE` is this screen style for the synthesizer: `data.synth.style: fidelity.shapes:STYLE` (SHAPES_STYLE;
the package loads it by that path and never imports this module).
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from imagelora_dist.data.synth.elements import Box, Element
from imagelora_dist.data.synth.instructions import point_question_naming
from imagelora_dist.data.synth.styles import ScreenStyle
from imagelora_dist.data.tasks import referring_instruction

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 65),
    "blue": (40, 80, 215),
    "yellow": (235, 195, 20),
    "purple": (145, 60, 185),
    "black": (25, 25, 25),
}
SHAPES = ("square", "circle", "triangle")
MAX_SHAPES = len(COLORS)
# Shape side as a fraction of the shorter screen side: 40-70 px on a 336x252 screen.
_MIN_SIDE, _MAX_SIDE = 0.16, 0.28
_GAP = 6  # px between shapes, so boxes never touch


def _background(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randint(225, 250) for _ in range(3))  # type: ignore[return-value]


def _draw(d: ImageDraw.ImageDraw, shape: str, box: Box, fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if shape == "square":
        d.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
    elif shape == "circle":
        d.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
    else:
        d.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)


def render_shapes_screen(
    seed: int, width: int, height: int, n_elements: int
) -> tuple[Image.Image, list[Element]]:
    """Render one shapes screen with up to `n_elements` (at most one per colour) non-overlapping shapes."""
    rng = random.Random(seed)
    img = Image.new("RGB", (width, height), _background(rng))
    d = ImageDraw.Draw(img)
    colors = rng.sample(list(COLORS), min(n_elements, MAX_SHAPES))
    short = min(width, height)
    elements: list[Element] = []
    boxes: list[Box] = []
    for color in colors:
        for _attempt in range(64):
            side = rng.randint(round(_MIN_SIDE * short), round(_MAX_SIDE * short))
            x0, y0 = rng.randint(0, width - side), rng.randint(0, height - side)
            box = (x0, y0, x0 + side, y0 + side)
            if all(
                box[2] + _GAP <= b[0]
                or b[2] + _GAP <= box[0]
                or box[3] + _GAP <= b[1]
                or b[3] + _GAP <= box[1]
                for b in boxes
            ):
                break
        else:  # the screen is full: fewer shapes than asked, as with crowded GUI content areas
            continue
        shape = rng.choice(SHAPES)
        _draw(d, shape, box, COLORS[color])
        boxes.append(box)
        elements.append(Element(shape, color, box, name=f"{color} {shape}"))
    if not elements:  # pragma: no cover - the first shape always fits (side < screen)
        raise RuntimeError("no shape fits the screen")
    return img, elements


def grounding_instruction(rng: random.Random, el: Element) -> str:
    """A click instruction naming the shape by colour and kind."""
    n = el.name
    return rng.choice((f"Click the {n}.", f"Tap the {n}.", f"Point to the {n}.", f"Select the {n}."))


def referring_question(box: Box, width: int, height: int) -> str:
    """The referring question on a shapes screen: the answer names a shape and a colour."""
    return referring_instruction(box, width, height, what="shape and colour")


def point_question(rng: random.Random, el: Element) -> str:
    """`point`'s instruction for a shape (phrasing `pretrain`), naming it as in "the red circle"."""
    return point_question_naming(rng, f"the {el.name}")


# How configs name this style (data.synth.style); workers resolve it by import, like any style path.
SHAPES_STYLE = "fidelity.shapes:STYLE"

STYLE = ScreenStyle(
    render=render_shapes_screen,
    grounding_instruction=grounding_instruction,
    referring_instruction=referring_question,
    point_question=point_question,
)

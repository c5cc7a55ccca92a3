"""Small synthetic GUI screenshots with a grounding task ("click the Save button" -> a point).

A seed fixes every pixel and every string, so probe sets are reproducible on any machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

LABELS = (
    "Save",
    "Open",
    "Cancel",
    "OK",
    "Print",
    "Search",
    "Close",
    "Next",
    "Back",
    "Edit",
    "Copy",
    "Paste",
    "Undo",
    "Help",
    "Share",
    "Send",
    "Delete",
    "Login",
    "Apply",
    "Reset",
)
PALETTE = ((52, 120, 246), (46, 160, 67), (210, 80, 60), (120, 120, 130), (150, 90, 200))


@dataclass(frozen=True)
class Screen:
    """One screenshot and its grounding target."""

    image: Image.Image
    instruction: str
    answer: str
    box: tuple[int, int, int, int]
    label: str


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType: bitmap font, still deterministic
        return ImageFont.load_default()


def make_screen(seed: int, width: int = 224, height: int = 224, elements: int = 4) -> Screen:
    """A window with a title bar and `elements` labelled buttons; the task names one of them."""
    rng = random.Random(seed)
    img = Image.new("RGB", (width, height), (236, 238, 242))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, width - 1, 22], fill=(60, 64, 72))
    draw.text((8, 5), f"Window {rng.randint(1, 99)}", fill=(255, 255, 255), font=_font(12))
    labels = rng.sample(LABELS, elements)
    boxes = []
    for i, label in enumerate(labels):
        w, h = rng.randint(50, 80), rng.randint(20, 28)
        x0 = rng.randint(4, width - w - 4)
        y0 = 28 + i * ((height - 34) // elements) + rng.randint(0, max(0, (height - 34) // elements - h))
        box = (x0, y0, x0 + w, y0 + h)
        draw.rounded_rectangle(box, radius=4, fill=rng.choice(PALETTE), outline=(30, 30, 30))
        draw.text((x0 + 6, y0 + 4), label, fill=(255, 255, 255), font=_font(12))
        boxes.append(box)
    target = rng.randrange(elements)
    box = boxes[target]
    cx, cy = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
    return Screen(img, f"Click the {labels[target]} button.", f"click({cx},{cy})", box, labels[target])

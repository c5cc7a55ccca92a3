"""Answer formats of the grounding task: the text a model learns to answer with, and its parse back to a click.

`data.answer_format` picks one; shards keep the pixel `bbox` (and `point`) with the image's `width` and
`height`, so the answer text is built from the record when a batch is made (the stored `answer` stays
"(x, y)"):

    point       (x, y)                                       [0, 1000), the box centre (the stored answer)
    qwen2_box   <|box_start|>(x1,y1),(x2,y2)<|box_end|>      [0, 1000)              Qwen2-VL
    qwen25_abs  {"bbox_2d": [x1, y1, x2, y2]}                pixels of the image as  Qwen2.5-VL
                                                             the processor resized it
    qwen3_rel   {"bbox_2d": [x1, y1, x2, y2]}                [0, 1000)              Qwen3-VL
    auto        the model family's own format (point for families without one)

A point-only record (`"point_only": true`, written by `shard` for a source record that gave a point and
no box; its `bbox` is only the small hit box around the point) is answered with its point: `(x, y)` in
`point` and `qwen2_box`, `{"point_2d": [x, y]}` in the JSON formats (as is a record without `bbox`). Eval
parses any of them back to one click (a box's centre), tolerant of text around it, and scores
click-inside-box (for a point-only record, inside that small box).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from imagelora_dist.data.tasks import COORD_SCALE, GROUNDING, normalize_box, normalize_point, parse_point
from imagelora_dist.errors import ImageLoRAError

POINT = "point"
QWEN2_BOX = "qwen2_box"
QWEN25_ABS = "qwen25_abs"
QWEN3_REL = "qwen3_rel"
AUTO = "auto"
ANSWER_FORMATS = (POINT, QWEN2_BOX, QWEN25_ABS, QWEN3_REL)
FAMILY_FORMATS = {"qwen2_vl": QWEN2_BOX, "qwen2_5_vl": QWEN25_ABS, "qwen3_vl": QWEN3_REL}
JSON_FORMATS = (QWEN25_ABS, QWEN3_REL)
# The record flag of a point-only target (see the module docstring and data/shards.py).
POINT_ONLY_FIELD = "point_only"

# The lower end of the pixel range the collator gives a dynamic-resolution (Qwen) processor with a budget.
MIN_PIXELS_FLOOR = 56 * 56

# A native format's grounding prompt says what to output: a base checkpoint answers in its own format
# when asked in its own words, so a zero-shot eval and the first training steps start from there.
_HINTS = {
    QWEN2_BOX: "Output the bounding box of the element.",
    QWEN25_ABS: "Output its bbox coordinates in JSON format.",
    QWEN3_REL: "Output its bbox coordinates in JSON format.",
}
_POINT_HINT = "Output its point coordinates in JSON format."


def resolve_answer_format(name: str, family: str, pretrained: bool = True) -> str:
    """`auto` -> a pretrained checkpoint's native format (its family's; point when it has none, and for a
    tiny random-weight model, which has no format of its own); any other known name as is."""
    if name == AUTO:
        return FAMILY_FORMATS.get(family, POINT) if pretrained else POINT
    if name not in ANSWER_FORMATS:
        raise ImageLoRAError(
            f"data.answer_format: unknown format {name!r}; known: auto, {', '.join(ANSWER_FORMATS)}"
        )
    return name


def check_answer_format(fmt: str, processor: Any = None) -> str:
    """`fmt` if it is a resolved format this processor can build answers in; else one clear error."""
    if fmt not in ANSWER_FORMATS:
        hint = " (resolve auto with resolve_answer_format first)" if fmt == AUTO else ""
        raise ImageLoRAError(f"unknown answer format {fmt!r}{hint}; known: {', '.join(ANSWER_FORMATS)}")
    if fmt == QWEN25_ABS:
        resize_function(processor)
    return fmt


def fitted_size(width: int, height: int, max_pixels: int | None) -> tuple[int, int]:
    """(width, height) after the collator's downscale (never upscale) to at most `max_pixels`."""
    if max_pixels is None or width * height <= max_pixels:
        return width, height
    scale = (max_pixels / (width * height)) ** 0.5
    return max(1, int(width * scale)), max(1, int(height * scale))


def pixel_range(processor: Any, max_pixels: int | None) -> tuple[int, int]:
    """(min, max) pixels a Qwen image processor resizes into: the collator's budget, else its own size."""
    if max_pixels is not None:
        return min(max_pixels, MIN_PIXELS_FLOOR), max_pixels
    size = getattr(_image_processor(processor), "size", None) or {}

    def read(*keys: str) -> int | None:
        for key in keys:
            value = size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)
            if value:
                return int(value)
        return None

    low, high = read("shortest_edge", "min_pixels"), read("longest_edge", "max_pixels")
    if low is None or high is None:
        raise ImageLoRAError(
            f"answer format {QWEN25_ABS}: the image processor's size {size} has no pixel range"
        )
    return low, high


def _image_processor(processor: Any) -> Any:
    return getattr(processor, "image_processor", processor)


def resize_function(processor: Any) -> Callable[..., tuple[int, int]]:
    """The processor's own `smart_resize(height, width, factor, min_pixels, max_pixels) -> (h, w)`.

    Taken from the image processor's module (transformers' Qwen2-VL family: the slow, fast and PIL
    processors each carry a copy), so the sizes here are exactly the ones the processor resizes to.
    """
    ip = _image_processor(processor)
    fn = getattr(sys.modules.get(type(ip).__module__), "smart_resize", None)
    if fn is None or not hasattr(ip, "patch_size") or not hasattr(ip, "merge_size"):
        raise ImageLoRAError(
            f"answer format {QWEN25_ABS} needs a Qwen2-VL-family image processor (smart_resize); "
            f"{type(ip).__name__} has none: use point, qwen2_box or qwen3_rel"
        )
    return fn


def model_image_size(processor: Any, width: int, height: int, max_pixels: int | None) -> tuple[int, int]:
    """(width, height) of a `width` x `height` image as the model sees it: fitted to `max_pixels` as the
    collator does, then resized by the processor's own `smart_resize` within `pixel_range`."""
    ip = _image_processor(processor)
    fw, fh = fitted_size(int(width), int(height), max_pixels)
    low, high = pixel_range(processor, max_pixels)
    h, w = resize_function(processor)(
        fh, fw, factor=ip.patch_size * ip.merge_size, min_pixels=low, max_pixels=high
    )
    return int(w), int(h)


def is_point_only(record: Mapping[str, Any]) -> bool:
    """True for a record whose target is a point: flagged `point_only`, or without a `bbox`."""
    return record.get(POINT_ONLY_FIELD) is True or record.get("bbox") is None


def _box(record: Mapping[str, Any]) -> tuple[float, float, float, float] | None:
    """The record's pixel box, or None for a point-only target (its stored box is only the hit box)."""
    if is_point_only(record):
        return None
    box = record["bbox"]
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (math.isfinite(x0 + y0 + x1 + y1) and x0 <= x1 and y0 <= y1):
        raise ValueError(f"bad bbox {list(box)}")
    return x0, y0, x1, y1


def _size(record: Mapping[str, Any]) -> tuple[int, int]:
    w, h = int(record["width"]), int(record["height"])
    if w < 1 or h < 1:
        raise ValueError(f"bad image size {w}x{h}")
    return w, h


def _scale(v: float, scale: float, limit: int) -> int:
    """Pixels -> resized pixels, rounded half up, within [0, limit]."""
    return min(limit, max(0, int(math.floor(v * scale + 0.5))))


def grounding_target(record: Mapping[str, Any], fmt: str, image_size: tuple[int, int] | None = None) -> str:
    """The answer text of a grounding `record` in `fmt`; `image_size` is the model's (width, height) (qwen25_abs)."""
    if fmt == POINT:
        return str(record["answer"])
    w, h = _size(record)
    box = _box(record)
    if fmt == QWEN25_ABS:
        if image_size is None:
            raise ImageLoRAError(f"answer format {QWEN25_ABS} needs the image size the model sees")
        rw, rh = image_size
        sx, sy = rw / w, rh / h
        if box is None:
            px, py = (float(v) for v in record["point"])
            return f'{{"point_2d": [{_scale(px, sx, rw - 1)}, {_scale(py, sy, rh - 1)}]}}'
        x0, y0, x1, y1 = box
        a, b, c, d = _scale(x0, sx, rw), _scale(y0, sy, rh), _scale(x1, sx, rw), _scale(y1, sy, rh)
        return f'{{"bbox_2d": [{a}, {b}, {c}, {d}]}}'
    if box is None:
        x, y = normalize_point(*(float(v) for v in record["point"]), w, h)
        return f"({x}, {y})" if fmt == QWEN2_BOX else f'{{"point_2d": [{x}, {y}]}}'
    x0, y0, x1, y1 = normalize_box(box, w, h)
    if fmt == QWEN2_BOX:
        return f"<|box_start|>({x0},{y0}),({x1},{y1})<|box_end|>"
    if fmt == QWEN3_REL:
        return f'{{"bbox_2d": [{x0}, {y0}, {x1}, {y1}]}}'
    raise ImageLoRAError(f"unknown answer format {fmt!r}; known: {', '.join(ANSWER_FORMATS)}")


def format_instruction(instruction: str, fmt: str, point_only: bool = False) -> str:
    """A grounding `instruction` followed by `fmt`'s output request (none for `point`); `point_only` asks
    the JSON formats for a point instead of a box."""
    if fmt == POINT:
        return instruction
    if fmt not in _HINTS:
        raise ImageLoRAError(f"unknown answer format {fmt!r}; known: {', '.join(ANSWER_FORMATS)}")
    hint = _POINT_HINT if point_only and fmt in JSON_FORMATS else _HINTS[fmt]
    return f"{instruction} {hint}" if instruction else hint


def grounding_prompt(record: Mapping[str, Any], fmt: str) -> str:
    """The grounding instruction in `fmt`: the stored one, plus a native format's output request."""
    return format_instruction(str(record["instruction"]), fmt, is_point_only(record))


def sample_text(
    record: Mapping[str, Any], fmt: str, processor: Any = None, max_pixels: int | None = None
) -> tuple[str, str | None]:
    """(instruction, answer) of a record in `fmt`; only grounding records change. ValueError/KeyError: a
    record whose box or size cannot be read."""
    if fmt == POINT or record.get("task") != GROUNDING:
        return record["instruction"], record.get("answer")
    size = None
    if fmt == QWEN25_ABS:
        size = model_image_size(processor, *_size(record), max_pixels)
    return grounding_prompt(record, fmt), grounding_target(record, fmt, size)


# --- parsing ------------------------------------------------------------------------------------------------

_NUM = r"(-?\d+(?:\.\d+)?)"
_PAIR = rf"\(\s*{_NUM}\s*,\s*{_NUM}\s*\)"
_BOX_PAIRS = re.compile(rf"{_PAIR}\s*,?\s*{_PAIR}")
_ONE_PAIR = re.compile(_PAIR)
_KEYED = re.compile(r"[\"']?(bbox_2d|point_2d)[\"']?\s*:\s*\[([^\[\]]*)\]")
_LIST = re.compile(rf"\[\s*{_NUM}\s*,\s*{_NUM}(?:\s*,\s*{_NUM}\s*,\s*{_NUM})?\s*\]")


def _centre(values: Sequence[float]) -> tuple[float, float]:
    if len(values) == 4:
        return (values[0] + values[2]) / 2.0, (values[1] + values[3]) / 2.0
    return values[0], values[1]


def _numbers(text: str) -> list[float] | None:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        return None
    return values if len(values) in (2, 4) else None


def _parse_json_like(text: str) -> tuple[float, float] | None:
    for m in _KEYED.finditer(text):
        values = _numbers(m.group(2))
        if values is not None and len(values) == (4 if m.group(1) == "bbox_2d" else 2):
            return _centre(values)
    m = _LIST.search(text)
    if m:
        return _centre([float(v) for v in m.groups() if v is not None])
    return None


def _parse_pairs(text: str) -> tuple[float, float] | None:
    box, one = _BOX_PAIRS.search(text), _ONE_PAIR.search(text)
    if box and one and box.start() == one.start():
        return _centre([float(v) for v in box.groups()])
    return (float(one.group(1)), float(one.group(2))) if one else None


def parse_click(text: str, fmt: str) -> tuple[float, float] | None:
    """The click in generated `text`, in `fmt`'s coordinates (a box's centre), or None.

    `point` reads the first `(x, y)` only, as always. The native formats read their own syntax first and
    the others after it (a JSON answer inside prose or a ```json fence, `[x1, y1, x2, y2]`, `(x1,y1),(x2,y2)`
    with or without Qwen2-VL's box tokens, which decoding may have dropped as special tokens).
    """
    if fmt == POINT:
        point = parse_point(text)
        return (float(point[0]), float(point[1])) if point else None
    if fmt == QWEN2_BOX:
        return _parse_pairs(text) or _parse_json_like(text)
    if fmt in JSON_FORMATS:
        return _parse_json_like(text) or _parse_pairs(text)
    raise ImageLoRAError(f"unknown answer format {fmt!r}; known: {', '.join(ANSWER_FORMATS)}")


def click_pixels(
    text: str, record: Mapping[str, Any], fmt: str, image_size: tuple[int, int] | None = None
) -> tuple[float, float] | None:
    """The click in `text` in pixels of the record's stored image (no clamping), or None."""
    click = parse_click(text, fmt)
    if click is None:
        return None
    w, h = float(record["width"]), float(record["height"])
    if fmt == QWEN25_ABS:
        if image_size is None:
            raise ImageLoRAError(f"answer format {QWEN25_ABS} needs the image size the model sees")
        return click[0] * w / image_size[0], click[1] * h / image_size[1]
    return click[0] * w / COORD_SCALE, click[1] * h / COORD_SCALE


__all__ = [
    "ANSWER_FORMATS",
    "AUTO",
    "FAMILY_FORMATS",
    "POINT",
    "POINT_ONLY_FIELD",
    "QWEN25_ABS",
    "QWEN2_BOX",
    "QWEN3_REL",
    "check_answer_format",
    "click_pixels",
    "fitted_size",
    "format_instruction",
    "grounding_prompt",
    "grounding_target",
    "is_point_only",
    "model_image_size",
    "parse_click",
    "resolve_answer_format",
    "sample_text",
]

"""One source record of GUI-grounding data -> shard samples: field aliases, images, boxes and points.

Field aliases (the first present, non-null one wins; an `elements` entry is read before its record):

    image         img_filename | image | img_path | image_path | file_name: a path (relative to the image
                  folder), image bytes, or `{bytes, path}` (Hugging Face's Image feature); bytes win
    instruction   instruction | text | query | task
    box           bbox | box       [x0, y0, x1, y1] (xyxy) or [x, y, w, h] (xywh); pixels or normalized
    point         point | click    [x, y]; pixels or normalized (as the box)
    element type  data_type | ui_type | element_type | type                 (default "element")
    element text  element_text | label                                      (default "")
    data source   data_source | platform                                    (default: from the file name)
    application   application                                               (default "")
    image size    img_size         [w, h]; when given it must match the image (ScreenSpot-Pro)
    id            id               (default "{file stem}-{line or row}", then "-{k}" per element)

A record with an `elements` list (SeeClick / OS-Atlas) gives one sample per element; the element's fields
override the record's. A record needs a box or a point. A point-only record gets the box of
`point_box`, so grounding eval (click inside `bbox`) stays defined: a hit is a click within
POINT_BOX_HALF thousandths of the image's width and height of the point. Its sample carries
`"point_only": true`, so the native answer formats train it on the point, not on that made-up box.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from imagelora_dist.data.answer_formats import POINT_ONLY_FIELD
from imagelora_dist.data.shards import MAX_IMAGE_PIXELS
from imagelora_dist.data.tasks import COORD_SCALE, GROUNDING, box_center, grounding_answer

IMAGE_KEYS = ("img_filename", "image", "img_path", "image_path", "file_name")
INSTRUCTION_KEYS = ("instruction", "text", "query", "task")
BOX_KEYS = ("bbox", "box")
POINT_KEYS = ("point", "click")
TYPE_KEYS = ("data_type", "ui_type", "element_type", "type")
TEXT_KEYS = ("element_text", "label")
SOURCE_KEYS = ("data_source", "platform")
APPLICATION_KEYS = ("application",)
ELEMENTS_KEY = "elements"
DEFAULT_ELEMENT_TYPE = "element"

BBOX_FORMATS = ("xyxy", "xywh")
NORMALIZED_MODES = ("auto", "pixels", "1", "1000")
# PIL format name -> the extension key the sample is stored under.
PIL_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
BOX_TOLERANCE_PX = 1.0
# Half the side of a point-only target's box, in [0, 1000) units of each axis: 15 makes a box 3% of the
# screen wide and high (about a button on a 1920x1080 screen), so a click on the annotated spot or close
# to it is a hit and one on a neighbouring control usually is not.
POINT_BOX_HALF = 15


class Skip(Exception):
    """A bad record or element: the message is the reason reported for it; `element` its index, if any."""

    def __init__(self, reason: str, element: int | None = None) -> None:
        super().__init__(reason)
        self.element = element


@dataclass(frozen=True)
class RecordContext:
    """Where a record came from: its defaults for `id`, `source` and `data_source`."""

    default_id: str
    source: str
    default_data_source: str
    bbox_format: str = "xyxy"
    normalized: str = "auto"


@dataclass(frozen=True)
class LoadedImage:
    """An image as stored: the original bytes, the extension of their real format, and the size."""

    data: bytes
    ext: str
    width: int
    height: int


@dataclass
class _Target:
    """One sample's fields read from the record, before its image is opened."""

    element: int | None
    id: str
    instruction: str
    box: tuple[float, ...] | None
    point: tuple[float, ...] | None
    element_type: str
    element_text: str
    data_source: str
    application: str
    img_size: tuple[float, ...] | None


def record_samples(
    record: Any, ctx: RecordContext, images: ImageLoader
) -> Iterator[tuple[int | None, dict[str, Any]] | Skip]:
    """(element index or None, sample) for each sample of one record, and a Skip for each bad element.

    Raises Skip when the whole record is bad.
    """
    if not isinstance(record, Mapping):
        raise Skip(f"not an object: got a JSON {type(record).__name__}")
    ref = image_ref(record)
    elements = record.get(ELEMENTS_KEY)
    targets: list[_Target] = []
    if elements is None:
        targets.append(_target((record,), None, ctx.default_id, ctx))
    else:
        if not isinstance(elements, list):
            raise Skip(f"bad field: {ELEMENTS_KEY!r} is not a list")
        if not elements:
            raise Skip(f"bad field: {ELEMENTS_KEY!r} is empty")
        base_id = _id(record, ctx.default_id)
        for k, element in enumerate(elements):
            if not isinstance(element, Mapping):
                yield Skip(f"not an object: got a JSON {type(element).__name__}", k)
                continue
            try:
                targets.append(_target((element, record), k, f"{base_id}-{k}", ctx))
            except Skip as exc:
                exc.element = k
                yield exc
        if not targets:
            return
    image = images.load(ref)  # once per record, after the cheap checks
    for target in targets:
        try:
            yield target.element, _sample(target, image, ctx)
        except Skip as exc:
            exc.element = target.element
            yield exc


def _pick(layers: Sequence[Mapping[str, Any]], keys: tuple[str, ...]) -> tuple[str | None, Any]:
    """The first of `keys` present (and not null) in the first layer that has one: (key, value)."""
    for layer in layers:
        for key in keys:
            if layer.get(key) is not None:
                return key, layer[key]
    return None, None


def _string(layers: Sequence[Mapping[str, Any]], keys: tuple[str, ...], default: str) -> str:
    key, value = _pick(layers, keys)
    if key is None:
        return default
    if not isinstance(value, str):
        raise Skip(f"bad field: {key!r} is not a string")
    return value.strip()


def _id(layer: Mapping[str, Any], default: str) -> str:
    value = layer.get("id")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Skip("bad field: 'id' is not a string or integer")
    return str(value)


def _target(
    layers: Sequence[Mapping[str, Any]], element: int | None, default_id: str, ctx: RecordContext
) -> _Target:
    ins_key, instruction = _pick(layers, INSTRUCTION_KEYS)
    if ins_key is None:
        raise Skip(f"missing field: instruction ({' | '.join(INSTRUCTION_KEYS)})")
    if not isinstance(instruction, str) or not instruction.strip():
        raise Skip(f"bad field: {ins_key!r} is not a non-empty string")
    # An element's box or point is its own: never fall back to a box of the enclosing record.
    target_layer = layers[:1]
    box_key, raw_box = _pick(target_layer, BOX_KEYS)
    point_key, raw_point = _pick(target_layer, POINT_KEYS)
    if box_key is None and point_key is None:
        raise Skip(f"missing field: box or point ({' | '.join(BOX_KEYS + POINT_KEYS)})")
    size_key, raw_size = _pick(layers, ("img_size",))
    element_type = _string(layers, TYPE_KEYS, DEFAULT_ELEMENT_TYPE) or DEFAULT_ELEMENT_TYPE
    return _Target(
        element=element,
        id=_id(layers[0], default_id),
        instruction=instruction.strip(),
        box=None if box_key is None else _numbers(raw_box, box_key, 4, "box"),
        point=None if point_key is None else _numbers(raw_point, point_key, 2, "point"),
        element_type=element_type,
        element_text=_string(layers, TEXT_KEYS, ""),
        data_source=_string(layers, SOURCE_KEYS, "") or ctx.default_data_source,
        application=_string(layers, APPLICATION_KEYS, ""),
        img_size=None if size_key is None else _numbers(raw_size, size_key, 2, "img_size"),
    )


def _sample(target: _Target, image: LoadedImage, ctx: RecordContext) -> dict[str, Any]:
    width, height = image.width, image.height
    if target.img_size is not None and tuple(target.img_size) != (width, height):
        raise Skip(f"image size mismatch: img_size {_fmt(target.img_size)} but the image is {width}x{height}")
    box = (
        None if target.box is None else pixel_box(target.box, width, height, ctx.bbox_format, ctx.normalized)
    )
    point_only = box is None
    if target.point is None:
        assert box is not None
        point = box_center(box)
        answer = grounding_answer(box, width, height)
    else:
        point = pixel_point(target.point, width, height, ctx.normalized)
        if box is None:
            box = point_box(point, width, height)
        elif not _point_in_box(point, box):
            raise Skip(f"point outside box: {_fmt(point)} is not in {_fmt(box)}")
        answer = grounding_answer((*point, *point), width, height)
    record = {
        "id": target.id,
        "task": GROUNDING,
        "instruction": target.instruction,
        "answer": answer,
        "bbox": [_num(v) for v in box],
        "point": [_num(v) for v in point],
        "element_type": target.element_type,
        "element_text": target.element_text,
        "width": width,
        "height": height,
        "source": ctx.source,
        "data_source": target.data_source,
        "application": target.application,
    }
    if point_only:  # only then: records with a real box keep the documented field list
        record[POINT_ONLY_FIELD] = True
    return {image.ext: image.data, "json": record}


# --- images ----------------------------------------------------------------------------------------


def image_ref(record: Mapping[str, Any]) -> tuple[str, bytes | str]:
    """(field, bytes) for an embedded image, else (field, path); raises Skip when there is neither."""
    for key in IMAGE_KEYS:  # embedded bytes first: an export may carry both a file name and the bytes
        value = record.get(key)
        if isinstance(value, Mapping):
            value = value.get("bytes")
            key = f"{key}.bytes"
        if isinstance(value, bytes | bytearray | memoryview):
            if not len(value):
                raise Skip(f"bad field: {key!r} holds no bytes")
            return key, bytes(value)
    key, value = _pick((record,), IMAGE_KEYS)
    if key is None:
        raise Skip(f"missing field: image ({' | '.join(IMAGE_KEYS)})")
    if isinstance(value, Mapping):
        key, value = f"{key}.path", value.get("path")
    if not isinstance(value, str) or not value.strip():
        raise Skip(f"bad field: {key!r} is not a file path or image bytes")
    return key, value


class ImageLoader:
    """Loads records' images: files under `image_dir` (paths leaving it are refused) or embedded bytes.

    The last image is kept, so consecutive records on one screenshot decode it once.
    """

    def __init__(self, image_dir: Path) -> None:
        self.real_root = os.path.realpath(image_dir)
        self.roots = {os.path.abspath(image_dir), self.real_root}
        self.base = os.path.abspath(image_dir)
        self._last: tuple[Any, LoadedImage] | None = None

    def load(self, ref: tuple[str, bytes | str]) -> LoadedImage:
        """The image a record's `image_ref` names; raises Skip when it is missing or unreadable."""
        key, value = ref
        if isinstance(value, bytes):
            cache_key: Any = value
            name = f"{key} ({len(value)} bytes)"
        else:
            path = self.resolve(value)
            stat = path.stat()
            cache_key = (str(path), stat.st_size, stat.st_mtime_ns)
            name = value.strip()
        if self._last is not None and self._last[0] == cache_key:
            return self._last[1]
        data = value if isinstance(value, bytes) else _read(path, name)
        image = load_image_bytes(data, name)
        self._last = (cache_key, image)
        return image

    def resolve(self, ref: str) -> Path:
        """The file `ref` names inside image_dir; raises Skip for a path leaving it or a missing file."""
        ref = ref.strip()
        candidate = os.path.normpath(os.path.join(self.base, ref))  # an absolute ref replaces the base
        if not any(_inside(candidate, root) for root in self.roots):
            raise Skip(f"image path escapes image_dir: {ref}")
        # The lexical check above does not follow symlinks: a link inside image_dir (to a file or a
        # directory) may point anywhere. The file that is really read must be inside image_dir too.
        real = os.path.realpath(candidate)
        if not _inside(real, self.real_root):
            raise Skip(f"image path escapes image_dir: {ref}")
        path = Path(real)  # read the checked file, not the link (which could be swapped afterwards)
        if not path.exists():
            raise Skip(f"image not found: {ref}")
        if not path.is_file():
            raise Skip(f"image not found: {ref} is not a file")
        return path


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root and path != root
    except ValueError:  # different drives
        return False


def _read(path: Path, name: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise Skip(f"unreadable image: {name} ({exc.strerror or exc})") from None


def load_image_bytes(data: bytes, name: str) -> LoadedImage:
    """Check that `data` is a whole PNG, JPEG or WebP image of a sane size; raises Skip otherwise."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            if img.width * img.height > MAX_IMAGE_PIXELS:  # before decoding it
                raise Skip(
                    f"image too large: {name} is {img.width}x{img.height} (> {MAX_IMAGE_PIXELS} pixels)"
                )
            img.verify()  # structure and checksums
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # full decode: catches truncated data verify() lets through
            width, height = img.size
    except Skip:
        raise
    except UnidentifiedImageError:
        raise Skip(f"unreadable image: {name} (not an image format PIL recognises)") from None
    except Exception as exc:  # PIL raises many types for corrupt files (OSError, SyntaxError, ...)
        raise Skip(f"unreadable image: {name} ({type(exc).__name__}: {exc})") from None
    ext = PIL_FORMATS.get(fmt or "")
    if ext is None:
        raise Skip(f"unsupported image format: {name} is {fmt} (need PNG, JPEG or WebP)")
    if width < 1 or height < 1:
        raise Skip(f"unreadable image: {name} has size {width}x{height}")
    return LoadedImage(data, ext, width, height)


# --- boxes and points ------------------------------------------------------------------------------


def _numbers(raw: Any, key: str, n: int, what: str) -> tuple[float, ...]:
    if not isinstance(raw, list | tuple) or len(raw) != n:
        got = f"{len(raw)} values" if isinstance(raw, list | tuple) else f"a JSON {type(raw).__name__}"
        raise Skip(f"bad {what}: {key!r} must be {n} numbers, got {got}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw):
        raise Skip(f"bad {what}: {key!r} must be {n} numbers, got {list(raw)!r}")
    if not all(math.isfinite(v) for v in raw):
        raise Skip(f"bad {what}: {key!r} has a non-finite value {list(raw)!r}")
    return tuple(float(v) for v in raw)


def _scale(values: Sequence[float], normalized: str) -> float | None:
    """The normalization scale of `values` (1 or 1000), or None for pixels."""
    mode = normalized
    if mode == "auto":
        mode = "1" if all(0.0 <= v <= 1.0 for v in values) else "pixels"
    return {"pixels": None, "1": 1.0, "1000": 1000.0}[mode]


def pixel_box(
    values: Sequence[float], width: int, height: int, bbox_format: str = "xyxy", normalized: str = "auto"
) -> tuple[float, float, float, float]:
    """A record's box as pixel (x0, y0, x1, y1), checked against the image and clipped to it."""
    a, b, c, d = values
    if bbox_format == "xywh":
        if c <= 0 or d <= 0:
            raise Skip(f"empty or inverted box: width/height {c:g}x{d:g} in {_fmt(values)}")
        c, d = a + c, b + d
    scale = _scale(values, normalized)
    if scale is not None:
        a, c = a / scale * width, c / scale * width
        b, d = b / scale * height, d / scale * height
    x0, y0, x1, y1 = (round(v, 2) for v in (a, b, c, d))
    if x1 <= x0 or y1 <= y0:
        raise Skip(f"empty or inverted box: {_fmt(values)} -> pixels {_fmt((x0, y0, x1, y1))}")
    tol = BOX_TOLERANCE_PX
    if x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol:
        raise Skip(f"box outside image: pixels {_fmt((x0, y0, x1, y1))} in a {width}x{height} image")
    x0, x1 = max(0.0, x0), min(float(width), x1)
    y0, y1 = max(0.0, y0), min(float(height), y1)
    if x1 <= x0 or y1 <= y0:
        raise Skip(f"box outside image: {_fmt(values)} is empty inside a {width}x{height} image")
    return x0, y0, x1, y1


def pixel_point(
    values: Sequence[float], width: int, height: int, normalized: str = "auto"
) -> tuple[float, float]:
    """A record's point as pixels, checked against the image and clipped to it."""
    x, y = values
    scale = _scale(values, normalized)
    if scale is not None:
        x, y = x / scale * width, y / scale * height
    x, y = round(x, 2), round(y, 2)
    tol = BOX_TOLERANCE_PX
    if not (-tol <= x <= width + tol and -tol <= y <= height + tol):
        raise Skip(f"point outside image: pixels {_fmt((x, y))} in a {width}x{height} image")
    return min(max(x, 0.0), float(width)), min(max(y, 0.0), float(height))


def point_box(point: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """The target box of a point-only record: POINT_BOX_HALF thousandths of each side around it, clipped."""
    dx, dy = POINT_BOX_HALF * width / COORD_SCALE, POINT_BOX_HALF * height / COORD_SCALE
    x, y = point
    return (
        round(max(0.0, x - dx), 2),
        round(max(0.0, y - dy), 2),
        round(min(float(width), x + dx), 2),
        round(min(float(height), y + dy), 2),
    )


def _point_in_box(point: Sequence[float], box: Sequence[float]) -> bool:
    tol = BOX_TOLERANCE_PX
    return box[0] - tol <= point[0] <= box[2] + tol and box[1] - tol <= point[1] <= box[3] + tol


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _num(v: float) -> int | float:
    """A pixel coordinate for JSON: an int when whole, else rounded to 2 decimals."""
    v = round(float(v), 2)
    return int(v) if v.is_integer() else v

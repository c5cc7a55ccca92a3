"""Convert a JSONL of GUI-grounding records plus an image folder into shards + `index.json`.

Accepts the common layouts (ScreenSpot / SeeClick / OS-Atlas style), one JSON object per line:

    image file    img_filename | image | img_path | image_path | file_name   (relative to image_dir)
    instruction   instruction | text | query | task
    box           bbox | box         [x0, y0, x1, y1] (xyxy) or [x, y, w, h] (xywh); pixels or normalised
    element type  data_type | element_type | type                            (default "element")
    element text  element_text | label                                       (default "")
    id            id                                                         (default "{jsonl stem}-{line}")

Each good record becomes one sample of the shard format in `shards.py`: the ORIGINAL image bytes under
the extension of the image's real format, and a `grounding` record with the box in pixels. Bad records
are skipped and reported with their 1-based line number and a reason. The JSONL is streamed, and at most
one shard is held in memory.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from imagelora_dist.data.shards import (
    INDEX_NAME,
    MAX_IMAGE_PIXELS,
    ShardIndex,
    ShardInfo,
    shard_name,
    tar_archive_size,
    tar_member_size,
    write_shard,
)
from imagelora_dist.data.tasks import GROUNDING, box_center, grounding_answer
from imagelora_dist.errors import ImageLoRAError

IMAGE_KEYS = ("img_filename", "image", "img_path", "image_path", "file_name")
INSTRUCTION_KEYS = ("instruction", "text", "query", "task")
BOX_KEYS = ("bbox", "box")
TYPE_KEYS = ("data_type", "element_type", "type")
TEXT_KEYS = ("element_text", "label")
DEFAULT_ELEMENT_TYPE = "element"

BBOX_FORMATS = ("xyxy", "xywh")
NORMALIZED_MODES = ("auto", "pixels", "1", "1000")
# PIL format name -> the extension key the sample is stored under.
PIL_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
BOX_TOLERANCE_PX = 1.0
SHOW_PROBLEMS = 10


@dataclass
class ConvertOptions:
    """How to read boxes and how to cut shards (stored in the index's meta)."""

    bbox_format: str = "xyxy"  # "xyxy" or "xywh"
    normalized: str = "auto"  # "auto" | "pixels" | "1" | "1000"
    max_count: int = 1000  # samples per shard
    max_size: int = 2**30  # bytes per shard (a single larger sample still gets its own shard)
    prefix: str = "train"
    strict: bool = False  # exit code 1 when any record was skipped

    def __post_init__(self) -> None:
        if self.bbox_format not in BBOX_FORMATS:
            raise ImageLoRAError(
                f"bbox format must be one of {', '.join(BBOX_FORMATS)}, got {self.bbox_format!r}"
            )
        self.normalized = str(self.normalized)
        if self.normalized not in NORMALIZED_MODES:
            raise ImageLoRAError(
                f"normalized must be one of {', '.join(NORMALIZED_MODES)}, got {self.normalized!r}"
            )
        if int(self.max_count) < 1:
            raise ImageLoRAError(f"max_count must be at least 1, got {self.max_count}")
        if int(self.max_size) < 1:
            raise ImageLoRAError(f"max_size must be at least 1 byte, got {self.max_size}")
        if not self.prefix or any(c in self.prefix for c in "/\\") or self.prefix.startswith("."):
            raise ImageLoRAError(f"shard prefix must be a plain file name part, got {self.prefix!r}")


@dataclass
class ConversionReport:
    """What a conversion read, wrote and skipped."""

    total_lines: int = 0  # non-blank lines (records) read; written + skipped == total_lines
    written: int = 0
    skipped: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)  # (1-based line, reason)
    index: ShardIndex | None = None
    strict: bool = False

    @property
    def exit_code(self) -> int:
        """0 when nothing was skipped or the run was not strict; 1 when strict and something was skipped."""
        return 1 if self.strict and self.skipped else 0

    def reason_counts(self) -> Counter[str]:
        """Skipped records by kind of reason (the part of the reason before the first ':')."""
        return Counter(reason.split(":", 1)[0] for _, reason in self.problems)

    def summary(self) -> str:
        """`N lines: W written in S shards, K skipped (reasons by count)`."""
        shards = len(self.index.shards) if self.index is not None else 0
        text = (
            f"{self.total_lines} lines: {self.written} written in {shards} shard{'s' if shards != 1 else ''}, "
            f"{self.skipped} skipped"
        )
        if self.problems:
            counts = self.reason_counts().most_common()
            text += " (" + ", ".join(f"{n} {kind}" for kind, n in counts) + ")"
        return text


class _Skip(Exception):
    """A bad record: the message is the reason reported for its line."""


def convert_jsonl(
    jsonl: str | os.PathLike,
    image_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: ConvertOptions | None = None,
    progress: Callable[[str], Any] | None = print,
    *,
    overwrite: bool = False,
    progress_every: int = 1000,
) -> ConversionReport:
    """Convert `jsonl` (records naming images under `image_dir`) into shards + `index.json` in `out_dir`.

    Raises ImageLoRAError for bad inputs (missing file or folder, an existing index without `overwrite`,
    a JSON array instead of JSON Lines) and when no record is valid (then no index is written).
    """
    options = options or ConvertOptions()
    say = progress or (lambda _msg: None)
    jsonl, image_dir, out_dir = Path(jsonl), Path(image_dir), Path(out_dir)
    if not jsonl.is_file():
        raise ImageLoRAError(f"{jsonl}: JSONL file not found")
    if not image_dir.is_dir():
        raise ImageLoRAError(f"{image_dir}: image folder not found")
    if out_dir.exists() and not out_dir.is_dir():
        raise ImageLoRAError(f"{out_dir}: output path exists and is not a folder")
    old_index_path = out_dir / INDEX_NAME
    if old_index_path.exists() and not overwrite:
        raise ImageLoRAError(f"{out_dir}: already holds {INDEX_NAME} (pass overwrite to replace it)")

    resolver = _ImageResolver(image_dir)
    report = ConversionReport(strict=options.strict)
    writer = _ShardWriter(out_dir, options, old_index_path if overwrite else None)
    seen_ids: set[str] = set()
    start = time.monotonic()

    for line_no, line in _read_lines(jsonl):
        report.total_lines += 1
        try:
            record = _parse_line(line)
            sample = _convert_record(record, line_no, jsonl, resolver, options)
            sample_id = sample["json"]["id"]
            if sample_id in seen_ids:
                raise _Skip(f"duplicate id: {sample_id!r}")
            seen_ids.add(sample_id)
        except _Skip as exc:
            report.skipped += 1
            report.problems.append((line_no, str(exc)))
            if len(report.problems) <= SHOW_PROBLEMS:
                say(f"{jsonl.name}:{line_no}: skipped: {exc}")
            elif len(report.problems) == SHOW_PROBLEMS + 1:
                say(f"{jsonl.name}: further skipped lines are not shown (the report lists them all)")
        else:
            writer.add(sample)
            report.written += 1
        if progress_every > 0 and report.total_lines % progress_every == 0:
            rate = report.total_lines / max(time.monotonic() - start, 1e-9)
            say(
                f"{report.total_lines} records: {report.written} written, {report.skipped} skipped "
                f"({rate:.0f} records/s)"
            )

    if report.written == 0:
        raise ImageLoRAError(
            f"{jsonl}: no valid records ({report.total_lines} lines, {report.skipped} skipped"
            + (f"; first: line {report.problems[0][0]}: {report.problems[0][1]}" if report.problems else "")
            + ")"
        )
    shards = writer.finish()
    meta = {
        "created_by": "imagelora-dist shard",
        "source": jsonl.name,
        "options": asdict(options),
        "skipped": report.skipped,
    }
    report.index = ShardIndex(shards=shards, meta=meta)
    report.index.write(out_dir)
    writer.remove_stale(shards)
    say(report.summary())
    return report


# --- reading ---------------------------------------------------------------------------------------


def _read_lines(path: Path) -> Iterator[tuple[int, str | bytes]]:
    """(1-based line number, text) of the non-blank lines; undecodable lines come back as bytes."""
    first = True
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line: str | bytes = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = raw
            if isinstance(line, str) and not line.strip():
                continue
            if first and isinstance(line, str) and line.lstrip().startswith("["):
                raise ImageLoRAError(
                    f"{path}: looks like a JSON array, not JSON Lines (one object per line); "
                    f"convert it with: jq -c '.[]' {path.name} > {path.stem}.jsonl"
                )
            first = False
            yield line_no, line


def _parse_line(line: str | bytes) -> Mapping[str, Any]:
    if isinstance(line, bytes):
        raise _Skip("invalid JSON: not UTF-8 text")
    try:
        record = json.loads(line.strip())
    except json.JSONDecodeError as exc:
        raise _Skip(f"invalid JSON: {exc.msg} (character {exc.pos + 1})") from None
    if not isinstance(record, dict):
        raise _Skip(f"not an object: got a JSON {type(record).__name__}")
    return record


def _pick(record: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str | None, Any]:
    """The first of `keys` present (and not null) in the record: (key, value), or (None, None)."""
    for key in keys:
        if record.get(key) is not None:
            return key, record[key]
    return None, None


def _convert_record(
    record: Mapping[str, Any], line_no: int, jsonl: Path, resolver: _ImageResolver, options: ConvertOptions
) -> dict[str, Any]:
    img_key, img_ref = _pick(record, IMAGE_KEYS)
    if img_key is None:
        raise _Skip(f"missing field: image ({' | '.join(IMAGE_KEYS)})")
    ins_key, instruction = _pick(record, INSTRUCTION_KEYS)
    if ins_key is None:
        raise _Skip(f"missing field: instruction ({' | '.join(INSTRUCTION_KEYS)})")
    if not isinstance(instruction, str) or not instruction.strip():
        raise _Skip(f"bad field: {ins_key!r} is not a non-empty string")
    box_key, raw_box = _pick(record, BOX_KEYS)
    if box_key is None:
        raise _Skip(f"missing field: box ({' | '.join(BOX_KEYS)})")
    type_key, element_type = _pick(record, TYPE_KEYS)
    if type_key is None:
        element_type = DEFAULT_ELEMENT_TYPE
    elif not isinstance(element_type, str):
        raise _Skip(f"bad field: {type_key!r} is not a string")
    text_key, element_text = _pick(record, TEXT_KEYS)
    if text_key is None:
        element_text = ""
    elif not isinstance(element_text, str):
        raise _Skip(f"bad field: {text_key!r} is not a string")
    sample_id = record.get("id")
    if sample_id is None:
        sample_id = f"{jsonl.stem}-{line_no}"
    elif isinstance(sample_id, bool) or not isinstance(sample_id, str | int):
        raise _Skip("bad field: 'id' is not a string or integer")
    sample_id = str(sample_id)

    values = _box_values(raw_box, box_key)  # before touching the image: cheap checks first
    if not isinstance(img_ref, str) or not img_ref.strip():
        raise _Skip(f"bad field: {img_key!r} is not a file path")
    path = resolver.resolve(img_ref)
    data, ext, width, height = _load_image(path, img_ref)
    box = _pixel_box(values, width, height, options)

    point = [_num(v) for v in box_center(box)]
    json_record = {
        "id": sample_id,
        "task": GROUNDING,
        "instruction": instruction.strip(),
        "answer": grounding_answer(box, width, height),
        "bbox": [_num(v) for v in box],
        "point": point,
        "element_type": element_type.strip() or DEFAULT_ELEMENT_TYPE,
        "element_text": element_text.strip(),
        "width": width,
        "height": height,
        "source": jsonl.name,
    }
    return {ext: data, "json": json_record}


class _ImageResolver:
    """Turns a record's image path into a file under image_dir; paths that leave image_dir are refused."""

    def __init__(self, image_dir: Path) -> None:
        self.real_root = os.path.realpath(image_dir)
        self.roots = {os.path.abspath(image_dir), self.real_root}
        self.base = os.path.abspath(image_dir)

    def resolve(self, ref: str) -> Path:
        ref = ref.strip()
        candidate = os.path.normpath(os.path.join(self.base, ref))  # an absolute ref replaces the base
        if not any(_inside(candidate, root) for root in self.roots):
            raise _Skip(f"image path escapes image_dir: {ref}")
        # The lexical check above does not follow symlinks: a link inside image_dir (to a file or a
        # directory) may point anywhere. The file that is really read must be inside image_dir too.
        real = os.path.realpath(candidate)
        if not _inside(real, self.real_root):
            raise _Skip(f"image path escapes image_dir: {ref}")
        path = Path(real)  # read the checked file, not the link (which could be swapped afterwards)
        if not path.exists():
            raise _Skip(f"image not found: {ref}")
        if not path.is_file():
            raise _Skip(f"image not found: {ref} is not a file")
        return path


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root and path != root
    except ValueError:  # different drives
        return False


def _load_image(path: Path, ref: str) -> tuple[bytes, str, int, int]:
    """The file's bytes, its extension by real format, and its size; skips unreadable images."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _Skip(f"unreadable image: {ref} ({exc.strerror or exc})") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            if img.width * img.height > MAX_IMAGE_PIXELS:  # before decoding it
                raise _Skip(
                    f"image too large: {ref} is {img.width}x{img.height} (> {MAX_IMAGE_PIXELS} pixels)"
                )
            img.verify()  # structure and checksums
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # full decode: catches truncated data verify() lets through
            width, height = img.size
    except _Skip:
        raise
    except UnidentifiedImageError:
        raise _Skip(f"unreadable image: {ref} (not an image format PIL recognises)") from None
    except Exception as exc:  # PIL raises many types for corrupt files (OSError, SyntaxError, ...)
        raise _Skip(f"unreadable image: {ref} ({type(exc).__name__}: {exc})") from None
    ext = PIL_FORMATS.get(fmt or "")
    if ext is None:
        raise _Skip(f"unsupported image format: {ref} is {fmt} (need PNG, JPEG or WebP)")
    if width < 1 or height < 1:
        raise _Skip(f"unreadable image: {ref} has size {width}x{height}")
    return data, ext, width, height


# --- boxes -----------------------------------------------------------------------------------------


def _box_values(raw: Any, key: str) -> tuple[float, float, float, float]:
    if not isinstance(raw, list | tuple) or len(raw) != 4:
        got = f"{len(raw)} values" if isinstance(raw, list | tuple) else f"a JSON {type(raw).__name__}"
        raise _Skip(f"bad box: {key!r} must be 4 numbers, got {got}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw):
        raise _Skip(f"bad box: {key!r} must be 4 numbers, got {raw!r}")
    if not all(math.isfinite(v) for v in raw):
        raise _Skip(f"bad box: {key!r} has a non-finite value {raw!r}")
    return tuple(float(v) for v in raw)  # type: ignore[return-value]


def _pixel_box(
    values: tuple[float, float, float, float], width: int, height: int, options: ConvertOptions
) -> tuple[float, float, float, float]:
    """The record's box as pixel (x0, y0, x1, y1), checked against the image and clipped to it."""
    a, b, c, d = values
    if options.bbox_format == "xywh":
        if c <= 0 or d <= 0:
            raise _Skip(f"empty or inverted box: width/height {c:g}x{d:g} in {_fmt(values)}")
        c, d = a + c, b + d
    mode = options.normalized
    if mode == "auto":
        mode = "1" if all(0.0 <= v <= 1.0 for v in values) else "pixels"
    scale = {"pixels": None, "1": 1.0, "1000": 1000.0}[mode]
    if scale is not None:
        a, c = a / scale * width, c / scale * width
        b, d = b / scale * height, d / scale * height
    x0, y0, x1, y1 = (round(v, 2) for v in (a, b, c, d))
    if x1 <= x0 or y1 <= y0:
        raise _Skip(f"empty or inverted box: {_fmt(values)} -> pixels {_fmt((x0, y0, x1, y1))}")
    tol = BOX_TOLERANCE_PX
    if x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol:
        raise _Skip(f"box outside image: pixels {_fmt((x0, y0, x1, y1))} in a {width}x{height} image")
    x0, x1 = max(0.0, x0), min(float(width), x1)
    y0, y1 = max(0.0, y0), min(float(height), y1)
    if x1 <= x0 or y1 <= y0:
        raise _Skip(f"box outside image: {_fmt(values)} is empty inside a {width}x{height} image")
    return x0, y0, x1, y1


def _fmt(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _num(v: float) -> int | float:
    """A pixel coordinate for JSON: an int when whole, else rounded to 2 decimals."""
    v = round(float(v), 2)
    return int(v) if v.is_integer() else v


# --- writing ---------------------------------------------------------------------------------------


class _ShardWriter:
    """Collects samples into the current shard and writes it (atomically) when the next would not fit."""

    def __init__(self, out_dir: Path, options: ConvertOptions, old_index: Path | None) -> None:
        self.out_dir = out_dir
        self.options = options
        self.old_index = old_index
        self.old_urls: list[str] = []
        self.samples: list[dict[str, Any]] = []
        self.members = 0  # tar bytes of the current shard's members
        self.shards: list[ShardInfo] = []
        self.count = 0

    def add(self, sample: dict[str, Any]) -> None:
        size = sum(
            tar_member_size(len(json.dumps(v).encode("utf-8")) if k == "json" else len(v))
            for k, v in sample.items()
        )
        if self.samples and (
            len(self.samples) + 1 > self.options.max_count
            or tar_archive_size(self.members + size) > self.options.max_size
        ):
            self._flush()
        sample["__key__"] = f"{self.count:09d}"
        self.count += 1
        self.samples.append(sample)
        self.members += size

    def finish(self) -> list[ShardInfo]:
        if self.samples:
            self._flush()
        return self.shards

    def _flush(self) -> None:
        if not self.shards:
            self._retire_old_index()
        path = self.out_dir / shard_name(self.options.prefix, len(self.shards))
        self.shards.append(write_shard(path, self.samples))
        self.samples = []
        self.members = 0

    def _retire_old_index(self) -> None:
        """Before the first shard replaces an old one, drop the old index so no reader mixes the two."""
        if self.old_index is None or not self.old_index.exists():
            return
        try:
            self.old_urls = [s.url for s in ShardIndex.read(self.old_index).shards]
        except ImageLoRAError:
            self.old_urls = []
        self.old_index.unlink()

    def remove_stale(self, shards: list[ShardInfo]) -> None:
        """Delete the old index's local shards that the new index no longer lists."""
        keep = {s.url for s in shards}
        for url in self.old_urls:
            if url in keep or "://" in url or "/" in url or "\\" in url or url.startswith("."):
                continue
            (self.out_dir / url).unlink(missing_ok=True)

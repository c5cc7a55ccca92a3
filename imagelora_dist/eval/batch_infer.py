"""Batch inference: every question of a shard set or a JSONL file answered, with its click in pixels.

The inputs are read by position like eval's (a JSONL file's line number, a shard set's sample position),
so `imagelora-dist infer --input ... --out ...` runs on eval's workers and backends (eval/distributed.py):
chunks handed out, kept once answered, reused by a re-run, merged in input order. A record that cannot be
answered (bad JSON, a missing or unreadable image, no instruction) gets one line in the errors file and
the rest go on; nothing crashes on input.

A question is grounding unless its record says `"task": "referring"` or it is a referring question (`What
is the element in the box (...`); grounding ones are asked in the run's answer format and their answer is
parsed back to a click in pixels of the input image (`click`: [x, y], or null when the answer has none).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imagelora_dist.data.answer_formats import QWEN25_ABS, click_pixels, format_instruction, model_image_size
from imagelora_dist.data.ingest_records import IMAGE_KEYS, INSTRUCTION_KEYS
from imagelora_dist.data.shards import MAX_IMAGE_PIXELS
from imagelora_dist.data.tasks import GROUNDING, REFERRING, TASKS
from imagelora_dist.errors import ImageLoRAError

# The referring question of `data.tasks.referring_instruction`: answered as text, never given a format.
REFERRING_QUESTION = re.compile(r"\s*What is the element in the box \(")


def question_task(record: dict[str, Any], instruction: str) -> str:
    """The record's `task` when it names one, else referring for a referring question, else grounding."""
    task = record.get("task")
    if task in TASKS:
        return str(task)
    return REFERRING if REFERRING_QUESTION.match(instruction) else GROUNDING


def question_prompt(task: str, instruction: str, answer_format: str) -> str:
    """What the model is asked: a grounding instruction plus the format's output request; referring as is."""
    return format_instruction(instruction, answer_format) if task == GROUNDING else instruction


def pick(record: dict[str, Any], keys: Sequence[str]) -> tuple[str | None, Any]:
    """(the first of `keys` the record has a value for, the value), or (None, None)."""
    for key in keys:
        if record.get(key) is not None:
            return key, record[key]
    return None, None


class JsonlSource:
    """The questions of a JSONL file by line number (0-based), read forward without reloading the file."""

    def __init__(self, path: str, images_dir: str | None = None) -> None:
        self.path = Path(path)
        self.base = Path(images_dir) if images_dir else self.path.parent
        with self.path.open("rb") as f:
            self.total = sum(1 for _ in f)
        self._file: Any = None
        self._next = 0

    def close(self) -> None:
        """Close the file, if open."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _line(self, number: int) -> bytes:
        if self._file is None or self._next > number:
            self.close()
            self._file, self._next = self.path.open("rb"), 0
        line = b""
        while self._next <= number:
            line = self._file.readline()
            self._next += 1
        return line

    def read(self, positions: Sequence[int]) -> list[tuple[int, dict[str, Any] | None, str]]:
        """(line number, {"record", "image", "where"} or None, why not) per position; blank lines: `blank`."""
        out = []
        for number in positions:
            where = f"{self.path}:{number + 1}"
            text = self._line(number).decode("utf-8-sig", errors="replace").strip()
            if not text:
                out.append((number, None, "blank"))
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                out.append((number, None, f"{where}: invalid JSON ({exc.msg}, character {exc.pos + 1})"))
                continue
            if not isinstance(record, dict):
                out.append((number, None, f"{where}: expected a JSON object"))
                continue
            key, ref = pick(record, IMAGE_KEYS)
            if key is None or not isinstance(ref, str) or not ref.strip():
                out.append((number, None, f"{where}: missing field image ({' | '.join(IMAGE_KEYS)})"))
                continue
            image = self.base / Path(ref.strip()).expanduser()
            try:
                data = image.read_bytes()
            except OSError as exc:
                out.append((number, None, f"{where}: image {image} unreadable ({exc.strerror or exc})"))
                continue
            out.append((number, {"record": record, "image": data, "where": where}, ""))
        return out


def jsonl_digest(path: str) -> str:
    """sha256 of the JSONL file's bytes (its images are named by path, not hashed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shard_question(raw: dict[str, Any]) -> dict[str, Any]:
    """A shard sample as a question: its record and stored image bytes."""
    from imagelora_dist.data.screen_groups import is_grouped
    from imagelora_dist.data.shards import IMAGE_EXTENSIONS

    record = json.loads(raw["json"])
    images = [k for k in raw if k in IMAGE_EXTENSIONS]
    if not isinstance(record, dict) or len(images) != 1:
        raise ValueError("needs one image member and a JSON record")
    if is_grouped(record):  # one output line per input: a screen's several targets have no place in it
        raise ValueError(
            f"a screen-grouped sample ({len(record['targets'])} targets, shard --group-by-screen): infer "
            "--input answers one question per sample; give shards made without --group-by-screen, or JSONL"
        )
    return {"record": record, "image": raw[images[0]], "where": f"sample {raw.get('__key__')}"}


Prepared = tuple[int, dict[str, Any], str, Any, str]  # position, record, task, image, prompt


def prepare_questions(
    items: list[tuple[int, dict[str, Any] | None, str]], answer_format: str
) -> tuple[list[Prepared], list[str]]:
    """The answerable questions of a chunk (image decoded, prompt built) and one error line per bad input."""
    from PIL import Image

    good: list[Prepared] = []
    errors: list[str] = []
    for position, item, why in items:
        if item is None:
            if why != "blank":
                errors.append(json.dumps({"position": position, "error": why}))
            continue
        record = item["record"]
        key, instruction = pick(record, INSTRUCTION_KEYS)
        if key is None or not isinstance(instruction, str) or not instruction.strip():
            errors.append(json.dumps({"position": position, "error": f"{item['where']}: no instruction "
                                      f"({' | '.join(INSTRUCTION_KEYS)})"}))  # fmt: skip
            continue
        try:
            with Image.open(io.BytesIO(item["image"])) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise ValueError(f"{im.width}x{im.height} exceeds {MAX_IMAGE_PIXELS} pixels")
                image = im.convert("RGB")
        except Exception as exc:  # PIL raises many types for non-images
            errors.append(json.dumps({"position": position, "error": f"{item['where']}: unreadable image "
                                      f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})"}))  # fmt: skip
            continue
        task = question_task(record, instruction.strip())
        good.append(
            (position, record, task, image, question_prompt(task, instruction.strip(), answer_format))
        )
    return good, errors


def answer_prepared(
    loaded: Any,
    good: list[Prepared],
    *,
    answer_format: str,
    max_pixels: int | None,
    batch_size: int,
    max_new_tokens: int,
    answer_key: str = "answer",
) -> list[str]:
    """One JSON line per prepared question: the record, the answer, its click in pixels, task and position."""
    from imagelora_dist.eval.generate import generate_answers

    answers = generate_answers(
        loaded.model,
        loaded.processor,
        [{"image": image, "record": {"instruction": prompt}} for _, _, _, image, prompt in good],
        max_new_tokens=max_new_tokens,
        max_pixels=max_pixels,
        batch_size=batch_size,
    )
    lines = []
    for (position, record, task, image, _), text in zip(good, answers, strict=True):
        click = None
        if task == GROUNDING:
            seen = None
            if answer_format == QWEN25_ABS:
                seen = model_image_size(loaded.processor, image.width, image.height, max_pixels)
            got = click_pixels(text, {"width": image.width, "height": image.height}, answer_format, seen)
            click = None if got is None else [round(got[0], 1), round(got[1], 1)]
        out = {**record, answer_key: text, "click": click, "task": task, "position": position}
        lines.append(json.dumps(out, ensure_ascii=False))
    return lines


def check_input(path: str) -> str:
    """`shards` (a directory or URL with index.json) or `jsonl` (a file); one clear error otherwise."""
    from imagelora_dist.data.shards import INDEX_NAME, is_url

    if is_url(path) or (Path(path) / INDEX_NAME).is_file():
        return "shards"
    if Path(path).is_file():
        return "jsonl"
    raise ImageLoRAError(f"--input {path}: neither a shard set (no {INDEX_NAME}) nor a JSONL file")

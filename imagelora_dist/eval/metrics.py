"""Scoring of generated answers against a shard record (see `imagelora_dist.data.shards`).

Grounding: the click in the text, read in the run's answer format (`data/answer_formats.py`; by default the
first `(x, y)` in [0, 1000) coordinates; a box answer's click is its centre), de-normalised with the record's
`width`/`height`, must lie inside `bbox` (pixels, borders included). Referring: the text must equal
`referring_answer(element_type, element_text)` up to case and surrounding whitespace/punctuation.

Beside the hit rate, `click_distance` says how far a click lands from the target (a model can learn to
point near a target long before it hits one), and `chance_baselines` what a model blind to the image
scores on the same questions, so a reported accuracy can be read against chance.
"""

from __future__ import annotations

import math
import statistics
import string
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from imagelora_dist.data.answer_formats import POINT, QWEN25_ABS, click_pixels, parse_click
from imagelora_dist.data.tasks import COORD_SCALE, GROUNDING, REFERRING, referring_answer


def denormalize_point(x: float, y: float, width: float, height: float) -> tuple[float, float]:
    """[0, 1000) coordinates -> pixels of a `width` x `height` image (no clamping)."""
    return x * width / COORD_SCALE, y * height / COORD_SCALE


def grounding_hit(
    generated: str,
    record: Mapping[str, Any],
    answer_format: str = POINT,
    image_size: tuple[int, int] | None = None,
) -> bool:
    """True when the click in `generated` (in `answer_format`; `image_size`: the model's (width, height),
    for qwen25_abs) falls inside the record's pixel `bbox` (inclusive)."""
    click = click_pixels(generated, record, answer_format, image_size)
    if click is None:
        return False
    x, y = click
    x0, y0, x1, y1 = (float(v) for v in record["bbox"])
    return x0 <= x <= x1 and y0 <= y <= y1


# An answer without a point counts as the farthest a click can land (the screen's diagonal), so a median
# over a task stays defined and an unparseable answer never reads as a near miss.
MAX_CLICK_DISTANCE = COORD_SCALE * math.sqrt(2)


def _centre(record: Mapping[str, Any]) -> tuple[float, float]:
    """The target's bbox centre in [0, 1000) coordinates."""
    x0, y0, x1, y1 = (float(v) for v in record["bbox"])
    w, h = float(record["width"]), float(record["height"])
    return (x0 + x1) / 2 * COORD_SCALE / w, (y0 + y1) / 2 * COORD_SCALE / h


def click_distance(
    generated: str,
    record: Mapping[str, Any],
    answer_format: str = POINT,
    image_size: tuple[int, int] | None = None,
) -> float:
    """Distance from the click in `generated` (as `grounding_hit` reads it) to the target's centre, in [0, 1000)
    coordinates of the image (whatever the answer format's own coordinates)."""
    if answer_format == QWEN25_ABS:
        click = click_pixels(generated, record, answer_format, image_size)
        w, h = float(record["width"]), float(record["height"])
        click = None if click is None else (click[0] * COORD_SCALE / w, click[1] * COORD_SCALE / h)
    else:  # already [0, 1000) coordinates: read them as they are
        click = parse_click(generated, answer_format)
    if click is None:
        return MAX_CLICK_DISTANCE
    x, y = click
    cx, cy = _centre(record)
    return min(MAX_CLICK_DISTANCE, math.hypot(x - cx, y - cy))


def chance_baselines(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """What an image-blind answer scores on these questions (NaN for a task without any).

    `grounding_chance`: the expected hit rate of a uniformly random click (mean bbox area / screen area);
    `grounding_median_dist_centre`: the median click distance of always clicking the screen centre;
    `referring_chance`: the share of the most frequent referring answer (no constant answer scores more);
    `referring_type_chance` / `referring_text_chance`: the same for each part of it (see `referring_parts`).
    """
    grounding = [r for r in records if r.get("task") == GROUNDING]
    referring = [r for r in records if r.get("task") == REFERRING]
    nan = float("nan")
    out = {"grounding_chance": nan, "grounding_median_dist_centre": nan, "referring_chance": nan,
           "referring_type_chance": nan, "referring_text_chance": nan}  # fmt: skip
    if grounding:
        areas = []
        for r in grounding:
            x0, y0, x1, y1 = (float(v) for v in r["bbox"])
            areas.append((x1 - x0) * (y1 - y0) / (float(r["width"]) * float(r["height"])))
        half = COORD_SCALE / 2
        out["grounding_chance"] = statistics.fmean(areas)
        out["grounding_median_dist_centre"] = statistics.median(
            math.hypot(cx - half, cy - half) for cx, cy in map(_centre, grounding)
        )
    if referring:
        answers = Counter(
            normalize_answer(referring_answer(str(r["element_type"]), str(r.get("element_text") or "")))
            for r in referring
        )
        out["referring_chance"] = answers.most_common(1)[0][1] / len(referring)
        for part, key in (
            ("referring_type_chance", "element_type"),
            ("referring_text_chance", "element_text"),
        ):
            values = Counter(normalize_answer(str(r.get(key) or "")) for r in referring)
            out[part] = values.most_common(1)[0][1] / len(referring)
    return out


_EDGE_CHARS = set(string.punctuation)


def _is_edge(ch: str) -> bool:
    return ch.isspace() or ch in _EDGE_CHARS or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str) -> str:
    """Case-folded, with whitespace and punctuation (ASCII or Unicode) stripped from both ends."""
    start, end = 0, len(text)
    while start < end and _is_edge(text[start]):
        start += 1
    while end > start and _is_edge(text[end - 1]):
        end -= 1
    return text[start:end].casefold()


def referring_match(generated: str, record: Mapping[str, Any]) -> bool:
    """Exact match of `generated` with the record's `type: text` answer, after `normalize_answer`."""
    expected = referring_answer(str(record["element_type"]), str(record.get("element_text") or ""))
    return normalize_answer(generated) == normalize_answer(expected)


def referring_parts(generated: str, record: Mapping[str, Any]) -> tuple[bool, bool]:
    """(type right, text right): `generated` split at its first ':' into `type: text`, each part normalised.

    Partial credit shows which half of a referring answer a model reads from the screen (e.g. a shape's
    colour but not its kind) where the exact match alone cannot.
    """
    head, _, tail = generated.partition(":")
    type_ok = normalize_answer(head) == normalize_answer(str(record["element_type"]))
    text_ok = normalize_answer(tail) == normalize_answer(str(record.get("element_text") or ""))
    return type_ok, text_ok

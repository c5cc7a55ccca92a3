"""Scoring of generated answers against a shard record (see `imagelora_dist.data.shards`).

Grounding: the first `(x, y)` in the text, in [0, 1000) coordinates, de-normalised with the record's
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

from imagelora_dist.data.tasks import COORD_SCALE, GROUNDING, REFERRING, parse_point, referring_answer


def denormalize_point(x: float, y: float, width: float, height: float) -> tuple[float, float]:
    """[0, 1000) coordinates -> pixels of a `width` x `height` image (no clamping)."""
    return x * width / COORD_SCALE, y * height / COORD_SCALE


def grounding_hit(generated: str, record: Mapping[str, Any]) -> bool:
    """True when the first point in `generated` falls inside the record's pixel `bbox` (inclusive)."""
    point = parse_point(generated)
    if point is None:
        return False
    x, y = denormalize_point(point[0], point[1], float(record["width"]), float(record["height"]))
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


def click_distance(generated: str, record: Mapping[str, Any]) -> float:
    """Distance from the first point in `generated` to the target's centre, in [0, 1000) coordinates."""
    point = parse_point(generated)
    if point is None:
        return MAX_CLICK_DISTANCE
    cx, cy = _centre(record)
    return min(MAX_CLICK_DISTANCE, math.hypot(point[0] - cx, point[1] - cy))


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

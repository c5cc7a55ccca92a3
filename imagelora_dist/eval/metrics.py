"""Scoring of generated answers against a shard record (see `imagelora_dist.data.shards`).

Grounding: the first `(x, y)` in the text, in [0, 1000) coordinates, de-normalised with the record's
`width`/`height`, must lie inside `bbox` (pixels, borders included). Referring: the text must equal
`referring_answer(element_type, element_text)` up to case and surrounding whitespace/punctuation.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Mapping
from typing import Any

from imagelora_dist.data.tasks import COORD_SCALE, parse_point, referring_answer


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

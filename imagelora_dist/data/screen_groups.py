"""Screen-grouped samples: one screenshot stored once with all its targets, and duplicate screenshots.

A grouped sample (`shard --group-by-screen`) is one image member plus a `json` member

    {"screen": "<pixel digest>", "width": W, "height": H, "targets": [record, record, ...]}

where each record is a whole per-target record of the shard format (shards.py), so a reader expands it
into the per-target samples an ungrouped shard would hold (`expand_record`), all sharing the image.

Two screenshots are the same screen when their decoded pixels are equal (`pixel_digest`: size, and RGBA
pixels, so a PNG re-encoded or renamed is found; a lossy re-encoding is a different screen). Grouping and
duplicate detection work inside one input block (convert_blocks.py): records of one screenshot are
adjacent in the published sets (ScreenSpot's per-image runs, SeeClick / OS-Atlas `elements` lists).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from imagelora_dist.data.shards import MAX_IMAGE_PIXELS

TARGETS_FIELD = "targets"


def is_grouped(record: Mapping[str, Any]) -> bool:
    """True for a screen-grouped record (a `targets` list), False for a per-target one."""
    return isinstance(record.get(TARGETS_FIELD), list)


def expand_record(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-target records of a grouped record, in stored order; a per-target record alone."""
    if not is_grouped(record):
        return [dict(record)]
    out = []
    for target in record[TARGETS_FIELD]:
        if not isinstance(target, Mapping):
            raise ValueError(f"screen {record.get('screen')!r}: a target is not an object")
        out.append(dict(target))
    return out


def target_count(raw: Mapping[str, Any]) -> int:
    """How many targets a raw sample holds (1 unless its record is a readable screen-grouped one)."""
    try:
        record = json.loads(raw["json"])
    except (KeyError, ValueError, TypeError):
        return 1
    return max(1, len(record[TARGETS_FIELD])) if isinstance(record, dict) and is_grouped(record) else 1


def check_text_fields(record: Mapping[str, Any], key: Any) -> None:
    """Raise KeyError unless the record's `instruction` and `answer` are strings."""
    for field_name in ("instruction", "answer"):
        if not isinstance(record.get(field_name), str):
            raise KeyError(f"sample {key}: record field {field_name!r} missing or not a string")


def pixel_digest(data: bytes) -> str:
    """sha256 of an image's size and RGBA pixels: equal for the same pixels under any name or lossless format."""
    with Image.open(io.BytesIO(data)) as im:
        if im.width * im.height > MAX_IMAGE_PIXELS:
            raise ValueError(f"image {im.width}x{im.height} exceeds {MAX_IMAGE_PIXELS} pixels")
        rgba = im.convert("RGBA")
    h = hashlib.sha256(f"{rgba.width}x{rgba.height}:".encode())
    h.update(rgba.tobytes())
    return h.hexdigest()


@dataclass
class Screens:
    """The distinct screenshots of one block by pixel digest, in first-seen order, with their targets."""

    digests: dict[str, str] = field(default_factory=dict)  # sha256 of the stored bytes -> pixel digest
    names: dict[str, set[str]] = field(default_factory=dict)  # pixel digest -> image references seen
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # pixel digest -> grouped sample

    def digest(self, data: bytes) -> str:
        """The pixel digest of stored image bytes (decoded once per distinct bytes)."""
        raw = hashlib.sha256(data).hexdigest()
        if raw not in self.digests:
            self.digests[raw] = pixel_digest(data)
        return self.digests[raw]

    def add(self, sample: Mapping[str, Any], name: str) -> str:
        """Note a per-target sample whose image was referenced as `name`; returns its pixel digest."""
        ext = next(k for k in sample if k != "json" and k != "__key__")
        digest = self.digest(sample[ext])
        self.names.setdefault(digest, set()).add(name)
        record = sample["json"]
        group = self.groups.get(digest)
        if group is None:
            group = {
                ext: sample[ext],
                "json": {
                    "screen": digest[:32],
                    "width": record["width"],
                    "height": record["height"],
                    TARGETS_FIELD: [],
                },
            }
            self.groups[digest] = group
        group["json"][TARGETS_FIELD].append(record)
        return digest

    @property
    def duplicates(self) -> int:
        """Image references beyond the first of each distinct screenshot (same pixels, another name)."""
        return sum(len(names) - 1 for names in self.names.values())

"""Samples and shards: `make_sample(spec, index)` is a pure function of `(spec.seed, index)`, so a dataset's
bytes do not depend on how it is sharded or how many processes render it."""

from __future__ import annotations

import hashlib
import io
import os
import random
from collections.abc import Callable
from typing import Any

from PIL import Image

from imagelora_dist.data.shard_pool import render_shards
from imagelora_dist.data.shards import ShardIndex
from imagelora_dist.data.synth.elements import Element
from imagelora_dist.data.synth.instructions import context_preamble
from imagelora_dist.data.synth.spec import SynthSpec
from imagelora_dist.data.synth.styles import resolve_style, style_module
from imagelora_dist.data.tasks import GROUNDING, box_center, grounding_answer, referring_answer


def _derive_seed(*parts: object) -> int:
    # A hash rather than `seed * K + index`: streams for nearby seeds/indices share nothing.
    digest = hashlib.sha256(":".join(map(str, ("imagelora-synth", *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def render(
    style: str, seed: int, width: int, height: int, n_elements: int
) -> tuple[Image.Image, list[Element]]:
    """One screen of `style` (a built-in name or `"package.module:ATTR"`) and its targetable elements."""
    return resolve_style(style).render(seed, width, height, n_elements)


def encode_png(img: Image.Image) -> bytes:
    """PNG bytes with fixed settings, so the same pixels always give the same bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def make_sample(spec: SynthSpec, index: int) -> dict[str, Any]:
    """Sample `index` of the dataset `spec` describes: `{"__key__", "png", "json"}` (record per shards.py)."""
    style = resolve_style(spec.style)
    rng = random.Random(_derive_seed(spec.seed, index, "sample"))
    n = rng.randint(spec.min_elements, spec.max_elements)
    w, h = spec.width, spec.height
    img, elements = style.render(rng.getrandbits(63), w, h, n)
    task = rng.choice(spec.tasks)
    # Referring needs visible text to answer with; icons are grounding-only targets.
    pool = elements if task == GROUNDING else [e for e in elements if e.text]
    # Chrome repeats on every screen: weight the content widgets so they are most of the targets.
    el = rng.choices(pool, [3 if e.region == "content" else 1 for e in pool])[0]
    if spec.phrasing == "pretrain":
        base = (
            style.point_question(rng, el) if task == GROUNDING else style.describe_at_question(rng, el, w, h)
        )
    elif task == GROUNDING:
        base = style.grounding_instruction(rng, el)
    else:
        base = style.referring_instruction(el.box, w, h)
    answer = grounding_answer(el.box, w, h) if task == GROUNDING else referring_answer(el.type, el.text)
    # A separate stream: the context length changes the instruction text only, never the screen or target.
    crng = random.Random(_derive_seed(spec.seed, index, "context"))
    lo, hi = spec.instruction_words
    preamble = context_preamble(crng, crng.randint(lo, hi)) if hi > 0 else ""
    cx, cy = box_center(el.box)
    record = {
        "id": f"{spec.prefix}-{spec.seed}-{index:09d}",
        "task": task,
        "instruction": f"{preamble} {base}" if preamble else base,
        "answer": answer,
        "bbox": list(el.box),
        "point": [cx, cy],
        "element_type": el.type,
        "element_text": el.text,
        "width": w,
        "height": h,
        "source": "synth",
    }
    return {"__key__": f"{index:09d}", "png": encode_png(img), "json": record}


def synthesize(
    spec: SynthSpec,
    out_dir: str | os.PathLike,
    workers: int | None = None,
    progress: Callable[[str], None] | None = print,
    *,
    overwrite: bool = False,
) -> ShardIndex:
    """Render `spec` into WebDataset shards plus `index.json` in `out_dir`; same bytes for any `workers`."""
    # Workers get the spec (the style's name, not the object) and load the style themselves; preloading
    # its module in the forkserver only saves each worker that import.
    preload = tuple(m for m in (style_module(spec.style),) if m)
    return render_shards(spec, make_sample, out_dir, workers=workers, progress=progress, overwrite=overwrite,
                         tag="synth", created_by="imagelora-dist synth", preload=preload)  # fmt: skip

"""Generic pre-training tasks for a small base VLM: read, name and place GUI elements, plus text arithmetic.

A base model should already see and read before the study fine-tunes it on grounding, as a real VLM
does. These samples teach that on the synthetic screens of `synth/`, with instruction formats that
differ from the downstream tasks (no `(x, y)` click answers, no `type: text` referring answers):

- `read_text`      "Read the text on the screen."                 -> up to 8 labels in reading order, `A | B | C`
- `read_label`     "What does the element at (x, y) say?"        -> the element's visible text
- `element_type`   "What kind of element is 'Save'?"              -> "button", "checkbox", ...
- `position`       "Where on the screen is 'Save'?"               -> "top-left", "center", ... (a 3x3 grid)
- `arithmetic`     a short word problem, no image (GSM8K stand-in) -> the number

Opt-in, the downstream answer formats under other instructions (a real VLM can point before it is
fine-tuned for grounding):

- `point`          "Give the coordinates of 'Save'."              -> its centre, `(x, y)` in [0, 1000)
- `describe_at`    "Describe the element at (x, y)."              -> `type: text`, e.g. `button: Save`

On `shapes` screens (`style: shapes`, see shapes.py: the element's text is its colour, its type its
shape) the same tasks ask "List the shapes from top to bottom." (-> `red circle | blue square`), "What
colour is the shape at (x, y)?", "What shape is the red one?" and "Where on the screen is the red circle?".

The shard format holds exactly one image per sample, so a text-only sample carries a 1x1 placeholder
PNG and `"text_only": true` in its record; the collator then drops the image (no visual tokens at all).
Each sample is a pure function of `(spec.seed, index)`: the same bytes for any sharding or process count.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from fidelity.shapes import SHAPES_STYLE
from imagelora_dist.data.shard_pool import render_shards
from imagelora_dist.data.shards import ShardIndex
from imagelora_dist.data.synth.elements import Element
from imagelora_dist.data.synth.instructions import describe_at_question
from imagelora_dist.data.synth.sample import encode_png, render
from imagelora_dist.data.synth.spec import SynthSpec
from imagelora_dist.data.synth.styles import resolve_style
from imagelora_dist.data.tasks import box_center, grounding_answer, normalize_point, referring_answer
from imagelora_dist.data.text_problems import arithmetic_problem
from imagelora_dist.errors import ImageLoRAError

READ_TEXT = "read_text"
READ_LABEL = "read_label"
ELEMENT_TYPE = "element_type"
POSITION = "position"
ARITHMETIC = "arithmetic"
# Opt-in (`data.pretrain_tasks`): the downstream answer formats under other instructions, as a real VLM
# knows how to point and to name what it sees before it is fine-tuned on a grounding dataset.
POINT = "point"
DESCRIBE_AT = "describe_at"
PRETRAIN_TASKS = (READ_TEXT, READ_LABEL, ELEMENT_TYPE, POSITION, ARITHMETIC)
ALL_PRETRAIN_TASKS = (*PRETRAIN_TASKS, POINT, DESCRIBE_AT)
TEXT_ONLY_TASKS = (ARITHMETIC,)

# Row-major 3x3 grid of the screen: the answers of the `position` task.
POSITIONS = (
    ("top-left", "top", "top-right"),
    ("left", "center", "right"),
    ("bottom-left", "bottom", "bottom-right"),
)
# Longer labels (sentences of static text) make poor reading targets for a tiny model.
MAX_LABEL_CHARS = 24
# `read_text` lists at most this many labels: dense supervision (every answer token is reading) at a
# bounded answer length.
MAX_READ_TEXT_LABELS = 8


def _seed(*parts: object) -> int:
    digest = hashlib.sha256(":".join(map(str, ("imagelora-pretrain", *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "big")


PLACEHOLDER_PNG = encode_png(Image.new("RGB", (1, 1), (255, 255, 255)))


@dataclass(frozen=True)
class PretrainSpec:
    """What to synthesize: sample count, sharding, screen size and clutter, task mix (equal weights), seed."""

    num_samples: int
    samples_per_shard: int = 256
    width: int = 448
    height: int = 336
    min_elements: int = 4
    max_elements: int = 10
    tasks: tuple[str, ...] = PRETRAIN_TASKS
    seed: int = 0
    prefix: str = "pretrain"
    style: str = "gui"

    def __post_init__(self) -> None:
        if isinstance(self.tasks, list):
            object.__setattr__(self, "tasks", tuple(self.tasks))
        # The screen fields share the synthesizer's limits and messages.
        SynthSpec(
            num_samples=self.num_samples,
            samples_per_shard=self.samples_per_shard,
            width=self.width,
            height=self.height,
            min_elements=self.min_elements,
            max_elements=self.max_elements,
            seed=self.seed,
            prefix=self.prefix,
            style=self.style,
        )
        if not isinstance(self.tasks, tuple) or not self.tasks:
            raise ImageLoRAError(
                f"pretrain spec: tasks must be a non-empty list of {list(ALL_PRETRAIN_TASKS)}"
            )
        unknown = [t for t in self.tasks if t not in ALL_PRETRAIN_TASKS]
        if unknown or len(set(self.tasks)) != len(self.tasks):
            raise ImageLoRAError(
                f"pretrain spec: tasks={list(self.tasks)}: each at most once, from {list(ALL_PRETRAIN_TASKS)}"
            )

    @property
    def num_shards(self) -> int:
        """Shards needed: the last one may be short."""
        return -(-self.num_samples // self.samples_per_shard)


def position_name(box: tuple[int, int, int, int], width: int, height: int) -> str:
    """Which ninth of the screen holds the box centre: `top-left`, `top`, ..., `bottom-right`."""
    cx, cy = box_center(box)
    col = min(2, max(0, int(3 * cx / width)))
    row = min(2, max(0, int(3 * cy / height)))
    return POSITIONS[row][col]


def _q(text: str) -> str:
    return f"'{text}'"


def _pick(rng: random.Random, pool: list[Element]) -> Element:
    # Chrome repeats on every screen: weight the content widgets, as the grounding synthesizer does.
    return rng.choices(pool, [3 if e.region == "content" else 1 for e in pool])[0]


def _shapes_question(
    rng: random.Random, task: str, elements: list[Element], w: int, h: int
) -> tuple[str, str, Element]:
    """(instruction, answer, element) of a screen task on a `shapes` screen (every element qualifies)."""
    el = rng.choice(elements)
    if task == READ_LABEL:
        x, y = normalize_point(*box_center(el.box), w, h)
        template = rng.choice(("What colour is the shape at ({x}, {y})?", "Which colour is at ({x}, {y})?"))
        return template.format(x=x, y=y), el.text, el
    if task == ELEMENT_TYPE:
        template = rng.choice(
            ("What shape is the {c} one?", "Which shape is {c}?", "Name the shape of the {c} one.")
        )
        return template.format(c=el.text), el.type, el
    if task == POSITION:
        template = rng.choice(("Where on the screen is the {t}?", "In which part of the screen is the {t}?"))
        return template.format(t=el.name), position_name(el.box, w, h), el
    raise ValueError(task)  # pragma: no cover


def _format_question(
    rng: random.Random, task: str, elements: list[Element], w: int, h: int, style: str
) -> tuple[str, str, Element] | None:
    """`point` / `describe_at`: the grounding and referring answer formats under pre-training instructions."""
    if style == SHAPES_STYLE:
        pool = elements
    else:  # a target an instruction can name: a short text, or a named icon for `point`
        pool = [e for e in elements if e.text and len(e.text) <= MAX_LABEL_CHARS]
        if task == POINT:
            pool += [e for e in elements if e.type == "icon" and e.name]
    if not pool:
        return None
    el = _pick(rng, pool)
    if task == POINT:
        return point_question(rng, el, style), grounding_answer(el.box, w, h), el
    return describe_at_question(rng, el, w, h), referring_answer(el.type, el.text), el


def point_question(rng: random.Random, el: Element, style: str) -> str:
    """`point`'s instruction for `el`: the grounding question in the pre-training's words (the style's own)."""
    return resolve_style(style).point_question(rng, el)


def _screen_question(
    rng: random.Random, task: str, elements: list[Element], w: int, h: int, style: str = "gui"
) -> tuple[str, str, Element] | None:
    """(instruction, answer, element) of a screen task; None when the screen has no usable element."""
    readable = [e for e in elements if e.text and len(e.text) <= MAX_LABEL_CHARS]
    if task == READ_TEXT:
        return None  # not a single-element question: see reading_order()
    if task in (POINT, DESCRIBE_AT):
        return _format_question(rng, task, elements, w, h, style)
    if style == SHAPES_STYLE:
        return _shapes_question(rng, task, elements, w, h)
    if task == READ_LABEL:
        if not readable:
            return None
        el = _pick(rng, readable)
        x, y = normalize_point(*box_center(el.box), w, h)
        template = rng.choice(
            (
                "What does the element at ({x}, {y}) say?",
                "Read the text at ({x}, {y}).",
                "What is written at ({x}, {y})?",
            )
        )
        return template.format(x=x, y=y), el.text, el
    if task == ELEMENT_TYPE:
        pool = [e for e in readable if e.type != "icon"]
        if not pool:
            return None
        el = _pick(rng, pool)
        template = rng.choice(
            (
                "What kind of element is {q}?",
                "What type of element shows {q}?",
                "Name the element type of {q}.",
            )
        )
        return template.format(q=_q(el.text)), el.type, el
    if task == POSITION:
        pool = readable + [e for e in elements if e.type == "icon" and e.name]
        if not pool:
            return None
        el = _pick(rng, pool)
        target = f"the {el.name} icon" if el.type == "icon" else _q(el.text)
        template = rng.choice(("Where on the screen is {t}?", "In which part of the screen is {t}?"))
        return template.format(t=target), position_name(el.box, w, h), el
    raise ValueError(task)  # pragma: no cover


def reading_order(elements: list[Element], height: int) -> list[Element]:
    """Elements with (short) text, top to bottom in bands of 1/24 of the screen, then left to right."""
    band = max(1, height // 24)
    readable = [e for e in elements if e.text and len(e.text) <= MAX_LABEL_CHARS]
    return sorted(readable, key=lambda e: (box_center(e.box)[1] // band, e.box[0]))


def make_pretrain_sample(spec: PretrainSpec, index: int) -> dict[str, Any]:
    """Sample `index` of `spec`: `{"__key__", "png", "json"}` in the shard format (text-only: placeholder png)."""
    rng = random.Random(_seed(spec.seed, index, "sample"))
    # Round-robin over tasks by index keeps the mix exact in every shard; the reader shuffles anyway.
    task = spec.tasks[index % len(spec.tasks)]
    record: dict[str, Any] = {
        "id": f"{spec.prefix}-{spec.seed}-{index:09d}",
        "task": task,
        "source": "synth-pretrain",
    }
    if task in TEXT_ONLY_TASKS:
        instruction, answer = arithmetic_problem(rng)
        record.update(
            instruction=instruction, answer=answer, bbox=None, point=None, element_type="", element_text="",
            width=1, height=1, text_only=True,
        )  # fmt: skip
        return {"__key__": f"{index:09d}", "png": PLACEHOLDER_PNG, "json": record}
    w, h = spec.width, spec.height
    if task == READ_TEXT:
        n = rng.randint(spec.min_elements, spec.max_elements)
        img, elements = render(spec.style, rng.getrandbits(63), w, h, n)
        if spec.style == SHAPES_STYLE:
            labels = [e.name for e in reading_order(elements, h)]
            instruction = rng.choice(
                ("List the shapes from top to bottom.", "What shapes does this screen show?")
            )
        else:
            labels = [e.text for e in reading_order(elements, h)[:MAX_READ_TEXT_LABELS]]
            instruction = rng.choice(
                ("Read the text on the screen.", "What text does this screen show?", "Transcribe the labels.")
            )
        record.update(
            instruction=instruction, answer=" | ".join(labels), bbox=None, point=None, element_type="",
            element_text="", width=w, height=h, text_only=False, labels=labels,
        )  # fmt: skip
        return {"__key__": f"{index:09d}", "png": encode_png(img), "json": record}
    for _attempt in range(16):  # a screen without a usable element (rare): render another one
        n = rng.randint(spec.min_elements, spec.max_elements)
        img, elements = render(spec.style, rng.getrandbits(63), w, h, n)
        question = _screen_question(rng, task, elements, w, h, spec.style)
        if question is not None:
            break
    else:  # pragma: no cover - every screen has a title with text
        raise RuntimeError(f"no usable element on 16 screens for sample {index}")
    instruction, answer, el = question
    cx, cy = box_center(el.box)
    record.update(
        instruction=instruction, answer=answer, bbox=list(el.box), point=[cx, cy], element_type=el.type,
        element_text=el.text, width=w, height=h, text_only=False,
    )  # fmt: skip
    return {"__key__": f"{index:09d}", "png": encode_png(img), "json": record}


def synthesize_pretrain(
    spec: PretrainSpec,
    out_dir: str | os.PathLike,
    workers: int | None = None,
    progress: Callable[[str], None] | None = print,
    *,
    overwrite: bool = False,
) -> ShardIndex:
    """Render `spec` into shards plus `index.json` in `out_dir`; the same bytes for any `workers`."""
    return render_shards(spec, make_pretrain_sample, out_dir, workers=workers, progress=progress,
                         overwrite=overwrite, tag="pretrain", created_by="fidelity.pretrain")  # fmt: skip

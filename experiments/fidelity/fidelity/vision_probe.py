"""Can a tiny VLM learn to use the pixels within a CPU budget? A single-process pre-training probe.

    python -m fidelity.vision_probe --family qwen3_vl --tasks square,square_xy --steps 400 --eval-every 100
    python -m fidelity.vision_probe --tasks square_click --then shapes_point --switch 800 --steps 1600  (curriculum)

Trains every parameter of a fresh tiny model of `--family` (AdamW, 50 warm-up steps, batch 8) on
in-memory samples of the chosen tasks and, every `--eval-every` steps, prints per task the held-out exact
match, answer loss and `image_gain` (answer loss on a blank grey screen minus on the real one: about 0
when the model answers from text priors alone). It is the quick experiment behind the pre-trained base's
design (experiments/fidelity/RESULTS.md, "Can the tiny base see?").

Tasks: `square` (one coloured square on a plain screen: "Where is the square?" -> a 3x3 grid name),
`square_xy` (the same, "Click the square." -> its centre in tenths, `(x, y)` with x, y in 0..9),
`square_click` (the same, answered as the study clicks: `(x, y)` in [0, 1000)), `colour_click` (1-3
squares, each its own colour: "Click the blue square." -> the study's click), `colour_grid` (the same
screens: "Where is the blue square?" -> a 3x3 grid name), `shapes_point` (the
pre-training task `point` on `shapes` screens of 1-4 shapes: "Give the coordinates of the red circle."),
`element_at` (a synthetic GUI screen: the type of the element at a point), `read_label` (the text of the
element at a point). `--scale` overrides the GUI screens' UI scale (bigger fonts and widgets). The three
click tasks are also scored as grounding: the share of clicks inside the target, beside a random click's
(the mean box area over the screen area), and the median click distance (1/1000 of the screen).
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import time
from typing import Any

import torch
from PIL import Image, ImageDraw

from fidelity import shapes
from fidelity.pretrain_tasks import (
    MAX_LABEL_CHARS,
    PretrainSpec,
    make_pretrain_sample,
    position_name,
)
from fidelity.shapes import SHAPES_STYLE
from imagelora_dist.data import synth
from imagelora_dist.data.collate import Sample, collate
from imagelora_dist.data.tasks import box_center, normalize_point
from imagelora_dist.eval.generate import generate_for_samples
from imagelora_dist.eval.metrics import click_distance, grounding_hit
from imagelora_dist.models.tiny import TINY_FAMILIES, build_tiny_vlm

TASKS = (
    "square",
    "square_xy",
    "square_click",
    "colour_click",
    "colour_grid",
    "shapes_point",
    "element_at",
    "read_label",
)
CLICK_TASKS = ("square_click", "colour_click", "shapes_point")
# task, image, instruction, answer, and for the click tasks the record a click is scored against
Item = tuple[str, Image.Image, str, str, dict[str, Any] | None]


def square_sample(rng: random.Random, task: str, w: int, h: int) -> Item:
    """One coloured square of 40-70 px at a random place on a plain screen."""
    img = Image.new("RGB", (w, h), (240, 240, 240))
    s = rng.randint(40, 70)
    x0, y0 = rng.randint(0, w - s), rng.randint(0, h - s)
    ImageDraw.Draw(img).rectangle([x0, y0, x0 + s, y0 + s], fill=rng.choice([(200, 30, 30), (30, 30, 200)]))
    if task == "square":
        return task, img, "Where is the square?", position_name((x0, y0, x0 + s, y0 + s), w, h), None
    x, y = normalize_point(x0 + s / 2, y0 + s / 2, w, h)
    if task == "square_click":
        record = {"bbox": [x0, y0, x0 + s, y0 + s], "width": w, "height": h}
        return task, img, "Click the square.", f"({x}, {y})", record
    return task, img, "Click the square.", f"({x // 100}, {y // 100})", None


def colour_click_sample(rng: random.Random, w: int, h: int, task: str = "colour_click") -> Item:
    """1-3 squares of 40-70 px, each its own colour; the target is named by its colour alone (clicked,
    or for `colour_grid` placed on a 3x3 grid)."""
    img = Image.new("RGB", (w, h), (240, 240, 240))
    d, boxes = ImageDraw.Draw(img), []
    colours = rng.sample(list(shapes.COLORS), rng.randint(1, 3))
    for colour in colours:
        while True:  # 1-3 squares of <= 70 px always fit a 336x252 screen
            s = rng.randint(40, 70)
            x0, y0 = rng.randint(0, w - s), rng.randint(0, h - s)
            box = (x0, y0, x0 + s, y0 + s)
            if all(
                box[2] + 6 <= b[0] or b[2] + 6 <= x0 or box[3] + 6 <= b[1] or b[3] + 6 <= y0 for b in boxes
            ):
                break
        d.rectangle([x0, y0, x0 + s, y0 + s], fill=shapes.COLORS[colour])
        boxes.append(box)
    i = rng.randrange(len(colours))
    (x0, y0, x1, y1), colour = boxes[i], colours[i]
    if task == "colour_grid":
        return task, img, f"Where is the {colour} square?", position_name((x0, y0, x1, y1), w, h), None
    x, y = normalize_point((x0 + x1) / 2, (y0 + y1) / 2, w, h)
    record = {"bbox": [x0, y0, x1, y1], "width": w, "height": h}
    return "colour_click", img, f"Click the {colour} square.", f"({x}, {y})", record


def shapes_point_sample(index: int, w: int, h: int) -> Item:
    """The pre-training task `point` on a `shapes` screen, exactly as the pre-trained bases saw it."""
    spec = PretrainSpec(num_samples=index + 1, width=w, height=h, min_elements=1, max_elements=4,
                        tasks=("point",), style=SHAPES_STYLE, seed=7)  # fmt: skip
    raw = make_pretrain_sample(spec, index)
    record = raw["json"]
    with Image.open(io.BytesIO(raw["png"])) as im:
        img = im.convert("RGB")
    return "shapes_point", img, record["instruction"], record["answer"], record


def gui_sample(rng: random.Random, task: str, w: int, h: int) -> Item:
    """A synthetic GUI screen and a question about the element at a point."""
    while True:
        img, elements = synth.render_screen(rng.getrandbits(63), w, h, rng.randint(4, 10))
        if task == "element_at":
            el = rng.choice([e for e in elements if e.region == "content"] or elements)
            x, y = normalize_point(*box_center(el.box), w, h)
            return task, img, f"What kind of element is at ({x}, {y})?", el.type, None
        pool = [e for e in elements if e.text and len(e.text) <= MAX_LABEL_CHARS]
        if pool:
            el = rng.choice(pool)
            x, y = normalize_point(*box_center(el.box), w, h)
            return task, img, f"What does the element at ({x}, {y}) say?", el.text, None


def make_item(index: int, tasks: list[str], w: int, h: int) -> Item:
    """Sample `index`: the tasks in round-robin, each a pure function of the index."""
    rng, task = random.Random(index), tasks[index % len(tasks)]
    if task == "shapes_point":
        return shapes_point_sample(index, w, h)
    if task.startswith("colour"):
        return colour_click_sample(rng, w, h, task)
    return square_sample(rng, task, w, h) if task.startswith("square") else gui_sample(rng, task, w, h)


def set_ui_scale(scale: float) -> None:
    """Render the GUI screens at a fixed UI scale (font and widget size) instead of the size-derived one."""
    original = synth._Screen.__init__

    def init(self: Any, rng: random.Random, width: int, height: int) -> None:
        original(self, rng, width, height)
        self.scale = scale
        self.base = max(9, round(rng.choice((11, 12, 12, 13)) * scale))

    synth._Screen.__init__ = init  # type: ignore[method-assign]


def main() -> None:
    """Train, evaluating every --eval-every steps."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="qwen2_5_vl", choices=TINY_FAMILIES)
    ap.add_argument("--tasks", default="square,square_xy", help=f"comma-separated, from {', '.join(TASKS)}")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--width", type=int, default=336)
    ap.add_argument("--height", type=int, default=252)
    ap.add_argument("--scale", type=float, default=0.0, help="GUI UI scale (0: derived from the screen size)")
    ap.add_argument("--held-out", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--then", default="", help="a curriculum: train on these tasks from step --switch on")
    ap.add_argument("--switch", type=int, default=0, help="the step where --then takes over")
    args = ap.parse_args()
    first, then = args.tasks.split(","), [t for t in args.then.split(",") if t]
    if any(t not in TASKS for t in first + then):
        ap.error(f"--tasks {args.tasks} --then {args.then}: each must be one of {', '.join(TASKS)}")
    if then and not 0 < args.switch < args.steps:
        ap.error(f"--switch {args.switch}: with --then, a step in 1..{args.steps - 1}")
    tasks = first + [t for t in then if t not in first]  # every one is evaluated
    torch.set_num_threads(args.threads)
    if args.scale:
        set_ui_scale(args.scale)
    w, h = args.width, args.height
    cut = (args.switch if then else args.steps) * args.batch

    def batch_at(step: int) -> list[Item]:
        # made per step, not up front: a long run's screens would not fit in memory (48k ~ 12 GB)
        return [
            make_item(i, first if i < cut else then, w, h)
            for i in range(step * args.batch, (step + 1) * args.batch)
        ]

    held = [make_item(10_000_000 + i, tasks, w, h) for i in range(args.held_out)]
    model, processor = build_tiny_vlm(args.family, seed=0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))

    def loss_of(items: list[Item]) -> torch.Tensor:
        return model(**collate(processor, [Sample(q, a, [img]) for _, img, q, a, _ in items])).loss

    def evaluate(step: int) -> None:
        model.eval()
        blank = [(t, Image.new("RGB", img.size, (200, 200, 200)), q, a, r) for t, img, q, a, r in held]
        with torch.no_grad():
            real = [float(loss_of([it])) for it in held]
            grey = [float(loss_of([it])) for it in blank]
        prompts = [Sample(q, None, [img]) for _, img, q, _, _ in held]
        answers = generate_for_samples(model, processor, prompts, max_new_tokens=12, batch_size=16)
        model.train()
        for task in tasks:
            idx = [i for i, it in enumerate(held) if it[0] == task]
            em = sum(answers[i].strip() == held[i][3] for i in idx) / len(idx)
            loss = sum(real[i] for i in idx) / len(idx)
            gain = sum(grey[i] - real[i] for i in idx) / len(idx)
            line = f"  step {step} {task:<12} exact {em:.2f}  loss {loss:.3f}  image_gain {gain:+.3f}"
            if task in CLICK_TASKS:
                records = [held[i][4] for i in idx]
                hits = sum(grounding_hit(answers[i], held[i][4]) for i in idx) / len(idx)
                dist = statistics.median(click_distance(answers[i], held[i][4]) for i in idx)
                chance = statistics.mean(
                    (r["bbox"][2] - r["bbox"][0]) * (r["bbox"][3] - r["bbox"][1]) / (r["width"] * r["height"])
                    for r in records
                )
                centre = statistics.median(click_distance("(500, 500)", r) for r in records)
                line += f"  click hit {hits:.2f} (random {chance:.3f})  median dist {dist:.0f} (centre {centre:.0f})"
            print(line, flush=True)

    t0 = time.perf_counter()
    for step in range(args.steps):
        loss = loss_of(batch_at(step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 50 == 0:
            print(
                f"step {step} loss {loss.item():.3f} ({(time.perf_counter() - t0) / (step + 1):.2f} s/step)"
            )
        if (step + 1) % args.eval_every == 0:
            evaluate(step + 1)


if __name__ == "__main__":
    main()
